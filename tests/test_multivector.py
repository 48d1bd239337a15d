"""Multi-vector building blocks: MUVERA encodings and MaxSim against token-by-token references."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from retriever.index.fde import FdeConfig, FdeEncoder
from retriever.kernels import reference


def clouds(count: int, dim: int, seed: int, max_tokens: int = 12):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, max_tokens + 1, size=count)
    tokens = rng.standard_normal((int(sizes.sum()), dim)).astype(np.float32)
    tokens /= np.linalg.norm(tokens, axis=1, keepdims=True)
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    return tokens, offsets


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 1000), bits=st.integers(0, 4), projection=st.sampled_from([0, 4, 8]), final=st.sampled_from([0, 64]),
       document=st.booleans(), fill=st.booleans())
def test_fde_matches_the_reference(seed, bits, projection, final, document, fill):
    config = FdeConfig(repetitions=3, simhash_bits=bits, projection_dim=projection, fill_empty_partitions=fill, final_dim=final, seed=seed)
    dim = 8
    encoder = FdeEncoder(config, dim)
    tokens, offsets = clouds(5, dim, seed)
    fast = (encoder.encode_documents if document else encoder.encode_queries)(tokens, offsets)
    assert fast.shape == (5, config.dimension(dim)) == (5, encoder.dim)
    for n in range(5):
        slow = reference.fde_reference(tokens[offsets[n]:offsets[n + 1]], encoder._hyperplanes, encoder._projections, document,
                                       fill, encoder._sketch)
        np.testing.assert_allclose(fast[n], slow, rtol=1e-4, atol=1e-5)


def test_fde_is_deterministic_and_approximates_chamfer():
    dim = 32
    encoder = FdeEncoder(FdeConfig(repetitions=20, simhash_bits=4, projection_dim=0), dim)
    again = FdeEncoder(FdeConfig(repetitions=20, simhash_bits=4, projection_dim=0), dim)
    docs, doc_offsets = clouds(200, dim, seed=1, max_tokens=30)
    queries, query_offsets = clouds(20, dim, seed=2, max_tokens=8)
    d = encoder.encode_documents(docs, doc_offsets)
    np.testing.assert_array_equal(d, again.encode_documents(docs, doc_offsets))
    q = encoder.encode_queries(queries, query_offsets)
    approx = q @ d.T / encoder.config.repetitions  # [20, 200]
    doc_list = [docs[doc_offsets[i]:doc_offsets[i + 1]] for i in range(200)]
    exact = np.stack([reference.maxsim_scores(queries[query_offsets[i]:query_offsets[i + 1]], doc_list) for i in range(20)])
    correlation = np.mean([np.corrcoef(a, e)[0, 1] for a, e in zip(approx, exact)])
    assert correlation > 0.5


@pytest.mark.parametrize("bad", [dict(repetitions=0), dict(simhash_bits=17), dict(projection_dim=-1), dict(final_dim=1.5)])
def test_fde_config_is_validated(bad):
    with pytest.raises(ValueError):
        FdeConfig(**bad)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_maxsim_kernel_matches_reference(device):
    torch = pytest.importorskip("torch")
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA")
    from retriever.kernels.maxsim import maxsim

    rng = np.random.default_rng(0)
    sizes = np.array([3, 0, 7, 1, 12])  # an empty document scores 0
    tokens = rng.standard_normal((int(sizes.sum()), 16)).astype(np.float32)
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    query = rng.standard_normal((5, 16)).astype(np.float32)
    expected = reference.maxsim_scores(query, [tokens[offsets[i]:offsets[i + 1]] for i in range(len(sizes))])
    np.testing.assert_allclose(maxsim(query, tokens, offsets, device), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype, tolerance", [("float16", 2e-3), ("int8", 1e-2)])
def test_token_store_gathers_across_segments(dtype, tolerance):
    from retriever.index.tokens import TokenStore, compress

    dim = 8
    segments, whole = [], []
    for seed, count in ((1, 4), (2, 3), (3, 5)):
        tokens, offsets = clouds(count, dim, seed)
        codes, scales = compress(tokens, dtype)
        segments.append((codes, scales, offsets))
        whole.extend(tokens[offsets[i]:offsets[i + 1]] for i in range(count))
    store = TokenStore(segments, dim)
    assert len(store) == 12
    rows = np.array([11, 0, 5, 4, 7, 0])
    tokens, offsets = store.gather(rows)
    for i, row in enumerate(rows):
        np.testing.assert_allclose(tokens[offsets[i]:offsets[i + 1]], whole[row], atol=tolerance)
