import numpy as np
import pytest

import retriever
from helpers import make_docs, random_vectors, vector_config
from retriever import AlreadyExists, CorruptIndex, InvalidRequest, NotFound
from retriever.kernels import reference


def test_search_matches_exact_and_returns_documents(vec_collection):
    c, x = vec_collection
    hits = c.search(x[:4], k=5)
    _, exact = reference.exact_search(x[:4], x, 5)
    for h, rows in zip(hits, exact):
        assert h.ids == [f"d{r}" for r in rows]
        assert h.documents[0]["id"] == h.ids[0]
        assert set(h.documents[0]) >= {"id", "text", "year", "lang"}
    table = hits[0].to_arrow()
    assert table.column_names[:3] == ["id", "score", "score_dense"]
    assert table.num_rows == 5
    assert list(hits[0].to_pandas()["id"]) == hits[0].ids


def test_single_vector_is_a_batch_of_one(vec_collection):
    c, x = vec_collection
    [hits] = c.search(x[7], k=3)
    assert hits.ids[0] == "d7"


def test_save_reopen_round_trip(vec_collection):
    c, x = vec_collection
    again = retriever.connect(c.path)
    assert again.version == c.version and len(again) == 300
    a, b = c.search(x[:10], k=10), again.search(x[:10], k=10)
    for ha, hb in zip(a, b):
        assert ha.ids == hb.ids
        np.testing.assert_allclose(ha.scores, hb.scores)


def test_upsert_replaces_and_delete_removes(vec_collection):
    c, x = vec_collection
    moved = -x[0]
    c.add([{"id": "d0", "text": "moved", "year": 2024, "lang": "en"}], vectors={"dense": moved[None]})
    assert len(c) == 300
    [h] = c.search(moved, k=1)
    assert h.ids == ["d0"] and h.documents[0]["text"] == "moved"
    [h] = c.search(x[0], k=100)
    assert "d0" not in h.ids, "the replaced vector is gone"
    assert c.delete(["d1", "d2", "nope"]) == 2
    assert len(c) == 298
    reopened = retriever.connect(c.path)
    [h] = reopened.search(x[1], k=50)
    assert "d1" not in h.ids and "d2" not in h.ids and len(h) == 50


@pytest.mark.parametrize(
    "condition, predicate",
    [
        ({"lang": "fr"}, lambda d: d["lang"] == "fr"),
        ({"lang": {"in": ["en", "de"]}}, lambda d: d["lang"] in ("en", "de")),
        ({"year": {"gte": 2000, "lt": 2005}}, lambda d: 2000 <= d["year"] < 2005),
        ({"year": {"gt": 2012}, "lang": "en"}, lambda d: d["year"] > 2012 and d["lang"] == "en"),
    ],
)
def test_filters_keep_returning_k_hits(vec_collection, condition, predicate):
    c, x = vec_collection
    docs = make_docs(300)
    allowed = np.array([predicate(d) for d in docs])
    k = min(10, int(allowed.sum()))
    _, exact = reference.exact_search(x[:5], x, k, allowed=allowed)
    for h, rows in zip(c.search(x[:5], k=k, filter=condition), exact):
        assert len(h) == k
        assert all(predicate(d) for d in h.documents)
        assert h.ids == [f"d{r}" for r in rows]


def test_filter_matching_nothing_gives_empty_hits_with_reason(vec_collection):
    c, x = vec_collection
    [h] = c.search(x[0], k=5, filter={"lang": "xx"})
    assert len(h) == 0 and "filter" in h.reason


def test_empty_collection_answers_with_a_reason(tmp_path):
    c = retriever.Collection.create(tmp_path / "empty", vector_config())
    [h] = c.search(np.ones(16), k=3)
    assert len(h) == 0 and "no documents" in h.reason
    assert h.to_arrow().num_rows == 0


def test_reader_pins_its_version_while_a_writer_commits(vec_collection):
    writer, x = vec_collection
    reader = retriever.connect(writer.path)
    writer.add(make_docs(50, start=300), vectors={"dense": random_vectors(50, 16, seed=9)})
    writer.delete([f"d{i}" for i in range(100)])
    writer.add(make_docs(5, start=400), vectors={"dense": random_vectors(5, 16, seed=10)})
    assert len(reader) == 300
    [h] = reader.search(x[3], k=1)
    assert h.ids == ["d3"] and h.documents[0]["id"] == "d3"
    assert len(reader.reopen()) == 300 + 50 - 100 + 5


def test_a_writer_behind_the_disk_catches_up_before_writing(vec_collection):
    first, x = vec_collection
    second = retriever.connect(first.path)
    first.delete(["d5"])
    assert second.delete(["d6", "d5"]) == 1  # d5 is already gone in the version it writes on
    assert second.log_position == first.log_position + 1  # logged after the first object's write
    fresh = retriever.connect(first.path)
    assert len(fresh) == len(second) == 298
    assert {"d5", "d6"}.isdisjoint(fresh.search(x[:10], k=10)[5].ids + fresh.search(x[:10], k=10)[6].ids)


def test_approximate_index_with_rescoring(tmp_path):
    x = random_vectors(3000, 32, seed=3)
    c = retriever.Collection.create(tmp_path / "ivfpq", vector_config("IVF16,PQ8", dim=32, rescore=100))
    c.add(make_docs(3000), vectors={"dense": x})
    queries = x[:40]
    _, exact = reference.exact_search(queries, x, 10)
    def overlap(params):
        hits = c.search(queries, k=10, params=params)
        return np.mean([len(set(h.rows) & set(e)) / 10 for h, e in zip(hits, exact)])
    plain, rescored = overlap({"rescore": 0, "nprobe": 16}), overlap({"nprobe": 16})
    assert rescored >= 0.95 and rescored > plain
    [h] = c.search(queries[0], k=10, params={"nprobe": 16})
    np.testing.assert_allclose(h.scores, x[h.rows] @ queries[0], rtol=1e-5, atol=1e-5)


def test_create_refuses_an_existing_collection(vec_collection):
    c, _ = vec_collection
    with pytest.raises(AlreadyExists):
        retriever.Collection.create(c.path, vector_config())


def files_snapshot(path):
    return {p.name: p.read_bytes() for p in sorted(path.iterdir()) if p.is_file() and p.name != ".lock"}


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda c, x: c.search(np.ones((1, 8)), k=5), InvalidRequest, "dimension 16"),
        (lambda c, x: c.search(np.full((1, 16), np.nan), k=5), InvalidRequest, "NaN"),
        (lambda c, x: c.search(np.full((1, 16), np.inf), k=5), InvalidRequest, "NaN or inf"),
        (lambda c, x: c.search(np.zeros((1, 16)), k=5), InvalidRequest, "all zeros"),
        (lambda c, x: c.search(x[0], k=0), InvalidRequest, "k must be"),
        (lambda c, x: c.search(x[0], k=101), InvalidRequest, "max_k"),
        (lambda c, x: c.search(x[0], k=2.5), InvalidRequest, "k must be"),
        (lambda c, x: c.search(x[0], fields=["nope"]), NotFound, "unknown field 'nope'"),
        (lambda c, x: c.search(x[0], params={"nprobes": 3}), InvalidRequest, "unknown search parameter"),
        (lambda c, x: c.search(x[0], params={"nprobe": -3}), InvalidRequest, "nprobe"),
        (lambda c, x: c.search(x[0], filter={"colour": "red"}), InvalidRequest, "unknown document column 'colour'"),
        (lambda c, x: c.search(x[0], filter={"year": {"near": 3}}), InvalidRequest, "unknown operator"),
        (lambda c, x: c.search(x[0], filter={"year": {"gte": "x"}}), InvalidRequest, "takes a number"),
        (lambda c, x: c.search("", k=5), InvalidRequest, "query 0 is empty"),
        (lambda c, x: c.search("text", k=5), InvalidRequest, "has no model"),
        (lambda c, x: c.search(np.ones((2000, 16))), InvalidRequest, "max_batch"),
        (lambda c, x: c.add([{"id": "n1"}], vectors={"dense": np.ones((1, 9))}), InvalidRequest, "dimension 16"),
        (lambda c, x: c.add([{"id": "n1"}], vectors={"dense": np.full((1, 16), np.nan)}), InvalidRequest, "NaN"),
        (lambda c, x: c.add([{"id": "n1"}, {"id": "n2"}], vectors={"dense": np.ones((1, 16))}), InvalidRequest, "2 documents but 1"),
        (lambda c, x: c.add([{"text": "no id"}], vectors={"dense": np.ones((1, 16))}), InvalidRequest, "needs a non-empty string `id`"),
        (lambda c, x: c.add([{"id": "a"}, {"id": "a"}], vectors={"dense": np.ones((2, 16))}), InvalidRequest, "appears twice"),
        (lambda c, x: c.add([{"id": "n", "year": "old"}], vectors={"dense": np.ones((1, 16))}), InvalidRequest, "type differs"),
        (lambda c, x: c.add([{"id": "n"}]), InvalidRequest, "has no model"),
        (lambda c, x: c.add([{"id": "n"}], vectors={"other": np.ones((1, 16))}), NotFound, "unknown field"),
        (lambda c, x: c.add([]), InvalidRequest, "no documents"),
    ],
)
def test_bad_input_is_refused_and_changes_nothing(vec_collection, call, error, message):
    c, x = vec_collection
    before = files_snapshot(c.path)
    with pytest.raises(error, match=message):
        call(c, x)
    assert files_snapshot(c.path) == before
    assert retriever.connect(c.path).version == c.version


def test_empty_text_query_is_refused(tmp_path):
    c = retriever.Collection.create(tmp_path / "t", {"name": "t", "fields": [{"name": "dense", "dim": 4, "model": "unused"}]})
    with pytest.raises(InvalidRequest, match="query 1 is empty"):
        c.search(["fine", "   "])
    with pytest.raises(InvalidRequest, match="no queries"):
        c.search([])


def test_unknown_collection_and_missing_manifest(tmp_path):
    with pytest.raises(NotFound, match="does not exist"):
        retriever.connect(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CorruptIndex, match="missing"):
        retriever.connect(tmp_path / "empty")


def test_a_segment_too_small_to_train_its_index_is_searched_exactly_until_merges_grow_it(tmp_path):
    c = retriever.Collection.create(tmp_path / "ivf", vector_config("IVF64,Flat"))
    x = random_vectors(3000, 16)
    c.add(make_docs(10), vectors={"dense": x[:10]})
    assert c.fields["dense"].info()["segment_indexes"] == ["Flat"]
    _, exact = reference.exact_search(x[:5], x[:10], 3)
    assert [h.rows.tolist() for h in c.search(x[:5], k=3)] == exact.tolist()
    c.add(
        make_docs(2990, start=10), vectors={"dense": x[10:]}
    )  # merged with the first: 3000 rows, IVF64 needs 2496
    assert len(c.segments) == 1 and c.fields["dense"].info()["segment_indexes"] == ["IVF64,Flat"]
    assert c.search(x[7], k=1, params={"nprobe": 64})[0].ids == ["d7"]


def test_documents_keep_the_keys_the_first_document_lacks(tmp_path):
    c = retriever.Collection.create(tmp_path / "c", vector_config())
    documents = [{"id": "a", "text": "first"}, {"id": "b", "n": 5, "tags": "x"}]
    c.add(documents, vectors={"dense": random_vectors(2, 16, seed=1)})
    assert c.search(np.ones((1, 16)), k=2, filter={"n": 5})[0].ids == ["b"]
    assert c.documents.take(np.array([1]))[0] == {"id": "b", "text": None, "n": 5, "tags": "x"}


def test_get_count_and_scroll_agree_with_a_scan_of_every_live_document(tmp_path, flush_each_write):
    c = retriever.Collection.create(tmp_path / "c", vector_config())
    c.add(make_docs(40), vectors={"dense": random_vectors(40, 16, seed=1)})
    c.add(make_docs(10, start=35), vectors={"dense": random_vectors(10, 16, seed=2)})  # replaces d35..d39
    c.delete(["d3", "d17"])
    live = {d["id"]: d for d in c.documents.take(np.flatnonzero(~c.deleted))}
    assert c.get(["d36", "d3", "nope", "d0"]) == [live["d36"], None, None, live["d0"]]
    cases = (
        (None, lambda d: True),
        ({"lang": "en"}, lambda d: d["lang"] == "en"),
        ({"year": {"gte": 2010}}, lambda d: d["year"] >= 2010),
    )
    for conditions, keep in cases:
        wanted = sorted(i for i, d in live.items() if keep(d))
        assert c.count(conditions) == len(wanted)
        pages, after = [], None
        while True:
            page, after = c.scroll(conditions, limit=6, after=after)
            pages.append([d["id"] for d in page])
            if after is None:
                break
        assert [i for page in pages for i in page] == wanted and all(len(p) == 6 for p in pages[:-1])
    with pytest.raises(InvalidRequest, match="limit"):
        c.scroll(limit=0)


def test_saved_pipelines_of_two_writers_both_survive(tmp_path):
    fields = [{"name": "a", "kind": "bm25"}, {"name": "b", "kind": "bm25", "k1": 0.5}]
    config = {"name": "two", "fields": fields}
    first = retriever.Collection.create(tmp_path / "c", config)
    first.add([{"id": "x", "text": "cats and dogs"}, {"id": "y", "text": "dogs"}])
    second = retriever.Collection.open(first.path)
    second.save_pipeline("from_b", {"prefetch": [{"field": "b"}]})
    first.save_pipeline("from_a", {"prefetch": [{"field": "a"}]}, default=True)  # catches up first
    for opened in (first, retriever.Collection.open(first.path)):
        assert set(opened.config.pipelines) == {"from_a", "from_b"}
        assert opened.config.default_pipeline == "from_a"
    assert len(first) == 2 and first.search("dogs")[0].ids == first.search("dogs", fields="a")[0].ids
    assert set(second.reopen().config.pipelines) == {"from_a", "from_b"}
