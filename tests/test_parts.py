"""A segment's vector index (retriever/fields/parts.py): search parameters chosen at build by
measuring recall against exact search, and the defaults that make an index string alone work."""

import numpy as np
import pytest

import retriever
from retriever.fields import parts
from retriever.index.faiss_index import FaissIndex
from retriever.index.vectors import VectorStore
from retriever.kernels import reference


def clustered(n: int, dim: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Documents and queries drawn around the same centres (so IVF cells matter)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((50, dim))

    def draw(count: int) -> np.ndarray:
        picked = centres[rng.integers(0, 50, count)]
        return (picked + 0.5 * rng.standard_normal((count, dim))).astype(np.float32)

    return draw(n), draw(100)


def recall(found, truth) -> float:
    return float(np.mean([len(set(a.ids) & set(b.ids)) / len(b.ids) for a, b in zip(found, truth)]))


@pytest.mark.parametrize("factory, key", [("IVF64,Flat", "nprobe"), ("HNSW16", "efSearch")])
def test_tune_picks_the_smallest_value_reaching_the_target(factory, key):
    base, _ = clustered(6000)
    index = FaissIndex(factory, 32, "l2")
    if not index.cpu_index.is_trained:
        index.train(base)
    index.add(base)
    store = VectorStore([base], 32)

    def search(queries, k, params):
        return parts.search(index, store, queries, k, params, None, 0, "l2")[1]

    def exact(queries, k):  # the slow reference, not the kernel
        return reference.exact_search(queries, base, k, "l2")[1]

    chosen = parts.tune(index, base, 0.95, search, exact)[key]
    rows = np.sort(np.random.default_rng(1).choice(len(base), parts.TUNE_QUERIES, replace=False))
    truth = [set(t) - {r} for t, r in zip(exact(base[rows], 11).tolist(), rows)]

    def measured(value: int) -> float:
        found = search(base[rows], 11, {key: value})
        return float(np.mean([len(set(f) & t) / len(t) for f, t in zip(found.tolist(), truth)]))

    assert measured(chosen) >= 0.95
    smallest = 1 if key == "nprobe" else parts.MIN_EF_SEARCH
    assert chosen == smallest or measured(chosen // 2) < 0.95


def test_an_index_string_alone_searches_near_exactly(tmp_path):
    base, queries = clustered(20_000)
    c = retriever.Collection.create(tmp_path / "c", {"name": "c", "fields": [
        {"name": "pq", "dim": 32, "index": "IVF64,PQ8"}, {"name": "flat", "dim": 32}]})
    c.add([{"id": str(i)} for i in range(len(base))], vectors={"pq": base, "flat": base})
    exact = c.search(queries, 10, fields="flat")
    info = c.info()["fields"]["pq"]
    assert info["rescore"] == 100
    assert info["tuned"] == [{"rows": 20_000, "nprobe": info["tuned"][0]["nprobe"]}]
    assert recall(c.search(queries, 10, fields="pq"), exact) >= 0.9
    untuned = c.search(queries, 10, fields="pq", params={"nprobe": 1, "rescore": 0})  # the old defaults
    assert recall(untuned, exact) < recall(c.search(queries, 10, fields="pq"), exact)


def test_the_config_and_the_request_override_the_tuned_values(tmp_path):
    base, queries = clustered(6000)
    c = retriever.Collection.create(tmp_path / "c", {"name": "c", "fields": [
        {"name": "ivf", "dim": 32, "index": "IVF64,Flat", "target_recall": 1.0},
        {"name": "fixed", "dim": 32, "index": "IVF64,Flat", "search": {"nprobe": 1}, "target_recall": 1.0}]})
    c.add([{"id": str(i)} for i in range(len(base))], vectors={"ivf": base, "fixed": base})
    assert c.info()["fields"]["ivf"]["tuned"][0]["nprobe"] > 1
    one = c.search(queries, 10, fields="ivf", params={"nprobe": 1})
    assert [h.ids for h in c.search(queries, 10, fields="fixed")] == [h.ids for h in one]
    with pytest.raises(retriever.InvalidConfig, match="target_recall"):
        bad = {"name": "c", "fields": [{"name": "d", "dim": 4, "target_recall": 1.5}]}
        retriever.Collection.create(tmp_path / "bad", bad)


def test_tune_stops_where_the_codes_cap_recall_below_the_target():
    base, _ = clustered(10_000)
    index = FaissIndex("IVF64,PQ4", 32, "l2")  # 4 bytes a vector: recall@10 far below 0.95 at any nprobe
    index.train(base)
    index.add(base)
    store = VectorStore([base], 32)

    def search(queries, k, params):
        return parts.search(index, store, queries, k, params, None, 0, "l2")[1]

    def exact(queries, k):
        return reference.exact_search(queries, base, k, "l2")[1]

    chosen = parts.tune(index, base, 0.95, search, exact)["nprobe"]
    rows = np.sort(np.random.default_rng(1).choice(len(base), parts.TUNE_QUERIES, replace=False))
    truth = [set(t) - {r} for t, r in zip(exact(base[rows], 11).tolist(), rows)]

    def measured(value: int) -> float:
        found = search(base[rows], 11, {"nprobe": value})
        return float(np.mean([len(set(f) & t) / len(t) for f, t in zip(found.tolist(), truth)]))

    assert measured(64) < 0.95
    assert chosen < 64  # not every list
    assert measured(chosen) >= measured(64) - 2 * parts.PLATEAU_GAIN * np.log2(64 / chosen)
