"""Storage-engine benchmark: commit latency as a collection grows, a long run of single-document
upserts through the server (files, descriptors, ack latency over time), search speed of a
collection shaped by small upserts against a fully merged one, resident memory and open time.

The previous storage format (the engine at --peer-ref, a git revision) runs the commit-latency
part in its own process on the same machine in the same run. Prints one JSON object on stdout
(progress on stderr).

    python bench/storage.py [--sizes 10000,100000] [--upserts 2000] [--memory-size 100000]
                            [--build-size 200000 --memory-cap 2GB] [--parts commit,...] [--out r.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import emit, log, timed  # noqa: E402
from serve import start_server  # noqa: E402

DIM = 96
BATCH = 1000
WORDS = 50_000  # synthetic vocabulary: Zipf-distributed words, 20 per document
CONFIG = {
    "name": "store",
    "max_k": 100,
    "max_batch": 100_000,
    "fields": [
        {"name": "dense", "dim": DIM},
        {"name": "bm25", "kind": "bm25", "stemmer": "", "stopwords": ""},
    ],
}
ROOT = Path(__file__).resolve().parent.parent


def documents(start: int, count: int, seed: int) -> tuple[list[dict], np.ndarray]:
    rng = np.random.default_rng(seed)
    words = np.minimum(rng.zipf(1.3, size=(count, 20)), WORDS)
    docs = [
        {"id": f"d{start + i}", "text": " ".join(f"w{w}" for w in row), "n": start + i}
        for i, row in enumerate(words)
    ]
    return docs, rng.standard_normal((count, DIM)).astype(np.float32)


def growth(have: int, want: int):
    """The documents (and vectors) that grow a collection from `have` to `want`, 20k a batch."""
    while have < want:
        n = min(20_000, want - have)
        yield documents(have, n, seed=have)
        have += n


def grow(collection, have: int, want: int) -> int:
    for docs, vectors in growth(have, want):
        collection.add(docs, vectors={"dense": vectors})
    return max(have, want)


def commit_latency(sizes: list[int], work: Path, repeats: int = 60, background: bool = False) -> dict:
    """Seconds of one 1,000-document upsert batch (10% replacing live documents) at each size:
    p50 / p90 / p99, and the mean, which carries the flushes of the write buffer (one per 50
    batches: the batches are logged) and the merges they set off. With `background`, as `retriever
    serve` runs it: a merger thread merges beside the writes, and a commit's time is what an
    upsert's ack waits for. The engines before the write-ahead log commit a segment per batch."""
    import retriever

    collection = retriever.Collection.create(work / f"commit{'-bg' if background else ''}", CONFIG)
    registry = None
    if background:
        from retriever.registry import Registry

        registry = Registry.open([collection.path])
        registry.start_merging()

    def write(change):
        return registry.write(CONFIG["name"], change)[0] if registry else change(collection)

    out, have = {}, 0
    rng = np.random.default_rng(1)
    have = write(
        lambda c: grow(c, 0, BATCH)
    )  # warm-up: first-use costs (imports, kernels) are not a commit's
    for size in sizes:
        log(f"commit latency{' (background merges)' if background else ''}: growing to {size} documents")
        have = write(lambda c: grow(c, have, size))
        times = []
        for r in range(repeats):
            docs, vectors = documents(have, BATCH, seed=10_000 + r)
            for i, row in enumerate(rng.choice(have, size=BATCH // 10, replace=False)):  # a tenth replaces
                docs[i]["id"] = f"d{int(row)}"
            start = time.perf_counter()
            write(lambda c: c.add(docs, vectors={"dense": vectors}))
            times.append(time.perf_counter() - start)
            have += BATCH - len({d["id"] for d in docs[: BATCH // 10]})
        current = registry.reader(CONFIG["name"]) if registry else collection
        files = sum(1 for p in current.path.iterdir() if not p.name.startswith("."))
        out[str(size)] = {
            "p50_s": round(statistics.median(times), 4),
            "p90_s": round(float(np.percentile(times, 90)), 4),
            "p99_s": round(float(np.percentile(times, 99)), 4),
            "mean_s": round(float(np.mean(times)), 4),
            "documents_at_start": size,
            "documents": len(current),
            "files": files,
            "segments": len(getattr(current, "segments", [])) or None,
        }
    if registry:
        registry.stop_merging()
    first, last = out[str(sizes[0])], out[str(sizes[-1])]
    out["p50_last_over_first"] = round(last["p50_s"] / first["p50_s"], 2)
    out["mean_last_over_first"] = round(last["mean_s"] / first["mean_s"], 2)
    return out


def peer_commit_latency(ref: str, sizes: list[int], work: Path) -> dict:
    """The same measure, run by the engine at git revision `ref` in its own process."""
    engine = work / "peer-engine"
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", ref, "retriever", "index", "kernels"],
        capture_output=True,
        check=True,
    )
    engine.mkdir()
    subprocess.run(["tar", "-x", "-C", str(engine)], input=archive.stdout, check=True)
    shutil.move(str(engine / "index"), str(engine / "retriever" / "index"))
    shutil.move(str(engine / "kernels"), str(engine / "retriever" / "kernels"))
    peer_work = work / "peer"
    peer_work.mkdir()
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--only-commit",
        "--sizes",
        ",".join(map(str, sizes)),
        "--work",
        str(peer_work),
    ]
    env = {**os.environ, "PYTHONPATH": str(engine)}
    result = subprocess.run(command, cwd=engine, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        return {"error": result.stderr[-2000:]}
    return json.loads(result.stdout)


def server_upserts(count: int, base: int, work: Path) -> dict:
    """`count` single-document upserts through `retriever serve` (a tenth replacing live ones) on
    a collection of `base` documents: files and descriptors of the server, ack latency over time."""
    import retriever

    path = work / "served"
    collection = retriever.Collection.create(path, CONFIG)
    grow(collection, 0, base)
    proc, port = start_server(path, workers=8)  # the serving bench's: `retriever serve` in its own process
    remote = retriever.connect(f"grpc://127.0.0.1:{port}/store", timeout=120)
    rng = np.random.default_rng(2)
    latencies, most_files, most_fds, have = [], 0, 0, base
    start = time.perf_counter()
    try:
        for i in range(count):
            docs, vectors = documents(have, 1, seed=100_000 + i)
            if i % 10 == 0:
                docs[0]["id"] = f"d{int(rng.integers(0, have))}"
            else:
                have += 1
            t0 = time.perf_counter()
            remote.add(docs, vectors={"dense": vectors})
            latencies.append(time.perf_counter() - t0)
            if i % 50 == 0 or i == count - 1:
                most_files = max(most_files, sum(1 for _ in path.iterdir()))
                most_fds = max(most_fds, len(os.listdir(f"/proc/{proc.pid}/fd")))
        elapsed = time.perf_counter() - start
    finally:
        remote.close()
        proc.terminate()
        proc.wait()
    windows = np.array_split(np.asarray(latencies) * 1000, 5)
    return {
        "upserts": count,
        "base_documents": base,
        "documents_per_s": round(count / elapsed, 1),
        "max_files": most_files,
        "max_open_fds": most_fds,
        "ack_ms_by_fifth": [
            {"p50": round(float(np.median(w)), 2), "p99": round(float(np.percentile(w, 99)), 2)}
            for w in windows
        ],
    }


def search_after_small_upserts(base: int, upserts: int, work: Path, rounds: int = 15) -> dict:
    """Queries/s (bm25 and dense, batch 32) of a collection after `upserts` single-document upserts
    with the default merge policy, of the same collection after `optimize`, and of the same
    documents built in one write (one segment from the start). The three are timed in turns,
    `rounds` times each, so the machine's noise falls on all alike; medians."""
    import retriever

    def shaped(name: str):
        collection = retriever.Collection.create(work / name, CONFIG)
        grow(collection, 0, base)
        for i in range(upserts):
            docs, vectors = documents(base + i, 1, seed=200_000 + i)
            collection.add(docs, vectors={"dense": vectors})
        return collection

    after_upserts, optimized = shaped("shaped"), shaped("optimized")
    segments = len(after_upserts.segments)  # the write buffer's scratch segments too
    optimized.optimize()
    in_one_write = retriever.Collection.create(work / "one-write", CONFIG)
    parts = [*growth(0, base), *(documents(base + i, 1, seed=200_000 + i) for i in range(upserts))]
    in_one_write.add([d for docs, _ in parts for d in docs],
                     vectors={"dense": np.concatenate([v for _, v in parts])})
    queries = np.random.default_rng(3).standard_normal((32, DIM)).astype(np.float32)
    texts = [f"w{a} w{b}" for a, b in np.random.default_rng(4).integers(1, 200, size=(32, 2))]
    searches = {
        "dense": lambda c: c.search(queries, k=10),
        "bm25": lambda c: c.search(texts, k=10, fields="bm25"),
    }
    collections = {"after_upserts": after_upserts, "optimized": optimized, "in_one_write": in_one_write}
    times: dict = {(c, f): [] for c in collections for f in searches}
    for _ in range(rounds):
        for (c, f), runs in times.items():
            runs.append(timed(lambda: searches[f](collections[c]), 3))
    qps = {c: {f: round(32 / statistics.median(times[c, f]), 1) for f in searches} for c in collections}
    return {
        "base_documents": base,
        "single_upserts": upserts,
        "segments_after_upserts": segments,
        "rounds": rounds,
        "qps": qps,
        "after_upserts_over_optimized": {f: _ratio(qps, "after_upserts", "optimized", f) for f in searches},
        "optimized_over_in_one_write": {f: _ratio(qps, "optimized", "in_one_write", f) for f in searches},
    }


def _ratio(qps: dict, top: str, bottom: str, field: str) -> float:
    return round(qps[top][field] / qps[bottom][field], 3)


def memory_and_open(size: int, work: Path) -> dict:
    """Resident memory and wall time of opening a collection of `size` documents, in a fresh process."""
    import retriever

    path = work / "opened"
    collection = retriever.Collection.create(path, CONFIG)
    grow(collection, 0, size)
    collection.optimize()
    return {"documents": size, **open_probe(path)}


def open_probe(path: Path) -> dict:
    """Opening a collection in a fresh process (three runs, medians): seconds, and resident
    memory added by the open and then by one search of each field."""
    import retriever

    files = retriever.Collection.open(path).manifest["files"]  # this version's (retired ones may linger)
    # what the fields search: faiss files, the vectors a Flat segment scans, postings (not documents)
    index_bytes = sum(e["size"] for name, e in files.items() if not name.endswith(".docs.arrow"))
    probe = (
        "import resource, time, sys, retriever\n"
        "rss = lambda: int(open('/proc/self/statm').read().split()[1]) * resource.getpagesize()\n"
        "before = rss()\n"
        "t = time.perf_counter(); c = retriever.Collection.open(sys.argv[1]); cold = time.perf_counter() - "
        "t\n"
        "opened = rss() - before; del c\n"
        "t = time.perf_counter(); c = retriever.Collection.open(sys.argv[1]); warm = time.perf_counter() - "
        "t\n"
        "c.search('w1 w2', k=10, fields='bm25'); c.search(c.fields['dense'].vectors[0:1], k=10)\n"
        "print(cold, warm, opened, rss() - before)"
    )
    runs = [
        subprocess.run(
            [sys.executable, "-c", probe, str(path)], capture_output=True, text=True, check=True
        ).stdout.split()
        for _ in range(3)
    ]
    median = lambda i: statistics.median(float(r[i]) for r in runs)  # noqa: E731
    return {
        "open_s_first_in_process": round(median(0), 3),
        "open_s": round(median(1), 3),
        "resident_mb_added_by_open": round(median(2) / 2**20, 1),
        "resident_mb_added_by_open_and_a_search_of_each_field": round(median(3) / 2**20, 1),
        "fields_files_mb": round(index_bytes / 2**20, 1),
    }


def capped_build(rows: int, cap: str, work: Path) -> dict:
    """`retriever build` of `rows` documents with 96-d vectors (a Parquet corpus: id, text, the
    vectors as a list column) under `--memory-cap`, in its own process: its peak resident memory
    (the kernel's high-water mark), seconds, and the segments it made."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    corpus = work / "corpus.parquet"
    log(f"capped build: writing a corpus of {rows} documents")
    with pq.ParquetWriter(corpus, pa.schema([("id", pa.string()), ("text", pa.string()),
                                             ("dense", pa.list_(pa.float32(), DIM))])) as writer:
        for start in range(0, rows, 100_000):
            docs, vectors = documents(start, min(100_000, rows - start), seed=start)
            writer.write_table(pa.table({
                "id": [d["id"] for d in docs],
                "text": [d["text"] for d in docs],
                "dense": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), DIM),
            }))
    config = work / "build.toml"
    config.write_text(
        'name = "store"\nmax_k = 100\n[[fields]]\nname = "dense"\ndim = 96\n'
        '[[fields]]\nname = "bm25"\nkind = "bm25"\nstemmer = ""\nstopwords = ""\n'
    )
    out = work / "built"
    command = [str(Path(sys.executable).parent / "retriever"), "build", "--config", str(config), "--input",
               str(corpus), "--out", str(out), "--memory-cap", cap, "--json"]
    measure = ("import resource, subprocess, sys, time\n"
               "t = time.perf_counter(); r = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
               "peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss\n"
               "print(r.returncode, time.perf_counter() - t, peak)\n"
               "print(r.stderr[-2000:], file=sys.stderr)")
    log(f"capped build: building under --memory-cap {cap}")
    result = subprocess.run([sys.executable, "-c", measure, *command], capture_output=True, text=True)
    code, seconds, peak_kb = result.stdout.split()
    if code != "0":
        return {"error": result.stderr[-2000:]}
    import retriever

    built = retriever.Collection.open(out)
    return {
        "documents": len(built),
        "memory_cap": cap,
        "peak_resident_gb": round(int(peak_kb) / 2**20, 3),
        "seconds": round(float(seconds), 1),
        "documents_per_s": round(rows / float(seconds), 1),
        "segments": [s["rows"] for s in built.info()["segments"]],
        "corpus_gb": round(corpus.stat().st_size / 2**30, 2),
        "open": open_probe(out),
    }


CRASH_WRITER = """
import json, sys, numpy as np, retriever
c = retriever.connect(sys.argv[1])
rng = np.random.default_rng(int(sys.argv[2]))
for step in range(100_000):
    ids = sorted({f"k{int(x)}" for x in rng.integers(0, 3000, size=int(rng.integers(1, 40)))})
    docs = [{"id": i, "text": f"w{int(rng.integers(1, 500))} round {sys.argv[2]} step {step}"} for i in ids]
    print(json.dumps({"add": {d["id"]: d["text"] for d in docs}}), flush=True)  # about to be written
    c.add(docs, vectors={"dense": rng.standard_normal((len(docs), 96)).astype("float32")})
    print("ack", flush=True)
    if step % 5 == 4:
        gone = [f"k{int(x)}" for x in rng.integers(0, 3000, size=3)]
        print(json.dumps({"delete": gone}), flush=True)
        c.delete(gone)
        print("ack", flush=True)
"""


def crash_loop(rounds: int, work: Path) -> dict:
    """`rounds` times: a writer upserting and deleting (merging as it goes) is killed with SIGKILL
    at a random moment; every write it acknowledged must be there, as acknowledged, after."""
    import signal

    import retriever
    from retriever.check import check

    path = work / "crash"
    retriever.Collection.create(path, CONFIG)
    expected: dict[str, str | None] = {}  # id -> text of its last acknowledged write (None: deleted)
    rng = np.random.default_rng(5)
    wrong, acked, checks_failed = 0, 0, 0
    for r in range(rounds):
        proc = subprocess.Popen(
            [sys.executable, "-c", CRASH_WRITER, str(path), str(r)], stdout=subprocess.PIPE, text=True
        )
        first = proc.stdout.readline()  # committing from here on
        time.sleep(float(rng.uniform(0.0, 0.4)))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        pending: dict[str, str | None] = {}  # the write in flight when killed: it may or may not be there
        for line in [
            first.rstrip("\n"),
            *proc.stdout.read().split("\n")[:-1],
        ]:  # a line cut by the kill is no ack
            if line == "ack":
                acked += 1
                expected.update(pending)
                pending = {}
                continue
            record = json.loads(line)
            pending = {**record.get("add", {}), **dict.fromkeys(record.get("delete", []))}
        opened = retriever.Collection.open(path)
        live = {d["id"]: d["text"] for d in opened.documents.take(np.flatnonzero(~opened.deleted))}
        for doc_id in expected.keys() | pending.keys():
            allowed = {expected.get(doc_id)} | ({pending[doc_id]} if doc_id in pending else set())
            wrong += live.get(doc_id) not in allowed
        for doc_id in pending.keys() & live.keys():  # the unacknowledged write landed: it is the truth now
            expected[doc_id] = live[doc_id]
        for doc_id in pending.keys() - live.keys():
            expected[doc_id] = None
        if (r % 10 == 9 or r == rounds - 1) and not check(path, sample=20)["ok"]:
            checks_failed += 1
    return {
        "rounds": rounds,
        "acknowledged_writes": acked,
        "documents_tracked": len(expected),
        "lost_or_wrong_after_a_kill": wrong,
        "failed_checks": checks_failed,
        "segments_at_end": len(retriever.Collection.open(path).segments),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="10000,100000", help="collection sizes for commit latency")
    parser.add_argument("--peer-sizes", default=None, help="sizes for the previous format (default: --sizes)")
    parser.add_argument(
        "--upserts", type=int, default=2000, help="single-document upserts through the server"
    )
    parser.add_argument("--search-upserts", type=int, default=1000)
    parser.add_argument("--memory-size", type=int, default=100_000)
    parser.add_argument("--crash-rounds", type=int, default=200, help="kill -9 rounds of a writer")
    parser.add_argument("--peer-ref", default="b65a118", help="git revision of the previous storage format")
    parser.add_argument("--build-size", type=int, default=200_000, help="documents of the capped build")
    parser.add_argument("--memory-cap", default="2GB", help="the capped build's --memory-cap")
    parser.add_argument("--parts", default="commit,background,peer,server,search,memory,crash,build")
    parser.add_argument(
        "--only-commit", action="store_true", help=argparse.SUPPRESS
    )  # the peer's own process
    parser.add_argument("--work", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.only_commit:
        print(json.dumps(commit_latency(sizes, args.work)))
        return
    parts = set(args.parts.split(","))
    result: dict = {"machine": {"cpus": os.cpu_count()}, "batch": BATCH, "dim": DIM}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if "commit" in parts:
            result["commit_latency"] = commit_latency(sizes, work)
        if "background" in parts:
            result["commit_latency_background_merges"] = commit_latency(sizes, work, background=True)
        if "peer" in parts:
            log(f"commit latency of the previous format ({args.peer_ref})")
            result["commit_latency_previous_format"] = {
                "ref": args.peer_ref,
                **peer_commit_latency(
                    args.peer_ref, [int(s) for s in (args.peer_sizes or args.sizes).split(",")], work
                ),
            }
        if "server" in parts:
            log(f"{args.upserts} single-document upserts through the server")
            result["server_single_upserts"] = server_upserts(args.upserts, 10_000, work)
        if "search" in parts:
            log("search after small upserts")
            result["search_after_small_upserts"] = search_after_small_upserts(
                20_000, args.search_upserts, work
            )
        if "crash" in parts:
            log(f"{args.crash_rounds} kill -9 rounds")
            result["kill_9_loop"] = crash_loop(args.crash_rounds, work)
        if "memory" in parts:
            log(f"memory and open time at {args.memory_size}")
            result["open"] = memory_and_open(args.memory_size, work)
        if "build" in parts:
            result["capped_build"] = capped_build(args.build_size, args.memory_cap, work)
    emit(result, args.out)


if __name__ == "__main__":
    main()
