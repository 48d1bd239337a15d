"""Indexes on a torch device (CUDA when present, else the CPU) against their CPU counterparts:
exact search against the numpy oracle, IVF-PQ against faiss at the same nprobe, binary codes
against the CPU scans, and a clear error for bad queries."""

from __future__ import annotations

import faiss
import numpy as np
import pytest
import torch

from helpers import assert_same_top_k
from retriever.errors import InvalidRequest
from retriever.index.gpu_search import DeviceBinary, DeviceFlat, DeviceIvfPq
from retriever.kernels import gpu, reference

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def clustered(n: int, dim: int = 32, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = np.random.default_rng(99).normal(size=(40, dim)) * 3
    return (centers[rng.integers(0, 40, n)] + rng.normal(size=(n, dim))).astype(np.float32)


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_device_flat_equals_exact_search(metric, monkeypatch):
    monkeypatch.setattr(gpu, "CHUNK_ELEMENTS", 3000)
    base, queries = clustered(2000), clustered(20, seed=1)
    allowed = np.random.default_rng(2).random(2000) < 0.5
    scores, rows = DeviceFlat(base, metric, DEVICE, torch.float32).search(queries, 10, allowed=allowed)
    ref_scores, ref_rows = reference.exact_search(queries, base, 10, metric, allowed)
    assert_same_top_k(scores, rows, ref_scores, ref_rows, atol=1e-2)
    half_rows = DeviceFlat(base, metric, DEVICE).search(queries, 10)[1]  # fp16: near-exact recall
    truth = reference.exact_search(queries, base, 10, metric)[1]
    assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(half_rows, truth)]) >= 0.97


@pytest.fixture(scope="module", params=[faiss.METRIC_L2, faiss.METRIC_INNER_PRODUCT], ids=["l2", "ip"])
def ivfpq(request):
    base = clustered(3000)
    index = faiss.index_factory(32, "IVF32,PQ8", request.param)
    index.do_polysemous_training = False  # slow, and beside the point here
    index.train(base)
    index.add(base)
    return index, DeviceIvfPq(index, DEVICE, refine=base)


@pytest.mark.parametrize("nprobe", [1, 7, 32])
def test_device_ivfpq_equals_faiss(ivfpq, nprobe):
    index, on_device = ivfpq
    metric, queries = index.metric_type, clustered(25, seed=1)
    index.nprobe = nprobe
    ref_scores, ref_rows = index.search(queries, 10)
    scores, rows = on_device.search(queries, 10, {"nprobe": nprobe})
    ref_scores = -ref_scores if metric == faiss.METRIC_L2 else ref_scores  # ours: higher is better
    assert_same_top_k(scores, rows, ref_scores, ref_rows, atol=2e-3 * np.abs(ref_scores).max())


def test_device_ivfpq_rescoring_reaches_exact_recall(ivfpq):
    index, on_device = ivfpq
    base, queries = clustered(3000), clustered(25, seed=1)
    metric = "l2" if index.metric_type == faiss.METRIC_L2 else "ip"
    truth = reference.exact_search(queries, base, 10, metric)[1]
    plain = on_device.search(queries, 10, {"nprobe": 32})[1]
    refined = on_device.search(queries, 10, {"nprobe": 32, "rescore": 100})[1]

    def recall(found):
        return np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, truth)])

    assert recall(refined) >= 0.98 and recall(refined) > recall(plain)


def test_device_binary_matches_cpu_scans():
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 256, size=(1500, 6), dtype=np.uint8)
    queries = rng.integers(0, 256, size=(4, 6), dtype=np.uint8)
    index = DeviceBinary(codes, DEVICE)
    distances, rows = index.hamming(queries, 20)
    truth = reference.hamming_distances(queries, codes)
    for b in range(4):
        order = np.lexsort((np.arange(1500), truth[b]))[:20]
        np.testing.assert_array_equal(rows[b], order)
        np.testing.assert_array_equal(distances[b], truth[b, order])
    tables = rng.normal(size=(4, 6, 256)).astype(np.float32)
    offsets = rng.normal(size=4).astype(np.float32)
    from retriever.kernels.binary import code_top_k

    ref_scores, ref_rows = code_top_k(tables, offsets, codes, 20, None)
    scores, found = index.lookup(tables, offsets, 20)
    assert_same_top_k(scores, found, ref_scores, ref_rows)


def test_bad_queries_are_refused():
    index = DeviceFlat(clustered(100), "ip", DEVICE)
    with pytest.raises(InvalidRequest, match=r"\[B, 32\]"):
        index.search(np.ones((2, 31), np.float32), 5)
    with pytest.raises(InvalidRequest, match="NaN"):
        index.search(np.full((1, 32), np.nan, np.float32), 5)
    with pytest.raises(InvalidRequest, match="bytes"):
        DeviceBinary(np.zeros((10, 4), np.uint8), DEVICE).hamming(np.zeros((1, 3), np.uint8), 2)


@pytest.mark.parametrize("factory, metric", [("Flat", "ip"), ("Flat", "l2"), ("IVF16,PQ8", "l2"), ("IVF16,PQ8", "ip"),
                                             ("BFlat", "hamming"), ("HNSW8", "ip")])
def test_faiss_index_on_device_answers_like_the_cpu(factory, metric):
    """A collection's FaissIndex moved to a torch device gives the CPU answers, filtered or not;
    families without a device path (HNSW) keep searching on the CPU."""
    from retriever.index.faiss_index import FaissIndex

    base, queries = clustered(1500), clustered(12, seed=1)
    if metric == "hamming":
        base, queries = np.packbits(base > 0, axis=1), np.packbits(queries > 0, axis=1)
    index = FaissIndex(factory, 32, metric)
    index.train(base)
    index.add(base)
    allowed = np.random.default_rng(3).random(1500) < 0.6
    params = {"nprobe": 4}
    expected = [index.search(queries, 10, params), index.search(queries, 10, params, allowed)]
    index.use_device(DEVICE)
    assert (index._device_index is None) == (factory == "HNSW8")
    tolerance = 2e-3 * max(1.0, np.abs(expected[0][0]).max())
    for (ref_scores, ref_rows), filtered in zip(expected, [None, allowed]):
        assert_same_top_k(*index.search(queries, 10, params, filtered), ref_scores, ref_rows, atol=tolerance)
    index.add(base[:10] if metric == "hamming" else base[:10] * 1.5)  # later adds reach the device copy
    assert_same_top_k(*index.search(queries, 10, params), *index.clone().search(queries, 10, params), atol=tolerance)


def test_an_index_larger_than_free_device_memory_is_refused(monkeypatch):
    from retriever.errors import OutOfDeviceMemory
    from retriever.index import gpu_search

    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (1 << 20, 80 << 30))  # 1 MiB free
    with pytest.raises(OutOfDeviceMemory, match=r"exact index needs 2\.4 MiB on cuda, which has 1\.0 MiB free of 80\.00 GiB"):
        gpu_search.place(np.zeros((10_000, 64), np.float32), "cuda", "exact index")
