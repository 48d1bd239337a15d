"""kill -9 of the server during a streaming upsert never loses an acked batch."""

import re
import signal
import subprocess
import sys

import numpy as np

import retriever
from helpers import random_vectors, vector_config
from retriever.check import check

SERVE = "from retriever.cli import main; main()"


def start_server(path):
    proc = subprocess.Popen([sys.executable, "-c", SERVE, "serve", str(path), "--port", "0"], stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:
        found = re.search(r"serving .* on [\d.]+:(\d+)", line)
        if found:
            return proc, int(found.group(1))
    raise AssertionError(f"server did not start (exit {proc.wait()})")


def test_kill_9_during_streaming_upsert_loses_no_acked_batch(tmp_path):
    path = tmp_path / "vecs"
    retriever.Collection.create(path, vector_config())
    rng = np.random.default_rng(0)
    acked: set[str] = set()
    for round_ in range(5):
        proc, port = start_server(path)
        remote = retriever.connect(f"grpc://127.0.0.1:{port}/vecs", timeout=30)
        docs = [{"id": f"r{round_}-{i}"} for i in range(2000)]
        stop_after = int(rng.integers(1, 15))
        try:
            for ack in remote.upsert_stream(docs, {"dense": random_vectors(2000, 16, seed=round_)}, batch_size=10):
                acked.update(d["id"] for d in docs[ack.batch * 10 : ack.batch * 10 + ack.upserted])
                if ack.batch + 1 == stop_after:
                    proc.send_signal(signal.SIGKILL)
        except retriever.RetrieverError as e:
            assert e.grpc_code in ("UNAVAILABLE", "CANCELLED", "UNKNOWN"), e
        proc.wait()
        remote.close()
        on_disk = retriever.connect(path)
        stored = set(on_disk.documents.table.column("id").to_pylist())
        assert acked <= stored, f"round {round_}: acked but lost: {sorted(acked - stored)[:5]}"
        assert check(path)["ok"]
    assert len(acked) >= 5 * 10
