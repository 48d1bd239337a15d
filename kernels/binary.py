"""Scoring packed binary codes through per-query lookup tables (numba). Oracle: `reference.code_scores`.

A query's tables hold, for every code byte position p, the score contribution of each of the 256
byte values (`Binarizer.lookup_tables`), so a code scores in one table read per byte. This covers
symmetric (SDC, a decoded query code) and asymmetric (float query) scoring of 1- to 4-bit codes.
The scan walks the codes in blocks that stay in cache while every query of the batch reads them.

The bit-plane scan finds candidates the way a Hamming scan costs: a score is a weighted sum of the
code's bits, sum_t w_t b_t. With the weights' magnitudes quantized to `PLANES` bits and split into
bit planes, and the bits of negative weights flipped (|w| (1 - b) = |w| - |w| b), that sum is
sum_j 2^j popcount(plane_j AND (code XOR negative)), AND and popcount over 64-bit words. Its top
candidates are then re-scored exactly through the lookup tables.
"""

from __future__ import annotations

import functools

import numpy as np

SCAN_BLOCK = 2048  # codes per block: a few hundred KB, shared by all queries of a batch
PLANES = 4  # bits of each quantized query weight: the bit-plane scan's cost and precision


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


def bitplane_top_k(weights: np.ndarray, codes: np.ndarray, count: int, allowed: np.ndarray | None,
                   planes: int = PLANES) -> tuple[np.ndarray, np.ndarray]:
    """The `count` codes with the highest sum_t weights[b, t] * bit t, each weight quantized to
    `planes` bits: weights [B, 8 * P] float32 (bit t: byte t // 8, bit t % 8), codes [N, P] uint8
    -> (approximate scores [B, count] float32, rows [B, count] int64), best first, ties by row,
    -inf / -1 padded."""
    w = np.asarray(weights, dtype=np.float32)
    top = np.abs(w).max(axis=1, keepdims=True)  # [B, 1]
    levels = np.rint(np.abs(w) / np.where(top > 0, top, 1) * (2**planes - 1)).astype(np.uint8)
    bits = (levels[:, None, :] >> np.arange(planes, dtype=np.uint8)[None, :, None]) & 1  # [B, planes, L]
    words = _words(np.packbits(bits, axis=2, bitorder="little"))  # [B, planes, ceil(P / 8)]
    negative = _words(np.packbits(w < 0, axis=1, bitorder="little"))  # [B, ceil(P / 8)]
    mask = allowed if allowed is not None else _NO_MASK
    return _bitplane_scan()(words, negative, np.ascontiguousarray(codes), mask, allowed is not None, count)


def _words(packed: np.ndarray) -> np.ndarray:
    """[..., P] uint8 -> [..., ceil(P / 8)] little-endian uint64, the last one zero-padded."""
    padding = -packed.shape[-1] % 8
    padded = np.pad(packed, [(0, 0)] * (packed.ndim - 1) + [(0, padding)])
    return np.ascontiguousarray(padded).view("<u8").astype(np.uint64)


_NO_MASK = np.ones(1, dtype=bool)


@functools.cache
def _bitplane_scan():
    import numba
    from numba import types
    from numba.core.extending import intrinsic

    from .heap import heap_helpers

    worse, offer, sort_best_first = heap_helpers()

    @intrinsic
    def popcount(typingctx, x):
        """The CPU's popcount of a 64-bit word (llvm.ctpop), which numba does not expose."""
        def codegen(context, builder, signature, args):
            return builder.ctpop(args[0])

        return types.uint64(types.uint64), codegen

    @numba.njit(cache=True, nogil=True)
    def scan(planes, negative, codes, allowed, use_allowed, k):
        batch, depth, width = planes.shape[0], planes.shape[1], planes.shape[2]
        code_bytes = codes.shape[1]
        out_scores = np.full((batch, k), -np.inf, dtype=np.float32)
        out_rows = np.full((batch, k), -1, dtype=np.int64)
        sizes = np.zeros(batch, dtype=np.int64)
        columns = np.empty((width, SCAN_BLOCK), dtype=np.uint64)  # a block's codes, word by word
        sums = np.empty(SCAN_BLOCK, dtype=np.uint64)
        for start in range(0, codes.shape[0], SCAN_BLOCK):
            count = min(codes.shape[0], start + SCAN_BLOCK) - start
            for n in range(count):  # word-major, so the loops below run over contiguous words
                for i in range(width):  # little-endian words, the last one zero-padded
                    word = np.uint64(0)
                    for byte in range(min(8, code_bytes - 8 * i)):
                        word |= np.uint64(codes[start + n, 8 * i + byte]) << np.uint64(8 * byte)
                    columns[i, n] = word
            for b in range(batch):
                sums[:count] = 0
                for i in range(width):
                    flip, column = negative[b, i], columns[i]
                    for j in range(depth):
                        plane, shift = planes[b, j, i], np.uint64(j)
                        if plane == 0:
                            continue
                        for n in range(count):  # vectorized: popcount over SIMD lanes
                            sums[n] += popcount((column[n] ^ flip) & plane) << shift
                heap_scores, heap_rows, size = out_scores[b], out_rows[b], sizes[b]
                for n in range(count):
                    if use_allowed and not allowed[start + n]:
                        continue
                    score = np.float32(sums[n])
                    if size == k and not worse(heap_scores[0], heap_rows[0], score, start + n):
                        continue
                    size = offer(heap_scores, heap_rows, size, score, start + n)
                sizes[b] = size
        for b in range(batch):
            sort_best_first(out_scores[b], out_rows[b], sizes[b])
        return out_scores, out_rows

    return scan


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
