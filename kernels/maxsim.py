"""MaxSim (Chamfer) scoring of one query against many documents' tokens, batched with torch on
CPU or CUDA (no Python loop per document). The oracle is `reference.maxsim_scores`."""

from __future__ import annotations

import numpy as np


def maxsim(query: np.ndarray, tokens, offsets: np.ndarray, device: str = "cpu") -> np.ndarray:
    """query [q, D], documents' tokens [T, D] (an array, or a float32 torch tensor) with offsets
    [C + 1] -> [C] float32: sum over query tokens of the best inner product with any token of the
    document (0 if none)."""
    import torch

    if not isinstance(tokens, torch.Tensor):
        tokens = torch.from_numpy(np.ascontiguousarray(tokens, dtype=np.float32))

    if device.startswith("cuda"):  # the Triton kernel: no per-token similarity matrix in memory
        from .gpu import maxsim_pairs

        q = torch.from_numpy(np.ascontiguousarray(query, dtype=np.float32)).to(device)
        scores = maxsim_pairs(q[None], torch.tensor([len(query)], device=device),
                              tokens.to(device),
                              torch.from_numpy(np.asarray(offsets, dtype=np.int64)).to(device),
                              torch.arange(len(offsets) - 1, device=device)[None])
        return scores[0].cpu().numpy()
    count = len(offsets) - 1
    per_document = np.diff(offsets).astype(np.int64)
    lengths = torch.from_numpy(per_document).to(device)
    q = torch.from_numpy(np.ascontiguousarray(query, dtype=np.float32)).to(device)
    t = tokens.to(device)
    similarity = t @ q.T  # [T, q]
    owner = torch.from_numpy(np.repeat(np.arange(count), per_document)).to(device)  # [T]
    best = torch.full((count, q.shape[0]), -torch.inf, device=device)
    best.scatter_reduce_(0, owner[:, None].expand_as(similarity), similarity, reduce="amax")  # [C, q]
    best = torch.where(lengths[:, None] > 0, best, torch.zeros((), device=device))
    return best.sum(dim=1).cpu().numpy()
