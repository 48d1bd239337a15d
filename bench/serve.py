"""gRPC serving benchmark on loopback: queries/s and latency against the same searches in-process,
streaming upsert throughput against an offline build of the same documents, and a normal
client's latency while attackers hold idle streams open or send oversized parameters, against
the same client on an idle server.

The server runs in its own process (`retriever serve`); clients are threads of this process.
Prints one JSON object on stdout (progress on stderr).

    python bench/serve.py [--vectors 200000] [--out result.json]
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

import retriever

sys.path.insert(0, str(Path(__file__).parent))
from common import emit, log  # noqa: E402
from dense import glove_vectors, vector_config  # noqa: E402

INDEX, PARAMS = "IVF1024,PQ50x4fs", {"nprobe": 64, "rescore": 50}
K = 10


def start_server(path: Path, workers: int) -> tuple[subprocess.Popen, int]:
    command = [sys.executable, "-c", "from retriever.cli import main; main()", "serve", str(path), "--port", "0",
               "--workers", str(workers), "--max-concurrent", str(4 * workers)]
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:
        found = re.search(r"serving .* on [\d.]+:(\d+)", line)
        if found:
            threading.Thread(target=proc.stderr.read, daemon=True).start()  # keep draining
            return proc, int(found.group(1))
    raise SystemExit(f"server did not start (exit {proc.wait()})")


def run_clients(search, queries: np.ndarray, clients: int, batch: int, seconds: float) -> dict:
    """`clients` threads each sending requests of `batch` queries for about `seconds`."""
    latencies: list[float] = []
    lock = threading.Lock()
    deadline = time.perf_counter() + seconds

    def client(seed: int) -> None:
        rng = np.random.default_rng(seed)
        mine = []
        while time.perf_counter() < deadline:
            start = rng.integers(0, len(queries) - batch)
            t0 = time.perf_counter()
            search(queries[start : start + batch])
            mine.append(time.perf_counter() - t0)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    began = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - began
    lat = np.asarray(latencies) * 1000
    return {"requests": len(lat), "qps": round(len(lat) * batch / elapsed, 1),
            "latency_ms": {"p50": round(float(np.percentile(lat, 50)), 3), "p99": round(float(np.percentile(lat, 99)), 3)}}


def search_comparison(local: retriever.Collection, remote, queries: np.ndarray, seconds: float) -> list[dict]:
    rows = []
    for batch in (1, 100):
        for clients in (1, 8, 32):
            ours = run_clients(lambda q: local.search(q, k=K, params=PARAMS), queries, clients, batch, seconds)
            far = run_clients(lambda q: remote.search(q, k=K, params=PARAMS, with_documents=False), queries, clients, batch, seconds)
            overhead_ms = far["latency_ms"]["p50"] - ours["latency_ms"]["p50"]
            rows.append({"queries_per_request": batch, "clients": clients, "in_process": ours, "grpc": far,
                         "grpc_over_in_process_qps": round(far["qps"] / ours["qps"], 3),
                         "grpc_overhead_ms_p50_per_request": round(overhead_ms, 3)})
            log(f"batch {batch} clients {clients}: grpc/in-process qps {rows[-1]['grpc_over_in_process_qps']}")
    return rows


def _idle_streams(port: int, count: int, seconds: float) -> None:
    """An attacker: `count` Upsert streams that send nothing (each closed by the server's idle
    timeout, or refused past --max-streams), for `seconds`."""
    import grpc

    from retriever.conversions import pb_grpc

    quiet = threading.Event()

    def nothing():
        quiet.wait(seconds)
        return
        yield  # a generator that sends no batch

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.RetrieverStub(channel)
        calls = [stub.Upsert(nothing(), timeout=seconds + 5) for _ in range(count)]
        time.sleep(seconds)
        quiet.set()
        for call in calls:
            call.cancel()


OVERSIZED = [dict(k=10, params={"rescore": 10**9}), dict(k=10, params={"nprobe": 10**6}), dict(k=10**6)]
ORDINARY = [dict(k=10, params=PARAMS)]


def _full_speed(port: int, seconds: float, asks: list[dict]) -> None:
    """A client sending searches of 8 queries (as the issue's attack did) back to back: with
    OVERSIZED asks, parameters far past the collection's limits (each refused); with ORDINARY
    ones, the same load of valid searches, the control."""
    remote = retriever.connect(f"grpc://127.0.0.1:{port}/bench", timeout=10)
    query = np.random.default_rng(0).standard_normal((8, 50)).astype(np.float32)
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        for ask in asks:
            try:
                remote.search(query, with_documents=False, **ask)
            except retriever.RetrieverError:
                pass


def attack_comparison(port: int, queries: np.ndarray, seconds: float) -> dict:
    """A normal client's batch-1 latency on the idle server, then while attackers run in other
    processes (so their Python work does not slow the measured client's process; they share the
    machine's cores with it and the server, as the control shows)."""
    import multiprocessing

    remote = retriever.connect(f"grpc://127.0.0.1:{port}/bench", timeout=30)
    search = lambda q: remote.search(q, k=K, params=PARAMS, with_documents=False)  # noqa: E731
    out = {"idle": run_clients(search, queries, 1, 1, seconds)}
    attacks = {"idle_streams": [(_idle_streams, (port, 64, seconds + 2))],
               "oversized_params": [(_full_speed, (port, seconds + 2, OVERSIZED))],
               "control_full_speed_valid_searches": [(_full_speed, (port, seconds + 2, ORDINARY))]}
    context = multiprocessing.get_context("spawn")
    for name, attackers in attacks.items():
        procs = [context.Process(target=fn, args=args) for fn, args in attackers]
        for p in procs:
            p.start()
        time.sleep(1.5)  # the attack is under way
        out[name] = run_clients(search, queries, 1, 1, seconds)
        for p in procs:
            p.join()
        idle_p99 = out["idle"]["latency_ms"]["p99"]
        out[name]["p99_over_idle"] = round(out[name]["latency_ms"]["p99"] / idle_p99, 3)
        log(f"attack {name}: p99 {out[name]['p99_over_idle']}x idle")
    control = out["control_full_speed_valid_searches"]["latency_ms"]["p99"]
    out["oversized_p99_over_control"] = round(out["oversized_params"]["latency_ms"]["p99"] / control, 3)
    return out


def upsert_comparison(base: np.ndarray, work: Path, port_server) -> dict:
    docs = [{"id": f"u{i}", "n": i} for i in range(len(base))]
    offline = work / "offline"
    start = time.perf_counter()
    c = retriever.Collection.create(offline, vector_config(base.shape[1], "Flat"))
    c.add(docs, vectors={"dense": base})
    offline_s = time.perf_counter() - start
    streamed = work / "streamed"
    retriever.Collection.create(streamed, vector_config(base.shape[1], "Flat"))
    proc, port = port_server(streamed)
    remote = retriever.connect(f"grpc://127.0.0.1:{port}/bench", timeout=600)
    out = {"documents": len(docs), "offline_build_docs_per_s": round(len(docs) / offline_s, 1)}
    for batch_size in (500, 5000):
        remote.delete([d["id"] for d in docs])
        start = time.perf_counter()
        acks = list(remote.upsert_stream(docs, {"dense": base}, batch_size=batch_size))
        seconds = time.perf_counter() - start
        out[f"streamed_batch{batch_size}_docs_per_s"] = round(len(docs) / seconds, 1)
        out[f"streamed_batch{batch_size}_acks"] = len(acks)
    proc.terminate()
    proc.wait()
    out["note"] = "every ack is sent after its batch is committed (fsync + atomic manifest rename)"
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--vectors", type=int, default=200_000, help="GloVe vectors in the searched collection")
    parser.add_argument("--seconds", type=float, default=3.0, help="per measurement")
    parser.add_argument("--upsert-docs", type=int, default=20_000)
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--parts", default="search,attack,upsert", help="which measurements to run")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    x = glove_vectors()
    order = np.random.default_rng(0).permutation(len(x))
    base, queries = x[order[2000 : 2000 + args.vectors]], x[order[:2000]]
    result: dict = {"index": INDEX, "params": PARAMS, "vectors": len(base), "k": K, "workers": args.workers}
    work = Path(tempfile.mkdtemp())
    try:
        log(f"building {INDEX} over {len(base)} GloVe vectors")
        local = retriever.Collection.create(work / "search", vector_config(50, INDEX))
        local.add([{"id": str(i)} for i in range(len(base))], vectors={"dense": base})
        proc, port = start_server(work / "search", args.workers)
        remote = retriever.connect(f"grpc://127.0.0.1:{port}/bench", timeout=60)
        remote.search(queries[:1], k=K, params=PARAMS)  # warm-up
        if "search" in args.parts:
            result["search"] = search_comparison(local, remote, queries, args.seconds)
        if "attack" in args.parts:
            result["under_attack"] = attack_comparison(port, queries, args.seconds)
        proc.terminate()
        proc.wait()
        if "upsert" in args.parts:
            start = lambda p: start_server(p, args.workers)  # noqa: E731
            result["upsert"] = upsert_comparison(base[: args.upsert_docs], work, start)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    emit(result, args.out)


if __name__ == "__main__":
    main()
