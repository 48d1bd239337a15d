"""What every adapter shares: one collection (local or remote), its documents as (text,
metadata), and searches by text or by vector through the one `search` call."""

from __future__ import annotations

import uuid
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

ID = "id"


class Store:
    """A collection as the adapters use it. `field` is the field searched; `embed` (texts ->
    vectors), when given, embeds texts on the framework's side for a field that has no model."""

    def __init__(self, collection, field: str | None = None, params: Mapping[str, int] | None = None) -> None:
        self.collection = collection
        schema = collection.schema()
        self.field = field or schema["fields"][0]["name"]
        self.text_keys = tuple(schema["text_keys"])
        self.text_key = self.text_keys[-1]  # where added texts go ("text" by default)
        self.params = dict(params or {})

    def add(self, texts: Sequence[str], metadatas: Sequence[Mapping[str, Any]] | None = None,
            ids: Sequence[str] | None = None, vectors: np.ndarray | None = None) -> list[str]:
        ids = list(ids) if ids is not None else [str(uuid.uuid4()) for _ in texts]
        metadatas = list(metadatas) if metadatas is not None else [{} for _ in texts]
        documents = [{**meta, ID: i, self.text_key: t} for t, meta, i in zip(texts, metadatas, ids)]
        self.collection.add(documents, vectors=None if vectors is None else {self.field: vectors})
        return ids

    def search(self, query: str | np.ndarray, k: int, filter: Mapping[str, Any] | None = None):
        """[(id, text, metadata, score)] best first, for one text or one vector."""
        if not isinstance(query, str):
            query = np.asarray(query, dtype=np.float32)[None, :]
        params = self.params or None
        [hits] = self.collection.search(query, k=k, fields=self.field, filter=filter, params=params)
        return [(i, *self.split(d), float(s)) for i, d, s in zip(hits.ids, hits.documents, hits.scores)]

    def get(self, ids: Iterable[str]) -> list[tuple[str, str, dict[str, Any]]]:
        found = self.collection.get(list(ids))
        return [(d[ID], *self.split(d)) for d in found if d is not None]

    def split(self, document: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
        """A stored document -> (its text: the text keys it has, joined; the rest, its metadata)."""
        text = "\n".join(str(document[key]) for key in self.text_keys if document.get(key))
        skip = {*self.text_keys, ID}
        return text, {key: v for key, v in document.items() if key not in skip and v is not None}
