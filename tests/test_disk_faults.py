"""Every write path under injected disk faults (ENOSPC, EIO at each operation, through
`retriever.index.disk`), against the last committed state: the collection reopens whole, `check`
passes, the surviving object answers as a fresh open does, and a retry succeeds."""

import errno
import shutil

import numpy as np
import pytest

import retriever
from helpers import random_vectors, rotated_queries
from retriever.check import check
from retriever import buffer
from retriever.index import disk, storage, wal

WORDS = ["apple", "banana", "cherry", "delta", "echo", "falcon", "garden", "harbor", "island", "jungle"]
CONFIG = {
    "name": "mixed",
    "max_k": 100,
    "fields": [{"name": "dense", "dim": 16}, {"name": "bm25", "kind": "bm25"}],
}
QUERIES = ["apple banana", "zebra", "quokka yak", "garden harbor", "falcon"]


def docs(start: int, n: int, extra: str = "") -> list[dict]:
    return [
        {"id": f"d{i}", "text": f"{WORDS[i % 10]} {WORDS[(i * 3) % 10]} {extra}".strip()}
        for i in range(start, start + n)
    ]


def answers(c) -> list:
    """What a reader sees: the documents each bm25 query matches (BM25 scores count deleted rows
    until a merge drops them, as Lucene's do, so they depend on what was merged), dense ids and
    scores, and the documents' ids and texts."""
    lexical = [sorted(h.ids) for h in c.search(QUERIES, k=100, fields="bm25")]
    dense = [(h.ids, np.round(h.scores, 4).tolist()) for h in c.search(random_vectors(3, 16, seed=9), k=10)]
    stored = sorted(d["id"] + " " + d["text"] for d in c.documents.take(np.flatnonzero(~c.deleted)))
    return [len(c), lexical, dense, stored]


WRITES = {
    # new words in a batch are new BM25 vocabulary: a failed commit must not keep them
    "add": lambda c: c.add(docs(40, 6, "zebra quokka"), vectors={"dense": random_vectors(6, 16, seed=5)}),
    "upsert": lambda c: c.add(docs(0, 4, "yak"), vectors={"dense": random_vectors(4, 16, seed=6)}),
    "delete": lambda c: c.delete(["d1", "d7", "d30"]),
}


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    path = tmp_path_factory.mktemp("faults") / "template"
    c = retriever.Collection.create(path, CONFIG)
    c.add(docs(0, 30), vectors={"dense": random_vectors(30, 16)})
    c.flush()  # a segment ...
    c.delete(["d3"])  # ... and a buffer, whose delete a flush writes as a deletions file
    c.add(docs(30, 10), vectors={"dense": random_vectors(10, 16, seed=1)})
    return path


def assert_no_debris(path):
    """On disk: the manifest's files, those it retired (kept for readers), and bookkeeping."""
    manifest = storage.read_manifest(path)
    expected = (
        storage.referenced_names(manifest)
        | set(manifest["retired"])
        | {storage.MANIFEST, storage.LOCK, wal.LOG}
    )
    on_disk = {p.name for p in path.iterdir() if not p.name.startswith(storage.LEASE_PREFIX)}
    assert on_disk <= expected and on_disk >= expected - {wal.LOG}


def fresh_copy(template, path):
    shutil.rmtree(path, ignore_errors=True)
    shutil.copytree(template, path)
    return retriever.Collection.open(path)


def each_fault_recovers(template, tmp_path, counted, write, state, before, after):
    """`write(collection)` with a fault at each disk operation `counted` saw it make: the collection
    reopens answering (`state`) as before or as after, the object answers as a fresh open does,
    `check` passes, and a retry gets `after` with no debris left."""
    for n in range(counted.count):
        c = fresh_copy(template, tmp_path / "c")
        where = f"fault at {counted.ops[n]} #{n}"
        with disk.inject(disk.Faults(fail_at=n)):
            try:
                write(c)
            except retriever.StorageFull:
                pass
        now = state(retriever.Collection.open(c.path))
        assert now in (before, after), where
        assert state(c) == now, where
        assert check(c.path)["ok"], where
        write(c)
        assert state(retriever.Collection.open(c.path)) == after, where
        assert_no_debris(c.path)


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EIO])
@pytest.mark.parametrize("write", sorted(WRITES))
@pytest.mark.parametrize("mode", ["logged", "flushed"])
def test_a_fault_at_any_operation_leaves_a_committed_state_and_a_retry_succeeds(
    template, tmp_path, write, code, mode, monkeypatch
):
    """`logged`: the write is logged and buffered; `flushed`: the buffer is flushed into a segment
    as soon as the write is logged (a full buffer), so every step of a commit is tried too."""
    if mode == "flushed":
        monkeypatch.setattr(buffer, "FLUSH_WRITES", 1)
    c = fresh_copy(template, tmp_path / "c")
    before = answers(c)
    with disk.inject(disk.Faults()) as counted:
        WRITES[write](c)
    after = answers(c)
    WRITES[write](c)
    twice = answers(c)  # a retry of a write that was published after all is a second write
    assert after != before
    flush_steps = {"create", "write", "rename", "fsync_dir", "truncate"}
    steps = {"append", "fsync"} | (flush_steps if mode == "flushed" else set())
    assert steps <= set(counted.ops)
    for n in range(counted.count):
        c = fresh_copy(template, tmp_path / "c")
        try:
            with disk.inject(disk.Faults(fail_at=n, code=code)):
                WRITES[write](c)
            failed = False
        except retriever.WriteFailed as e:
            failed = True
            assert (code == errno.ENOSPC) == isinstance(e, retriever.StorageFull)
        where = f"fault at {counted.ops[n]} #{n}"
        reopened = retriever.Collection.open(c.path)
        state = answers(reopened)
        assert state in (before, after), where
        assert answers(c) == state, where  # the surviving object answers as a fresh open does
        assert check(c.path)["ok"], where
        if not failed:  # a failed cleanup is not the write's failure
            assert state == after, where
        WRITES[write](c)  # the retry succeeds
        expected = after if state == before else twice
        assert answers(c) == expected, where
        assert answers(retriever.Collection.open(c.path)) == expected, where
        c.add([{"id": "later", "text": "later"}], vectors={"dense": random_vectors(1, 16)})
        c.flush()
        assert_no_debris(c.path)  # what a failed step left is gone by the next commit
        assert check(c.path)["ok"], where


def test_a_fault_at_any_operation_of_a_flush_loses_no_logged_write(template, tmp_path):
    """Writes sit in the log and the buffer; a flush that fails at any step leaves them there
    (a fresh open replays them), and a retried flush publishes them."""
    probe = fresh_copy(template, tmp_path / "probe")
    for write in sorted(WRITES):
        WRITES[write](probe)
    buffered = answers(probe)
    with disk.inject(disk.Faults()) as counted:
        assert probe.flush()
    assert {"create", "rename", "fsync_dir", "truncate"} <= set(counted.ops)
    for n in range(counted.count):
        c = fresh_copy(template, tmp_path / "c")
        for write in sorted(WRITES):
            WRITES[write](c)
        where = f"fault at {counted.ops[n]} #{n}"
        with disk.inject(disk.Faults(fail_at=n)):
            try:
                c.flush()
            except retriever.StorageFull:
                pass
        assert answers(c) == buffered, where
        assert answers(retriever.Collection.open(c.path)) == buffered, where
        assert check(c.path)["ok"], where
        c.flush()
        assert retriever.Collection.open(c.path).info()["buffer"]["writes"] == 0, where
        assert answers(retriever.Collection.open(c.path)) == buffered, where
        assert_no_debris(c.path)


@pytest.mark.parametrize("mode", ["logged", "direct"])
def test_a_failed_commit_leaves_no_bm25_word_behind(template, tmp_path, mode, monkeypatch):
    """The attack from the storage issue: a batch with new words fails at its last rename (the
    manifest's when it commits a segment directly, the scratch segment's when it is logged), the
    next batch brings other new words; the failed batch's words must find nothing."""
    if mode == "direct":
        monkeypatch.setattr(buffer, "LOG_MAX_ROWS", 0)
    c = fresh_copy(template, tmp_path / "c")
    probe = fresh_copy(template, tmp_path / "probe")
    with disk.inject(disk.Faults()) as counted:
        WRITES["add"](probe)
    rename = max(
        i for i, op in enumerate(counted.ops) if op == "rename"
    )
    with pytest.raises(retriever.StorageFull), disk.inject(disk.Faults(fail_at=rename)):
        WRITES["add"](c)
    c.add(
        [{"id": "y1", "text": "walrus narwhal"}, {"id": "y2", "text": "walrus"}],
        vectors={"dense": random_vectors(2, 16, seed=7)},
    )
    for opened in (c, retriever.Collection.open(c.path)):
        [zebra, walrus] = opened.search(["zebra", "walrus"], k=5, fields="bm25")
        assert zebra.ids == [] and walrus.ids == ["y2", "y1"]
    WRITES["add"](c)
    assert c.search("zebra", k=10, fields="bm25")[0].ids == [f"d{i}" for i in range(40, 46)]
    assert check(c.path)["ok"]


def test_a_failed_create_leaves_the_directory_as_it_was(tmp_path):
    with disk.inject(disk.Faults()) as counted:
        retriever.Collection.create(tmp_path / "probe", CONFIG)
    for n in range(counted.count):
        target = tmp_path / f"c{n}"
        with pytest.raises(retriever.StorageFull), disk.inject(disk.Faults(fail_at=n)):
            retriever.Collection.create(target, CONFIG)
        assert not target.exists(), counted.ops[n]
        assert len(retriever.Collection.create(target, CONFIG)) == 0  # and a retry succeeds


def test_a_fault_at_any_operation_of_saving_a_pipeline_keeps_the_config_whole(template, tmp_path):
    """save_pipeline flushes the buffer, then publishes a version whose config names the pipeline:
    a fault at any step leaves the old config or the new one, never a half, and no logged write."""
    pipeline = {"prefetch": [{"field": "dense", "k": 20}]}  # as the default, it answers as dense did

    def state(c):
        return answers(c), dict(c.config.pipelines), c.config.default_pipeline

    probe = fresh_copy(template, tmp_path / "probe")
    before = state(probe)
    with disk.inject(disk.Faults()) as counted:
        probe.save_pipeline("mixed", pipeline, default=True)
    after = state(probe)
    saved = {"mixed": probe.config.pipeline("mixed").to_dict()}
    assert after[1:] == (saved, "mixed") and after[0] == before[0]
    each_fault_recovers(template, tmp_path, counted,
                        lambda c: c.save_pipeline("mixed", pipeline, default=True), state, before, after)


def test_a_fault_at_any_operation_of_tune_pq_leaves_a_whole_collection(tmp_path):
    """tune_pq publishes the labelled set, then rebuilds every segment with trained centroids: a
    fault at any step leaves the collection answering as before or as after (the set kept but the
    segments not yet rebuilt answers as before), whole, and a retry gets the same trained index."""
    vectors, turned, source = rotated_queries(n_docs=1100, n_queries=40, dim=16)
    template = tmp_path / "pq-template"
    c = retriever.Collection.create(template, {"name": "pq", "max_k": 100, "fields": [
        {"name": "dense", "dim": 16, "index": "PQ4", "rescore": 0}]})
    c.add([{"id": f"d{i}"} for i in range(1100)], vectors={"dense": vectors})
    c.flush()
    queries = {f"q{i}": turned[i] for i in range(40)}
    qrels = {f"q{i}": {f"d{source[i]}": 1} for i in range(40)}
    probes = random_vectors(4, 16, seed=12)

    def state(c):
        return [(h.ids, np.round(h.scores, 4).tolist()) for h in c.search(probes, k=10)]

    probe = fresh_copy(template, tmp_path / "probe")
    before = state(probe)
    with disk.inject(disk.Faults()) as counted:
        [report] = probe.tune_pq("dense", queries, qrels)
    after = state(probe)
    assert report["epoch"] > 0 and after != before  # trained centroids: other scores
    each_fault_recovers(template, tmp_path, counted, lambda c: c.tune_pq("dense", queries, qrels),
                        state, before, after)
