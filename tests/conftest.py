import pytest

import retriever
from helpers import make_docs, random_vectors, vector_config


@pytest.fixture
def vec_collection(tmp_path):
    """A Flat collection of 300 clustered 16-d vectors with year/lang metadata."""
    c = retriever.Collection.create(tmp_path / "c", vector_config())
    x = random_vectors(300, 16)
    c.add(make_docs(300), vectors={"dense": x})
    return c, x

