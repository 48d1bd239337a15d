"""A collection's text encoders by field, each loaded once, on first use: what a collection
encodes documents and queries with, and what a sharded collection's router encodes queries with."""

from __future__ import annotations

import threading
from typing import Any

from .config import CollectionConfig
from .encoders.models import LOADING
from .errors import InvalidRequest
from .fields import kind_of


class TextEncoders:
    """Fields with a `source` share their source's encoder; a field without a model has none."""

    def __init__(self, config: CollectionConfig) -> None:
        self.config = config
        self._loaded: dict[str, Any] = {}
        self._lock = threading.Lock()

    def get(self, field: str):
        """The field's text encoder (sentence-transformers model, BM25 tokenizer or masked-LM)."""
        config = self.config.field(field)
        if config.source is not None:
            return self.get(config.source)
        if not self.config.encodes_texts(field):
            raise InvalidRequest(
                f"field {field!r} has no model (its vectors were brought in); search it with vectors"
            )
        with self._lock:  # one load per field, however many searches ask at once
            if field not in self._loaded:
                with LOADING:
                    self._loaded[field] = kind_of(config).make_encoder(config)
            return self._loaded[field]
