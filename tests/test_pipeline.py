"""Query pipelines: prefetch, fuse and re-rank stages against plain searches and slow references."""

import numpy as np
import pytest

import retriever
from helpers import clouds, make_docs, random_vectors, split
from retriever.errors import InvalidRequest, NotFound
from retriever.kernels import reference
from retriever.pipeline import Fuse, Pipeline, Prefetch, Rerank


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    config = {"name": "p", "max_candidates": 10**6, "fields": [
        {"name": "dense", "dim": 16}, {"name": "bm25", "kind": "bm25"},
        {"name": "tok", "kind": "multivector", "dim": 16, "fde": {"repetitions": 4, "simhash_bits": 2}}]}
    c = retriever.Collection.create(tmp_path_factory.mktemp("pipeline") / "p", config)
    docs = make_docs(150)
    for i, d in enumerate(docs):
        d["text"] = f"document {i} about {'cats' if i % 3 else 'dogs'} and {'rain' if i % 5 else 'sun'}"
    tokens = split(*clouds(150, 16, seed=3))
    c.add(docs, vectors={"dense": random_vectors(150, 16, seed=1), "tok": tokens})
    queries = {"dense": random_vectors(3, 16, seed=4), "bm25": ["cats in the rain", "dogs", "sun document 7"],
               "tok": split(*clouds(3, 16, seed=6, max_tokens=4))}
    return c, queries, tokens


def same(a, b):
    assert [h.ids for h in a] == [h.ids for h in b]
    for x, y in zip(a, b):
        np.testing.assert_allclose(x.scores, y.scores, rtol=1e-6)


def test_one_prefetch_is_a_plain_search(collection):
    c, queries, _ = collection
    piped = c.search(queries, k=7, pipeline=Pipeline([Prefetch("dense", k=20)]))
    same(piped, c.search(queries["dense"], k=7, fields="dense"))
    assert list(piped[0].field_scores) == ["dense"]


def test_two_prefetches_fused_match_the_fused_search(collection):
    c, queries, _ = collection
    for fuse in (Fuse("rrf"), Fuse("weighted", {"dense": 2.0}, "zscore")):
        both = [Prefetch("dense", k=30), Prefetch("bm25", k=30)]
        piped = c.search(queries, k=8, pipeline=Pipeline(both, fuse))
        how = dict(fusion=fuse.method, weights=dict(fuse.weights), normalization=fuse.normalization)
        plain = c.search(queries, k=8, fields=["dense", "bm25"], params={"candidates": 30}, **how)
        same(piped, plain)
        assert set(piped[0].field_scores) == {"dense", "bm25", "fuse"}


def test_rerank_orders_the_union_by_exact_maxsim(collection):
    c, queries, tokens = collection
    pipeline = Pipeline([Prefetch("dense", k=25), Prefetch("bm25", k=25)], rerank=[Rerank("tok", k=12)])
    piped = c.search(queries, k=5, pipeline=pipeline)
    fused = c.search(queries, k=50, pipeline=Pipeline(pipeline.prefetch))  # the union, not re-ranked
    query_clouds = queries["tok"]
    for b, hits in enumerate(piped):
        union = [int(i[1:]) for i in fused[b].ids]  # every candidate the prefetches gave
        exact = dict(zip(union, reference.maxsim_scores(query_clouds[b], [tokens[r] for r in union])))
        fifth = sorted(exact.values(), reverse=True)[4]
        mine = [exact[int(i[1:])] for i in hits.ids]  # the reference's scores of the hits, in their order
        np.testing.assert_allclose(hits.scores, mine, atol=2e-3)  # tokens are stored as float16
        assert min(mine) >= fifth - 2e-3 and len(hits) == 5  # the best five, up to float16 near-ties
        np.testing.assert_allclose(hits.field_scores["rerank.tok"], hits.scores)
        assert set(hits.field_scores) == {"dense", "bm25", "fuse", "rerank.tok"}


def test_stages_chain_and_keep_their_own_depth(collection):
    c, queries, _ = collection
    pipeline = Pipeline([Prefetch("bm25", k=40)], rerank=[Rerank("dense", k=10), Rerank("tok", k=3)])
    piped = c.search(queries, k=10, pipeline=pipeline)
    first_stage = Pipeline([Prefetch("bm25", k=40)], rerank=[Rerank("dense", k=10)])
    dense_first = c.search(queries, k=10, pipeline=first_stage)
    for hits, first in zip(piped, dense_first):
        assert len(hits) == 3 and set(hits.ids) <= set(first.ids)  # MaxSim re-ranked the dense top 10
        assert list(hits.field_scores["rerank.tok"]) == sorted(hits.field_scores["rerank.tok"], reverse=True)


def test_prefetch_filters_and_params(collection):
    c, queries, _ = collection
    pipeline = Pipeline([Prefetch("dense", k=10, filter={"lang": "en"}), Prefetch("bm25", k=10)])
    for hits in c.search(queries, k=20, pipeline=pipeline):
        from_dense = ~np.isnan(hits.field_scores["dense"])
        assert all(d["lang"] == "en" for d, keep in zip(hits.documents, from_dense) if keep)
    only_fr = c.search(queries, k=5, filter={"lang": "fr"}, pipeline=pipeline)
    assert all(d["lang"] == "fr" for h in only_fr for d in h.documents)  # the request's filter holds too


def test_pipelines_from_plain_data_and_refusals(collection):
    c, queries, _ = collection
    data = {"prefetch": [{"field": "dense", "k": 30}, {"field": "bm25", "k": 30}],
            "fuse": {"method": "rrf"}, "rerank": [{"field": "tok", "k": 10}]}
    pipeline = Pipeline.from_dict(data)
    assert Pipeline.from_dict(pipeline.to_dict()) == pipeline
    same(c.search(queries, k=4, pipeline=data), c.search(queries, k=4, pipeline=pipeline))
    refusals = [
        ({"prefetch": []}, InvalidRequest, "at least one prefetch"),
        ({"prefetch": [{"field": "dense"}, {"field": "dense"}]}, InvalidRequest, "each field once"),
        ({"prefetch": [{"field": "nope"}]}, NotFound, "unknown field"),
        ({"prefetch": [{"field": "dense", "k": 0}]}, InvalidRequest, "positive integer"),
        ({"prefetch": [{"field": "dense", "depth": 3}]}, InvalidRequest, "depth"),
        ({"prefetch": [{"field": "dense"}], "order": 1}, InvalidRequest, "unknown key"),
        ({"prefetch": [{"field": "dense", "k": 10**6}]}, InvalidRequest, "max_candidates"),
        ({"prefetch": [{"field": "dense", "params": {"nprobe": -1}}]}, InvalidRequest, "nprobe"),
        ({"prefetch": [{"field": "dense"}, {"field": "bm25"}], "fuse": {"method": "max"}}, InvalidRequest,
         "fusion"),
    ]
    for bad, error, words in refusals:
        with pytest.raises(error, match=words):
            c.search(queries, k=4, pipeline=bad)
    with pytest.raises(InvalidRequest, match="not both|names its fields"):
        c.search(queries, k=4, fields="dense", pipeline=pipeline)
