"""A dense field at run time: its index, its float vectors on disk, and candidate re-scoring."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import faiss
import numpy as np

from retriever.index.faiss_index import FaissIndex
from retriever.index.vectors import VectorStore
from retriever.kernels import cpu

from .config import FieldConfig


@dataclass(frozen=True)
class DenseField:
    config: FieldConfig
    dim: int
    index: FaissIndex
    vectors: VectorStore

    def search(
        self, queries: np.ndarray, k: int, params: Mapping[str, int], allowed: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """queries [B, D] -> (scores [B, k], rows [B, k]); the top `rescore` candidates of an
        approximate index are re-scored exactly with the stored float vectors."""
        if self.config.search:
            params = {**self.config.search, **params}
        rescore = int(params.get("rescore", self.config.rescore))
        if rescore == 0 or self.index.exact:
            return self.index.search(queries, k, params, allowed)
        scores, rows = self.index.search(queries, max(k, rescore), params, allowed)
        exact = cpu.rescore(queries, self.vectors.gather(rows), rows >= 0, self.config.metric)  # [B, C]
        return cpu.top_k_rows(exact, rows, k)

    def index_with(self, vectors: np.ndarray) -> FaissIndex:
        """A copy of the index holding these vectors [N, D] too, trained on a sample first if needed
        (this field's own index is left unchanged for pinned readers)."""
        index = FaissIndex(self.index.factory, self.dim, self.config.metric, index=faiss.clone_index(self.index.cpu_index))
        if not index.cpu_index.is_trained:
            index.train(training_sample(vectors, self.config.train_size))
        index.add(vectors)
        index.use_gpu()
        return index

    def with_segment(self, index: FaissIndex, stored: np.ndarray) -> "DenseField":
        """This field with `index` and one more stored vector segment (a memory map of the new file)."""
        return DenseField(self.config, self.dim, index, VectorStore([*self.vectors.segments, stored], self.dim))


def training_sample(vectors: np.ndarray, size: int, seed: int = 0) -> np.ndarray:
    """At most `size` rows drawn without replacement (seeded, so builds are reproducible)."""
    if len(vectors) <= size:
        return vectors
    rows = np.sort(np.random.default_rng(seed).choice(len(vectors), size=size, replace=False))
    return vectors[rows]
