"""Vectors kept on disk (one memory-mapped .npy per segment): floats for exact re-scoring, codes."""

from __future__ import annotations

import numpy as np


class VectorStore:
    """Rows of several append-only segments addressed by one global row number."""

    def __init__(self, segments: list[np.ndarray], dim: int, dtype: type = np.float32) -> None:
        self.segments = segments
        self.dim = dim
        self.dtype = dtype
        sizes = [len(s) for s in segments]
        self.starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)  # [S + 1]

    def __len__(self) -> int:
        return int(self.starts[-1])

    @property
    def shape(self) -> tuple[int, int]:
        return len(self), self.dim

    ndim = 2

    def __getitem__(self, rows) -> np.ndarray:
        """Rows by slice or index array, so builders that read blocks can take a store like an array."""
        if isinstance(rows, slice):
            rows = np.arange(*rows.indices(len(self)))
        return self.gather(np.asarray(rows, dtype=np.int64))

    def gather(self, rows: np.ndarray) -> np.ndarray:
        """rows [...] int64 (-1 allowed) -> [..., D] of the store's dtype; -1 rows come back as zeros."""
        flat = rows.reshape(-1)
        valid = flat >= 0
        if len(self.segments) == 1:  # one copy, straight from the memory map
            out = np.take(self.segments[0], np.where(valid, flat, 0), axis=0).astype(self.dtype, copy=False)
            out[~valid] = 0
            return out.reshape(*rows.shape, self.dim)
        out = np.zeros((len(flat), self.dim), dtype=self.dtype)
        seg = np.searchsorted(self.starts, flat, side="right") - 1
        for s, array in enumerate(self.segments):
            hit = valid & (seg == s)
            if hit.any():
                out[hit] = array[flat[hit] - self.starts[s]]
        return out.reshape(*rows.shape, self.dim)

    def to_array(self) -> np.ndarray:
        """All rows in one in-memory array (for exact ground truth and checks)."""
        if not self.segments:
            return np.zeros((0, self.dim), dtype=self.dtype)
        return np.concatenate([np.asarray(s, dtype=self.dtype) for s in self.segments])
