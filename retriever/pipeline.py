"""Query pipelines: candidates prefetched from fields, fused into one list, then re-ranked in
stages by other fields' exact scorers.

    Pipeline(prefetch=[Prefetch("bm25", k=200), Prefetch("dense", k=200)],
             fuse=Fuse("rrf"), rerank=[Rerank("tokens", k=50)])

takes 200 from BM25 and 200 from dense, fuses the union by reciprocal ranks, re-ranks it by exact
MaxSim and keeps the best 50 (then a search's k). Each stage's score of each hit is kept
(`Hits.field_scores`: a prefetch under its field's name, `fuse`, `rerank.<field>`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np

from . import fusion as fusion_module
from .errors import InvalidRequest

FUSED = "fuse"  # the fused score's name among a hit's stage scores
RERANKED = "rerank."  # + the field: a re-rank stage's score
HYBRID = "hybrid"  # the built-in pipeline's name (`hybrid`), unless the config names one so
# a field's exact scores of rows [B, C] (-1 where none) -> [B, C] float32, -inf at -1 rows
Scorer = Callable[[str, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Prefetch:
    """Candidates from one field: its top `k`, with its own search `params` and `filter` (both
    on top of the request's)."""

    field: str
    k: int = 100
    params: Mapping[str, int] = field(default_factory=dict)
    filter: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class Fuse:
    """How prefetched lists become one: "rrf" (reciprocal ranks) or "weighted" (each list's
    scores normalized per query: "minmax", "zscore" or "robust", times `weights`, summed). With
    `complete`, every prefetched field first scores the whole union with its exact scorer, so no
    candidate lacks a field's score and each list ranks the same candidates (`hybrid`)."""

    method: str = "rrf"
    weights: Mapping[str, float] = field(default_factory=dict)
    normalization: str = "minmax"
    complete: bool = False


@dataclass(frozen=True)
class Rerank:
    """The candidates so far, ordered by `field`'s exact score; the best `k` go on (all when
    None)."""

    field: str
    k: int | None = None


@dataclass(frozen=True)
class Pipeline:
    prefetch: tuple[Prefetch, ...]
    fuse: Fuse = field(default_factory=Fuse)
    rerank: tuple[Rerank, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "prefetch", tuple(self.prefetch))
        object.__setattr__(self, "rerank", tuple(self.rerank))
        if not self.prefetch:
            raise InvalidRequest("a pipeline needs at least one prefetch stage")
        if not isinstance(self.fuse.complete, bool):
            raise InvalidRequest(f"fuse.complete must be true or false, got {self.fuse.complete!r}")
        names = [p.field for p in self.prefetch]
        if len(set(names)) != len(names):
            raise InvalidRequest(f"a pipeline prefetches each field once, got {names}")
        for stage in (*self.prefetch, *self.rerank):
            if stage.k is None:
                continue
            if isinstance(stage.k, bool) or not isinstance(stage.k, int) or stage.k < 1:
                raise InvalidRequest(f"stage {stage.field!r}: k must be a positive integer, got {stage.k!r}")

    @property
    def fields(self) -> list[str]:
        """Every field the pipeline reads: those prefetched, then those re-ranking."""
        names = [p.field for p in self.prefetch]
        return names + [r.field for r in self.rerank if r.field not in names]

    def fusion_spec(self) -> fusion_module.FusionSpec:
        """The fuse stage, checked against the prefetched fields (before any work)."""
        fuse = self.fuse
        return fusion_module.FusionSpec.checked(
            fuse.method, fuse.weights, fuse.normalization, [p.field for p in self.prefetch]
        )

    @property
    def depth(self) -> int:
        """The most candidates a query carries through the pipeline."""
        return sum(p.k for p in self.prefetch)

    @classmethod
    def of(cls, value: "Pipeline | Mapping[str, Any]") -> "Pipeline":
        """A pipeline given as itself or as its plain data."""
        return value if isinstance(value, cls) else cls.from_dict(value)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Pipeline":
        """From plain data (TOML or JSON): {"prefetch": [{"field": ..., "k": ...}, ...],
        "fuse": {"method": ...}, "rerank": [{"field": ..., "k": ...}]}."""
        if not isinstance(data, Mapping):
            raise InvalidRequest("a pipeline must be a table (a JSON object)")
        unknown = sorted(set(data) - {"prefetch", "fuse", "rerank"})
        if unknown:
            raise InvalidRequest(f"pipeline: unknown key(s) {unknown}; known: prefetch, fuse, rerank")
        try:
            return cls(
                prefetch=tuple(Prefetch(**p) for p in data.get("prefetch", ())),
                fuse=Fuse(**data.get("fuse", {})),
                rerank=tuple(Rerank(**r) for r in data.get("rerank", ())),
            )
        except TypeError as e:  # an unknown or missing key in a stage
            raise InvalidRequest(f"pipeline: {e}") from None

    def to_dict(self) -> dict[str, Any]:
        return {
            "prefetch": [{"field": p.field, "k": p.k, "params": dict(p.params), "filter": p.filter}
                         for p in self.prefetch],
            "fuse": {"method": self.fuse.method, "weights": dict(self.fuse.weights),
                     "normalization": self.fuse.normalization, "complete": self.fuse.complete},
            "rerank": [{"field": r.field, "k": r.k} for r in self.rerank],
        }


def hybrid(fields: list[str], k: int = 100) -> Pipeline:
    """The pipeline a collection runs without labels: each field's top `k`, every field's exact
    score of their union as robust z-scores, summed. Of the rules measured on every set of two
    to four SciFact fields, on test and train queries, it is the one never more than 0.005 below
    the set's best field (docs/benchmarks.md)."""
    return Pipeline(tuple(Prefetch(name, k) for name in fields), Fuse("weighted", normalization="robust",
                                                                     complete=True))


def best_first(scores: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """[B, C] column order per query: best score first, ties by row, -1 rows (-inf) last."""
    tie = np.where(rows >= 0, rows, np.iinfo(np.int64).max)
    return np.lexsort((tie, -scores), axis=1)


def union_rows(found: dict[str, tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """The rows any field found, per query: [B, U] ascending, -1 rows padding the end."""
    rows = np.concatenate([r for _, r in found.values()], axis=1)
    union = [np.unique(r[r >= 0]) for r in rows]
    padded = np.full((len(union), max(1, max(len(u) for u in union))), -1, dtype=np.int64)
    for b, u in enumerate(union):
        padded[b, : len(u)] = u
    return padded


def _completed(score: Scorer, found: dict[str, tuple[np.ndarray, np.ndarray]]):
    """Each field's exact scores of the union of every field's candidates [B, U], best first per
    field (-1 rows pad the end)."""
    padded = union_rows(found)
    out = {}
    for name in found:
        scores = score(name, padded)
        order = best_first(scores, padded)
        out[name] = (np.take_along_axis(scores, order, axis=1), np.take_along_axis(padded, order, axis=1))
    return out


def run(score: Scorer, pipeline: Pipeline, spec: fusion_module.FusionSpec,
        found: dict[str, tuple[np.ndarray, np.ndarray]],
        k: int) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """The prefetched lists `found` {field: (scores [B, C], rows [B, C])} through the fuse
    (`spec`) and re-rank stages -> (scores [B, <=k], rows, {stage: scores}), best first, -1 rows
    at the end. `score` gives a field's exact scores of any rows found (a collection's
    `scorer`, or a shard router's table of what its shards scored)."""
    if len(found) == 1:
        [(name, (scores, rows))] = found.items()
        stages = {name: scores}
    else:
        if pipeline.fuse.complete:
            found = _completed(score, found)
        scores, rows, stages = fusion_module.fuse(found, pipeline.depth, spec)
        stages = {**stages, FUSED: scores}
    for stage in pipeline.rerank:
        exact = score(stage.field, rows)
        order = best_first(exact, rows)[:, : stage.k]
        rows = np.take_along_axis(rows, order, axis=1)
        stages = {name: np.take_along_axis(v, order, axis=1) for name, v in stages.items()}
        scores = np.take_along_axis(exact, order, axis=1)
        stages[RERANKED + stage.field] = scores
    return scores[:, :k], rows[:, :k], {name: v[:, :k] for name, v in stages.items()}
