"""The field-kind interface: a new kind is one module plus one registry line."""

import numpy as np
import pytest

import retriever
from retriever import fields
from retriever.check import check
from retriever.pipeline import Pipeline, Prefetch
from toy_kind import TOY


@pytest.fixture
def toy_registered(monkeypatch):
    monkeypatch.setitem(fields.KINDS, "toy", TOY)  # the one registry line


def test_a_toy_kind_needs_one_module_and_one_registry_line(toy_registered, tmp_path):
    config = {
        "name": "t",
        "fields": [{"name": "near", "kind": "toy", "scale": 2}, {"name": "words", "kind": "bm25"}],
    }
    c = retriever.Collection.create(tmp_path / "t", config)
    c.add([{"id": "a", "text": "xx"}, {"id": "b", "text": "xxxxx"}, {"id": "c", "text": "x"}])
    c.add([{"id": "d", "text": "four"}], vectors={"near": [4.0]})
    [h] = c.search("xxx", k=2, fields="near")
    assert h.ids == ["a", "d"] and list(h.scores) == [-2.0, -2.0]
    assert c.search(np.array([5.0]), k=1, fields="near")[0].ids == ["b"]
    [fused] = c.search("xxxxx", k=4, fields=["near", "words"], params={"toy_depth": 3})
    assert fused.ids[0] == "b"
    with pytest.raises(retriever.InvalidRequest, match="'toy_depth' must be an integer >= 1"):
        c.search("x", fields="near", params={"toy_depth": 0})  # the kind's own request parameter, checked
    assert c.delete(["b"]) == 1
    again = retriever.Collection.open(c.path)
    assert again.config == c.config and again.config.field("near").scale == 2
    assert again.search(np.array([5.0]), k=1, fields="near")[0].ids == ["d"]
    rows = again.counts["rows"]  # 4, or 3 once the delete's segment was compacted
    assert check(c.path)["ok"] and check(c.path)["fields"]["near"] == {"documents": rows}
    assert again.info()["fields"]["near"] == {
        "kind": "toy",
        "documents": rows,
        "segments": len(again.segments),
    }


def test_a_kind_is_refused_until_registered_and_its_keys_are_its_own(toy_registered):
    with pytest.raises(retriever.InvalidConfig, match="scale must be"):
        retriever.CollectionConfig.from_dict(
            {"name": "t", "fields": [{"name": "n", "kind": "toy", "scale": 0}]}
        )
    with pytest.raises(retriever.InvalidConfig, match=r"\['scale'\] do not apply to a 'dense' field"):
        retriever.CollectionConfig.from_dict({"name": "t", "fields": [{"name": "n", "dim": 4, "scale": 2}]})


def test_unregistered_kind_is_a_config_error():
    with pytest.raises(retriever.InvalidConfig, match="kind 'toy' is not supported"):
        retriever.CollectionConfig.from_dict({"name": "t", "fields": [{"name": "n", "kind": "toy"}]})


# ---- exact scores of given rows (what re-rank stages order by) --------------------------------


@pytest.fixture(scope="module")
def every_kind(tmp_path_factory):
    from helpers import clouds, make_docs, random_vectors, sparse_vectors, split

    config = {"name": "all", "max_k": 500, "max_candidates": 10**7, "fields": [
        {"name": "dense", "dim": 16}, {"name": "bm25", "kind": "bm25"},
        {"name": "sp", "kind": "sparse", "dim": 40},
        {"name": "tok", "kind": "multivector", "dim": 16, "fde": {"repetitions": 4, "simhash_bits": 2}},
        {"name": "bits", "kind": "binary", "source": "dense", "method": "sign", "bits": 1, "rescore": 500}]}
    c = retriever.Collection.create(tmp_path_factory.mktemp("kinds") / "all", config)
    docs = make_docs(120)
    for i, d in enumerate(docs):
        d["text"] = f"document {i} about {'cats' if i % 3 else 'dogs'} and {'rain' if i % 5 else 'sun'}"
    tokens = split(*clouds(120, 16, seed=3))
    vectors = {"dense": random_vectors(120, 16, seed=1), "sp": sparse_vectors(120, seed=2), "tok": tokens}
    c.add(docs[:70], vectors={n: v[:70] for n, v in vectors.items()})
    c.add(docs[70:], vectors={n: v[70:] for n, v in vectors.items()})  # two segments
    queries = {"dense": random_vectors(3, 16, seed=4), "bm25": ["cats in the rain", "dogs", "sun document 7"],
               "sp": sparse_vectors(3, seed=5), "tok": split(*clouds(3, 16, seed=6, max_tokens=4)),
               "bits": random_vectors(3, 16, seed=4)}
    return c, queries


@pytest.mark.parametrize("name", ["dense", "bm25", "sp", "tok", "bits"])
def test_scores_of_every_row_rank_as_exact_search_does(every_kind, name):
    c, queries = every_kind
    field = c.fields[name]
    payload = c.prefetch({name: queries[name]}, Pipeline([Prefetch(name, 10)]))[1][name]  # encoded queries
    rows = np.tile(np.arange(c.counts["rows"]), (3, 1))
    rows[:, 5] = -1  # a hole
    scores = field.score(payload, rows)
    assert np.isneginf(scores[:, 5]).all()
    params = {"exhaustive": 1} if name == "tok" else {}
    found = c.search({name: queries[name]}, k=10, fields=name, params=params)
    for b, hits in enumerate(found):
        kept = hits.rows != 5
        at = dict(zip(rows[b].tolist(), scores[b].tolist()))
        own = [at[r] for r in hits.rows[kept].tolist()]
        np.testing.assert_allclose(own, hits.scores[kept], rtol=1e-4, atol=1e-4)
        best = np.sort(scores[b][rows[b] >= 0])[::-1][: int(kept.sum())]
        np.testing.assert_allclose(hits.scores[kept], best, rtol=1e-4, atol=1e-4)  # the same top scores
