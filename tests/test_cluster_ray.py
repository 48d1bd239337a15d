"""Sharded collections on a local Ray instance (2 CPUs): built by Ray Data, served by Ray Serve,
answering as the unsharded collection does; a killed replica gives a flagged partial answer and
then, once Ray has replaced it, a full one; an interrupted shard write resumes."""

import json
import os
import signal
import time

import numpy as np
import pytest

import retriever
from helpers import random_vectors
from test_cluster import COUNT, config, documents, same

from retriever import cluster
from retriever.config import CollectionConfig
from retriever.errors import AlreadyExists, InvalidRequest, WriteFailed
from retriever.index import disk

ray = pytest.importorskip("ray", reason="the ray extra (make setup installs it)")
from retriever.cluster import ray_build, ray_serve  # noqa: E402

FIELDS = [{"name": "dense", "dim": 16}, {"name": "bm25", "kind": "bm25"}]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(the unsharded collection, a 3-shard build of the same corpus by Ray Data, its root)."""
    root = tmp_path_factory.mktemp("ray")
    docs, vectors = documents(), random_vectors(COUNT, 16, seed=1)
    with open(root / "corpus.jsonl", "w") as f:
        for d, v in zip(docs, vectors):
            f.write(json.dumps({**d, "dense": v.tolist()}) + "\n")
    whole = retriever.Collection.create(root / "whole", config(FIELDS))
    whole.add(docs, vectors={"dense": vectors})
    ray_serve.start(num_cpus=2)
    manifest = ray_build.build(
        CollectionConfig.from_dict(config(FIELDS)),
        root / "corpus.jsonl",
        root / "sharded",
        shards=3,
        workers=1,
    )
    yield whole, manifest, root
    from ray import serve

    serve.shutdown()
    ray.shutdown()


QUERIES = {"dense": random_vectors(3, 16, seed=4), "bm25": ["w0 w3 w17", "w1 w8 w40 w2", "w5"]}


def test_a_ray_data_build_gives_the_unsharded_answer(built):
    whole, manifest, root = built
    assert manifest.documents == COUNT and manifest.statistics["fields"]["bm25"]["documents"] == COUNT
    assert not (root / "sharded" / ray_build.WORK).exists()
    with cluster.open_local(root / "sharded") as router:
        assert [s.count() for s in router.shards.shards] == [
            sum(cluster.shard_of(d["id"], 3) == i for d in documents()) for i in range(3)
        ]
        for field in ("dense", "bm25"):
            same(
                router.search(QUERIES[field], k=10, fields=field),
                whole.search(QUERIES[field], k=10, fields=field),
            )
        assert router.get(["d7"]) == whole.get(["d7"])
    with pytest.raises(AlreadyExists):
        ray_build.build(manifest.config, root / "corpus.jsonl", root / "sharded", shards=3)


def test_shards_on_serve_answer_as_one_collection_and_take_upserts(built):
    whole, manifest, root = built
    served = ray_serve.deploy(root / "sharded", cpus=0, deadline=60.0)  # a loaded CI machine
    try:
        for field in ("dense", "bm25"):
            same(
                served.search(QUERIES[field], k=10, fields=field),
                whole.search(QUERIES[field], k=10, fields=field),
            )
        fused = {"fields": ["dense", "bm25"], "fusion": "weighted", "normalization": "zscore"}
        same(served.search(QUERIES, k=10, **fused), whole.search(QUERIES, k=10, **fused))
        again = retriever.connect(f"ray://{manifest.name}")
        same(
            again.search(QUERIES["bm25"], k=5, fields="bm25"),
            whole.search(QUERIES["bm25"], k=5, fields="bm25"),
        )
        with pytest.raises(InvalidRequest, match="k must be"):
            again.search(QUERIES["bm25"], k=0, fields="bm25")
        before = [s["counts"]["documents"] for s in served.info()["shards"].values()]
        served.add([{"id": "fresh-1", "text": "w0 w0 w0 fresh"}], {"dense": random_vectors(1, 16, seed=9)})
        after = [s["counts"]["documents"] for s in served.info()["shards"].values()]
        owner = cluster.shard_of("fresh-1", 3)
        assert [a - b for a, b in zip(after, before)] == [int(i == owner) for i in range(3)]
        assert served.get(["fresh-1"])[0]["text"] == "w0 w0 w0 fresh"
        assert served.delete(["fresh-1"]) == 1 and len(served) == COUNT
    finally:
        ray_serve.undeploy(manifest.name)


def test_a_killed_replica_gives_a_flagged_partial_answer_then_a_full_one(built):
    whole, manifest, root = built
    served = ray_serve.deploy(root / "sharded", cpus=0, deadline=3.0)
    try:
        from ray import serve

        victim = serve.get_deployment_handle("shard-1", app_name=ray_serve.APP_PREFIX + manifest.name)
        os.kill(victim.pid.remote().result(timeout_s=30), signal.SIGKILL)
        want = whole.search(QUERIES["dense"], k=10, fields="dense")
        hits = served.search(QUERIES["dense"], k=10, fields="dense")
        assert all(h.missing_shards == ("shard-1",) for h in hits)
        lost = {d["id"] for d in documents() if cluster.shard_of(d["id"], 3) == 1}
        assert all(not set(h.ids) & lost for h in hits)
        deadline = time.monotonic() + 90
        while hits[0].partial and time.monotonic() < deadline:  # Ray replaces the replica
            time.sleep(1)
            hits = served.search(QUERIES["dense"], k=10, fields="dense")
        same(hits, want)
    finally:
        ray_serve.undeploy(manifest.name)


def test_an_interrupted_shard_write_resumes_after_its_committed_chunks(tmp_path):
    """The write step of one shard, failed by a disk fault mid-way, then run again."""
    cfg = CollectionConfig.from_dict(config(FIELDS))
    docs, vectors = documents(), random_vectors(COUNT, 16, seed=1)
    encode = ray_build._Encode(cfg.to_dict(), 1)
    lines = [json.dumps({**d, "dense": v.tolist()}) for d, v in zip(docs, vectors)]
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(encode(pa.table({"line": lines})), tmp_path / "part.parquet")
    files = [str(tmp_path / "part.parquet")]
    with pytest.raises(WriteFailed), disk.inject(disk.Faults(fail_at=60)):
        ray_build._write_shard(cfg.to_dict(), files, str(tmp_path / "shard"), 40, 10**6)
    interrupted = retriever.Collection.open(tmp_path / "shard")
    assert 0 < interrupted.counts["rows"] < COUNT
    assert (
        ray_build._write_shard(cfg.to_dict(), files, str(tmp_path / "shard"), 40, 10**6)["documents"] == COUNT
    )
    resumed = retriever.Collection.open(tmp_path / "shard")
    assert resumed.counts["rows"] == COUNT and sorted(
        resumed.documents.table.column("id").to_pylist()
    ) == sorted(d["id"] for d in docs)
    np.testing.assert_allclose(resumed.search(vectors[:3], k=1, fields="dense")[0].scores, [1.0], rtol=1e-5)
