"""Multi-vector benchmark: MiniLM token vectors on SciFact, brute-force MaxSim against MUVERA
FDE candidates + exact MaxSim re-ranking (quality, candidate recall, latency), XTR-style token
retrieval on the same field at several k' (`--token-index`), a latency curve on larger synthetic
collections made from SciFact token vectors, and index bytes per document.

Prints one JSON object on stdout (progress on stderr). Searches run on one thread.

    python bench/multivector.py [--scifact ../shared/data/scifact] [--synthetic 10000,30000,100000] [--out result.json]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import emit, latency, log  # noqa: E402

MODEL = "sentence-transformers/all-MiniLM-L6-v2"
SETTINGS = {  # name -> fde settings
    "R20-b5-p16": {"repetitions": 20, "simhash_bits": 5, "projection_dim": 16},
    "R10-b4-p16": {"repetitions": 10, "simhash_bits": 4, "projection_dim": 16},
    "R40-b3-p16": {"repetitions": 40, "simhash_bits": 3, "projection_dim": 16},
    "R40-b5-p16": {"repetitions": 40, "simhash_bits": 5, "projection_dim": 16},
}
DEPTHS = (100, 500, 1000)
TOKEN_KS = (100, 200, 400, 1000)  # k': document tokens each query token retrieves


def token_collection(path: Path, dim: int, fde: dict, token_dtype: str = "float16", **field):
    import retriever

    return retriever.Collection.create(path, {"name": "bench", "max_k": 1000, "max_batch": 100_000, "fields": [
        {"name": "tok", "kind": "multivector", "dim": dim, "fde": fde, "token_dtype": token_dtype, **field}]})


def encode_scifact(scifact: Path, cache: Path | None):
    import torch

    from retriever.corpus import read_jsonl
    from retriever.documents import document_texts, documents_to_table
    from retriever.encoders.multivector import TokenEncoder, TokenSettings
    from retriever.evaluation import load_beir

    docs = read_jsonl(scifact / "corpus.jsonl")
    texts = document_texts(documents_to_table(docs), ("title", "text"))
    queries, qrels = load_beir(scifact, "test")
    qids = list(queries)
    if cache is not None and (cache / "doc_tokens.npy").exists():
        log(f"scifact: token vectors from {cache}")
        split = lambda name: np.split(np.load(cache / f"{name}_tokens.npy"), np.load(cache / f"{name}_offsets.npy")[1:-1])  # noqa: E731
        return docs, split("doc"), qids, split("query"), qrels
    encoder = TokenEncoder(MODEL)
    torch.set_num_threads(os.cpu_count() or 1)  # encoding uses every core; searches below use one
    log(f"scifact: encoding {len(texts)} documents into MiniLM token vectors (max 256 tokens, no [CLS]/[SEP]/punctuation)")
    order = np.argsort([len(t) for t in texts])
    tokens, offsets = encoder.encode([texts[i] for i in order], TokenSettings(256), progress=True)
    clouds = [None] * len(texts)
    for j, i in enumerate(order):
        clouds[i] = tokens[offsets[j] : offsets[j + 1]]
    q_tokens, q_offsets = encoder.encode([queries[q] for q in qids], TokenSettings(32))
    torch.set_num_threads(1)
    query_clouds = [q_tokens[q_offsets[i] : q_offsets[i + 1]] for i in range(len(qids))]
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
        for name, parts in (("doc", clouds), ("query", query_clouds)):
            np.save(cache / f"{name}_tokens.npy", np.concatenate(parts))
            np.save(cache / f"{name}_offsets.npy", np.concatenate([[0], np.cumsum([len(p) for p in parts])]))
    return docs, clouds, qids, query_clouds, qrels


def run_queries(collection, query_clouds, k: int, params: dict) -> tuple[list, list[float]]:
    hits, latencies = [], []
    for cloud in query_clouds:
        start = time.perf_counter()
        hits.extend(collection.search([cloud], k=k, params=params))
        latencies.append(time.perf_counter() - start)
    return hits, latencies


def ndcg(hits, qids, qrels) -> float:
    import ir_measures

    run = {q: dict(zip(h.ids, map(float, h.scores))) for q, h in zip(qids, hits)}
    return round(float(ir_measures.calc_aggregate([ir_measures.nDCG @ 10], qrels, run)[ir_measures.nDCG @ 10]), 4)


def brute_force(clouds: list[np.ndarray], query_clouds: list[np.ndarray], k: int = 10):
    """Exact MaxSim of every query against every document, float32 tokens held in memory (the
    fastest brute force: one matmul and one segmented max per query) -> (rows [Q, k], scores, seconds)."""
    from retriever.kernels.maxsim import maxsim

    tokens = np.concatenate(clouds)
    offsets = np.concatenate([[0], np.cumsum([len(c) for c in clouds])])
    rows, scores, seconds = [], [], []
    for q in query_clouds:
        start = time.perf_counter()
        exact = maxsim(q, tokens, offsets)
        best = np.argsort(-exact, kind="stable")[:k]
        seconds.append(time.perf_counter() - start)
        rows.append(best)
        scores.append(exact[best])
    return rows, scores, seconds


class _Hits:  # the two fields `ndcg` reads
    def __init__(self, ids, scores):
        self.ids, self.scores = ids, scores


def scifact(scifact_dir: Path, work: Path, cache: Path | None, settings: list[str], token_index: str) -> dict:
    docs, clouds, qids, query_clouds, qrels = encode_scifact(scifact_dir, cache)
    dim = clouds[0].shape[1]
    ids = [{"id": d["_id"]} for d in docs]
    tokens_total = sum(len(c) for c in clouds)
    out: dict = {"documents": len(docs), "queries": len(qids), "tokens": tokens_total, "token_dim": dim, "settings": {}}
    log("scifact: brute-force MaxSim, float32 tokens in memory")
    exact_rows, exact_scores, exact_lat = brute_force(clouds, query_clouds)
    out["brute_force_maxsim"] = {
        "nDCG@10": ndcg([_Hits([docs[r]["_id"] for r in rows], s) for rows, s in zip(exact_rows, exact_scores)], qids, qrels),
        "latency": latency(exact_lat), "reference_nDCG@10": "0.707 (0.712 without [CLS]/[SEP]), RESOURCES.md"}
    truth = [set(r.tolist()) for r in exact_rows]
    first = next(iter(SETTINGS.values()))
    c = token_collection(work / "exhaustive", dim, first)
    c.add(ids, vectors={"tok": clouds})
    some = query_clouds[:20]  # our exhaustive path: float16 tokens, a cached tile at a time
    hits, lat = run_queries(c, some, 10, {"exhaustive": 1})
    brute_lat = brute_force(clouds, some)[2]  # the same queries, measured right after
    agree = np.mean([len(set(h.rows.tolist()) & t) / 10 for h, t in zip(hits, truth)])
    out["collection_exhaustive_float16_first20"] = {
        "latency": latency(lat), "brute_force_float32_same_queries": latency(brute_lat),
        "cost_vs_brute_force": round(float(np.median(lat) / np.median(brute_lat)), 3), "target_cost": 1.2,
        "top10_agreement_with_float32": round(float(agree), 4)}
    log("scifact: exhaustive", out["collection_exhaustive_float16_first20"])
    for name, fde in SETTINGS.items():
        if name not in settings:
            continue
        log(f"scifact: FDE {name}")
        c = token_collection(work / name, dim, fde)
        c.add(ids, vectors={"tok": clouds})
        field = c.fields["tok"]
        encoded = field.fde.encode_queries(np.concatenate(query_clouds), np.concatenate([[0], np.cumsum([len(q) for q in query_clouds])]))
        [part] = field.parts  # one add: one segment
        _, found = part.index.search(encoded, max(DEPTHS), {}, None)
        recall = {f"recall@{n}": round(float(np.mean([len(t & set(f[:n].tolist())) / len(t) for t, f in zip(truth, found)])), 4) for n in DEPTHS}
        setting = {"fde": fde, "fde_dim": field.fde.dim, "candidate_recall_of_exact_top10": recall, "bytes_per_document": c.info()["fields"]["tok"]["bytes_per_document"]}
        for rerank in DEPTHS:
            hits, lat = run_queries(c, query_clouds, 10, {"rerank": rerank})
            setting[f"rerank{rerank}"] = {"nDCG@10": ndcg(hits, qids, qrels), "latency": latency(lat)}
        out["settings"][name] = setting
    if token_index:
        out["token_retrieval"] = token_retrieval(work, ids, clouds, query_clouds, qids, qrels,
                                                 out["brute_force_maxsim"], token_index)
    if not out["settings"]:
        return out, clouds, query_clouds
    best = max(out["settings"], key=lambda n: out["settings"][n]["candidate_recall_of_exact_top10"]["recall@100"])
    exact = out["brute_force_maxsim"]
    same_quality = [(n, r) for n, s in out["settings"].items() for r in DEPTHS if abs(s[f"rerank{r}"]["nDCG@10"] - exact["nDCG@10"]) <= 0.005]
    fastest = min(same_quality, key=lambda nr: out["settings"][nr[0]][f"rerank{nr[1]}"]["latency"]["mean_ms"]) if same_quality else None
    out["summary"] = {
        "best_setting_by_recall@100": best,
        "best_recall@100": out["settings"][best]["candidate_recall_of_exact_top10"]["recall@100"],
        "fastest_within_0.005_of_brute_force": (
            {"setting": fastest[0], "rerank": fastest[1], **out["settings"][fastest[0]][f"rerank{fastest[1]}"],
             "speedup_mean_latency": round(exact["latency"]["mean_ms"] / out["settings"][fastest[0]][f"rerank{fastest[1]}"]["latency"]["mean_ms"], 1)}
            if fastest else None),
        "float32_token_bytes_per_document": round(tokens_total * dim * 4 / len(docs), 1),
    }
    return out, clouds, query_clouds


def token_retrieval(work: Path, ids: list, clouds: list, query_clouds: list, qids: list, qrels,
                    exact: dict, factory: str) -> dict:
    """One field with both: FDE candidates + exact MaxSim re-ranking against XTR token retrieval
    (each query token's k' nearest document tokens from a `factory` token index, documents scored
    from those alone, or the best 100 re-scored by exact MaxSim), on the same queries."""
    fde_name = next(iter(SETTINGS))
    c = token_collection(work / "xtr", clouds[0].shape[1], SETTINGS[fde_name], token_index=factory)
    start = time.perf_counter()
    c.add(ids, vectors={"tok": clouds})
    info = c.info()["fields"]["tok"]
    out = {"fde": fde_name, "token_index": factory, "build_s": round(time.perf_counter() - start, 1),
           "token_index_tuned": [p.tokens.tuned for p in c.fields["tok"].parts],
           "bytes_per_document": {
               "fde_index": round(info["bytes_per_document"] - info["token_bytes"] / len(ids), 1),
               "token_index": info["token_index_bytes_per_document"],
               "stored_tokens_for_maxsim": round(info["token_bytes"] / len(ids), 1)},
           "runs": {}}
    runs = {f"fde_rerank{r}": {"rerank": r} for r in (100, 500)}
    runs.update({f"xtr_k{k}": {"xtr": 1, "token_k": k} for k in TOKEN_KS})
    runs.update({f"xtr_k{k}_rescore100": {"xtr": 1, "token_k": k, "rescore": 100} for k in TOKEN_KS[:3]})
    for name, params in runs.items():
        hits, lat = run_queries(c, query_clouds, 10, params)
        out["runs"][name] = {"params": params, "nDCG@10": ndcg(hits, qids, qrels), "latency": latency(lat)}
        log(f"scifact token retrieval: {name} {out['runs'][name]}")
    fde = out["runs"]["fde_rerank100"]
    p50 = {n: r["latency"]["p50_ms"] for n, r in out["runs"].items()}
    matching = [n for n, r in out["runs"].items()
                if n.startswith("xtr") and r["nDCG@10"] >= fde["nDCG@10"] - 0.005]
    fastest = min(matching, key=p50.get) if matching else None

    def speedup(over: dict):
        return round(over["latency"]["p50_ms"] / p50[fastest], 2) if fastest else None

    out["summary"] = {
        "brute_force_nDCG@10": exact["nDCG@10"], "fde_rerank100_nDCG@10": fde["nDCG@10"],
        "fastest_xtr_within_0.005_of_fde_rerank100": fastest,
        "p50_speedup_over_fde_rerank100": speedup(fde), "p50_speedup_over_brute_force": speedup(exact),
    }
    return out


def synthetic_curve(clouds: list[np.ndarray], query_clouds: list[np.ndarray], sizes: list[int], work: Path, seed: int = 0) -> dict:
    """Collections of `sizes` documents, each a SciFact document's tokens with ~half of them swapped
    for tokens of another random document (so no two documents repeat), projected to 64 dims."""
    rng = np.random.default_rng(seed)
    projection, _ = np.linalg.qr(rng.standard_normal((clouds[0].shape[1], 64)))
    projection = projection.astype(np.float32)
    fde = {"repetitions": 10, "simhash_bits": 4, "projection_dim": 8}
    queries = [_unit(q @ projection) for q in query_clouds[:50]]
    out = {"fde": fde, "token_dim": 64, "max_tokens_per_document": 64, "queries": len(queries), "points": []}
    for size in sizes:
        log(f"synthetic: {size} documents")
        base = rng.integers(0, len(clouds), size=size)
        other = rng.integers(0, len(clouds), size=size)
        made = []
        for a, b in zip(base, other):
            mix = np.concatenate([clouds[a][::2], clouds[b][1::2]])[:64]
            made.append(_unit(mix @ projection))
        c = token_collection(work / f"synthetic-{size}", 64, fde)
        for start in range(0, size, 20_000):
            c.add([{"id": str(i)} for i in range(start, min(size, start + 20_000))], vectors={"tok": made[start : start + 20_000]})
        exact_rows, _, exact_lat = brute_force(made, queries)
        point = {"documents": size, "brute_force_float32_in_memory": latency(exact_lat)}
        for rerank in (100, 1000):
            hits, lat = run_queries(c, queries, 10, {"rerank": rerank})
            overlap = np.mean([len(set(h.rows.tolist()) & set(e.tolist())) / 10 for h, e in zip(hits, exact_rows)])
            point[f"fde_rerank{rerank}"] = {**latency(lat), "top10_overlap_with_brute_force": round(float(overlap), 4)}
        out["points"].append(point)
    return out


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scifact", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared" / "data" / "scifact")
    parser.add_argument("--synthetic", default="10000,30000,100000", help="collection sizes for the latency curve ('' to skip)")
    parser.add_argument("--settings", default=",".join(SETTINGS), help="FDE settings to sweep ('' for none)")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--token-index", default="IVF1024,PQ48x4fs",
                        help="faiss factory of the token index XTR retrieval runs on ('' to skip it)")
    parser.add_argument("--cache", type=Path, help="keep SciFact token vectors here between runs (encoding takes minutes)")
    args = parser.parse_args()
    import torch

    result: dict = {"machine": {"cpus": os.cpu_count(), "search_threads": 1, "cuda": torch.cuda.is_available()},
                    "peers": {"fast-plaid / PyLate PLAID": "not run: fast-plaid 1.7.0 wheels require torch==2.11.0 "
                                                          "(compiled against it); this project pins torch 2.13.0 and the "
                                                          "only other torch here is a multi-GB CUDA download"}}
    with tempfile.TemporaryDirectory() as tmp:
        settings = [n for n in args.settings.split(",") if n]
        result["scifact"], clouds, query_clouds = scifact(args.scifact, Path(tmp), args.cache, settings,
                                                                args.token_index)
        sizes = [int(s) for s in args.synthetic.split(",") if s]
        if sizes:
            result["synthetic_latency_curve"] = synthetic_curve(clouds, query_clouds, sizes, Path(tmp))
    emit(result, args.out)


if __name__ == "__main__":
    main()
