"""Fusion against a plain-Python reference: RRF, and weighted min-max / z-score."""

import statistics

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from retriever.errors import InvalidRequest
from retriever.fusion import RRF_K, FusionSpec, fuse


def reference(lists: dict[str, list[tuple[int, float]]], method: str, weights: dict[str, float], normalization: str) -> dict[int, float]:
    totals: dict[int, float] = {}
    for name, ranked in lists.items():
        scores = [s for _, s in ranked]
        for rank, (row, score) in enumerate(ranked, start=1):
            if method == "rrf":
                value = 1 / (RRF_K + rank)
            elif normalization == "minmax":
                lo, hi = min(scores), max(scores)
                value = (score - lo) / (hi - lo) if hi > lo else 1.0
            else:
                mean = sum(scores) / len(scores)
                std = (sum((s - mean) ** 2 for s in scores) / len(scores)) ** 0.5
                middle, spread = mean, std
                if normalization == "robust":
                    middle = statistics.median(scores)
                    spread = statistics.median(abs(s - middle) for s in scores) or std
                value = (score - middle) / spread if spread > 0 else 0.0
            totals[row] = totals.get(row, 0.0) + weights[name] * value
    return totals


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), method=st.sampled_from(["rrf", "weighted"]),
       normalization=st.sampled_from(["minmax", "zscore", "robust"]), k=st.integers(1, 12))
def test_fuse_matches_reference(seed, method, normalization, k):
    """A batch of three queries, fused at once, against the reference query by query."""
    rng = np.random.default_rng(seed)
    per_field = {}
    lists = [{}, {}, {}]
    for name, width in (("a", 10), ("b", 6), ("c", 9)):
        padded_rows = np.full((3, width), -1)
        padded_scores = np.full((3, width), -np.inf, dtype=np.float32)
        for b in range(3):
            size = int(rng.integers(0, width + 1))
            rows = rng.choice(20, size=size, replace=False)
            scores = np.sort(rng.normal(size=size).astype(np.float32))[::-1]
            padded_rows[b, :size], padded_scores[b, :size] = rows, scores
            lists[b][name] = list(zip(rows.tolist(), scores.tolist()))
        per_field[name] = (padded_scores, padded_rows)
    weights = {"a": 1.0, "b": float(rng.uniform(0, 2)), "c": 0.5}
    fused, rows, field_scores = fuse(per_field, k, FusionSpec.checked(method, weights, normalization, ["a", "b", "c"]))
    for b in range(3):
        expected = reference(lists[b], method, weights, normalization)
        best = sorted(expected.items(), key=lambda item: (-item[1], item[0]))[:k]
        got = [(int(r), float(s)) for r, s in zip(rows[b], fused[b]) if r >= 0]
        assert all(r < 0 for r in rows[b][len(got):])  # padding only at the end
        # the best k totals, in order
        np.testing.assert_allclose([s for _, s in got], [s for _, s in best], atol=1e-5)
        for row, score in got:  # each returned row carries its own total (ties may swap rows)
            assert expected[row] == pytest.approx(score, abs=1e-5)
        for name, ranked in lists[b].items():
            own = dict(ranked)
            for i, (row, _) in enumerate(got):
                value = field_scores[name][b, i]
                assert (np.isnan(value) and row not in own) or value == pytest.approx(own[row], rel=1e-6)


@pytest.mark.parametrize("method, weights, normalization, words", [
    ("max", None, "minmax", "fusion must be one of"),
    ("weighted", None, "l2", "normalization must be one of"),
    ("weighted", {"z": 1.0}, "minmax", "not searched"),
    ("weighted", {"a": -1.0}, "minmax", ">= 0"),
    ("weighted", {"a": float("nan")}, "minmax", "finite"),
])
def test_bad_fusion_requests(method, weights, normalization, words):
    with pytest.raises(InvalidRequest, match=words):
        FusionSpec.checked(method, weights, normalization, ["a", "b"])


def test_robust_normalization_falls_back_to_the_standard_deviation():
    """Most candidates scoring the same (BM25's zeros for documents without a query word) make
    the median absolute deviation 0: the spread is then the standard deviation, not a division by 0."""
    from retriever.fusion import normalized_contributions

    scores = np.array([[3.0, 1.0, 0.0, 0.0, 0.0, -np.inf]], dtype=np.float32)
    found = np.array([[True, True, True, True, True, False]])
    got = normalized_contributions(scores, found, "robust")
    std = np.std([3.0, 1.0, 0.0, 0.0, 0.0])
    np.testing.assert_allclose(got[0], [3.0 / std, 1.0 / std, 0, 0, 0, 0])
    assert not normalized_contributions(np.ones((1, 3), np.float32), np.ones((1, 3), bool), "robust").any()
