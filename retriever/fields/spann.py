"""SPANN as a segment's index (`index = "SPANN"`): posting lists built from the segment's stored
float vectors into a `<segment>.<field>.spann` directory (`parts.build`), once the segment is
large enough; smaller segments are searched exactly. Merges build new directories, and old ones
stay until no kept manifest names them, so readers pinned to an older version keep working.

Factory string: `SPANN[lists][,R<replicas>][,L<list size>][,PQ<bytes>][,F16]`, e.g. `SPANN`,
`SPANN8192,R8`, `SPANN,PQ24` (PQ codes in memory, only the best `rescore` records read from disk),
`SPANN,F16` (float16 posting records: half the bytes read per query; a field `rescore` > 0 re-scores
the best with the stored float32 vectors).
Request parameters: `nprobe`, `prune_pct` (lists within (1 + prune_pct / 100) x the nearest
centroid's distance), `rescore` (PQ mode).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from retriever.index import storage
from retriever.index.spann import DEFAULT_NPROBE, DEFAULT_PRUNE, DEFAULT_RESCORE, MANIFEST, SpannIndex
from retriever.index.spann_build import SpannParams
from retriever.index.vectors import VectorStore
from retriever.kernels import cpu

from retriever.errors import CorruptIndex, InvalidConfig

from .base import padded

_PART = re.compile(r"^(R|L|PQ|F)(\d+)$")
_OPTIONS = {"R": "replicas", "L": "list_size", "PQ": "pq", "F": "float_bits"}


def is_spann(factory: str) -> bool:
    return isinstance(factory, str) and factory.strip().upper().startswith("SPANN")


def spann_params(factory: str, metric: str) -> SpannParams:
    head, *rest = [p.strip().upper() for p in factory.split(",")]
    if not re.fullmatch(r"SPANN\d*", head):
        raise InvalidConfig(
            f"index {factory!r}: expected SPANN[lists][,R<replicas>][,L<list size>][,PQ<bytes>][,F16]"
        )
    options: dict[str, Any] = {"metric": metric, "lists": int(head[5:]) if head[5:] else None}
    for part in rest:
        match = _PART.match(part)
        if not match:
            raise InvalidConfig(
                f"index {factory!r}: unknown part {part!r}; expected R<replicas>, L<list size>, "
                "PQ<bytes> or F16"
            )
        options[_OPTIONS[match[1]]] = int(match[2])
    return SpannParams(**options)


class SpannVectors:
    """The field's search index: SPANN over rows 0..indexed-1, exact scan over the rest."""

    exact = False

    def __init__(self, index: SpannIndex | None, store: VectorStore, metric: str) -> None:
        self.index, self.store, self.metric = index, store, metric

    @property
    def ntotal(self) -> int:
        return len(self.store)

    @property
    def indexed(self) -> int:
        return self.index.rows if self.index is not None else 0

    @classmethod
    def open(cls, path: Path, entry: Mapping[str, Any], store: VectorStore, metric: str) -> "SpannVectors":
        spann = entry.get("spann")
        if spann is None:
            return cls(None, store, metric)
        directory = Path(path) / spann["dir"]
        try:
            recorded = storage.sha256_file(directory / MANIFEST)
        except FileNotFoundError:
            raise CorruptIndex(f"{str(directory)!r} is listed in the manifest but missing") from None
        if recorded != spann["manifest_sha256"]:
            raise CorruptIndex(
                f"{str(directory / MANIFEST)!r} is not the one the collection manifest records"
            )
        return cls(SpannIndex.open(directory), store, metric)

    def search(
        self, queries: np.ndarray, k: int, params: Mapping[str, int], allowed: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """queries [B, D] -> (scores [B, k], rows [B, k]), -1 padded."""
        parts_scores, parts_rows = [], []
        if self.index is not None:
            prune = params["prune_pct"] / 100 if "prune_pct" in params else DEFAULT_PRUNE
            scores, rows = self.index.search(
                queries,
                k,
                nprobe=int(params.get("nprobe", DEFAULT_NPROBE)),
                prune=prune,
                allowed=allowed,
                rescore=int(params.get("rescore", DEFAULT_RESCORE)),
            )
            parts_scores.append(scores)
            parts_rows.append(rows)
        if self.indexed < len(self.store):
            rows = np.arange(self.indexed, len(self.store))
            scores = self._exact(queries, self.store.gather(rows))  # [B, A]
            if allowed is not None:
                scores[:, ~allowed[rows]] = -np.inf
            parts_scores.append(scores)
            parts_rows.append(np.broadcast_to(rows, scores.shape))
        return padded(
            *cpu.top_k_rows(np.concatenate(parts_scores, axis=1), np.concatenate(parts_rows, axis=1), k), k
        )

    def _exact(self, queries: np.ndarray, vectors: np.ndarray) -> np.ndarray:
        dots = queries @ vectors.T
        if self.metric == "ip":
            return dots
        return (
            2 * dots
            - np.einsum("ij,ij->i", vectors, vectors)[None]
            - np.einsum("ij,ij->i", queries, queries)[:, None]
        )
