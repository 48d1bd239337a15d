"""Token embeddings for multi-vector fields: one L2-normalized vector per kept token.

Any sentence-transformers model works (its token embeddings before pooling). Special tokens
([CLS], [SEP]) and pure-punctuation tokens can be skipped; an optional seeded orthogonal
projection reduces the dimension. Queries and documents have their own max length and prefix.
"""

from __future__ import annotations

import string
from dataclasses import dataclass

import numpy as np

from retriever.errors import InvalidConfig

from .models import choose_device, model_precision, resolve_model, torch_dtype

_PUNCTUATION = set(string.punctuation)


@dataclass(frozen=True)
class TokenSettings:
    max_length: int
    prefix: str = ""


class TokenEncoder:
    """texts -> (tokens [T, d] float32, offsets [N + 1] int64)."""

    def __init__(self, model: str, *, device: str | None = None, batch_size: int = 32, token_dim: int | None = None,
                 skip_special: bool = True, skip_punctuation: bool = True, seed: int = 0, precision: str | None = None) -> None:
        from sentence_transformers import SentenceTransformer

        self.model_name = model
        self.device = device or choose_device()
        self.precision = model_precision(self.device, precision)  # fp16 on a GPU
        self.batch_size = batch_size
        path = resolve_model(model)
        try:
            self.model = SentenceTransformer(path, device=self.device)
        except (OSError, ValueError) as e:
            raise InvalidConfig(f"could not load sentence-transformers model {model!r} (resolved to {path!r}): {e}") from None
        self.model.to(torch_dtype(self.precision))
        tokenizer = self.model.tokenizer
        width = int(self.model[0].auto_model.config.hidden_size)
        if token_dim is not None and not 1 <= token_dim <= width:
            raise InvalidConfig(f"token_dim must be from 1 to the model's width {width}, got {token_dim}")
        self.projection = _orthogonal_projection(width, token_dim, seed) if token_dim and token_dim < width else None
        self.dim = token_dim or width
        vocab = tokenizer.convert_ids_to_tokens(list(range(tokenizer.vocab_size)))
        drop = np.zeros(tokenizer.vocab_size + len(tokenizer.get_added_vocab()) + 1, dtype=bool)
        if skip_special:
            drop[tokenizer.all_special_ids] = True
        if skip_punctuation:
            drop[[i for i, t in enumerate(vocab) if t and all(c in _PUNCTUATION for c in t.lstrip("#"))]] = True
        self._drop = drop  # [V] token ids whose vectors are not kept

    def encode(self, texts: list[str], settings: TokenSettings, *, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
        texts = [settings.prefix + t for t in texts]
        self.model.max_seq_length = settings.max_length
        vectors = self.model.encode(texts, output_value="token_embeddings", batch_size=self.batch_size,
                                    show_progress_bar=progress, convert_to_numpy=False)
        ids = self.model.tokenizer(texts, truncation=True, max_length=settings.max_length)["input_ids"]
        kept, lengths = [], np.zeros(len(texts), dtype=np.int64)
        for i, (v, token_ids) in enumerate(zip(vectors, ids)):
            keep = ~self._drop[np.asarray(token_ids, dtype=np.int64)[: len(v)]]
            v = v.float().cpu().numpy()[keep]
            kept.append(v)
            lengths[i] = len(v)
        tokens = np.concatenate(kept) if kept else np.zeros((0, self.dim), np.float32)
        if self.projection is not None:
            tokens = tokens @ self.projection
        norms = np.linalg.norm(tokens, axis=1, keepdims=True)
        tokens = (tokens / np.where(norms > 0, norms, 1)).astype(np.float32)
        return tokens, np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)


def _orthogonal_projection(width: int, dim: int, seed: int) -> np.ndarray:
    """[width, dim] with orthonormal columns (QR of a seeded Gaussian matrix)."""
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((width, dim)))
    return q.astype(np.float32)
