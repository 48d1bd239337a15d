"""Bench JSON -> PNG figures under docs/img/, one trade-off per figure, for docs/benchmarks.md.

    python bench/plot.py [--results bench/results] [--out docs/img]

Each figure reads one results file (a file that is missing is skipped and said so): IVF-PQ
sweeps (recall@10 against queries/s), SPANN and its peers (recall@10 against latency, and
memory), gRPC serving (latency percentiles against clients), scale-out on Ray (latency of a
sharded search against the unsharded one), multi-vector and binary trade-offs, BM25 against
bm25s, commit latency as a collection grows, RAG time to first token, retrieval quality per
pipeline, XTR token retrieval against FDE, and ranking-trained PQ against k-means codebooks. A
new figure is one function and one line in `FIGURES`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]


def ivfpq_sweeps(results: dict[str, Any], plt) -> Any:
    """Dense IVF-PQ sweeps: recall@10 against queries/s (batch 100), with re-scoring or not."""
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, title in (
        (axes[0], "scifact_ivfpq", "SciFact MiniLM (5,183 x 384)"),
        (axes[1], "glove_ivfpq", "GloVe 400k x 50"),
    ):
        sweep = results[key]["sweep"]
        for rescored, marker in ((False, "o"), (True, "^")):
            points = [p for p in sweep if bool(p["rescore"]) == rescored]
            ax.scatter(
                [p["qps_batch100"] for p in points],
                [p["recall@10"] for p in points],
                marker=marker,
                label="re-scored with float vectors" if rescored else "codes only",
            )
        ax.axhline(results[key]["target_recall@10"], color="grey", linestyle="--", linewidth=1)
        ax.set(xscale="log", xlabel="queries/s (batch 100, 2 cores)", ylabel="recall@10", title=title)
        ax.legend(loc="lower left")
    return figure


def spann_tradeoffs(results: dict[str, Any], plt) -> Any:
    """SPANN and its peers on GloVe-400k: recall@10 against p50 latency; resident memory."""
    systems = results["glove_400k"]["systems"]
    figure, (curve, memory) = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [3, 2]})
    for name, system in systems.items():
        points = sorted(system["warm"]["points"], key=lambda p: p["p50_ms"])
        curve.plot([p["p50_ms"] for p in points], [p["recall@10"] for p in points], marker="o", label=name)
    curve.axhline(
        results["glove_400k"]["summary"]["target_recall"], color="grey", linestyle="--", linewidth=1
    )
    curve.set(
        xscale="log",
        xlabel="p50 latency per query (ms, warm)",
        ylabel="recall@10",
        title="GloVe 400k x 50: recall against latency",
    )
    curve.legend(loc="lower right")
    names = list(systems)
    memory.barh(names, [100 * systems[n]["resident_share_of_raw"] for n in names])
    memory.set(xlabel="resident memory, % of the raw float32 vectors", title="memory")
    return figure


def serve_latency(results: dict[str, Any], plt) -> Any:
    """gRPC against in-process: latency percentiles as clients grow, for 1 and 100 queries a call."""
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, batch in zip(axes, (1, 100)):
        rows = [r for r in results["search"] if r["queries_per_request"] == batch]
        clients = [r["clients"] for r in rows]
        for way, color in (("in_process", "tab:blue"), ("grpc", "tab:orange")):
            for percentile, style in (("p50", "-"), ("p99", ":")):
                ax.plot(
                    clients,
                    [r[way]["latency_ms"][percentile] for r in rows],
                    style,
                    color=color,
                    marker="o",
                    label=f"{way.replace('_', ' ')} {percentile}",
                )
        ax.set(
            xscale="log",
            yscale="log",
            xlabel="concurrent clients",
            ylabel="latency per request (ms)",
            title=f"{batch} quer{'y' if batch == 1 else 'ies'} per request ({results['index']})",
        )
        ax.legend()
    return figure


def ray_latency(results: dict[str, Any], plt) -> Any:
    """A 3-shard search against the unsharded collection: p50 and p99 per way and search."""
    import numpy as np

    searches = list(results["search"])
    ways = ("unsharded", "router_in_process", "router_on_ray_serve")
    figure, ax = plt.subplots(figsize=(9, 4.2))
    width = 0.8 / len(ways)
    for i, way in enumerate(ways):
        x = np.arange(len(searches)) + i * width
        ax.bar(x, [results["search"][s][way]["p50_ms"] for s in searches], width, label=f"{way} p50")
        ax.scatter(
            x, [results["search"][s][way]["p99_ms"] for s in searches], color="black", marker="_", s=200
        )
    ax.set_xticks(np.arange(len(searches)) + width, searches)
    ax.set(
        yscale="log",
        ylabel="latency per query (ms; bars p50, dashes p99)",
        title=f"3 shards against one collection ({results['corpus']}, {results['machine']})",
    )
    ax.legend()
    return figure


def multivector_curve(results: dict[str, Any], plt) -> Any:
    """Multi-vector search latency against collection size: brute-force MaxSim against FDE
    candidates re-ranked by exact MaxSim (with their top-10 overlap)."""
    curve = results["synthetic_latency_curve"]
    sizes = [p["documents"] for p in curve["points"]]
    figure, ax = plt.subplots(figsize=(8, 4.2))
    ways = [w for w in curve["points"][0] if w != "documents"]
    for way in ways:
        overlap = curve["points"][-1][way].get("top10_overlap_with_brute_force")
        label = way if overlap is None else f"{way} (top-10 overlap {overlap:.2f} at {sizes[-1]:,})"
        ax.plot(sizes, [p[way]["p50_ms"] for p in curve["points"]], marker="o", label=label)
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="documents",
        ylabel="p50 latency per query (ms)",
        title=f"MaxSim: brute force against FDE + re-ranking ({curve['token_dim']}-d tokens)",
    )
    ax.legend()
    return figure


def token_retrieval(results: dict[str, Any], plt) -> Any:
    """SciFact, one multi-vector field: nDCG@10 against p50 latency for FDE candidates + MaxSim
    and XTR token retrieval at each k' (alone, and with the best 100 re-scored)."""
    runs = results["scifact"]["token_retrieval"]["runs"]
    figure, ax = plt.subplots(figsize=(8, 4.2))
    groups = {"FDE + exact MaxSim re-ranking": lambda n: n.startswith("fde"),
              "XTR, token scores alone": lambda n: n.startswith("xtr") and "rescore" not in n,
              "XTR, best 100 re-scored by MaxSim": lambda n: "rescore" in n}
    for label, member in groups.items():
        names = sorted((n for n in runs if member(n)), key=lambda n: runs[n]["latency"]["p50_ms"])
        ax.plot([runs[n]["latency"]["p50_ms"] for n in names], [runs[n]["nDCG@10"] for n in names],
                marker="o", label=label)
        for n in names:
            ax.annotate(n.split("_")[1], (runs[n]["latency"]["p50_ms"], runs[n]["nDCG@10"]), fontsize=7)
    ax.axhline(results["scifact"]["brute_force_maxsim"]["nDCG@10"], color="grey", linestyle="--",
               linewidth=1, label="brute-force MaxSim")
    ax.set(xscale="log", xlabel="p50 latency per query (ms, one thread)", ylabel="nDCG@10",
           title="SciFact multi-vector: token retrieval against FDE + MaxSim")
    ax.legend(fontsize=8)
    return figure


def ranking_trained_pq(results: dict[str, Any], plt) -> Any:
    """SciFact PQ codes alone: nDCG@10 with k-means codebooks and ranking-trained ones (each way
    of holding out), on all test queries and on those about documents training never saw judged."""
    study = results["scifact_ranking_trained_pq"]
    indexes = list(study["indexes"])
    ways = {"k-means": lambda r: r["k_means"],
            "trained, hold out documents": lambda r: r["hold_out_documents"]["nDCG@10"],
            "trained, hold out queries": lambda r: r["hold_out_queries"]["nDCG@10"]}
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, subset, title in ((axes[0], "test", "all 300 test queries"),
                              (axes[1], "test_unseen_documents", "104 about documents train never judged")):
        for i, (label, value) in enumerate(ways.items()):
            ax.bar([x + 0.27 * i for x in range(len(indexes))],
                   [value(study["indexes"][n])[subset] for n in indexes], width=0.27, label=label)
        ax.axhline(study["flat_nDCG@10"][subset], color="grey", linestyle="--", linewidth=1,
                   label="float Flat")
        ax.set_xticks([x + 0.27 for x in range(len(indexes))],
                      [f"{n}\n{study['indexes'][n]['bytes_per_vector']} B" for n in indexes], fontsize=8)
        ax.set(title=f"SciFact, {title}", ylabel="nDCG@10")
    axes[0].legend(fontsize=8, loc="lower left")
    return figure


def binary_codes(results: dict[str, Any], plt) -> Any:
    """Binary codes on GloVe-400k: recall@10 (no re-scoring) against bytes per vector, per
    binarizer and scoring."""
    recalls = results["glove_400k"]["recall@10_vs_float_exact"]
    figure, ax = plt.subplots(figsize=(8, 4.2))
    for method in ("sign", "itq", "recurrent"):
        for scoring, style in (("sdc", "-"), ("asymmetric", "--")):
            points = sorted(
                (v["bytes"], v[scoring]) for k, v in recalls.items() if k.startswith(f"{method}-")
            )
            ax.plot(*zip(*points), style, marker="o", label=f"{method}, {scoring}")
    ax.set(
        xlabel="bytes per vector (GloVe 50-d: 200 as float32)",
        ylabel="recall@10, codes only",
        title="Binary codes on GloVe 400k: recall against size (codes only, not re-scored)",
    )
    ax.legend(fontsize=8)
    return figure


def lexical_speed(results: dict[str, Any], plt) -> Any:
    """BM25 queries/s against bm25s (numpy and numba backends): SciFact with all queries in one
    call and one query per call, and the 1M-document synthetic set."""
    speed = results["scifact_bm25"]["qps_k10_text_in"]
    synthetic = results.get("synthetic")
    groups = {"SciFact, one call": speed["batch_all_queries"],
              "SciFact, a query a call": speed["one_query_per_call"]}
    if synthetic:
        groups["1M synthetic"] = {"ours_qps": synthetic["ours"]["query"]["qps"],
                                  "bm25s_numpy_qps": synthetic["bm25s"]["query"]["qps"],
                                  "bm25s_numba_qps": synthetic["bm25s"]["query-numba"]["qps"]}
    systems = [("ours_qps", "ours"), ("bm25s_numba_qps", "bm25s numba"), ("bm25s_numpy_qps", "bm25s numpy")]
    figure, ax = plt.subplots(figsize=(9, 4.2))
    width = 0.8 / len(systems)
    for i, (key, label) in enumerate(systems):
        heights = [v[key] for v in groups.values()]
        ax.bar([g + i * width for g in range(len(groups))], heights, width, label=label)
    ax.set_xticks([g + width for g in range(len(groups))], list(groups))
    ax.set(yscale="log", ylabel="queries/s (k = 10, text in, 1 thread)", title="BM25 against bm25s")
    ax.legend()
    return figure


def storage_commits(results: dict[str, Any], plt) -> Any:
    """Commit latency of 1,000-document upserts as the collection grows, merges in the commit or
    in the background."""
    figure, ax = plt.subplots(figsize=(8, 4.2))
    for key, label in (("commit_latency", "merges in the commit"),
                       ("commit_latency_background_merges", "background merges")):
        runs = {int(n): v for n, v in results.get(key, {}).items() if n.isdigit()}
        if not runs:
            continue
        sizes = sorted(runs)
        for stat, style in (("p50_s", "-"), ("p99_s", "--")):
            milliseconds = [runs[n][stat] * 1000 for n in sizes]
            ax.plot(sizes, milliseconds, style, marker="o", label=f"{label}, {stat[:3]}")
    ax.set(xscale="log", yscale="log", xlabel="documents in the collection",
           ylabel="commit latency (ms)", title=f"Upserts of {results['batch']:,} documents: commit latency")
    ax.legend(fontsize=8)
    return figure


def rag_first_token(results: dict[str, Any], plt) -> Any:
    """RAG time to the first token per way of handling the retrieved chunks' KV caches."""
    stream = results["distinct_stream"]
    ways = [w for w in ("full", "prefix", "blend", "reuse") if w in stream]
    figure, ax = plt.subplots(figsize=(8, 4.2))
    ax.bar(ways, [stream[w]["p50_ms"] for w in ways], label="p50")
    ax.scatter(ways, [stream[w]["p99_ms"] for w in ways], color="black", marker="_", s=400, label="p99")
    ax.set(ylabel="time to first token (ms)",
           title=f"RAG, {results['model']}: prefill against reused chunk caches")
    ax.legend()
    return figure


def quality_pipelines(results: dict[str, Any], plt) -> Any:
    """nDCG@10 of each field alone and each pipeline, per judged set."""
    sets = {name: s for name, s in results["sets"].items() if "fields" in s}
    figure, axes = plt.subplots(1, len(sets), figsize=(7.5 * len(sets), 5), squeeze=False)
    for ax, (name, judged) in zip(axes[0], sets.items()):
        rows = [(f, v["nDCG@10"]) for f, v in judged["fields"].items()]
        rows += [(p, v["nDCG@10"]) for p, v in judged.get("pipelines", {}).items()]
        fields = len(judged["fields"])
        colors = ["tab:grey"] * fields + ["tab:blue"] * (len(rows) - fields)
        ax.barh([r[0] for r in rows], [r[1] for r in rows], color=colors)
        ax.invert_yaxis()
        ax.set(xlabel="nDCG@10", title=f"{name}: fields (grey) and pipelines (blue)")
        ax.tick_params(axis="y", labelsize=7)
    return figure


# figure name -> (results file, maker)
FIGURES: dict[str, tuple[str, Callable[[dict[str, Any], Any], Any]]] = {
    "dense-ivfpq-sweeps": ("dense.json", ivfpq_sweeps),
    "spann-tradeoffs": ("spann.json", spann_tradeoffs),
    "serve-latency": ("serve.json", serve_latency),
    "ray-latency": ("ray.json", ray_latency),
    "multivector-curve": ("multivector.json", multivector_curve),
    "multivector-token-retrieval": ("multivector.json", token_retrieval),
    "dense-ranking-trained-pq": ("dense.json", ranking_trained_pq),
    "binary-codes": ("binary.json", binary_codes),
    "lexical-speed": ("lexical-bm25.json", lexical_speed),
    "storage-commits": ("storage.json", storage_commits),
    "rag-first-token": ("rag.json", rag_first_token),
    "quality-pipelines": ("quality.json", quality_pipelines),
}


def main(argv: list[str] | None = None) -> list[Path]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img")
    args = parser.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    args.out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, (source, make) in FIGURES.items():
        path = args.results / source
        if not path.exists():
            print(f"skipped {name}: no {path}", file=sys.stderr)
            continue
        figure = make(json.loads(path.read_text()), plt)
        figure.tight_layout()
        target = args.out / f"{name}.png"
        figure.savefig(target, dpi=110)
        plt.close(figure)
        written.append(target)
        print(f"wrote {target.relative_to(ROOT) if target.is_relative_to(ROOT) else target}", file=sys.stderr)
    return written


if __name__ == "__main__":
    main()
