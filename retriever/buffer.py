"""The write buffer: writes acknowledged through the write-ahead log but not yet in a segment.

Each logged write is a `Write` (documents with their fields' encoded payloads, and the ids it
replaces or deletes). Every process that opens the collection replays the log's writes into its
own buffer, so a write is searchable wherever the collection is opened as soon as it is
acknowledged. A buffered write is applied as the commit path applies one, but its segment's files
go to a private scratch directory in memory (`Scratch`), never into the collection directory: a
reader's replay writes nothing there, and the directory changes only when a flush publishes the
buffer as one segment.
"""

from __future__ import annotations

import io
import json
import shutil
import tempfile
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from retriever.index import storage

from .errors import CorruptIndex
from .fields.payloads import from_arrays, to_arrays

# Larger writes commit a segment directly (the log would only copy them). Below every training
# floor (`fields.parts.MIN_TRAINED_ROWS`), so a buffered write's scratch segment is searched exactly.
LOG_MAX_ROWS = 1000
FLUSH_ROWS = 50_000  # a buffer this large becomes a segment ...
FLUSH_WRITES = 64  # ... as does one of this many writes (one scratch segment each: searches visit each)
FLUSH_LOG_BYTES = 64 << 20  # ... or one whose log has grown this large


@dataclass
class FlushPlan:
    """A write buffer taken to be flushed: written without the writer lock, published with it."""

    version: int  # the version the buffer was taken on: the flush is dropped if another follows it
    upto: int  # the last logged write it holds
    merge: Any  # merging.MergePlan: the buffer's segments, merged into one segment of the directory
    segments: list  # the manifest's segments with the buffer's deletions then
    scratch: "Scratch | None"  # where the buffer's shared files (a grown vocabulary, a binarizer) are
    known: set[str] = field(default_factory=set)  # files the manifest listed then
    files: dict[str, Any] = field(default_factory=dict)  # shared files copied into the directory

    @property
    def names(self) -> list[str]:
        """Prefixes of the files it writes, which the debris sweep leaves alone meanwhile."""
        return [self.merge.name, *(s.entry["name"] for s in self.merge.segments)]


@dataclass(frozen=True)
class Write:
    """One logged write: `table` (None for a delete) with its fields' payloads, in place of the
    live documents with `ids`."""

    table: pa.Table | None
    payloads: dict[str, Any]
    ids: list[str]

    def to_bytes(self) -> bytes:
        arrays: dict[str, np.ndarray] = {}
        specs = {}
        for name, payload in self.payloads.items():
            specs[name], inner = to_arrays(payload, f"p.{name}")
            arrays.update(inner)
        meta = {"ids": None if self.table is not None else self.ids, "payloads": specs}
        arrays["meta"] = np.frombuffer(json.dumps(meta).encode("utf-8"), np.uint8)
        if self.table is not None:
            sink = pa.BufferOutputStream()
            with pa.ipc.new_stream(sink, self.table.schema) as writer:
                writer.write_table(self.table)
            arrays["documents"] = np.frombuffer(sink.getvalue(), np.uint8)
        out = io.BytesIO()
        np.savez(out, **arrays)
        return out.getvalue()

    @classmethod
    def from_bytes(cls, body: bytes) -> "Write":
        try:
            with np.load(io.BytesIO(body), allow_pickle=False) as npz:
                arrays = {key: npz[key] for key in npz.files}
            meta = json.loads(arrays.pop("meta").tobytes())
            table = None
            if "documents" in arrays:
                table = pa.ipc.open_stream(pa.py_buffer(arrays.pop("documents").tobytes())).read_all()
            specs = meta["payloads"].items()
            payloads = {name: from_arrays(spec, arrays, f"p.{name}") for name, spec in specs}
        except (ValueError, KeyError, TypeError, OSError, pa.ArrowException) as e:
            raise CorruptIndex(
                f"a write-ahead log record passed its checksum but cannot be read: {e}"
            ) from None
        ids = meta["ids"] if table is None else table.column("id").to_pylist()
        return cls(table, payloads, ids)


class Scratch:
    """A private directory (in memory where the system has /dev/shm) for buffered segments'
    files; removed when the last collection object using it is gone. Files already open stay
    readable after removal (they are memory-mapped or loaded)."""

    def __init__(self) -> None:
        shm = Path("/dev/shm")
        where = str(shm) if shm.is_dir() and _writable(shm) else None
        self.path = Path(tempfile.mkdtemp(prefix=storage.SCRATCH_PREFIX, dir=where))
        weakref.finalize(self, shutil.rmtree, str(self.path), True)


def _writable(directory: Path) -> bool:
    try:
        with tempfile.TemporaryFile(dir=directory):
            return True
    except OSError:
        return False
