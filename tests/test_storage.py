"""Atomic commits and checksums: a killed writer never breaks the collection; damage is detected."""

import json
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import retriever
from retriever import CorruptIndex
from helpers import live_ids, make_docs, random_vectors, vector_config
from retriever.check import check
from retriever.index import storage, wal

pytestmark = pytest.mark.usefixtures("flush_each_write")  # each write a segment

WRITER = textwrap.dedent(
    """
    import os, sys, numpy as np
    import retriever
    from retriever.index import disk, storage
    stage = sys.argv[2]
    if stage == "before-rename":
        real_replace = disk.replace
        # killed after the temp manifest is durable, before the rename
        disk.replace = lambda s, t: os._exit(9) if t.name == "manifest.json" else real_replace(s, t)
    elif stage == "mid-files":
        real_write = storage.write_new_file
        calls = []
        def dying_write(*a):
            calls.append(1)
            if len(calls) == 2:
                os._exit(9)
            return real_write(*a)
        storage.write_new_file = dying_write
    if stage in ("mid-files", "before-rename"):
        from retriever import buffer
        buffer.FLUSH_WRITES = 1  # each write a segment: killed inside its commit
    c = retriever.connect(sys.argv[1])
    rounds = 1000 if stage == "loop" else 1
    for r in range(rounds):
        x = np.random.default_rng(r).normal(size=(int(sys.argv[3]), 16)).astype("float32")
        c.add([{"id": f"new{r}-{i}"} for i in range(len(x))], vectors={"dense": x})
        print("committed", r, flush=True)
    if stage == "none":
        c.flush()
    """
)


def run_writer(path, stage, n=20):
    return subprocess.run([sys.executable, "-c", WRITER, str(path), stage, str(n)], capture_output=True, text=True)


@pytest.mark.parametrize("stage", ["mid-files", "before-rename"])
def test_writer_killed_mid_commit_leaves_old_version(vec_collection, stage):
    c, x = vec_collection
    result = run_writer(c.path, stage)
    assert result.returncode == 9, result.stderr
    again = retriever.connect(c.path)
    # the manifest is the old version's; the write was logged before its flush died, so a reader
    # replays it from the log, whole
    assert again.version == c.version and len(again) == 320 and again.info()["buffer"]["writes"] == 1
    assert again.search(x[:5], k=5)[0].ids[0] == "d0"
    assert check(c.path)["ok"]
    # the next writer commits over the debris, and cleans it up
    assert run_writer(c.path, "none").returncode == 0
    latest = retriever.connect(c.path)
    assert len(latest) == 320  # the same ids again: an upsert
    assert not [p for p in c.path.iterdir() if p.name.endswith(".tmp")]


def test_sigkill_at_random_moments_never_breaks_the_collection_or_loses_an_acked_write(vec_collection):
    c, _ = vec_collection
    rng = np.random.default_rng(0)
    acked: set[str] = set()
    for _ in range(4):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(c.path), "loop", "20"], stdout=subprocess.PIPE, text=True)
        first = proc.stdout.readline().split()  # the writer is now committing in a loop
        assert first[0] == "committed"
        acked.add(first[1])
        time.sleep(rng.uniform(0.0, 0.2))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        complete = proc.stdout.read().split("\n")[:-1]  # a line cut by the kill was never an ack
        acked.update(line.split()[1] for line in complete)
        opened = retriever.connect(c.path)
        stored = set(live_ids(opened))
        assert len(opened) % 20 == 0 and len(opened) > 300
        assert {f"new{r}-{i}" for r in acked for i in range(20)} <= stored
        assert check(c.path)["ok"]


def test_files_a_pinned_reader_needs_stay_until_it_lets_go(vec_collection):
    c, x = vec_collection
    c.delete(["d0"])
    with storage.pinned(c.path) as manifest:
        old = storage.referenced_names(manifest)
        for i in range(1, 4):
            c.delete([f"d{i}"])
        assert all((c.path / name).exists() for name in old)
        pinned = retriever.Collection.load(c.path, manifest)
        assert len(pinned) == 299 and pinned.search(x[2], k=1)[0].ids == ["d2"]
    c.delete(["d4"])
    c.delete(["d5"])
    gone = old - storage.referenced_names(storage.read_manifest(c.path))
    assert gone and not any((c.path / name).exists() for name in gone)


def test_a_snapshot_keeps_answering_after_its_files_are_removed(vec_collection):
    c, x = vec_collection
    snapshot = c.view()
    files = storage.referenced_names(c.manifest)
    c.delete(["d1"])
    assert c.optimize() == 1  # the segment is rewritten without d1: its old files are retired ...
    for i in range(2):  # ... and removed by the next commits
        c.add(make_docs(5, start=1000 + 5 * i), vectors={"dense": random_vectors(5, 16, seed=i)})
    assert not any((c.path / name).exists() for name in files)  # unlinked; the snapshot's maps stay valid
    [h] = snapshot.search(x[7], k=1)
    assert h.ids == ["d7"] and h.documents[0]["id"] == "d7" and len(snapshot) == 300


def test_the_engine_deletes_only_files_it_named(vec_collection):
    c, x = vec_collection
    mine = {"notes.txt": "keep", "photo-000001.jpg": "keep", "README": "keep"}
    for name, text in mine.items():
        (c.path / name).write_text(text)
    (c.path / "backup").mkdir()
    debris = ["dense.vectors-000099.npy", ".docs-000099.parquet.tmp", ".manifest.json.99.tmp"]
    for name in debris:
        (c.path / name).write_bytes(b"left by a writer killed mid-commit")
    for i in range(3):
        c.delete([f"d{i}"])
    assert all((c.path / name).read_text() == text for name, text in mine.items())
    assert (c.path / "backup").is_dir()
    assert not any((c.path / name).exists() for name in debris)
    assert check(c.path)["ok"]


READER_LOOP_WRITER = textwrap.dedent(
    """
    import sys, numpy as np
    import retriever
    c = retriever.connect(sys.argv[1])
    for r in range(10_000):
        x = np.random.default_rng(r).normal(size=(5, 16))
        c.add([{"id": f"w{r}-{i}"} for i in range(5)], vectors={"dense": x})
        c.delete([f"w{r - 1}-0"])
        print(r, flush=True)
    """
)


def test_readers_in_other_processes_never_see_a_healthy_collection_as_damaged(vec_collection):
    c, x = vec_collection
    command = [sys.executable, "-c", READER_LOOP_WRITER, str(c.path)]
    writer = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        writer.stdout.readline()  # committing in a loop from here on
        versions = set()
        for _ in range(8):
            report = check(c.path, sample=20)
            assert report["ok"], report["problems"]
            for _ in range(3):
                opened = retriever.Collection.open(c.path)
                assert opened.search(x[5], k=1)[0].ids == ["d5"]
                versions.add(opened.version)
        assert writer.poll() is None and len(versions) > 3  # the reads overlapped many commits
    finally:
        writer.kill()
        writer.wait()


def flip_byte(path, offset_fraction=0.5):
    data = bytearray(path.read_bytes())
    i = int(len(data) * offset_fraction)
    data[i] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.fixture
def ivf_collection(tmp_path):
    """1,100 vectors under IVF4,Flat: a faiss file beside the documents and vectors."""
    c = retriever.Collection.create(tmp_path / "ivf", vector_config("IVF4,Flat"))
    x = random_vectors(1100, 16)
    c.add(make_docs(1100), vectors={"dense": x})
    return c, x / np.linalg.norm(x, axis=1, keepdims=True)


def test_a_flipped_byte_in_any_file_is_detected(ivf_collection):
    """Files this small are verified whole when opened (both ends cover them)."""
    c, x = ivf_collection
    c.delete(["d3"])
    c.flush()
    files = [p for p in sorted(c.path.iterdir()) if p.is_file() and p.name not in (".lock", wal.LOG)]
    assert {p.suffix for p in files} >= {".json", ".arrow", ".npy", ".faiss"}
    for path in files:
        original = path.read_bytes()
        for fraction in (0.0, 0.5, 0.999):
            flip_byte(path, fraction)
            with pytest.raises(CorruptIndex, match="checksum|not a valid manifest"):
                retriever.connect(c.path)
            report = check(c.path)
            assert not report["ok"] and report["problems"]
            path.write_bytes(original)
    assert retriever.connect(c.path).search(x[0], k=1)[0].ids == ["d0"]


def test_a_flipped_byte_inside_a_large_file_is_found_by_check_and_refused_by_a_merge(
    ivf_collection, monkeypatch
):
    """Opening verifies a memory-mapped file's ends only (O(files), as Lucene's footer check);
    `check` verifies every byte, and a merge verifies what it reads before it reads it."""
    monkeypatch.setattr(storage, "END_BLOCK", 64)
    c = retriever.Collection.create(c_path := ivf_collection[0].path.parent / "big", vector_config())
    c.merge_inline = False
    for start in (0, 300):  # two segments
        c.add(make_docs(300, start=start), vectors={"dense": random_vectors(300, 16, seed=start)})
        c.flush()
    vectors = c.path / c.segments[0].entry["fields"]["dense"]["vectors"]
    flip_byte(vectors, 0.5)
    retriever.connect(c_path)  # the damage sits between the ends
    report = check(c_path)
    assert not report["ok"] and "checksum" in report["problems"][0]
    with pytest.raises(CorruptIndex, match="cannot be merged.*checksum"):
        retriever.connect(c_path).optimize()
    flip_byte(vectors, 0.999)
    with pytest.raises(CorruptIndex, match="its ends"):
        retriever.connect(c_path)


def test_truncated_and_missing_files_are_detected(ivf_collection):
    c, _ = ivf_collection
    faiss_file = next(p for p in c.path.iterdir() if p.suffix == ".faiss")
    data = faiss_file.read_bytes()
    faiss_file.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptIndex, match="truncated"):
        retriever.connect(c.path)
    faiss_file.unlink()
    with pytest.raises(CorruptIndex, match="missing"):
        retriever.connect(c.path)


def test_manifest_from_a_newer_engine_is_refused(vec_collection):
    from retriever.index import storage

    c, _ = vec_collection
    body = storage.read_manifest(c.path)
    body["format_version"] = 99
    text = json.dumps({**body, "checksum": storage.json_digest(body)})
    (c.path / "manifest.json").write_text(text)
    with pytest.raises(CorruptIndex, match="format_version 99"):
        retriever.connect(c.path)
