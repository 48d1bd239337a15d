"""`retriever build` streams the corpus through in chunks under a memory cap, and resumes after
the chunks it committed."""

import numpy as np
import pytest

import retriever
from helpers import random_vectors, vector_config
from retriever import build as build_module
from retriever.collection import Collection
from retriever.kernels import reference


@pytest.fixture
def vectors_file(tmp_path):
    x = random_vectors(4600, 16, seed=3)
    np.save(tmp_path / "vectors.npy", x)
    return tmp_path / "vectors.npy", x / np.linalg.norm(x, axis=1, keepdims=True)


def test_a_capped_build_streams_chunks_into_bounded_segments(vectors_file, tmp_path, monkeypatch):
    path, x = vectors_file
    monkeypatch.setattr(build_module, "chunk_rows", lambda config, cap: (1100, 2300))  # tiny "memory"
    config = retriever.CollectionConfig.from_dict(vector_config())
    built = build_module.build(config, path, tmp_path / "out", memory_cap=64 << 20, progress=False)
    rows = [s["rows"] for s in built.info()["segments"]]
    assert len(built) == 4600 and rows == [2200, 2200, 200]  # five chunks; merges stop at 2,300 rows
    assert Collection.open(tmp_path / "out").max_segment_rows == 2300  # a server merging it later too
    assert not (tmp_path / "out" / ".build").exists() and built.info()["buffer"]["writes"] == 0
    _, truth = reference.exact_search(x[:20], x, 10)
    assert [list(h.rows) for h in Collection.open(tmp_path / "out").search(x[:20], k=10)] == truth.tolist()


def test_an_interrupted_build_resumes_after_its_committed_chunks(vectors_file, tmp_path, monkeypatch):
    path, x = vectors_file
    monkeypatch.setattr(build_module, "chunk_rows", lambda config, cap: (1500, 5000))
    config = retriever.CollectionConfig.from_dict(vector_config())
    added = []
    real_add = Collection.add

    def dying_add(self, docs, vectors=None, **kw):
        if len(added) == 2:
            raise KeyboardInterrupt  # Ctrl-C while the third chunk is written
        added.append(len(docs))
        return real_add(self, docs, vectors, **kw)

    monkeypatch.setattr(Collection, "add", dying_add)
    with pytest.raises(KeyboardInterrupt):
        build_module.build(config, path, tmp_path / "out", progress=False)
    assert len(Collection.open(tmp_path / "out")) == 3000
    with pytest.raises(retriever.AlreadyExists, match="--resume"):
        build_module.build(config, path, tmp_path / "out", progress=False)
    added.clear()
    monkeypatch.setattr(Collection, "add", lambda self, docs, vectors=None, **kw: (
        added.append(len(docs)), real_add(self, docs, vectors, **kw))[1])
    resumed = build_module.build(config, path, tmp_path / "out", resume=True, progress=False)
    assert added == [1500, 100] and len(resumed) == 4600  # only the chunks not committed
    assert resumed.search(x[4400], k=1)[0].ids == ["4400"]
    with pytest.raises(retriever.AlreadyExists, match="already holds a built collection"):
        build_module.build(config, path, tmp_path / "out", resume=True, progress=False)


def test_memory_caps_are_read_as_sizes():
    assert build_module.parse_size("2GB") == 2 << 30 and build_module.parse_size("512MiB") == 512 << 20
    assert build_module.parse_size("1.5G") == int(1.5 * (1 << 30)) and build_module.parse_size("4096") == 4096
    with pytest.raises(retriever.InvalidRequest, match="not a size"):
        build_module.parse_size("lots")
    config = retriever.CollectionConfig.from_dict(vector_config(dim=96))
    small, large = build_module.chunk_rows(config, 256 << 20), build_module.chunk_rows(config, 4 << 30)
    assert small[0] < large[0] and small[1] < large[1] and small[0] <= small[1]
    with pytest.raises(retriever.InvalidRequest, match="at least 64MB"):
        build_module.chunk_rows(config, 1 << 20)
