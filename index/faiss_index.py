"""Faiss indexes from factory strings: dense (`Flat`, `IVF{n},Flat`, `IVF{n},PQ{m}[x4fs]`, `HNSW{M}`)
and, with metric "hamming", binary over packed codes (`BFlat`, `BIVF{n}`, `BHNSW{M}`)."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import faiss
import numpy as np

from retriever.errors import InvalidConfig, InvalidRequest

ADD_BLOCK = 65_536
PROBE_PARALLEL = 14  # IndexIVFFastScan.implem that splits one query's lists over the threads
_SET_IMPLEM = faiss.IndexIVFFastScan.implem.fset
_METRICS = {"ip": faiss.METRIC_INNER_PRODUCT, "l2": faiss.METRIC_L2}
HAMMING = "hamming"  # binary indexes: dim counts bits, vectors are uint8 [N, dim / 8]


def fast_scan_ivf(ivf) -> faiss.IndexIVFPQFastScan | None:
    """The 4-bit fast-scan IVF-PQ an IVF index is (`faiss.try_extract_index_ivf`'s answer), or None:
    the family whose implementation a search picks by batch size."""
    ivf = faiss.downcast_index(ivf) if ivf is not None else None
    return ivf if isinstance(ivf, faiss.IndexIVFPQFastScan) else None


def gpu_count() -> int:
    """GPUs faiss can use here (0 with faiss-cpu)."""
    return faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0


def torch_cuda_available() -> bool:
    """Whether torch sees a CUDA device, without importing torch (~250 MB resident) on machines
    that have no NVIDIA driver at all."""
    if not Path("/proc/driver/nvidia").exists() and not Path("/dev/nvidiactl").exists():
        return False
    import torch

    return torch.cuda.is_available()


class FaissIndex:
    """A faiss index built from a factory string, searched with per-query parameters.

    Deleted or filtered-out rows are excluded with an ID selector (pre-filtering) on the CPU;
    where a selector is unsupported (GPU indexes) the search over-fetches until k allowed rows
    are found or every row has been seen.
    """

    def __init__(self, factory: str, dim: int, metric: str, index: faiss.Index | None = None) -> None:
        self.factory = factory
        self.dim = dim
        self.metric = metric
        self.binary = metric == HAMMING
        if index is None:
            try:
                index = faiss.index_binary_factory(dim, factory) if self.binary else faiss.index_factory(dim, factory, _METRICS[metric])
            except RuntimeError as e:
                raise InvalidConfig(f"index {factory!r} is not a valid faiss factory string for dim {dim}: {_faiss_message(e)}") from None
        self.cpu_index = index
        if self.binary:
            down = faiss.downcast_IndexBinary(index)
            self.ivf = down if isinstance(down, faiss.IndexBinaryIVF) else None
            self.hnsw = down if isinstance(down, faiss.IndexBinaryHNSW) else None
        else:
            _skip_polysemous_training(index)
            self.ivf = faiss.try_extract_index_ivf(index) if "IVF" in factory.upper() else None
            self.hnsw = _find_hnsw(index)
        self._fast_scan = None if self.binary else fast_scan_ivf(self.ivf)
        self._search_index = self.cpu_index
        self._device_index = None  # set by use_device: our torch/Triton copy of the index
        self._selectors = not (self.binary and self.ivf is not None)  # faiss: no IDSelector for IndexBinaryIVF
        self._parameter_cache: dict[tuple, faiss.SearchParameters | None] = {}  # read-only once made

    @property
    def ntotal(self) -> int:
        return int(self.cpu_index.ntotal)

    @property
    def exact(self) -> bool:
        """True when search is exhaustive over float vectors (no approximation)."""
        return isinstance(self.cpu_index, (faiss.IndexFlat, faiss.IndexBinaryFlat))

    def clone(self) -> "FaissIndex":
        """An independent copy (pinned readers keep the original)."""
        if self.binary:
            copy = faiss.deserialize_index_binary(faiss.serialize_index_binary(self.cpu_index))
        else:
            copy = faiss.clone_index(self.cpu_index)
        return FaissIndex(self.factory, self.dim, self.metric, index=copy)

    def train(self, sample: np.ndarray) -> None:
        if self.cpu_index.is_trained:
            return
        on_gpu = gpu_count() > 0 and self.ivf is not None and not self.binary
        if on_gpu:  # k-means assignment on the GPUs; the trained index stays a CPU index (faiss wiki FAQ)
            self.ivf.clustering_index = faiss.index_cpu_to_all_gpus(faiss.IndexFlat(self.dim, self.ivf.metric_type))
        try:
            self.cpu_index.train(np.ascontiguousarray(sample, dtype=self._dtype))
        except RuntimeError as e:
            raise InvalidConfig(f"training {self.factory!r} on {len(sample)} vectors failed: {_faiss_message(e)}") from None
        finally:
            if on_gpu:
                self.ivf.clustering_index = None

    def add(self, vectors: np.ndarray) -> None:
        if not self.cpu_index.is_trained:
            raise InvalidRequest(f"index {self.factory!r} must be trained before vectors are added")
        for start in range(0, len(vectors), ADD_BLOCK):
            self.cpu_index.add(np.ascontiguousarray(vectors[start : start + ADD_BLOCK], dtype=self._dtype))
        if self._device_index is not None:
            self.use_device(self._device_index.device)  # re-copy: device copies do not see later CPU adds
        elif self._search_index is not self.cpu_index:
            self.use_gpu()

    def use_gpu(self) -> None:
        """Search on GPU 0. With a faiss GPU build, through faiss (families it cannot move, HNSW
        and 4-bit fast-scan PQ, stay on the CPU); without one, where torch sees CUDA, through our
        torch/Triton indexes (`use_device`)."""
        if gpu_count() == 0:
            if torch_cuda_available():
                self.use_device("cuda")
            return
        if self.hnsw is not None or (self.binary and not self.exact):
            return
        res = faiss.StandardGpuResources()
        try:
            if self.binary:
                self._search_index = faiss.GpuIndexBinaryFlat(res, self.cpu_index)
            else:
                self._search_index = faiss.index_cpu_to_gpu(res, 0, self.cpu_index)
        except RuntimeError:
            return
        self._gpu_resources = res  # the GPU index holds a raw pointer to it
        self._selectors = False

    def use_device(self, device: str) -> None:
        """Search Flat, 8-bit IVF-PQ and binary Flat indexes with `gpu_search` on a torch device
        (tests use 'cpu'); other families keep searching here."""
        from .gpu_search import on_device

        self._device_index = on_device(self.cpu_index, self.metric, device)

    def search(
        self, queries: np.ndarray, k: int, params: Mapping[str, int] | None = None, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """queries [B, D] float32 (or [B, D / 8] uint8 codes) -> (scores [B, k] float32 higher-is-better,
        rows [B, k] int64, -1 padded). Hamming scores are negated distances."""
        params = params or {}
        if self.cpu_index.ntotal == 0:
            return _pad(np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64), k)
        if allowed is not None and allowed.all():
            allowed = None
        if allowed is not None and (self._selectors if self._device_index is None else self._device_index.filters):
            return self._search_once(queries, k, params, allowed)
        if allowed is None:
            return self._search_once(queries, k, params, None)
        return self._search_overfetch(queries, k, params, allowed)

    def _search_once(self, queries, k, params, allowed):
        if self._device_index is not None:
            return self._device_index.search(queries, k, params, allowed)
        keep: list = []  # the bitmap and selector must outlive the call: faiss reads them by raw pointer
        sp = self._search_parameters(params, allowed, keep)
        # fewer queries than threads: faiss's default scans each query's lists on one thread; its
        # probe-parallel fast-scan implementation answers one query ~1.7x sooner, same distances
        # (equal ones may come in another order, as they may when two threads race on the switch)
        parallel = self._fast_scan is not None and len(queries) < faiss.omp_get_max_threads()
        if parallel:  # the SWIG setter itself: faiss's checked __setattr__ costs microseconds
            _SET_IMPLEM(self._fast_scan, PROBE_PARALLEL)
        try:
            scores, rows = self._search_into(queries, k, sp)
        finally:
            if parallel:
                _SET_IMPLEM(self._fast_scan, 0)  # faiss's default again for batches
        return self._higher_is_better(scores), rows

    def _search_into(self, queries, k, sp):
        if self.binary or self._search_index is not self.cpu_index:
            return self._search_index.search(queries, k, params=sp)
        # a float CPU index: faiss's own call under its Python wrapper (checks done by ours)
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        scores = np.empty((len(queries), k), np.float32)
        rows = np.empty((len(queries), k), np.int64)
        self.cpu_index.search_c(len(queries), faiss.swig_ptr(queries), k, faiss.swig_ptr(scores),
                                faiss.swig_ptr(rows), sp)
        return scores, rows

    def _search_overfetch(self, queries, k, params, allowed):
        fetch = min(self.ntotal, max(4 * k, 64))
        while True:
            scores, rows = self._search_once(queries, fetch, params, None)
            keep = (rows >= 0) & allowed[np.maximum(rows, 0)]
            enough = keep.sum(axis=1) >= min(k, int(allowed.sum()))
            if enough.all() or fetch >= self.ntotal:
                break
            fetch = min(self.ntotal, fetch * 4)
        scores = np.where(keep, scores, -np.inf).astype(np.float32)
        order = np.argsort(~keep, axis=1, kind="stable")[:, :k]  # allowed rows first, rank order kept
        out_scores = np.take_along_axis(scores, order, axis=1)
        out_rows = np.where(np.isfinite(out_scores), np.take_along_axis(rows, order, axis=1), -1)
        return _pad(out_scores, out_rows, k)

    def _search_parameters(self, params, allowed, keep):
        if allowed is None:
            key = (params.get("nprobe"), params.get("efSearch"))
            if key not in self._parameter_cache:
                if len(self._parameter_cache) >= 64:
                    self._parameter_cache.clear()
                self._parameter_cache[key] = self._make_parameters(params, None)
            return self._parameter_cache[key]
        bitmap = np.packbits(allowed, bitorder="little")
        sel = faiss.IDSelectorBitmap(len(allowed), faiss.swig_ptr(bitmap))
        keep += [bitmap, sel]
        return self._make_parameters(params, sel)

    def _make_parameters(self, params, sel):
        if self.ivf is not None:
            return faiss.SearchParametersIVF(sel=sel, nprobe=int(params.get("nprobe", self.ivf.nprobe)))
        if self.hnsw is not None:
            return faiss.SearchParametersHNSW(sel=sel, efSearch=int(params.get("efSearch", self.hnsw.hnsw.efSearch)))
        return faiss.SearchParameters(sel=sel) if sel is not None else None

    def _higher_is_better(self, scores: np.ndarray) -> np.ndarray:
        """Scores where higher is better; callers tell padding apart by its row (-1), not its score."""
        return -scores.astype(np.float32) if self.metric in ("l2", HAMMING) else scores

    @property
    def _dtype(self) -> type:
        return np.uint8 if self.binary else np.float32

    def to_bytes(self) -> bytes:
        serialize = faiss.serialize_index_binary if self.binary else faiss.serialize_index
        return serialize(self.cpu_index).tobytes()

    @classmethod
    def from_bytes(cls, data: bytes, factory: str, dim: int, metric: str) -> "FaissIndex":
        deserialize = faiss.deserialize_index_binary if metric == HAMMING else faiss.deserialize_index
        index = deserialize(np.frombuffer(data, dtype=np.uint8))
        if index.d != dim:
            raise InvalidConfig(f"stored index has dimension {index.d}, the manifest says {dim}")
        return cls(factory, dim, metric, index=index)


def _skip_polysemous_training(index: faiss.Index) -> None:
    """The factory turns on polysemous training for PQ: an annealing pass that reorders codes for
    Hamming pre-filtering, which we never use, at ~20x the training time."""
    for part in (faiss.downcast_index(index), faiss.try_extract_index_ivf(index)):
        if part is not None and hasattr(part, "do_polysemous_training"):
            part.do_polysemous_training = False


def _find_hnsw(index: faiss.Index) -> faiss.IndexHNSW | None:
    down = faiss.downcast_index(index)
    return down if isinstance(down, faiss.IndexHNSW) else None


def _pad(scores: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    if scores.shape[1] >= k:
        return scores, rows
    extra = k - scores.shape[1]
    return (
        np.pad(scores, ((0, 0), (0, extra)), constant_values=-np.inf),
        np.pad(rows, ((0, 0), (0, extra)), constant_values=-1),
    )


def _faiss_message(error: RuntimeError) -> str:
    text = str(error).strip().splitlines()
    return text[-1] if text else repr(error)
