"""What `bm25` and `sparse` fields share: inverted segments on disk, posting weights in memory.

Both kinds keep integer values per posting (term counts, or impacts quantized to uint8 with a
per-segment scale) and turn them into float32 posting weights once per opened version; a query
is a list of (term, weight) pairs scored exactly by `kernels/sparse.py`.
"""

from __future__ import annotations

import copy
import functools
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from retriever.errors import InvalidRequest
from retriever.index import storage
from retriever.errors import CorruptIndex
from retriever.index.sparse import SEGMENT_ARRAYS, InvertedIndex, PostingSegment, SparseRows, merge_kept

from .base import FieldConfig, row_starts

IMPACT_LEVELS = 255  # learned weights are stored as uint8 impacts: weight ~= impact x scale


@dataclass(frozen=True)
class SparseDocuments:
    """Documents ready for indexing: vectors (term counts or learned weights), BM25 lengths and the
    vocabulary terms first seen in this batch (their ids follow the field's vocabulary)."""

    vectors: SparseRows
    lengths: np.ndarray | None = None
    new_terms: list[str] = field(default_factory=list)


class InvertedField:
    """Shared run-time behaviour of `bm25` and `sparse` fields: one posting segment per collection
    segment (its rows local, from 0), term ids global to the field."""

    statistics: Mapping[str, Any] | None = None  # collection-wide ones (`under`), else this field's own

    def __init__(
        self,
        config: FieldConfig,
        entry: dict[str, Any],
        segments: list[PostingSegment],
        starts: list[int],
        scales: list[float],
        num_rows: int,
        names: list[str],
    ) -> None:
        self.config = config
        self.names = names  # each posting segment's collection segment
        self.entry = entry  # the shared manifest entry
        self.segments = segments  # posting segments ...
        self.starts = starts  # ... and the global row of each one's local row 0
        self.scales = scales  # learned impacts: weight = impact x scale, per posting segment
        self.num_rows = num_rows
        self.num_terms = int(entry["num_terms"])

    # ---- opening ---------------------------------------------------------------------------

    @classmethod
    def empty_entry(cls, config: FieldConfig, num_terms: int) -> tuple[dict[str, Any], dict[str, Any]]:
        return {"num_terms": num_terms, "vocab": []}, {}

    @classmethod
    def open(
        cls,
        path: Path,
        config: FieldConfig,
        entry: dict[str, Any],
        files: dict[str, Any],
        segments: list,
        reuse,
    ) -> "InvertedField":
        load = lambda meta: PostingSegment.from_arrays(  # noqa: E731
            {
                name: storage.open_npy_verified(path, meta["arrays"][name], files[meta["arrays"][name]])
                for name in SEGMENT_ARRAYS
            }
        )
        rows = sum(s.rows for s in segments)
        if "segments" in entry:  # storage format 1: posting segments over global rows, in the shared entry
            metas = entry["segments"]
            return cls(
                config,
                entry,
                [load(m) for m in metas],
                [0] * len(metas),
                [float(m["scale"]) for m in metas],
                rows,
                [""] * len(metas),
            )
        postings, scales = [], []
        for segment in segments:
            posting, scale = (
                reuse[segment.name]
                if segment.name in reuse
                else (load(segment.entry), float(segment.entry["scale"]))
            )
            if len(posting.doc_rows) != segment.rows:
                raise CorruptIndex(
                    f"field {config.name!r}: segment {segment.name!r} has postings for "
                    f"{len(posting.doc_rows)} "
                    f"of its {segment.rows} documents"
                )
            postings.append(posting)
            scales.append(scale)
        return cls(
            config,
            entry,
            postings,
            row_starts(segments)[:-1].tolist(),
            scales,
            rows,
            [s.name for s in segments],
        )

    def opened(self) -> dict[str, tuple[PostingSegment, float]]:
        return {
            name: (posting, scale) for name, posting, scale in zip(self.names, self.segments, self.scales)
        }

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
        return {
            "kind": self.config.kind,
            "model": self.config.model,
            "terms": self.num_terms,
            "segments": len(self.segments),
            "postings": postings,
            "documents_indexed": self.num_documents,
        }

    @functools.cached_property
    def df(self) -> np.ndarray:
        """[T] documents holding each term, over all segments."""
        total = np.zeros(self.num_terms, dtype=np.int64)
        for s in self.segments:
            total += s.df(self.num_terms)
        return total

    @functools.cached_property
    def index(self) -> InvertedIndex:
        weights = [self.posting_weights(i) for i in range(len(self.segments))]
        return InvertedIndex(self.segments, weights, self.num_rows, self.starts)

    def posting_weights(self, i: int) -> np.ndarray:
        raise NotImplementedError

    # ---- collection-wide statistics (`statistics.py`) ----------------------------------------

    def query_terms(
        self, encoder, texts: list[str], params: Mapping[str, int]
    ) -> list[tuple[str, int]] | None:
        """(key, term id) of each term these queries' weights read the frequency of, or None when
        their weights read no statistics."""
        return None

    def term_key(self, term: int) -> str:
        """A term as shards of one collection all name it."""
        return str(term)

    def own_totals(self) -> dict[str, int]:
        return {"documents": self.num_documents}

    def term_statistics(self, encoder, texts: list[str], params: Mapping[str, int]) -> dict[str, Any] | None:
        terms = self.query_terms(encoder, texts, params)
        if terms is None:
            return None
        df = self.df
        return {**self.own_totals(), "df": {key: int(df[t]) for key, t in terms}}

    def under(self, statistics: Mapping[str, Any]) -> "InvertedField":
        """This field scoring queries with the idf of the collection-wide `statistics`."""
        view = copy.copy(self)
        view.statistics = statistics
        return view

    def idf_of(self, df: np.ndarray, documents: int) -> np.ndarray:
        """Query term weights [T] float32 from document frequencies [T] and the document count."""
        raise NotImplementedError

    @functools.cached_property
    def idf(self) -> np.ndarray:
        """[num_terms] each term's idf from this field's own frequencies."""
        return self.idf_of(self.df, self.num_documents)

    def query_idf(self, terms: np.ndarray) -> np.ndarray:
        """[T] idf of these term ids: from this field's frequencies, or the collection-wide ones."""
        if self.statistics is None:
            return self.idf[terms]
        df = self.statistics["df"]
        counts = np.array([df.get(self.term_key(t), 0) for t in terms.tolist()], dtype=np.int64)
        return self.idf_of(counts, self.statistics["documents"])

    # ---- search ----------------------------------------------------------------------------

    def search(
        self, queries: SparseRows, k: int, params: Mapping[str, int], allowed: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Queries with distinct terms each -> (scores [B, k] float32, rows [B, k] int64), -inf / -1
        padded."""
        return self.index.search(queries, k, allowed)

    def score(self, queries: SparseRows, rows: np.ndarray) -> np.ndarray:
        return self.index.score(queries, rows)

    def unmatchable(self, queries: SparseRows) -> np.ndarray:
        return queries.empty

    def probe(self, rows: np.ndarray, deleted: np.ndarray, k: int, min_recall: float):
        """Every live document must be in exactly one segment (search here is exact)."""
        covered = np.zeros(len(deleted), dtype=np.int64)
        for segment, start in zip(self.segments, self.starts):
            np.add.at(covered, np.asarray(segment.doc_rows, dtype=np.int64) + start, 1)
        live = ~deleted
        missing, doubled = int((covered[live] == 0).sum()), int((covered[live] > 1).sum())
        problems = []
        if missing or doubled:
            problems.append(
                f"field {self.config.name!r}: {missing} live documents missing from the postings, "
                f"{doubled} indexed twice"
            )
        return {
            "exact": True,
            "segments": len(self.segments),
            "documents_indexed": int(covered.sum()),
        }, problems

    def check_queries(self, given) -> SparseRows:
        """Sparse query vectors passed directly: a list of (term ids, weights) pairs or dicts."""
        if isinstance(given, SparseRows):
            return given
        return SparseRows.from_pairs(
            as_list(given, "sparse query vectors"), "sparse query vector", self.num_terms
        )

    # ---- writing ---------------------------------------------------------------------------

    def prepare(self, documents: SparseDocuments) -> "PendingPostings":
        """In-memory work for a new segment holding these documents (its rows from 0)."""
        num_terms = self.num_terms + len(documents.new_terms)
        posting, scale = self._new_segment(documents, num_terms)
        return PendingPostings(self, posting, scale, num_terms, documents.new_terms)

    def _new_segment(self, documents: SparseDocuments, num_terms: int) -> tuple[PostingSegment, float]:
        raise NotImplementedError

    def merge(self, path: Path, name: str, rows: np.ndarray):
        if self.names[:1] == [""]:  # storage format 1: every posting segment may hold any row
            lo, hi, touched = 0, self.num_rows, list(range(len(self.segments)))
        else:  # only the segments holding the merged rows are read
            first, last = (int(rows[0]), int(rows[-1]) + 1) if len(rows) else (0, 0)
            spans = [(start, start + len(s.doc_rows)) for s, start in zip(self.segments, self.starts)]
            touched = [i for i, (start, end) in enumerate(spans) if start < last and end > first]
            lo, hi = (
                min((spans[i][0] for i in touched), default=0),
                max((spans[i][1] for i in touched), default=0),
            )
        scale = max(
            (self.scales[i] for i in touched), default=1.0
        )  # impacts of several scales: requantized to the largest
        parts = [
            self.segments[i]
            if self.scales[i] == scale
            else _rescaled(self.segments[i], self.scales[i] / scale)
            for i in touched
        ]
        merged = merge_kept(parts, [self.starts[i] - lo for i in touched], rows - lo, hi - lo, self.num_terms)
        entry, files, _ = write_postings(path, f"{name}.{self.config.name}", merged, scale)
        return {"num_terms": self.num_terms, **self.vocabulary_keys()}, entry, files

    def vocabulary_keys(self) -> dict[str, Any]:
        return {"vocab": []}

    def write_vocabulary(
        self, path: Path, name: str, new_terms: list[str]
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Terms first seen in a new segment, written -> (the shared entry's vocabulary keys, files).
        Only BM25 fields grow a vocabulary; learned sparse fields use their model's."""
        return {}, {}

    def with_state(
        self,
        entry: dict[str, Any],
        segments: list[PostingSegment],
        starts: list[int],
        scales: list[float],
        num_rows: int,
        names: list[str],
        new_terms: list[str],
    ) -> "InvertedField":
        """This field at the next version (`new_terms` extend a BM25 vocabulary)."""
        return type(self)(self.config, entry, segments, starts, scales, num_rows, names)


@dataclass
class PendingPostings:
    """A new segment's postings, built in memory and written at commit time."""

    field: InvertedField
    posting: PostingSegment
    scale: float
    num_terms: int
    new_terms: list[str]

    def write(self, path: Path, name: str):
        """Write the new files -> (shared entry, segment entry, files, a maker of the field at the new
        version, called only once it is published: a BM25 vocabulary grows only then)."""
        field = self.field
        entry, files, stored = write_postings(path, f"{name}.{field.config.name}", self.posting, self.scale)
        vocabulary, written = field.write_vocabulary(path, name, self.new_terms)
        files.update(written)
        shared = {**field.entry, "num_terms": self.num_terms, **vocabulary}
        rows = len(self.posting.doc_rows)
        make = functools.partial(
            field.with_state,
            shared,
            [*field.segments, stored],
            [*field.starts, field.num_rows],
            [*field.scales, self.scale],
            field.num_rows + rows,
            [*field.names, name],
            self.new_terms,
        )
        return shared, entry, files, make


def write_postings(path: Path, prefix: str, posting: PostingSegment, scale: float):
    """A posting segment's arrays -> (entry, files, the segment on its memory maps)."""
    files, arrays = {}, {}
    for array_name, array in posting.arrays().items():
        file = f"{prefix}.postings.{array_name}.npy"
        files[file] = storage.write_new_file(path, file, storage.npy_bytes(array))
        arrays[array_name] = file
    stored = PostingSegment.from_arrays({k: storage.load_written(path, f) for k, f in arrays.items()})
    return {"arrays": arrays, "scale": scale}, files, stored


def _rescaled(segment: PostingSegment, factor: float) -> PostingSegment:
    values = np.clip(np.rint(np.asarray(segment.values, dtype=np.float32) * factor), 0, IMPACT_LEVELS).astype(
        np.uint8
    )
    return PostingSegment(segment.indptr, segment.rows, values, segment.doc_rows, segment.doc_lengths)


VECTORIZED_ROWS = 8  # from this many queries a batch, counting terms in numpy beats plain Python


def distinct_per_row(ids: list[list[int]]) -> SparseRows:
    """Term ids per query (repeats allowed, -1 for none: dropped) -> each query's distinct terms,
    sorted, with their counts. A batch is counted at once in numpy (one sort of (query, term)
    keys); a few queries in plain Python, where numpy's fixed cost per call would dominate (1.3
    against 4 us a query at 1,000 queries; 27 against 9 us for one)."""
    if len(ids) >= VECTORIZED_ROWS:
        return _distinct_per_row_batch(ids)
    indptr, terms, counts = [0], [], []
    for row in ids:
        count: dict[int, int] = {}
        for t in row:
            count[t] = count.get(t, 0) + 1
        count.pop(-1, None)
        for t in sorted(count):
            terms.append(t)
            counts.append(count[t])
        indptr.append(len(terms))
    return SparseRows(np.array(indptr, np.int64), np.array(terms, np.int64), np.array(counts, np.float32))


def _distinct_per_row_batch(ids: list[list[int]]) -> SparseRows:
    lengths = np.fromiter(map(len, ids), np.int64, len(ids))  # [B]
    flat = np.fromiter(itertools.chain.from_iterable(ids), np.int64, int(lengths.sum()))  # [tokens]
    owner = np.repeat(np.arange(len(ids)), lengths)
    known = flat >= 0
    flat, owner = flat[known], owner[known]
    span = int(flat.max()) + 1 if len(flat) else 1
    keys, counts = np.unique(owner * span + flat, return_counts=True)
    indptr = np.zeros(len(ids) + 1, np.int64)
    np.cumsum(np.bincount(keys // span, minlength=len(ids)), out=indptr[1:])
    return SparseRows(indptr, keys % span, counts.astype(np.float32))


def as_list(given, what: str) -> list:
    if isinstance(given, (dict, tuple)):
        return [given]
    if not isinstance(given, list) or not given:
        raise InvalidRequest(
            f"{what} must be a non-empty list of (term ids, values) pairs or {{term id: value}} dicts"
        )
    return given
