"""The interface every index family implements."""

from __future__ import annotations

from typing import Mapping, Protocol

import numpy as np


class Index(Protocol):
    """Vectors in, (scores, row ids) out. Row ids are the collection's internal row numbers.

    Scores are "higher is better" for every metric; missing hits are rows of -1 at the end
    (their scores are meaningless). `allowed` is a boolean mask over rows
    (deleted documents and metadata filters); an index must return only allowed rows and
    keep returning k of them while that many exist.
    """

    @property
    def ntotal(self) -> int: ...

    def train(self, sample: np.ndarray) -> None: ...

    def add(self, vectors: np.ndarray) -> None: ...

    def search(
        self, queries: np.ndarray, k: int, params: Mapping[str, int], allowed: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]: ...

    def to_bytes(self) -> bytes: ...
