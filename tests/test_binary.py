"""Binary codes: binarizers, lookup-table and Hamming scans against bit-by-bit references, binary
fields against exact float search, compatible training across embedding versions, bad input."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import retriever
from helpers import make_docs
from retriever.encoders import binary
from retriever.errors import InvalidConfig, InvalidRequest, NotFound
from retriever.fields.binary import BinaryConfig, BinaryField, BinaryPart, QueryCodes
from retriever.index.faiss_index import HAMMING, FaissIndex
from retriever.index.vectors import VectorStore
from retriever.kernels import reference
from retriever.kernels.binary import bitplane_top_k, candidate_scores, code_top_k


def clustered(count: int, dim: int, seed: int, centers: int = 20) -> np.ndarray:
    """Unit vectors around a few centres (the same centres for every seed of a dimension):
    neighbourhoods that binary codes can keep."""
    means = np.random.default_rng(dim).standard_normal((centers, dim))
    rng = np.random.default_rng(seed)
    x = means[rng.integers(centers, size=count)] + 0.6 * rng.standard_normal((count, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def recall(found: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(f.tolist()) & set(e.tolist())) / len(e) for f, e in zip(found, exact)]))


def binary_collection(path, count=600, dim=32, seed=0, **field):
    spec = {"name": "bits", "kind": "binary", "source": "dense", **field}
    collection = retriever.Collection.create(path, {"name": "b", "fields": [{"name": "dense", "dim": dim}, spec]})
    vectors = clustered(count, dim, seed)
    collection.add(make_docs(count), vectors={"dense": vectors})
    return collection, vectors


# ---- kernels against references --------------------------------------------------------------------


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), bits=st.integers(1, 4), code_dim=st.sampled_from([8, 24, 40]), method=st.sampled_from(["sign", "itq"]),
       k=st.integers(1, 30), masked=st.booleans())
def test_lookup_scan_matches_bit_by_bit_scores(seed, bits, code_dim, method, k, masked):
    dim = 40
    vectors = clustered(300, dim, seed)
    binarizer = binary.fit(vectors, method, bits, code_dim, seed=seed)
    codes = binarizer.encode(vectors)
    assert codes.shape == (300, bits * code_dim // 8) and codes.dtype == np.uint8
    queries = clustered(4, dim, seed + 1)
    slow = reference.code_scores(queries, codes, binarizer.decoders, binarizer.output_mean)  # [B, N]
    np.testing.assert_allclose(queries @ binarizer.decode(codes).T, slow, rtol=1e-4, atol=1e-4)
    allowed = np.random.default_rng(seed).random(300) < 0.5 if masked else None
    tables, offsets = binarizer.lookup_tables(queries)
    scores, rows = code_top_k(tables, offsets, codes, k, allowed)
    expected_scores, expected_rows = reference.exact_search(queries, binarizer.decode(codes), k, allowed=allowed)
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-4, atol=1e-4)
    found = rows >= 0
    np.testing.assert_allclose(np.take_along_axis(slow, np.maximum(rows, 0), 1)[found], scores[found], rtol=1e-4, atol=1e-4)
    assert (found == (expected_rows >= 0)).all()
    gathered = candidate_scores(tables, offsets, codes[np.maximum(expected_rows, 0)])
    np.testing.assert_allclose(gathered[found], slow[np.arange(4)[:, None], np.maximum(expected_rows, 0)][found], rtol=1e-4, atol=1e-4)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), width=st.integers(1, 20), planes=st.integers(1, 5), k=st.integers(1, 40),
       masked=st.booleans())
def test_bitplane_scan_matches_bit_by_bit_quantized_scores(seed, width, planes, k, masked):
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 256, size=(150, width), dtype=np.uint8)  # bytes: whole words or not
    weights = rng.standard_normal((3, 8 * width)).astype(np.float32)
    weights[0, ::3] = 0  # zero weights count for nothing, whatever the bit
    allowed = rng.random(150) < 0.5 if masked else None
    scores, rows = bitplane_top_k(weights, codes, k, allowed, planes)
    slow = reference.bitplane_scores(weights, codes, planes).astype(np.float64)  # [B, N]
    if allowed is not None:
        slow[:, ~allowed] = -np.inf
    order = np.lexsort((np.broadcast_to(np.arange(150), slow.shape), -slow), axis=1)[:, :k]  # ties: lower row
    expected = np.where(np.isfinite(np.take_along_axis(slow, order, 1)), order, -1)
    assert np.array_equal(rows, expected)
    found = rows >= 0
    np.testing.assert_array_equal(scores[found], np.take_along_axis(slow, np.maximum(rows, 0), 1)[found])


def test_sdc_search_through_the_bitplane_scan_finds_the_lookup_tables_top_k():
    vectors = clustered(3000, 64, 5)
    binarizer = binary.fit(vectors, "itq", 2, 64)  # 16-byte codes: two 64-bit words
    codes = binarizer.encode(vectors)
    field = BinaryField(
        BinaryConfig(name="bits", kind="binary", dim=64, method="itq", bits=2),
        {"dim": 64, "code_dim": 64}, binarizer, [BinaryPart(None, len(codes))],
        VectorStore([codes], 16, np.uint8), VectorStore([], 64), None, ["segment"],
    )
    queries = QueryCodes(codes[:20])
    scores, rows = field.search(queries, 10, {}, None)
    tables, offsets = binarizer.lookup_tables(binarizer.decode(codes[:20]))
    expected_scores, expected_rows = code_top_k(tables, offsets, codes, 10, None)  # every code, exactly
    assert np.array_equal(rows, expected_rows)
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-5, atol=1e-5)


def test_hamming_index_matches_reference_distances():
    rng = np.random.default_rng(3)
    codes = rng.integers(0, 256, size=(500, 6), dtype=np.uint8)
    queries = rng.integers(0, 256, size=(5, 6), dtype=np.uint8)
    index = FaissIndex("BFlat", 48, HAMMING)
    index.add(codes)
    allowed = rng.random(500) < 0.3
    scores, rows = index.search(queries, 10, {}, allowed)
    distances = reference.hamming_distances(queries, codes)
    for b in range(5):
        assert allowed[rows[b]].all()
        np.testing.assert_array_equal(-scores[b], distances[b, rows[b]])
        assert -scores[b, -1] <= np.sort(distances[b, allowed])[9]
    copy = FaissIndex.from_bytes(index.to_bytes(), "BFlat", 48, HAMMING)
    np.testing.assert_array_equal(copy.search(queries, 10)[1], index.search(queries, 10)[1])


# ---- binarizers ------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["sign", "itq", "recurrent"])
def test_binarizers_are_seeded_and_round_trip(method):
    vectors = clustered(600, 32, seed=1)
    first = binary.fit(vectors, method, 2, 32, seed=4, iterations=20)
    again = binary.fit(vectors, method, 2, 32, seed=4, iterations=20)
    np.testing.assert_array_equal(first.encode(vectors), again.encode(vectors))
    restored = binary.Binarizer.from_bytes(first.to_bytes())
    np.testing.assert_array_equal(restored.encode(vectors), first.encode(vectors))
    np.testing.assert_array_equal(restored.decode(first.encode(vectors[:5])), first.decode(first.encode(vectors[:5])))


def test_more_bits_and_training_bring_codes_closer_to_exact_search():
    vectors, queries = clustered(3000, 32, seed=2), clustered(50, 32, seed=3)
    exact = reference.exact_search(queries, vectors, 10)[1]

    def code_recall(binarizer):
        tables, offsets = binarizer.lookup_tables(queries)
        return recall(code_top_k(tables, offsets, binarizer.encode(vectors), 10, None)[1], exact)

    one, two = code_recall(binary.fit(vectors, "itq", 1, 32)), code_recall(binary.fit(vectors, "itq", 2, 32))
    recurrent = code_recall(binary.fit(vectors, "recurrent", 2, 32))
    assert one < two <= recurrent + 0.02
    assert two > 0.4


def test_compatible_binarizer_ranks_new_queries_against_old_codes():
    """Version 2 of the embedding: a different dimension and a nonlinear distortion of version 1."""
    rng = np.random.default_rng(7)
    old = clustered(2000, 32, seed=5)
    mixing = rng.standard_normal((32, 24)).astype(np.float32)
    new = np.tanh(old @ mixing) + 0.05 * rng.standard_normal((2000, 24)).astype(np.float32)
    old_binarizer = binary.fit(old, "recurrent", 2, 32, iterations=50)
    documents = old_binarizer.encode(old[:1500])  # stored by version 1
    queries_new, queries_old = new[1500:1600], old[1500:1600]
    exact = reference.exact_search(queries_old, old[:1500], 10)[1]

    def cross_recall(query_binarizer):
        decoded = old_binarizer.decode(query_binarizer.encode(queries_new))  # SDC against the old codes
        tables, offsets = old_binarizer.lookup_tables(decoded)
        return recall(code_top_k(tables, offsets, documents, 10, None)[1], exact)

    compatible = binary.compatible(old_binarizer, new[:1500], old[:1500], iterations=100)
    independent = binary.fit(new[:1500], "recurrent", 2, 32, iterations=50)
    chance = 10 / 1500
    assert cross_recall(compatible) > 30 * chance
    assert cross_recall(compatible) > cross_recall(independent) + 0.2
    assert compatible.query_side(queries_new).shape == (100, 32)


# ---- binary fields ---------------------------------------------------------------------------------


@pytest.mark.parametrize("field", [
    {"method": "sign", "bits": 1},
    {"method": "itq", "bits": 2, "scoring": "asymmetric"},
    {"method": "sign", "bits": 2, "index": "HNSW16"},
    {"method": "itq", "bits": 1, "index": "IVF4", "search": {"nprobe": 4}},
    {"method": "sign", "bits": 1, "rescore_dtype": "int8"},
])
def test_binary_field_rescored_search_agrees_with_exact_search(tmp_path, field):
    collection, vectors = binary_collection(tmp_path / "c", **field)
    queries = clustered(20, 32, seed=9)
    exact = reference.exact_search(queries, vectors, 10)
    hits = collection.search(queries, 10, fields="bits")
    assert recall(np.array([h.rows for h in hits]), exact[1]) >= 0.95
    np.testing.assert_allclose(hits[0].scores[:3], exact[0][0, :3], atol=0.02 if field.get("rescore_dtype") else 1e-5)
    codes_only = collection.search(queries, 10, fields="bits", params={"rescore": 0})
    assert 0.2 < recall(np.array([h.rows for h in codes_only]), exact[1]) < recall(np.array([h.rows for h in hits]), exact[1]) + 1e-9
    reopened = retriever.Collection.open(collection.path)
    assert [h.ids for h in reopened.search(queries, 10, fields="bits")] == [h.ids for h in hits]


def test_binary_field_keeps_deletes_filters_and_later_batches(tmp_path):
    collection, vectors = binary_collection(tmp_path / "c", method="itq", bits=2)
    trained = collection.manifest["fields"]["bits"]["binarizer"]
    more = clustered(100, 32, seed=11)
    collection.add(make_docs(100, start=600), vectors={"dense": more})
    assert collection.manifest["fields"]["bits"]["binarizer"] == trained  # trained once, on the first batch
    hits = collection.search(more[:3], 1, fields="bits")
    assert [h.ids[0] for h in hits] == [f"d{600 + i}" for i in range(3)]
    collection.delete(["d600"])
    assert "d600" not in collection.search(more[:1], 5, fields="bits")[0].ids
    for params in ({}, {"rescore": 0}, {"asymmetric": 1, "rescore": 0}):
        filtered = collection.search(vectors[:2], 5, fields="bits", filter={"lang": "fr"}, params=params)
        assert all(d["lang"] == "fr" for h in filtered for d in h.documents)


def test_binary_field_searched_with_its_source_and_by_codes(tmp_path):
    collection, vectors = binary_collection(tmp_path / "c", method="sign", bits=1)
    fused = collection.search({"dense": vectors[:2], "bits": vectors[:2]}, 5, fields=["dense", "bits"])
    assert fused[0].ids[0] == "d0" and set(fused[0].field_scores) == {"dense", "bits"}
    codes = collection.fields["bits"].binarizer.encode(vectors[:2])
    by_codes = collection.search(codes, 5, fields="bits")
    distances = reference.hamming_distances(codes, collection.fields["bits"].codes.to_array())
    np.testing.assert_array_equal(-by_codes[0].scores, np.sort(distances[0])[:5])


def test_binary_bad_input_is_refused_and_nothing_changes(tmp_path):
    base = {"name": "b", "fields": [{"name": "dense", "dim": 32}]}
    with pytest.raises(InvalidConfig, match="bits must be an integer from 1 to 4"):
        retriever.Collection.create(tmp_path / "x", {**base, "fields": [*base["fields"], {"name": "bits", "kind": "binary", "source": "dense", "bits": 5}]})
    with pytest.raises(InvalidConfig, match="source 'missing' is not a dense field"):
        retriever.Collection.create(tmp_path / "x", {**base, "fields": [*base["fields"], {"name": "bits", "kind": "binary", "source": "missing"}]})
    with pytest.raises(InvalidConfig, match="multiple of 8"):
        retriever.Collection.create(tmp_path / "x", {**base, "fields": [*base["fields"], {"name": "bits", "kind": "binary", "source": "dense", "code_dim": 12}]})
    collection = retriever.Collection.create(tmp_path / "c", {**base, "fields": [*base["fields"], {"name": "bits", "kind": "binary", "source": "dense"}]})
    files = sorted(p.name for p in collection.path.iterdir())
    with pytest.raises(InvalidRequest, match="needs at least 512 vectors"):
        collection.add(make_docs(100), vectors={"dense": clustered(100, 32, seed=1)})
    assert collection.version == 1 and sorted(p.name for p in collection.path.iterdir()) == files
    collection.add(make_docs(600), vectors={"dense": clustered(600, 32, seed=1)})
    with pytest.raises(InvalidRequest, match=r"uint8 \[batch, 4\]"):
        collection.search(np.zeros((1, 3), np.uint8), 5, fields="bits")
    with pytest.raises(InvalidRequest, match="dimension 32"):
        collection.search(np.zeros((1, 31), np.float32), 5, fields="bits")
    with pytest.raises(InvalidRequest, match="NaN"):
        collection.search(np.full((1, 32), np.nan, np.float32), 5, fields="bits")
    with pytest.raises(InvalidRequest, match="binarizes the vectors of field 'dense'"):
        collection.add(make_docs(1), vectors={"dense": clustered(1, 32, 2), "bits": clustered(1, 32, 2)})
    with pytest.raises(NotFound):
        collection.search(np.zeros((1, 32), np.float32), 5, fields="nope")
    assert len(retriever.Collection.open(collection.path)) == 600


def test_binary_index_search_parameters_are_tuned_at_build(tmp_path):
    collection, vectors = binary_collection(tmp_path / "c", count=1600, index="IVF32", rescore=20)
    collection.flush()  # a segment with its own binary IVF index (the write buffer is searched exactly)
    [tuned] = collection.info()["fields"]["bits"]["tuned"]
    assert tuned["rows"] == 1600 and tuned["nprobe"] > 1
    queries = clustered(40, 32, seed=5)

    def found(field, params=None):
        hits = collection.search(queries, k=10, fields=field, params=params)
        return np.stack([np.asarray([int(i[1:]) for i in h.ids]) for h in hits])

    exact = found("dense")
    assert recall(found("bits"), exact) > recall(found("bits", {"nprobe": 1}), exact)  # tuning wins
    assert recall(found("bits"), exact) == recall(found("bits", {"nprobe": tuned["nprobe"]}), exact)
