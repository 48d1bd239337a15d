"""Snapshots: an archive restores to the version it was taken at, with every acked write; writes
and merges go on while it is taken; a damaged or hostile archive leaves nothing behind."""

import io
import tarfile

import pytest
from typer.testing import CliRunner

import retriever
from helpers import make_docs, random_vectors
from retriever import snapshots
from retriever.cli import app
from retriever.errors import AlreadyExists, CorruptIndex

CONFIG = {"name": "src", "fields": [{"name": "dense", "dim": 16}, {"name": "bm25", "kind": "bm25"}]}
QUERIES = random_vectors(4, 16, seed=9)


def answers(collection):
    return [(h.ids, h.scores.tolist()) for h in collection.search(QUERIES, k=5)] + [
        h.ids for h in collection.search(["document 7", "document 33"], k=5, fields="bm25")
    ]


@pytest.fixture
def source(tmp_path):
    c = retriever.Collection.create(tmp_path / "src", CONFIG)
    c.add(make_docs(60), vectors={"dense": random_vectors(60, 16, seed=1)})
    c.delete(["d3"])
    c.add(make_docs(2, start=60), vectors={"dense": random_vectors(2, 16, seed=2)})  # in the write buffer
    assert c.info()["buffer"]["writes"] > 0
    return c


def archived(collection) -> bytes:
    out = io.BytesIO()
    collection.snapshot(out)
    return out.getvalue()


def test_restore_gives_the_same_collection_with_its_buffered_writes(source, tmp_path):
    data = archived(source)
    copy = retriever.Collection.restore(io.BytesIO(data), tmp_path / "copy", name="copy")
    assert copy.name == "copy" and len(copy) == len(source) == 61 and copy.get(["d61", "d3"])[1] is None
    assert answers(copy) == answers(source)
    copy.add(make_docs(1, start=100), vectors={"dense": random_vectors(1, 16, seed=3)})  # writes go on
    reopened = retriever.Collection.open(tmp_path / "copy")
    assert len(reopened) == 62 and reopened.get(["d100"])[0]["id"] == "d100"
    assert answers(retriever.Collection.open(source.path)) == answers(source)  # the source is untouched


def test_writes_and_merges_during_a_snapshot_do_not_change_it(source, tmp_path):
    source.flush()
    before = answers(source)
    with snapshots.Archive(source.path, chunk_bytes=64) as archive:
        pieces = archive.chunks()
        first = [next(pieces) for _ in range(3)]
        source.delete([f"d{i}" for i in range(20)])
        source.add(make_docs(30, start=200), vectors={"dense": random_vectors(30, 16, seed=4)})
        source.optimize()  # retires every file the archive is reading
        data = b"".join(first + list(pieces))
    copy = retriever.Collection.restore(io.BytesIO(data), tmp_path / "copy")
    assert answers(copy) == before and len(copy) == 61


def cut(data: bytes, at: int) -> bytes:
    return data[:at]


def flip(data: bytes) -> bytes:
    """One byte flipped in the middle of the archive's largest file."""
    largest = max(tarfile.open(fileobj=io.BytesIO(data)), key=lambda m: m.size)
    at = largest.offset_data + largest.size // 2
    return data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1 :]


@pytest.mark.parametrize("damage", [lambda d: cut(d, len(d) // 2), lambda d: cut(d, len(d) - 2048),
                                    lambda d: cut(d, 700), flip, lambda d: b"not a tar"])
def test_damaged_archive_leaves_nothing(source, tmp_path, damage):
    data = damage(archived(source))
    with pytest.raises(CorruptIndex):
        retriever.Collection.restore(io.BytesIO(data), tmp_path / "copy")
    assert not (tmp_path / "copy").exists()
    (tmp_path / "empty").mkdir()
    with pytest.raises(CorruptIndex):
        retriever.Collection.restore(io.BytesIO(data), tmp_path / "empty")
    assert list((tmp_path / "empty").iterdir()) == []  # a directory the caller made is kept, empty


def hostile(source, name: str, content: bytes = b"x", kind=tarfile.REGTYPE) -> bytes:
    """The source's archive with one member added before its manifest."""
    members = tarfile.open(fileobj=io.BytesIO(archived(source)))
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as rewritten:
        extra = tarfile.TarInfo(name)
        extra.type, extra.size = kind, len(content) if kind == tarfile.REGTYPE else 0
        if kind == tarfile.SYMTYPE:
            extra.linkname = "/etc/passwd"
        rewritten.addfile(extra, io.BytesIO(content) if kind == tarfile.REGTYPE else None)
        for member in members:
            rewritten.addfile(member, members.extractfile(member))
    return out.getvalue()


@pytest.mark.parametrize("name, kind", [("../escaped.npy", tarfile.REGTYPE), ("/tmp/a.npy", tarfile.REGTYPE),
                                        ("link.npy", tarfile.SYMTYPE), ("notes.txt", tarfile.REGTYPE)])
def test_hostile_members_are_refused(source, tmp_path, name, kind):
    with pytest.raises(CorruptIndex):
        retriever.Collection.restore(io.BytesIO(hostile(source, name, kind=kind)), tmp_path / "box" / "copy")
    assert not (tmp_path / "box" / "copy").exists() and not (tmp_path / "box" / "escaped.npy").exists()


def test_restore_refuses_a_used_directory_and_a_bad_name(source, tmp_path):
    data = archived(source)
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "mine.txt").write_text("keep")
    with pytest.raises(AlreadyExists):
        retriever.Collection.restore(io.BytesIO(data), tmp_path / "used")
    assert [p.name for p in (tmp_path / "used").iterdir()] == ["mine.txt"]
    with pytest.raises(retriever.InvalidConfig):
        retriever.Collection.restore(io.BytesIO(data), tmp_path / "x", name="../evil")
    assert not (tmp_path / "x").exists()


def test_cli_snapshot_and_restore(source, tmp_path):
    runner = CliRunner()
    made = runner.invoke(app, ["snapshot", str(source.path), str(tmp_path / "a.tar"), "--json"])
    assert made.exit_code == 0, made.output
    done = runner.invoke(app, ["restore", str(tmp_path / "a.tar"), str(tmp_path / "copy"), "--name", "copy"])
    assert done.exit_code == 0 and "restored copy" in done.output
    assert answers(retriever.Collection.open(tmp_path / "copy")) == answers(source)
    (tmp_path / "bad.tar").write_bytes(b"junk")
    failed = runner.invoke(app, ["restore", str(tmp_path / "bad.tar"), str(tmp_path / "other")])
    assert failed.exit_code == 2 and "not a complete archive" in failed.output
    assert "Traceback" not in failed.output
    assert not (tmp_path / "other").exists()
