"""Hamming distances between packed binary codes, 32 bits at a time with a SWAR popcount
(portable: no vendor intrinsic, so the interpreter runs it too). Oracle: `reference.hamming_distances`."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK_N = 128  # codes per program


@triton.jit
def _popcount(x):
    x = x - ((x >> 1) & 0x55555555)
    x = (x & 0x33333333) + ((x >> 2) & 0x33333333)
    x = (x + (x >> 4)) & 0x0F0F0F0F
    return (x * 0x01010101) >> 24


@triton.jit
def _hamming_kernel(q_ptr, c_ptr, out_ptr, rows, words, BLOCK_N: tl.constexpr, BLOCK_W: tl.constexpr):
    b = tl.program_id(0)
    n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    w = tl.arange(0, BLOCK_W)
    q = tl.load(q_ptr + b * words + w, mask=w < words, other=0).to(tl.uint32, bitcast=True)  # [BW]
    c = tl.load(c_ptr + n[:, None] * words + w[None, :], mask=(n[:, None] < rows) & (w[None, :] < words),
                other=0).to(tl.uint32, bitcast=True)  # [BN, BW]
    bits = _popcount(c ^ q[None, :])
    tl.store(out_ptr + b * rows + n, tl.sum(bits, axis=1).to(tl.int32), mask=n < rows)


def hamming_distances(queries: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """queries [B, W] and codes [N, W] int32 words of packed bits -> [B, N] int32 differing bits."""
    batch, words = queries.shape
    rows = codes.shape[0]
    out = torch.empty((batch, rows), dtype=torch.int32, device=codes.device)
    if batch * rows == 0:
        return out
    _hamming_kernel[(batch, triton.cdiv(rows, BLOCK_N))](
        queries.contiguous(), codes.contiguous(), out, rows, words, BLOCK_N=BLOCK_N,
        BLOCK_W=triton.next_power_of_2(words))
    return out
