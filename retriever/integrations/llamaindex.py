"""LlamaIndex: a collection (local, or remote over gRPC) as a retriever that encodes queries
with the collection's own model, and as a vector store for indexes that bring their own
embeddings.

    CollectionRetriever(retriever.connect("scifact"), k=5).retrieve("what causes rain?")
    store = RetrieverVectorStore(collection)           # a dense field without a model
    index = VectorStoreIndex.from_vector_store(store, embed_model=...)
"""

from __future__ import annotations

from typing import Any, Mapping

from llama_index.core.retrievers import BaseRetriever
from llama_index.core.schema import BaseNode, NodeWithScore, QueryBundle, TextNode
from llama_index.core.vector_stores.types import (
    BasePydanticVectorStore,
    FilterOperator,
    MetadataFilters,
    VectorStoreQuery,
    VectorStoreQueryResult,
)
from pydantic import PrivateAttr

from .base import Store

REF_DOC_ID = "ref_doc_id"  # the metadata key that ties a node to its source document
_OPERATORS = {FilterOperator.EQ: "eq", FilterOperator.IN: "in", FilterOperator.GT: "gt",
              FilterOperator.GTE: "gte", FilterOperator.LT: "lt", FilterOperator.LTE: "lte"}


class CollectionRetriever(BaseRetriever):
    """Top-k nodes for a query text, encoded by the collection itself (any field kind)."""

    def __init__(self, collection, *, k: int = 10, field: str | None = None,
                 filter: Mapping[str, Any] | None = None, params: Mapping[str, int] | None = None) -> None:
        super().__init__()
        self._store, self._k, self._filter = Store(collection, field, params), k, filter

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        return _nodes(self._store.search(query_bundle.query_str, self._k, self._filter))


class RetrieverVectorStore(BasePydanticVectorStore):
    """Nodes in a collection, with the embeddings LlamaIndex computed (or, for nodes without
    one, the collection's own encoding). Metadata filters with eq, in, gt, gte, lt, lte, all
    required (AND), map to the collection's filters."""

    stores_text: bool = True
    _store: Store = PrivateAttr()

    def __init__(
        self, collection, *, field: str | None = None, params: Mapping[str, int] | None = None
    ) -> None:
        super().__init__()
        self._store = Store(collection, field, params)

    @property
    def client(self):
        return self._store.collection

    def add(self, nodes: list[BaseNode], **kwargs: Any) -> list[str]:
        embeddings = [node.embedding for node in nodes]
        vectors = embeddings if all(e is not None for e in embeddings) else None
        metadatas = [{**node.metadata, REF_DOC_ID: node.ref_doc_id} for node in nodes]
        texts = [node.get_content() for node in nodes]
        return self._store.add(texts, metadatas, [node.node_id for node in nodes], vectors)

    def delete(self, ref_doc_id: str, **kwargs: Any) -> None:
        """Every node of the source document `ref_doc_id`."""
        collection, ids, after = self._store.collection, [], None
        while True:
            page, after = collection.scroll({REF_DOC_ID: ref_doc_id}, limit=1000, after=after)
            ids += [document["id"] for document in page]
            if after is None:
                break
        if ids:
            collection.delete(ids)

    def query(self, query: VectorStoreQuery, **kwargs: Any) -> VectorStoreQueryResult:
        asked = query.query_embedding if query.query_embedding is not None else query.query_str
        found = _nodes(self._store.search(asked, query.similarity_top_k, _filter(query.filters)))
        return VectorStoreQueryResult(nodes=[n.node for n in found], similarities=[n.score for n in found],
                                      ids=[n.node.node_id for n in found])


def _nodes(found) -> list[NodeWithScore]:
    return [NodeWithScore(node=TextNode(id_=i, text=text, metadata=meta), score=score)
            for i, text, meta, score in found]


def _filter(filters: MetadataFilters | None) -> dict[str, Any] | None:
    if filters is None or not filters.filters:
        return None
    if str(filters.condition).lower().endswith("or"):
        raise ValueError("only metadata filters that must all hold (AND) are supported")
    conditions: dict[str, dict[str, Any]] = {}
    for f in filters.filters:
        if isinstance(f, MetadataFilters) or f.operator not in _OPERATORS:
            raise ValueError(f"metadata filter {f!r} is not supported; use eq, in, gt, gte, lt or lte")
        conditions.setdefault(f.key, {})[_OPERATORS[f.operator]] = f.value
    return conditions
