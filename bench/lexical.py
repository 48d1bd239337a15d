"""Lexical benchmark: BM25, splade-tiny (model and inference-free queries) and hybrid fusion on
SciFact, and BM25 on a synthetic 1M-document corpus, against bm25s measured in the same run.

Prints one JSON object on stdout (progress on stderr). Everything runs on one thread
(numba, BLAS and torch are pinned to 1 before import).

    python bench/lexical.py [--scifact ../shared/data/scifact] [--synthetic-docs 1000000] [--out result.json]
"""

from __future__ import annotations

import os

for _var in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import REPEATS, emit, interleaved_seconds, log, timed  # noqa: E402

K = 10


def bm25_config(name: str = "bm25") -> dict:
    return {"name": "bench", "max_batch": 100_000, "fields": [{"name": name, "kind": "bm25"}]}


# ---- 1. SciFact BM25 against bm25s -----------------------------------------------------------


def scifact_bm25(scifact: Path, work: Path) -> dict:
    import bm25s
    import Stemmer

    import retriever
    from retriever.corpus import read_jsonl
    from retriever.documents import document_texts, documents_to_table
    from retriever.evaluation import evaluate, load_beir

    docs = read_jsonl(scifact / "corpus.jsonl")
    texts = document_texts(documents_to_table(docs), ("title", "text"))
    queries, qrels = load_beir(scifact, "test")
    qids = list(queries)
    query_texts = [queries[q] for q in qids]

    def build_ours(i=[0]):
        i[0] += 1
        c = retriever.Collection.create(work / f"bm25-{i[0]}", bm25_config())
        c.add(docs)
        return c

    stemmer = Stemmer.Stemmer("english")
    tokenize = lambda qs: bm25s.tokenize(qs, stopwords="en", stemmer=stemmer, show_progress=False)

    def build_bm25s(backend="numpy"):  # numpy is bm25s's default; numba is its fastest
        model = bm25s.BM25(backend=backend)
        model.index(tokenize(texts), show_progress=False)
        return model

    # the two builds take turns, so a slow spell of the machine lands on both
    builds = {"ours": lambda _: build_ours(), "bm25s": lambda _: build_bm25s()}
    index_s = interleaved_seconds(builds, [None], 3)
    ours_index_s, peer_index_s = index_s["ours"], index_s["bm25s"]
    collection, peers = build_ours(), {"bm25s_numpy": build_bm25s(), "bm25s_numba": build_bm25s("numba")}
    quality = evaluate(collection, queries, qrels, progress=False)

    corpus_ids = [d["_id"] for d in docs]
    peer_run = {}
    results, scores = peers["bm25s_numpy"].retrieve(tokenize(query_texts), k=100, show_progress=False, n_threads=1)
    for qid, rows, ss in zip(qids, results, scores):
        peer_run[qid] = {corpus_ids[r]: float(s) for r, s in zip(rows, ss)}
    import ir_measures

    peer_quality = ir_measures.calc_aggregate([ir_measures.nDCG @ 10, ir_measures.R @ 100], qrels, peer_run)

    speed = {}
    for peer in peers.values():
        # warm-up (numba compiles)
        peer.retrieve(tokenize(query_texts[:2]), k=K, show_progress=False, n_threads=1)
    for shape, batches in (("batch_all_queries", [query_texts]), ("one_query_per_call", [[q] for q in query_texts])):
        runs = {"ours": lambda _: [collection.search(b, k=K).ids for b in batches]}
        for name, peer in peers.items():
            runs[name] = lambda _, peer=peer: [
                peer.retrieve(tokenize(b), k=K, show_progress=False, n_threads=1) for b in batches
            ]
        seconds = interleaved_seconds(runs, [None], REPEATS)  # each system once a round, in turn
        ours_s = seconds["ours"]
        speed[shape] = {"ours_qps": round(len(qids) / ours_s, 1)}
        for name in peers:
            peer_s = seconds[name]
            speed[shape][f"{name}_qps"] = round(len(qids) / peer_s, 1)
            speed[shape][f"ratio_ours_over_{name}"] = round(peer_s / ours_s, 3)
    return {
        "ours": quality,
        "bm25s": {"nDCG@10": round(float(peer_quality[ir_measures.nDCG @ 10]), 4), "R@100": round(float(peer_quality[ir_measures.R @ 100]), 4),
                  "settings": 'stopwords="en", PyStemmer english, method lucene, k1=1.2, b=0.75'},
        "qps_k10_text_in": speed,
        "indexing_s": {"ours": round(ours_index_s, 3), "bm25s_numpy": round(peer_index_s, 3), "ratio_ours_over_bm25s": round(ours_index_s / peer_index_s, 3),
                       "note": "ours: tokenize + invert + write Parquet/npy files and commit; bm25s: tokenize + index in memory"},
        "target_nDCG@10": 0.665,
    }


# ---- 2. SciFact splade-tiny and hybrid ------------------------------------------------------------


def scifact_sparse_and_hybrid(scifact: Path, work: Path) -> dict:
    from retriever.build import build
    from retriever.config import CollectionConfig
    from retriever.evaluation import evaluate, load_beir

    config = CollectionConfig.from_dict({"name": "bench", "fields": [
        {"name": "splade", "kind": "sparse", "model": "splade-tiny"},
        {"name": "bm25", "kind": "bm25"},
        {"name": "dense", "model": "sentence-transformers/all-MiniLM-L6-v2"},
    ]})
    import torch

    log("scifact: encoding splade-tiny, BM25 and MiniLM (all cores; queries below run on one thread)")
    torch.set_num_threads(os.cpu_count() or 1)
    start = time.perf_counter()
    collection = build(config, scifact / "corpus.jsonl", work / "scifact-all", progress=True)
    torch.set_num_threads(1)
    queries, qrels = load_beir(scifact, "test")
    out = {"build_s": round(time.perf_counter() - start, 1), "splade_postings": collection.info()["fields"]["splade"]["postings"]}
    out["splade_model_queries"] = evaluate(collection, queries, qrels, fields=["splade"], progress=False)
    out["splade_inference_free_idf"] = evaluate(collection, queries, qrels, fields=["splade"], params={"inference_free": 1}, progress=False)
    out["dense_minilm"] = evaluate(collection, queries, qrels, fields=["dense"], progress=False)
    out["hybrid_dense_bm25_rrf"] = evaluate(collection, queries, qrels, fields=["dense", "bm25"], fusion="rrf", progress=False)
    out["hybrid_dense_bm25_weighted_minmax"] = evaluate(collection, queries, qrels, fields=["dense", "bm25"], fusion="weighted", progress=False)
    out["hybrid_dense_bm25_weighted_zscore"] = evaluate(collection, queries, qrels, fields=["dense", "bm25"], fusion="weighted", normalization="zscore", progress=False)
    out["targets"] = {"splade_model_queries_nDCG@10": 0.64, "hybrid_rrf_nDCG@10": 0.69}
    return out


# ---- 3. Synthetic 1M documents: speed and memory against bm25s, each side in its own process -----


def synthetic_corpus(n_docs: int, work: Path, seed: int = 0) -> tuple[Path, Path]:
    """Zipf-distributed vocabulary (s = 1.07 over 500k made-up words), log-normal lengths
    (median 50 words), and 1000 queries of 2-5 words drawn past the 50 most frequent words."""
    rng = np.random.default_rng(seed)
    vocab_size = 500_000
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    lengths = rng.integers(3, 11, size=vocab_size)
    words = np.array(["".join(letters[rng.integers(0, 26, size=n)]) for n in lengths], dtype=object)
    p = 1.0 / np.arange(1, vocab_size + 1) ** 1.07
    p /= p.sum()
    doc_lengths = np.clip(rng.lognormal(np.log(50), 0.6, size=n_docs).astype(np.int64), 5, 400)
    tokens = rng.choice(vocab_size, size=int(doc_lengths.sum()), p=p)
    ends = np.cumsum(doc_lengths)
    corpus = work / "synthetic.jsonl"
    with open(corpus, "w") as f:
        for i, (lo, hi) in enumerate(zip(ends - doc_lengths, ends)):
            f.write(json.dumps({"_id": str(i), "text": " ".join(words[tokens[lo:hi]])}) + "\n")
    tail = p[50:] / p[50:].sum()
    queries = [" ".join(words[50 + rng.choice(vocab_size - 50, size=rng.integers(2, 6), p=tail)]) for _ in range(1000)]
    query_file = work / "synthetic-queries.json"
    query_file.write_text(json.dumps(queries))
    return corpus, query_file


def _rss_mb() -> dict:
    """Current resident memory and the peak, in MiB."""
    current = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmRSS"))
    return {"rss_mb": round(current / 1024, 1), "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def _read_texts(corpus: Path) -> tuple[list[str], list[str]]:
    ids, texts = [], []
    with open(corpus) as f:
        for line in f:
            doc = json.loads(line)
            ids.append(doc["_id"])
            texts.append(doc["text"])
    return ids, texts


def role(name: str, work: Path) -> dict:
    """One side of the synthetic comparison, run in a fresh process so memory is its own."""
    corpus, queries = work / "synthetic.jsonl", json.loads((work / "synthetic-queries.json").read_text())
    if name == "ours-build":
        import retriever

        ids, texts = _read_texts(corpus)
        start = time.perf_counter()
        c = retriever.Collection.create(work / "ours", bm25_config())
        c.add(({"id": i, "text": t} for i, t in zip(ids, texts)))
        return {"index_s": round(time.perf_counter() - start, 1), **_rss_mb()}
    if name == "bm25s-build":
        import bm25s
        import Stemmer

        ids, texts = _read_texts(corpus)
        start = time.perf_counter()
        model = bm25s.BM25()
        model.index(bm25s.tokenize(texts, stopwords="en", stemmer=Stemmer.Stemmer("english"), show_progress=False), show_progress=False)
        elapsed = time.perf_counter() - start
        model.save(work / "bm25s", corpus=[{"id": i, "text": t} for i, t in zip(ids, texts)])
        return {"index_s": round(elapsed, 1), **_rss_mb()}
    if name == "ours-query":
        import retriever

        c = retriever.Collection.open(work / "ours")
        c.search(queries[:10], k=K)  # compile kernels, compute posting weights
        loaded = _rss_mb()
        seconds = timed(lambda: c.search(queries, k=K), 3)
        return {"qps": round(len(queries) / seconds, 1), "after_load": loaded, "after_queries": _rss_mb()}
    if name in ("bm25s-query", "bm25s-query-with-corpus", "bm25s-query-numba"):
        import bm25s
        import Stemmer

        # index only (what retrieval needs), or with the documents loaded as ours holds them
        model = bm25s.BM25.load(work / "bm25s", load_corpus=name.endswith("corpus"))
        if name.endswith("numba"):
            model.backend = "numba"
        stemmer = Stemmer.Stemmer("english")
        search = lambda qs: model.retrieve(bm25s.tokenize(qs, stopwords="en", stemmer=stemmer, show_progress=False), k=K, show_progress=False, n_threads=1)
        search(queries[:10])
        loaded = _rss_mb()
        seconds = timed(lambda: search(queries), 3)
        return {"qps": round(len(queries) / seconds, 1), "after_load": loaded, "after_queries": _rss_mb()}
    raise SystemExit(f"unknown role {name!r}")


def synthetic_comparison(n_docs: int, work: Path) -> dict:
    log(f"synthetic: writing {n_docs} documents")
    synthetic_corpus(n_docs, work)
    out: dict = {"documents": n_docs, "queries": 1000, "k": K}
    steps = (("ours", "build"), ("bm25s", "build"), ("ours", "query"), ("bm25s", "query"), ("bm25s", "query-numba"), ("bm25s", "query-with-corpus"))
    for side, step in steps:
        log(f"synthetic: {side} {step}")
        done = subprocess.run([sys.executable, __file__, "--role", f"{side}-{step}", "--work", str(work)],
                              check=True, capture_output=True, text=True)
        out.setdefault(side, {})[step] = json.loads(done.stdout)
    out["qps_ratio_ours_over_bm25s_numpy"] = round(out["ours"]["query"]["qps"] / out["bm25s"]["query"]["qps"], 3)
    out["qps_ratio_ours_over_bm25s_numba"] = round(out["ours"]["query"]["qps"] / out["bm25s"]["query-numba"]["qps"], 3)
    ours_rss = out["ours"]["query"]["after_queries"]["rss_mb"]
    out["rss_ratio_ours_over_bm25s_index_only"] = round(ours_rss / out["bm25s"]["query"]["after_queries"]["rss_mb"], 3)
    out["rss_ratio_ours_over_bm25s_with_corpus"] = round(ours_rss / out["bm25s"]["query-with-corpus"]["after_queries"]["rss_mb"], 3)
    out["note"] = ("ours holds the documents (ids, text) in memory to return them with hits, plus faiss/pyarrow/numba "
                   "imports; bm25s index-only holds no documents")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scifact", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared" / "data" / "scifact")
    parser.add_argument("--synthetic-docs", type=int, default=1_000_000)
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: bm25, sparse, synthetic")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--role", help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role:
        print(json.dumps(role(args.role, args.work)))
        return
    skip = set(args.skip.split(","))
    result: dict = {"machine": {"cpus": os.cpu_count(), "threads": 1}}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if "bm25" not in skip:
            result["scifact_bm25"] = scifact_bm25(args.scifact, work)
        if "sparse" not in skip:
            result["scifact_sparse_hybrid"] = scifact_sparse_and_hybrid(args.scifact, work)
        if "synthetic" not in skip and args.synthetic_docs > 0:
            result["synthetic"] = synthetic_comparison(args.synthetic_docs, work)
    emit(result, args.out)


if __name__ == "__main__":
    main()
