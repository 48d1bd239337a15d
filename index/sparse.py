"""Inverted index for sparse vectors (BM25 term counts or learned impacts), kept in segments.

A segment covers some documents and holds, per term, the rows containing it and a value each (a
term count, or a quantized impact). Its arrays are .npy files opened with mmap. A collection keeps
one per segment of its own (rows from 0); merging keeps only the live documents, renumbered.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from retriever.errors import CorruptIndex, InvalidRequest
from retriever.kernels import sparse as sparse_kernels

SEGMENT_ARRAYS = ("indptr", "rows", "values", "doc_rows", "doc_lengths")


@dataclass(frozen=True)
class SparseRows:
    """Sparse vectors in CSR form: vector i has terms[indptr[i]:indptr[i+1]] (strictly increasing)
    with values at the same positions. indptr [N + 1] int64, terms [nnz] int64, values [nnz] float32."""

    indptr: np.ndarray
    terms: np.ndarray
    values: np.ndarray

    def __len__(self) -> int:
        return len(self.indptr) - 1

    @property
    def empty(self) -> np.ndarray:
        """[N] True where a vector has no terms."""
        return np.diff(self.indptr) == 0

    def row(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = self.indptr[i], self.indptr[i + 1]
        return self.terms[lo:hi], self.values[lo:hi]

    @classmethod
    def from_pairs(cls, pairs, what: str = "sparse vector", vocab_size: int | None = None) -> "SparseRows":
        """From a list of (term ids, values) pairs or {term id: value} dicts, refusing malformed ones:
        unsorted or repeated ids, negative ids or ids past the vocabulary, length mismatch, NaN/inf."""
        terms, values, sizes = [], [], []
        for i, pair in enumerate(pairs):
            if isinstance(pair, dict):
                items = sorted(pair.items())
                pair = ([t for t, _ in items], [v for _, v in items])
            try:
                ids, vals = pair
                ids = np.asarray(ids)
                vals = np.asarray(vals, dtype=np.float64)
            except (TypeError, ValueError):
                raise InvalidRequest(f"{what} {i} must be a (term ids, values) pair or a {{term id: value}} dict") from None
            if ids.ndim != 1 or vals.ndim != 1 or len(ids) != len(vals):
                raise InvalidRequest(f"{what} {i}: {len(np.atleast_1d(ids))} term ids but {len(np.atleast_1d(vals))} values")
            if len(ids) and not np.issubdtype(ids.dtype, np.integer):
                raise InvalidRequest(f"{what} {i}: term ids must be integers, got {ids.dtype}")
            if len(ids) and ids.min() < 0:
                raise InvalidRequest(f"{what} {i}: negative term id {int(ids.min())}")
            if vocab_size is not None and len(ids) and ids.max() >= vocab_size:
                raise InvalidRequest(f"{what} {i}: term id {int(ids.max())} is past the vocabulary ({vocab_size} terms)")
            if len(ids) > 1 and not (np.diff(ids) > 0).all():
                raise InvalidRequest(f"{what} {i}: term ids must be strictly increasing (sorted, no repeats)")
            if not np.isfinite(vals).all():
                raise InvalidRequest(f"{what} {i} contains NaN or inf")
            if (vals < 0).any():
                raise InvalidRequest(f"{what} {i} has negative values; sparse weights must be >= 0")
            terms.append(ids.astype(np.int64))
            values.append(vals.astype(np.float32))
            sizes.append(len(ids))
        indptr = np.zeros(len(sizes) + 1, dtype=np.int64)
        np.cumsum(sizes, out=indptr[1:])
        cat = lambda parts, dtype: np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype)
        return cls(indptr, cat(terms, np.int64), cat(values, np.float32))


@dataclass(frozen=True)
class PostingSegment:
    """Postings of some documents, by term: term t's rows are rows[indptr[t]:indptr[t+1]] (ascending),
    its values at the same positions. doc_rows [n] are the documents covered; doc_lengths [n] their
    lengths (BM25 token counts; zeros for learned fields)."""

    indptr: np.ndarray  # [T + 1] int64, T = vocabulary size when the segment was written
    rows: np.ndarray  # [P] int32 global document rows
    values: np.ndarray  # [P] uint8 / uint16 / uint32
    doc_rows: np.ndarray  # [n] int32
    doc_lengths: np.ndarray  # [n] uint32

    @property
    def num_terms(self) -> int:
        return len(self.indptr) - 1

    def df(self, num_terms: int) -> np.ndarray:
        """[num_terms] how many documents of this segment hold each term."""
        out = np.zeros(num_terms, dtype=np.int64)
        out[: self.num_terms] = np.diff(self.indptr)
        return out

    def posting_terms(self) -> np.ndarray:
        """[P] the term of each posting."""
        return np.repeat(np.arange(self.num_terms, dtype=np.int64), np.diff(self.indptr))

    def arrays(self) -> dict[str, np.ndarray]:
        return {name: getattr(self, name) for name in SEGMENT_ARRAYS}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> "PostingSegment":
        segment = cls(**{name: arrays[name] for name in SEGMENT_ARRAYS})
        if len(segment.indptr) == 0 or segment.indptr[-1] != len(segment.rows) or len(segment.rows) != len(segment.values) \
                or len(segment.doc_rows) != len(segment.doc_lengths):
            raise CorruptIndex("a posting segment's arrays disagree in length")
        return segment


def build_segment(vectors: SparseRows, first_row: int, num_terms: int, values_dtype, doc_lengths: np.ndarray | None = None) -> PostingSegment:
    """Invert CSR document vectors (rows first_row.. in order) into a segment over `num_terms` terms."""
    doc_rows = np.arange(first_row, first_row + len(vectors), dtype=np.int32)
    rows = np.repeat(doc_rows, np.diff(vectors.indptr))  # [nnz]
    return _by_term(vectors.terms, rows, vectors.values.astype(values_dtype), num_terms, doc_rows,
                    doc_lengths if doc_lengths is not None else np.zeros(len(vectors), np.uint32))


def merge_kept(
    segments: list[PostingSegment], starts: list[int], kept: np.ndarray, num_rows: int, num_terms: int
) -> PostingSegment:
    """One segment holding the documents at global rows `kept` [R] (ascending) of `segments`
    (segment i's rows are global rows starts[i]..), renumbered 0..R-1 in order."""
    new_row = np.full(num_rows, -1, dtype=np.int64)
    new_row[kept] = np.arange(len(kept))
    terms, rows, values = [], [], []
    lengths = np.zeros(len(kept), dtype=np.uint32)
    for segment, start in zip(segments, starts):
        moved = new_row[np.asarray(segment.rows, dtype=np.int64) + start]  # [P] new row, -1 when dropped
        live = moved >= 0
        terms.append(segment.posting_terms()[live])
        rows.append(moved[live])
        values.append(np.asarray(segment.values)[live])
        docs = new_row[np.asarray(segment.doc_rows, dtype=np.int64) + start]
        lengths[docs[docs >= 0]] = np.asarray(segment.doc_lengths)[docs >= 0]
    values_dtype = np.result_type(*[np.asarray(s.values).dtype for s in segments]) if segments else np.uint8
    def cat(parts, dtype):
        return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype)

    return _by_term(cat(terms, np.int64), cat(rows, np.int64), cat(values, values_dtype), num_terms,
                    np.arange(len(kept), dtype=np.int32), lengths)


def _by_term(terms, rows, values, num_terms, doc_rows, doc_lengths) -> PostingSegment:
    order = np.lexsort((rows, terms))  # by term, then row
    counts = np.bincount(terms, minlength=num_terms)
    indptr = np.zeros(num_terms + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    return PostingSegment(indptr, rows[order].astype(np.int32), values[order], doc_rows.astype(np.int32), doc_lengths.astype(np.uint32))


def smallest_dtype(values: np.ndarray):
    """uint8 / uint16 / uint32, whichever holds the largest of these non-negative integers."""
    top = int(values.max()) if len(values) else 0
    return np.uint8 if top < 2**8 else np.uint16 if top < 2**16 else np.uint32


class InvertedIndex:
    """Exact top-k over segments whose posting weights (float32, one array per segment) are given."""

    def __init__(self, segments: list[PostingSegment], weights: list[np.ndarray], num_rows: int,
                 starts: list[int] | None = None) -> None:
        """`starts[i]` is added to segment i's rows (segments numbered from 0 each); none by default."""
        starts = starts or [0] * len(segments)
        rows = [
            s.rows if start == 0 else np.asarray(s.rows, dtype=np.int32) + np.int32(start)
            for s, start in zip(segments, starts)
        ]
        self._parts = [(s.indptr, r, w) for s, r, w in zip(segments, rows, weights)]
        self._postings = sparse_kernels.Postings.of(self._parts)
        self._scratch = sparse_kernels.SparseScratch(num_rows)

    def score(self, queries: SparseRows, rows: np.ndarray) -> np.ndarray:
        """Exact scores of given rows [B, C] (-1 where none) -> [B, C] float32, -inf at -1 rows; a
        row holding none of a query's terms scores 0."""
        out = np.zeros(rows.shape, dtype=np.float32)
        for b in range(len(queries)):
            terms, values = queries.row(b)
            order = np.argsort(rows[b], kind="stable")
            wanted = rows[b][order]
            for indptr, posting_rows, weights in self._parts:
                for term, value in zip(terms.tolist(), values.tolist()):
                    if term >= len(indptr) - 1 or indptr[term] == indptr[term + 1]:
                        continue
                    lo, hi = int(indptr[term]), int(indptr[term + 1])
                    held = posting_rows[lo:hi]  # ascending
                    at = np.minimum(np.searchsorted(held, wanted), len(held) - 1)
                    hit = held[at] == wanted
                    out[b, order[hit]] += np.float32(value) * weights[lo:hi][at[hit]]
        out[rows < 0] = -np.inf
        return out

    def search(self, queries: SparseRows, k: int, allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """Queries (distinct terms each) -> (scores [B, k], rows [B, k]) best first, -inf / -1 padded."""
        return sparse_kernels.sparse_top_k(self._postings, queries.indptr, queries.terms, queries.values, k, allowed, self._scratch)
