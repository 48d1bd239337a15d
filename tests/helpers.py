"""Shared test data: clustered vectors, documents with metadata, a tiny text corpus."""

import numpy as np


def random_vectors(n: int, dim: int, seed: int = 0) -> np.ndarray:
    """Clustered (not uniform) unit vectors, so approximate indexes behave as on real data."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(max(1, n // 50), dim))
    x = centers[rng.integers(0, len(centers), n)] + 0.5 * rng.normal(size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def sparse_vectors(n: int, seed: int, dim: int = 40) -> list[dict[int, float]]:
    """`n` random sparse vectors {term id: weight} over `dim` terms, 1 to 5 terms each."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 6, size=n)
    terms = [rng.choice(dim, size=s, replace=False) for s in sizes]
    return [{int(t): float(rng.uniform(0.1, 2)) for t in chosen} for chosen in terms]


def clouds(count: int, dim: int, seed: int, max_tokens: int = 12):
    """Random unit token vectors for `count` items -> (tokens [T, dim], offsets [count + 1])."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, max_tokens + 1, size=count)
    tokens = rng.standard_normal((int(sizes.sum()), dim)).astype(np.float32)
    tokens /= np.linalg.norm(tokens, axis=1, keepdims=True)
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    return tokens, offsets


def split(tokens, offsets):
    return [tokens[offsets[i]:offsets[i + 1]] for i in range(len(offsets) - 1)]


def vector_config(index: str = "Flat", dim: int = 16, **field) -> dict:
    return {"name": "vecs", "max_k": 100, "fields": [{"name": "dense", "dim": dim, "index": index, **field}]}


def make_docs(n: int, start: int = 0) -> list[dict]:
    langs = ["en", "fr", "de"]
    return [{"id": f"d{i}", "text": f"document {i}", "year": 1990 + i % 30, "lang": langs[i % 3]} for i in range(start, start + n)]



MINILM_CONFIG = """
name = "tiny"
[[fields]]
name = "dense"
kind = "dense"
model = "sentence-transformers/all-MiniLM-L6-v2"
index = "Flat"
"""

TINY_CORPUS = [
    {"_id": "cat", "title": "Cats", "text": "Cats are small domesticated felines that purr and chase mice."},
    {"_id": "dog", "title": "Dogs", "text": "Dogs are loyal domesticated canines that bark and fetch sticks."},
    {"_id": "sun", "title": "The Sun", "text": "The Sun is the star at the centre of the solar system, a ball of hot plasma."},
    {"_id": "rain", "title": "Rain", "text": "Rain is liquid water falling from clouds in drops.\u2028It waters crops."},
    {"_id": "python", "title": "Python", "text": "Python is a programming language known for readable code and many libraries."},
    {"_id": "bread", "title": "Bread", "text": "Bread is baked from flour, water and yeast in an oven."},
]


def tiny_llama(seed: int):
    """A random 2-layer Llama (no download), the same weights for the same seed in any process."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2)
    return LlamaForCausalLM(config).eval()


def word_tokenizer():
    """Whitespace words w0..w997 (others unknown): a tokenizer with no download."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, "</s>": 1, **{f"w{i}": i + 2 for i in range(998)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", eos_token="</s>")


def assert_same_top_k(scores, rows, ref_scores, ref_rows, atol=1e-3):
    """Tie-tolerant: scores equal; ids equal wherever the score is not tied with a neighbour."""
    np.testing.assert_allclose(scores, ref_scores, atol=atol, rtol=1e-4)
    for s, r, rr in zip(ref_scores, rows, ref_rows):
        untied = np.abs(np.diff(s, prepend=np.inf)) > atol
        untied &= np.abs(np.diff(s, append=-np.inf)) > atol
        assert set(r[untied]) == set(rr[untied])


def live_ids(collection) -> list[str]:
    """The ids of a collection's live documents, in row order."""
    ids = collection.documents.table.column("id").to_pylist()
    return [i for i, gone in zip(ids, collection.deleted) if not gone]


def slow_registry(delay: float):
    """A registry whose searches first hold their thread for `delay` seconds, so calls are surely
    in flight."""
    import time

    from retriever.registry import Registry

    class Slow(Registry):
        def reader(self, name):
            collection = super().reader(name)

            class Searcher:
                def search(self, **arguments):
                    time.sleep(delay)
                    return collection.search(**arguments)

            return Searcher()

    return Slow()


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def rotated_queries(n_docs=1500, n_queries=300, dim=32, seed=0):
    """Documents, and queries that are their source document turned by a rotation inside each
    4-dimension sub-space (PQ's sub-spaces with dim / 4 of them), so that k-means's centroids, fit
    to the documents, score queries worse than centroids trained on labelled queries can."""
    rng = np.random.default_rng(seed)
    docs = unit(rng.standard_normal((n_docs, dim)))
    turn = np.zeros((dim, dim))
    for m in range(dim // 4):
        skew = np.random.default_rng(m).standard_normal((4, 4))
        skew -= skew.T
        skew /= np.linalg.norm(skew)  # a rotation by Cayley's map: (I - A)^-1 (I + A), A skew
        turn[4 * m : 4 * m + 4, 4 * m : 4 * m + 4] = np.linalg.solve(np.eye(4) - skew, np.eye(4) + skew)
    source = rng.choice(n_docs, n_queries, replace=False)
    queries = (docs[source] @ turn.T + 0.05 * rng.standard_normal((n_queries, dim))).astype(np.float32)
    return docs, queries, source
