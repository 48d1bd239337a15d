import os

import pytest
import torch

import retriever
from helpers import make_docs, random_vectors, vector_config

# Without CUDA the Triton kernels are tested in Triton's interpreter. It must be on before triton is
# first imported (its standard library is decorated then), and other packages may import it early.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture
def vec_collection(tmp_path):
    """A Flat collection of 300 clustered 16-d vectors with year/lang metadata."""
    c = retriever.Collection.create(tmp_path / "c", vector_config())
    x = random_vectors(300, 16)
    c.add(make_docs(300), vectors={"dense": x})
    return c, x



@pytest.fixture
def flush_each_write(monkeypatch):
    """Every small write flushed as soon as it is logged: each write makes a segment and a version,
    as tests of segments, merges and files need."""
    from retriever import buffer, collection

    monkeypatch.setattr(buffer, "FLUSH_WRITES", 1)
    monkeypatch.setattr(collection, "BACKGROUND_SLACK", 1)  # even where a background merger would flush
