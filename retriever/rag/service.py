"""The process-wide generator behind `Collection.generate` and the `Generate` RPC: loaded on first
use (the LLM named by $RETRIEVER_LLM, default SmolLM2-135M-Instruct) with one chunk-cache store
(memory, then 8-bit entries on disk under the retriever cache folder), so chunks cached for one
request or collection serve the next."""

from __future__ import annotations

import os
import threading
from typing import Iterator

from .generate import Piece, RagGenerator
from .model import DEFAULT_LLM, cache_root, load_causal_lm
from .store import ChunkCacheStore, Tier

DEVICE_BYTES = 1 << 30
MEMORY_BYTES = 2 << 30
DISK_BYTES = 16 << 30

_lock = threading.Lock()
_shared: RagGenerator | None = None


def shared_generator() -> RagGenerator:
    global _shared
    with _lock:
        if _shared is None:
            model, tokenizer = load_causal_lm(os.environ.get("RETRIEVER_LLM", DEFAULT_LLM))
            tiers = [Tier("memory", MEMORY_BYTES), Tier("disk", DISK_BYTES, device="disk", bits=8, path=cache_root() / "kv-cache")]
            if next(model.parameters()).is_cuda:
                tiers.insert(0, Tier("device", DEVICE_BYTES, device="cuda"))
            _shared = RagGenerator(model, tokenizer, ChunkCacheStore(tiers))
        return _shared


def set_generator(generator: RagGenerator | None) -> None:
    """Use this generator (e.g. another model or store) for every later request; None resets."""
    global _shared
    with _lock:
        _shared = generator


def retrieve_and_answer(collection, question: str, k: int, *, mode: str, recompute_ratio: float | None,
                        max_new_tokens: int, fields, filter, params) -> Iterator[Piece]:
    """`question` checked, its top-k documents retrieved from `collection` (anything with
    `search` and `config`: one collection, a sharded one), and the answer's pieces over them."""
    from .generate import check_generation

    check_generation(question, mode, recompute_ratio, max_new_tokens)
    [hits] = collection.search(question, k, fields=fields, filter=filter, params=params)
    return answer(question, hits, collection.config.text_keys, mode=mode, recompute_ratio=recompute_ratio,
                  max_new_tokens=max_new_tokens)


def answer(question: str, hits, text_keys, *, mode: str, recompute_ratio: float | None, max_new_tokens: int) -> Iterator[Piece]:
    """Pieces of the answer over the retrieved hits; the last piece's stats also name the chunks used."""
    chunks = [" ".join(str(d[key]) for key in text_keys if d.get(key)) for d in hits.documents]
    return _pieces(shared_generator(), question, chunks, list(hits.ids), mode, recompute_ratio, max_new_tokens)


def _pieces(generator: RagGenerator, question, chunks, ids, mode, recompute_ratio, max_new_tokens) -> Iterator[Piece]:
    with generator.lock:  # one generation at a time per model: it uses every core already
        for piece in generator.generate(question, chunks, mode, recompute_ratio, max_new_tokens):
            yield piece if piece.stats is None else Piece(piece.text, {**piece.stats, "chunk_ids": ids})
