"""Result types returned by every search path (in-process and, later, remote)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import pyarrow as pa

if TYPE_CHECKING:
    from .documents import DocumentTable


def are_texts(queries: Any) -> bool:
    """Whether queries are texts: one text, or a non-empty list of texts."""
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
