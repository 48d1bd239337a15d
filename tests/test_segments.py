"""Segments: documents and deletions per segment; format 1 collections open read-only and migrate."""

import shutil
import time
from pathlib import Path

import numpy as np
import pytest

import retriever
from helpers import make_docs, random_vectors, vector_config
from retriever.check import check
from retriever.cli import app
from retriever.index import disk
from typer.testing import CliRunner

pytestmark = pytest.mark.usefixtures("flush_each_write")  # each write a segment

FORMAT1 = Path(__file__).parent / "data" / "format1"  # written by the engine at b65a118 (storage format 1)
WORDS = ["apple", "banana", "cherry", "delta", "echo", "falcon", "garden", "harbor"]


def same_writes(path):
    """What made the format 1 fixture, done by this engine."""
    config = {"name": "old", "fields": [{"name": "dense", "dim": 8}, {"name": "bm25", "kind": "bm25"}]}
    c = retriever.Collection.create(path, config)
    docs = lambda a, b: [
        {"id": f"d{i}", "text": f"{WORDS[i % 8]} {WORDS[(i * 3) % 8]}", "year": 2000 + i} for i in range(a, b)
    ]  # noqa: E731
    vecs = lambda a, b: np.random.default_rng(a).normal(size=(b - a, 8)).astype("float32")  # noqa: E731
    c.add(docs(0, 8), vectors={"dense": vecs(0, 8)})
    c.add(docs(8, 12), vectors={"dense": vecs(8, 12)})
    c.delete(["d2", "d9"])
    c.add([{"id": "d5", "text": "apple replaced", "year": 1999}], vectors={"dense": vecs(50, 51)})
    return c


def answers(c):
    queries = np.random.default_rng(7).normal(size=(4, 8)).astype("float32")
    dense = [(h.ids, np.round(h.scores, 5).tolist()) for h in c.search(queries, k=12)]
    lexical = [
        (h.ids, np.round(h.scores, 5).tolist()) for h in c.search(WORDS + ["replaced"], k=12, fields="bm25")
    ]
    return len(c), dense, lexical, sorted(c.documents.take(np.flatnonzero(~c.deleted)), key=lambda d: d["id"])


@pytest.fixture
def format1(tmp_path):
    path = tmp_path / "old"
    shutil.copytree(FORMAT1, path)
    return path


def live_copy(c, path):
    """A new collection holding `c`'s live documents and dense vectors, written at once."""
    live = np.flatnonzero(~c.deleted)
    copy = retriever.Collection.create(path, c.config)
    copy.add(c.documents.take(live), vectors={"dense": c.fields["dense"].vectors.gather(live)})
    return copy


def test_a_format_1_collection_opens_read_only(format1, tmp_path):
    old = retriever.Collection.open(format1)
    assert old.manifest["format_version"] == 1
    this_engine = answers(same_writes(tmp_path / "new"))
    read = answers(old)
    assert (
        read[0] == this_engine[0] and read[1] == this_engine[1] and read[3] == this_engine[3]
    )  # count, dense, documents
    assert [ids for ids, _ in read[2]] == [
        ids for ids, _ in this_engine[2]
    ]  # bm25 ranks (scores: deleted rows in its statistics)
    assert check(format1)["ok"]
    with pytest.raises(retriever.InvalidRequest, match="retriever migrate"):
        old.add([{"id": "x", "text": "x"}], vectors={"dense": np.ones((1, 8))})
    assert retriever.Collection.open(format1).version == old.version  # nothing written


def test_migrate_converts_in_place_to_what_a_fresh_build_would_hold(format1, tmp_path):
    before = answers(retriever.Collection.open(format1))
    result = CliRunner().invoke(app, ["migrate", str(format1), "--json"])
    assert result.exit_code == 0, result.output
    assert '"changed": true' in result.stdout and '"format": 2' in result.stdout
    migrated = retriever.Collection.open(format1)
    assert migrated.manifest["format_version"] == 2 and "documents" not in migrated.manifest
    assert len(migrated.segments) == 1 and not migrated.deleted.any()
    after = answers(migrated)
    assert after[:2] == before[:2] and after[3] == before[3]
    assert after == answers(live_copy(migrated, tmp_path / "fresh"))
    assert check(format1)["ok"]
    assert not migrated.migrate()  # nothing left to do
    migrated.add([{"id": "x", "text": "apple"}], vectors={"dense": np.ones((1, 8))})
    migrated.delete(["d1"])
    assert check(format1)["ok"] and len(migrated) == before[0]
    migrated.add([{"id": "y", "text": "pear"}], vectors={"dense": np.ones((1, 8))})
    assert not list(format1.glob("deleted-*.npy"))  # format 1's files are retired, then removed


def test_a_delete_writes_one_small_file_for_its_segment_only(tmp_path):
    c = retriever.Collection.create(tmp_path / "c", vector_config())
    for i in range(10):
        c.add(make_docs(30, start=30 * i), vectors={"dense": random_vectors(30, 16, seed=i)})
    assert len(c.segments) > 1
    holder = next(s for s in c.segments if "d95" in s.table.column("id").to_pylist())
    with disk.inject(disk.Faults()) as counted:
        c.delete(["d95", "d97"])
    written = [
        name.removeprefix(".").removesuffix(".tmp")
        for op, name in zip(counted.ops, counted.names)
        if op == "create"
    ]
    deletions = [n for n in written if ".del-" in n]
    assert deletions == [f"{holder.entry['name']}.del-{c.version:06d}.npy"] and not any(
        "docs" in n for n in written
    )
    assert sum(s.deleted.sum() for s in c.segments) == 2 and len(c) == 298
    assert c.search(random_vectors(300, 16, seed=3)[5], k=1)[0].ids != ["d95"]


MIXED = {
    "name": "mixed",
    "max_k": 50,
    "fields": [
        {"name": "dense", "dim": 16},
        {"name": "bm25", "kind": "bm25"},
        {
            "name": "bits",
            "kind": "binary",
            "source": "dense",
            "method": "sign",
            "bits": 2,
            "rescore": 1000,
        },  # every candidate
        {"name": "tok", "kind": "multivector", "dim": 8, "fde": {"repetitions": 4, "simhash_bits": 2}},
    ],
}


def mixed_batch(start, n):
    rng = np.random.default_rng(start)
    docs = [
        {
            "id": f"m{i}",
            "text": " ".join(rng.choice(WORDS + ["zeta", "omega", "sigma"], size=int(rng.integers(2, 9)))),
        }
        for i in range(start, start + n)
    ]
    tokens = [rng.normal(size=(int(rng.integers(1, 6)), 8)).astype(np.float32) for _ in range(n)]
    return docs, {"dense": random_vectors(n, 16, seed=start + 1), "tok": tokens}


def mixed_answers(c):
    queries = random_vectors(6, 16, seed=99)
    out = [
        c.search(queries, k=20, fields="dense"),
        c.search(["apple zeta", "omega", "harbor sigma delta"], k=20, fields="bm25"),
        c.search(queries, k=20, fields="bits"),
        c.search(
            {"tok": [np.random.default_rng(5).normal(size=(3, 8))]},
            k=20,
            fields="tok",
            params={"exhaustive": 1},
        ),
    ]
    return [[(h.ids, h.scores) for h in hits] for hits in out]


def assert_same(a, b):
    for field_a, field_b in zip(a, b):
        for (ids_a, scores_a), (ids_b, scores_b) in zip(field_a, field_b):
            assert ids_a == ids_b
            np.testing.assert_allclose(scores_a, scores_b, rtol=1e-5, atol=1e-5)


def test_the_same_documents_in_one_or_twenty_segments_give_the_same_ids_and_scores(tmp_path, monkeypatch):
    batches = [mixed_batch(25 * i, 25) for i in range(20)]
    one = retriever.Collection.create(tmp_path / "one", MIXED)
    one.add(
        [d for docs, _ in batches for d in docs],
        vectors={
            "dense": np.concatenate([v["dense"] for _, v in batches]),
            "tok": [t for _, v in batches for t in v["tok"]],
        },
    )
    keep_every_segment = lambda rows, deleted, cap: None  # noqa: E731
    monkeypatch.setattr("retriever.merge_policy.next_merge", keep_every_segment)
    twenty = retriever.Collection.create(tmp_path / "twenty", MIXED)
    for docs, vectors in batches:
        twenty.add(docs, vectors=vectors)
    assert len(one.segments) == 1 and len(twenty.segments) == 20
    assert_same(mixed_answers(one), mixed_answers(twenty))
    assert_same(mixed_answers(twenty), mixed_answers(retriever.Collection.open(twenty.path)))
    assert twenty.optimize() == 20 and len(twenty.segments) == 1
    assert_same(mixed_answers(one), mixed_answers(twenty))
    assert check(twenty.path)["ok"]


def test_segments_files_and_descriptors_stay_logarithmic_under_single_document_upserts(tmp_path):
    import math
    import os

    c = retriever.Collection.create(
        tmp_path / "c",
        {"name": "c", "fields": [{"name": "dense", "dim": 8}, {"name": "bm25", "kind": "bm25"}]},
    )
    rng = np.random.default_rng(0)
    most = 0
    for i in range(300):
        doc_id = f"d{int(rng.integers(0, 150))}"  # half the upserts replace a live document
        c.add(
            [{"id": doc_id, "text": f"text {i} {WORDS[i % 8]}"}], vectors={"dense": rng.normal(size=(1, 8))}
        )
        if i % 50 == 49:
            c.delete([f"d{int(rng.integers(0, 150))}"])
        most = max(most, len(c.segments))
    bound = 2 * math.log2(len(c) + 1) + 2
    assert most <= bound, (most, bound)
    files = [p for p in c.path.iterdir() if not p.name.startswith((".lease", ".lock"))]
    assert len(files) <= 12 * bound  # a dozen files per segment at most (docs, deletions, each field's few)
    fds = len(os.listdir("/proc/self/fd"))
    reopened = retriever.Collection.open(c.path)
    assert len(os.listdir("/proc/self/fd")) - fds <= 6 * bound  # memory maps hold a descriptor each
    assert reopened.search("text", k=5, fields="bm25")[0].ids and check(c.path)["ok"]


def test_a_fault_at_any_operation_of_a_merge_leaves_a_committed_state(tmp_path):
    template = tmp_path / "template"
    c = retriever.Collection.create(template, MIXED)
    for i in range(3):
        c.add(*mixed_batch(100 * i, 60 - 20 * i))
    c.delete(["m0", "m101"])
    before = mixed_answers(c)
    with disk.inject(disk.Faults()) as counted:
        merged = retriever.Collection.open(shutil.copytree(template, tmp_path / "probe"))
        assert merged.optimize() == len(c.segments)
    after = mixed_answers(merged)
    for n in range(0, counted.count, 3 if counted.count > 150 else 1):
        target = tmp_path / f"c{n}"
        shutil.copytree(template, target)
        c = retriever.Collection.open(target)
        try:
            with disk.inject(disk.Faults(fail_at=n, code=5)):
                c.optimize()
        except retriever.WriteFailed:
            pass
        reopened = retriever.Collection.open(target)
        state = mixed_answers(reopened)
        assert len(reopened.segments) in (1, 3), counted.ops[n]
        assert_same(state, before if len(reopened.segments) == 3 else after)
        assert_same(mixed_answers(c), state)  # the surviving object answers as a fresh open does
        assert check(target)["ok"]
        c.optimize()  # a retry succeeds
        assert len(c.segments) == 1
        assert_same(mixed_answers(c), after)
        shutil.rmtree(target)


def test_optimize_on_the_command_line(tmp_path):
    c = retriever.Collection.create(tmp_path / "c", vector_config())
    for i in range(3):
        c.add(
            make_docs(10 * (3 - i), start=100 * i),
            vectors={"dense": random_vectors(10 * (3 - i), 16, seed=i)},
        )
    c.delete(["d0"])
    result = CliRunner().invoke(app, ["optimize", str(c.path), "--json"])
    assert result.exit_code == 0, result.output
    assert '"segments": 1' in result.stdout and '"deleted": 0' in result.stdout
    assert len(retriever.Collection.open(c.path)) == 59 and check(c.path)["ok"]


def test_a_segment_whose_rows_are_all_deleted_disappears(tmp_path):
    c = retriever.Collection.create(tmp_path / "c", MIXED)
    c.add(*mixed_batch(0, 40))
    c.add(*mixed_batch(100, 10))
    c.delete([f"m{i}" for i in range(100, 110)])
    assert [s.rows for s in c.segments] == [40] and len(c) == 40
    c.delete([f"m{i}" for i in range(40)])
    assert c.segments == [] and len(c) == 0 and check(c.path)["ok"]
    c.add(*mixed_batch(200, 5))
    assert [s.rows for s in retriever.Collection.open(c.path).segments] == [5]
    assert c.search("apple zeta omega sigma", fields="bm25", k=5)[0].ids


def test_merged_segments_hold_what_a_fresh_build_of_the_live_documents_holds(tmp_path):
    config = {
        "name": "c",
        "max_k": 100,
        "fields": [{"name": "dense", "dim": 8}, {"name": "bm25", "kind": "bm25"}],
    }
    c = retriever.Collection.create(tmp_path / "c", config)
    rng = np.random.default_rng(3)
    for i in range(40):  # upserts of new and live ids, deletes, with the merge policy at work
        ids = sorted({f"d{int(x)}" for x in rng.integers(0, 120, size=int(rng.integers(1, 12)))})
        docs = [{"id": d, "text": " ".join(rng.choice(WORDS, size=3)) + f" v{i}"} for d in ids]
        c.add(docs, vectors={"dense": rng.normal(size=(len(docs), 8))})
        if i % 4 == 3:
            c.delete([f"d{int(x)}" for x in rng.integers(0, 120, size=5)])
    c.optimize()
    fresh = live_copy(c, tmp_path / "fresh")
    queries = WORDS + ["v3", "v39", "apple v7"]
    for a, b in zip(c.search(queries, k=30, fields="bm25"), fresh.search(queries, k=30, fields="bm25")):
        assert a.ids == b.ids
        np.testing.assert_allclose(a.scores, b.scores, rtol=1e-6)
    x = rng.normal(size=(5, 8)).astype(np.float32)
    assert [h.ids for h in c.search(x, k=30)] == [h.ids for h in fresh.search(x, k=30)]


def test_a_merge_written_while_writes_go_on_carries_their_deletes_over(tmp_path):
    c = retriever.Collection.create(tmp_path / "c", vector_config())
    c.merge_inline = False  # as a server's background merger runs it
    for i in range(4):
        c.add(make_docs(20, start=20 * i), vectors={"dense": random_vectors(20, 16, seed=i)})
    assert len(c.segments) == 4
    plan = c.plan_merge()
    assert plan is not None and len(plan.segments) >= 2
    merged_ids = [i for s in plan.segments for i in s.table.column("id").to_pylist()]
    gone, replaced = merged_ids[0], merged_ids[-1]
    c.delete([gone])  # writes go on while the merge is written
    c.add([{"id": replaced, "text": "newer"}], vectors={"dense": random_vectors(1, 16, seed=50)})
    c.add(make_docs(3, start=500), vectors={"dense": random_vectors(3, 16, seed=51)})
    c.write_merge(plan)
    assert any(p.name.startswith(plan.name) for p in c.path.iterdir())
    c.add(
        make_docs(1, start=600), vectors={"dense": random_vectors(1, 16, seed=52)}
    )  # its sweep spares the merge's files
    assert c.finish_merge(plan)
    for opened in (c, retriever.Collection.open(c.path)):
        assert plan.name in [s.entry["name"] for s in opened.segments]
        live = {d["id"]: d for d in opened.documents.take(np.flatnonzero(~opened.deleted))}
        assert gone not in live and live[replaced]["text"] == "newer" and len(live) == 80 - 1 + 3 + 1
    assert check(c.path)["ok"]


def test_a_server_merges_in_the_background(tmp_path):
    from retriever.registry import Registry

    c = retriever.Collection.create(tmp_path / "c", vector_config())
    registry = Registry.open([c.path])
    registry.start_merging()
    try:
        for i in range(12):
            registry.write(
                "vecs",
                lambda w, i=i: w.add(
                    make_docs(10, start=10 * i), vectors={"dense": random_vectors(10, 16, seed=i)}
                ),
            )
        deadline = time.time() + 30
        while registry.merges_pending() and time.time() < deadline:
            time.sleep(0.05)
        reader = registry.reader("vecs")
        assert len(reader) == 120 and len(reader.segments) <= 4
        x = np.concatenate([random_vectors(10, 16, seed=i) for i in range(12)])
        assert reader.search(x[37], k=1)[0].ids == ["d37"]
    finally:
        registry.stop_merging()
    assert check(c.path)["ok"]


def test_writes_merge_themselves_when_merges_fall_behind(tmp_path, monkeypatch):
    monkeypatch.setattr("retriever.merge_policy.MAX_SEGMENTS", 6)
    c = retriever.Collection.create(tmp_path / "c", vector_config())
    c.merge_inline = False  # a background merger that never runs
    for i in range(20):
        c.add(make_docs(5, start=5 * i), vectors={"dense": random_vectors(5, 16, seed=i)})
        assert len(c.segments) <= 6 + 1
    assert len(c) == 100 and check(c.path)["ok"]


def test_the_merge_policy_keeps_tiers_logarithmic_and_stops_at_the_size_cap():
    from retriever import merge_policy

    assert merge_policy.next_merge([8, 4, 2, 1, 1], [0] * 5) == (0, 5)  # each tier no bigger than the rest
    assert merge_policy.next_merge([8, 4, 2, 1, 1], [0] * 5, max_rows=4) == (2, 5)  # 2 + 1 + 1 fits
    assert merge_policy.next_merge([4, 4, 1, 1], [0] * 4, max_rows=4) == (2, 4)
    assert merge_policy.next_merge([4, 4, 4], [0] * 3, max_rows=4) is None  # every merge would overflow
    assert merge_policy.next_merge([4, 1, 1], [0] * 3, max_rows=2) == (1, 3)
    equal = [4] * (merge_policy.MAX_SEGMENTS + 1)
    assert merge_policy.next_merge(equal, [0] * len(equal), max_rows=4) is None  # even past MAX_SEGMENTS
    assert merge_policy.next_merge([10, 5], [6, 0], max_rows=4) == (0, 1)  # compaction only shrinks


@pytest.mark.parametrize("small_segment", [0, 10_000])  # ids read through Arrow, or kept as a list
def test_document_ids_are_found_as_a_scan_of_every_row_finds_them(monkeypatch, small_segment):
    import pyarrow as pa

    from retriever import segments
    from retriever.segments import DocumentIds, id_hashes

    monkeypatch.setattr(segments, "SMALL_SEGMENT", small_segment)
    ids = [f"d{i % 700}" for i in range(1000)] + ["", "é", "d1 "]  # repeats: older copies of an id
    lookup = DocumentIds(pa.table({"id": pa.chunked_array([ids[:400], ids[400:]])}))
    wanted = ["d5", "d699", "d700", "", "é", "d1", "missing", "d5"]
    assert lookup.rows_of(wanted).tolist() == [r for r, i in enumerate(ids) if i in wanted]
    assert lookup.rows_of(wanted, id_hashes(wanted)).tolist() == lookup.rows_of(wanted).tolist()
    # a hash that collides is not a match: the ids themselves are compared
    assert lookup.rows_of(["not-d5"], id_hashes(["d5"])).tolist() == []
    assert lookup.at(np.array([0, 401, 1002])) == [ids[0], ids[401], ids[1002]]
    assert DocumentIds(pa.table({"id": pa.array([], pa.string())})).rows_of(["x"]).tolist() == []


@pytest.mark.parametrize("kind", ["string", "large_string"])
def test_a_few_ids_read_from_the_buffers_match_arrow_take(monkeypatch, kind):
    import pyarrow as pa

    from retriever import segments
    from retriever.segments import DocumentIds

    monkeypatch.setattr(segments, "SMALL_SEGMENT", 0)
    ids = [f"doc-{i}" for i in range(50)] + ["", "é", "日本"] + [f"x{i}" for i in range(50)]
    whole = pa.array(ids, getattr(pa, kind)())
    column = pa.chunked_array([whole.slice(3, 40), whole.slice(43)])  # chunks with offsets
    lookup = DocumentIds(pa.table({"id": column}))
    rows = np.array([0, 39, 40, 47, 48, 49, 99, 5])
    expected = [ids[3 + r] for r in rows.tolist()]
    assert lookup.at(rows) == expected
    assert DocumentIds(pa.table({"id": whole.slice(3)})).at(rows) == expected  # one chunk
    monkeypatch.setattr(segments, "FEW_ROWS", 0)  # through the compiled gather
    assert DocumentIds(pa.table({"id": column})).at(rows) == expected
