"""One shard's side of a sharded search: the same operations, whether the shard is a Ray Serve
replica or an object in the router's own process (tests, one machine).

A search asks each shard for its candidates and every score the router's fuse and re-rank
stages can need of them, in one call: for each query, the union of the shard's candidates (their
ids), each prefetched field's own list as positions in that union, and the exact score of every
candidate by each field a later stage reads. A document the whole collection's pipeline keeps is
among its shard's candidates, so the router fuses and re-ranks without calling back.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from retriever import pipeline as pipeline_module
from retriever.collection import Collection
from retriever.index import storage, wal
from retriever.fields.statistics import Statistics


@dataclass(frozen=True)
class ShardAnswer:
    """One shard's candidates for a batch of B queries (U: its widest union)."""

    ids: list[list[str]]  # [B][<=U] each query's candidates, ascending rows of the shard
    found: dict[str, tuple[np.ndarray, np.ndarray]]  # {prefetched field: (scores [B, C], positions [B, C])}
    exact: dict[str, np.ndarray]  # {field a later stage reads: exact scores [B, U] of the candidates}
    reasons: list[str | None] = field(default_factory=list)  # [B] why a query can match nothing here
    width: int = 0  # U
    # [B][<=U] the candidates' stored documents, when asked: a search of one list keeps only hits
    # from each shard's own top k, so their documents come with them (no third round)
    documents: list[list[dict[str, Any]]] | None = None


def later_fields(pipeline: pipeline_module.Pipeline) -> list[str]:
    """The fields whose exact scores of the candidates the fuse and re-rank stages read."""
    complete = pipeline.fuse.complete and len(pipeline.prefetch) > 1
    return [*([p.field for p in pipeline.prefetch] if complete else []), *[r.field for r in pipeline.rerank]]


class Shard:
    """A shard collection, opened once; reads take a pinned view while writes move it on. Replicas
    of one shard share its directory: a read first moves to what another replica wrote there."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.collection = Collection.open(path)
        self._writing = threading.Lock()
        self._seen = self._on_disk()

    def _on_disk(self) -> tuple:
        """What any process's commit or logged write changes: the manifest and the log."""
        out = []
        for name in (storage.MANIFEST, wal.LOG):
            try:
                found = os.stat(self.path / name)
                out.append((found.st_ino, found.st_size, found.st_mtime_ns))
            except FileNotFoundError:
                out.append(None)
        return tuple(out)

    def _current(self) -> Collection:
        """A view of the newest state, reopened when another replica wrote since (two stats)."""
        if self._on_disk() != self._seen:
            with self._writing:
                now = self._on_disk()
                if now != self._seen:
                    self.collection = self.collection.reopen()
                    self._seen = now
        return self.collection.view()

    def _write(self, change):
        with self._writing:
            try:
                return change(self.collection)
            finally:
                self._seen = self._on_disk()  # this object holds its own writes already

    def statistics(self, queries, fields: list[str], params: Mapping[str, int] | None) -> Statistics:
        return self._current().statistics(queries, fields, params)

    def search(
        self,
        queries,
        pipeline: Mapping[str, Any],
        filter,
        params,
        k: int,
        statistics: Statistics | None,
        with_documents: bool = False,
    ) -> ShardAnswer:
        collection = self._current()
        if statistics:
            collection = collection.with_statistics(statistics)
        plan = pipeline_module.Pipeline.of(pipeline)
        found, payloads = collection.prefetch(queries, plan, filter=filter, params=params, k=k)
        size = len(next(iter(payloads.values())))
        if not found:  # no document here matches the filter
            empty = np.zeros((size, 0), np.float32), np.zeros((size, 0), np.int64)
            return ShardAnswer(
                [[] for _ in range(size)],
                {p.field: empty for p in plan.prefetch},
                {name: empty[0] for name in later_fields(plan)},
                [None] * size,
                0,
                [[] for _ in range(size)] if with_documents else None,
            )
        union = pipeline_module.union_rows(found)  # [B, U] ascending, -1 at the end
        positions = {name: (scores, _positions(union, rows)) for name, (scores, rows) in found.items()}
        score = collection.scorer(payloads)
        exact = {name: score(name, union) for name in dict.fromkeys(later_fields(plan))}
        ids = [[i for i in row if i is not None] for row in collection.documents.ids_at(union)]
        reasons = collection.no_terms_reasons(payloads, [p.field for p in plan.prefetch], size)
        documents = [collection.documents.take(row[row >= 0]) for row in union] if with_documents else None
        return ShardAnswer(ids, positions, exact, reasons, union.shape[1], documents)

    def documents(self, ids: list[str]) -> list[dict[str, Any] | None]:
        return self._current().get(ids)

    def count(self, filter: Mapping[str, Any] | None = None) -> int:
        return self._current().count(filter)

    def info(self) -> dict[str, Any]:
        return self._current().info()

    def schema(self) -> dict[str, Any]:
        return self._current().schema()

    def warm(self) -> None:
        """Load every text encoder the shard's fields use, and search each such field once (its
        kernels compiled, its weights made), so first searches meet their deadline."""
        collection = self._current()
        for config in collection.config.fields:
            if collection.can_encode(config.name):
                collection.search("warm", k=1, fields=config.name)

    def flush(self) -> bool:
        return self._write(lambda c: c.flush())

    def add(self, documents: list[dict[str, Any]], vectors: Mapping[str, Any] | None) -> int:
        return self._write(lambda c: c.add(documents, vectors=vectors))

    def delete(self, ids: list[str]) -> int:
        return self._write(lambda c: c.delete(ids))


def _positions(union: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Each row's place in its query's ascending union [B, C] (-1 stays -1)."""
    out = np.full(rows.shape, -1, dtype=np.int64)
    for b in range(len(rows)):
        valid = rows[b] >= 0
        out[b, valid] = np.searchsorted(union[b, : int((union[b] >= 0).sum())], rows[b, valid])
    return out
