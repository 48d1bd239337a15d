"""GPU search primitives against the numpy oracles over odd shapes and dtypes: the torch fallback
on any device, and the Triton kernels on CUDA or, without one, in Triton's interpreter on small
shapes (TRITON_INTERPRET=1, how CI runs them)."""

from __future__ import annotations

import importlib.util
import os

import faiss
import numpy as np
import pytest
import torch

from helpers import assert_same_top_k
from retriever.kernels import gpu, reference
from retriever.kernels.binary import candidate_scores

# Inputs are rounded to the dtype first and the oracle sees the rounded values, so what is left is
# accumulation order (fp32 accumulation everywhere) and, in the interpreter, half-precision dots.
TOLERANCE = {torch.float32: (1e-4, 1e-4), torch.float16: (1e-2, 1e-2), torch.bfloat16: (2e-2, 2e-2)}
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(scope="module")
def triton_backend():
    """'triton': compiled on CUDA, in the interpreter on CPU (conftest switches it on)."""
    if importlib.util.find_spec("triton") is None:
        pytest.skip("Triton is not installed (pip install triton)")
    if DEVICE == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("Triton kernels on CPU need TRITON_INTERPRET=1 before triton is imported")
    return "triton"


@pytest.fixture(params=["torch", "triton"])
def backend(request):
    return request.getfixturevalue("triton_backend") if request.param == "triton" else "torch"


def tensor(array: np.ndarray, dtype=None) -> torch.Tensor:
    out = torch.from_numpy(np.ascontiguousarray(array)).to(DEVICE)
    return out.to(dtype) if dtype is not None else out


def documents(rng, lengths, dim):
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return rng.normal(size=(int(offsets[-1]), dim)).astype(np.float32), offsets


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("dim, query_lengths, doc_lengths", [
    (7, [1, 5], [0, 1, 31, 33]),
    (33, [3, 32, 17], [70, 2, 16, 0, 5]),
    (128, [32], [1, 100]),
])
def test_maxsim_pairs_match_reference(backend, dtype, dim, query_lengths, doc_lengths):
    if backend == "triton" and dtype == torch.bfloat16 and DEVICE == "cpu":
        pytest.skip("Triton's interpreter multiplies bf16 bit patterns in tl.dot (triton-lang/triton#11584)")
    rng = np.random.default_rng(dim)
    tokens, offsets = documents(rng, doc_lengths, dim)
    queries = rng.normal(size=(len(query_lengths), max(query_lengths), dim)).astype(np.float32)
    candidates = rng.integers(-1, len(doc_lengths), size=(len(query_lengths), 6))
    got = gpu.maxsim_pairs(tensor(queries, dtype), tensor(np.array(query_lengths)), tensor(tokens, dtype), tensor(offsets),
                           tensor(candidates), backend=backend).cpu().numpy()
    rounded_q = tensor(queries, dtype).float().cpu().numpy()
    rounded_t = tensor(tokens, dtype).float().cpu().numpy()
    docs = [rounded_t[offsets[i] : offsets[i + 1]] for i in range(len(doc_lengths))]
    for b, length in enumerate(query_lengths):
        expected = reference.maxsim_scores(rounded_q[b, :length], [docs[c] if c >= 0 else docs[0][:0] for c in candidates[b]])
        rtol, atol = TOLERANCE[dtype]
        np.testing.assert_allclose(got[b], expected, rtol=rtol, atol=atol * max(1.0, np.abs(expected).max()))


@pytest.mark.parametrize("code_bytes, rows", [(1, 1), (3, 130), (8, 257), (33, 64)])
def test_hamming_distances_match_reference(backend, code_bytes, rows):
    rng = np.random.default_rng(code_bytes)
    codes = rng.integers(0, 256, size=(rows, code_bytes), dtype=np.uint8)
    queries = rng.integers(0, 256, size=(3, code_bytes), dtype=np.uint8)
    got = gpu.hamming_distances(gpu.as_words(tensor(queries)), gpu.as_words(tensor(codes)), backend=backend)
    np.testing.assert_array_equal(got.cpu().numpy(), reference.hamming_distances(queries, codes))


@pytest.mark.parametrize("k", [1, 10, 300])
def test_hamming_top_k_is_exact_with_ties_broken_by_row(backend, k, monkeypatch):
    monkeypatch.setattr(gpu, "CHUNK_ELEMENTS", 64)  # many chunks, so the running merge is exercised
    rng = np.random.default_rng(k)
    codes = rng.integers(0, 256, size=(200, 2), dtype=np.uint8)
    queries = rng.integers(0, 256, size=(4, 2), dtype=np.uint8)
    allowed = rng.random(200) < 0.8
    distances, rows = gpu.hamming_top_k(gpu.as_words(tensor(queries)), gpu.as_words(tensor(codes)), k,
                                        allowed=tensor(allowed), backend=backend)
    truth = reference.hamming_distances(queries, codes)
    for b in range(len(queries)):
        candidates = np.flatnonzero(allowed)
        order = candidates[np.lexsort((candidates, truth[b, candidates]))][:k]
        found = rows[b].cpu().numpy()
        np.testing.assert_array_equal(found[: len(order)], order)
        np.testing.assert_array_equal(distances[b].cpu().numpy()[: len(order)], truth[b, order])
        assert (found[len(order) :] == -1).all()


@pytest.mark.parametrize("positions, entries", [(1, 2), (5, 16), (48, 256)])
def test_lookup_scores_match_numpy(backend, positions, entries):
    rng = np.random.default_rng(positions)
    tables = rng.normal(size=(6, positions, entries)).astype(np.float32)
    offsets = rng.normal(size=6).astype(np.float32)
    codes = rng.integers(0, entries, size=(90, positions), dtype=np.uint8)
    starts, lengths, width = np.array([0, 10, 89, 0, 40, 5]), np.array([90, 0, 1, 33, 50, 64]), 90
    got = gpu.lookup_scores(tensor(tables), tensor(offsets), tensor(codes), tensor(starts), tensor(lengths), width,
                            backend=backend).cpu().numpy()
    for g in range(6):
        rows = codes[starts[g] : starts[g] + lengths[g]]
        expected = candidate_scores(tables[g : g + 1], offsets[g : g + 1], rows[None])[0]
        np.testing.assert_allclose(got[g, : lengths[g]], expected, rtol=1e-5, atol=1e-4)
        assert np.isneginf(got[g, lengths[g] :]).all()


def test_lookup_top_k_equals_faiss_pq_search(backend, monkeypatch):
    """Tables of negated squared distances from each query's sub-vectors to the PQ centroids give
    exactly faiss IndexPQ's asymmetric search."""
    monkeypatch.setattr(gpu, "CHUNK_ELEMENTS", 2000)
    rng = np.random.default_rng(0)
    base, queries = rng.normal(size=(700, 24)).astype(np.float32), rng.normal(size=(5, 24)).astype(np.float32)
    index = faiss.IndexPQ(24, 6, 8)
    index.train(base)
    index.add(base)
    ref_distances, ref_rows = index.search(queries, 10)
    centroids = faiss.vector_to_array(index.pq.centroids).reshape(6, 256, 4)  # [M, K, dsub]
    tables = -((queries.reshape(5, 6, 1, 4) - centroids[None]) ** 2).sum(-1)  # [B, M, K]
    codes = faiss.vector_to_array(index.codes).reshape(700, 6)
    scores, rows = gpu.lookup_top_k(tensor(tables.astype(np.float32)), tensor(np.zeros(5, np.float32)), tensor(codes), 10,
                                    backend=backend)
    assert_same_top_k(-scores.cpu().numpy(), rows.cpu().numpy(), ref_distances, ref_rows)


@pytest.mark.parametrize("metric", ["ip", "l2"])
@pytest.mark.parametrize("rows, k", [(1, 5), (333, 10), (1000, 1000)])
def test_exact_top_k_matches_reference(metric, rows, k, monkeypatch):
    monkeypatch.setattr(gpu, "CHUNK_ELEMENTS", 500)
    rng = np.random.default_rng(rows)
    base, queries = rng.normal(size=(rows, 20)).astype(np.float32), rng.normal(size=(4, 20)).astype(np.float32)
    allowed = rng.random(rows) < 0.7
    scores, found = gpu.exact_top_k(tensor(queries), tensor(base), k, metric, allowed=tensor(allowed))
    ref_scores, ref_rows = reference.exact_search(queries, base, k, metric, allowed)
    finite = np.isfinite(ref_scores)
    np.testing.assert_array_equal(np.isfinite(scores.cpu().numpy()), finite)
    assert_same_top_k(np.where(finite, scores.cpu().numpy(), 0), np.where(finite, found.cpu().numpy(), -1),
                      np.where(finite, ref_scores, 0), ref_rows)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_full_shapes_on_cuda_match_the_cpu():
    """The compiled kernels on realistic shapes against the torch fallback on the CPU."""
    rng = np.random.default_rng(0)
    lengths = rng.integers(0, 300, size=2000)
    tokens, offsets = documents(rng, lengths, 128)
    queries = rng.normal(size=(16, 32, 128)).astype(np.float32)
    candidates = rng.integers(-1, 2000, size=(16, 500))
    args = [queries, np.full(16, 32), tokens, offsets, candidates]
    on_gpu = gpu.maxsim_pairs(*(torch.from_numpy(a).cuda() for a in args)).cpu().numpy()
    on_cpu = gpu.maxsim_pairs(*(torch.from_numpy(a) for a in args), backend="torch").numpy()
    np.testing.assert_allclose(on_gpu, on_cpu, rtol=1e-3, atol=1e-2)

    codes = rng.integers(0, 256, size=(100_000, 32), dtype=np.uint8)
    query_codes = rng.integers(0, 256, size=(8, 32), dtype=np.uint8)
    for device in ("cuda", "cpu"):
        found = gpu.hamming_top_k(gpu.as_words(torch.from_numpy(query_codes).to(device)),
                                  gpu.as_words(torch.from_numpy(codes).to(device)), 100)
        if device == "cuda":
            gpu_found = [t.cpu().numpy() for t in found]
    np.testing.assert_array_equal(gpu_found[1], found[1].numpy())

    tables = rng.normal(size=(8, 32, 256)).astype(np.float32)
    offsets_t = np.zeros(8, np.float32)
    scored = [gpu.lookup_top_k(*(torch.from_numpy(a).to(device) for a in (tables, offsets_t, codes)), 100)
              for device in ("cuda", "cpu")]
    assert_same_top_k(scored[0][0].cpu().numpy(), scored[0][1].cpu().numpy(), scored[1][0].numpy(), scored[1][1].numpy())
