"""Vectorized CPU kernels (numpy); each has an oracle in `reference.py`."""

from __future__ import annotations

import numpy as np


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
