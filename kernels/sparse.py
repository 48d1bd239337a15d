"""Exact sparse top-k over inverted lists (numba). The oracle is `reference.sparse_scores`.

Term-at-a-time: each query term's postings add query weight x posting weight into a per-thread
score buffer; a second pass over the same postings offers each touched row once to a k-sized heap
and a third clears what was touched. Work is proportional to the postings read, never to the
collection size (no O(N) zeroing or argpartition per query).
"""

from __future__ import annotations

import functools
import threading

import numpy as np


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


def sparse_top_k(parts, terms: np.ndarray, query_weights: np.ndarray, k: int, allowed: np.ndarray | None,
                 scratch: SparseScratch) -> tuple[np.ndarray, np.ndarray]:
    """parts [(indptr [T+1], rows [P] int32, weights [P] float32)] per segment, terms [q] int64 distinct,
    query_weights [q] float32 -> (scores [<=k] float32, rows [<=k] int64), best first, ties by row."""
    accumulate, collect, reset = _kernels()
    scores, seen = scratch.buffers()
    terms = np.ascontiguousarray(terms, dtype=np.int64)
    query_weights = np.ascontiguousarray(query_weights, dtype=np.float32)
    mask = allowed if allowed is not None else np.ones(1, dtype=bool)
    heap_scores = np.empty(k, np.float32)
    heap_rows = np.empty(k, np.int64)
    size = 0
    for indptr, rows, weights in parts:
        accumulate(indptr, rows, weights, terms, query_weights, scores)
    for indptr, rows, _ in parts:
        size = collect(indptr, rows, terms, scores, seen, mask, allowed is not None, heap_scores, heap_rows, size)
    for indptr, rows, _ in parts:
        reset(indptr, rows, terms, scores, seen)
    heap_scores, heap_rows = heap_scores[:size], heap_rows[:size]
    order = np.lexsort((heap_rows, -heap_scores))
    return heap_scores[order], heap_rows[order]


@functools.cache
def _kernels():
    """Compile on first use, so importing this module does no work (numba caches to disk)."""
    import numba

    jit = numba.njit(cache=True, nogil=True)

    @jit
    def accumulate(indptr, rows, weights, terms, query_weights, scores):
        num_terms = len(indptr) - 1
        for i in range(len(terms)):
            t = terms[i]
            if t >= num_terms:  # a term this segment never saw
                continue
            q = query_weights[i]
            for p in range(indptr[t], indptr[t + 1]):
                scores[rows[p]] += q * weights[p]

    @jit
    def worse(score_a, row_a, score_b, row_b):
        return score_a < score_b or (score_a == score_b and row_a > row_b)

    @jit
    def collect(indptr, rows, terms, scores, seen, allowed, use_allowed, heap_scores, heap_rows, size):
        """Offer each touched row once to a min-heap (root = worst kept); returns the heap size."""
        k = len(heap_scores)
        num_terms = len(indptr) - 1
        for i in range(len(terms)):
            t = terms[i]
            if t >= num_terms:
                continue
            for p in range(indptr[t], indptr[t + 1]):
                r = rows[p]
                if seen[r]:
                    continue
                seen[r] = 1
                if use_allowed and not allowed[r]:
                    continue
                s = scores[r]
                if size < k:
                    j = size  # sift up
                    size += 1
                    while j > 0:
                        parent = (j - 1) // 2
                        if not worse(s, r, heap_scores[parent], heap_rows[parent]):
                            break
                        heap_scores[j], heap_rows[j] = heap_scores[parent], heap_rows[parent]
                        j = parent
                    heap_scores[j], heap_rows[j] = s, r
                elif worse(heap_scores[0], heap_rows[0], s, r):
                    j = 0  # replace the root, sift down
                    while True:
                        child = 2 * j + 1
                        if child >= size:
                            break
                        if child + 1 < size and worse(heap_scores[child + 1], heap_rows[child + 1], heap_scores[child], heap_rows[child]):
                            child += 1
                        if not worse(heap_scores[child], heap_rows[child], s, r):
                            break
                        heap_scores[j], heap_rows[j] = heap_scores[child], heap_rows[child]
                        j = child
                    heap_scores[j], heap_rows[j] = s, r
        return size

    @jit
    def reset(indptr, rows, terms, scores, seen):
        num_terms = len(indptr) - 1
        for i in range(len(terms)):
            t = terms[i]
            if t >= num_terms:
                continue
            for p in range(indptr[t], indptr[t + 1]):
                scores[rows[p]] = 0.0
                seen[rows[p]] = 0

    return accumulate, collect, reset
