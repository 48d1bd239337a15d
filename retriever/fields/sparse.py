"""The `sparse` kind: learned term weights (SPLADE-style) from a masked-LM model or brought in,
stored as uint8 impacts; queries from the model, or inference-free (tokenize, weight by idf)."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from retriever.errors import InvalidConfig, InvalidRequest
from retriever.index.bm25 import VARIANTS
from retriever.index.sparse import SparseRows, build_segment

from .base import FLAG, ModelKind, FieldConfig, check_int, check_number
from .inverted import IMPACT_LEVELS, InvertedField, SparseDocuments, as_list, distinct_per_row

DEFAULT_MODEL = "splade-tiny"
QUERY_MODES = ("model", "inference-free")
QUERY_WEIGHTS = ("idf", "faster-clip")


@dataclass(frozen=True)
class SparseConfig(FieldConfig):
    """Learned term weights from a masked-LM `model` (default splade-tiny), or your own vectors
    over `dim` terms; documents keep their `top_terms` strongest terms above `min_weight`;
    `query` is "model" (encode queries too) or "inference-free" (tokenize only and weight each
    term by `query_weights`: "idf" from the collection, or the "faster-clip" table)."""

    dim: int | None = None
    query: str = "model"
    query_weights: str = "idf"
    top_terms: int | None = 256
    min_weight: float = 0.0

    def check(self) -> None:
        if self.model is None and self.dim is None:
            object.__setattr__(self, "model", DEFAULT_MODEL)
        check_int(self.where, "dim", self.dim, low=1, optional=True)
        check_int(self.where, "top_terms", self.top_terms, low=1, optional=True)
        if self.query not in QUERY_MODES:
            raise InvalidConfig(f"{self.where}: query must be one of {QUERY_MODES}, got {self.query!r}")
        if self.query_weights not in QUERY_WEIGHTS:
            raise InvalidConfig(
                f"{self.where}: query_weights must be one of {QUERY_WEIGHTS}, got {self.query_weights!r}"
            )
        check_number(self.where, "min_weight", self.min_weight, 0.0)


class SparseKind(ModelKind):
    name = "sparse"
    config = SparseConfig
    request_params = {"inference_free": FLAG}
    vector_input = False
    collection_statistics = True
    query_inputs = ("sparse",)

    def encode_queries(self, config: SparseConfig, encoder, texts: list[str], params: Mapping[str, int]):
        """Model queries; inference-free ones weigh terms by the collection's frequencies."""
        if config.query == "model" and not params.get("inference_free"):
            return encoder.encode(texts)
        return None

    def make_encoder(self, config: SparseConfig):
        from retriever.encoders.sparse import SpladeEncoder

        return SpladeEncoder(config.model, batch_size=config.batch_size, max_length=config.max_length)

    def initial_size(self, config: SparseConfig) -> int:
        return config.dim if config.dim is not None else self.make_encoder(config).vocab_size

    def create(self, path, config: SparseConfig, size: int):
        return LearnedSparseField.empty_entry(config, size)

    def open(self, path, config: SparseConfig, entry, files, segments, reuse) -> "LearnedSparseField":
        return LearnedSparseField.open(path, config, entry, files, segments, reuse)


SPARSE = SparseKind()


class LearnedSparseField(InvertedField):
    """uint8 impacts with a per-segment scale; queries from the model, or inference-free."""

    def info(self) -> dict[str, Any]:
        return {
            **super().info(),
            "query": self.config.query,
            "query_weights": self.config.query_weights,
            "top_terms": self.config.top_terms,
            "impacts": "uint8",
        }

    def posting_weights(self, i: int) -> np.ndarray:
        scale = np.float32(self.scales[i])
        return np.asarray(self.segments[i].values, dtype=np.float32) * scale

    def idf_of(self, df: np.ndarray, documents: int) -> np.ndarray:
        """Inference-free query weights: Lucene's idf of the document frequencies."""
        return VARIANTS["lucene"].idf(df.astype(np.float64), documents).astype(np.float32)

    def check_documents(self, given, count: int) -> SparseDocuments:
        vectors = SparseRows.from_pairs(
            as_list(given, "sparse document vectors"), "sparse document vector", self.num_terms
        )
        if len(vectors) != count:
            raise InvalidRequest(
                f"{count} documents but {len(vectors)} sparse vectors for field {self.config.name!r}"
            )
        return SparseDocuments(vectors)

    def documents_from_texts(self, encoder, texts: list[str], progress: bool = False) -> SparseDocuments:
        return SparseDocuments(
            encoder.encode(
                texts, top_terms=self.config.top_terms, min_weight=self.config.min_weight, progress=progress
            )
        )

    def queries_from_texts(self, encoder, texts: list[str], params: Mapping[str, int]) -> SparseRows:
        """Model queries, or inference-free ones (config `query`, or the request's `inference_free=1`)."""
        encoded = SPARSE.encode_queries(self.config, encoder, texts, params)
        if encoded is not None:
            return encoded
        if self.config.query_weights == "faster-clip":
            return self.queries_from_table([_faster_clip().encode_query(t) for t in texts])
        return self.queries_from_token_ids(encoder.token_ids(texts))

    def queries_from_token_ids(self, token_ids: list[np.ndarray]) -> SparseRows:
        """Inference-free: each distinct query token weighted by its idf; terms no document holds drop out."""
        rows = distinct_per_row(self._known(token_ids))
        return SparseRows(rows.indptr, rows.terms, self.query_idf(rows.terms))

    def _known(self, token_ids: list[np.ndarray]) -> list[list[int]]:
        df = self.df
        return [[t for t in ids.tolist() if t < self.num_terms and df[t] > 0] for ids in token_ids]

    def query_terms(
        self, encoder, texts: list[str], params: Mapping[str, int]
    ) -> list[tuple[str, int]] | None:
        """Inference-free queries weighted by idf read the frequencies of their tokens."""
        model = self.config.query == "model" and not params.get("inference_free")
        if model or self.config.query_weights != "idf":
            return None
        known = {t for ids in self._known(encoder.token_ids(texts)) for t in ids}
        return [(str(t), t) for t in sorted(known)]

    def queries_from_table(self, tables: list[dict]) -> SparseRows:
        """Inference-free with a fixed token weight table ({token id: weight} per query)."""
        return self.check_queries(
            [{int(t): float(w) for t, w in table.items() if int(t) < self.num_terms} for table in tables]
        )

    def _new_segment(self, documents, num_terms):
        vectors = documents.vectors
        top = float(vectors.values.max()) if len(vectors.values) else 0.0
        scale = top / IMPACT_LEVELS if top > 0 else 1.0
        impacts = np.rint(vectors.values / scale)
        keep = impacts > 0  # weights that quantize to nothing are dropped
        sizes = np.add.reduceat(keep, vectors.indptr[:-1]) if len(keep) else np.zeros(len(vectors), np.int64)
        sizes = np.where(np.diff(vectors.indptr) > 0, sizes, 0)
        indptr = np.zeros(len(vectors) + 1, dtype=np.int64)
        np.cumsum(sizes, out=indptr[1:])
        kept = SparseRows(indptr, vectors.terms[keep], impacts[keep])
        return build_segment(kept, 0, num_terms, np.uint8), scale


@functools.cache
def _faster_clip():
    try:
        import faster_clip
    except ImportError:
        raise InvalidRequest(
            "query_weights = 'faster-clip' needs the faster-clip package: pip install faster-clip==0.4.0"
        ) from None
    return faster_clip.SparseEncoder()
