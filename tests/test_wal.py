"""The write-ahead log and its buffer: small writes acked from the log, searchable at once (and
exactly), replayed by every opener, flushed into one segment; torn records dropped."""

import numpy as np
import pytest

import retriever
from helpers import make_docs, random_vectors, vector_config
from retriever import buffer
from retriever.check import check
from retriever.index import disk, storage, wal
from retriever.kernels import reference


@pytest.fixture
def collection(tmp_path):
    config = {**vector_config(), "fields": [{"name": "dense", "dim": 16, "index": "IVF4,Flat"},
                                            {"name": "bm25", "kind": "bm25"}]}
    c = retriever.Collection.create(tmp_path / "c", config)
    c.add(make_docs(2000), vectors={"dense": random_vectors(2000, 16)}, progress=False)  # a segment
    return c


def test_small_writes_are_logged_searchable_at_once_and_replayed_by_every_opener(collection):
    c = collection
    version = c.version
    extra = random_vectors(5, 16, seed=3)
    for i in range(5):
        c.add([{"id": f"new{i}", "text": f"walrus number {i}"}], vectors={"dense": extra[i : i + 1]})
    c.delete(["d7", "new2"])
    assert c.version == version  # nothing published: the writes sit in the log
    assert len(c) == 2000 + 5 - 2 and c.info()["buffer"] == {"writes": 6, "rows": 5, "last_write": 6}
    assert c.search(extra[0], k=1)[0].ids == ["new0"]
    assert sorted(c.search("walrus", k=10, fields="bm25")[0].ids) == ["new0", "new1", "new3", "new4"]
    other = retriever.Collection.open(c.path)  # another opener replays the log
    for a, b in zip(c.search(extra, k=10), other.search(extra, k=10)):
        assert a.ids == b.ids and np.allclose(a.scores, b.scores)
    live = [d["id"] for d in other.documents.take(np.flatnonzero(~other.deleted))]
    assert len(other) == len(c) == len(live) and "d7" not in live and "new2" not in live
    report = check(c.path)
    assert report["ok"] and report["buffer"]["writes"] == 6


def test_the_buffer_is_searched_exactly(collection):
    c = collection
    x = random_vectors(40, 16, seed=4)
    for i in range(0, 40, 4):
        c.add(make_docs(4, start=5000 + i), vectors={"dense": x[i : i + 4]})
    every = np.concatenate([random_vectors(2000, 16), x])
    every /= np.linalg.norm(every, axis=1, keepdims=True)
    queries = x[:8]
    hits = c.search(queries, k=5, params={"nprobe": 4})  # the IVF segment probed fully: exact
    unit = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    _, truth = reference.exact_search(unit, every, 5, "ip")
    assert [list(h.rows) for h in hits] == truth.tolist()


def test_a_full_buffer_becomes_one_segment_and_empties_the_log(collection, monkeypatch):
    monkeypatch.setattr(buffer, "FLUSH_WRITES", 3)
    c = collection
    version, segments = c.version, len(c.info()["segments"])
    for i in range(3):
        c.add(make_docs(2, start=9000 + 2 * i), vectors={"dense": random_vectors(2, 16, seed=i)})
    assert c.version == version + 1 and len(c.info()["segments"]) == segments + 1
    assert c.info()["buffer"]["writes"] == 0 and (c.path / wal.LOG).stat().st_size == 0
    assert storage.read_manifest(c.path)["log_applied"] == 3
    c.add(make_docs(1, start=9100), vectors={"dense": random_vectors(1, 16, seed=9)})
    reopened = retriever.Collection.open(c.path)
    assert reopened.log_position == 4 and len(reopened) == 2007


def test_a_large_write_commits_a_segment_directly(collection):
    c = collection
    c.add(make_docs(2, start=7000), vectors={"dense": random_vectors(2, 16, seed=1)})  # logged
    version = c.version
    c.add(make_docs(buffer.LOG_MAX_ROWS + 1, start=8000), vectors={"dense": random_vectors(1001, 16, seed=2)})
    assert c.version > version and c.info()["buffer"]["writes"] == 0  # the buffer flushed first
    assert len(retriever.Collection.open(c.path)) == 2000 + 2 + 1001


def test_a_torn_last_record_is_dropped_and_cut_off_by_the_next_writer(collection):
    c = collection
    c.add(make_docs(1, start=100_000), vectors={"dense": random_vectors(1, 16, seed=1)})
    c.add(make_docs(1, start=100_001), vectors={"dense": random_vectors(1, 16, seed=2)})
    log_file = c.path / wal.LOG
    whole = log_file.read_bytes()
    records, end, _ = wal.read(c.path)
    assert [r.seq for r in records] == [1, 2] and end == len(whole)
    log_file.write_bytes(whole[: records[0].end + 10])  # the second record cut short by a crash
    reader = retriever.Collection.open(c.path)
    assert len(reader) == 2001 and reader.log_position == 1
    flipped = bytearray(whole)
    flipped[-3] ^= 0xFF  # or damaged: its checksum fails, so it ends the log
    log_file.write_bytes(bytes(flipped))
    writer = retriever.Collection.open(c.path)
    assert len(writer) == 2001
    writer.add(make_docs(1, start=100_002), vectors={"dense": random_vectors(1, 16, seed=3)})
    assert [r.seq for r in wal.read(c.path)[0]] == [1, 2]  # the damaged tail cut, the new write after
    assert retriever.Collection.open(c.path).documents.ids_at(np.array([[2000, 2001]]))[0] == [
        "d100000",
        "d100002",
    ]


def test_a_record_written_by_a_writer_in_another_object_is_caught_up(collection):
    c = collection
    other = retriever.Collection.open(c.path)
    other.add(make_docs(1, start=60_000), vectors={"dense": random_vectors(1, 16, seed=1)})
    c.add(make_docs(1, start=60_001), vectors={"dense": random_vectors(1, 16, seed=2)})
    assert c.log_position == 2 and len(c) == 2002  # caught up on the other writer's record first
    assert len(retriever.Collection.open(c.path)) == 2002


def test_concurrent_syncs_share_one_fsync(tmp_path):
    log = wal.Log(tmp_path)
    ends = [0]
    for seq in (1, 2, 3):
        ends.append(log.append(seq, b"x" * 10, ends[-1]))
    with disk.inject(disk.Faults()) as counted:
        log.sync(ends[1])  # the first writer's sync covers what the others appended meanwhile
        log.sync(ends[3])
        log.sync(ends[2])
    assert counted.ops == ["fsync"]


def test_a_log_record_holds_every_kind_of_payload_without_pickle():
    from retriever.fields.bm25 import TokenizedDocuments
    from retriever.fields.inverted import SparseDocuments
    from retriever.fields.multivector import MultiVectors
    from retriever.index.sparse import SparseRows

    table = retriever.documents.documents_to_table([{"id": "a", "text": "x"}, {"id": "b", "text": "y"}])
    payloads = {
        "dense": np.ones((2, 3), np.float32),
        "bm25": TokenizedDocuments(["x", "y"], np.array([0, 1]), np.array([1, 1])),
        "sparse": SparseDocuments(SparseRows(np.array([0, 1, 2]), np.array([4, 5]), np.ones(2, np.float32))),
        "tok": MultiVectors(np.ones((3, 2), np.float32), np.array([0, 1, 3])),
    }
    back = buffer.Write.from_bytes(buffer.Write(table, payloads, ["a", "b"]).to_bytes())
    assert back.ids == ["a", "b"] and back.table.equals(table)
    assert back.payloads["bm25"].terms == ["x", "y"] and back.payloads["sparse"].new_terms == []
    assert np.array_equal(back.payloads["tok"].offsets, [0, 1, 3])
    assert np.array_equal(back.payloads["sparse"].vectors.terms, [4, 5])
    deleted = buffer.Write.from_bytes(buffer.Write(None, {}, ["q"]).to_bytes())
    assert deleted.table is None and deleted.ids == ["q"]


def fresh_answers(c, queries):
    return [(h.ids, np.round(h.scores, 4).tolist()) for h in c.search(queries, k=20)]


def test_writes_go_on_while_a_flush_is_written(collection):
    c = collection
    c.merge_inline = False  # as a server's background merger runs it
    for i in range(3):
        c.add(make_docs(3, start=3000 + 3 * i), vectors={"dense": random_vectors(3, 16, seed=i)})
    plan = c.plan_flush()
    c.delete(["d3000", "d5"])  # a flushed row and a committed row, deleted while the flush is written
    c.add(make_docs(2, start=3100), vectors={"dense": random_vectors(2, 16, seed=9)})
    c.write_flush(plan)
    assert c.finish_flush(plan) and c.info()["buffer"]["writes"] == 2  # the later writes stay buffered
    assert storage.read_manifest(c.path)["log_applied"] == plan.upto == 3
    queries = random_vectors(4, 16, seed=11)
    reopened = retriever.Collection.open(c.path)
    assert fresh_answers(c, queries) == fresh_answers(reopened, queries) and len(reopened) == len(c) == 2009
    live = reopened.documents.take(np.flatnonzero(~reopened.deleted))
    assert {"d3000", "d5"}.isdisjoint(d["id"] for d in live)
    assert c.flush() and (c.path / wal.LOG).stat().st_size == 0 and check(c.path)["ok"]


def test_a_flush_another_version_overtook_is_dropped_and_loses_nothing(collection):
    c = collection
    c.add(make_docs(2, start=4000), vectors={"dense": random_vectors(2, 16, seed=1)})
    plan = c.plan_flush()
    c.write_flush(plan)
    c.add(make_docs(1001, start=5000), vectors={"dense": random_vectors(1001, 16, seed=2)})  # direct: flushes
    assert not c.finish_flush(plan)
    assert len(retriever.Collection.open(c.path)) == 2000 + 2 + 1001 and check(c.path)["ok"]


def test_a_merge_finishes_beside_buffered_writes(collection, flush_each_write, monkeypatch):
    c = collection
    c.merge_inline = False
    for i in range(3):  # segments to merge
        c.add(make_docs(5, start=6000 + 5 * i), vectors={"dense": random_vectors(5, 16, seed=i)})
    plan = c.plan_merge()
    assert plan is not None
    c.write_merge(plan)
    monkeypatch.setattr(buffer, "FLUSH_WRITES", 100)
    c.delete(plan.segments[-1].table.column("id").to_pylist()[:2])  # buffered deletes of merged rows
    assert c.info()["buffer"]["writes"] == 1
    assert c.finish_merge(plan) and c.info()["buffer"]["writes"] == 1  # still buffered, on the merge
    queries = random_vectors(4, 16, seed=12)
    assert fresh_answers(c, queries) == fresh_answers(retriever.Collection.open(c.path), queries)
    assert len(c) == 2000 + 15 - 2 and check(c.path)["ok"]


def test_a_server_flushes_full_write_buffers_in_the_background(collection):
    import time

    from retriever.registry import Registry

    registry = Registry.open([collection.path])
    registry.start_merging()
    try:
        version = registry.reader("vecs").version
        for i in range(buffer.FLUSH_WRITES):
            docs, x = make_docs(1, start=70_000 + i), random_vectors(1, 16, seed=i)
            registry.write("vecs", lambda c: c.add(docs, vectors={"dense": x}))
        while registry.merges_pending():
            time.sleep(0.01)
        reader = registry.reader("vecs")
        assert reader.version > version and reader.info()["buffer"]["writes"] == 0
        assert len(retriever.Collection.open(collection.path)) == 2000 + buffer.FLUSH_WRITES
    finally:
        registry.stop_merging()
