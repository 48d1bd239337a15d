"""Scoring posting records where they were read (numba): one pass over a buffer of (id, vector)
records computes each record's distance to the query and keeps the best in a heap, so a SPANN
query costs one kernel call over its lists, with no column copies, norm passes or partitions.
Its oracle is numpy over the same records (tests/test_kernels.py)."""

from __future__ import annotations

import functools

import numpy as np


def records_top_k(records: np.ndarray, query: np.ndarray, count: int, metric: str,
                  allowed: np.ndarray | None, removed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """records: structured [R] of ("id" int64, "vector" float32 or float16 [D]); query [D] -> (scores
    [<= count] float32 higher-is-better, ids [<= count] int64), best first, ties by id. Ids outside `allowed`
    (a mask by id; ids past its end are left out) or in `removed` (sorted) are skipped. An id
    held by several records (replicas) may come back more than once."""
    dim = records.dtype["vector"].shape[0]
    half = records.dtype["vector"].base == np.float16
    if half:  # the id spans the first four float16 slots of a record
        words = records.view(np.uint16).reshape(len(records), dim + 4)
    else:  # the id spans the first two float32 slots
        words = records.view(np.float32).reshape(len(records), dim + 2)
    ids = records["id"]
    mask = allowed if allowed is not None else np.ones(1, dtype=bool)
    scores, found, size = _scan(half)(words, ids, np.ascontiguousarray(query, dtype=np.float32), count,
                                      metric == "ip", mask, allowed is not None, removed)
    return scores[:size], found[:size]


@functools.cache
def half_to_float():
    """float16 bits (uint16) -> float32 in registers, compiled on first use: the sign moved to
    bit 31, exponent and mantissa 13 places up, the result scaled by 2^112 (float32's exponent
    bias over float16's); exact for every finite half, subnormals included, and SIMD-friendly
    where numpy converts one value at a time (numba has no float16)."""
    import numba
    from llvmlite import ir
    from numba.core import types
    from numba.extending import intrinsic

    @intrinsic
    def bits_as_float32(typingctx, bits):
        def codegen(context, builder, signature, args):
            return builder.bitcast(args[0], ir.FloatType())

        return types.float32(types.uint32), codegen

    scale = np.float32(2.0**112)

    @numba.njit(cache=True, nogil=True, inline="always")
    def convert(h):
        word = np.uint32(h)
        return bits_as_float32(((word & 0x8000) << 16) | ((word & 0x7FFF) << 13)) * scale

    return convert


@functools.cache
def _scan(half: bool):
    """Compile on first use, so importing this module does no work (numba caches to disk); `half`:
    records of float16 words read through `half_to_float`."""
    import numba

    from .heap import heap_helpers

    worse, offer, sort_best_first = heap_helpers()
    value = half_to_float() if half else numba.njit(inline="always")(lambda word: word)
    first = 4 if half else 2  # the vector's first word; a constant, so the inner loops stay SIMD

    # reassociated sums run on SIMD lanes; no other fast-math flag (the heap starts at -inf)
    @numba.njit(cache=True, nogil=True, fastmath={"reassoc", "contract"})
    def scan(words, ids, query, count, inner, allowed, use_allowed, removed):
        dim = query.shape[0]
        heap_scores = np.full(count, -np.inf, dtype=np.float32)
        heap_ids = np.full(count, -1, dtype=np.int64)
        size = 0
        for r in range(words.shape[0]):
            i = ids[r]
            if use_allowed and (i >= allowed.shape[0] or not allowed[i]):
                continue
            if len(removed) and removed[min(np.searchsorted(removed, i), len(removed) - 1)] == i:
                continue
            score = np.float32(0)
            if inner:
                for d in range(dim):
                    score += value(words[r, first + d]) * query[d]
            else:
                for d in range(dim):
                    diff = value(words[r, first + d]) - query[d]
                    score -= diff * diff
            if size == count and not worse(heap_scores[0], heap_ids[0], score, i):
                continue
            size = offer(heap_scores, heap_ids, size, score, i)
        sort_best_first(heap_scores, heap_ids, size)
        return heap_scores, heap_ids, size

    return scan
