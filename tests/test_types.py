"""`Results`: a batch's hits in columns, read back per query as `Hits`."""

import numpy as np
import pytest

import retriever
from retriever.types import Results

from helpers import make_docs, random_vectors, vector_config


@pytest.fixture
def three_segments(tmp_path):
    """A collection whose rows sit in three segments, so ids are read from each."""
    c = retriever.Collection.create(tmp_path / "c", vector_config())
    x = random_vectors(90, 16, seed=1)
    for lo in range(0, 90, 30):
        c.add(make_docs(30, lo), vectors={"dense": x[lo : lo + 30]})
        c.flush()
    assert len(c.segments) == 3
    return c, x


def test_results_match_a_per_query_search(three_segments):
    c, x = three_segments
    batch = c.search(x[:6], k=7)
    assert isinstance(batch, Results) and len(batch) == 6
    for b, hits in enumerate(batch):
        one = c.search(x[b], k=7)[0]
        assert hits.ids == one.ids and hits.documents == one.documents
        np.testing.assert_allclose(hits.scores, one.scores, rtol=1e-6)  # gemm and gemv round apart
    assert batch.ids == [i for hits in batch for i in hits.ids]
    assert batch[-1].ids == batch[5].ids and [h.ids for h in batch[1:3]] == [batch[1].ids, batch[2].ids]
    with pytest.raises(IndexError):
        batch[6]


def test_short_lists_are_cut_and_the_batch_reads_as_one_table(three_segments):
    c, x = three_segments
    batch = c.search(x[:3], k=5, filter={"year": {"in": [1990, 1991]}})  # 6 documents match
    assert batch.counts().tolist() == [5, 5, 5]
    batch = c.search(x[:3], k=10, filter={"year": {"in": [1990, 1991]}})
    assert batch.counts().tolist() == [6, 6, 6] and batch.offsets.tolist() == [0, 6, 12, 18]
    table = batch.to_arrow()
    assert table.column("query").to_pylist() == [0] * 6 + [1] * 6 + [2] * 6
    assert table.column("id").to_pylist() == batch.ids
    assert table.column("year").to_pylist() == [d["year"] for d in batch.documents]
    assert set(table.column("year").to_pylist()) == {1990, 1991}
    nothing = c.search(x[:2], k=5, filter={"year": {"in": [1800]}})
    assert nothing.counts().tolist() == [0, 0] and nothing.reasons == ["no document matches the filter"] * 2


def test_ids_of_rows_in_every_segment(three_segments):
    c, _ = three_segments
    rows = np.array([89, 0, 45, 30, 29, 60])
    assert c.documents.ids_of(rows) == [f"d{r}" for r in rows.tolist()]
    assert c.documents.ids_at(np.array([[5, -1], [-1, 61]])) == [["d5", None], [None, "d61"]]
