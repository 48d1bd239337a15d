"""Multi-vector building blocks: MUVERA encodings and MaxSim against token-by-token references."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import clouds, split
from retriever import buffer
from retriever.index.fde import FdeConfig, FdeEncoder
from retriever.kernels import reference


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


# ---- multivector fields in a collection ---------------------------------------------------------------

import retriever  # noqa: E402
from retriever.errors import InvalidConfig, InvalidRequest  # noqa: E402


def token_collection(path, **field):
    config = {"name": "mv", "max_k": 500, "max_candidates": 10**9,
              "fields": [{"name": "tok", "kind": "multivector", "dim": 16,
                                                      "fde": {"repetitions": 8, "simhash_bits": 3, "projection_dim": 8}, **field}]}
    return retriever.Collection.create(path, config)


@pytest.mark.parametrize("token_dtype, tolerance", [("float16", 3e-3), ("int8", 3e-2)])
@pytest.mark.parametrize("tile", [4096, 20])  # tokens per exhaustive tile: every document in one, or many
def test_exhaustive_and_full_rerank_match_reference_maxsim(
    tmp_path, token_dtype, tolerance, tile, monkeypatch
):
    from retriever.fields import multivector

    monkeypatch.setattr(multivector, "MAXSIM_TILE", tile)
    c = token_collection(tmp_path / "c", token_dtype=token_dtype)
    docs = split(*clouds(120, 16, seed=5, max_tokens=15))
    c.add([{"id": f"d{i}"} for i in range(70)], vectors={"tok": docs[:70]})
    c.add([{"id": f"d{i}"} for i in range(70, 120)], vectors={"tok": docs[70:]})
    queries = split(*clouds(4, 16, seed=6, max_tokens=5))
    for params in ({"exhaustive": 1}, {"rerank": 120}):  # re-ranking every document is exhaustive search
        for hits, query in zip(c.search(queries, k=10, params=params), queries):
            expected = reference.maxsim_scores(query, docs)
            np.testing.assert_allclose(hits.scores, np.sort(expected)[::-1][:10], atol=tolerance)
            assert len(set(hits.ids) & {f"d{i}" for i in np.argsort(-expected)[:10]}) >= 9
    reopened = retriever.Collection.open(c.path)
    assert reopened.search(queries, k=5)[0].ids == c.search(queries, k=5)[0].ids


def test_multivector_filters_deletes_and_upserts(tmp_path):
    c = token_collection(tmp_path / "c")
    docs = split(*clouds(40, 16, seed=7))
    c.add([{"id": f"d{i}", "even": i % 2 == 0} for i in range(40)], vectors={"tok": docs})
    query = [docs[3]]
    assert c.search(query, k=1, params={"exhaustive": 1})[0].ids == ["d3"]
    assert "d3" not in c.search(query, k=10, filter={"even": True})[0].ids
    evens = c.search(query, k=30, filter={"even": True}, params={"exhaustive": 1})[0].ids
    assert sorted(evens, key=lambda i: int(i[1:])) == [f"d{i}" for i in range(0, 40, 2)]
    c.delete(["d3"])
    assert "d3" not in c.search(query, k=10, params={"exhaustive": 1})[0].ids
    c.add([{"id": "d3", "even": False}], vectors={"tok": [docs[3]]})
    assert c.search(query, k=1)[0].ids == ["d3"]


def test_spann_index_over_fdes_matches_a_flat_one(tmp_path, monkeypatch):
    """FDEs searched by SPANN (posting lists on disk): probing every list gives the Flat field's
    candidates, hence its answers; a merge builds new lists without the deleted rows."""
    from retriever.fields import parts

    monkeypatch.setattr(parts, "SPANN_MIN_ROWS", 100)  # segments of 100 rows or more get posting lists
    monkeypatch.setattr(buffer, "FLUSH_WRITES", 1)  # each write a segment
    flat, spann = token_collection(tmp_path / "flat"), token_collection(tmp_path / "spann", index="SPANN,L10")
    docs = split(*clouds(200, 16, seed=8, max_tokens=12))
    for c in (flat, spann):
        c.add([{"id": f"d{i}"} for i in range(150)], vectors={"tok": docs[:150]})
    queries = split(*clouds(5, 16, seed=9, max_tokens=5))
    everything = {"rerank": 30, "nprobe": 10_000, "prune_pct": 10**6}
    for a, b in zip(flat.search(queries, k=10, params={"rerank": 30}), spann.search(queries, k=10, params=everything)):
        np.testing.assert_allclose(b.scores, a.scores, atol=1e-4)
    first = spann.segments[0].entry["fields"]["tok"]["spann"]["dir"]
    for c in (flat, spann):
        c.add(
            [{"id": f"d{i}"} for i in range(150, 200)], vectors={"tok": docs[150:]}
        )  # a small segment: searched exactly
        c.delete(["d3"])
        c.optimize()
    [merged] = spann.segments
    assert merged.entry["fields"]["tok"]["spann"]["dir"] != first and merged.rows == 199
    reopened = retriever.Collection.open(tmp_path / "spann")
    for a, b in zip(flat.search(queries, k=10, params={"rerank": 30}), reopened.search(queries, k=10, params=everything)):
        np.testing.assert_allclose(b.scores, a.scores, atol=1e-4)
        assert "d3" not in b.ids


@pytest.mark.parametrize("given, words", [
    ([np.ones((3, 15), np.float32)], "dimension|must be"),
    ([np.full((2, 16), np.nan, np.float32)], "NaN"),
    ([np.zeros((0, 16), np.float32)], "no tokens"),
    ([["x", "y"]], "token vectors"),
    ([np.ones((2, 16), np.float32), np.ones((1025, 16), np.float32)], "query 1 has 1025 .* at most 1024"),
])
def test_bad_token_queries_are_refused(tmp_path, given, words):
    c = token_collection(tmp_path / "c")
    c.add([{"id": "a"}], vectors={"tok": [np.ones((2, 16), np.float32)]})
    with pytest.raises(InvalidRequest, match=words):
        c.search(given, fields="tok")


def test_bad_token_documents_change_nothing(tmp_path):
    c = token_collection(tmp_path / "c")
    c.add([{"id": "a"}], vectors={"tok": [np.ones((2, 16), np.float32)]})
    version = c.version
    for bad in ([np.ones((2, 8), np.float32)], [np.full((1, 16), np.inf, np.float32)], [np.ones((1, 16))] * 2):
        with pytest.raises(InvalidRequest):
            c.add([{"id": "b"}], vectors={"tok": bad})
    assert retriever.Collection.open(c.path).version == version


def test_fde_larger_than_allowed_is_a_config_error(tmp_path):
    with pytest.raises(InvalidConfig, match="max_fde_dim"):
        token_collection(tmp_path / "c", fde={"repetitions": 64, "simhash_bits": 8, "projection_dim": 0})


@pytest.mark.model
def test_minilm_token_vectors_end_to_end(tmp_path):
    from helpers import TINY_CORPUS

    c = retriever.Collection.create(tmp_path / "c", {"name": "tiny", "fields": [
        {"name": "tok", "kind": "multivector", "model": "sentence-transformers/all-MiniLM-L6-v2", "token_dim": 64,
         "fde": {"repetitions": 10, "simhash_bits": 3, "projection_dim": 16}}]})
    c.add(TINY_CORPUS)
    assert c.info()["fields"]["tok"]["token_dim"] == 64
    for params in ({}, {"exhaustive": 1}):
        hits = c.search(["which animal barks?", "baking bread with yeast"], k=2, params=params)
        assert [h.ids[0] for h in hits] == ["dog", "bread"]
    with pytest.raises(InvalidRequest, match="no tokens"):
        c.search("?!", k=1)


def test_fde_index_search_parameters_are_tuned_at_build(tmp_path):
    c = token_collection(tmp_path / "c", index="IVF16,Flat")
    docs = split(*clouds(1200, 16, seed=11, max_tokens=8))
    c.add([{"id": f"d{i}"} for i in range(1200)], vectors={"tok": docs})
    c.flush()  # a segment with its own IVF index (the write buffer is searched exactly)
    [tuned] = c.info()["fields"]["tok"]["tuned"]
    assert tuned["rows"] == 1200 and tuned["nprobe"] > 1
    queries = split(*clouds(30, 16, seed=12, max_tokens=5))
    exact = c.search(queries, k=10, params={"exhaustive": 1})

    def recall(params):
        found = c.search(queries, k=10, params=params)
        return np.mean([len(set(a.ids) & set(b.ids)) / 10 for a, b in zip(found, exact)])

    assert recall({}) > recall({"nprobe": 1})  # the tuned default beats the bare index
    assert recall({}) == recall({"nprobe": tuned["nprobe"]})


# ---- token retrieval (XTR) ------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), tokens=st.integers(1, 6), k=st.integers(1, 8),
       documents=st.integers(1, 5))
def test_imputed_scores_match_the_pair_by_pair_reference(seed, tokens, k, documents):
    from retriever.index.xtr import imputed_scores

    rng = np.random.default_rng(seed)
    similarities = np.sort(rng.standard_normal((tokens, k)).astype(np.float32), axis=1)[:, ::-1]
    rows = rng.integers(0, documents, (tokens, k))  # a document retrieved several times per token too
    rows[rng.random((tokens, k)) < 0.2] = -1  # padding: fewer tokens found, or none at all
    similarities = np.where(rows >= 0, similarities, -np.inf).astype(np.float32)
    candidates, scores = imputed_scores(similarities, rows)
    expected = reference.xtr_scores(similarities, rows)
    assert candidates.tolist() == sorted(expected)
    np.testing.assert_allclose(scores, [expected[d] for d in candidates.tolist()], rtol=1e-5, atol=1e-5)


def xtr_reference(query, docs, allowed, token_k):
    """What token retrieval over every allowed document's tokens scores: each query token's exact
    top `token_k` tokens, then the pair-by-pair reference."""
    tokens = np.concatenate([d for d, keep in zip(docs, allowed) if keep])
    owner = np.concatenate([np.full(len(d), i) for i, (d, keep) in enumerate(zip(docs, allowed)) if keep])
    similarities, positions = reference.exact_search(query, tokens, token_k)
    rows = np.where(positions >= 0, owner[np.maximum(positions, 0)], -1)
    return reference.xtr_scores(similarities, rows)


def test_token_retrieval_over_segments_matches_the_reference(tmp_path):
    """Two segments, a delete and a filter: each query token's best tokens over the whole
    collection, scored pair by pair, are what the field answers; with every token retrieved the
    scores are exact MaxSim."""
    c = token_collection(tmp_path / "c", token_index="Flat", token_k=12)
    docs = split(*clouds(90, 16, seed=21, max_tokens=9))
    rounded = [d.astype(np.float16).astype(np.float32) for d in docs]  # what the field stores
    c.add([{"id": f"d{i}", "even": i % 2 == 0} for i in range(50)], vectors={"tok": docs[:50]})
    c.add([{"id": f"d{i}", "even": i % 2 == 0} for i in range(50, 90)], vectors={"tok": docs[50:]})
    c.delete(["d4", "d61"])
    queries = split(*clouds(5, 16, seed=22, max_tokens=4))
    live = np.array([i not in (4, 61) for i in range(90)])
    for filter, allowed in ((None, live), ({"even": True}, live & (np.arange(90) % 2 == 0))):
        for hits, query in zip(c.search(queries, k=7, filter=filter, params={"xtr": 1}), queries):
            expected = xtr_reference(query, rounded, allowed, 12)
            best = sorted(expected, key=lambda d: (-expected[d], d))[:7]
            assert [int(i[1:]) for i in hits.ids] == best
            np.testing.assert_allclose(hits.scores, [expected[d] for d in best], atol=1e-4)
    everything = c.search(queries, k=10, params={"xtr": 1, "token_k": 700})
    exact = c.search(queries, k=10, params={"exhaustive": 1})
    for a, b in zip(everything, exact):
        assert a.ids == b.ids
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-4)


def test_token_retrieval_with_a_trained_token_index(tmp_path):
    """A segment large enough for an IVF-PQ token index: the field's scores are the reference's
    over the tokens that index retrieved; `rescore` re-ranks by exact MaxSim; the index survives
    reopening and a merge builds one for the merged segment."""
    from retriever.fields.base import merge_top_k

    c = token_collection(tmp_path / "c", token_index="IVF16,PQ8x4fs", token_k=20)
    docs = split(*clouds(500, 16, seed=23, max_tokens=10))
    c.add([{"id": f"d{i}"} for i in range(300)], vectors={"tok": docs[:300]})
    c.flush()  # each flush: a segment with its own token index (the write buffer's are exact)
    c.add([{"id": f"d{i}"} for i in range(300, 500)], vectors={"tok": docs[300:]})
    c.flush()
    field = c.fields["tok"]
    assert [p.tokens.index.ivf is not None for p in field.parts] == [True, True]
    queries = split(*clouds(4, 16, seed=24, max_tokens=4))
    tokens = np.concatenate(queries)
    found = [p.tokens.search(tokens, 20, {}, None) for p in field.parts]
    similarities, rows = merge_top_k(found, field.starts, len(tokens), 20)
    first = 0
    for hits, query in zip(c.search(queries, k=5, params={"xtr": 1}), queries):
        mine = slice(first, first + len(query))
        expected = reference.xtr_scores(similarities[mine], rows[mine])
        first += len(query)
        best = sorted(expected, key=lambda d: (-expected[d], d))[:5]
        assert [int(i[1:]) for i in hits.ids] == best
        np.testing.assert_allclose(hits.scores, [expected[d] for d in best], atol=1e-4)
    rescored = c.search(queries, k=5, params={"xtr": 1, "rescore": 50})
    for hits, query in zip(rescored, queries):
        exact = reference.maxsim_scores(query, [docs[int(i[1:])].astype(np.float16) for i in hits.ids])
        np.testing.assert_allclose(hits.scores, exact, atol=3e-3)
        assert list(hits.scores) == sorted(hits.scores, reverse=True)
    answer = [h.ids for h in c.search(queries, k=5, params={"xtr": 1})]
    reopened = retriever.Collection.open(c.path)
    assert [h.ids for h in reopened.search(queries, k=5, params={"xtr": 1})] == answer
    c.optimize()
    merged = c.fields["tok"]
    assert len(merged.parts) == 1 and merged.parts[0].tokens.index.ntotal == sum(len(d) for d in docs)
    assert c.info()["fields"]["tok"]["token_index_bytes_per_document"] > 0


def test_token_retrieval_refusals(tmp_path):
    c = token_collection(tmp_path / "c")
    docs = split(*clouds(10, 16, seed=25))
    c.add([{"id": f"d{i}"} for i in range(10)], vectors={"tok": docs})
    with pytest.raises(InvalidRequest, match="set token_index"):
        c.search([docs[0]], k=3, params={"xtr": 1})
    for search in ({"xtr": 2}, {"token_k": 0}, {"depth": 3}):
        with pytest.raises(InvalidConfig, match="search"):
            token_collection(tmp_path / "search", token_index="Flat", search=search)
    for bad in ("SPANN", "", 7, "NotAnIndex"):
        with pytest.raises(InvalidConfig, match="token_index|not a valid faiss"):
            token_collection(tmp_path / f"bad{bad!s}", token_index=bad)
    with pytest.raises(InvalidRequest, match="token_k"):
        c.search([docs[0]], k=3, params={"xtr": 1, "token_k": 0})
    big = token_collection(tmp_path / "big", token_index="Flat")
    big.add([{"id": f"d{i}"} for i in range(10)], vectors={"tok": docs})
    with pytest.raises(InvalidRequest, match="tokens to retrieve"):  # 1,000 tokens x 5,000 deep
        big.search([np.ones((1000, 16), np.float32)], k=3, params={"xtr": 1, "token_k": 5000})


def test_xtr_as_the_field_default(tmp_path):
    c = token_collection(tmp_path / "c", token_index="Flat", search={"xtr": 1}, token_k=5)
    docs = split(*clouds(40, 16, seed=26))
    c.add([{"id": f"d{i}"} for i in range(40)], vectors={"tok": docs})
    query = [docs[3] + 0.01]
    by_tokens = c.search(query, k=5)
    assert by_tokens[0].ids == c.search(query, k=5, params={"xtr": 1})[0].ids
    assert list(by_tokens[0].scores) != list(c.search(query, k=5, params={"xtr": 0})[0].scores)
