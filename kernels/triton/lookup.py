"""Table-lookup scoring of byte codes: a code scores offset + sum_p table[p, code[p]]. The same
scan serves PQ asymmetric distances (tables from a query's residual against each sub-quantizer's
centroids) and symmetric / asymmetric scoring of binary codes (256-entry tables per code byte).
Oracles: faiss's PQ distances and `reference.code_scores`."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK_N = 64  # codes per program


@triton.jit
def _lookup_kernel(table_ptr, offset_ptr, code_ptr, start_ptr, length_ptr, out_ptr, positions, entries, width,
                   BLOCK_N: tl.constexpr, BLOCK_P: tl.constexpr):
    group = tl.program_id(0)
    i = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    p = tl.arange(0, BLOCK_P)
    length = tl.load(length_ptr + group)
    rows = tl.load(start_ptr + group) + i
    live = i < length
    codes = tl.load(code_ptr + rows[:, None] * positions + p[None, :], mask=live[:, None] & (p[None, :] < positions),
                    other=0).to(tl.int32)  # [BN, BP]
    looked_up = tl.load(table_ptr + group * positions * entries + p[None, :] * entries + codes,
                        mask=live[:, None] & (p[None, :] < positions), other=0.0)  # [BN, BP]
    scores = tl.sum(looked_up, axis=1) + tl.load(offset_ptr + group)
    tl.store(out_ptr + group * width + i, tl.where(live, scores, float("-inf")), mask=i < width)


def lookup_scores(tables: torch.Tensor, offsets: torch.Tensor, codes: torch.Tensor, starts: torch.Tensor,
                  lengths: torch.Tensor, width: int) -> torch.Tensor:
    """tables [G, P, K] float32, offsets [G], codes [N, P] uint8, and for each group g the code rows
    starts[g] .. starts[g] + lengths[g] -> [G, width] float32 scores, -inf past each group's length."""
    groups, positions, entries = tables.shape
    out = torch.empty((groups, width), dtype=torch.float32, device=codes.device)
    if groups * width == 0:
        return out
    _lookup_kernel[(groups, triton.cdiv(width, BLOCK_N))](
        tables.contiguous(), offsets.to(torch.float32).contiguous(), codes.contiguous(), starts.to(torch.int64).contiguous(),
        lengths.to(torch.int64).contiguous(), out, positions, entries, width, BLOCK_N=BLOCK_N,
        BLOCK_P=triton.next_power_of_2(positions))
    return out
