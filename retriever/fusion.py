"""Fusing ranked lists from several fields into one: reciprocal ranks, or normalized weighted scores."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from .errors import InvalidRequest

RRF_K = 60
METHODS = ("rrf", "weighted")
NORMALIZATIONS = ("minmax", "zscore", "robust")


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
    {name: [B, k]} each field's own score, NaN where that field did not return the row).

    Every query at once: the fields' candidates side by side, sorted by row, so each row's
    contributions are neighbours, summed in field order (as one would add them up by hand)."""
    contribution = rrf_contributions if spec.method == "rrf" else normalized_contributions
    names = list(per_field)
    rows = np.concatenate([per_field[n][1] for n in names], axis=1).astype(np.int64)  # [B, M]
    own = np.concatenate([per_field[n][0] for n in names], axis=1).astype(np.float32)
    batch, width = rows.shape
    parts = np.concatenate(  # [B, M], 0 at -1 rows
        [spec.weights[n] * contribution(field_scores, field_rows >= 0, spec.normalization)
         for n, (field_scores, field_rows) in per_field.items()],
        axis=1,
    )
    field = np.repeat(np.arange(len(names)), [per_field[n][1].shape[1] for n in names])  # [M]
    step = max(width, 1)  # a query's entries in the flattened [B * M] arrays
    # sorted by row (stable: field order within a row); -1 rows last, then dropped
    order = np.argsort(np.where(rows >= 0, rows, np.iinfo(np.int64).max), axis=1, kind="stable")
    by_row = np.take_along_axis(rows, order, axis=1).ravel()
    valid = by_row >= 0
    starts = np.ones(by_row.shape, dtype=bool)  # the first of each row's run, per query
    starts[1:] = by_row[1:] != by_row[:-1]
    starts[::step] = True
    starts &= valid
    group = np.cumsum(starts) - 1  # each candidate's (query, row) group
    first = np.flatnonzero(starts)
    # reduceat sums up to the next start: invalid entries sit at each query's end and add 0
    sorted_parts = np.take_along_axis(parts, order, axis=1).ravel()
    totals = np.add.reduceat(sorted_parts, first) if len(first) else np.zeros(0)
    query, group_rows = first // step, by_row[first]
    best = np.lexsort((group_rows, -totals, query))  # per query: best total first, ties by row
    rank = np.arange(len(best)) - np.searchsorted(query[best], query[best])
    keep = best[rank < k]
    fused = np.full((batch, k), -np.inf, dtype=np.float32)
    out_rows = np.full((batch, k), -1, dtype=np.int64)
    at = (query[keep], rank[rank < k])
    fused[at], out_rows[at] = totals[keep], group_rows[keep]
    mine = np.full((len(first), len(names)), np.nan, dtype=np.float32)  # [groups, fields]
    flat_field = field[order].ravel()
    mine[group[valid], flat_field[valid]] = np.take_along_axis(own, order, axis=1).ravel()[valid]
    field_scores = {}
    for f, name in enumerate(names):
        field_scores[name] = np.full((batch, k), np.nan, dtype=np.float32)
        field_scores[name][at] = mine[keep, f]
    return fused, out_rows, field_scores


def rrf_contributions(scores: np.ndarray, found: np.ndarray, normalization: str,
                      rrf_k: int = RRF_K) -> np.ndarray:
    """Reciprocal rank fusion (Cormack et al., SIGIR 2009): 1 / (rrf_k + rank), ranks from 1 among
    each query's found candidates. scores [B, C] best first, found [B, C] -> [B, C], 0 where not
    found."""
    return np.where(found, 1.0 / (rrf_k + np.cumsum(found, axis=1, dtype=np.float64)), 0.0)


def normalized_contributions(scores: np.ndarray, found: np.ndarray, normalization: str) -> np.ndarray:
    """One field's candidate scores [B, C] mapped to a common scale per query (over its `found`
    ones): min-max to [0, 1]; z-scores; or robust z-scores (minus the median, over the median
    absolute deviation, or the standard deviation where that is 0), which the few candidates far
    from the rest (those other fields brought in, a lone top hit) do not squeeze. A query whose
    scores are all equal maps them to 1 (min-max) or 0. 0 where not found."""
    s = scores.astype(np.float64)
    if normalization == "minmax":
        low = np.where(found, s, np.inf).min(axis=1, initial=np.inf, keepdims=True)
        spread = np.where(found, s, -np.inf).max(axis=1, initial=-np.inf, keepdims=True) - low
        with np.errstate(invalid="ignore", divide="ignore"):
            out = np.where(spread > 0, (s - low) / spread, 1.0)
        return np.where(found, out, 0.0)
    out = np.zeros_like(s)
    for b in range(len(s)):  # per query, as numpy's mean, median and std sum them
        mine = s[b, found[b]]
        if not len(mine):
            continue
        if normalization == "zscore":
            middle, spread = mine.mean(), mine.std()
        else:
            middle = np.median(mine)
            spread = np.median(np.abs(mine - middle)) or mine.std()
        out[b, found[b]] = (mine - middle) / spread if spread > 0 else 0.0
    return out
