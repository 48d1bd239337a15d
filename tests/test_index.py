"""Each approximate index against exact search, with and without filters and re-scoring."""

import numpy as np
import pytest

from retriever.index.faiss_index import FaissIndex, gpu_count
from retriever.kernels import reference

from helpers import random_vectors

K = 10


def recall(approx: np.ndarray, exact_scores: np.ndarray, base: np.ndarray, queries: np.ndarray, k: int) -> float:
    """Tie-tolerant recall: a returned row counts if its exact score reaches the k-th exact score."""
    hits = 0
    for q, rows in enumerate(approx):
        kth = exact_scores[q, k - 1]
        rows = rows[rows >= 0]
        true = base[rows] @ queries[q]
        hits += int((true >= kth - 1e-5).sum())
    return hits / (len(approx) * k)


def built(factory: str, base: np.ndarray) -> FaissIndex:
    index = FaissIndex(factory, base.shape[1], "ip")
    index.train(base)
    index.add(base)
    return index


@pytest.fixture(scope="module")
def data():
    points = random_vectors(4050, 32, seed=1)
    base, queries = points[:4000], points[4000:]  # queries from the same clusters, not in the base
    exact_scores, exact_rows = reference.exact_search(queries, base, K)
    return base, queries, exact_scores, exact_rows


@pytest.mark.parametrize(
    "factory, params, floor",
    [
        ("Flat", {}, 1.0),
        ("IVF32,Flat", {"nprobe": 8}, 0.9),
        ("IVF32,PQ16", {"nprobe": 8}, 0.5),
        ("IVF32,PQ16x4fs", {"nprobe": 8}, 0.4),
        ("HNSW16", {"efSearch": 64}, 0.9),
    ],
)
def test_index_recall_against_exact(data, factory, params, floor):
    base, queries, exact_scores, _ = data
    index = built(factory, base)
    scores, rows = index.search(queries, K, params)
    assert rows.shape == (len(queries), K)
    assert recall(rows, exact_scores, base, queries, K) >= floor
    assert np.all(np.diff(scores, axis=1) <= 1e-6), "scores come best first"


def test_more_probes_never_hurt_ivf(data):
    base, queries, exact_scores, _ = data
    index = built("IVF32,Flat", base)
    low = recall(index.search(queries, K, {"nprobe": 1})[1], exact_scores, base, queries, K)
    high = recall(index.search(queries, K, {"nprobe": 32})[1], exact_scores, base, queries, K)
    assert high >= low and high == pytest.approx(1.0)


@pytest.mark.parametrize("factory", ["Flat", "IVF32,Flat", "HNSW16"])
def test_selector_and_overfetch_both_return_only_allowed_rows(data, factory):
    base, queries, _, _ = data
    allowed = np.zeros(len(base), dtype=bool)
    allowed[np.random.default_rng(0).choice(len(base), 300, replace=False)] = True
    exact_scores, _ = reference.exact_search(queries, base, K, allowed=allowed)
    index = built(factory, base)
    params = {"nprobe": 32, "efSearch": 256}
    _, with_selector = index.search(queries, K, params, allowed)
    index._selectors = False  # the path GPU indexes take
    _, overfetched = index.search(queries, K, params, allowed)
    for rows in (with_selector, overfetched):
        assert (rows >= 0).all(), "k hits come back while k allowed rows exist"
        assert allowed[rows].all()
        assert recall(rows, exact_scores, base, queries, K) >= 0.9


@pytest.mark.parametrize("filtered", [False, True])
def test_fast_scan_one_query_at_a_time_scores_as_the_batch(data, filtered):
    """One query takes faiss's probe-parallel fast-scan implementation, a batch the default:
    the same distances, only allowed rows (equal distances may come in another order)."""
    base, queries, _, _ = data
    index = built("IVF32,PQ16x4fs", base)
    assert index._fast_scan is not None  # else both searches take faiss's default and prove nothing
    allowed = np.random.default_rng(2).random(len(base)) < 0.5 if filtered else None
    params = {"nprobe": 8}
    batch_scores, _ = index.search(queries, K, params, allowed)
    for q in range(len(queries)):
        scores, rows = index.search(queries[q : q + 1], K, params, allowed)
        np.testing.assert_array_equal(scores[0], batch_scores[q])
        assert allowed is None or allowed[rows[0][rows[0] >= 0]].all()
    assert index._fast_scan.implem == 0  # faiss's default between searches


def test_fast_scan_searched_by_threads_mixing_batch_sizes_answers_as_alone(data):
    """The probe-parallel switch is flipped per call on a shared index: threads that search one
    query and whole batches at once still get the distances a lone search gets."""
    from concurrent.futures import ThreadPoolExecutor

    base, queries, _, _ = data
    index = built("IVF32,PQ16x4fs", base)
    params = {"nprobe": 8}
    alone, _ = index.search(queries, K, params)
    sizes = [1, len(queries), 1, 7] * 10

    def search(size):
        scores, _ = index.search(queries[:size], K, params)
        return size, scores

    with ThreadPoolExecutor(4) as pool:
        for size, scores in pool.map(search, sizes):
            np.testing.assert_array_equal(scores, alone[:size])


def test_overfetch_with_fewer_allowed_rows_than_k(data):
    base, queries, _, _ = data
    allowed = np.zeros(len(base), dtype=bool)
    allowed[[5, 17, 900]] = True
    index = built("Flat", base)
    index._selectors = False
    _, rows = index.search(queries[:3], K, {}, allowed)
    assert sorted(rows[0][rows[0] >= 0]) == [5, 17, 900]
    assert (rows[:, 3:] == -1).all()


def test_l2_scores_are_negated_distances(data):
    base, queries, _, _ = data
    index = FaissIndex("Flat", 32, "l2")
    index.add(base)
    scores, rows = index.search(queries[:5], K)
    ref_scores, ref_rows = reference.exact_search(queries[:5], base, K, metric="l2")
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-4, atol=1e-4)


def test_serialization_round_trip(data):
    base, queries, _, _ = data
    index = built("IVF32,PQ16", base)
    again = FaissIndex.from_bytes(index.to_bytes(), "IVF32,PQ16", 32, "ip")
    a = index.search(queries, K, {"nprobe": 4})
    b = again.search(queries, K, {"nprobe": 4})
    np.testing.assert_array_equal(a[1], b[1])


@pytest.mark.gpu
@pytest.mark.skipif(gpu_count() == 0, reason="needs a faiss GPU build and a GPU")
@pytest.mark.parametrize("factory", ["Flat", "IVF32,Flat"])
def test_gpu_search_matches_cpu(data, factory):
    base, queries, exact_scores, _ = data
    cpu_index = built(factory, base)
    gpu_index = built(factory, base)
    gpu_index.use_gpu()
    cpu_scores, _ = cpu_index.search(queries, K, {"nprobe": 8})
    gpu_scores, gpu_rows = gpu_index.search(queries, K, {"nprobe": 8})
    np.testing.assert_allclose(gpu_scores, cpu_scores, rtol=1e-3, atol=1e-3)
    allowed = np.zeros(len(base), dtype=bool)
    allowed[::7] = True
    _, rows = gpu_index.search(queries, K, {"nprobe": 32}, allowed)
    assert allowed[rows].all()
