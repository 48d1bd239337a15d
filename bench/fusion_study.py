"""Fusion study: which label-free way of combining fields never loses to the best single field.

A collection may hold any two or more of the quality bench's four fields (MiniLM, BM25,
splade-tiny, MiniLM token vectors), so each fusion rule is scored on every such subset, on each
judged split of a set, against that subset's best field alone. Every field's top candidates, and
every field's exact score of their union, are gathered once per split (`retriever.tuning.Judged`);
each rule then runs as an engine pipeline over them (the engine's own fuse code), so a figure here
is what a search with that pipeline scores. Prints one JSON object on stdout (progress on stderr).

    python bench/fusion_study.py [--data ../shared/data] [--sets scifact] [--keep DIR] [--out r.json]
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import log, over_judged_sets  # noqa: E402
from quality import DEPTH, FIELDS, built  # noqa: E402

RULES = {  # name: the fuse stage (every prefetch takes DEPTH)
    "rrf": {"method": "rrf"},
    "rrf, complete": {"method": "rrf", "complete": True},
    "minmax": {"method": "weighted"},
    "minmax, complete": {"method": "weighted", "complete": True},
    "zscore, complete": {"method": "weighted", "normalization": "zscore", "complete": True},
    "robust": {"method": "weighted", "normalization": "robust"},
    "robust, complete (hybrid)": {"method": "weighted", "normalization": "robust", "complete": True},
}


def study(data: Path, work: Path) -> dict:
    import numpy as np

    from retriever.evaluation import load_beir
    from retriever.pipeline import Fuse, Pipeline, Prefetch
    from retriever.tuning import Judged

    collection, _ = built(data, work / data.name)
    names = [f["name"] for f in FIELDS]
    out: dict = {"splits": {}}
    for split in ("test", "train"):
        if not (data / "qrels" / f"{split}.tsv").exists():
            continue
        queries, qrels = load_beir(data, split)
        judged = Judged.gather(collection, queries, qrels, names, DEPTH)
        everyone = np.arange(len(judged.qids))

        def mean(pipeline: Pipeline) -> float:
            return float(judged.ndcg(pipeline, everyone).mean())

        alone = {n: round(mean(Pipeline((Prefetch(n, DEPTH),))), 4) for n in names}
        margins = {}
        for size in range(2, len(names) + 1):
            for chosen in itertools.combinations(names, size):
                best = max(alone[n] for n in chosen)
                prefetch = tuple(Prefetch(n, DEPTH) for n in chosen)
                margins["+".join(chosen)] = {rule: round(mean(Pipeline(prefetch, Fuse(**fuse))) - best, 4)
                                             for rule, fuse in RULES.items()}
        out["splits"][split] = {"queries": len(judged.qids), "fields": alone, "over_best_field": margins}
        log(f"{data.name} {split}: worst margins " + ", ".join(
            f"{rule} {min(m[rule] for m in margins.values()):+.4f}" for rule in RULES))
    every = [m for s in out["splits"].values() for m in s["over_best_field"].values()]
    out["worst_over_best_field"] = {rule: min(m[rule] for m in every) for rule in RULES}
    out["mean_over_best_field"] = {rule: round(sum(m[rule] for m in every) / len(every), 4) for rule in RULES}
    return out


def main() -> None:
    over_judged_sets(__doc__, study, "scifact", {"depth": DEPTH, "rules": RULES})


if __name__ == "__main__":
    main()
