"""Fusion study: which unsupervised way of combining fields never loses to the best single field.

Each field's top-100 (and each field's exact score of every candidate in the union) is computed
once per judged set; the fusion rules below are then scored offline with ir-measures, so many
rules cost one search per field. Prints one JSON object on stdout (progress on stderr).

    python bench/fusion_study.py [--data ../shared/data] [--sets scifact,business-reports] [--out r.json]
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import log, over_judged_sets  # noqa: E402
from quality import DEPTH, FIELDS  # noqa: E402


def field_runs(data: Path, work: Path):
    """(qrels, {field: {qid: (rows [n], scores [n])}}, {field: {qid: exact scores of the union}}, ids)."""
    import retriever
    from retriever.corpus import read_jsonl
    from retriever.evaluation import load_beir

    queries, qrels = load_beir(data, "test")
    collection = retriever.Collection.create(work / data.name, {"name": "study", "max_candidates": 10**7,
                                                                 "fields": FIELDS})
    collection.add(read_jsonl(data / "corpus.jsonl"), progress=True)
    collection.optimize()
    qids = list(queries)
    texts = [queries[q] for q in qids]
    names = [f["name"] for f in FIELDS]
    runs = {n: {} for n in names}
    for name in names:
        for qid, hits in zip(qids, collection.search(texts, k=DEPTH, fields=name)):
            runs[name][qid] = (np.asarray(hits.rows), np.asarray(hits.scores, dtype=np.float64))
    union = {q: np.unique(np.concatenate([runs[n][q][0] for n in names])) for q in qids}
    payloads = collection._query_payloads(texts, names, {}, DEPTH)
    exact = {n: {} for n in names}
    for n in names:  # every field's own exact score of every candidate any field found
        width = max(len(u) for u in union.values())
        rows = np.full((len(qids), width), -1, dtype=np.int64)
        for b, q in enumerate(qids):
            rows[b, : len(union[q])] = union[q]
        scores = collection.fields[n].score(payloads[n], rows)
        for b, q in enumerate(qids):
            exact[n][q] = scores[b, : len(union[q])].astype(np.float64)
    ids = collection.documents.ids_at(np.arange(collection.counts["rows"])[None, :])[0]
    return qrels, runs, union, exact, ids


def ndcg(qrels, ranked: dict[str, list[str]]) -> float:
    import ir_measures
    from ir_measures import nDCG

    run = {q: {doc: float(len(docs) - i) for i, doc in enumerate(docs)} for q, docs in ranked.items()}
    return round(ir_measures.calc_aggregate([nDCG @ 10], qrels, run)[nDCG @ 10], 4)


def minmax(x: np.ndarray) -> np.ndarray:
    span = x.max() - x.min()
    return (x - x.min()) / span if span > 0 else np.zeros_like(x)


def zscore(x: np.ndarray) -> np.ndarray:
    return (x - x.mean()) / x.std() if x.std() > 0 else np.zeros_like(x)


def rules(names):
    """name -> f(runs of one query {field: (rows, scores)}, union rows, exact {field: scores of the
    union}) -> union scores (higher is better)."""
    def rrf(k):
        def rule(run, union, exact):
            total = np.zeros(len(union))
            for n in names:
                rows = run[n][0]
                at = np.searchsorted(union, rows)
                total[at] += 1.0 / (k + np.arange(1, len(rows) + 1))
            return total
        return rule

    def combined(normalize, agreement=False):
        def rule(run, union, exact):
            parts = [normalize(exact[n]) for n in names]
            if agreement:  # a field whose top 10 the others also rank high counts more
                weights = []
                for i, _ in enumerate(names):
                    top = np.argsort(-parts[i])[:10]
                    others = [np.mean(p[top]) for j, p in enumerate(parts) if j != i]
                    weights.append(max(np.mean(others), 1e-6))
                return sum(w * p for w, p in zip(weights, parts))
            return sum(parts)
        return rule

    def rerank_by(field, then=None):
        def rule(run, union, exact):
            own = zscore(exact[field])
            return own if then is None else own + 0.5 * zscore(exact[then])
        return rule

    out = {"rrf k=60": rrf(60), "rrf k=10": rrf(10),
           "exact scores, minmax sum": combined(minmax), "exact scores, zscore sum": combined(zscore),
           "exact scores, zscore, agreement-weighted": combined(zscore, agreement=True),
           "exact scores, minmax, agreement-weighted": combined(minmax, agreement=True)}
    for n in names:
        out[f"union re-ranked by {n}"] = rerank_by(n)
    out["union re-ranked by tokens + 0.5 bm25"] = rerank_by("tokens", "bm25")
    out["union re-ranked by dense + 0.5 bm25"] = rerank_by("dense", "bm25")
    return out


def study(data: Path, work: Path) -> dict:
    qrels, runs, union, exact, ids = field_runs(data, work)
    names = list(runs)
    ranked = {n: {q: [ids[r] for r in runs[n][q][0][:DEPTH]] for q in qrels} for n in names}
    out = {"fields": {n: ndcg(qrels, ranked[n]) for n in names}}
    best = max(out["fields"].values())
    out["rules"] = {}
    for name, rule in rules(names).items():
        ranked = {}
        for q in qrels:
            scores = rule({n: runs[n][q] for n in names}, union[q], {n: exact[n][q] for n in names})
            ranked[q] = [ids[union[q][i]] for i in np.argsort(-scores, kind="stable")[:DEPTH]]
        value = ndcg(qrels, ranked)
        out["rules"][name] = {"nDCG@10": value, "over_best_field": round(value - best, 4)}
        log(f"{data.name}: {name}: {value} ({value - best:+.4f})")
    return out


def main() -> None:
    over_judged_sets(__doc__, study, "scifact,business-reports", {"depth": DEPTH})


if __name__ == "__main__":
    main()
