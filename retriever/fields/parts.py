"""One segment's vector index, for the kinds that keep float vectors (dense, and the multi-vector
kind's encodings): the configured faiss index trained on the segment's own vectors, Flat while a
segment is too small to train one, SPANN (posting lists on disk) once it is large enough.
Segments grow by merging, so a collection's big segments get the configured index."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from retriever.index import disk, jpq, storage
from retriever.index.faiss_index import FaissIndex
from retriever.index.flat import FlatVectors
from retriever.index.spann import SpannIndex
from retriever.index.vectors import VectorStore
from retriever.kernels import cpu

from .spann import SpannVectors, is_spann, spann_params

MIN_TRAINED_ROWS = 1024  # below this a segment is searched exactly (Flat), whatever the config says
SPANN_MIN_ROWS = 1024  # below this a SPANN field's segment is searched exactly
TUNE_QUERIES = 200  # a segment's own vectors searched to choose its nprobe / efSearch
TUNE_K = 10
MIN_EF_SEARCH = 64  # HNSW breadth tried first: a segment's own vectors find each other at faiss's 16
MAX_EF_SEARCH = 4096
PLATEAU_GAIN = 0.005  # a doubling that gains less recall than this: the codes, not the probes, bind


def train_floor(factory: str) -> int:
    """Rows a segment needs before `factory` is trained on it (faiss wants ~39 per IVF list)."""
    if is_spann(factory):
        return SPANN_MIN_ROWS
    ivf = re.search(r"IVF(\d+)", factory.upper())
    pq = re.search(r"PQ\d+", factory.upper())
    return max(MIN_TRAINED_ROWS, 39 * int(ivf[1]) if ivf else 0, 256 if pq else 0)


def build(
    path: Path,
    prefix: str,
    factory: str,
    vectors: np.ndarray,
    metric: str,
    train_size: int,
    stored: bool = False,
    target_recall: float | None = None,
    rescore: int = 0,
    ranking: jpq.RankingSet | None = None,
) -> tuple[dict[str, Any], dict[str, Any], FaissIndex | FlatVectors | SpannVectors]:
    """Index a segment's vectors [N, D] -> (its entry, {file: size and checksum}, the index).
    `stored`: `vectors` is the segment's own vectors file, which is then a Flat index as it is.
    With a `target_recall`, an IVF or HNSW index's nprobe / efSearch is chosen here (`tune`) and
    kept in the entry's `search`. With a `ranking` set, a PQ index's centroids are then trained
    on it (`jpq.train`), and the entry's `pq_training` says how that went."""
    dim = vectors.shape[1]
    if is_spann(factory) and len(vectors) >= SPANN_MIN_ROWS:
        directory = Path(path) / f"{prefix}.spann"
        disk.rmtree(directory)  # debris of a writer that died before its manifest named it
        index = SpannIndex.build(vectors, directory, spann_params(factory, metric), progress=False)
        entry = {
            "spann": {
                "dir": directory.name,
                "rows": index.rows,
                "manifest_sha256": storage.sha256_file(directory / "spann.json"),
            },
            "index": None,
        }
        return entry, {}, SpannVectors(index, VectorStore([vectors], dim), metric)
    used = factory if not is_spann(factory) and len(vectors) >= train_floor(factory) else "Flat"
    if used == "Flat" and stored:
        index = FlatVectors(vectors, metric)
        index.use_gpu()
        return {"index": None, "factory": "Flat"}, {}, index
    index = FaissIndex(used, dim, metric)
    if not index.cpu_index.is_trained:
        index.train(training_sample(vectors, train_size))
    index.add(vectors)
    trained = None
    if ranking is not None and jpq.supports(index.cpu_index):  # before writing: the file holds them
        trained = dataclasses.asdict(jpq.train(index, vectors, ranking))
    name = f"{prefix}.index.faiss"
    files = {name: storage.write_new_file(path, name, index.to_bytes())}
    entry: dict[str, Any] = {"index": name, "factory": used}
    if trained is not None:
        entry["pq_training"] = trained
    if target_recall is not None:
        store = VectorStore([vectors], dim)
        entry["search"] = tune(
            index, vectors, target_recall,
            lambda queries, k, params: search(index, store, queries, k, params, None, rescore, metric)[1],
            lambda queries, k: cpu.flat_top_k(queries, vectors, k, metric)[1],
        )
    index.use_gpu()
    return entry, files, index


def tune(
    index: FaissIndex,
    vectors: np.ndarray,
    target: float,
    found_rows: Callable[[np.ndarray, int, dict[str, int]], np.ndarray],
    exact_rows: Callable[[np.ndarray, int], np.ndarray],
) -> dict[str, int]:
    """The smallest nprobe (IVF) or efSearch (HNSW), doubling, whose recall@10 against exact
    search reaches `target` -> {"nprobe": n} or {} for other indexes. Where compressed codes cap
    recall below the target (PQ without re-scoring), doubling stops once it gains less than
    PLATEAU_GAIN: probing every list would buy nothing but time. `found_rows(queries, k,
    params)` is the field's search of this segment (its re-scoring included), `exact_rows(queries,
    k)` exact search; the queries are a sample of the segment's own `vectors` (or codes), each
    one's own row left out of both answers, or every query would find itself."""
    if index.ivf is not None:
        key, value, limit = "nprobe", 1, int(index.ivf.nlist)
    elif index.hnsw is not None:  # real queries lie further from the graph than its own vectors
        key, value, limit = "efSearch", MIN_EF_SEARCH, MAX_EF_SEARCH
    else:
        return {}
    rng = np.random.default_rng(1)
    rows = np.sort(rng.choice(len(vectors), min(TUNE_QUERIES, len(vectors)), replace=False))
    queries, k = np.ascontiguousarray(vectors[rows]), TUNE_K + 1
    # a query's own row counts for neither answer
    truth = [set(t) - {r} for t, r in zip(exact_rows(queries, k).tolist(), rows.tolist())]
    previous = -1.0
    while True:
        found = found_rows(queries, k, {key: value})
        hits = float(np.mean([len(set(f) & t) / max(1, len(t)) for f, t in zip(found.tolist(), truth)]))
        if value >= limit or hits >= target or hits - previous < PLATEAU_GAIN:
            return {key: min(value, limit)}
        value, previous = value * 2, hits


def open_index(
    path: Path, entry: Mapping[str, Any], files: dict[str, Any], vectors: VectorStore, metric: str
):
    """A segment's index, after its files' checksums matched."""
    if entry.get("spann"):
        return SpannVectors.open(path, entry, vectors, metric)
    if entry["index"] is None:  # Flat over the stored vectors
        index = FlatVectors(vectors.segments[0], metric)
        index.use_gpu()
        return index
    data = storage.read_verified(path, entry["index"], files[entry["index"]])
    index = FaissIndex.from_bytes(data, entry["factory"], vectors.dim, metric)
    index.use_gpu()
    return index


def search(
    index,
    vectors: VectorStore,
    queries: np.ndarray,
    k: int,
    params: Mapping[str, int],
    allowed: np.ndarray | None,
    rescore: int,
    metric: str,
) -> tuple[np.ndarray, np.ndarray]:
    """One segment: queries [B, D] -> (scores [B, k], local rows [B, k]); the best `rescore`
    candidates of an approximate index are re-scored exactly with the stored vectors."""
    if rescore == 0 or index.exact:
        return index.search(queries, k, params, allowed)
    scores, rows = index.search(queries, max(k, rescore), params, allowed)
    exact = cpu.rescore(queries, vectors.gather(rows), rows >= 0, metric)  # [B, C]
    return cpu.top_k_rows(exact, rows, k)


def training_sample(vectors: np.ndarray, size: int, seed: int = 0) -> np.ndarray:
    """At most `size` rows drawn without replacement (seeded, so builds are reproducible)."""
    if len(vectors) <= size:
        return vectors
    rows = np.sort(np.random.default_rng(seed).choice(len(vectors), size=size, replace=False))
    return vectors[rows]
