"""Scale-out on Ray: build documents/s with 1 and 2 Ray Data workers against `retriever build`
alone, and a 3-shard collection's search latency (in-process router, Ray Serve router) against
the unsharded collection holding the same documents, with recall@10 of the merged answers
against the unsharded exact ones. Everything on this machine, in one run.

    python bench/ray.py [--data ../shared/data/scifact] [--docs 2000] [--queries 200] [--out FILE]

Prints one JSON object on stdout (progress on stderr); the per-stage costs it reports feed the
scaling model in docs/scale-out.md.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

import sys  # noqa: E402

# this file is named ray.py: its folder goes last on the path, so `import ray` finds Ray
HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE] + [str(HERE)]
from common import emit, latency, log, timed  # noqa: E402

import retriever  # noqa: E402
from retriever import cluster  # noqa: E402
from retriever.build import build  # noqa: E402
from retriever.config import CollectionConfig  # noqa: E402

CONFIG = Path(__file__).resolve().parents[1] / "examples" / "hybrid.toml"  # MiniLM dense + BM25
SEARCHES = {
    "dense": {"fields": "dense"},
    "bm25": {"fields": "bm25"},
    "dense+bm25 rrf": {"fields": ["dense", "bm25"], "fusion": "rrf"},
}
K = 10


def subset(corpus: Path, count: int, out: Path) -> Path:
    with open(corpus) as source, open(out, "w") as target:
        for line in itertools.islice(source, count):
            target.write(line)
    return out


def measure_builds(config, corpus: Path, scratch: Path, shards: int) -> tuple[dict, Path, Path]:
    from retriever.cluster import ray_build, ray_serve

    out = {}
    start = time.perf_counter()
    whole = build(config, corpus, scratch / "whole", progress=False)
    seconds = time.perf_counter() - start
    out["retriever_build"] = {"seconds": round(seconds, 2), "docs_per_s": round(len(whole) / seconds, 1)}
    log("build alone", out["retriever_build"])
    start = time.perf_counter()
    ray_serve.start(num_cpus=os.cpu_count())
    out["ray_start_seconds"] = round(time.perf_counter() - start, 2)
    for workers in (1, 2):
        target = scratch / f"sharded-{workers}"
        start = time.perf_counter()
        manifest = ray_build.build(config, corpus, target, shards=shards, workers=workers)
        seconds = time.perf_counter() - start
        out[f"ray_build_{workers}_workers"] = {
            "seconds": round(seconds, 2),
            "docs_per_s": round(manifest.documents / seconds, 1),
            "shards": shards,
        }
        log(f"ray build, {workers} workers", out[f"ray_build_{workers}_workers"])
    return out, scratch / "whole", scratch / "sharded-2"


def measure_search(whole_path: Path, sharded: Path, texts: list[str], rounds: int) -> dict:
    """Each query alone, interleaved: unsharded, local router, Ray Serve router."""
    from retriever.cluster import ray_serve

    whole = retriever.Collection.open(whole_path)
    local = cluster.open_local(sharded)
    served = ray_serve.deploy(sharded, cpus=0)
    shard = local.shards.shards[0]  # one shard alone: the work each shard does per query
    out = {}
    for name, how in SEARCHES.items():
        ways = {
            "unsharded": whole.search,
            "router_in_process": local.search,
            "router_on_ray_serve": served.search,
        }
        for search in ways.values():  # warm: models loaded, postings weighted
            search(texts[:2], k=K, **how)
        times = {way: [] for way in ways}
        recall = {way: [] for way in ways if way != "unsharded"}
        shard_times = []
        for _ in range(rounds):
            for text in texts:
                answers = {}
                for way, search in ways.items():
                    start = time.perf_counter()
                    answers[way] = search([text], k=K, **how)[0]
                    times[way].append(time.perf_counter() - start)
                exact = set(answers["unsharded"].ids)
                for way in recall:
                    recall[way].append(len(exact & set(answers[way].ids)) / max(1, len(exact)))
        for text in texts:
            start = time.perf_counter()
            shard.collection.search([text], k=K, **how)
            shard_times.append(time.perf_counter() - start)
        out[name] = {way: latency(t) for way, t in times.items()}
        out[name]["one_shard_alone"] = latency(shard_times)
        out[name]["recall@10_vs_unsharded"] = {way: round(float(np.mean(r)), 4) for way, r in recall.items()}
        for way in ("router_in_process", "router_on_ray_serve"):
            out[name][f"{way}_over_unsharded_p50"] = round(
                out[name][way]["p50_ms"] / out[name]["unsharded"]["p50_ms"], 2
            )
        log(name, json.dumps(out[name]))
    local.close()
    ray_serve.undeploy(served.name)
    return out


def measure_merge(shard_counts=(3, 10, 30, 100), repeats: int = 50) -> dict:
    """The router's own work per query, for S shards: merging S answers (two fields' top 100
    each, as an RRF search of two fields asks) into the collection's top 10. Synthetic answers:
    this is the CPU a router replica spends per query whatever the shards' sizes."""
    from retriever.cluster.router import _Merged
    from retriever.cluster.shard import ShardAnswer
    from retriever.pipeline import Fuse, Pipeline, Prefetch
    from retriever import pipeline as pipeline_module

    plan = Pipeline((Prefetch("dense", 100), Prefetch("bm25", 100)), Fuse("rrf"))
    rng = np.random.default_rng(0)
    out = {}
    for count in shard_counts:
        answers = {}
        for s in range(count):
            width = 150  # the union of two top-100 lists that overlap a little
            found = {
                name: (
                    np.sort(rng.random((1, 100)).astype(np.float32))[:, ::-1],
                    rng.permutation(width)[None, :100],
                )
                for name in ("dense", "bm25")
            }
            answers[s] = ShardAnswer([[f"s{s}-{i}" for i in range(width)]], found, {}, [None], width)

        def merge():
            merged = _Merged(answers)
            scores, keys, _ = pipeline_module.run(
                merged.score, plan, plan.fusion_spec(), merged.found(plan), K
            )
            merged.ids_of(keys)

        out[f"{count}_shards_ms"] = round(1000 * timed(merge, repeats), 3)
    log("router merge", out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" / "scifact"
    )
    parser.add_argument("--docs", type=int, default=2000)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--shards", type=int, default=3)
    parser.add_argument("--parts", default="build,search,merge")
    parser.add_argument("--keep", type=Path, help="build here, and search what an earlier run built here")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    config = CollectionConfig.from_toml(CONFIG)
    texts = [
        json.loads(line)["text"] for line in itertools.islice(open(args.data / "queries.jsonl"), args.queries)
    ]
    result = {
        "machine": f"{os.cpu_count()} CPUs, no GPU",
        "corpus": f"{args.data.name}, first {args.docs} documents",
        "config": CONFIG.name,
        "queries": len(texts),
    }
    if parts & {"build", "search"}:
        from retriever.cluster import ray_serve

        with tempfile.TemporaryDirectory() as scratch:
            scratch = args.keep or Path(scratch)
            whole, sharded = scratch / "whole", scratch / "sharded-2"
            if "build" in parts:
                corpus = subset(args.data / "corpus.jsonl", args.docs, scratch / "corpus.jsonl")
                result["build"], whole, sharded = measure_builds(config, corpus, scratch, args.shards)
            if "search" in parts:
                ray_serve.start(num_cpus=os.cpu_count())
                result["search"] = measure_search(whole, sharded, texts, args.rounds)
        import ray

        ray.shutdown()
    if "merge" in parts:
        result["router_merge_per_query"] = measure_merge()
    emit(result, args.out)


if __name__ == "__main__":
    main()
