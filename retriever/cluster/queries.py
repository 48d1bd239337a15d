"""Query texts encoded once, by the router, for every shard: a shard given texts would run the
model itself, so S shards would encode each query S times (on one machine, in the same seconds).

Fields whose query encoding reads the collection keep their texts: BM25 (each shard has its own
term ids) and inference-free sparse queries (weighted by collection-wide frequencies).
"""

from __future__ import annotations

from typing import Mapping

from retriever.config import CollectionConfig
from retriever.collection import check_batch_size, check_query_texts
from retriever.fields import kind_of
from retriever.text_encoders import TextEncoders
from retriever.types import are_texts


class QueryEncoder:
    """Encodes query texts with the collection's encoders, loaded on first use."""

    def __init__(self, config: CollectionConfig) -> None:
        self.config = config
        self.encoders = TextEncoders(config)
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
            texts = [value] if isinstance(value, str) else list(value)
            check_batch_size(len(texts), self.config.max_batch)  # before any encoding
            check_query_texts(texts, name)
            config = self.config.field(name)
            encoded = kind_of(config).encode_queries(config, self.encoders.get(name), texts, params or {})
            if encoded is not None:
                out[name] = encoded
        return out

    def warm(self) -> None:
        for field in self.config.fields:
            if self.config.encodes_texts(field.name):
                self.encoders.get(field.name)
