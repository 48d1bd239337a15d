"""Fusing ranked lists from several fields into one: reciprocal ranks, or normalized weighted scores."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from .errors import InvalidRequest

RRF_K = 60
METHODS = ("rrf", "weighted")
NORMALIZATIONS = ("minmax", "zscore")


@dataclass(frozen=True)
class FusionSpec:
    method: str
    weights: dict[str, float]
    normalization: str

    @classmethod
    def checked(cls, method: str, weights: Mapping[str, float] | None, normalization: str, names: list[str]) -> "FusionSpec":
        if method not in METHODS:
            raise InvalidRequest(f"fusion must be one of {METHODS}, got {method!r}")
        if normalization not in NORMALIZATIONS:
            raise InvalidRequest(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
        weights = dict(weights or {})
        unknown = sorted(set(weights) - set(names))
        if unknown:
            raise InvalidRequest(f"weights name field(s) {unknown} that are not searched ({names})")
        for name, w in weights.items():
            if isinstance(w, bool) or not isinstance(w, (int, float)) or not np.isfinite(w) or w < 0:
                raise InvalidRequest(f"weight for field {name!r} must be a finite number >= 0, got {w!r}")
        return cls(method, {n: float(weights.get(n, 1.0)) for n in names}, normalization)


def fuse(per_field: dict[str, tuple[np.ndarray, np.ndarray]], k: int, spec: FusionSpec):
    """per_field {name: (scores [B, C], rows [B, C]), -1 rows padding} -> (fused [B, k], rows [B, k],
    {name: [B, k]} each field's own score, NaN where that field did not return the row)."""
    contribution = rrf_contributions if spec.method == "rrf" else normalized_contributions
    names = list(per_field)
    batch = next(iter(per_field.values()))[1].shape[0]
    fused = np.full((batch, k), -np.inf, dtype=np.float32)
    out_rows = np.full((batch, k), -1, dtype=np.int64)
    field_scores = {n: np.full((batch, k), np.nan, dtype=np.float32) for n in names}
    for b in range(batch):
        totals: dict[int, float] = {}
        own: dict[str, dict[int, float]] = {}
        for name in names:
            scores, rows = per_field[name]
            found = rows[b] >= 0
            r, s = rows[b][found].tolist(), scores[b][found]
            own[name] = dict(zip(r, s.tolist()))
            for row, c in zip(r, (spec.weights[name] * contribution(s, spec.normalization)).tolist()):
                totals[row] = totals.get(row, 0.0) + c
        ranked = sorted(totals.items(), key=lambda item: (-item[1], item[0]))[:k]
        for i, (row, total) in enumerate(ranked):
            fused[b, i] = total
            out_rows[b, i] = row
            for name in names:
                field_scores[name][b, i] = own[name].get(row, np.nan)
    return fused, out_rows, field_scores


def rrf_contributions(scores: np.ndarray, normalization: str, rrf_k: int = RRF_K) -> np.ndarray:
    """Reciprocal rank fusion (Cormack et al., SIGIR 2009): 1 / (rrf_k + rank), ranks from 1.
    scores [C] best first -> [C]."""
    return 1.0 / (rrf_k + np.arange(1, len(scores) + 1, dtype=np.float64))


def normalized_contributions(scores: np.ndarray, normalization: str) -> np.ndarray:
    """One field's candidate scores [C] mapped to a common scale: min-max to [0, 1], or z-scores.
    A list whose scores are all equal maps to 1 (min-max) or 0 (z-score)."""
    s = scores.astype(np.float64)
    if len(s) == 0:
        return s
    if normalization == "minmax":
        spread = s.max() - s.min()
        return (s - s.min()) / spread if spread > 0 else np.ones_like(s)
    std = s.std()
    return (s - s.mean()) / std if std > 0 else np.zeros_like(s)

