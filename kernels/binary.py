"""Scoring packed binary codes through per-query lookup tables (numba). Oracle: `reference.code_scores`.

A query's tables hold, for every code byte position p, the score contribution of each of the 256
byte values (`Binarizer.lookup_tables`), so a code scores in one table read per byte. This covers
symmetric (SDC, a decoded query code) and asymmetric (float query) scoring of 1- to 4-bit codes.
The scan walks the codes in blocks that stay in cache while every query of the batch reads them.
"""

from __future__ import annotations

import functools

import numpy as np

SCAN_BLOCK = 2048  # codes per block: a few hundred KB, shared by all queries of a batch


def code_top_k(tables: np.ndarray, offsets: np.ndarray, codes: np.ndarray, k: int,
               allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """tables [B, P, 256] float32, offsets [B], codes [N, P] uint8 -> (scores [B, k] float32, rows
    [B, k] int64) best first, ties by row, -inf / -1 padded; rows outside `allowed` are skipped."""
    mask = allowed if allowed is not None else _NO_MASK
    return _scan()(np.ascontiguousarray(tables, dtype=np.float32), np.asarray(offsets, dtype=np.float32),
                   np.ascontiguousarray(codes), mask, allowed is not None, k)


def candidate_scores(tables: np.ndarray, offsets: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Scores of gathered candidate codes: tables [B, P, 256], codes [B, C, P] -> [B, C] float32."""
    batch, _, positions = codes.shape
    looked_up = tables[np.arange(batch)[:, None, None], np.arange(positions)[None, None, :], codes]  # [B, C, P]
    return looked_up.sum(axis=2, dtype=np.float32) + offsets[:, None].astype(np.float32)


_NO_MASK = np.ones(1, dtype=bool)


@functools.cache
def _scan():
    """Compile on first use, so importing this module does no work (numba caches to disk)."""
    import numba

    from .heap import heap_helpers

    worse, offer, sort_best_first = heap_helpers()

    @numba.njit(cache=True, nogil=True)
    def scan(tables, offsets, codes, allowed, use_allowed, k):
        batch, positions = tables.shape[0], tables.shape[1]
        out_scores = np.full((batch, k), -np.inf, dtype=np.float32)
        out_rows = np.full((batch, k), -1, dtype=np.int64)
        sizes = np.zeros(batch, dtype=np.int64)
        for start in range(0, codes.shape[0], SCAN_BLOCK):
            end = min(codes.shape[0], start + SCAN_BLOCK)
            for b in range(batch):
                table, heap_scores, heap_rows, size = tables[b], out_scores[b], out_rows[b], sizes[b]
                for n in range(start, end):
                    if use_allowed and not allowed[n]:
                        continue
                    score = offsets[b]
                    for p in range(positions):
                        score += table[p, codes[n, p]]
                    if size == k and not worse(heap_scores[0], heap_rows[0], score, n):
                        continue
                    size = offer(heap_scores, heap_rows, size, score, n)
                sizes[b] = size
        for b in range(batch):
            sort_best_first(out_scores[b], out_rows[b], sizes[b])
        return out_scores, out_rows

    return scan
