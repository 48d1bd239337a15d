"""Batched MaxSim (ColBERT late interaction) over variable-length documents, with no padding to
the longest document: each (query, candidate) program walks only its own document's tokens.
Oracle: `reference.maxsim_scores`."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK_T = 32  # document tokens per step


@triton.jit
def _maxsim_kernel(q_ptr, q_len_ptr, t_ptr, off_ptr, cand_ptr, out_ptr, candidates, dim,
                   stride_qb, stride_ql, stride_t,
                   BLOCK_Q: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr):
    pair = tl.program_id(0)  # one (query, candidate) pair
    b = pair // candidates
    doc = tl.load(cand_ptr + pair)
    q_rows = tl.arange(0, BLOCK_Q)
    dims = tl.arange(0, BLOCK_D)
    q_len = tl.load(q_len_ptr + b)
    q = tl.load(q_ptr + b * stride_qb + q_rows[:, None] * stride_ql + dims[None, :],
                mask=(q_rows[:, None] < q_len) & (dims[None, :] < dim), other=0.0)  # [BQ, BD]
    has_doc = doc >= 0
    start = tl.load(off_ptr + doc, mask=has_doc, other=0)
    end = tl.load(off_ptr + doc + 1, mask=has_doc, other=0)
    best = tl.full((BLOCK_Q,), float("-inf"), tl.float32)
    for first in range(start, end, BLOCK_T):
        t_rows = first + tl.arange(0, BLOCK_T)
        t = tl.load(t_ptr + t_rows[:, None] * stride_t + dims[None, :],
                    mask=(t_rows[:, None] < end) & (dims[None, :] < dim), other=0.0)  # [BT, BD]
        similarity = tl.dot(q, tl.trans(t), input_precision=PRECISION)  # [BQ, BT], fp32 accumulation
        similarity = tl.where(t_rows[None, :] < end, similarity, float("-inf"))
        best = tl.maximum(best, tl.max(similarity, axis=1))
    best = tl.where((q_rows < q_len) & (end > start), best, 0.0)
    tl.store(out_ptr + pair, tl.sum(best, axis=0))


def maxsim_pairs(queries: torch.Tensor, query_lengths: torch.Tensor, tokens: torch.Tensor, offsets: torch.Tensor,
                 candidates: torch.Tensor) -> torch.Tensor:
    """queries [B, Lq, D] (rows past each query's length ignored), query_lengths [B], documents'
    tokens [T, D] with offsets [N + 1], candidates [B, C] document numbers (-1 = none)
    -> [B, C] float32 MaxSim (0 for -1 or an empty document). Inputs fp16, bf16 or fp32."""
    batch, q_max, dim = queries.shape
    count = candidates.shape[1]
    out = torch.empty((batch, count), dtype=torch.float32, device=queries.device)
    if batch * count == 0:
        return out
    queries, tokens = queries.contiguous(), tokens.contiguous()
    precision = "ieee" if queries.dtype == torch.float32 else "tf32"  # fp32 inputs keep full precision
    _maxsim_kernel[(batch * count,)](
        queries, query_lengths.to(torch.int32).contiguous(), tokens, offsets.to(torch.int64).contiguous(),
        candidates.to(torch.int64).contiguous(), out, count, dim, queries.stride(0), queries.stride(1), tokens.stride(0),
        BLOCK_Q=max(16, triton.next_power_of_2(q_max)), BLOCK_T=BLOCK_T, BLOCK_D=max(16, triton.next_power_of_2(dim)),
        PRECISION=precision)
    return out
