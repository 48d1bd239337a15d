"""`retriever tune`: the query pipeline that ranks judged queries best, and what it gains on
queries it was not chosen on.

Every field's top candidates, and every field's exact score of their union, are computed once per
query (`Judged.gather`). Each pipeline tried is then the engine's own fuse and re-rank code
(`pipeline.run`) over those stored scores, so it ranks as a search with it would. Tried, in order:
each field alone; every set of two or more fields fused by RRF or by weighted fusion (min-max,
z-score or robust), complete or not, at each prefetch depth; the weights of the best weighted pipeline by
coordinate ascent (the learned blend); a re-rank stage by each field on top. The best mean
nDCG@10 wins, the earliest (simplest) on ties. With several folds, each fold's queries are ranked
by the pipeline chosen on the other folds: the held-out figures say what tuning is worth.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass
from typing import Any, Iterator, Mapping

import numpy as np
from tqdm.auto import tqdm

from . import pipeline as pipeline_module
from .errors import InvalidRequest
from .pipeline import Fuse, Pipeline, Prefetch, Rerank

CUTOFF = 10  # nDCG@10 is what tuning maximises
DEPTHS = (50, 100, 200)  # prefetch depths tried; candidates are gathered once at the largest
FUSES = (Fuse("rrf"), *(Fuse("weighted", normalization=n) for n in ("minmax", "zscore", "robust")))
WEIGHTS = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)  # the learned blend's steps, per field
ASCENT_ROUNDS = 3
BATCH = 32  # queries per prefetch call while gathering, within the collection's limits
MAX_FOLDS = 10
PAD = np.iinfo(np.int64).max  # pads the sorted candidate rows, so they stay sorted


def _lookup(union: np.ndarray, values: np.ndarray, rows: np.ndarray, missing: float) -> np.ndarray:
    """`values` [B, U] of the ascending rows `union` [B, U], read at `rows` [B, C] (each one of
    its query's union, or -1: `missing`)."""
    out = np.full(rows.shape, missing, dtype=values.dtype)
    for b in range(len(rows)):
        valid = rows[b] >= 0
        out[b, valid] = values[b, np.searchsorted(union[b], rows[b][valid])]
    return out


@dataclass(frozen=True)
class _Stored:
    """One field's exact scores of each query's candidates, answered as a field answers `score`
    (its queries are indices of the stored ones)."""

    union: np.ndarray
    scores: np.ndarray

    def score(self, queries: np.ndarray, rows: np.ndarray) -> np.ndarray:
        return _lookup(self.union[queries], self.scores[queries], rows, -np.inf)


def _stacked(parts: list[np.ndarray], fill) -> np.ndarray:
    """Batches of [b, width_i] arrays -> one [sum b, max width], padded with `fill`."""
    width = max(p.shape[1] for p in parts)
    return np.concatenate([np.pad(p, ((0, 0), (0, width - p.shape[1])), constant_values=fill) for p in parts])


def _discounts(count: int) -> np.ndarray:
    return 1.0 / np.log2(np.arange(2, count + 2))


def _ideal_dcg(judgments: Mapping[str, int]) -> float:
    """DCG@10 of the best ranking the judgments allow (gain = relevance, as trec_eval counts)."""
    best = sorted((g for g in judgments.values() if g > 0), reverse=True)[:CUTOFF]
    return float(np.dot(best, _discounts(len(best))))


@dataclass(frozen=True)
class Judged:
    """Judged queries, each with every field's candidates, their union and every field's exact
    score of it, and the union's judged gains."""

    qids: list[str]
    found: dict[str, tuple[np.ndarray, np.ndarray]]  # each field's best `depth` [Q, depth]
    fields: dict[str, _Stored]
    union: np.ndarray  # [Q, U] ascending rows, PAD at the end
    gains: np.ndarray  # [Q, U] each candidate's judged relevance (0 when not judged)
    ideal: np.ndarray  # [Q] the best DCG@10 the judgments allow

    @classmethod
    def gather(
        cls,
        collection,
        queries: Mapping[str, str],
        qrels: Mapping[str, Mapping[str, int]],
        fields: list[str],
        depth: int,
        progress: bool = True,
    ) -> "Judged":
        widest = Pipeline(tuple(Prefetch(name, depth) for name in fields))
        qids = list(queries)
        found: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {name: [] for name in fields}
        unions, scores, gains = [], {name: [] for name in fields}, []
        limits = collection.config
        size = max(1, min(BATCH, limits.max_batch, limits.max_candidates // (depth * len(fields))))
        for start in tqdm(range(0, len(qids), size), desc="candidates", unit="batch", disable=not progress):
            batch = qids[start : start + size]
            stage, payloads = collection.prefetch([queries[q] for q in batch], widest)
            candidates = pipeline_module.union_rows(stage)
            for name in fields:
                found[name].append(stage[name])
                scores[name].append(collection.fields[name].score(payloads[name], candidates))
            ids = collection.documents.ids_at(candidates)
            gains.append(
                np.array(
                    [[qrels[q].get(i, 0) if i is not None else 0 for i in row] for q, row in zip(batch, ids)],
                    dtype=np.float64,
                )
            )
            unions.append(np.where(candidates >= 0, candidates, PAD))
        union = _stacked(unions, PAD)
        return cls(
            qids=qids,
            found={
                name: (_stacked([s for s, _ in parts], -np.inf), _stacked([r for _, r in parts], -1))
                for name, parts in found.items()
            },
            fields={name: _Stored(union, _stacked(s, -np.inf)) for name, s in scores.items()},
            union=union,
            gains=_stacked(gains, 0.0),
            ideal=np.array([_ideal_dcg(qrels[q]) for q in qids]),
        )

    def ndcg(self, pipeline: Pipeline, queries: np.ndarray) -> np.ndarray:
        """Each query's nDCG@10 [len(queries)] when `pipeline` ranks it."""
        found = {
            p.field: (self.found[p.field][0][queries, : p.k], self.found[p.field][1][queries, : p.k])
            for p in pipeline.prefetch
        }
        score = lambda name, rows: self.fields[name].score(queries, rows)  # noqa: E731
        _, rows, _ = pipeline_module.run(score, pipeline, pipeline.fusion_spec(), found, CUTOFF)
        gains = _lookup(self.union[queries], self.gains[queries], rows, 0.0)
        dcg = gains @ _discounts(rows.shape[1])
        ideal = self.ideal[queries]
        return np.divide(dcg, ideal, out=np.zeros_like(dcg), where=ideal > 0)


def shapes(fields: list[str], depths: tuple[int, ...]) -> Iterator[Pipeline]:
    """The pipelines tried before any weights are learned, simplest first."""
    for name in fields:
        yield Pipeline((Prefetch(name, max(depths)),))
    for size in range(2, len(fields) + 1):
        for chosen in itertools.combinations(fields, size):
            for depth, fuse, complete in itertools.product(depths, FUSES, (False, True)):
                yield Pipeline(
                    tuple(Prefetch(n, depth) for n in chosen), dataclasses.replace(fuse, complete=complete)
                )


def _blends(pipeline: Pipeline) -> Iterator[Pipeline]:
    """One step of coordinate ascent from `pipeline`'s weights: each field's weight set to each
    of WEIGHTS (never all zero)."""
    names = [p.field for p in pipeline.prefetch]
    current = {n: float(pipeline.fuse.weights.get(n, 1.0)) for n in names}
    for name, weight in itertools.product(names, WEIGHTS):
        weights = {**current, name: weight}
        if weight != current[name] and any(weights.values()):
            yield dataclasses.replace(pipeline, fuse=dataclasses.replace(pipeline.fuse, weights=weights))


def choose(
    judged: Judged, queries: np.ndarray, fields: list[str], depths: tuple[int, ...], progress: bool = True
) -> tuple[Pipeline, float]:
    """The pipeline with the best mean nDCG@10 over `queries` (indices into `judged`)."""

    def mean(p: Pipeline) -> float:
        return float(judged.ndcg(p, queries).mean())

    tried = [(mean(p), p) for p in tqdm(list(shapes(fields, depths)), desc="pipelines", disable=not progress)]
    best_score, best = max(tried, key=lambda t: t[0])  # max keeps the first of equals
    weighted = [t for t in tried if t[1].fuse.method == "weighted" and len(t[1].prefetch) > 1]
    if weighted:
        blend_score, blend = max(weighted, key=lambda t: t[0])
        for _ in range(ASCENT_ROUNDS):
            step_score, step = max(((mean(p), p) for p in _blends(blend)), key=lambda t: t[0])
            if step_score <= blend_score:
                break
            blend_score, blend = step_score, step
        if blend_score > best_score:
            best_score, best = blend_score, blend
    for name in fields:
        reranked = dataclasses.replace(best, rerank=(Rerank(name),))
        score = mean(reranked)
        if score > best_score:
            best_score, best = score, reranked
    return best, best_score


def _folds(count: int, folds: int, seed: int) -> list[np.ndarray]:
    order = np.random.default_rng(seed).permutation(count)
    return [np.sort(part) for part in np.array_split(order, folds)]


def tune(
    collection,
    queries: Mapping[str, str],
    qrels: Mapping[str, Mapping[str, int]],
    *,
    fields: list[str] | None = None,
    depths: tuple[int, ...] = DEPTHS,
    folds: int = 2,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """The pipeline chosen on all `queries`, and with `folds` > 1 its cross-validated figures:
    each fold ranked by the pipeline chosen on the others, against each field alone and the
    built-in hybrid pipeline on the same queries (nDCG@10)."""
    fields = (
        list(fields)
        if fields
        else [f.name for f in collection.config.fields if collection.can_encode(f.name)]
    )
    if not fields:
        raise InvalidRequest("tune needs fields that encode texts; this collection has none")
    collection.pipeline_fields(Pipeline(tuple(Prefetch(n) for n in fields)))  # names known fields
    if not depths or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in depths):
        raise InvalidRequest(f"depths must be positive integers, got {depths!r}")
    if (
        isinstance(folds, bool)
        or not isinstance(folds, int)
        or not 1 <= folds <= min(MAX_FOLDS, len(queries))
    ):
        raise InvalidRequest(
            f"folds must be an integer from 1 to {min(MAX_FOLDS, len(queries))} "
            f"(at most one per judged query), got {folds!r}"
        )
    depths = tuple(sorted(set(depths)))
    judged = Judged.gather(collection, queries, qrels, fields, max(depths), progress)
    everyone = np.arange(len(judged.qids))
    pipeline, train = choose(judged, everyone, fields, depths, progress)

    def mean(p: Pipeline) -> float:
        return round(float(judged.ndcg(p, everyone).mean()), 4)

    scored = {
        pipeline_module.HYBRID: mean(pipeline_module.hybrid(fields, min(100, max(depths)))),
        "fields": {name: mean(Pipeline((Prefetch(name, max(depths)),))) for name in fields},
    }
    out: dict[str, Any] = {
        "queries": len(judged.qids),
        "fields": fields,
        "pipeline": pipeline.to_dict(),
        "nDCG@10": {"tuned": round(train, 4), **scored},
    }
    if folds > 1:
        held_out = np.zeros(len(everyone))
        chosen = []
        for part in _folds(len(everyone), folds, seed):
            rest = np.setdiff1d(everyone, part)
            fold_pipeline, _ = choose(judged, rest, fields, depths, progress=False)
            held_out[part] = judged.ndcg(fold_pipeline, part)
            chosen.append(fold_pipeline.to_dict())
        best_field = max(fields, key=lambda n: scored["fields"][n])
        tuned = round(float(held_out.mean()), 4)
        out["held_out"] = {
            "folds": folds,
            "nDCG@10": tuned,
            "best_field": best_field,
            "gain_over_best_field": round(tuned - scored["fields"][best_field], 4),
            "gain_over_hybrid": round(tuned - scored[pipeline_module.HYBRID], 4),
            "chosen": chosen,
        }
    return out
