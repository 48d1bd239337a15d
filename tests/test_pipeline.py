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


def test_named_and_default_pipelines_in_the_config(tmp_path, collection):
    c, queries, _ = collection
    hybrid = {"prefetch": [{"field": "dense", "k": 20}, {"field": "bm25", "k": 20}],
              "rerank": [{"field": "tok"}]}
    config = {**c.config.to_dict(), "pipelines": {"hybrid": hybrid}, "default_pipeline": "hybrid"}
    named = retriever.Collection.create(tmp_path / "named", config)
    named.add(c.get([f"d{i}" for i in range(150)]), vectors={
        "dense": c.fields["dense"].vectors.to_array(), "tok": c.fields["tok"].tokens.gather(np.arange(150))})
    reopened = retriever.Collection.open(named.path)
    assert reopened.config.pipelines == {"hybrid": hybrid} and reopened.config.default_pipeline == "hybrid"
    by_name = reopened.search(queries, k=5, pipeline="hybrid")
    same(reopened.search(queries, k=5), by_name)  # no fields: the default pipeline
    same(by_name, c.search(queries, k=5, pipeline=hybrid))
    assert list(reopened.search(queries["dense"], k=3, fields="dense")[0].field_scores) == ["dense"]
    with pytest.raises(NotFound, match="pipelines: \\['hybrid'\\]"):
        reopened.search(queries, k=5, pipeline="nope")
    for bad, words in (({"pipelines": {"x": {"prefetch": [{"field": "nope"}]}}}, "unknown field"),
                       ({"pipelines": {"x": {"prefetch": []}}}, "at least one prefetch"),
                       ({"pipelines": {"x": {"prefetch": [{"field": "dense"}], "fuse": {"method": "max"}}}},
                        "fusion must be one of"),
                       ({"default_pipeline": "missing"}, "not one of the pipelines"),
                       ({"pipelines": {"bad name!": hybrid}}, "pipeline name")):
        with pytest.raises(retriever.InvalidConfig, match=words):
            retriever.Collection.create(tmp_path / "bad", {**c.config.to_dict(), **bad})


def test_cli_pipeline_file_and_explain(tmp_path, collection):
    import json

    from typer.testing import CliRunner

    from retriever.cli import app

    c, _, _ = collection
    text_only = tmp_path / "text"  # the CLI searches with texts: BM25 prefetch, BM25 re-rank of dense's union
    config = {"name": "t", "fields": [{"name": "bm25", "kind": "bm25"},
                                      {"name": "bm25b", "kind": "bm25", "k1": 0.5}]}
    t = retriever.Collection.create(text_only, config)
    t.add(c.get([f"d{i}" for i in range(150)]))
    (tmp_path / "p.toml").write_text('[[prefetch]]\nfield = "bm25"\nk = 20\n[[rerank]]\nfield = "bm25b"\n')
    out = CliRunner().invoke(app, ["search", str(text_only), "cats in the rain", "-k", "3", "--pipeline",
                                   str(tmp_path / "p.toml"), "--explain", "--json"])
    assert out.exit_code == 0, out.output
    [result] = json.loads(out.stdout)["results"]
    expected = t.search("cats in the rain", k=3, pipeline={"prefetch": [{"field": "bm25", "k": 20}],
                                                           "rerank": [{"field": "bm25b"}]})[0]
    assert [h["id"] for h in result["hits"]] == expected.ids
    assert set(result["hits"][0]["stages"]) == {"bm25", "rerank.bm25b"}
    shown = CliRunner().invoke(app, ["search", str(text_only), "cats", "--pipeline", str(tmp_path / "p.toml"),
                                     "--explain"])
    assert "rerank.bm25b" in shown.output
    (tmp_path / "bad.json").write_text("{not json")
    asked = ["search", str(text_only), "cats", "--pipeline", str(tmp_path / "bad.json")]
    bad = CliRunner().invoke(app, asked)
    assert bad.exit_code == 2 and "not a valid JSON file" in bad.output


def test_a_named_pipeline_over_the_wire(tmp_path, collection):
    from retriever.registry import Registry
    from retriever.server import Server, ServerOptions

    c, queries, _ = collection
    server = Server(Registry.open_data_dir(tmp_path / "data"), ServerOptions(port=0)).start()
    try:
        far = retriever.connect(f"grpc://127.0.0.1:{server.port}/named")
        hybrid = {"prefetch": [{"field": "dense", "k": 20}, {"field": "bm25", "k": 20}],
              "rerank": [{"field": "tok"}]}
        far.create({**c.config.to_dict(), "name": "named", "pipelines": {"hybrid": hybrid}})
        tokens = c.fields["tok"].tokens.gather(np.arange(150))
        vectors = {"dense": c.fields["dense"].vectors.to_array(), "tok": tokens}
        far.add(c.get([f"d{i}" for i in range(150)]), vectors={"dense": vectors["dense"],
                                                                "tok": split(*vectors["tok"])})
        near = retriever.Collection.open(tmp_path / "data" / "named")
        for asked in ("hybrid", hybrid):
            same(far.search(queries, k=5, pipeline=asked), near.search(queries, k=5, pipeline=asked))
        with pytest.raises(NotFound, match="unknown pipeline"):
            far.search(queries, k=5, pipeline="nope")
        saved = Pipeline([Prefetch("dense", k=30), Prefetch("tok", k=30)], Fuse("weighted", {"tok": 2.0},
                                                                                "robust", complete=True))
        far.save_pipeline("saved", saved, default=True)  # searches on the server see it at once
        same(far.search(queries, k=5), c.search(queries, k=5, pipeline=saved))
        same(far.search(queries, k=5, pipeline="saved"), c.search(queries, k=5, pipeline=saved))
        reopened = retriever.Collection.open(tmp_path / "data" / "named")
        assert reopened.config.pipeline("saved") == saved and reopened.config.default_pipeline == "saved"
        with pytest.raises(retriever.InvalidRequest, match="pipeline name"):
            far.save_pipeline("bad name!", saved)
        with pytest.raises(retriever.InvalidRequest, match="fusion must be one of"):
            far.save_pipeline("x", {"prefetch": [{"field": "dense"}], "fuse": {"method": "max"}})
    finally:
        server.stop()


def test_complete_fusion_scores_the_whole_union_with_every_field(collection):
    c, queries, _ = collection
    stages = [Prefetch("dense", k=15), Prefetch("bm25", k=15), Prefetch("tok", k=15)]
    piped = c.search(queries, k=6, pipeline=Pipeline(stages, Fuse("weighted", {"bm25": 2.0}, complete=True)))
    union = c.search(queries, k=45, pipeline=Pipeline(stages))  # the candidates, in any order
    rows = np.full((3, 45), -1, dtype=np.int64)
    for b, hits in enumerate(union):
        rows[b, : len(hits)] = hits.rows
    _, payloads = c.prefetch(queries, Pipeline(stages))  # the encoded queries
    total = np.zeros(rows.shape)
    for name, weight in (("dense", 1.0), ("bm25", 2.0), ("tok", 1.0)):  # min-max over each union
        exact = c.fields[name].score(payloads[name], rows).astype(np.float64)
        for b in range(3):
            valid = rows[b] >= 0
            low, span = exact[b, valid].min(), np.ptp(exact[b, valid])
            total[b, valid] += weight * ((exact[b, valid] - low) / span if span > 0 else 1.0)
    for b, hits in enumerate(piped):
        valid = rows[b] >= 0
        best = np.lexsort((rows[b][valid], -total[b][valid]))[:6]
        assert list(hits.rows) == rows[b][valid][best].tolist()
        np.testing.assert_allclose(hits.scores, total[b][valid][best], rtol=1e-5)
        assert not np.isnan(hits.field_scores["bm25"]).any()  # every candidate has every field's score
    with pytest.raises(InvalidRequest, match="complete must be true or false"):
        c.search(queries, k=3, pipeline={"prefetch": [{"field": "dense"}], "fuse": {"complete": "yes"}})
