"""Building SPANN posting lists from vectors that need not fit in memory.

1. Centroids: hierarchical balanced k-means on a sample (a coarse level, then each coarse
   cluster split in proportion to its size, and any cluster over twice the target size split
   again), so posting lists come out of bounded length.
2. Assignment, one block of rows at a time: each vector goes to its nearest centroid and, by
   SPANN's boundary replication, to up to `replicas - 1` further ones within `closure` of the
   nearest distance, skipping a centroid closer to an already chosen one than to the vector
   (the RNG rule, which spreads replicas over different directions). Each block is written as
   one run file sorted by list, committed by renaming its counts file (so `resume` skips it).
3. Merge: runs (and, for compaction, the previous posting file) are read list-range by
   list-range and written as one contiguous posting file with an offsets table.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable

import faiss
import numpy as np
from tqdm.auto import tqdm

from retriever.errors import InvalidConfig, InvalidRequest

from . import disk, storage
from .diskio import PositionalReader

DEFAULT_MEMORY_CAP = 1 << 30
FLOAT16_MAX = float(np.finfo(np.float16).max)
WORK_DIR = ".build"


@dataclass(frozen=True)
class SpannParams:
    """Build parameters. `lists` defaults to rows / `list_size`."""

    metric: str = "l2"
    lists: int | None = None
    list_size: int = 64  # target vectors per list before replication
    replicas: int = 4  # at most this many lists per vector (SPANN: 8)
    closure: float = 0.15  # replicate to lists within (1 + closure) x the nearest centroid's distance
    train_size: int | None = None
    seed: int = 0
    pq: int = 0  # > 0: a PQ code of this many bytes per posting record in memory, records re-scored from disk
    float_bits: int = 32  # 16: records hold float16 vectors, half the bytes a query reads

    def __post_init__(self) -> None:
        if self.metric not in ("l2", "ip"):
            raise InvalidConfig(f"SPANN metric must be 'l2' or 'ip', got {self.metric!r}")
        if self.lists is not None and self.lists < 1:
            raise InvalidConfig(f"SPANN lists must be >= 1, got {self.lists}")
        if not 1 <= self.replicas <= 16:
            raise InvalidConfig(f"SPANN replicas must be within 1..16, got {self.replicas}")
        if self.pq < 0:
            raise InvalidConfig(f"SPANN pq must be >= 0 (0 = off), got {self.pq}")
        if self.float_bits not in (16, 32):
            raise InvalidConfig(
                f"SPANN records hold float16 or float32 vectors (F16, F32), got F{self.float_bits}"
            )
        if self.closure < 0 or self.list_size < 1:
            raise InvalidConfig(f"SPANN closure must be >= 0 and list_size >= 1, got {self.closure}, {self.list_size}")

    def list_count(self, rows: int) -> int:
        return self.lists or max(1, math.ceil(rows / self.list_size))


def record_dtype(dim: int, float_bits: int = 32) -> np.dtype:
    """One posting: the row id, then its vector (packed: 8 + 4 x dim bytes, 8 + 2 x dim in float16)."""
    return np.dtype([("id", "<i8"), ("vector", f"<f{float_bits // 8}", (dim,))])


# ---- centroids ----------------------------------------------------------------------------------

def balanced_centroids(sample: np.ndarray, lists: int, seed: int = 0) -> np.ndarray:
    """sample [S, D] -> centroids [<= ~lists, D]: a coarse k-means of sqrt(lists) clusters, each
    split into lists in proportion to its size; clusters over twice the average split again."""
    sample = np.ascontiguousarray(sample, dtype=np.float32)
    if lists >= len(sample):
        return sample.copy()
    target = len(sample) / lists  # sample points per list
    coarse = max(1, min(lists, int(math.sqrt(lists))))
    centroids, assign = _kmeans(sample, coarse, seed)
    out = []
    for c in range(coarse):
        members = sample[assign == c]
        if len(members):
            out.append(_split(members, max(1, round(len(members) / target)), target, seed + c + 1))
    return np.concatenate(out)


def _split(members: np.ndarray, parts: int, target: float, seed: int) -> np.ndarray:
    if parts <= 1 and len(members) <= 2 * target:
        return members.mean(axis=0, keepdims=True)
    if len(members) <= parts:
        return members.copy()
    centroids, assign = _kmeans(members, max(parts, 2), seed)
    sizes = np.bincount(assign, minlength=len(centroids))
    out = [centroids[sizes <= 2 * target]]
    for c in np.flatnonzero(sizes > 2 * target):
        out.append(_split(members[assign == c], math.ceil(sizes[c] / target), target, (seed * 31 + int(c)) % 2**31))
    return np.concatenate(out)


def _kmeans(x: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    km = faiss.Kmeans(x.shape[1], k, niter=12, seed=seed, min_points_per_centroid=1, max_points_per_centroid=256)
    km.train(x)
    _, assign = km.index.search(x, 1)
    return km.centroids, assign[:, 0]


def router_for(centroids: np.ndarray) -> faiss.Index:
    """The in-memory index over centroids: exact below 4,096 lists, HNSW above."""
    dim = centroids.shape[1]
    if len(centroids) < 4096:
        router = faiss.IndexFlatL2(dim)
    else:
        router = faiss.IndexHNSWFlat(dim, 32)
        router.hnsw.efConstruction = 80
        router.hnsw.efSearch = 128
    router.add(np.ascontiguousarray(centroids, dtype=np.float32))
    return router


# ---- assignment with boundary replication -------------------------------------------------------

def assign(vectors: np.ndarray, centroids: np.ndarray, router: faiss.Index, params: SpannParams) -> tuple[np.ndarray, np.ndarray]:
    """vectors [B, D] -> (row positions [P], list ids [P]): each row's primary list first, then its
    replicas (closure + RNG rule)."""
    count = min(params.replicas, len(centroids))
    squared, lists = router.search(np.ascontiguousarray(vectors, dtype=np.float32), count)  # [B, R]
    lists = np.where(lists < 0, lists[:, :1], lists)
    distance = np.sqrt(np.maximum(squared, 0))
    keep = np.zeros(lists.shape, dtype=bool)
    keep[:, 0] = True
    chosen = centroids[lists]  # [B, R, D]
    for j in range(1, count):
        near = distance[:, j] <= (1 + params.closure) * distance[:, 0]
        between = np.linalg.norm(chosen[:, :j] - chosen[:, j : j + 1], axis=2)  # [B, j]
        closer_to_chosen = ((between < distance[:, j : j + 1]) & keep[:, :j]).any(axis=1)
        keep[:, j] = near & ~closer_to_chosen & (lists[:, j] != lists[:, 0])
    rows, slots = np.nonzero(keep)
    return rows, lists[rows, slots]


def records_by_list(vectors: np.ndarray, ids: np.ndarray, rows: np.ndarray, lists: np.ndarray,
                    list_count: int, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """-> (records of `dtype` sorted by list, then by id [P], counts per list [L])."""
    order = np.lexsort((ids[rows], lists))
    records = np.empty(len(order), dtype=dtype)
    records["id"] = ids[rows[order]]
    chosen = vectors[rows[order]]
    if dtype["vector"].base == np.float16 and len(chosen) and np.abs(chosen).max() > FLOAT16_MAX:
        raise InvalidRequest(f"a vector has a value beyond float16's range (+-{FLOAT16_MAX:g}): build "
                             "this SPANN index with float32 records (without F16)")
    records["vector"] = chosen
    return records, np.bincount(lists, minlength=list_count).astype(np.int64)


# ---- runs and merge -----------------------------------------------------------------------------

class RunSource:
    """Records grouped by list (list i at records starts[i]..starts[i+1]), in memory or in a file."""

    def __init__(self, counts: np.ndarray, dtype: np.dtype, records: np.ndarray | None = None, reader: PositionalReader | None = None) -> None:
        self.counts = np.asarray(counts, dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(self.counts)])
        self.dtype, self.records, self.reader = dtype, records, reader

    def lists(self, first: int, end: int) -> np.ndarray:
        """The records of lists first..end-1, in list order."""
        a, b = int(self.starts[first]), int(self.starts[end])
        if self.records is not None:
            return self.records[a:b]
        raw = self.reader.read(a * self.dtype.itemsize, (b - a) * self.dtype.itemsize) if b > a else b""
        return np.frombuffer(raw, dtype=self.dtype)


def merge_runs(sources: list[RunSource], path: Path, memory_cap: int, removed: np.ndarray | None = None,
               progress: bool = False) -> tuple[np.ndarray, dict]:
    """Write the lists of every source, list by list (sources in order within a list), leaving
    out `removed` ids, as one contiguous file. -> (offsets [L + 1] in records, {size, sha256})."""
    list_count = len(sources[0].counts)
    dtype = sources[0].dtype
    total = np.sum([s.counts for s in sources], axis=0)  # [L]
    group_records = max(1, memory_cap // (3 * dtype.itemsize))
    new_counts = np.zeros(list_count, dtype=np.int64)
    digest = hashlib.sha256()
    size = 0
    tmp = path.with_name(f".{path.name}.tmp")
    bar = tqdm(total=int(total.sum()), desc="writing posting lists", unit="vec", disable=not progress)
    with disk.create(tmp) as out:
        first = 0
        while first < list_count:
            end = first + 1 + int(np.searchsorted(np.cumsum(total[first + 1 :]), group_records - total[first], side="right"))
            end = min(end, list_count)
            parts, labels = [], []
            for source in sources:
                part = source.lists(first, end)
                parts.append(part)
                labels.append(np.repeat(np.arange(first, end), source.counts[first:end]))
            records, label = np.concatenate(parts), np.concatenate(labels)
            if removed is not None and len(removed):
                keep = ~np.isin(records["id"], removed)
                records, label = records[keep], label[keep]
            order = np.argsort(label, kind="stable")
            data = records[order].tobytes()
            out.write(data)
            digest.update(data)
            size += len(data)
            new_counts[first:end] = np.bincount(label - first, minlength=end - first)
            bar.update(int(total[first:end].sum()))
            first = end
    bar.close()
    disk.replace(tmp, path)
    return np.concatenate([[0], np.cumsum(new_counts)]).astype(np.int64), {"size": size, "sha256": digest.hexdigest()}


# ---- the streaming build ------------------------------------------------------------------------

def block_rows_for(dim: int, params: SpannParams, memory_cap: int) -> int:
    """Rows per assignment block so the block, its replicas and their sorting stay under the cap."""
    per_row = record_dtype(dim).itemsize * (params.replicas * 3 + 2)
    return max(256, memory_cap // per_row)


def source_fingerprint(vectors: np.ndarray) -> str:
    """Shape, dtype and a hash of the first and last rows: enough to refuse resuming over other data."""
    h = hashlib.sha256(f"{vectors.shape}{vectors.dtype}".encode())
    for part in (vectors[:64], vectors[-64:]):
        h.update(np.ascontiguousarray(part).tobytes())
    return h.hexdigest()


def build_runs(vectors: np.ndarray, work: Path, params: SpannParams, memory_cap: int, resume: bool,
               progress: bool = True) -> tuple[np.ndarray, list[Path]]:
    """Centroids and one sorted run file per block of `vectors` [N, D] (memory-mapped is fine)
    in `work`; with `resume`, centroids and finished blocks from an interrupted build are kept."""
    rows, dim = vectors.shape
    block = block_rows_for(dim, params, memory_cap)
    state = {"params": asdict(params), "source": source_fingerprint(vectors), "block_rows": block}
    storage.prepare_work_dir(work, state, resume, f"the vectors or SPANN parameters changed since the build in {str(work)!r} "
                             "was interrupted; build again without resume")
    centroids_path = work / "centroids.npy"
    if centroids_path.exists():
        centroids = np.load(centroids_path)
    else:
        centroids = balanced_centroids(sample_rows(vectors, params, memory_cap), params.list_count(rows), params.seed)
        _save_atomic(centroids_path, centroids)
    router = router_for(centroids)
    runs = []
    blocks = range(0, rows, block)
    bar = tqdm(total=rows, desc="assigning to posting lists", unit="vec", disable=not progress)
    for number, start in enumerate(blocks):
        run, counts_path = work / f"run-{number:06d}.bin", work / f"run-{number:06d}.counts.npy"
        runs.append(run)
        if not counts_path.exists():
            chunk = np.ascontiguousarray(vectors[start : start + block], dtype=np.float32)
            positions, lists = assign(chunk, centroids, router, params)
            records, counts = records_by_list(chunk, np.arange(start, start + len(chunk)), positions, lists,
                                              len(centroids), record_dtype(chunk.shape[1], params.float_bits))
            _write_atomic(run, records.tobytes())
            _save_atomic(counts_path, counts)
        bar.update(min(block, rows - start))
    bar.close()
    return centroids, runs


def run_sources(runs: Iterable[Path], dtype: np.dtype) -> list[RunSource]:
    return [RunSource(np.load(run.with_name(run.name.replace(".bin", ".counts.npy"))), dtype, reader=PositionalReader(run)) for run in runs]


def sample_rows(vectors: np.ndarray, params: SpannParams, memory_cap: int) -> np.ndarray:
    rows, dim = vectors.shape
    lists = params.list_count(rows)
    size = params.train_size or max(65_536, 16 * lists)
    size = min(rows, size, max(1024, memory_cap // (4 * dim * 4)))
    if lists > size:
        raise InvalidRequest(f"SPANN wants {lists} lists but can sample only {size} rows under the memory cap; raise the cap or lower lists")
    picks = np.sort(np.random.default_rng(params.seed).choice(rows, size=size, replace=False))
    return np.asarray(vectors[picks], dtype=np.float32)


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    disk.write_file(tmp, data)
    disk.replace(tmp, path)


def _save_atomic(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(f".{path.stem}.tmp.npy")
    disk.write_file(tmp, storage.npy_bytes(array))
    disk.replace(tmp, path)
