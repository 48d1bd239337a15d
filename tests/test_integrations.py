"""LangChain and LlamaIndex adapters, with the real libraries, over local and remote collections:
what they return is what `Collection.search` returns, documents and metadata round-trip."""

import tomllib

import numpy as np
import pytest

import retriever
from helpers import MINILM_CONFIG, TINY_CORPUS
from retriever.config import CollectionConfig
from retriever.registry import Registry
from retriever.server import Server, ServerOptions

pytest.importorskip("langchain_core")
pytest.importorskip("llama_index.core")

from langchain_core.embeddings import DeterministicFakeEmbedding  # noqa: E402
from llama_index.core import Document as LlamaDocument  # noqa: E402
from llama_index.core import StorageContext, VectorStoreIndex  # noqa: E402
from llama_index.core.embeddings import MockEmbedding  # noqa: E402
from llama_index.core.vector_stores.types import (  # noqa: E402
    FilterOperator,
    MetadataFilter,
    MetadataFilters,
)

from retriever.integrations import langchain as lc  # noqa: E402
from retriever.integrations import llamaindex as li  # noqa: E402

DIM = 16


@pytest.fixture(scope="module")
def collections(tmp_path_factory):
    """{"local", "remote"}: the same two collections, in-process and over gRPC (a MiniLM one that
    encodes itself, and a 16-d one whose vectors the framework brings)."""
    root = tmp_path_factory.mktemp("integrations")
    config = CollectionConfig.from_dict(tomllib.loads(MINILM_CONFIG))
    text = retriever.Collection.create(root / "tiny", config)
    text.add([{**d, "kind": "animal" if d["_id"] in ("cat", "dog") else "other"} for d in TINY_CORPUS])
    retriever.Collection.create(root / "vecs", {"name": "vecs", "fields": [{"name": "dense", "dim": DIM}]})
    server = Server(Registry.open([root / "tiny", root / "vecs"]), ServerOptions(port=0)).start()
    url = f"grpc://127.0.0.1:{server.port}"
    yield {"local": {n: retriever.Collection.open(root / n) for n in ("tiny", "vecs")},
           "remote": {n: retriever.connect(f"{url}/{n}") for n in ("tiny", "vecs")}}
    server.stop()


@pytest.mark.parametrize("where", ["local", "remote"])
def test_langchain_store_over_a_collection_that_encodes(collections, where):
    collection = collections[where]["tiny"]
    store = lc.RetrieverVectorStore(collection)
    expected = collection.search("which animal barks?", k=3)[0]
    found = store.similarity_search_with_score("which animal barks?", k=3)
    assert [d.id for d, _ in found] == expected.ids
    assert [s for _, s in found] == pytest.approx(expected.scores.tolist())
    dog = found[0][0]
    assert dog.page_content == "Dogs\nDogs are loyal domesticated canines that bark and fetch sticks."
    assert dog.metadata == {"kind": "animal"}
    asked = {"k": 2, "filter": {"kind": "other"}}
    found = store.as_retriever(search_kwargs=asked).invoke("pets")
    assert [d.id for d in found] == collection.search("pets", k=2, filter={"kind": "other"})[0].ids
    assert [d.id for d in store.get_by_ids(["cat", "nope"])] == ["cat"]


@pytest.mark.parametrize("where", ["local", "remote"])
def test_langchain_store_with_its_own_embeddings(collections, where):
    collection = collections[where]["vecs"]
    embedding = DeterministicFakeEmbedding(size=DIM)
    texts = [f"{where} note {i}" for i in range(6)]
    store = lc.RetrieverVectorStore.from_texts(texts, embedding, [{"n": i} for i in range(6)],
                                               collection=collection, ids=[f"{where}{i}" for i in range(6)])
    [top] = store.similarity_search(texts[4], k=1)  # the fake embedding is a hash: a text finds itself
    assert top.id == f"{where}4" and top.page_content == texts[4] and top.metadata == {"n": 4}
    by_vector = store.similarity_search_by_vector(embedding.embed_query(texts[2]), k=2)
    expected = collection.search(np.asarray([embedding.embed_query(texts[2])], np.float32), k=2)[0].ids
    assert [d.id for d in by_vector] == expected
    store.delete([f"{where}4"])
    assert store.get_by_ids([f"{where}4"]) == []


@pytest.mark.parametrize("where", ["local", "remote"])
def test_llamaindex_retriever_over_a_collection_that_encodes(collections, where):
    collection = collections[where]["tiny"]
    nodes = li.CollectionRetriever(collection, k=3, filter={"kind": "animal"}).retrieve("which animal purrs?")
    expected = collection.search("which animal purrs?", k=3, filter={"kind": "animal"})[0]
    assert [n.node.node_id for n in nodes] == expected.ids == ["cat", "dog"]
    assert nodes[0].node.get_content().startswith("Cats")
    assert nodes[0].score == pytest.approx(expected.scores[0])


@pytest.mark.parametrize("where", ["local", "remote"])
def test_llamaindex_vector_store_index(collections, where):
    collection = collections[where]["vecs"]
    store = li.RetrieverVectorStore(collection)
    documents = [LlamaDocument(text=f"{where} page {i}", metadata={"page": i, "at": where},
                                doc_id=f"{where}-doc{i}")
                 for i in range(6)]
    embed = MockEmbedding(embed_dim=DIM)
    index = VectorStoreIndex.from_documents(
        documents, storage_context=StorageContext.from_defaults(vector_store=store), embed_model=embed)
    filters = MetadataFilters(filters=[MetadataFilter(key="page", value=2, operator=FilterOperator.GTE),
                                       MetadataFilter(key="at", value=where)])
    found = index.as_retriever(similarity_top_k=10, filters=filters).retrieve(f"{where} page 1")
    assert sorted(n.node.get_content() for n in found) == [f"{where} page {i}" for i in (2, 3, 4, 5)]
    before = collection.count()
    store.delete(f"{where}-doc2")  # the nodes of that document
    assert collection.count() == before - 1 and collection.count({"ref_doc_id": f"{where}-doc2"}) == 0
    assert collection.count({"ref_doc_id": f"{where}-doc3"}) == 1
    with pytest.raises(ValueError, match="not supported"):
        text_match = MetadataFilter(key="page", value="x", operator=FilterOperator.TEXT_MATCH)
        bad = MetadataFilters(filters=[text_match])
        index.as_retriever(filters=bad).retrieve("x")
