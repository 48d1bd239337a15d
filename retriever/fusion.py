"""Fusing ranked lists from several fields into one."""

from __future__ import annotations

import numpy as np

RRF_K = 60


def rrf(per_field: dict[str, tuple[np.ndarray, np.ndarray]], k: int, rrf_k: int = RRF_K):
    """Reciprocal rank fusion (Cormack et al., SIGIR 2009): score(d) = sum_f 1 / (rrf_k + rank_f(d)).

    per_field {name: (scores [B, C], rows [B, C])} -> (fused [B, k], rows [B, k], {name: [B, k]} with
    each field's own score, NaN where that field did not return the row).
    """
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
            own[name] = {}
            for rank, (row, score) in enumerate(zip(rows[b], scores[b])):
                if row < 0:
                    continue
                totals[int(row)] = totals.get(int(row), 0.0) + 1.0 / (rrf_k + rank + 1)
                own[name][int(row)] = float(score)
        ranked = sorted(totals.items(), key=lambda item: (-item[1], item[0]))[:k]
        for i, (row, total) in enumerate(ranked):
            fused[b, i] = total
            out_rows[b, i] = row
            for name in names:
                field_scores[name][b, i] = own[name].get(row, np.nan)
    return fused, out_rows, field_scores
