"""Segments: documents and deletions per segment; format 1 collections open read-only and migrate."""

import shutil
from pathlib import Path

import numpy as np
import pytest

import retriever
from helpers import make_docs, random_vectors, vector_config
from retriever.check import check
from retriever.cli import app
from retriever.index import disk
from typer.testing import CliRunner

FORMAT1 = Path(__file__).parent / "data" / "format1"  # written by the engine at b65a118 (storage format 1)
WORDS = ["apple", "banana", "cherry", "delta", "echo", "falcon", "garden", "harbor"]


def same_writes(path):
    """What made the format 1 fixture, done by this engine."""
    config = {"name": "old", "fields": [{"name": "dense", "dim": 8}, {"name": "bm25", "kind": "bm25"}]}
    c = retriever.Collection.create(path, config)
    docs = lambda a, b: [{"id": f"d{i}", "text": f"{WORDS[i % 8]} {WORDS[(i * 3) % 8]}", "year": 2000 + i} for i in range(a, b)]  # noqa: E731
    vecs = lambda a, b: np.random.default_rng(a).normal(size=(b - a, 8)).astype("float32")  # noqa: E731
    c.add(docs(0, 8), vectors={"dense": vecs(0, 8)})
    c.add(docs(8, 12), vectors={"dense": vecs(8, 12)})
    c.delete(["d2", "d9"])
    c.add([{"id": "d5", "text": "apple replaced", "year": 1999}], vectors={"dense": vecs(50, 51)})
    return c


def answers(c):
    queries = np.random.default_rng(7).normal(size=(4, 8)).astype("float32")
    dense = [(h.ids, np.round(h.scores, 5).tolist()) for h in c.search(queries, k=12)]
    lexical = [(h.ids, np.round(h.scores, 5).tolist()) for h in c.search(WORDS + ["replaced"], k=12, fields="bm25")]
    return len(c), dense, lexical, sorted(c.documents.take(np.flatnonzero(~c.deleted)), key=lambda d: d["id"])


@pytest.fixture
def format1(tmp_path):
    path = tmp_path / "old"
    shutil.copytree(FORMAT1, path)
    return path


def test_a_format_1_collection_opens_read_only_and_answers_as_format_2(format1, tmp_path):
    old = retriever.Collection.open(format1)
    assert old.manifest["format_version"] == 1
    assert answers(old) == answers(same_writes(tmp_path / "new"))
    assert check(format1)["ok"]
    with pytest.raises(retriever.InvalidRequest, match="retriever migrate"):
        old.add([{"id": "x", "text": "x"}], vectors={"dense": np.ones((1, 8))})
    assert retriever.Collection.open(format1).version == old.version  # nothing written


def test_migrate_converts_in_place_and_keeps_answers(format1, tmp_path):
    before = answers(retriever.Collection.open(format1))
    result = CliRunner().invoke(app, ["migrate", str(format1), "--json"])
    assert result.exit_code == 0, result.output
    assert '"changed": true' in result.stdout and '"format": 2' in result.stdout
    migrated = retriever.Collection.open(format1)
    assert migrated.manifest["format_version"] == 2 and "documents" not in migrated.manifest
    assert answers(migrated) == before and check(format1)["ok"]
    assert not migrated.migrate()  # nothing left to do
    migrated.add([{"id": "x", "text": "apple"}], vectors={"dense": np.ones((1, 8))})
    migrated.delete(["d1"])
    assert answers(migrated)[0] == before[0]
    assert check(format1)["ok"]
    assert not list(format1.glob("deleted-*.npy"))  # the format 1 deletions list was retired, then removed


def test_a_delete_writes_one_small_file_for_its_segment_only(tmp_path):
    c = retriever.Collection.create(tmp_path / "c", vector_config())
    for i in range(10):
        c.add(make_docs(30, start=30 * i), vectors={"dense": random_vectors(30, 16, seed=i)})
    assert [s.rows for s in c.segments] == [30] * 10
    with disk.inject(disk.Faults()) as counted:
        c.delete(["d95", "d97"])
    written = [name.removeprefix(".").removesuffix(".tmp") for op, name in zip(counted.ops, counted.names) if op == "create"]
    deletions = [n for n in written if ".del-" in n]
    assert deletions == [f"{c.segments[3].entry['name']}.del-{c.version:06d}.npy"] and not any("docs" in n for n in written)
    assert c.segments[3].deleted.sum() == 2 and len(c) == 298
    assert c.search(random_vectors(300, 16, seed=3)[5], k=1)[0].ids != ["d95"]
