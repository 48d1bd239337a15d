"""Quality of each field alone and of query pipelines on three judged sets (SciFact test, Paul
Graham essays, business reports): nDCG@10 and R@100 (ir-measures), p50 latency, and each
pipeline's margin over the best single field of its set.

Fields: MiniLM (dense), BM25, splade-tiny (sparse) and MiniLM token vectors (multivector: FDE
candidates re-ranked by exact MaxSim). Pipelines: the built-in `hybrid` (no labels), a few fixed
shapes, and `tuned` by `retriever tune`: on the train split where a set has one (then scored on
test), else 2-fold cross-validated on the test queries (held-out figures). Prints one JSON object
on stdout (progress on stderr).

    python bench/quality.py [--data ../shared/data] [--sets scifact,pg,business-reports]
                            [--keep DIR] [--out r.json]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import log, over_judged_sets  # noqa: E402

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
FIELDS = [
    {"name": "dense", "model": MINILM},
    {"name": "bm25", "kind": "bm25"},
    {"name": "splade", "kind": "sparse", "model": "splade-tiny"},
    {"name": "tokens", "kind": "multivector", "model": MINILM, "rerank": 500,
     "fde": {"repetitions": 20, "simhash_bits": 5, "projection_dim": 16}},
]
DEPTH = 100  # candidates each prefetch gives, and the ranked list scored (R@100)
TIMED_QUERIES = 60  # latency: the first queries of the set, one a call ...
ROUNDS = 3  # ... in rounds over every field and pipeline in turn; the median round's p50 counts


def prefetch(*names: str) -> list[dict]:
    return [{"field": n, "k": DEPTH} for n in names]


PIPELINES = {
    "hybrid": "hybrid",  # built in: every field, complete weighted fusion
    "rrf dense+bm25": {"prefetch": prefetch("dense", "bm25")},
    "weighted dense+bm25": {"prefetch": prefetch("dense", "bm25"), "fuse": {"method": "weighted"}},
    "rrf all four": {"prefetch": prefetch("dense", "bm25", "splade", "tokens")},
    "weighted all four": {"prefetch": prefetch("dense", "bm25", "splade", "tokens"),
                          "fuse": {"method": "weighted"}},
    "dense+bm25+splade, re-ranked by MaxSim": {"prefetch": prefetch("dense", "bm25", "splade"),
                                                "rerank": [{"field": "tokens"}]},
    "bm25+splade, re-ranked by dense": {"prefetch": prefetch("bm25", "splade"),
                                        "rerank": [{"field": "dense"}]},
    "complete weighted all four": {"prefetch": prefetch("dense", "bm25", "splade", "tokens"),
                                   "fuse": {"method": "weighted", "complete": True}},
    "complete weighted dense+bm25": {"prefetch": prefetch("dense", "bm25"),
                                     "fuse": {"method": "weighted", "complete": True}},
}


def measure(data: Path, work: Path) -> dict:
    import retriever
    from retriever.evaluation import evaluate, load_beir

    try:
        queries, qrels = load_beir(data, "test")
    except retriever.InvalidRequest as e:  # pg ships its queries without judgments
        log(f"{data.name}: skipped: {e}")
        return {"skipped": str(e)}
    collection, build_s = built(data, work / data.name)
    out: dict = {"documents": len(collection), "queries": len(queries), "build_s": build_s}

    def scored(**how) -> dict:
        result = evaluate(collection, queries, qrels, depth=DEPTH, progress=False, **how)
        return {"nDCG@10": round(result["nDCG@10"], 4), "R@100": round(result["R@100"], 4)}

    out["fields"] = {f["name"]: scored(fields=[f["name"]]) for f in FIELDS}
    best_name = max(out["fields"], key=lambda n: out["fields"][n]["nDCG@10"])
    best = out["fields"][best_name]["nDCG@10"]
    out["best_field"] = {"name": best_name, "nDCG@10": best}
    out["pipelines"] = {}
    for name, pipeline in PIPELINES.items():
        result = scored(pipeline=pipeline)
        result["over_best_field"] = round(result["nDCG@10"] - best, 4)
        out["pipelines"][name] = result
        log(f"{data.name}: {name}: {result['nDCG@10']} ({result['over_best_field']:+.4f} over {best_name})")
    out["tuned"] = tuned(data, collection, queries, qrels, scored, best)
    timed(collection, list(queries.values())[:TIMED_QUERIES], out)
    return out


def timed(collection, texts: list[str], out: dict) -> None:
    """p50 ms of one query a call (encoding included) of every field and pipeline, measured in
    interleaved rounds so that a pipeline and its stages meet the same state of the process and
    the machine; each pipeline's p50 over its slowest stage's (a field it reads, alone)."""
    import statistics

    configs = {("fields", f["name"]): {"fields": f["name"]} for f in FIELDS}
    configs.update({("pipelines", n): {"pipeline": p} for n, p in PIPELINES.items()})
    configs[("tuned", "test")] = {"pipeline": "tuned"}
    rounds: dict = {key: [] for key in configs}
    for _ in range(ROUNDS):
        for key, how in configs.items():
            collection.search(texts[0], k=DEPTH, **how)  # warm-up
            times = []
            for text in texts:
                start = time.perf_counter()
                collection.search(text, k=DEPTH, **how)
                times.append(time.perf_counter() - start)
            rounds[key].append(statistics.median(times) * 1000)
    for (group, name), p50s in rounds.items():
        if name in out[group]:
            out[group][name]["p50_ms"] = round(statistics.median(p50s), 2)
            out[group][name]["p50_ms_rounds"] = [round(p, 2) for p in p50s]
    for name, result in [*out["pipelines"].items(), *([("tuned", out["tuned"]["test"])]
                                                     if "test" in out["tuned"] else [])]:
        how = PIPELINES.get(name, "tuned")
        slowest = max(out["fields"][f]["p50_ms"] for f in collection.pipeline_fields(how))
        result["p50_over_slowest_stage"] = round(result["p50_ms"] / slowest, 2)


def built(data: Path, path: Path):
    """The set's collection at `path`, built unless it is there -> (collection, build seconds)."""
    import retriever
    from retriever.corpus import read_jsonl

    if path.exists():
        log(f"{data.name}: reusing {path}")
        return retriever.Collection.open(path), None
    log(f"{data.name}: building")
    start = time.perf_counter()
    config = {"name": data.name.replace("-", "_"), "max_candidates": 10**7, "fields": FIELDS}
    collection = retriever.Collection.create(path, config)
    collection.add(read_jsonl(data / "corpus.jsonl"), progress=True)
    collection.optimize()  # one segment: every field's configured index, searched as deployed
    return collection, round(time.perf_counter() - start, 1)


def tuned(data: Path, collection, test_queries, test_qrels, scored, best: float) -> dict:
    """`retriever tune` on the train split, scored on test; without one, 2-fold cross-validation on
    the test queries (the held-out figure is the one to quote)."""
    from retriever.evaluation import load_beir
    from retriever.tuning import tune

    split = "train" if (data / "qrels" / "train.tsv").exists() else "test"
    queries, qrels = (load_beir(data, "train") if split == "train" else (test_queries, test_qrels))
    start = time.perf_counter()
    result = tune(collection, queries, qrels, folds=2)
    result["tuned_on"] = split
    result["tune_s"] = round(time.perf_counter() - start, 1)
    collection.save_pipeline("tuned", result["pipeline"])
    if split == "train":
        result["test"] = scored(pipeline="tuned")
        result["test"]["over_best_field"] = round(result["test"]["nDCG@10"] - best, 4)
        log(f"{data.name}: tuned on train: test {result['test']['nDCG@10']} "
            f"({result['test']['over_best_field']:+.4f} over the best field)")
    else:
        log(f"{data.name}: tuned, 2-fold held out: {result['held_out']['nDCG@10']} "
            f"({result['held_out']['gain_over_best_field']:+.4f} over the best field)")
    return result


def main() -> None:
    result = {"depth": DEPTH, "fields": FIELDS, "pipelines": PIPELINES}
    over_judged_sets(__doc__, measure, "scifact,pg,business-reports", result)


if __name__ == "__main__":
    main()
