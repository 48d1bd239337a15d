"""What `bm25` and `sparse` fields share: inverted segments on disk, posting weights in memory.

Both kinds keep integer values per posting (term counts, or impacts quantized to uint8 with a
per-segment scale) and turn them into float32 posting weights once per opened version; a query
is a list of (term, weight) pairs scored exactly by `kernels/sparse.py`.
"""

from __future__ import annotations

import functools
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from retriever.errors import InvalidRequest
from retriever.index import storage
from retriever.index.sparse import SEGMENT_ARRAYS, InvertedIndex, PostingSegment, SparseRows, merge_segments

from .base import FieldConfig

IMPACT_LEVELS = 255  # learned weights are stored as uint8 impacts: weight ~= impact x scale
MAX_SEGMENTS = 16


@dataclass(frozen=True)
class SparseDocuments:
    """Documents ready for indexing: vectors (term counts or learned weights), BM25 lengths and the
    vocabulary terms first seen in this batch (their ids follow the field's vocabulary)."""

    vectors: SparseRows
    lengths: np.ndarray | None = None
    new_terms: list[str] = field(default_factory=list)


class InvertedField:
    """Shared run-time behaviour of `bm25` and `sparse` fields."""

    def __init__(self, config: FieldConfig, entry: dict[str, Any], segments: list[PostingSegment], num_rows: int) -> None:
        self.config = config
        self.entry = entry  # this version's manifest entry
        self.segments = segments
        self.num_rows = num_rows
        self.num_terms = int(entry["num_terms"])

    # ---- opening ---------------------------------------------------------------------------

    @classmethod
    def empty_entry(cls, config: FieldConfig, num_terms: int) -> tuple[dict[str, Any], dict[str, Any]]:
        return {"num_terms": num_terms, "segments": [], "vocab": []}, {}

    @classmethod
    def open(cls, path: Path, config: FieldConfig, entry: dict[str, Any], files: dict[str, Any], num_rows: int) -> "InvertedField":
        segments = []
        for seg in entry["segments"]:
            arrays = {name: storage.open_npy_verified(path, seg["arrays"][name], files[seg["arrays"][name]]) for name in SEGMENT_ARRAYS}
            segments.append(PostingSegment.from_arrays(arrays))
        return cls(config, entry, segments, num_rows)

    # ---- facts -----------------------------------------------------------------------------

    @property
    def dim(self) -> int:
        return self.num_terms

    @property
    def num_documents(self) -> int:
        """Documents in the postings (deleted ones count until a merge drops them, as in Lucene)."""
        return sum(len(s.doc_rows) for s in self.segments)

    def info(self) -> dict[str, Any]:
        postings = sum(len(s.rows) for s in self.segments)
        return {"kind": self.config.kind, "model": self.config.model, "terms": self.num_terms,
                "segments": len(self.segments), "postings": postings, "documents_indexed": self.num_documents}

    @functools.cached_property
    def df(self) -> np.ndarray:
        """[T] documents holding each term, over all segments."""
        total = np.zeros(self.num_terms, dtype=np.int64)
        for s in self.segments:
            total += s.df(self.num_terms)
        return total

    @functools.cached_property
    def index(self) -> InvertedIndex:
        return InvertedIndex(self.segments, [self.posting_weights(i) for i in range(len(self.segments))], self.num_rows)

    def posting_weights(self, i: int) -> np.ndarray:
        raise NotImplementedError

    # ---- search ----------------------------------------------------------------------------

    def search(self, queries: SparseRows, k: int, params: Mapping[str, int], allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """Queries with distinct terms each -> (scores [B, k] float32, rows [B, k] int64), -inf / -1 padded."""
        return self.index.search(queries, k, allowed)

    def unmatchable(self, queries: SparseRows) -> np.ndarray:
        return queries.empty

    def probe(self, rows: np.ndarray, deleted: np.ndarray, k: int, min_recall: float):
        """Every live document must be in exactly one segment (search here is exact)."""
        covered = np.zeros(len(deleted), dtype=np.int64)
        for segment in self.segments:
            np.add.at(covered, np.asarray(segment.doc_rows), 1)
        live = ~deleted
        missing, doubled = int((covered[live] == 0).sum()), int((covered[live] > 1).sum())
        problems = []
        if missing or doubled:
            problems.append(f"field {self.config.name!r}: {missing} live documents missing from the postings, {doubled} indexed twice")
        return {"exact": True, "segments": len(self.segments), "documents_indexed": int(covered.sum())}, problems

    def check_queries(self, given) -> SparseRows:
        """Sparse query vectors passed directly: a list of (term ids, weights) pairs or dicts."""
        if isinstance(given, SparseRows):
            return given
        return SparseRows.from_pairs(as_list(given, "sparse query vectors"), "sparse query vector", self.num_terms)

    # ---- writing ---------------------------------------------------------------------------

    def prepare(self, documents: SparseDocuments, first_row: int, deleted: np.ndarray) -> "PendingSegments":
        """In-memory work for adding documents (rows first_row..): the new segment, plus a merge of
        the tail segments when they have grown comparable (so a collection keeps few segments)."""
        num_terms = self.num_terms + len(documents.new_terms)
        new, scale = self._new_segment(documents, first_row, num_terms)
        kept = [(seg, meta) for seg, meta in zip(self.segments, self.entry["segments"])]
        tail = [(new, {"scale": scale})]
        while kept and (len(kept) + len(tail) > MAX_SEGMENTS or len(kept[-1][0].doc_rows) <= 2 * sum(len(s.doc_rows) for s, _ in tail)):
            tail.insert(0, kept.pop())
        if len(tail) > 1:
            tail = [self._merge(tail, num_terms, deleted)]
        return PendingSegments(self, kept, tail, num_terms, documents.new_terms)

    def _new_segment(self, documents: SparseDocuments, first_row: int, num_terms: int) -> tuple[PostingSegment, float]:
        raise NotImplementedError

    def _merge(self, parts, num_terms: int, deleted: np.ndarray):
        scales = {meta["scale"] for _, meta in parts}
        if len(scales) == 1:
            return merge_segments([s for s, _ in parts], num_terms, deleted), {"scale": scales.pop()}
        # learned impacts with different scales: requantize to the largest one
        scale = max(scales)
        rescaled = [_rescaled(s, meta["scale"] / scale) for s, meta in parts]
        return merge_segments(rescaled, num_terms, deleted), {"scale": scale}

    def with_state(self, entry: dict[str, Any], segments: list[PostingSegment], num_rows: int, new_terms: list[str]) -> "InvertedField":
        """This field at the next version (`new_terms` extend a BM25 vocabulary)."""
        return type(self)(self.config, entry, segments, num_rows)


@dataclass
class PendingSegments:
    """A field's new segments, built in memory and written at commit time."""

    field: InvertedField
    kept: list[tuple[PostingSegment, dict[str, Any]]]
    fresh: list[tuple[PostingSegment, dict[str, Any]]]
    num_terms: int
    new_terms: list[str]

    def write(self, path: Path, version: int, num_rows: int) -> tuple[dict[str, Any], dict[str, Any], Callable[[], InvertedField]]:
        """Write the new files -> (manifest entry, {file: size and checksum}, the field opened on them,
        made only once the version is published: a BM25 vocabulary grows only then)."""
        name = self.field.config.name
        files: dict[str, Any] = {}
        entries = [meta for _, meta in self.kept]
        segments = [seg for seg, _ in self.kept]
        for n, (seg, meta) in enumerate(self.fresh):
            arrays = {}
            for array_name, array in seg.arrays().items():
                file = f"{name}.seg-{version:06d}-{n}.{array_name}.npy"
                files[file] = storage.write_new_file(path, file, storage.npy_bytes(array))
                arrays[array_name] = file
            entries.append({**meta, "arrays": arrays, "documents": len(seg.doc_rows)})
            segments.append(PostingSegment.from_arrays({k: np.load(path / f, mmap_mode="r") for k, f in arrays.items()}))
        vocab = list(self.field.entry["vocab"])
        if self.new_terms:
            file = f"{name}.vocab-{version:06d}.parquet"
            buf = io.BytesIO()
            pq.write_table(pa.table({"term": pa.array(self.new_terms, pa.string())}), buf)
            files[file] = storage.write_new_file(path, file, buf.getvalue())
            vocab.append(file)
        entry = {**self.field.entry, "num_terms": self.num_terms, "segments": entries, "vocab": vocab}
        return entry, files, functools.partial(self.field.with_state, entry, segments, num_rows, self.new_terms)


def _rescaled(segment: PostingSegment, factor: float) -> PostingSegment:
    values = np.clip(np.rint(np.asarray(segment.values, dtype=np.float32) * factor), 0, IMPACT_LEVELS).astype(np.uint8)
    return PostingSegment(segment.indptr, segment.rows, values, segment.doc_rows, segment.doc_lengths)


def distinct_per_row(ids: list[list[int]]) -> SparseRows:
    """Term ids per query (repeats allowed) -> each query's distinct terms, sorted, with their counts.
    Plain Python: queries are short, and numpy's fixed cost per call would dominate."""
    indptr, terms, counts = [0], [], []
    for row in ids:
        count: dict[int, int] = {}
        for t in row:
            count[t] = count.get(t, 0) + 1
        for t in sorted(count):
            terms.append(t)
            counts.append(count[t])
        indptr.append(len(terms))
    return SparseRows(np.array(indptr, np.int64), np.array(terms, np.int64), np.array(counts, np.float32))


def as_list(given, what: str) -> list:
    if isinstance(given, (dict, tuple)):
        return [given]
    if not isinstance(given, list) or not given:
        raise InvalidRequest(f"{what} must be a non-empty list of (term ids, values) pairs or {{term id: value}} dicts")
    return given
