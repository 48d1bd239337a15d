"""Prefill a RAG prompt from cached chunk KV: place each chunk's cache at its position (re-rotated
keys), recompute the share of chunk tokens that matter most with the whole prompt as context (by
default those the prompt's last token attends to most over the cached KV; CacheBlend's layer-1 KV deviation
is the other choice), and prefill the question on top. Works for Hugging Face causal LMs with rotary
embeddings whose decoder layers follow the Llama layout (Llama, Qwen2, Mistral).

Prompt layout: [shared prefix][chunk 1]...[chunk k][question], positions 0..T-1 in that order.
A chunk's KV is computed once (APE: chunks encoded in parallel): for the first slot right after the
shared prefix, where it sits in the prompt, so that cache is exact; for later slots after the prefix
and fixed stand-in documents (the anchor), so the cache has already seen documents before the chunk,
as it will in the prompt. Cached right after the prefix, a chunk's KV is that of a first document,
and that, more than which documents precede it, is what makes it stale (docs/benchmarks.md).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from .keys import chunk_key
from .kv import ChunkKV, deviation, rerotate, rotate
from .store import ChunkCacheStore

DEVIATION_LAYER = 1  # the first layer whose KV depends on context (layer 0's depends on token and position only)
MODES = ("full", "prefix", "reuse", "blend")
SELECTIONS = ("attention", "deviation")


@dataclass(frozen=True)
class Prompt:
    prefix: Sequence[int]
    chunks: list[list[int]]
    question: list[int]
    anchor: Sequence[int] = ()  # stand-in document the chunks after the first are cached behind

    @property
    def ids(self) -> list[int]:
        return [*self.prefix, *(t for c in self.chunks for t in c), *self.question]

    @property
    def chunk_starts(self) -> list[int]:
        starts, at = [], len(self.prefix)
        for chunk in self.chunks:
            starts.append(at)
            at += len(chunk)
        return starts


@dataclass
class PrefillStats:
    mode: str
    prompt_tokens: int = 0
    chunk_tokens: int = 0
    cache_hits: int = 0
    cache_misses: int = 0
    tokens_computed: int = 0  # tokens run through every layer for this request (question included)
    tokens_recomputed: int = 0  # chunk tokens whose cached KV was replaced (blend)


class SlotCache:
    """What decoder layers see as their KV cache: the whole prompt's keys / values per layer, into
    which the tokens being run write their fresh KV (at `slots`) before attending to all of it."""

    def __init__(self, keys: list[torch.Tensor], values: list[torch.Tensor], slots: torch.Tensor) -> None:
        self.keys, self.values, self.slots = keys, values, slots

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        self.keys[layer_idx][:, :, self.slots] = key_states.to(self.keys[layer_idx].dtype)
        self.values[layer_idx][:, :, self.slots] = value_states.to(self.values[layer_idx].dtype)
        return self.keys[layer_idx], self.values[layer_idx]


class Assembler:
    """Builds the prompt's KV for one model and tokenizer, with a chunk-cache store."""

    def __init__(self, model, store: ChunkCacheStore, model_id: str, tokenizer_id: str) -> None:
        self.model = model
        self.store = store
        self.model_id, self.tokenizer_id = model_id, tokenizer_id
        config = model.config
        self.layers = config.num_hidden_layers
        self.kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype

    # ---- prefill modes ---------------------------------------------------------------------------

    @torch.inference_mode()
    def prefill(self, prompt: Prompt, mode: str, recompute_ratio: float = 0.0, selection: str = "attention") -> tuple[torch.Tensor, list, list, PrefillStats]:
        """-> (logits of the last prompt token [vocab], keys, values per layer [1, H, T, D], stats).
        `selection` picks blend's tokens to recompute: "attention" (what the prompt's last token
        attends to over the cached KV) or "deviation" (CacheBlend's layer-1 KV deviation)."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if selection not in SELECTIONS:
            raise ValueError(f"selection must be one of {SELECTIONS}, got {selection!r}")
        stats = PrefillStats(mode, prompt_tokens=len(prompt.ids), chunk_tokens=sum(map(len, prompt.chunks)))
        keys, values = self._empty(len(prompt.ids))
        if mode == "full":
            to_compute = list(range(len(prompt.ids)))
        elif mode == "prefix":
            to_compute = self._place_cached_prefix(prompt, keys, values, stats)
        else:
            self._place_chunks(prompt, keys, values, stats)
            recompute = self.select(prompt, keys, values, recompute_ratio, selection) if mode == "blend" else []
            stats.tokens_recomputed = len(recompute)
            to_compute = [*recompute, *range(len(prompt.ids) - len(prompt.question), len(prompt.ids))]
        computing = time.perf_counter()
        hidden = self.run(prompt.ids, to_compute, keys, values)
        stats.tokens_computed = len(to_compute)
        if mode == "prefix":
            self._store_prefix_segments(prompt, keys, values, to_compute, (time.perf_counter() - computing) / max(len(to_compute), 1))
        logits = self.model.lm_head(self.model.model.norm(hidden[:, -1:]))[0, -1]
        return logits, keys, values, stats

    def _place_chunks(self, prompt: Prompt, keys, values, stats: PrefillStats) -> None:
        """Prefix and chunks from cache (computed on a miss), each chunk's keys re-rotated to its
        place: the first chunk as cached after the prefix, the others as cached after prefix + anchor."""
        p = len(prompt.prefix)
        prefix_kv = self._cached(prompt.prefix, (), 0, stats)
        self._write(keys, values, prefix_kv, 0)
        behind_anchor = [*prompt.prefix, *prompt.anchor]

        @functools.cache  # only a miss needs it (the anchor's KV is large), and then once per request
        def prefix_and_anchor() -> ChunkKV:
            anchor_kv = self._cached(prompt.anchor, prompt.prefix, p, stats, lambda: prefix_kv)
            return ChunkKV(torch.cat([prefix_kv.keys, anchor_kv.keys], dim=2), torch.cat([prefix_kv.values, anchor_kv.values], dim=2), 0)

        for n, (chunk, at) in enumerate(zip(prompt.chunks, prompt.chunk_starts)):
            if n == 0 or not prompt.anchor:
                kv = self._cached(chunk, prompt.prefix, p, stats, lambda: prefix_kv)
            else:
                kv = self._cached(chunk, behind_anchor, len(behind_anchor), stats, prefix_and_anchor)
            moved = ChunkKV(rerotate(kv.keys, at - kv.start, self.model.model.rotary_emb), kv.values, at)
            self._write(keys, values, moved, at)

    def _cached(self, ids: Sequence[int], after: Sequence[int], start: int, stats: PrefillStats,
                before: Callable[[], ChunkKV] | None = None) -> ChunkKV:
        """The KV of `ids` computed right after `after` (whose KV `before` gives), from the store or computed and stored."""
        key = chunk_key(self.model_id, self.tokenizer_id, ids, after)
        kv = self.store.get(key, dtype=self.dtype)
        if kv is not None:
            stats.cache_hits += 1
            return kv.to(device=self.device)
        stats.cache_misses += 1
        context = before() if before else None
        began = time.perf_counter()
        kv = self._compute_alone(ids, start, context)
        self.store.put(key, kv, cost=time.perf_counter() - began)
        return kv

    def _compute_alone(self, ids: list[int], start: int, before: ChunkKV | None) -> ChunkKV:
        keys, values = self._empty(start + len(ids))
        if before is not None:
            self._write(keys, values, before, 0)
        self.run(ids if before is None else [0] * start + list(ids), list(range(start, start + len(ids))), keys, values)
        return ChunkKV(torch.cat([k[:, :, start:] for k in keys]), torch.cat([v[:, :, start:] for v in values]), start)

    @torch.inference_mode()
    def select(self, prompt: Prompt, keys, values, ratio: float, selection: str) -> list[int]:
        """The `ratio` share of chunk tokens (counted over every chunk) to recompute with the whole
        prompt as context. Only stale slots are candidates: the first chunk sits right after the
        shared prefix, where its KV was computed, so its cache is already exact."""
        chunk_positions = range(len(prompt.prefix), len(prompt.ids) - len(prompt.question))
        stale = list(chunk_positions[len(prompt.chunks[0]) :]) if prompt.chunks else []
        count = min(round(ratio * len(chunk_positions)), len(stale))
        if count <= 0:
            return []
        if count == len(stale):
            return stale
        slots = torch.tensor(stale, device=self.device)
        if selection == "attention":
            weight = self._question_attention(prompt, keys, values)[slots]
        else:
            weight = self._deviation(prompt, keys, values, slots)
        chosen = torch.topk(weight, count).indices.sort().values
        return [stale[i] for i in chosen.tolist()]

    def _question_attention(self, prompt: Prompt, keys, values) -> torch.Tensor:
        """Attention each prompt slot gets from the prompt's last token over the cached KV, summed
        over layers and heads [T]. That token produces the first answer token, so these are the
        chunk tokens the answer leans on, whose cache error costs most (Cache-Craft's focus on
        attended tokens; on SciFact it agrees with full prefill on the first token more often than
        attention summed over every question token). One cheap pass of the question; the KV it
        leaves in the question's slots is overwritten by the real pass."""
        inner = self.model.model
        asked = list(range(len(prompt.ids) - len(prompt.question), len(prompt.ids)))
        inputs: dict[int, torch.Tensor] = {}
        hooks = [layer.self_attn.register_forward_pre_hook(_keep_last_input(inputs, i), with_kwargs=True) for i, layer in enumerate(inner.layers)]
        try:
            self.run(prompt.ids, asked, keys, values)
        finally:
            for hook in hooks:
                hook.remove()
        last = torch.tensor([len(prompt.ids) - 1], device=self.device)
        cos, sin = inner.rotary_emb(inputs[0], last[None])
        total = torch.zeros(len(prompt.ids), device=self.device)
        for i, layer in enumerate(inner.layers):
            attention = layer.self_attn
            queries = attention.q_proj(inputs[i]).view(1, 1, -1, self.head_dim).transpose(1, 2)  # [1, H, 1, D]
            queries = rotate(queries, cos[:, None], sin[:, None])
            grouped = queries.reshape(1, self.kv_heads, -1, self.head_dim)  # query heads share their KV head's keys
            scores = (grouped @ keys[i].transpose(-1, -2)).float() * getattr(attention, "scaling", self.head_dim**-0.5)
            total += scores.softmax(dim=-1).sum(dim=(0, 1, 2))
        return total

    def _deviation(self, prompt: Prompt, keys, values, slots: torch.Tensor) -> torch.Tensor:
        """How far each chunk token's layer-1 KV moves when computed with the whole prompt before
        it (CacheBlend's selection): a two-layer pass over all chunk tokens [chunk tokens]."""
        fresh_keys = [k.clone() for k in keys[: DEVIATION_LAYER + 1]]
        fresh_values = [v.clone() for v in values[: DEVIATION_LAYER + 1]]
        self.run(prompt.ids, slots.tolist(), fresh_keys, fresh_values, layers=DEVIATION_LAYER + 1)
        layer = DEVIATION_LAYER
        return deviation(fresh_keys[layer], fresh_values[layer], keys[layer], values[layer], slots)

    def _place_cached_prefix(self, prompt: Prompt, keys, values, stats: PrefillStats) -> list[int]:
        """Exact-prefix caching (as vLLM): segment j (the prefix, then each chunk) is cached under
        everything before it, so it can only be reused after the very same tokens. Returns the
        positions still to compute: from the first segment missing to the end."""
        segments = [prompt.prefix, *prompt.chunks]
        at, before = 0, []
        for ids in segments:
            kv = self.store.get(chunk_key(self.model_id, self.tokenizer_id, ids, before), dtype=self.dtype)
            if kv is None:
                stats.cache_misses += 1
                break
            stats.cache_hits += 1
            self._write(keys, values, kv.to(device=self.device), at)
            at += len(ids)
            before = [*before, *ids]
        return list(range(at, len(prompt.ids)))

    def _store_prefix_segments(self, prompt: Prompt, keys, values, computed: list[int], seconds_per_token: float) -> None:
        """Store each newly computed segment under everything before it (its cost: its share of the run)."""
        first = computed[0] if computed else len(prompt.ids)
        at, before = 0, []
        for ids in [prompt.prefix, *prompt.chunks]:
            if at >= first:
                kv = ChunkKV(torch.cat([k[:, :, at : at + len(ids)] for k in keys]), torch.cat([v[:, :, at : at + len(ids)] for v in values]), at)
                self.store.put(chunk_key(self.model_id, self.tokenizer_id, ids, before), kv, cost=seconds_per_token * len(ids))
            at += len(ids)
            before = [*before, *ids]

    # ---- the model -------------------------------------------------------------------------------

    @torch.inference_mode()
    def run(self, ids: list[int], positions: list[int], keys, values, layers: int | None = None) -> torch.Tensor:
        """Run the tokens at `positions` through the first `layers` decoder layers, attending
        causally to every slot (cached or just computed) -> hidden states [1, S, hidden]."""
        inner = self.model.model
        slots = torch.tensor(positions, device=self.device, dtype=torch.long)
        token_ids = torch.tensor([ids[p] for p in positions], device=self.device)[None]
        hidden = inner.embed_tokens(token_ids)
        position_embeddings = inner.rotary_emb(hidden, slots[None])
        key_positions = torch.arange(keys[0].shape[2], device=self.device)
        allowed = key_positions[None, :] <= slots[:, None]  # [S, T]
        mask = _attention_mask(allowed, self.model.config, hidden.dtype)
        cache = SlotCache(keys, values, slots)
        for layer in inner.layers[:layers]:
            out = layer(hidden, attention_mask=mask, position_ids=slots[None], past_key_values=cache, use_cache=True,
                        position_embeddings=position_embeddings)
            hidden = out[0] if isinstance(out, tuple) else out
        return hidden

    def _empty(self, tokens: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        shape = (1, self.kv_heads, tokens, self.head_dim)
        return ([torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in range(self.layers)],
                [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in range(self.layers)])

    @staticmethod
    def _write(keys, values, kv: ChunkKV, at: int) -> None:
        for layer in range(len(keys)):
            keys[layer][0, :, at : at + kv.tokens] = kv.keys[layer]
            values[layer][0, :, at : at + kv.tokens] = kv.values[layer]


def _keep_last_input(inputs: dict, index: int):
    """A pre-hook that keeps the last row of what an attention module is given (normed hidden states)."""
    def hook(module, args, kwargs):
        inputs[index] = (kwargs["hidden_states"] if "hidden_states" in kwargs else args[0])[:, -1:]
    return hook


def _attention_mask(allowed: torch.Tensor, config, dtype) -> torch.Tensor:
    """[S, T] bool -> the 4-D mask the configured attention takes (bool for sdpa, additive otherwise)."""
    mask = allowed[None, None]
    if getattr(config, "_attn_implementation", "sdpa") == "sdpa":
        return mask
    return torch.where(mask, torch.zeros((), dtype=dtype), torch.full((), torch.finfo(dtype).min, dtype=dtype))
