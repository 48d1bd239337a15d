"""Generation over retrieved chunks: build the prompt from token ids (so every mode sees the same
tokens), prefill it through the chunk cache, then decode greedily, yielding text as it comes."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch

from retriever.errors import InvalidRequest

from .assemble import MODES, Assembler, Prompt
from .keys import model_identity, tokenizer_identity
from .store import ChunkCacheStore, Tier

SYSTEM_PROMPT = "You are a helpful assistant. Answer the question using the documents."
DEFAULT_RECOMPUTE_RATIO = 0.2
ANCHOR_FILE = Path(__file__).with_name("anchor.txt")
CHUNK_MAX_TOKENS = 512
MAX_NEW_TOKENS = 4096
_SPLIT = "\x00"


@dataclass
class Piece:
    """One step of a generation: new text, and on the last piece the request's statistics."""

    text: str
    stats: dict[str, Any] | None = None


@dataclass
class RagGenerator:
    model: Any
    tokenizer: Any
    store: ChunkCacheStore = field(default_factory=lambda: ChunkCacheStore([Tier("cpu", 2 << 30)]))
    system_prompt: str = SYSTEM_PROMPT
    chunk_max_tokens: int = CHUNK_MAX_TOKENS
    selection: str = "attention"  # how blend picks the tokens to recompute (assemble.SELECTIONS)
    # Plain prose that chunks after the first are cached behind (assemble.py), so their KV has seen
    # documents before it, as it will in the prompt; None caches every chunk right after the system prompt.
    anchor_text: str | None = field(default_factory=lambda: ANCHOR_FILE.read_text(encoding="utf-8"))

    def __post_init__(self) -> None:
        self.lock = threading.Lock()
        self.assembler = Assembler(self.model, self.store, model_identity(self.model), tokenizer_identity(self.tokenizer))
        self._head, self._tail = self._template()
        # The same for every request, and the anchor is ~750 tokens: tokenized once, and immutable
        # because every request's Prompt shares them.
        self._prefix = tuple(self._encode(self._head + "Documents:\n\n"))
        self._anchor = tuple(self._encode(f"{self.anchor_text.strip()}\n\n")) if self.anchor_text else ()

    def prompt(self, question: str, chunks: list[str]) -> Prompt:
        return Prompt(self._prefix, [self._encode(f"{c.strip()}\n\n")[: self.chunk_max_tokens] for c in chunks],
                      self._encode(f"Question: {question.strip()}{self._tail}"), self._anchor)

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def generate(self, question: str, chunks: list[str], mode: str = "blend", recompute_ratio: float | None = None,
                 max_new_tokens: int = 128) -> Iterator[Piece]:
        """Yields pieces of the answer as tokens are decoded; the last piece carries the stats
        (cache hits and misses, tokens computed and recomputed, time to first token)."""
        check_generation(question, mode, recompute_ratio, max_new_tokens)
        ratio = DEFAULT_RECOMPUTE_RATIO if recompute_ratio is None else recompute_ratio
        began = time.perf_counter()
        prompt = self.prompt(question, chunks)
        logits, keys, values, stats = self.assembler.prefill(prompt, mode, ratio if mode == "blend" else 0.0, self.selection)
        first = int(torch.argmax(logits))
        summary = {**vars(stats), "recompute_ratio": ratio if mode == "blend" else None,
                   "time_to_first_token_s": time.perf_counter() - began}
        generated: list[int] = []
        shown = ""
        for token in self._decode(first, keys, values, max_new_tokens):
            generated.append(token)
            text = self.tokenizer.decode(generated, skip_special_tokens=True)
            if text.startswith(shown) and len(text) > len(shown):
                yield Piece(text[len(shown):])
                shown = text
        summary.update(new_tokens=len(generated), total_s=time.perf_counter() - began, store=self.store.summary())
        yield Piece("", summary)

    @torch.inference_mode()
    def compare(self, question: str, chunks: list[str], mode: str, recompute_ratio: float = 0.0, count: int = 32,
                reference: list[int] | None = None):
        """For judging a mode against `full` on one prompt: (first-token log-probabilities [vocab],
        the first `count` greedy tokens, and with `reference` tokens the greedy choice at each of
        their positions when they are fed in (teacher forcing), stats)."""
        prompt = self.prompt(question, chunks)
        logits, keys, values, stats = self.assembler.prefill(prompt, mode, recompute_ratio if mode == "blend" else 0.0, self.selection)
        first = int(torch.argmax(logits))
        tokens = list(self._decode(first, keys, values, count))
        forced = None
        if reference:
            device = next(self.model.parameters()).device
            out = self.model(input_ids=torch.tensor([reference[:-1]], device=device), past_key_values=self._cache(keys, values), use_cache=True)
            forced = [first, *out.logits[0].argmax(dim=-1).tolist()] if len(reference) > 1 else [first]
        return torch.log_softmax(logits.float(), dim=-1), tokens, forced, stats

    @torch.inference_mode()
    def _decode(self, first: int, keys, values, max_new_tokens: int) -> Iterator[int]:
        cache = self._cache(keys, values)
        token, eos = first, _eos_ids(self.tokenizer, self.model)
        device = next(self.model.parameters()).device
        for step in range(max_new_tokens):
            if token in eos:
                return
            yield token
            if step + 1 == max_new_tokens:
                return
            out = self.model(input_ids=torch.tensor([[token]], device=device), past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            token = int(torch.argmax(out.logits[0, -1]))

    def _cache(self, keys, values):
        """A Hugging Face cache holding the assembled prompt KV, for decoding on from it."""
        from transformers import DynamicCache

        cache = DynamicCache(config=self.model.config)
        for layer, (k, v) in enumerate(zip(keys, values)):
            cache.update(k, v, layer)
        return cache

    def _template(self) -> tuple[str, str]:
        """The chat template around the user message, split where the documents and question go."""
        if not getattr(self.tokenizer, "chat_template", None):
            return f"{self.system_prompt}\n\n", "\nAnswer:"
        messages = [{"role": "system", "content": self.system_prompt}, {"role": "user", "content": _SPLIT}]
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        head, tail = text.split(_SPLIT)
        return head, tail


def check_generation(question: Any, mode: Any, recompute_ratio: Any, max_new_tokens: Any) -> None:
    if not isinstance(question, str) or not question.strip():
        raise InvalidRequest("question must be a non-empty string")
    if mode not in MODES:
        raise InvalidRequest(f"mode must be one of {MODES}, got {mode!r}")
    if recompute_ratio is not None and (isinstance(recompute_ratio, bool) or not isinstance(recompute_ratio, (int, float))
                                        or not 0 <= recompute_ratio <= 1):
        raise InvalidRequest(f"recompute_ratio must be a number within [0, 1], got {recompute_ratio!r}")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or not 1 <= max_new_tokens <= MAX_NEW_TOKENS:
        raise InvalidRequest(f"max_new_tokens must be an integer from 1 to {MAX_NEW_TOKENS}, got {max_new_tokens!r}")


def _eos_ids(tokenizer, model) -> set[int]:
    ids = {tokenizer.eos_token_id, getattr(model.generation_config, "eos_token_id", None)}
    flat = set()
    for i in ids:
        flat.update(i if isinstance(i, (list, tuple)) else [i])
    return {i for i in flat if i is not None}
