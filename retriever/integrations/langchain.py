"""LangChain: a collection (local, or remote over gRPC) as a `VectorStore`; `as_retriever()`
gives its retriever.

    store = RetrieverVectorStore(retriever.connect("scifact"))          # the collection encodes
    store = RetrieverVectorStore(collection, embedding=my_embeddings)   # LangChain encodes
    store.as_retriever(search_kwargs={"k": 5, "filter": {"year": {"gte": 2000}}}).invoke("q")
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.vectorstores import VectorStore

from .base import Store


class RetrieverVectorStore(VectorStore):
    """Documents in a collection; texts are encoded by the collection's own model, or by
    `embedding` when given (for a dense field that brings its vectors)."""

    def __init__(self, collection, *, field: str | None = None, embedding: Embeddings | None = None,
                 params: Mapping[str, int] | None = None) -> None:
        self.store = Store(collection, field, params)
        self._embedding = embedding

    @property
    def embeddings(self) -> Embeddings | None:
        return self._embedding

    def add_texts(self, texts: Iterable[str], metadatas: list[dict] | None = None, *,
                  ids: list[str] | None = None, **kwargs: Any) -> list[str]:
        texts = list(texts)
        vectors = self._embedding.embed_documents(texts) if self._embedding else None
        return self.store.add(texts, metadatas, ids, vectors)

    def delete(self, ids: list[str] | None = None, **kwargs: Any) -> bool:
        if ids is None:
            raise ValueError("give the ids to delete")
        self.store.collection.delete(ids)
        return True

    def get_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        return [Document(page_content=text, metadata=meta, id=i) for i, text, meta in self.store.get(ids)]

    def similarity_search(self, query: str, k: int = 4, filter: Mapping[str, Any] | None = None,
                          **kwargs: Any) -> list[Document]:
        return [document for document, _ in self.similarity_search_with_score(query, k, filter)]

    def similarity_search_with_score(self, query: str, k: int = 4, filter: Mapping[str, Any] | None = None,
                                     **kwargs: Any) -> list[tuple[Document, float]]:
        if self._embedding is not None:
            return self._found(self._embedding.embed_query(query), k, filter)
        return self._found(query, k, filter)

    def similarity_search_by_vector(self, embedding: list[float], k: int = 4,
                                    filter: Mapping[str, Any] | None = None, **kwargs: Any) -> list[Document]:
        return [document for document, _ in self._found(embedding, k, filter)]

    def _found(self, query, k: int, filter) -> list[tuple[Document, float]]:
        return [(Document(page_content=text, metadata=meta, id=i), score)
                for i, text, meta, score in self.store.search(query, k, filter)]

    @classmethod
    def from_texts(cls, texts: list[str], embedding: Embeddings | None = None,
                   metadatas: list[dict] | None = None, *, collection=None, ids: list[str] | None = None,
                   **kwargs: Any) -> "RetrieverVectorStore":
        """A store over `collection` (required: a `Collection` or `RemoteCollection`) holding `texts`."""
        if collection is None:
            raise ValueError("from_texts needs collection=: a retriever Collection or RemoteCollection")
        store = cls(collection, embedding=embedding, **kwargs)
        store.add_texts(texts, metadatas, ids=ids)
        return store
