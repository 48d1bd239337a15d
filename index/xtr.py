"""Token retrieval for multi-vector fields, after XTR ("Rethinking the Role of Token Retrieval in
Multi-Vector Retrieval", Lee et al. 2023): one index over every document token; each query token
retrieves its k' nearest document tokens, and a document is scored from the tokens retrieved for
it alone. A query token that retrieved none of a document's tokens counts, for that document, the
smallest similarity it retrieved at all (missing-similarity imputation): no candidate's tokens
are gathered, which is what makes the scoring stage cheap."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from .faiss_index import FaissIndex
from .flat import FlatVectors


@dataclass(frozen=True)
class TokenIndex:
    """One segment's token-level index: `index` holds the segment's token vectors in stored order,
    `offsets` [rows + 1] say which document each token belongs to (document r owns tokens
    offsets[r] .. offsets[r + 1] - 1)."""

    index: FaissIndex | FlatVectors
    offsets: np.ndarray
    tuned: Mapping[str, int] = field(default_factory=dict)  # nprobe / efSearch chosen at build

    @property
    def nbytes(self) -> int:
        """Bytes the index holds: its codes (and an IVF's 8-byte id per token)."""
        if isinstance(self.index, FlatVectors):
            return int(self.index.vectors.nbytes)
        ivf, total = self.index.ivf, self.index.ntotal
        if ivf is not None:
            return total * (int(ivf.code_size) + 8)
        return total * self.index.cpu_index.sa_code_size()

    def search(
        self, tokens: np.ndarray, k: int, params: Mapping[str, int], allowed: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Query tokens [Q, D] -> (similarities [Q, k], the local document row of each retrieved
        token [Q, k]), best first, -inf / -1 padded. `allowed` [rows] bool keeps other documents'
        tokens out of the search itself (pre-filtering), so each query token still gets k."""
        token_allowed = None
        if allowed is not None:
            token_allowed = np.repeat(allowed, np.diff(self.offsets))
        scores, positions = self.index.search(tokens, k, {**self.tuned, **params}, token_allowed)
        rows = np.searchsorted(self.offsets, positions, side="right") - 1
        return scores.astype(np.float32, copy=False), np.where(positions >= 0, rows, -1)


def imputed_scores(similarities: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One query's retrieved tokens, similarities and document rows [q, k'] (-1 where none) ->
    (every document retrieved [C] ascending, its score [C]): the sum over query tokens of the best
    similarity retrieved for the document, or, where none was, the smallest similarity that query
    token retrieved. A query token that retrieved nothing adds nothing to any document."""
    found = rows >= 0
    floor = np.where(found, similarities, np.inf).min(axis=1)
    floor = np.where(np.isfinite(floor), floor, 0.0).astype(np.float64)  # [q]
    token = np.nonzero(found)[0]
    documents, gain = rows[found], similarities[found].astype(np.float64) - floor[token]
    if not len(documents):
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    # one (document, query token) pair counts its best similarity once
    pair = documents * len(similarities) + token
    order = np.lexsort((-gain, pair))
    pair, documents, gain = pair[order], documents[order], gain[order]
    first = np.concatenate([[True], pair[1:] != pair[:-1]])
    documents, gain = documents[first], gain[first]
    candidates, starts = np.unique(documents, return_index=True)  # documents ascend already
    return candidates, (floor.sum() + np.add.reduceat(gain, starts)).astype(np.float32)
