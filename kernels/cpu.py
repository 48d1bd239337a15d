"""CPU kernels, vectorized in numpy (a few queries' top-k through `heap.RunningTopK`); each has an
oracle in `reference.py`."""

from __future__ import annotations

import numpy as np

from . import heap


def rescore(queries: np.ndarray, candidates: np.ndarray, valid: np.ndarray, metric: str) -> np.ndarray:
    """Exact scores of gathered candidate vectors.

    queries [B, D], candidates [B, C, D] (rows of the float store), valid [B, C] bool
    -> [B, C] float32, -inf where not valid.
    """
    q = queries.astype(np.float32, copy=False)
    c = candidates.astype(np.float32, copy=False)
    if metric == "ip":
        scores = np.matmul(c, q[:, :, None])[..., 0]  # batched GEMV through BLAS, ~2x einsum
    else:
        diff = c - q[:, None, :]
        scores = -np.einsum("bcd,bcd->bc", diff, diff)
    return np.where(valid, scores, np.float32(-np.inf))


def top_k_rows(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Keep the k best (score, id) pairs per row, best first. scores/ids [B, C] -> [B, min(k, C)]."""
    k = min(k, scores.shape[1])
    if k < scores.shape[1]:
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    else:
        part = np.broadcast_to(np.arange(scores.shape[1]), scores.shape)
    part_scores = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-part_scores, axis=1, kind="stable")
    best = np.take_along_axis(part, order, axis=1)
    return np.take_along_axis(scores, best, axis=1), np.take_along_axis(ids, best, axis=1)


HEAP_QUERIES = 4  # up to this many queries the blocks go through one `heap.RunningTopK`
FLAT_BLOCK = 32_768  # rows scored per matrix product: [B, block] scores stay in cache-sized pieces


def flat_top_k(
    queries: np.ndarray, base: np.ndarray, k: int, metric: str, allowed: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k over every row of `base` [N, D] (a memory map is read block by block), ties to
    the lower row. queries [B, D] -> (scores [B, k] float32 higher-is-better, rows [B, k] int64),
    -inf / -1 padded. After the first block only scores above each query's current k-th best are
    kept, as a heap would (faiss's IndexFlat), so most blocks cost their matrix product only."""
    q = np.ascontiguousarray(queries, dtype=np.float32)
    size = len(q)
    if size <= HEAP_QUERIES:  # a few queries: one compiled pass a block, not several numpy cuts
        running = heap.RunningTopK(size, k)
        for lo, scores in _block_scores(q, base, metric, allowed):
            running.offer(scores, lo)
        return running.best()
    best_scores = np.full((size, k), -np.inf, np.float32)
    best_rows = np.full((size, k), -1, np.int64)
    for lo, scores in _block_scores(q, base, metric, allowed):
        better = scores > best_scores[:, -1:]  # a tie with a kept row loses: the kept row is lower
        if np.count_nonzero(better) > 8 * k * size:  # cut each query to about its k best, ties kept
            better &= scores >= kth_lower_bound(scores, k)[:, None]
        if np.count_nonzero(better) > 8 * k * size:  # many ties at the bound: the exact k-th best
            n = scores.shape[1]
            cut = min(k, n)
            kth = np.partition(scores, n - cut, axis=1)[:, n - cut]
            better &= scores >= kth[:, None]
        flat = np.flatnonzero(better)  # a 2-D nonzero costs ~10x more
        if len(flat):
            which, cols = np.divmod(flat, scores.shape[1])
            kept = scores.ravel()[flat]
            best_scores, best_rows = merge_best(best_scores, best_rows, which, kept, cols + lo)
    return best_scores, np.where(np.isfinite(best_scores), best_rows, -1)


def _block_scores(q: np.ndarray, base: np.ndarray, metric: str, allowed: np.ndarray | None):
    """(first row, scores [B, n] higher-is-better, -inf where not allowed) of each block of `base`
    in order; one empty block for an empty base."""
    q_norms = np.vecdot(q, q)[:, None] if metric == "l2" else None
    for lo in range(0, max(len(base), 1), FLAT_BLOCK):
        x = np.asarray(base[lo : lo + FLAT_BLOCK], dtype=np.float32)
        scores = q @ x.T  # [B, n]
        if q_norms is not None:  # -|q - x|^2
            scores = 2 * scores - np.vecdot(x, x)[None, :] - q_norms
        if allowed is not None:
            scores[:, ~allowed[lo : lo + len(x)]] = -np.inf
        yield lo, scores


def kth_lower_bound(scores: np.ndarray, k: int) -> np.ndarray:
    """[B, n] -> [B] at most each row's k-th best score: the least of the maxima of k disjoint
    slices of the row (k distinct scores at least that high). Costs one pass, where a partition
    costs several; -inf when a row has fewer than k scores."""
    n = scores.shape[1]
    if n < k:
        return np.full(len(scores), -np.inf, np.float32)
    return np.maximum.reduceat(scores, np.arange(0, k * (n // k), n // k), axis=1).min(axis=1)


def merge_best(best_scores, best_rows, which, scores, rows):
    """Each query's k best of its kept list [B, k] and new candidates (query `which`, score, row;
    any number per query), ties to the lower row, -1 rows last: one sort by (query, -score, row)."""
    size, k = best_scores.shape
    all_scores = np.concatenate([best_scores.ravel(), scores])
    all_rows = np.concatenate([best_rows.ravel(), rows])
    row_order = np.where(all_rows >= 0, all_rows, np.iinfo(np.int64).max)
    if size == 1:  # one query (a search at batch 1): no owner to sort by
        take = np.lexsort((row_order, -all_scores))[None, :k]
        return all_scores[take], all_rows[take]
    owner = np.concatenate([np.repeat(np.arange(size), k), which])
    order = np.lexsort((row_order, -all_scores, owner))
    starts = np.searchsorted(owner[order], np.arange(size))  # every query has at least its k kept
    take = order[starts[:, None] + np.arange(k)]
    return all_scores[take], all_rows[take]
