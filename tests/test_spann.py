"""SPANN: exhaustive probing equals exact search, default probing reaches high recall, streamed
and resumed builds equal one-shot builds, updates and compaction, corrupt files and read errors."""

from __future__ import annotations

import errno
import os

import numpy as np
import pytest

from helpers import assert_same_top_k
from retriever.errors import CorruptIndex, InvalidConfig, InvalidRequest, ReadFailed
from retriever.index import diskio, spann_build
from retriever.index.spann import SpannIndex
from retriever.index.spann_build import SpannParams

DIM = 16
SMALL_CAP = 256 << 10  # several assignment blocks and merge groups for a few thousand rows


def clustered(rows: int, seed: int = 0, centers: int = 40) -> np.ndarray:
    rng = np.random.default_rng(seed)
    middle = rng.normal(size=(centers, DIM)).astype(np.float32)
    return (middle[rng.integers(0, centers, rows)] + 0.35 * rng.normal(size=(rows, DIM))).astype(np.float32)


def exact(base: np.ndarray, queries: np.ndarray, k: int, metric: str = "l2", live: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    scores = base @ queries.T if metric == "ip" else -((base[:, None, :] - queries[None]) ** 2).sum(-1)  # [N, B]
    if live is not None:
        scores[~live] = -np.inf
    rows = np.argsort(-scores, axis=0, kind="stable")[:k].T
    return np.take_along_axis(scores.T, rows, axis=1), rows


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(found, truth)]))


@pytest.fixture(scope="module")
def data():
    base = clustered(4000)
    queries = clustered(50, seed=1)
    return base, queries


@pytest.fixture(scope="module")
def built(data, tmp_path_factory):
    base, _ = data
    return SpannIndex.build(base, tmp_path_factory.mktemp("spann") / "index", SpannParams(list_size=40, closure=0.3),
                            memory_cap=SMALL_CAP, progress=False)


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_probing_every_list_equals_exact_search(data, tmp_path, metric):
    base, queries = data
    if metric == "ip":
        base = base / np.linalg.norm(base, axis=1, keepdims=True)
    index = SpannIndex.build(base, tmp_path / "i", SpannParams(metric=metric, list_size=40, closure=0.3), memory_cap=SMALL_CAP, progress=False)
    scores, rows = index.search(queries, 10, nprobe=index.lists, prune=1e9)
    assert_same_top_k(scores, rows, *exact(base, queries, 10, metric))
    assert all(len(set(r)) == len(r) for r in rows)  # replicas never show twice


def test_default_probing_recall_and_balanced_lists(built, data):
    base, queries = data
    _, rows = built.search(queries, 10)
    assert recall(rows, exact(base, queries, 10)[1]) >= 0.9
    lengths = built.list_lengths()
    assert lengths.sum() > len(base)  # boundary replication placed some vectors in several lists
    assert lengths.sum() <= len(base) * built.params.replicas
    assert lengths.max() <= 6 * built.params.list_size  # hierarchical balancing bounds list length
    assert built.memory_bytes() < 0.5 * base.nbytes


def test_a_batch_answers_as_its_queries_one_by_one(built, data):
    """A batch reads each list once and hands every query its own lists out of one buffer."""
    base, queries = data
    allowed = np.random.default_rng(2).random(len(base)) < 0.7
    for mask in (None, allowed):
        scores, rows = built.search(queries[:12], 10, nprobe=8, allowed=mask)
        for b, query in enumerate(queries[:12]):
            one_scores, one_rows = built.search(query[None], 10, nprobe=8, allowed=mask)
            assert rows[b].tolist() == one_rows[0].tolist()
            np.testing.assert_allclose(scores[b], one_scores[0], rtol=1e-5)
        if mask is not None:
            assert mask[rows[rows >= 0]].all()


def test_exact_routing_and_the_graph_router_find_the_nearest_centroids(built, data, monkeypatch):
    from retriever.index import spann

    _, queries = data
    squared = ((queries[:, None, :] - built.centroids[None]) ** 2).sum(-1)  # [B, L] the slow reference
    nearest = np.argsort(squared, axis=1, kind="stable")[:, :8]
    got_squared, got = built._route(queries, 8)
    assert got.tolist() == nearest.tolist()
    np.testing.assert_allclose(got_squared, np.take_along_axis(squared, nearest, 1), rtol=1e-4, atol=1e-4)
    monkeypatch.setattr(spann, "EXACT_ROUTING", 0)  # past it, the HNSW router: approximate, mostly the same
    graph = built._route(queries, 8)[1]
    assert np.mean([len(set(a) & set(b)) / 8 for a, b in zip(graph.tolist(), nearest.tolist())]) >= 0.9


def test_reads_are_counted(built, data):
    _, queries = data
    built.reset_io_counters()
    built.search(queries[:1], 10, nprobe=4, prune=1e9)
    counters = built.io_counters()
    assert counters["reads"] <= 4 and counters["bytes_read"] > 0
    assert counters["bytes_read"] % built.dtype.itemsize == 0
    built.reset_io_counters()
    built.search(queries[:3], 10, nprobe=built.lists, prune=1e9)  # every list: they lie end to end
    every_list = int(built.list_lengths().sum()) * built.dtype.itemsize
    assert built.io_counters() == {"reads": 1, "bytes_read": every_list}


def test_memory_mapped_build_equals_in_memory_build(data, tmp_path, built):
    base, _ = data
    np.save(tmp_path / "vectors.npy", base)
    streamed = SpannIndex.build(np.load(tmp_path / "vectors.npy", mmap_mode="r"), tmp_path / "i", built.params,
                                memory_cap=SMALL_CAP, progress=False)
    assert _postings_digest(streamed) == _postings_digest(built)


def test_resume_refuses_other_params(data, tmp_path, built, monkeypatch):
    base, _ = data
    _interrupt_third_block(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        SpannIndex.build(base, tmp_path / "i", built.params, memory_cap=SMALL_CAP, progress=False)
    assert len(list((tmp_path / "i" / spann_build.WORK_DIR).glob("*.counts.npy"))) == 2
    with pytest.raises(InvalidRequest, match="changed"):
        SpannIndex.build(base, tmp_path / "i", SpannParams(list_size=41), memory_cap=SMALL_CAP, resume=True, progress=False)


def test_resume_skips_finished_blocks(data, tmp_path, built, monkeypatch):
    base, _ = data
    real_assign = spann_build.assign
    _interrupt_third_block(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        SpannIndex.build(base, tmp_path / "i", built.params, memory_cap=SMALL_CAP, progress=False)
    blocks = -(-len(base) // spann_build.block_rows_for(DIM, built.params, SMALL_CAP))
    calls = []
    monkeypatch.setattr(spann_build, "assign", lambda *a: (calls.append(1), real_assign(*a))[1])
    resumed = SpannIndex.build(base, tmp_path / "i", built.params, memory_cap=SMALL_CAP, resume=True, progress=False)
    assert len(calls) == blocks - 2
    assert _postings_digest(resumed) == _postings_digest(built)
    assert not (tmp_path / "i" / spann_build.WORK_DIR).exists()


def test_updates_then_compaction_equal_a_fresh_build(data, tmp_path):
    base, queries = data
    head, tail = base[:3000], base[3000:]
    params = SpannParams(list_size=40, closure=0.3)
    index = SpannIndex.build(head, tmp_path / "i", params, memory_cap=SMALL_CAP, progress=False)
    ids = index.add(tail)
    assert ids.tolist() == list(range(3000, 4000))
    gone = np.array([5, 17, 3001, 3999])
    index.remove(gone)
    live = np.ones(len(base), dtype=bool)
    live[gone] = False
    reopened = SpannIndex.open(tmp_path / "i")  # the delta was saved
    assert reopened.ntotal == len(base) - len(gone)
    truth = exact(base, queries, 10, live=live)
    assert_same_top_k(*reopened.search(queries, 10, nprobe=reopened.lists, prune=1e9), *truth)
    compacted = reopened.compact()
    assert compacted.ntotal == len(base) - len(gone) and len(compacted.delta) == 0
    assert_same_top_k(*compacted.search(queries, 10, nprobe=compacted.lists, prune=1e9), *truth)
    fresh = SpannIndex.build(base[live], tmp_path / "fresh", params, memory_cap=SMALL_CAP, progress=False)
    fresh_rows = np.flatnonzero(live)[fresh.search(queries, 10)[1]]
    compacted_rows = compacted.search(queries, 10)[1]
    assert abs(recall(compacted_rows, truth[1]) - recall(fresh_rows, truth[1])) <= 0.05
    assert recall(compacted_rows, fresh_rows) >= 0.9


def test_float16_records_search_as_exact_search_over_the_rounded_vectors(data, tmp_path):
    """F16: every list probed equals exact search over the float16-rounded vectors, through a
    delta, a removal and a compaction; the posting file holds 8 + 2 x dim bytes a record."""
    base, queries = data
    params = SpannParams(list_size=40, closure=0.3, float_bits=16)
    index = SpannIndex.build(base[:3000], tmp_path / "i", params, memory_cap=SMALL_CAP, progress=False)
    assert index.dtype.itemsize == 8 + 2 * DIM
    index.add(base[3000:])
    index.remove(np.array([7, 3500]))
    live = np.ones(len(base), dtype=bool)
    live[[7, 3500]] = False
    rounded = base.astype(np.float16).astype(np.float32)
    rounded[3000:] = base[3000:]  # the delta keeps float32 vectors until compaction
    everything = {"nprobe": 10_000, "prune": 1e9}
    reopened = SpannIndex.open(tmp_path / "i")
    assert_same_top_k(*reopened.search(queries, 10, **everything), *exact(rounded, queries, 10, live=live))
    compacted = reopened.compact()
    truth = exact(base.astype(np.float16).astype(np.float32), queries, 10, live=live)
    assert_same_top_k(*compacted.search(queries, 10, **everything), *truth)
    assert recall(compacted.search(queries, 10)[1], exact(base, queries, 10, live=live)[1]) >= 0.9


def test_float16_records_in_pq_mode_rescore_to_exact_search_over_the_rounded_vectors(data, tmp_path):
    base, queries = data
    params = SpannParams(list_size=40, closure=0.3, pq=4, float_bits=16)
    index = SpannIndex.build(base, tmp_path / "i", params, memory_cap=SMALL_CAP, progress=False)
    found = index.search(queries, 10, nprobe=10_000, prune=1e9, rescore=10**6)
    assert_same_top_k(*found, *exact(base.astype(np.float16).astype(np.float32), queries, 10))


def test_float16_records_refuse_values_beyond_their_range(data, tmp_path):
    base, _ = data
    wide = base.copy()
    wide[10, 3] = 1e6
    with pytest.raises(InvalidRequest, match="float16's range"):
        SpannIndex.build(wide, tmp_path / "i", SpannParams(list_size=40, float_bits=16), progress=False)
    with pytest.raises(InvalidConfig, match="F16, F32"):
        SpannParams(float_bits=8)


@pytest.fixture(scope="module")
def built_pq(data, tmp_path_factory):
    base, _ = data
    return SpannIndex.build(base, tmp_path_factory.mktemp("spann-pq") / "index", SpannParams(list_size=40, closure=0.3, pq=4),
                            memory_cap=SMALL_CAP, progress=False)


def test_pq_mode_rescoring_everything_equals_full_vector_mode(built, built_pq, data):
    """Same lists (the posting file is byte-identical); with every record re-scored the answers
    are the full-vector mode's, and with the default depth recall stays close while far fewer
    bytes are read."""
    base, queries = data
    postings = [i.path / i.manifest["names"]["postings"] for i in (built, built_pq)]
    assert postings[0].read_bytes() == postings[1].read_bytes()
    assert_same_top_k(*built_pq.search(queries, 10, rescore=10**9), *built.search(queries, 10))
    truth = exact(base, queries, 10)[1]
    for index in (built, built_pq):
        index.reset_io_counters()
    full_rows = np.concatenate([built.search(q[None], 10)[1] for q in queries])  # one query at a time: no shared reads
    pq_rows = np.concatenate([built_pq.search(q[None], 10, rescore=100)[1] for q in queries])
    assert recall(pq_rows, truth) >= recall(full_rows, truth) - 0.05
    assert built_pq.io_counters()["bytes_read"] < 0.5 * built.io_counters()["bytes_read"]
    assert built_pq.memory_bytes() > built.memory_bytes()  # the codes live in memory


def test_pq_mode_compaction_keeps_codes_aligned(data, tmp_path):
    base, queries = data
    index = SpannIndex.build(base[:3000], tmp_path / "i", SpannParams(list_size=40, closure=0.3, pq=4),
                             memory_cap=SMALL_CAP, progress=False)
    index.add(base[3000:])
    index.remove([7])
    live = np.ones(len(base), dtype=bool)
    live[7] = False
    compacted = SpannIndex.open(tmp_path / "i").compact()
    assert len(compacted.codes) == int(compacted.offsets[-1])
    assert_same_top_k(*compacted.search(queries, 10, nprobe=compacted.lists, prune=1e9, rescore=10**9),
                      *exact(base, queries, 10, live=live))


def test_corrupt_pq_codes_are_refused(built_pq, tmp_path):
    copy = _copy(built_pq, tmp_path)
    codes = copy / built_pq.manifest["names"]["codes"]
    data = bytearray(codes.read_bytes())
    data[-1] ^= 0xFF
    codes.write_bytes(bytes(data))
    with pytest.raises(CorruptIndex, match="checksum|sha256"):
        SpannIndex.open(copy)
    with pytest.raises(InvalidConfig, match="equal parts"):
        SpannIndex.build(data_rows(), tmp_path / "bad", SpannParams(pq=5), progress=False)


def data_rows() -> np.ndarray:
    return clustered(300)


def test_truncated_posting_file_is_refused_at_open(built, tmp_path):
    copy = _copy(built, tmp_path)
    postings = copy / built.manifest["names"]["postings"]
    os.truncate(postings, postings.stat().st_size - 100)
    with pytest.raises(CorruptIndex, match="truncated"):
        SpannIndex.open(copy)


def test_mismatched_offsets_or_flipped_bytes_are_refused(built, tmp_path):
    copy = _copy(built, tmp_path)
    offsets = copy / built.manifest["names"]["offsets"]
    np.save(offsets, np.load(offsets)[::-1].copy())
    with pytest.raises(CorruptIndex, match="checksum"):
        SpannIndex.open(copy)
    copy = _copy(built, tmp_path / "again")
    postings = copy / built.manifest["names"]["postings"]
    data = bytearray(postings.read_bytes())
    data[len(data) // 2] ^= 0xFF
    postings.write_bytes(bytes(data))
    with pytest.raises(CorruptIndex, match="sha256"):
        SpannIndex.open(copy)


def test_a_read_error_fails_the_request_not_the_index(built, data, monkeypatch):
    _, queries = data

    def broken(*args):
        raise OSError(errno.EIO, "Input/output error")

    with monkeypatch.context() as patch:
        patch.setattr(diskio.os, "preadv", broken)  # the device fails under the positioned reads
        with pytest.raises(ReadFailed, match="Input/output error"):
            built.search(queries[:2], 5)
    assert (built.search(queries[:2], 5)[1] >= 0).all()


def test_bad_queries_and_ids(built):
    with pytest.raises(InvalidRequest, match="shape"):
        built.search(np.zeros((1, DIM + 1), np.float32), 5)
    with pytest.raises(InvalidRequest, match="within"):
        built.remove([10**9])
    with pytest.raises(InvalidRequest, match="finite"):
        built.add(np.full((1, DIM), np.nan, np.float32))


def _interrupt_third_block(monkeypatch) -> None:
    real_assign, calls = spann_build.assign, []

    def interrupted(*args):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_assign(*args)

    monkeypatch.setattr(spann_build, "assign", interrupted)


def _postings_digest(index: SpannIndex) -> str:
    return index.manifest["files"][index.manifest["names"]["postings"]]["sha256"]


def _copy(index: SpannIndex, target):
    import shutil

    shutil.copytree(index.path, target / "copy")
    return target / "copy"


# ---- as a dense field's index in a collection ---------------------------------------------------

EVERYTHING = 10**9  # max_candidates that lets a test probe every list and re-score every row


def _two_field_collection(path, base):
    import retriever

    collection = retriever.Collection.create(path, {"name": "s", "max_candidates": EVERYTHING, "fields": [
        {"name": "flat", "dim": DIM, "metric": "l2"}, {"name": "spann", "dim": DIM, "metric": "l2", "index": "SPANN,L40"}]})
    collection.add([{"id": str(i)} for i in range(len(base))], vectors={"flat": base, "spann": base})
    return collection


def _spann_dir(collection, segment=0):
    return collection.segments[segment].entry["fields"]["spann"]["spann"]["dir"]


@pytest.mark.usefixtures("flush_each_write")  # each batch a segment
def test_collection_field_matches_exact_search_and_merges_build_new_lists(data, tmp_path):
    import retriever

    base, queries = data
    collection = _two_field_collection(tmp_path / "c", base[:3000])
    first_dir = _spann_dir(collection)
    exact_hits = collection.search(queries, 10, fields="flat")
    hits = collection.search(queries, 10, fields="spann")
    assert recall(np.array([h.rows for h in hits]), np.array([h.rows for h in exact_hits])) >= 0.9
    every_list = collection.search(queries, 10, fields="spann", params={"nprobe": 10_000})
    np.testing.assert_allclose([h.scores for h in every_list], [h.scores for h in exact_hits], rtol=1e-4, atol=1e-3)

    collection.add([{"id": str(i)} for i in range(3000, 3500)], vectors={"flat": base[3000:3500], "spann": base[3000:3500]})
    assert _spann_dir(collection) == first_dir  # a small segment beside it, searched exactly
    assert "spann" not in collection.segments[1].entry["fields"]["spann"]
    collection.delete(["3001", "7"])
    collection.add([{"id": str(i)} for i in range(3500, 4000)], vectors={"flat": base[3500:], "spann": base[3500:]})
    assert collection.optimize() == 2
    merged = collection.segments[0].entry["fields"]["spann"]["spann"]
    assert merged["dir"] != first_dir and merged["rows"] == 3998
    reopened = retriever.Collection.open(tmp_path / "c")
    exact_hits = reopened.search(queries, 10, fields="flat", params={})
    hits = reopened.search(queries, 10, fields="spann", params={"nprobe": 10_000})
    np.testing.assert_allclose([h.scores for h in hits], [h.scores for h in exact_hits], rtol=1e-4, atol=1e-3)
    assert not any({"3001", "7"} & set(h.ids) for h in hits)
    collection.delete(["8"])  # the next commit drops the directory no kept manifest names
    assert not (tmp_path / "c" / first_dir).exists()


def test_collection_field_in_pq_mode(data, tmp_path):
    import retriever

    base, queries = data
    fields = [{"name": "flat", "dim": DIM, "metric": "l2"},
              {"name": "spann", "dim": DIM, "metric": "l2", "index": "SPANN,L40,PQ4"}]
    collection = retriever.Collection.create(
        tmp_path / "c", {"name": "s", "max_candidates": EVERYTHING, "fields": fields}
    )
    collection.add([{"id": str(i)} for i in range(len(base))], vectors={"flat": base, "spann": base})
    exact_hits = collection.search(queries, 10, fields="flat")
    everything = collection.search(queries, 10, fields="spann", params={"nprobe": 10_000, "prune_pct": 10**6, "rescore": 10**6})
    np.testing.assert_allclose([h.scores for h in everything], [h.scores for h in exact_hits], rtol=1e-4, atol=1e-3)
    default = collection.search(queries, 10, fields="spann")
    assert recall(np.array([h.rows for h in default]), np.array([h.rows for h in exact_hits])) >= 0.85


def test_collection_refuses_a_replaced_spann_manifest_and_bad_factory(data, tmp_path):
    import retriever
    from retriever.errors import InvalidConfig

    base, _ = data
    collection = _two_field_collection(tmp_path / "c", base[:2000])
    manifest = tmp_path / "c" / _spann_dir(collection) / "spann.json"
    manifest.write_text(manifest.read_text().replace('"generation": 1', '"generation": 1 '))
    with pytest.raises(CorruptIndex, match="not the one"):
        retriever.Collection.open(tmp_path / "c")
    with pytest.raises(InvalidConfig, match="R<replicas>"):
        retriever.Collection.create(tmp_path / "d", {"name": "s", "fields": [{"name": "v", "dim": DIM, "index": "SPANN,X3"}]})
    with pytest.raises(InvalidConfig, match="F16, F32"):
        fields = [{"name": "v", "dim": DIM, "index": "SPANN,F8"}]
        retriever.Collection.create(tmp_path / "e", {"name": "s", "fields": fields})


def test_collection_field_with_float16_records_rescores_to_exact(data, tmp_path):
    import retriever

    base, queries = data
    fields = [{"name": "flat", "dim": DIM, "metric": "l2"},
              {"name": "spann", "dim": DIM, "metric": "l2", "index": "SPANN,L40,F16", "rescore": 50}]
    collection = retriever.Collection.create(
        tmp_path / "c", {"name": "s", "max_candidates": EVERYTHING, "fields": fields}
    )
    collection.add([{"id": str(i)} for i in range(len(base))], vectors={"flat": base, "spann": base})
    assert collection.fields["spann"].info()["segment_indexes"] == ["SPANN"]
    exact_hits = collection.search(queries, 10, fields="flat")
    everything = collection.search(queries, 10, fields="spann", params={"nprobe": 10_000, "prune_pct": 10**6})
    np.testing.assert_allclose([h.scores for h in everything], [h.scores for h in exact_hits],
                               rtol=1e-5, atol=1e-5)
    assert [h.ids for h in everything] == [h.ids for h in exact_hits]
