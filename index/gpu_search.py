"""Indexes held on a torch device (a GPU, or the CPU for tests): exact dense search, IVF-PQ built
by faiss and searched with our lookup kernel, and packed binary codes scanned by Hamming or by
lookup tables. Each answers like its CPU counterpart (same scores, ties aside); placing one that
does not fit in the device's free memory is a clear `OutOfDeviceMemory`."""

from __future__ import annotations

from typing import Mapping

import numpy as np
import torch

from retriever.errors import InvalidRequest, OutOfDeviceMemory
from retriever.kernels import gpu

HEADROOM = 0.9  # share of free device memory an index may take; the rest is for search buffers


def place(array: np.ndarray, device: str | torch.device, what: str, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Copy an array to the device (cast to `dtype`), refusing clearly when it cannot fit."""
    device = torch.device(device)
    size = array.size * (torch.empty((), dtype=dtype).element_size() if dtype is not None else array.itemsize)
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        if size > HEADROOM * free:
            raise OutOfDeviceMemory(f"{what} needs {_size(size)} on {device}, which has {_size(free)} free of {_size(total)}: "
                                    "use a smaller dtype, fewer rows, or the CPU index")
    try:
        out = torch.from_numpy(np.ascontiguousarray(array)).to(device)
        return out.to(dtype) if dtype is not None else out
    except torch.OutOfMemoryError:
        raise OutOfDeviceMemory(f"{what} ({_size(size)}) does not fit on {device}") from None


def _size(count: int) -> str:
    return f"{count / 2**30:.2f} GiB" if count >= 2**30 else f"{count / 2**20:.1f} MiB"


def _queries(queries: np.ndarray, dim: int) -> np.ndarray:
    queries = np.asarray(queries, dtype=np.float32)
    if queries.ndim != 2 or queries.shape[1] != dim:
        raise InvalidRequest(f"queries must be [B, {dim}], got {list(queries.shape)}")
    if not np.isfinite(queries).all():
        raise InvalidRequest("queries contain NaN or infinity")
    return queries


def _numpy(scores: torch.Tensor, rows: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    return scores.float().cpu().numpy(), rows.cpu().numpy()


class DeviceFlat:
    """Exact search over vectors [N, D] on a device, fp16 by default (half the bytes to read);
    scores are fp32-accumulated inner products or negated squared L2 distances."""

    filters = True  # search takes `allowed`

    def __init__(self, vectors: np.ndarray, metric: str, device: str = "cuda", dtype: torch.dtype = torch.float16):
        self.metric, self.dim, self.device = metric, vectors.shape[1], device
        self.vectors = place(vectors, device, "exact index", dtype)  # [N, D]

    def search(self, queries: np.ndarray, k: int, params: Mapping[str, int] | None = None,
               allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        q = place(_queries(queries, self.dim), self.vectors.device, "queries")
        mask = None if allowed is None else place(allowed[: len(self.vectors)], self.vectors.device, "filter")
        return _numpy(*gpu.exact_top_k(q, self.vectors, k, self.metric, mask))


class DeviceIvfPq:
    """A faiss `IndexIVFPQ` (8-bit codes, trained and filled on CPU) searched on a device: coarse
    centroids by matmul, then per (query, probed list) lookup tables over the list's codes,
    faiss's residual formulation: L2 scores -||(q - c_l)_m - pq_mj||^2 summed over m; inner
    product q.c_l + sum_m q_m . pq_mj."""

    filters = False  # the caller over-fetches and filters

    def __init__(self, index, device: str = "cuda", refine: np.ndarray | None = None):
        """refine: the full vectors [N, D] (kept in fp16) to re-score the best PQ candidates exactly."""
        import faiss
        from faiss.contrib.inspect_tools import get_invlist

        ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
        pq = getattr(ivf, "pq", None)
        if pq is None or pq.nbits != 8 or not ivf.by_residual:
            raise InvalidRequest("DeviceIvfPq needs an IVF,PQ index with 8-bit codes encoded by residual")
        self.metric = "ip" if ivf.metric_type == faiss.METRIC_INNER_PRODUCT else "l2"
        self.device = device
        self.dim, self.nlist, self.m = ivf.d, ivf.nlist, pq.M
        self.nprobe = ivf.nprobe
        lists = [get_invlist(ivf.invlists, lst) for lst in range(ivf.nlist)]
        sizes = np.array([len(ids) for ids, _ in lists], dtype=np.int64)
        device = torch.device(device)
        self.starts = place(np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64), device, "IVF offsets")
        self.sizes = place(sizes, device, "IVF offsets")
        self.ids = place(np.concatenate([ids for ids, _ in lists]), device, "IVF ids")
        self.codes = place(np.concatenate([codes for _, codes in lists]).reshape(-1, pq.M), device, "PQ codes")
        self.centroids = place(ivf.quantizer.reconstruct_n(0, ivf.nlist), device, "IVF centroids")  # [L, D]
        self.pq_centroids = place(faiss.vector_to_array(pq.centroids).reshape(pq.M, pq.ksub, pq.dsub), device,
                                  "PQ centroids")  # [M, 256, dsub]
        self.refine = None if refine is None else place(refine, device, "refine vectors", torch.float16)  # [N, D]

    def search(self, queries: np.ndarray, k: int, params: Mapping[str, int] | None = None,
               allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """-> (scores [B, k], rows [B, k]); params `nprobe`, and `rescore` (with refine vectors):
        the best max(k, rescore) by PQ are re-scored exactly and the best k of them kept."""
        if allowed is not None:
            raise InvalidRequest("DeviceIvfPq does not filter; over-fetch and filter the rows it returns")
        params = params or {}
        nprobe = min(int(params.get("nprobe", self.nprobe)), self.nlist)
        rescore = int(params.get("rescore", 0))
        q = place(_queries(queries, self.dim), self.codes.device, "queries")
        depth = max(k, rescore) if rescore and self.refine is not None else k
        widest = int(self.sizes.max()) if self.nlist else 0
        step = max(1, gpu.CHUNK_ELEMENTS // max(1, nprobe * max(widest, self.m * 256)))
        found = [self._search_block(q[i : i + step], depth, nprobe) for i in range(0, len(q), step)]
        scores, rows = torch.cat([s for s, _ in found]), torch.cat([r for _, r in found])
        if depth > k:
            scores, rows = self._rescore(q, rows, k)
        return _numpy(scores, rows)

    def _rescore(self, q: torch.Tensor, rows: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        candidates = self.refine[rows.clamp(min=0)].float()  # [B, C, D]
        scores = torch.einsum("bcd,bd->bc", candidates, q)
        if self.metric == "l2":
            scores = 2 * scores - (candidates**2).sum(-1) - (q**2).sum(-1, keepdim=True)
        scores = scores.masked_fill(rows < 0, float("-inf"))
        return gpu.pad_top_k(*gpu.merge_top_k(None, scores, rows, k), k)

    def _search_block(self, q: torch.Tensor, k: int, nprobe: int) -> tuple[torch.Tensor, torch.Tensor]:
        batch = q.shape[0]
        coarse = q @ self.centroids.T  # [B, L]
        if self.metric == "l2":
            coarse = 2 * coarse - (self.centroids**2).sum(1)[None, :]
        probes = torch.topk(coarse, nprobe, dim=1).indices  # [B, P]
        sub = self.pq_centroids  # [M, 256, dsub]
        if self.metric == "l2":
            residual = (q[:, None, :] - self.centroids[probes]).reshape(batch, nprobe, self.m, -1)  # [B, P, M, dsub]
            tables = (2 * torch.einsum("bpmd,mjd->bpmj", residual, sub) - (residual**2).sum(-1, keepdim=True)
                      - (sub**2).sum(-1)[None, None])  # [B, P, M, 256]: -||r_m - pq_mj||^2
            offsets = torch.zeros((batch, nprobe), device=q.device)
        else:
            per_query = torch.einsum("bmd,mjd->bmj", q.reshape(batch, self.m, -1), sub)  # [B, M, 256]
            tables = per_query[:, None].expand(-1, nprobe, -1, -1)
            offsets = torch.gather(q @ self.centroids.T, 1, probes)  # [B, P]
        lengths = self.sizes[probes].reshape(-1)
        width = max(1, int(lengths.max()))
        scores = gpu.lookup_scores(tables.reshape(batch * nprobe, self.m, -1), offsets.reshape(-1), self.codes,
                                   self.starts[probes].reshape(-1), lengths, width)  # [B * P, width]
        positions = self.starts[probes].reshape(-1, 1) + torch.arange(width, device=q.device)[None, :]
        rows = self.ids[positions.clamp(max=len(self.ids) - 1)]  # [B * P, width]
        top = gpu.merge_top_k(None, scores.reshape(batch, -1), rows.reshape(batch, -1), k)
        return gpu.pad_top_k(*top, k)


class DeviceBinary:
    """Packed binary codes [N, P] uint8 on a device: exact Hamming top-k, or lookup-table scoring
    (symmetric or asymmetric, tables from `Binarizer.lookup_tables`)."""

    filters = True

    def __init__(self, codes: np.ndarray, device: str = "cuda"):
        self.code_bytes, self.device = codes.shape[1], device
        self.codes = place(codes, device, "binary codes")  # [N, P]
        self.words = gpu.as_words(self.codes)  # [N, ceil(P / 4)] int32

    def hamming(self, query_codes: np.ndarray, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """-> (distances [B, k], rows [B, k]) nearest first, ties by row, -1 padded."""
        if query_codes.ndim != 2 or query_codes.shape[1] != self.code_bytes:
            raise InvalidRequest(f"query codes must be [B, {self.code_bytes}] bytes, got {list(query_codes.shape)}")
        q = gpu.as_words(place(query_codes.astype(np.uint8), self.codes.device, "query codes"))
        mask = None if allowed is None else place(allowed[: len(self.codes)], self.codes.device, "filter")
        return tuple(t.cpu().numpy() for t in gpu.hamming_top_k(q, self.words, k, mask))

    def search(self, queries: np.ndarray, k: int, params: Mapping[str, int] | None = None,
               allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Hamming search with scores as negated distances (higher is better), like a faiss BFlat."""
        distances, rows = self.hamming(queries, k, allowed)
        return np.where(rows >= 0, -distances, -np.inf).astype(np.float32), rows

    def lookup(self, tables: np.ndarray, offsets: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """tables [B, P, 256], offsets [B] -> (scores [B, k], rows [B, k]) best first."""
        t = place(tables.astype(np.float32), self.codes.device, "lookup tables")
        return _numpy(*gpu.lookup_top_k(t, place(offsets.astype(np.float32), self.codes.device, "offsets"), self.codes, k))


def on_device(index, metric: str, device: str):
    """Our device copy of a faiss CPU index, or None for a family without one (HNSW, IVF-Flat,
    4-bit fast-scan PQ, binary IVF/HNSW). Exact indexes stay exact: float32 vectors."""
    import faiss

    if metric == "hamming":
        flat = faiss.downcast_IndexBinary(index)
        if not isinstance(flat, faiss.IndexBinaryFlat):
            return None
        return DeviceBinary(faiss.vector_to_array(flat.xb).reshape(flat.ntotal, flat.code_size), device)
    down = faiss.downcast_index(index)
    if isinstance(down, faiss.IndexFlat):
        return DeviceFlat(down.reconstruct_n(0, down.ntotal) if down.ntotal else np.zeros((0, down.d), np.float32),
                          metric, device, torch.float32)
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None and isinstance(faiss.downcast_index(ivf), faiss.IndexIVFPQ):
        pq = faiss.downcast_index(ivf).pq
        return DeviceIvfPq(index, device) if pq.nbits == 8 and faiss.downcast_index(ivf).by_residual else None
    return None
