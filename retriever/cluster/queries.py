"""Query texts encoded once, by the router, for every shard: a shard given texts would run the
model itself, so S shards would encode each query S times (on one machine, in the same seconds).

Fields whose query encoding reads the collection keep their texts: BM25 (each shard has its own
term ids) and inference-free sparse queries (weighted by collection-wide frequencies).
"""

from __future__ import annotations

import threading
from typing import Any, Mapping

from retriever.config import CollectionConfig
from retriever.encoders.models import LOADING
from retriever.errors import InvalidRequest
from retriever.fields import kind_of
from retriever.types import are_texts


class QueryEncoder:
    """The collection's text encoders, loaded on first use (one per model, shared by fields with a
    `source`)."""

    def __init__(self, config: CollectionConfig) -> None:
        self.config = config
        self._encoders: dict[str, Any] = {}
        self._lock = threading.Lock()

    def encoded(self, queries, names: list[str], params: Mapping[str, int] | None):
        """`queries` as the shards take them: {field: its queries} with texts encoded where the
        model alone encodes them; anything but texts goes on as given."""
        if isinstance(queries, Mapping):
            given = dict(queries)
        elif are_texts(queries):
            given = {n: queries for n in names}
        else:
            return queries  # vectors for one field: nothing to encode
        out = {}
        for name, value in given.items():
            out[name] = value
            if name not in names or not are_texts(value) or not self.config.encodes_texts(name):
                continue
            texts = self._checked([value] if isinstance(value, str) else list(value), name)
            config = self.config.field(name)
            encoded = kind_of(config).encode_queries(config, self.encoder(name), texts, params or {})
            if encoded is not None:
                out[name] = encoded
        return out

    def warm(self) -> None:
        for field in self.config.fields:
            if self.config.encodes_texts(field.name):
                self.encoder(field.name)

    def encoder(self, name: str):
        config = self.config.field(name)
        if config.source is not None:
            return self.encoder(config.source)
        with self._lock:
            if name not in self._encoders:
                with LOADING:
                    self._encoders[name] = kind_of(config).make_encoder(config)
            return self._encoders[name]

    def _checked(self, texts: list[str], name: str) -> list[str]:
        """The checks a collection makes of texts before encoding them (batch size, empty texts)."""
        if len(texts) > self.config.max_batch:
            raise InvalidRequest(
                f"{len(texts)} queries in one request; the collection's max_batch is {self.config.max_batch}"
            )
        for i, text in enumerate(texts):
            if not text.strip():
                raise InvalidRequest(f"query {i} is empty (field {name!r})")
        return texts
