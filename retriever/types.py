"""Result types returned by every search path (in-process and, later, remote)."""

from __future__ import annotations

from dataclasses import dataclass, field
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

if TYPE_CHECKING:
    from .documents import DocumentTable


def are_texts(queries: Any) -> bool:
    """Whether queries are texts: one text, or a non-empty list of texts."""
    if isinstance(queries, np.ndarray):  # vectors or codes, the usual request: no ABC check
        return False
    return isinstance(queries, str) or (
        isinstance(queries, Sequence) and bool(queries) and all(isinstance(q, str) for q in queries)
    )


class DocumentList:
    """Documents already fetched (e.g. received over gRPC), addressed by position like rows."""

    def __init__(self, documents: list[dict[str, Any]]) -> None:
        self.documents = documents

    def take(self, rows: np.ndarray) -> list[dict[str, Any]]:
        return [self.documents[int(r)] for r in rows]

    def take_table(self, rows: np.ndarray) -> pa.Table:
        return pa.Table.from_pylist(self.take(rows))


@dataclass(frozen=True)
class Hits:
    """The ranked answer to one query, best first.

    ids [n] document ids; scores [n] fused score; field_scores {field: [n]} each field's own
    score (NaN where that field did not return the document). Documents are read on access.
    """

    ids: list[str]
    scores: np.ndarray
    field_scores: dict[str, np.ndarray] = field(default_factory=dict)
    rows: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64), repr=False)
    _documents: "DocumentTable | DocumentList | None" = field(default=None, repr=False, compare=False)
    reason: str | None = None  # why the list is empty or short, when known
    # shards of a sharded collection that did not answer in time: the hits are the others' best
    missing_shards: tuple[str, ...] = ()

    @property
    def partial(self) -> bool:
        """Whether some shards' documents could not be searched (`missing_shards`)."""
        return bool(self.missing_shards)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def documents(self) -> list[dict[str, Any]]:
        """Each hit's stored document (id, text, metadata) as a dict."""
        if self._documents is None:
            return [{"id": i} for i in self.ids]
        return self._documents.take(self.rows)

    def to_arrow(self) -> pa.Table:
        columns: dict[str, Any] = {"id": pa.array(self.ids, pa.string()), "score": pa.array(self.scores, pa.float32())}
        for name, values in self.field_scores.items():
            columns[f"score_{name}"] = pa.array(values, pa.float32())
        table = pa.table(columns)
        if self._documents is not None:
            docs = self._documents.take_table(self.rows)
            for name in docs.column_names:
                if name != "id":
                    table = table.append_column(name, docs.column(name))
        return table

    def to_pandas(self):
        return self.to_arrow().to_pandas()


class Results(Sequence[Hits]):
    """A batch of queries' answers in columns: query b's hits are positions offsets[b] to
    offsets[b + 1] of the flat `scores`, `field_scores`, `rows` and `ids`, best first. Ids are read
    in one pass for the whole batch when first asked; each query's `Hits` and the stored documents
    only when read, so a batch crosses the wire without per-hit Python work. Indexing and
    iterating give `Hits`, as a list would."""

    def __init__(
        self,
        offsets: np.ndarray,
        scores: np.ndarray,
        field_scores: dict[str, np.ndarray],
        rows: np.ndarray,
        documents: "DocumentTable | DocumentList | None",
        reasons: list[str | None],
        missing_shards: tuple[str, ...] = (),
        ids: list[str] | None = None,  # given where documents are a DocumentList (remote, sharded)
    ) -> None:
        self.offsets = offsets  # [B + 1] int64
        self.scores = scores  # [N] float32, N hits of all queries
        self.field_scores = field_scores  # {field or stage: [N]}
        self.rows = rows  # [N] int64: each hit's row of `documents`
        self.reasons = reasons  # [B] why a query's list is empty or short, when known
        self.missing_shards = missing_shards
        self._documents = documents
        self._ids = ids

    @classmethod
    def from_padded(
        cls, scores: np.ndarray, rows: np.ndarray, field_scores: dict[str, np.ndarray], documents, reasons
    ) -> "Results":
        """scores/rows/field_scores [B, k] whose -1 rows pad the end of short lists."""
        if rows.size and np.minimum.reduce(rows, axis=None) >= 0:  # the usual case: plain reshapes
            offsets = np.arange(0, rows.size + 1, rows.shape[1], dtype=np.int64)
            flat = {n: v.reshape(-1) for n, v in field_scores.items()}
            return cls(offsets, scores.reshape(-1), flat, rows.reshape(-1), documents, reasons)
        found = rows >= 0
        offsets = np.zeros(len(rows) + 1, np.int64)
        np.cumsum(found.sum(axis=1), out=offsets[1:])
        flat = {n: v[found] for n, v in field_scores.items()}
        return cls(offsets, scores[found], flat, rows[found], documents, reasons)

    @property
    def ids(self) -> list[str]:
        """[N] every hit's document id, query after query."""
        if self._ids is None:
            self._ids = [] if self._documents is None else self._documents.ids_of(self.rows)
        return self._ids

    @property
    def partial(self) -> bool:
        """Whether some shards' documents could not be searched (`missing_shards`)."""
        return bool(self.missing_shards)

    def counts(self) -> np.ndarray:
        """[B] each query's number of hits."""
        return np.diff(self.offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __repr__(self) -> str:
        shards = f", missing shards {list(self.missing_shards)}" if self.missing_shards else ""
        return f"Results({len(self)} queries, {len(self.scores)} hits{shards})"

    def __getitem__(self, b):
        if isinstance(b, slice):
            return [self[i] for i in range(*b.indices(len(self)))]
        if not -len(self) <= b < len(self):
            raise IndexError(f"query {b} of a batch of {len(self)}")
        b = b % len(self)
        lo, hi = int(self.offsets[b]), int(self.offsets[b + 1])
        return Hits(
            self.ids[lo:hi], self.scores[lo:hi], {n: v[lo:hi] for n, v in self.field_scores.items()},
            self.rows[lo:hi], self._documents, self.reasons[b], self.missing_shards,
        )

    @property
    def documents(self) -> list[dict[str, Any]]:
        """[N] every hit's stored document, query after query."""
        return self._every_hit().documents

    def to_arrow(self) -> pa.Table:
        """Every hit of the batch as one table: query (its position in the batch), id, score,
        score_<field> and the stored document's columns."""
        query = np.repeat(np.arange(len(self), dtype=np.int32), self.counts())
        return self._every_hit().to_arrow().add_column(0, "query", pa.array(query))

    def _every_hit(self) -> Hits:
        """The whole batch's hits as one list, query after query."""
        return Hits(self.ids, self.scores, self.field_scores, self.rows, self._documents)
