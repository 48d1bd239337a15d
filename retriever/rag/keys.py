"""Content-addressed chunk-cache keys: the same chunk under the same model, tokenizer and shared
prefix gets the same key in every process; anything else gets another."""

from __future__ import annotations

import hashlib
import json

import numpy as np


def model_identity(model) -> str:
    """Architecture config plus a fingerprint of the weights (a strided sample of every tensor),
    so two checkpoints of one architecture never share cached KV."""
    digest = hashlib.sha256(model.config.to_json_string(use_diff=False).encode())
    for name, tensor in sorted(model.state_dict().items()):
        flat = tensor.detach().reshape(-1)
        sample = flat[:: max(1, flat.numel() // 64)][:64].float().cpu().numpy()
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(sample).tobytes())
    return digest.hexdigest()[:32]


def tokenizer_identity(tokenizer) -> str:
    """Class, vocabulary and special tokens: what maps text to the ids a cache entry holds."""
    vocab = sorted(tokenizer.get_vocab().items())
    payload = json.dumps([type(tokenizer).__name__, vocab, sorted(tokenizer.all_special_tokens)], ensure_ascii=False)
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def chunk_key(model_id: str, tokenizer_id: str, token_ids, after=()) -> str:
    """Key of a chunk's KV: its token ids computed right after the token ids `after` (the shared
    prefix, or for prefix caching everything before it)."""
    digest = hashlib.sha256(f"{model_id}/{tokenizer_id}/".encode())
    digest.update(np.asarray(list(after), dtype=np.int64).tobytes())
    digest.update(b"|")
    digest.update(np.asarray(list(token_ids), dtype=np.int64).tobytes())
    return digest.hexdigest()
