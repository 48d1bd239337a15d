"""Ranking-trained PQ (retriever/index/jpq.py, retriever/pq_tuning.py, `Collection.tune_pq`,
`retriever tune-pq`): the trainable scorer scores as faiss does, the trained index searches its
decoded vectors exactly, training that does not help is not kept, and the training set outlives
reopening and merges."""

import json

import faiss
import numpy as np
import pytest
from typer.testing import CliRunner

import retriever
from retriever.cli import app
from retriever.errors import InvalidRequest
from retriever.index import jpq
from retriever.index.faiss_index import FaissIndex
from helpers import rotated_queries, unit
from retriever.kernels import reference

MINILM = "sentence-transformers/all-MiniLM-L6-v2"


def pq_collection(path, docs, index="PQ8", **field):
    c = retriever.Collection.create(path, {"name": "pq", "max_k": 100, "fields": [
        {"name": "dense", "dim": docs.shape[1], "index": index, "rescore": 0, **field}]})
    c.add([{"id": str(i)} for i in range(len(docs))], vectors={"dense": docs})
    c.flush()
    return c


def labelled(queries, source, rows):
    return ({f"q{i}": queries[i] for i in rows}, {f"q{i}": {str(source[i]): 1} for i in rows})


def mean_reciprocal_rank(c, queries, source) -> float:
    found = c.search(queries, k=100, params={"nprobe": 64})
    return float(np.mean([1 / (h.ids.index(str(s)) + 1) if str(s) in h.ids else 0
                          for h, s in zip(found, source)]))


@pytest.mark.parametrize("factory", ["PQ8", "IVF8,PQ8"])
def test_the_trainable_scorer_scores_as_faiss_does(factory):
    docs, queries, _ = rotated_queries(n_docs=3000, n_queries=20)
    index = FaissIndex(factory, 32, "ip")
    index.train(docs)
    index.add(docs)
    scores, rows = index.search(queries, 20, {"nprobe": 8}, None)
    scorer = jpq.PqScorer(index.cpu_index)
    codes, lists = scorer.encode(docs)
    import torch

    mine = scorer.scores(torch.from_numpy(queries), torch.from_numpy(codes[rows]),
                         torch.from_numpy(lists[rows]))
    np.testing.assert_allclose(mine.detach().numpy(), scores, rtol=1e-4, atol=1e-4)


def test_ranking_training_helps_held_out_queries_and_searches_its_decoded_vectors(tmp_path):
    docs, queries, source = rotated_queries()
    c = pq_collection(tmp_path / "c", docs)
    test = np.arange(150, 300)
    before = mean_reciprocal_rank(c, queries[test], source[test])
    [report] = c.tune_pq("dense", *labelled(queries, source, range(150)))
    assert report["epoch"] > 0 and report["mrr_after"] > report["mrr_before"]
    after = mean_reciprocal_rank(c, queries[test], source[test])
    assert after > before + 0.02  # queries it never saw rank their documents better
    # the stored index is an ordinary faiss index: its search is exact search over what it decodes
    [part] = c.fields["dense"].parts
    decoded = part.index.cpu_index.reconstruct_n(0, len(docs))
    scores, rows = c.fields["dense"].search(queries[test], 10, {}, None)
    exact_scores, exact_rows = reference.exact_search(queries[test], decoded, 10)
    np.testing.assert_allclose(scores, exact_scores, rtol=1e-4, atol=1e-4)
    assert np.mean(rows == exact_rows) > 0.99  # ties aside
    reopened = retriever.Collection.open(c.path)
    assert mean_reciprocal_rank(reopened, queries[test], source[test]) == after


def test_training_that_does_not_help_leaves_k_means_centroids(tmp_path):
    docs, queries, source = rotated_queries(n_docs=1200, n_queries=60)
    c = pq_collection(tmp_path / "c", docs)
    index = c.fields["dense"].parts[0].index
    ranking = jpq.RankingSet(queries, docs[source], np.arange(len(source)))
    centroids = faiss.vector_to_array(jpq.product_quantizer(index.cpu_index)[1].centroids).copy()
    report = jpq.train(index, docs, ranking, lr=1.0)  # steps this large only make ranking worse
    assert report.epoch == 0 and report.mrr_after == report.mrr_before == report.held_out_mrr[0]
    assert max(report.held_out_mrr[1:]) <= report.held_out_mrr[0]
    np.testing.assert_array_equal(faiss.vector_to_array(jpq.product_quantizer(index.cpu_index)[1].centroids),
                                  centroids)


def test_the_training_set_outlives_reopening_writes_and_merges(tmp_path):
    docs, queries, source = rotated_queries(n_docs=1200, n_queries=80)
    c = pq_collection(tmp_path / "c", docs)
    c.tune_pq("dense", *labelled(queries, source, range(80)))
    reopened = retriever.Collection.open(c.path)
    assert reopened.fields["dense"].ranking is not None
    assert len(reopened.fields["dense"].ranking.queries) == 80
    more = unit(np.random.default_rng(5).standard_normal((1100, 32)))
    reopened.add([{"id": f"x{i}"} for i in range(1100)], vectors={"dense": more})
    reopened.flush()
    reopened.delete(["x3"])
    reopened.optimize()  # one segment, rebuilt: its PQ trained on the kept set again
    [trained] = retriever.Collection.open(c.path).info()["fields"]["dense"]["pq_training"]
    assert trained["rows"] == 1200 + 1099 and "epoch" in trained
    assert retriever.Collection.open(c.path).fields["dense"].ranking is not None


def test_tune_pq_refuses_what_it_cannot_train_and_changes_nothing(tmp_path):
    docs, queries, source = rotated_queries(n_docs=1100, n_queries=10)
    asked = labelled(queries, source, range(10))
    flat = pq_collection(tmp_path / "flat", docs, index="Flat")
    with pytest.raises(InvalidRequest, match="needs PQ codes"):
        flat.tune_pq("dense", *asked)
    with pytest.raises(InvalidRequest, match="inner product"):
        pq_collection(tmp_path / "l2", docs, metric="l2").tune_pq("dense", *asked)
    c = pq_collection(tmp_path / "c", docs)
    version = c.version
    with pytest.raises(InvalidRequest, match="unknown field"):
        c.tune_pq("nope", *asked)
    with pytest.raises(InvalidRequest, match="at least 2 judged queries"):
        c.tune_pq("dense", asked[0], {"q0": asked[1]["q0"]})
    with pytest.raises(InvalidRequest, match="relevant documents are in the collection"):
        c.tune_pq("dense", asked[0], {q: {"missing": 1} for q in asked[1]})
    with pytest.raises(InvalidRequest, match="dimension"):
        c.tune_pq("dense", {q: v[:5] for q, v in asked[0].items()}, asked[1])
    with pytest.raises(InvalidRequest, match="hold_out"):
        c.tune_pq("dense", *asked, hold_out="rows")
    with pytest.raises(InvalidRequest, match="numeric grades"):
        c.tune_pq("dense", asked[0], {q: {d: "yes" for d in rel} for q, rel in asked[1].items()})
    with pytest.raises(InvalidRequest, match="numeric grades"):
        c.tune_pq("dense", asked[0], {q: list(rel) for q, rel in asked[1].items()})
    assert c.version == version and retriever.Collection.open(c.path).fields["dense"].ranking is None


@pytest.mark.model
def test_cli_tune_pq_on_judged_texts(tmp_path):
    """`retriever tune-pq` over a BEIR folder: the MiniLM field's PQ trained on its judged queries."""
    rng = np.random.default_rng(3)
    words = [f"topic{i}" for i in range(60)]
    texts = {f"d{i}": " ".join(rng.choice(words, size=5)) for i in range(1100)}
    beir = tmp_path / "beir"
    (beir / "qrels").mkdir(parents=True)
    asked = {f"q{i}": texts[f"d{i}"] for i in range(0, 40)}
    lines = [json.dumps({"_id": q, "text": t}) + "\n" for q, t in asked.items()]
    (beir / "queries.jsonl").write_text("".join(lines))
    (beir / "qrels" / "train.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"{q}\td{q[1:]}\t1\n" for q in asked))
    c = retriever.Collection.create(tmp_path / "c", {"name": "t", "fields": [
        {"name": "dense", "model": MINILM, "index": "PQ8"}]})
    c.add([{"id": d, "text": t} for d, t in texts.items()])
    c.flush()
    result = CliRunner().invoke(app, ["tune-pq", str(c.path), "--beir", str(beir), "--json"])
    assert result.exit_code == 0, result.output
    [report] = json.loads(result.stdout)["segments"]
    assert report["rows"] == 1100 and len(report["held_out_mrr"]) == 21
    assert retriever.Collection.open(c.path).fields["dense"].ranking is not None
    missing = CliRunner().invoke(app, ["tune-pq", str(c.path), "--beir", str(beir), "--split", "dev"])
    assert missing.exit_code != 0 and "no qrels for split 'dev'" in missing.output


def test_a_field_too_small_for_pq_keeps_the_set_for_later_segments(tmp_path):
    docs, queries, source = rotated_queries(n_docs=2200, n_queries=60)
    c = pq_collection(tmp_path / "c", docs[:500])  # under the training floor: searched exactly
    assert c.tune_pq("dense", *labelled(queries, source % 500, range(60))) == []
    c.add([{"id": str(i)} for i in range(500, 2200)], vectors={"dense": docs[500:]})
    c.optimize()
    [trained] = c.info()["fields"]["dense"]["pq_training"]
    assert trained["rows"] == 2200


def test_holding_out_by_documents_trains_on_no_query_sharing_a_held_out_document():
    rng = np.random.default_rng(4)
    documents = unit(rng.standard_normal((30, 8)))
    owner = np.repeat(np.arange(40), 2)  # each query judges two of 30 documents: many are shared
    picked = rng.integers(0, 30, len(owner))
    queries = unit(rng.standard_normal((40, 8)))
    for hold_out in jpq.HOLD_OUTS:
        ranking = jpq.RankingSet(queries, documents[picked], owner, hold_out)
        assert jpq.RankingSet.from_bytes(ranking.to_bytes()).hold_out == hold_out
        held, trained = jpq._split(ranking, seed=0)
        assert len(held) == 8 and not set(held) & set(trained)
        shared = set(picked[np.isin(owner, held)]) & set(picked[np.isin(owner, trained)])
        if hold_out == "documents":
            assert not shared and len(trained) < 32
        else:
            assert len(trained) == 32
    with pytest.raises(InvalidRequest, match="hold_out"):
        jpq.RankingSet(queries, documents[picked], owner, "rows")
