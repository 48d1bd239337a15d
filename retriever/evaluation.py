"""`retriever eval`: run a BEIR split's queries, score them with ir-measures, time them."""

from __future__ import annotations

import csv
import time
from pathlib import Path
from typing import Any, Mapping

import ir_measures
import numpy as np
from ir_measures import R, nDCG
from tqdm.auto import tqdm

from .collection import Collection
from .corpus import read_jsonl
from .errors import InvalidRequest
from .pipeline import Pipeline

MEASURES = [nDCG @ 10, R @ 100]


def load_beir(data_dir: str | Path, split: str = "test") -> tuple[dict[str, str], dict[str, dict[str, int]]]:
    """(queries {qid: text} of the judged queries, qrels {qid: {doc_id: relevance}})."""
    data_dir = Path(data_dir)
    qrels_path = data_dir / "qrels" / f"{split}.tsv"
    if not qrels_path.exists():
        raise InvalidRequest(f"no qrels for split {split!r}: {str(qrels_path)!r} does not exist")
    qrels: dict[str, dict[str, int]] = {}
    with open(qrels_path, encoding="utf-8", newline="") as f:
        for row in csv.reader(f, delimiter="\t"):
            if len(row) < 3 or row[0] == "query-id":
                continue
            qrels.setdefault(row[0], {})[row[1]] = int(row[2])
    if not qrels:
        raise InvalidRequest(f"{str(qrels_path)!r} judges no queries: there is nothing to score")
    texts = {str(q["_id"]): q["text"] for q in read_jsonl(data_dir / "queries.jsonl")}
    missing = [q for q in qrels if q not in texts]
    if missing:
        raise InvalidRequest(f"{len(missing)} judged queries are missing from queries.jsonl (e.g. {missing[0]!r})")
    return {q: texts[q] for q in qrels}, qrels


def evaluate(
    collection: Collection, queries: Mapping[str, str], qrels: Mapping[str, Mapping[str, int]], *,
    depth: int = 100, batch_size: int = 1, fields: list[str] | None = None, params: Mapping[str, int] | None = None,
    fusion: str = "rrf", weights: Mapping[str, float] | None = None, normalization: str = "minmax",
    run_path: str | Path | None = None, progress: bool = True, pipeline=None,
) -> dict[str, Any]:
    """Quality and speed of one collection on judged queries: a `Collection`, or anything
    `connect()` gives (served over gRPC, sharded) with the same `search` and `schema`.

    latency_ms is the wall time of each search call (one query at batch size 1), encoding included.
    """
    if pipeline is not None:  # a pipeline names its fields
        names = None
        options = {"pipeline": pipeline, "params": params}
    else:
        names = fields or [collection.schema()["fields"][0]["name"]]
        options = {"fields": names, "params": params, "fusion": fusion, "weights": weights,
                   "normalization": normalization}
    qids = list(queries)
    collection.search(queries[qids[0]], k=depth, **options)  # warm-up: models loaded before the clock
    run: dict[str, dict[str, float]] = {}
    latencies = []
    start = time.perf_counter()
    for i in tqdm(range(0, len(qids), batch_size), desc="queries", unit="batch", disable=not progress):
        batch = qids[i : i + batch_size]
        t0 = time.perf_counter()
        hits = collection.search([queries[q] for q in batch], k=depth, **options)
        latencies.append(time.perf_counter() - t0)
        for qid, h in zip(batch, hits):
            run[qid] = dict(zip(h.ids, map(float, h.scores)))
    elapsed = time.perf_counter() - start
    scores = ir_measures.calc_aggregate(MEASURES, qrels, run)
    if run_path is not None:
        write_trec_run(run, run_path, tag=collection.name)
    lat = np.asarray(latencies) * 1000
    return {
        **{str(m): round(float(scores[m]), 4) for m in MEASURES},
        "queries": len(qids),
        "qps": round(len(qids) / elapsed, 2),
        "latency_ms": {"p50": round(float(np.percentile(lat, 50)), 3), "p99": round(float(np.percentile(lat, 99)), 3)},
        "batch_size": batch_size,
        **({"pipeline": _plain(pipeline)} if pipeline is not None
           else {"fields": names, **({"fusion": fusion} if len(names) > 1 else {})}),
    }


def _plain(pipeline):
    """A pipeline as the caller named it: its name, or its plain data."""
    return pipeline.to_dict() if isinstance(pipeline, Pipeline) else pipeline


def write_trec_run(run: Mapping[str, Mapping[str, float]], path: str | Path, tag: str) -> None:
    """TREC run format: `qid Q0 docid rank score tag`, best first."""
    with open(path, "w", encoding="utf-8") as f:
        for qid, docs in run.items():
            ranked = sorted(docs.items(), key=lambda item: -item[1])
            for rank, (doc_id, score) in enumerate(ranked, start=1):
                f.write(f"{qid} Q0 {doc_id} {rank} {score:.6f} {tag}\n")
