"""SPANN, the memory/disk hybrid index (Chen et al., "SPANN: Highly-efficient Billion-scale
Approximate Nearest Neighbor Search", NeurIPS 2021): posting-list centroids in memory behind a
faiss router, posting lists (row id + float32 vector) on disk in one contiguous file with an
offsets table. A query reads only the lists whose centroid lies within (1 + prune) of the
nearest one's distance, at most `nprobe` of them, through positioned reads that are counted.

With `pq` set, each posting record also has a PQ code kept in memory: the chosen lists are
scored by their codes, and only the best `rescore` records are read from disk and re-scored
exactly (`spann_pq`).

Updates go to a delta (appended vectors, searched exactly beside the lists, and removed ids)
that is saved with the index and folded into new posting files by `compact`.

A directory holds one generation at a time, named by `spann.json` (sizes and sha256 of every
file; the manifest is replaced by rename, so a crash leaves the previous generation whole).
`open` checks every file's checksum, the posting file's included, so a truncated posting file
or a mismatched offsets table is a clear error, not a wrong answer.
"""

from __future__ import annotations

import functools
import io
import json
from dataclasses import asdict
from pathlib import Path

import faiss
import numpy as np

from retriever.errors import CorruptIndex, InvalidRequest
from retriever.kernels import heap
from retriever.kernels.postings import records_top_k

from . import disk, storage
from .diskio import PositionalReader
from .spann_build import (DEFAULT_MEMORY_CAP, WORK_DIR, RunSource, SpannParams, assign, build_runs, merge_runs,
                          record_dtype, records_by_list, router_for, run_sources, sample_rows)
from .spann_pq import encode_postings, lookup_table, train_pq

FORMAT_VERSION = 1
MANIFEST = "spann.json"
DEFAULT_NPROBE = 32
DEFAULT_PRUNE = 1.0  # read lists within 2x the nearest centroid's distance (capped by nprobe)
DEFAULT_RESCORE = 100  # PQ mode: records read from disk and scored exactly, per query
EXACT_ROUTING = 16_384  # lists routed to by one exact product over the centroids (more: the HNSW router)
COALESCE_BYTES = 4096  # PQ mode: wanted records closer than this are fetched by one read


class SpannIndex:
    """Rows 0..rows-1 in the posting lists (`live` of them not removed by a compaction), later
    rows in the delta; ids are row numbers."""

    def __init__(self, path: Path, manifest: dict, centroids: np.ndarray, router: faiss.Index, offsets: np.ndarray,
                 reader: PositionalReader, delta: np.ndarray, removed: np.ndarray, pq: tuple[np.ndarray, np.ndarray] | None) -> None:
        self.path, self.manifest = path, manifest
        self.dim, self.metric = manifest["dim"], manifest["params"]["metric"]
        self.params = SpannParams(**manifest["params"])
        self.rows = manifest["rows"]
        self.centroids, self.router, self.offsets, self.reader = centroids, router, offsets, reader
        self.dtype = record_dtype(self.dim, self.params.float_bits)
        self.delta = delta  # [A, D] rows `rows`.. in order
        self.removed = removed  # sorted int64 ids
        self.pq_centroids, self.codes = pq if pq is not None else (None, None)  # [M, 256, D / M], [records, M]

    # ---- build and open --------------------------------------------------------------------------

    @classmethod
    def build(cls, vectors: np.ndarray, path: str | Path, params: SpannParams = SpannParams(), *,
              memory_cap: int = DEFAULT_MEMORY_CAP, resume: bool = False, progress: bool = True) -> "SpannIndex":
        """Index `vectors` [N, D] (an .npy memory map works: it is read in blocks under `memory_cap`
        bytes). With `resume`, an interrupted build in `path` continues from its last finished block."""
        path = Path(path)
        if vectors.ndim != 2 or len(vectors) == 0:
            raise InvalidRequest(f"SPANN needs a non-empty [rows, dim] array, got shape {vectors.shape}")
        if (path / MANIFEST).exists():
            raise InvalidRequest(f"{str(path)!r} already holds a SPANN index; open it, or build into another directory")
        disk.mkdir(path)
        work = path / WORK_DIR
        centroids, runs = build_runs(vectors, work, params, memory_cap, resume, progress)
        dtype = record_dtype(vectors.shape[1], params.float_bits)
        offsets, postings = merge_runs(run_sources(runs, dtype), path / "postings-000001.bin", memory_cap, progress=progress)
        pq = None
        if params.pq:
            pq_centroids = train_pq(sample_rows(vectors, params, memory_cap), params.pq, params.seed)
            pq = (pq_centroids, _encode(path / "postings-000001.bin", offsets, dtype, pq_centroids))
        _commit(path, 1, {"dim": vectors.shape[1], "params": asdict(params), "rows": len(vectors), "live": len(vectors)},
                centroids, offsets, postings, np.zeros((0, vectors.shape[1]), np.float32), np.zeros(0, np.int64), pq)
        disk.rmtree(work)
        return cls.open(path)

    @classmethod
    def open(cls, path: str | Path, verify: bool = True) -> "SpannIndex":
        """Load centroids, router, offsets and delta (checksummed) and open the posting file for
        reads. `verify` also hashes the posting file (one sequential read of it)."""
        path = Path(path)
        manifest = _read_manifest(path)
        files = manifest["files"]
        names = manifest["names"]
        for role in ("centroids", "offsets", "router", "delta", "removed"):
            storage.read_verified(path, names[role], files[names[role]])  # raises CorruptIndex
        postings = path / names["postings"]
        if not postings.exists():
            raise CorruptIndex(f"{str(postings)!r} is missing")
        centroids = np.load(path / names["centroids"])
        offsets = np.load(path / names["offsets"])
        float_bits = SpannParams(**manifest["params"]).float_bits
        expected = int(offsets[-1]) * record_dtype(manifest["dim"], float_bits).itemsize
        size = postings.stat().st_size
        if size != files[names["postings"]]["size"] or size != expected or len(offsets) != len(centroids) + 1:
            raise CorruptIndex(f"{str(postings)!r} has {size} bytes; the offsets table describes {expected} and the manifest "
                               f"{files[names['postings']]['size']}: posting file truncated or offsets table mismatched")
        if verify and storage.sha256_file(postings) != files[names["postings"]]["sha256"]:
            raise CorruptIndex(f"{str(postings)!r} failed its sha256 checksum: the posting file is corrupt")
        router = faiss.deserialize_index(np.fromfile(path / names["router"], dtype=np.uint8))
        pq = None
        if "codes" in names:
            pq = tuple(np.load(io.BytesIO(storage.read_verified(path, names[role], files[names[role]]))) for role in ("pq", "codes"))
            if len(pq[1]) != int(offsets[-1]):
                raise CorruptIndex(f"{str(path / names['codes'])!r} holds {len(pq[1])} codes for {int(offsets[-1])} posting records")
        return cls(path, manifest, centroids, router, offsets, PositionalReader(postings),
                   np.load(path / names["delta"]), np.load(path / names["removed"]), pq)

    # ---- search ----------------------------------------------------------------------------------

    @property
    def ntotal(self) -> int:
        return self.manifest["live"] + len(self.delta) - len(self.removed)

    @property
    def lists(self) -> int:
        return len(self.centroids)

    def list_lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def search(self, queries: np.ndarray, k: int, nprobe: int = DEFAULT_NPROBE, prune: float = DEFAULT_PRUNE,
               allowed: np.ndarray | None = None, rescore: int = DEFAULT_RESCORE) -> tuple[np.ndarray, np.ndarray]:
        """queries [B, D] -> (scores [B, k] higher-is-better, ids [B, k], -1 padded). Lists read
        by several queries of the batch are read once. In PQ mode the best max(k, rescore)
        records by code are read and scored exactly."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise InvalidRequest(f"queries must have shape [batch, {self.dim}], got {queries.shape}")
        squared, lists = self._route(queries, min(nprobe, self.lists))  # [B, P]
        chosen = [self._within(lists[b], squared[b], prune) for b in range(len(queries))]
        if self.codes is None:  # every list a query needs, read once for the batch in file order
            wanted = np.unique(np.concatenate(chosen))
            records, where = self._read_lists(wanted)
        out_scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        out_ids = np.full((len(queries), k), -1, dtype=np.int64)
        delta_ids = np.arange(self.rows, self.rows + len(self.delta))
        for b, query in enumerate(queries):
            if self.codes is not None:
                mine = self._best_by_code(query, chosen[b], max(k, rescore))
            else:  # the query's lists, or (a batch of one) the whole buffer as it was read
                own = np.searchsorted(wanted, chosen[b])
                mine = records if len(queries) == 1 else records[_positions(where, own)]
            depth = k * self.params.replicas  # the k best distinct ids lie within this many records
            scores, ids = records_top_k(mine, query, depth, self.metric, allowed, self.removed)
            if len(self.delta):
                keep = self._allowed(delta_ids, allowed)
                scores = np.concatenate([scores, self._scores(self.delta, query)[keep]])
                ids = np.concatenate([ids, delta_ids[keep]])
            top_scores, top_ids = _top_distinct(scores, ids, k, self.params.replicas)
            out_scores[b, : len(top_ids)], out_ids[b, : len(top_ids)] = top_scores, top_ids
        return out_scores, out_ids

    def _route(self, queries: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
        """Each query's `count` nearest centroids, nearest first -> (squared distances, lists) [B,
        count]. Up to EXACT_ROUTING lists one product over the centroids finds them exactly, faster
        than the graph router for one query; past that, the router."""
        if self.lists > EXACT_ROUTING:
            return self.router.search(queries, count)
        # [B, L] |q|^2 - squared distance: the nearest centroids score highest
        twice, norms = self._routing_terms
        closeness = queries @ twice.T
        closeness -= norms
        nearest, lists = heap.top_k(closeness, count)
        return np.vecdot(queries, queries)[:, None] - nearest, lists

    @functools.cached_property
    def _routing_terms(self) -> tuple[np.ndarray, np.ndarray]:
        """(2 x centroids, |centroid|^2): a query's closeness to each centroid is one product
        and one subtraction in place."""
        return 2 * self.centroids, np.vecdot(self.centroids, self.centroids)

    def _within(self, lists: np.ndarray, squared: np.ndarray, prune: float) -> np.ndarray:
        """The router's lists [P] for one query whose centroid lies within (1 + prune) x the
        nearest one's distance."""
        distance = np.sqrt(np.maximum(squared, 0))
        return lists[(lists >= 0) & (distance <= (1 + prune) * distance[0])]

    def _read_lists(self, numbers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Sorted list numbers -> (their records in one buffer, each list's [start, end) in it
        [L, 2]). Each run of adjacent lists is one positioned read straight into the buffer."""
        starts, ends = self.offsets[numbers], self.offsets[numbers + 1]
        sizes = ends - starts
        where = np.stack([np.cumsum(sizes) - sizes, np.cumsum(sizes)], axis=1)
        records = np.empty(int(sizes.sum()), dtype=self.dtype)
        new_run = np.ones(len(numbers), dtype=bool)
        new_run[1:] = starts[1:] != ends[:-1]  # a list that starts where the one before ends joins its read
        first = np.flatnonzero(new_run)
        last = np.append(first[1:], len(numbers)) - 1
        size = self.dtype.itemsize
        spans = zip(starts[first].tolist(), ends[last].tolist())
        ranges = [(a * size, (b - a) * size) for a, b in spans if b > a]
        self.reader.read_into(ranges, memoryview(records).cast("B"))
        return records, where

    def _best_by_code(self, query: np.ndarray, chosen: np.ndarray, depth: int) -> np.ndarray:
        """The `depth` records of the chosen lists whose codes score best, read from disk. Records
        less than a page apart share one read: a device pays per read far more than per byte."""
        positions = np.concatenate([np.arange(self.offsets[n], self.offsets[n + 1]) for n in chosen] + [np.zeros(0, np.int64)])
        if len(positions) > depth:
            table = lookup_table(query, self.pq_centroids, self.metric)  # [M, 256]
            approx = table[np.arange(table.shape[0]), self.codes[positions]].sum(axis=1)  # [C]
            positions = positions[np.argpartition(-approx, depth - 1)[:depth]]
        positions = np.sort(positions)
        size = self.dtype.itemsize
        gap = max(1, COALESCE_BYTES // size)
        runs = np.split(positions, np.flatnonzero(np.diff(positions) > gap) + 1) if len(positions) else []
        out = []
        for run in runs:
            span = np.frombuffer(self.reader.read(int(run[0]) * size, int(run[-1] - run[0] + 1) * size), dtype=self.dtype)
            out.append(span[run - run[0]])
        return np.concatenate(out + [np.zeros(0, dtype=self.dtype)])

    def _scores(self, vectors: np.ndarray, query: np.ndarray) -> np.ndarray:
        dots = vectors @ query  # [C]
        if self.metric == "ip":
            return dots
        return 2 * dots - np.einsum("ij,ij->i", vectors, vectors) - float(query @ query)

    def _allowed(self, ids: np.ndarray, allowed: np.ndarray | None) -> np.ndarray:
        keep = np.ones(len(ids), dtype=bool)
        if len(self.removed):
            keep &= ~np.isin(ids, self.removed)
        if allowed is not None:
            inside = ids < len(allowed)
            keep &= inside & allowed[np.where(inside, ids, 0)]
        return keep

    # ---- updates ---------------------------------------------------------------------------------

    def add(self, vectors: np.ndarray) -> np.ndarray:
        """Append vectors [A, D] to the delta (saved before returning) -> their ids."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim or not np.isfinite(vectors).all():
            raise InvalidRequest(f"vectors must be finite with shape [rows, {self.dim}], got {vectors.shape}")
        first = self.rows + len(self.delta)
        self._save_delta(np.concatenate([self.delta, vectors]), self.removed)
        return np.arange(first, first + len(vectors))

    def remove(self, ids) -> None:
        """Mark ids deleted (saved before returning); they leave the posting file at `compact`."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if len(ids) and (ids.min() < 0 or ids.max() >= self.rows + len(self.delta)):
            raise InvalidRequest(f"ids must be within 0..{self.rows + len(self.delta) - 1}")
        self._save_delta(self.delta, np.union1d(self.removed, ids))

    def compact(self, memory_cap: int = DEFAULT_MEMORY_CAP, progress: bool = False, *, into: str | Path | None = None,
                appended: np.ndarray | None = None, removed: np.ndarray | None = None) -> "SpannIndex":
        """Fold the delta (and `appended` rows after it) into a new generation of posting lists with
        the same centroids and replication rules, leaving out removed ids (and `removed`); returns
        the index opened on it. `into` writes the new generation to another directory instead,
        leaving this one as it is (for readers that still use it)."""
        delta = self.delta if appended is None else np.concatenate([self.delta, np.asarray(appended, dtype=np.float32)])
        gone = self.removed if removed is None else np.union1d(self.removed, np.asarray(removed, dtype=np.int64))
        target = self.path if into is None else Path(into)
        disk.mkdir(target)
        generation = self.manifest["generation"] + 1 if into is None else 1
        delta_ids = np.arange(self.rows, self.rows + len(delta))
        live = ~np.isin(delta_ids, gone)
        rows, lists = assign(delta[live], self.centroids, self.router, self.params)
        records, counts = records_by_list(delta[live], delta_ids[live], rows, lists, self.lists, self.dtype)
        old = RunSource(np.diff(self.offsets), self.dtype, reader=self.reader)
        fresh = RunSource(counts, self.dtype, records=records)
        posting_path = target / f"postings-{generation:06d}.bin"
        offsets, postings = merge_runs([old, fresh], posting_path, memory_cap, removed=gone, progress=progress)
        pq = None if self.codes is None else (self.pq_centroids, _encode(posting_path, offsets, self.dtype, self.pq_centroids))
        live_rows = self.manifest["live"] - int(np.sum(gone < self.rows)) + int(live.sum())
        body = {"dim": self.dim, "params": self.manifest["params"], "rows": self.rows + len(delta), "live": live_rows}
        _commit(target, generation, body, self.centroids, offsets, postings, np.zeros((0, self.dim), np.float32),
                np.zeros(0, np.int64), pq)
        if into is None:
            self.reader.close()
        return SpannIndex.open(target, verify=False)

    def _save_delta(self, delta: np.ndarray, removed: np.ndarray) -> None:
        manifest = dict(self.manifest)
        revision = manifest.get("revision", 0) + 1
        g = manifest["generation"]
        names = {**manifest["names"], "delta": f"delta-{g:06d}-{revision:06d}.npy", "removed": f"removed-{g:06d}-{revision:06d}.npy"}
        kept = [names[role] for role in ("centroids", "offsets", "router", "postings", "pq", "codes") if role in names]
        files = {n: manifest["files"][n] for n in kept}
        files[names["delta"]] = storage.write_new_file(self.path, names["delta"], storage.npy_bytes(delta))
        files[names["removed"]] = storage.write_new_file(self.path, names["removed"], storage.npy_bytes(removed))
        manifest.update(names=names, files=files, revision=revision)
        _write_manifest(self.path, manifest)
        _remove_others(self.path, set(files))
        self.manifest, self.delta, self.removed = manifest, delta, removed

    # ---- I/O statistics --------------------------------------------------------------------------

    def io_counters(self) -> dict[str, int]:
        return self.reader.counters()

    def reset_io_counters(self) -> None:
        self.reader.reset_counters()

    def drop_page_cache(self) -> None:
        self.reader.drop_cache()

    def memory_bytes(self) -> int:
        """What the index keeps in memory: centroids, router, offsets, delta, and PQ codes if any."""
        codes = 0 if self.codes is None else self.codes.nbytes + self.pq_centroids.nbytes
        return int(self.centroids.nbytes + faiss.serialize_index(self.router).nbytes + self.offsets.nbytes
                   + self.delta.nbytes + self.removed.nbytes + codes)

    def close(self) -> None:
        self.reader.close()


def _positions(where: np.ndarray, lists: np.ndarray) -> np.ndarray:
    """Record positions of these lists (rows of `where`, [start, end) each), in order."""
    lengths = where[lists, 1] - where[lists, 0]
    return np.repeat(where[lists, 0] - np.cumsum(lengths) + lengths, lengths) + np.arange(int(lengths.sum()))


def _top_distinct(scores: np.ndarray, ids: np.ndarray, k: int, replicas: int) -> tuple[np.ndarray, np.ndarray]:
    """The k best distinct ids (ties by id). A vector appears at most `replicas` times, so the k
    best distinct ids lie within the k x replicas best entries."""
    if len(scores) > k * replicas:
        best = np.argpartition(-scores, k * replicas - 1)[: k * replicas]
        scores, ids = scores[best], ids[best]
    by_id = np.lexsort((-scores, ids))  # each id's best copy first
    scores, ids = scores[by_id], ids[by_id]
    first = np.ones(len(ids), dtype=bool)
    first[1:] = ids[1:] != ids[:-1]
    scores, ids = scores[first], ids[first]
    order = np.lexsort((ids, -scores))[:k]
    return scores[order], ids[order]


def _encode(posting_path: Path, offsets: np.ndarray, dtype: np.dtype, pq_centroids: np.ndarray) -> np.ndarray:
    reader = PositionalReader(posting_path)
    try:
        return encode_postings(reader, int(offsets[-1]), dtype, pq_centroids)
    finally:
        reader.close()


def _commit(path: Path, generation: int, body: dict, centroids: np.ndarray, offsets: np.ndarray, postings: dict,
            delta: np.ndarray, removed: np.ndarray, pq: tuple[np.ndarray, np.ndarray] | None) -> None:
    g = f"{generation:06d}"
    names = {"centroids": f"centroids-{g}.npy", "offsets": f"offsets-{g}.npy", "router": f"router-{g}.faiss",
             "postings": f"postings-{g}.bin", "delta": f"delta-{g}-000000.npy", "removed": f"removed-{g}-000000.npy"}
    files = {
        names["centroids"]: storage.write_new_file(path, names["centroids"], storage.npy_bytes(centroids.astype(np.float32))),
        names["offsets"]: storage.write_new_file(path, names["offsets"], storage.npy_bytes(offsets)),
        names["router"]: storage.write_new_file(path, names["router"], faiss.serialize_index(router_for(centroids)).tobytes()),
        names["postings"]: postings,
        names["delta"]: storage.write_new_file(path, names["delta"], storage.npy_bytes(delta)),
        names["removed"]: storage.write_new_file(path, names["removed"], storage.npy_bytes(removed)),
    }
    if pq is not None:
        names.update(pq=f"pq-{g}.npy", codes=f"codes-{g}.npy")
        for role, array in zip(("pq", "codes"), pq):
            files[names[role]] = storage.write_new_file(path, names[role], storage.npy_bytes(array))
    _write_manifest(path, {**body, "format_version": FORMAT_VERSION, "generation": generation, "names": names, "files": files})
    _remove_others(path, set(files))


def _write_manifest(path: Path, manifest: dict) -> None:
    text = json.dumps({**manifest, "checksum": storage.sha256_bytes(_canonical(manifest))}, indent=1)
    tmp = path / f".{MANIFEST}.tmp"
    disk.write_file(tmp, text.encode("utf-8"))
    disk.fsync_dir(path)
    disk.replace(tmp, path / MANIFEST)
    disk.fsync_dir(path)


def _read_manifest(path: Path) -> dict:
    try:
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
        checksum = manifest.pop("checksum")
    except FileNotFoundError:
        raise CorruptIndex(f"{str(path)!r} holds no SPANN index ({MANIFEST} is missing)") from None
    except (ValueError, KeyError, AttributeError):
        raise CorruptIndex(f"{str(path / MANIFEST)!r} is not a valid SPANN manifest") from None
    if storage.sha256_bytes(_canonical(manifest)) != checksum:
        raise CorruptIndex(f"{str(path / MANIFEST)!r} failed its checksum")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise CorruptIndex(f"{str(path / MANIFEST)!r} has format_version {manifest.get('format_version')!r}; this engine reads {FORMAT_VERSION}")
    return manifest


def _canonical(manifest: dict) -> bytes:
    return json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()


def _remove_others(path: Path, keep: set[str]) -> None:
    """Files of earlier generations and revisions, once the manifest no longer names them."""
    for entry in path.iterdir():
        if entry.is_file() and entry.name not in keep and entry.name != MANIFEST:
            disk.unlink(entry)
