"""Search primitives on torch tensors, for any torch device. On CUDA they run our Triton kernels
(`kernels/triton/`); elsewhere a torch fallback computes the same thing. The choice is made once
per device type (`backend=` overrides it). Work is chunked over the collection so memory stays
bounded, and each chunk's top-k is merged into the running top-k. Oracles: `reference.py`."""

from __future__ import annotations

import functools
import importlib.util

import torch

CHUNK_ELEMENTS = 1 << 26  # scores held at once per chunk (256 MiB of float32)


@functools.cache
def default_backend(device_type: str) -> str:
    """'triton' on CUDA where Triton is installed, else 'torch'. Tests pass backend='triton' on CPU
    under TRITON_INTERPRET=1 to run the kernels in Triton's interpreter."""
    return "triton" if device_type == "cuda" and importlib.util.find_spec("triton") is not None else "torch"


def _triton(backend: str | None, tensor: torch.Tensor) -> bool:
    return (backend or default_backend(tensor.device.type)) == "triton"


def chunk_rows(batch: int, rows: int) -> int:
    return max(1, min(rows, CHUNK_ELEMENTS // max(1, batch)))


def merge_top_k(best: tuple[torch.Tensor, torch.Tensor] | None, scores: torch.Tensor, rows: torch.Tensor,
                k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Running top-k: best (scores [B, k'], rows [B, k']) merged with a chunk's [B, C] -> [B, min(k, k' + C)]."""
    if best is not None:
        scores, rows = torch.cat([best[0], scores], dim=1), torch.cat([best[1], rows], dim=1)
    top, order = torch.topk(scores, min(k, scores.shape[1]), dim=1)
    return top, torch.gather(rows, 1, order)


def pad_top_k(scores: torch.Tensor, rows: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, k'] -> [B, k], -inf / -1 where fewer than k were found; -1 rows wherever the score is -inf."""
    rows = torch.where(torch.isfinite(scores), rows, torch.full_like(rows, -1))
    missing = k - scores.shape[1]
    if missing > 0:
        scores = torch.nn.functional.pad(scores, (0, missing), value=float("-inf"))
        rows = torch.nn.functional.pad(rows, (0, missing), value=-1)
    return scores, rows


# ---- dense exact search ---------------------------------------------------------------------------

def exact_top_k(queries: torch.Tensor, vectors: torch.Tensor, k: int, metric: str,
                allowed: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """queries [B, D], vectors [N, D] (same device; fp16 / bf16 / fp32) -> (scores [B, k] float32,
    rows [B, k] int64), higher is better: inner product or negated squared L2."""
    batch, rows_total = queries.shape[0], vectors.shape[0]
    q = queries.to(vectors.dtype)
    step = chunk_rows(batch, rows_total)
    best = None
    for start in range(0, rows_total, step):
        block = vectors[start : start + step]
        scores = (q @ block.T).float()  # [B, C]
        if metric == "l2":
            scores = 2 * scores - (block.float() ** 2).sum(1)[None, :] - (q.float() ** 2).sum(1)[:, None]
        if allowed is not None:
            scores = scores.masked_fill(~allowed[start : start + step][None, :], float("-inf"))
        rows = torch.arange(start, start + block.shape[0], device=vectors.device).expand(batch, -1)
        best = merge_top_k(best, scores, rows, k)
    if best is None:
        best = (torch.empty((batch, 0), device=vectors.device), torch.empty((batch, 0), dtype=torch.int64, device=vectors.device))
    return pad_top_k(*best, k)


# ---- packed binary codes ----------------------------------------------------------------------------

def as_words(codes: torch.Tensor) -> torch.Tensor:
    """Packed uint8 codes [N, P] -> int32 words [N, ceil(P / 4)], zero-padded (zeros add no distance)."""
    pad = (-codes.shape[1]) % 4
    if pad:
        codes = torch.nn.functional.pad(codes, (0, pad))
    return codes.contiguous().view(torch.int32)


@functools.cache
def _byte_popcounts(device: str) -> torch.Tensor:
    return torch.tensor([bin(i).count("1") for i in range(256)], dtype=torch.int32, device=device)


def hamming_distances(query_words: torch.Tensor, code_words: torch.Tensor, backend: str | None = None) -> torch.Tensor:
    """[B, W] x [N, W] int32 words -> [B, N] int32 differing bits."""
    if _triton(backend, code_words):
        from .triton.hamming import hamming_distances as kernel

        return kernel(query_words, code_words)
    xor = (query_words[:, None, :] ^ code_words[None, :, :]).view(torch.uint8)  # [B, N, 4W]
    return _byte_popcounts(str(code_words.device))[xor.long()].sum(-1, dtype=torch.int32)


def hamming_top_k(query_words: torch.Tensor, code_words: torch.Tensor, k: int,
                  allowed: torch.Tensor | None = None, backend: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (distances [B, k] int64, rows [B, k]) nearest first, ties by row, -1 / -1 padded."""
    batch, rows_total = query_words.shape[0], code_words.shape[0]
    fallback_bytes = 1 if _triton(backend, code_words) else 4 * query_words.shape[1]  # [B, C, 4W] bytes
    step = chunk_rows(batch * fallback_bytes, rows_total)
    best = None
    for start in range(0, rows_total, step):
        distances = hamming_distances(query_words, code_words[start : start + step], backend).long()
        rows = torch.arange(start, start + distances.shape[1], device=code_words.device).expand(batch, -1)
        keys = -(distances * rows_total + rows).double()  # exact tie-break by row, as a float key for topk
        if allowed is not None:
            keys = keys.masked_fill(~allowed[start : start + step][None, :], float("-inf"))
        best = merge_top_k(best, keys, rows, k)
    if best is None:
        return torch.full((batch, k), -1, dtype=torch.int64), torch.full((batch, k), -1, dtype=torch.int64)
    keys, rows = pad_top_k(*best, k)
    distances = torch.where(rows >= 0, (-keys).clamp(min=0).long() // max(1, rows_total), torch.full_like(rows, -1))
    return distances, rows


# ---- table lookups (PQ asymmetric distances, binary SDC) -------------------------------------------

def lookup_scores(tables: torch.Tensor, offsets: torch.Tensor, codes: torch.Tensor, starts: torch.Tensor,
                  lengths: torch.Tensor, width: int, backend: str | None = None) -> torch.Tensor:
    """tables [G, P, K], offsets [G], codes [N, P] uint8; group g scores code rows
    starts[g] .. + lengths[g] -> [G, width] float32, -inf past each group's length."""
    if _triton(backend, codes):
        from .triton.lookup import lookup_scores as kernel

        return kernel(tables.float(), offsets, codes, starts, lengths, width)
    i = torch.arange(width, device=codes.device)
    live = i[None, :] < lengths[:, None]  # [G, width]
    rows = torch.where(live, starts[:, None] + i[None, :], torch.zeros_like(live, dtype=torch.int64))
    gathered = codes[rows].long()  # [G, width, P]
    looked_up = torch.gather(tables.float()[:, None, :, :].expand(-1, width, -1, -1), 3, gathered[..., None])[..., 0]
    scores = looked_up.sum(-1) + offsets.float()[:, None]
    return scores.masked_fill(~live, float("-inf"))


def lookup_top_k(tables: torch.Tensor, offsets: torch.Tensor, codes: torch.Tensor, k: int,
                 allowed: torch.Tensor | None = None, backend: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Every code scored against each query's tables [B, P, K] -> (scores [B, k], rows [B, k])."""
    batch, rows_total = tables.shape[0], codes.shape[0]
    step = chunk_rows(batch * (1 if _triton(backend, codes) else tables.shape[1]), rows_total)  # fallback: [B, C, P]
    best = None
    for start in range(0, rows_total, step):
        width = min(step, rows_total - start)
        starts = torch.full((batch,), start, dtype=torch.int64, device=codes.device)
        lengths = torch.full((batch,), width, dtype=torch.int64, device=codes.device)
        scores = lookup_scores(tables, offsets, codes, starts, lengths, width, backend)
        if allowed is not None:
            scores = scores.masked_fill(~allowed[start : start + width][None, :], float("-inf"))
        rows = torch.arange(start, start + width, device=codes.device).expand(batch, -1)
        best = merge_top_k(best, scores, rows, k)
    if best is None:
        best = (torch.empty((batch, 0), device=codes.device), torch.empty((batch, 0), dtype=torch.int64, device=codes.device))
    return pad_top_k(*best, k)


# ---- MaxSim --------------------------------------------------------------------------------------------

def maxsim_pairs(queries: torch.Tensor, query_lengths: torch.Tensor, tokens: torch.Tensor, offsets: torch.Tensor,
                 candidates: torch.Tensor, backend: str | None = None) -> torch.Tensor:
    """queries [B, Lq, D], query_lengths [B], tokens [T, D] with offsets [N + 1], candidates [B, C]
    (-1 = none) -> [B, C] float32 MaxSim, 0 for -1 or an empty document."""
    if _triton(backend, tokens):
        from .triton.maxsim import maxsim_pairs as kernel

        return kernel(queries, query_lengths, tokens, offsets, candidates)
    batch, count = candidates.shape
    out = torch.zeros((batch, count), dtype=torch.float32, device=tokens.device)
    for b in range(batch):
        docs = candidates[b].clamp(min=0)
        lengths = torch.where(candidates[b] >= 0, offsets[docs + 1] - offsets[docs], torch.zeros_like(docs))
        owner = torch.repeat_interleave(torch.arange(count, device=tokens.device), lengths)  # [T_b]
        first = torch.repeat_interleave(offsets[docs], lengths)
        position = torch.arange(len(owner), device=tokens.device) - torch.repeat_interleave(torch.cumsum(lengths, 0) - lengths, lengths)
        q = queries[b, : int(query_lengths[b])].float()  # [Lq, D]
        similarity = tokens[first + position].float() @ q.T  # [T_b, Lq]
        best = torch.full((count, q.shape[0]), float("-inf"), device=tokens.device)
        best.scatter_reduce_(0, owner[:, None].expand_as(similarity), similarity, reduce="amax")
        out[b] = torch.where(lengths[:, None] > 0, best, torch.zeros((), device=tokens.device)).sum(1)
    return out
