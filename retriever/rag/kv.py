"""A chunk's KV cache: per-layer keys and values, moved to new positions by re-rotating the keys'
rotary embedding, and compressed for the slower tiers (CacheGen-style quantization)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

QUANTIZED_BITS = (8, 4)


@dataclass
class ChunkKV:
    """keys / values [layers, kv_heads, tokens, head_dim], computed with the chunk's first token
    at position `start` (keys carry their rotary embedding, as attention caches them)."""

    keys: torch.Tensor
    values: torch.Tensor
    start: int

    @property
    def tokens(self) -> int:
        return int(self.keys.shape[2])

    @property
    def nbytes(self) -> int:
        return self.keys.numel() * self.keys.element_size() + self.values.numel() * self.values.element_size()

    def to(self, device=None, dtype=None) -> "ChunkKV":
        return ChunkKV(self.keys.to(device=device, dtype=dtype), self.values.to(device=device, dtype=dtype), self.start)


def rerotate(keys: torch.Tensor, delta: int, rotary_emb) -> torch.Tensor:
    """Keys [..., tokens, head_dim] rotated at positions p -> the same keys at p + delta. Rotary
    embeddings compose (R(p + d) = R(d) R(p)), so one rotation by `delta` moves every token;
    `rotary_emb` is the model's own module, so its frequencies and scaling are used."""
    if delta == 0:
        return keys
    shift = torch.full((1, 1), delta, dtype=torch.long, device=keys.device)
    cos, sin = rotary_emb(keys.to(torch.float32), shift)  # [1, 1, head_dim]
    scaling = float(getattr(rotary_emb, "attention_scaling", 1.0))  # folded into cos/sin for YaRN-style scaling; a rotation needs it out
    cos, sin = cos[0, 0].to(torch.float32) / scaling, sin[0, 0].to(torch.float32) / scaling
    return rotate(keys.to(torch.float32), cos, sin).to(keys.dtype)


def deviation(keys: torch.Tensor, values: torch.Tensor, other_keys: torch.Tensor, other_values: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    """Squared distance between two versions of one layer's KV [1, H, T, D] at token `slots`,
    summed over heads and channels [len(slots)]: how far a cached token's KV is from another's."""
    return ((keys[0][:, slots] - other_keys[0][:, slots]).float().pow(2).sum(dim=(0, 2))
            + (values[0][:, slots] - other_values[0][:, slots]).float().pow(2).sum(dim=(0, 2)))


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """The rotary embedding (half-split layout, as Llama / Qwen2 / Mistral apply it) of `x`."""
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


@dataclass
class QuantizedKV:
    """Keys quantized per channel (outlier channels keep their own range), values per token;
    asymmetric uniform codes of `bits` (4-bit codes packed two to a byte)."""

    bits: int
    shape: tuple[int, ...]
    start: int
    key_codes: torch.Tensor
    key_low: torch.Tensor
    key_step: torch.Tensor
    value_codes: torch.Tensor
    value_low: torch.Tensor
    value_step: torch.Tensor

    @classmethod
    def of(cls, kv: ChunkKV, bits: int) -> "QuantizedKV":
        if bits not in QUANTIZED_BITS:
            raise ValueError(f"KV quantization supports {QUANTIZED_BITS} bits, got {bits}")
        keys, values = kv.keys.to(torch.float32), kv.values.to(torch.float32)
        key_codes, key_low, key_step = _quantize(keys, bits, dim=2)  # per channel: range over tokens
        value_codes, value_low, value_step = _quantize(values, bits, dim=3)  # per token: range over channels
        return cls(bits, tuple(keys.shape), kv.start, key_codes, key_low, key_step, value_codes, value_low, value_step)

    def restore(self, dtype=torch.float16) -> ChunkKV:
        keys = _dequantize(self.key_codes, self.key_low, self.key_step, self.bits, self.shape)
        values = _dequantize(self.value_codes, self.value_low, self.value_step, self.bits, self.shape)
        return ChunkKV(keys.to(dtype), values.to(dtype), self.start)

    @property
    def nbytes(self) -> int:
        parts = (self.key_codes, self.key_low, self.key_step, self.value_codes, self.value_low, self.value_step)
        return sum(p.numel() * p.element_size() for p in parts)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, name) for name in ("key_codes", "key_low", "key_step", "value_codes", "value_low", "value_step")}


def _quantize(x: torch.Tensor, bits: int, dim: int):
    low = x.amin(dim=dim, keepdim=True)
    step = (x.amax(dim=dim, keepdim=True) - low) / (2**bits - 1)
    step = torch.where(step > 0, step, torch.ones_like(step))
    codes = torch.round((x - low) / step).to(torch.uint8).reshape(-1)
    if bits == 4:
        codes = torch.nn.functional.pad(codes, (0, codes.numel() % 2))
        codes = codes[0::2] | (codes[1::2] << 4)
    return codes, low.to(torch.float16), step.to(torch.float16)


def _dequantize(codes: torch.Tensor, low: torch.Tensor, step: torch.Tensor, bits: int, shape) -> torch.Tensor:
    if bits == 4:
        codes = torch.stack((codes & 0x0F, codes >> 4), dim=1).reshape(-1)
    count = 1
    for s in shape:
        count *= s
    return codes[:count].reshape(shape).to(torch.float32) * step.to(torch.float32) + low.to(torch.float32)
