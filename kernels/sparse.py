"""Exact sparse top-k over inverted lists (numba). The oracle is `reference.sparse_scores`.

Term-at-a-time, one compiled call per batch of queries: each query term's postings add query
weight x posting weight into a per-thread score buffer; a second pass over the same postings
offers each touched row once to a k-sized heap (rows that cannot beat the worst kept are passed
over first), and a third clears what was touched. Work is
proportional to the postings read, never to the collection size (no O(N) zeroing or argpartition
per query), and Python runs once per batch, not once per query.
"""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Postings:
    """All segments' postings in one layout: segment s owns indptr[starts[s] : starts[s + 1]]
    (its terms' offsets, relative to bases[s]) and rows/weights[bases[s] : ...]."""

    indptr: np.ndarray  # [sum(T_s + 1)] int64
    starts: np.ndarray  # [S + 1] int64
    bases: np.ndarray  # [S] int64
    rows: np.ndarray  # [P] int32
    weights: np.ndarray  # [P] float32

    @classmethod
    def of(cls, segments: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> "Postings":
        """[(indptr [T+1], rows [P] int32, weights [P] float32)] per segment. One segment's arrays
        are used as they are (a memory map stays one); several are concatenated."""
        if not segments:
            return cls(np.zeros(1, np.int64), np.array([0, 1]), np.zeros(1, np.int64), np.zeros(0, np.int32), np.zeros(0, np.float32))
        sizes = [len(rows) for _, rows, _ in segments]
        starts = np.cumsum([0] + [len(indptr) for indptr, _, _ in segments])
        bases = np.cumsum([0] + sizes[:-1]).astype(np.int64)
        if len(segments) == 1:  # np.asarray: plain views of memory maps, which numba dispatches much faster
            indptr, rows, weights = segments[0]
            return cls(np.asarray(indptr, np.int64), starts, bases, np.asarray(rows), np.asarray(weights))
        return cls(
            np.concatenate([np.asarray(i, np.int64) for i, _, _ in segments]), starts, bases,
            np.concatenate([np.asarray(r) for _, r, _ in segments]), np.concatenate([w for _, _, w in segments]),
        )


class SparseScratch:
    """Per-thread score and seen buffers over `num_rows` documents, reused across queries."""

    def __init__(self, num_rows: int) -> None:
        self.num_rows = num_rows
        self._local = threading.local()

    def buffers(self) -> tuple[np.ndarray, np.ndarray]:
        buffers = getattr(self._local, "buffers", None)
        if buffers is None:
            buffers = self._local.buffers = (np.zeros(self.num_rows, np.float32), np.zeros(self.num_rows, np.uint8))
        return buffers


def sparse_top_k(postings: Postings, offsets: np.ndarray, terms: np.ndarray, query_weights: np.ndarray, k: int,
                 allowed: np.ndarray | None, scratch: SparseScratch) -> tuple[np.ndarray, np.ndarray]:
    """Queries in CSR form: query b has terms[offsets[b]:offsets[b+1]] (distinct, int64) with
    query_weights (float32) -> (scores [B, k] float32, rows [B, k] int64), best first with ties by
    row, -inf / -1 padded."""
    scores, seen = scratch.buffers()
    mask = allowed if allowed is not None else _NO_MASK
    return _kernel()(postings.indptr, postings.starts, postings.bases, postings.rows, postings.weights,
                     offsets, terms, query_weights, scores, seen, mask, allowed is not None, k)


_NO_MASK = np.ones(1, dtype=bool)


@functools.cache
def _kernel():
    """Compile on first use, so importing this module does no work (numba caches to disk)."""
    import numba

    from .heap import heap_helpers

    jit = numba.njit(cache=True, nogil=True)
    inline = numba.njit(cache=True, nogil=True, inline="always")  # small helpers of the hot loops
    worse, offer, sort_best_first = heap_helpers()

    @inline
    def postings_of(indptr, starts, bases, s, t):
        """Positions [lo, hi) of term t's postings in segment s (empty when s never saw t)."""
        first = starts[s]
        if t >= starts[s + 1] - first - 1:
            return 0, 0
        return bases[s] + indptr[first + t], bases[s] + indptr[first + t + 1]

    @jit
    def accumulate(indptr, starts, bases, rows, weights, terms, query_weights, lo_q, hi_q, scores):
        for i in range(lo_q, hi_q):
            q = query_weights[i]
            for s in range(len(bases)):
                lo, hi = postings_of(indptr, starts, bases, s, terms[i])
                for p in range(lo, hi):
                    scores[rows[p]] += q * weights[p]

    @jit
    def collect(indptr, starts, bases, rows, terms, lo_q, hi_q, scores, seen, allowed, use_allowed, heap_scores, heap_rows):
        """Offer each touched row once. Rows that cannot beat the heap's worst are passed over before
        the (poorly predicted) seen check: the worst kept only improves, so they never could later."""
        size, k = 0, len(heap_scores)
        for i in range(lo_q, hi_q):
            for s in range(len(bases)):
                lo, hi = postings_of(indptr, starts, bases, s, terms[i])
                for p in range(lo, hi):
                    r = rows[p]
                    score = scores[r]
                    if size == k and not worse(heap_scores[0], heap_rows[0], score, r):
                        continue
                    if seen[r]:
                        continue
                    seen[r] = 1
                    if use_allowed and not allowed[r]:
                        continue
                    size = offer(heap_scores, heap_rows, size, score, r)
        return size

    @jit
    def reset(indptr, starts, bases, rows, terms, lo_q, hi_q, scores, seen):
        for i in range(lo_q, hi_q):
            for s in range(len(bases)):
                lo, hi = postings_of(indptr, starts, bases, s, terms[i])
                for p in range(lo, hi):
                    scores[rows[p]] = 0.0
                    seen[rows[p]] = 0

    @jit
    def search(indptr, starts, bases, rows, weights, offsets, terms, query_weights, scores, seen, allowed, use_allowed, k):
        batch = len(offsets) - 1
        out_scores = np.full((batch, k), -np.inf, dtype=np.float32)
        out_rows = np.full((batch, k), -1, dtype=np.int64)
        for b in range(batch):
            lo_q, hi_q = offsets[b], offsets[b + 1]
            accumulate(indptr, starts, bases, rows, weights, terms, query_weights, lo_q, hi_q, scores)
            size = collect(indptr, starts, bases, rows, terms, lo_q, hi_q, scores, seen, allowed, use_allowed, out_scores[b], out_rows[b])
            reset(indptr, starts, bases, rows, terms, lo_q, hi_q, scores, seen)
            sort_best_first(out_scores[b], out_rows[b], size)
        return out_scores, out_rows

    return search
