"""Documents and their metadata as one Arrow table in row order (rows are the indexes' ids)."""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .errors import InvalidRequest

ID = "id"


def document_id(document: Mapping[str, Any], number: int) -> str:
    """A document's id: its `id` (or BEIR `_id`), a non-empty string or an integer, as a string."""
    raw_id = document.get(ID, document.get("_id"))
    if isinstance(raw_id, bool) or not isinstance(raw_id, (str, int)) or str(raw_id).strip() == "":
        raise InvalidRequest(
            f"document {number} needs a non-empty string `id` (or BEIR `_id`), got {raw_id!r}"
        )
    return str(raw_id)


def documents_to_table(documents: Iterable[Mapping[str, Any]]) -> pa.Table:
    """Validate documents and lay them out as columns: `id` (string) first, then every other key.

    BEIR's `_id` is accepted for `id`, and a nested `metadata` mapping is flattened into columns.
    """
    rows = []
    seen: set[str] = set()
    for i, doc in enumerate(documents):
        if not isinstance(doc, Mapping):
            raise InvalidRequest(f"document {i} must be a mapping, got {type(doc).__name__}")
        row = {k: v for k, v in doc.items() if k not in ("_id", "metadata")}
        row[ID] = document_id(doc, i)
        if row[ID] in seen:
            raise InvalidRequest(f"document id {row[ID]!r} appears twice in one batch")
        seen.add(row[ID])
        metadata = doc.get("metadata")
        if isinstance(metadata, Mapping):
            for key, value in metadata.items():
                row.setdefault(key, value)
        rows.append(row)
    if not rows:
        raise InvalidRequest("no documents given")
    keys = list(dict.fromkeys(key for row in rows for key in row))  # every document's keys, not the first's
    try:
        table = pa.Table.from_pydict({key: [row.get(key) for row in rows] for key in keys})
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        raise InvalidRequest(f"documents have a key whose values mix types: {e}") from None
    except OverflowError:
        raise InvalidRequest(
            "a document holds an integer outside the 64-bit range; store it as a string"
        ) from None
    except UnicodeEncodeError as e:
        bad = e.object[e.start : e.end]
        raise InvalidRequest(
            f"a document holds text that is not valid Unicode ({e.reason}: {bad!r})"
        ) from None
    table = table.select([ID] + [c for c in table.column_names if c != ID])
    return table.drop_columns([c for c in table.column_names if pa.types.is_null(table.schema.field(c).type)])


def document_texts(table: pa.Table, text_keys: tuple[str, ...]) -> list[str]:
    """The text each document is encoded from: its text keys that are present, joined by spaces."""
    keys = [k for k in text_keys if k in table.column_names]
    if not keys:
        raise InvalidRequest(f"documents have none of the text keys {list(text_keys)} to encode")
    columns = [table.column(k).to_pylist() for k in keys]
    return [" ".join(str(v) for v in values if v) for values in zip(*columns)]


def concat(tables: list[pa.Table]) -> pa.Table:
    """Segments in row order as one table; columns missing from a segment become nulls."""
    if not tables:
        return pa.table({ID: pa.array([], pa.string())})
    try:
        return pa.concat_tables(tables, promote_options="default")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        raise InvalidRequest(f"new documents have a column whose type differs from the stored documents: {e}") from None


class DocumentTable:
    """Read access by row over the segments' tables (row order), memory-mapped where stored so.
    `parts` are the segments, each with its `lookup` of document ids (kept across versions)."""

    def __init__(self, tables: list[pa.Table], parts: list[Any]) -> None:
        self.table = concat(tables)  # zero-copy: the segments' chunks
        self._parts = parts
        self._starts = np.cumsum([0] + [t.num_rows for t in tables]).astype(np.int64)  # [S + 1]

    @property
    def num_rows(self) -> int:
        return self.table.num_rows

    def ids_at(self, rows: np.ndarray) -> list[list[str]]:
        """rows [B, k] (-1 allowed: those come back as None) -> ids [B][k]."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.full(rows.shape, None, dtype=object)
        found = rows >= 0
        out[found] = self.ids_of(rows[found])
        return out.tolist()

    def ids_of(self, rows: np.ndarray) -> list[str]:
        """rows [R] -> their ids, in order: one lookup per segment the rows fall in."""
        rows = np.asarray(rows, dtype=np.int64)
        if len(self._parts) == 1:
            return self._parts[0].lookup.at(rows)
        segment = np.searchsorted(self._starts, rows, side="right") - 1
        out = np.empty(len(rows), dtype=object)
        for s in np.unique(segment).tolist():
            mine = segment == s
            out[mine] = self._parts[s].lookup.at(rows[mine] - self._starts[s])
        return out.tolist()

    def take(self, rows: np.ndarray) -> list[dict[str, Any]]:
        return self.take_table(rows).to_pylist()

    def take_table(self, rows: np.ndarray) -> pa.Table:
        return self.table.take(pa.array(np.asarray(rows, dtype=np.int64)))


def page_by_id(table: pa.Table, allowed: np.ndarray | None, after: str | None, limit: int) -> pa.Table:
    """The `limit` rows with the smallest ids greater than `after` among the `allowed` rows [rows]
    (None: all), in id order. Paging by id needs no cursor state on the server and stays right
    while writes and merges renumber rows: each page is one vectorized pass over the ids."""
    keep = pa.array(np.ones(table.num_rows, bool) if allowed is None else allowed)
    if after is not None:
        keep = pc.and_(keep, pc.greater(table.column(ID), pa.scalar(after)))
    candidates = table.filter(keep)
    if candidates.num_rows > limit:
        candidates = candidates.take(pc.select_k_unstable(candidates, limit, [(ID, "ascending")]))
    return candidates.sort_by(ID)
