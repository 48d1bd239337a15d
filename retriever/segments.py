"""Segments: a collection is an ordered list of immutable segments, each a run of rows.

A segment's manifest entry names its documents (Arrow IPC, written once, memory-mapped when
read) and a small deletions file (its deleted local rows, `.npy`), the only part a later commit
replaces, so a delete costs O(rows deleted in the segment), not O(collection). Rows are numbered
across segments in order: segment s holds rows starts[s] .. starts[s + 1] - 1.

Format 1 collections (documents as a list of Parquet files, one global deletions list) open as
segments too, read-only; `retriever migrate` rewrites their manifest into format 2.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from retriever.errors import CorruptIndex
from retriever.index import storage
from retriever.kernels import strings


SMALL_SEGMENT = 4096  # rows of a segment whose ids are kept as a Python list once read
FEW_ROWS = 256  # ids sliced one by one from the Arrow buffers; more are gathered by a compiled pass


class DocumentIds:
    """Finding a segment's rows by document id: a sorted array of the ids' hashes (16 bytes a row,
    where a dict of ids would take ~100), made on first use and shared by every version of the
    segment (its documents never change), so an upsert's lookup pays for it once per segment."""

    def __init__(self, table: pa.Table) -> None:
        self._column = table.column("id")

    @functools.cached_property
    def _hashes(self) -> tuple[np.ndarray, np.ndarray]:
        """(hashes sorted [rows] int64, the row of each [rows] int64); built a chunk at a time."""
        hashes = np.empty(len(self._column), np.int64)
        start = 0
        for chunk in self._column.chunks:
            for lo in range(0, len(chunk), 1 << 16):
                part = chunk.slice(lo, 1 << 16).to_pylist()
                hashes[start : start + len(part)] = id_hashes(part)
                start += len(part)
        order = np.argsort(hashes, kind="stable")
        return hashes[order], order

    def rows_of(self, ids: list[str], hashes: np.ndarray | None = None) -> np.ndarray:
        """The rows here holding any of these ids, ascending (deleted rows too: the segment's
        `deleted` says which are live). `hashes`: `id_hashes(ids)`, made once by a caller that
        looks in many segments; an id's cost here is two binary searches unless its hash is found."""
        if not ids or not len(self._column):
            return np.zeros(0, np.int64)
        sorted_hashes, order = self._hashes
        wanted = id_hashes(ids) if hashes is None else hashes
        lo = np.searchsorted(sorted_hashes, wanted, "left")
        hi = np.searchsorted(sorted_hashes, wanted, "right")
        hits = np.flatnonzero(hi > lo)
        if not len(hits):
            return np.zeros(0, np.int64)
        candidates = np.concatenate([order[lo[i] : hi[i]] for i in hits.tolist()])
        owners = np.repeat(hits, (hi - lo)[hits])  # the id each candidate row was found for
        found = self.at(candidates)  # hashes collide rarely: compare the ids themselves
        same = np.fromiter((f == ids[o] for f, o in zip(found, owners.tolist())), bool, len(found))
        return np.unique(candidates[same])  # an id asked for twice is one row

    def at(self, rows: np.ndarray) -> list[str]:
        """The ids of these rows [R]."""
        if len(self._column) <= SMALL_SEGMENT:  # a write buffer's: a list beats an Arrow call per search
            return [self._small[r] for r in np.asarray(rows).tolist()]
        if self._strings is None:
            return self._column.take(pa.array(np.asarray(rows, dtype=np.int64))).to_pylist()
        # a search's few hits: sliced in Python; a batch's many: gathered by a compiled pass
        read = _strings_at if len(rows) <= FEW_ROWS else _strings_gathered
        rows = np.asarray(rows, dtype=np.int64)
        firsts, chunks = self._strings
        if len(chunks) == 1:
            return read(*chunks[0], rows)
        which = np.searchsorted(firsts, rows, side="right") - 1
        out = [""] * len(rows)
        for c in np.unique(which).tolist():
            mine = np.flatnonzero(which == c)
            for position, text in zip(mine.tolist(), read(*chunks[c], rows[mine] - firsts[c])):
                out[position] = text
        return out

    @functools.cached_property
    def _strings(self) -> tuple[np.ndarray, list[tuple[list[int], memoryview]]] | None:
        """(each chunk's first row, each chunk's (offsets, bytes)) of a column of Arrow strings, to
        read a few ids straight from the (memory-mapped) buffers; None for another type."""
        kind = self._column.type
        if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
            return None
        starts, chunks = [0], []
        for chunk in self._column.chunks:
            _, offsets, data = chunk.buffers()
            width = np.int64 if pa.types.is_large_string(kind) else np.int32
            offsets = np.frombuffer(offsets, width)[chunk.offset : chunk.offset + len(chunk) + 1]
            chunks.append((offsets, memoryview(data) if data is not None else memoryview(b"")))
            starts.append(starts[-1] + len(chunk))
        return np.asarray(starts[:-1], np.int64), chunks

    @functools.cached_property
    def _small(self) -> list[str]:
        return self._column.to_pylist()


def _strings_at(offsets: np.ndarray, data: memoryview, rows: np.ndarray) -> list[str]:
    """The strings at these rows of one Arrow string chunk, from its offsets and bytes."""
    return [str(data[a:b], "utf-8") for a, b in zip(offsets[rows].tolist(), offsets[rows + 1].tolist())]


def _strings_gathered(offsets: np.ndarray, data: memoryview, rows: np.ndarray) -> list[str]:
    """The same, for many rows: their bytes gathered in one compiled pass, decoded by Arrow."""
    starts, gathered = strings.gather(offsets, np.frombuffer(data, np.uint8), rows)
    array = pa.LargeStringArray.from_buffers(len(rows), pa.py_buffer(starts), pa.py_buffer(gathered))
    return array.to_pylist()


def id_hashes(ids: list[str]) -> np.ndarray:
    """[len(ids)] int64: what `DocumentIds` sorts its ids by."""
    return np.fromiter(map(hash, ids), np.int64, len(ids))


@dataclass(frozen=True)
class Segment:
    entry: dict[str, Any]  # {"name", "rows", "documents", "deleted"}
    table: pa.Table  # [rows] documents
    deleted: np.ndarray  # [rows] bool
    lookup: DocumentIds | None = None  # given by `with_state`; made from `table` otherwise

    def __post_init__(self) -> None:
        if self.lookup is None:
            object.__setattr__(self, "lookup", DocumentIds(self.table))

    @property
    def rows(self) -> int:
        return int(self.entry["rows"])

    @functools.cached_property
    def deleted_count(self) -> int:
        return int(self.deleted.sum())


    def with_state(self, entry: dict[str, Any], deleted: np.ndarray) -> "Segment":
        """This segment at another version (other deletions), sharing its document ids."""
        return dataclasses.replace(self, entry=entry, deleted=deleted)

    @classmethod
    def open(cls, path: Path, entry: dict[str, Any], files: dict[str, Any]) -> "Segment":
        table = read_documents(path, entry["documents"], files)
        if table.num_rows != entry["rows"]:
            raise CorruptIndex(
                f"segment {entry['name']!r} has {table.num_rows} documents; the manifest says {entry['rows']}"
            )
        return cls(entry, table, read_deleted(path, entry, files))


def read_deleted(path: Path, entry: dict[str, Any], files: dict[str, Any]) -> np.ndarray:
    """A segment's deletions as [rows] bool, from its deletions file (none: nothing deleted)."""
    deleted = np.zeros(entry["rows"], dtype=bool)
    if entry["deleted"]:
        local = storage.open_npy_verified(path, entry["deleted"], files[entry["deleted"]])
        if len(local) and (local.min() < 0 or local.max() >= entry["rows"]):
            raise CorruptIndex(f"{entry['deleted']!r} names rows outside its segment of {entry['rows']}")
        deleted[local] = True
    return deleted


def read_documents(path: Path, name: str, files: dict[str, Any]) -> pa.Table:
    """A segment's documents: Arrow IPC memory-mapped (read on access, never all decoded at
    open), or Parquet read whole (segments written before IPC)."""
    if name.endswith(".arrow"):
        return storage.open_arrow_verified(path, name, files[name])
    return storage.read_parquet_verified(path, name, files[name])


def new_segment(path: Path, name: str, table: pa.Table) -> tuple[dict[str, Any], dict[str, Any], pa.Table]:
    """Segment `name` holding these documents, written -> (its entry, {file: size and checksum},
    the documents memory-mapped from the file: a collection keeps no segment's documents in
    memory, so a long build or write stream does not grow with the documents it wrote)."""
    documents = f"{name}.docs.arrow"
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table.combine_chunks())  # one record batch: one chunk when mapped again
    files = {documents: storage.write_new_file(path, documents, sink.getvalue())}
    entry = {"name": name, "rows": table.num_rows, "documents": documents, "deleted": None}
    return entry, files, pa.ipc.open_file(pa.memory_map(str(path / documents), "r")).read_all()


def with_deletions(
    path: Path, version: int, entry: dict[str, Any], deleted: np.ndarray
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The segment's entry with `deleted` [rows] bool as its deletions (a new small file)."""
    name = f"{entry['name']}.del-{version:06d}.npy"
    data = storage.npy_bytes(np.flatnonzero(deleted).astype(np.int64))
    return {**entry, "deleted": name}, {name: storage.write_new_file(path, name, data)}


def with_changed_deletions(
    path: Path, version: int, segments: list[Segment], masks: list[np.ndarray]
) -> tuple[list[Segment], dict[str, Any]]:
    """`segments` with these deletions ([rows] bool each) at `version`: a new deletions file for
    each segment whose deletions changed -> (the segments, {file: size and checksum})."""
    out, files = [], {}
    for segment, now in zip(segments, masks):
        if not np.array_equal(now, segment.deleted):
            entry, written = with_deletions(path, version, segment.entry, now)
            files.update(written)
            segment = segment.with_state(entry, now)
        out.append(segment)
    return out, files


def open_segments(path: Path, manifest: dict[str, Any], opened: dict[str, Segment]) -> list[Segment]:
    """The segments a manifest describes, in row order; those in `opened` (by name) keep their
    documents, and read only a deletions file that changed."""
    files = manifest["files"]
    if "segments" not in manifest:
        return _legacy_segments(path, manifest)
    out = []
    for entry in manifest["segments"]:
        known = opened.get(entry["name"])
        if known is None:
            out.append(Segment.open(path, entry, files))
            continue
        same = known.entry["deleted"] == entry["deleted"]
        out.append(known.with_state(entry, known.deleted if same else read_deleted(path, entry, files)))
    return out


def _legacy_segments(path: Path, manifest: dict[str, Any]) -> list[Segment]:
    """Format 1: each documents file is a segment; the global deletions list is split by segment."""
    files = manifest["files"]
    global_deleted = np.zeros(0, np.int64)
    if manifest.get("deleted"):
        global_deleted = np.asarray(
            storage.open_npy_verified(path, manifest["deleted"], files[manifest["deleted"]])
        )
    segments, start = [], 0
    for name in manifest["documents"]:
        table = read_documents(path, name, files)
        deleted = np.zeros(table.num_rows, dtype=bool)
        deleted[
            global_deleted[(global_deleted >= start) & (global_deleted < start + table.num_rows)] - start
        ] = True
        entry = {
            "name": name.removesuffix(".parquet"),
            "rows": table.num_rows,
            "documents": name,
            "deleted": None,
        }
        segments.append(Segment(entry, table, deleted))
        start += table.num_rows
    return segments
