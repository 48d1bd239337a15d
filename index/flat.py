"""An exact index over a segment's stored float vectors: no index file of its own (the vectors
file is the index), nothing read at open; search scans the memory map block by block
(`kernels.cpu.flat_top_k`), or a device copy where torch sees a GPU."""

from __future__ import annotations

from typing import Mapping

import numpy as np

from retriever.kernels import cpu

from .faiss_index import torch_cuda_available


class FlatVectors:
    factory = "Flat"
    exact = True

    def __init__(self, vectors: np.ndarray, metric: str) -> None:
        # [N, D] float32, usually a read-only memory map, held as a plain array: a slice of an
        # np.memmap runs Python code in numpy's subclass hooks, a few microseconds a search
        self.vectors = np.asarray(vectors)
        self.metric = metric
        self._device = None  # gpu_search.DeviceFlat, set by use_gpu

    @property
    def ntotal(self) -> int:
        return len(self.vectors)

    def use_gpu(self) -> None:
        """Search a device copy (float32: exact stays exact) where torch sees a GPU."""
        if torch_cuda_available() and len(self.vectors):
            import torch

            from .gpu_search import DeviceFlat

            self._device = DeviceFlat(np.asarray(self.vectors), self.metric, "cuda", torch.float32)

    def search(
        self,
        queries: np.ndarray,
        k: int,
        params: Mapping[str, int] | None = None,
        allowed: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """queries [B, D] -> (scores [B, k] float32 higher-is-better, rows [B, k] int64), -1 padded."""
        if self._device is not None:
            return self._device.search(queries, k, params, allowed)
        return cpu.flat_top_k(queries, self.vectors, k, self.metric, allowed)
