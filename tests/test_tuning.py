"""`retriever tune`: pipelines scored from stored candidates against real searches, the choice,
and the pipeline it keeps."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

import retriever
from retriever import tuning
from retriever.cli import app
from retriever.errors import InvalidRequest, NotFound
from retriever.evaluation import load_beir
from retriever.registry import Registry
from retriever.server import Server, ServerOptions
from retriever.pipeline import HYBRID, Fuse, Pipeline, Prefetch, Rerank, hybrid

WORDS = [f"w{i}" for i in range(40)]


def judged_corpus(root, docs=160, queries=24):
    """A BEIR folder: random texts over 40 words; a document is relevant to a two-word query by how
    many of its words it holds (2: both)."""
    rng = np.random.default_rng(7)
    texts = {f"d{i}": " ".join(rng.choice(WORDS, size=rng.integers(4, 14))) for i in range(docs)}
    asked = {f"q{i}": " ".join(rng.choice(WORDS, size=2, replace=False)) for i in range(queries)}
    root.mkdir()
    (root / "corpus.jsonl").write_text(
        "".join(json.dumps({"_id": i, "text": t}) + "\n" for i, t in texts.items())
    )
    (root / "queries.jsonl").write_text(
        "".join(json.dumps({"_id": q, "text": t}) + "\n" for q, t in asked.items())
    )
    lines = ["query-id\tcorpus-id\tscore"]
    for q, text in asked.items():
        for d, doc in texts.items():
            held = sum(w in doc.split() for w in text.split())
            if held:
                lines.append(f"{q}\t{d}\t{held}")
    (root / "qrels").mkdir()
    (root / "qrels" / "train.tsv").write_text("\n".join(lines) + "\n")
    return texts


@pytest.fixture(scope="module")
def judged(tmp_path_factory):
    root = tmp_path_factory.mktemp("tune")
    texts = judged_corpus(root / "beir")
    config = {
        "name": "t",
        "max_candidates": 10**6,
        "fields": [
            {"name": "bm25", "kind": "bm25"},
            {"name": "flat", "kind": "bm25", "k1": 0.2, "b": 0.1},
            {"name": "loose", "kind": "bm25", "k1": 3.0, "b": 1.0},
        ],
    }
    c = retriever.Collection.create(root / "c", config)
    c.add([{"id": i, "text": t} for i, t in texts.items()])
    queries, qrels = load_beir(root / "beir", "train")
    return c, queries, qrels, root


def reference_ndcg(collection, queries, qrels, pipeline):
    """nDCG@10 of each query from a real search with the pipeline (gain = relevance)."""
    out = []
    for qid, text in queries.items():
        [hits] = collection.search(text, k=10, pipeline=pipeline)
        dcg = sum(qrels[qid].get(i, 0) / np.log2(r + 2) for r, i in enumerate(hits.ids))
        best = sorted(qrels[qid].values(), reverse=True)[:10]
        out.append(dcg / sum(g / np.log2(r + 2) for r, g in enumerate(best)))
    return np.array(out)


def test_stored_candidates_rank_as_the_collection_does(judged):
    c, queries, qrels, _ = judged
    stored = tuning.Judged.gather(c, queries, qrels, ["bm25", "flat", "loose"], depth=60, progress=False)
    everyone = np.arange(len(queries))
    three = [Prefetch("bm25", 40), Prefetch("flat", 40), Prefetch("loose", 20)]
    for pipeline in (
        Pipeline([Prefetch("flat", 60)]),
        Pipeline(three),
        Pipeline(three[:2], Fuse("weighted", {"bm25": 0.25}, "zscore")),
        Pipeline(three, Fuse("weighted", {"loose": 2.0}, complete=True)),
        Pipeline(three[1:], Fuse("rrf", complete=True), rerank=[Rerank("bm25", k=15)]),
        hybrid(["bm25", "flat", "loose"], 30),
    ):
        np.testing.assert_allclose(
            stored.ndcg(pipeline, everyone),
            reference_ndcg(c, queries, qrels, pipeline),
            atol=1e-9,
            err_msg=str(pipeline),
        )


def test_tune_chooses_a_pipeline_at_least_as_good_as_each_field_and_keeps_it(judged, tmp_path):
    c, queries, qrels, _ = judged
    result = tuning.tune(c, queries, qrels, depths=(20, 60), folds=2, progress=False)
    scores = result["nDCG@10"]
    assert scores["tuned"] >= max(scores["hybrid"], *scores["fields"].values())
    chosen = Pipeline.from_dict(result["pipeline"])
    assert scores["tuned"] == pytest.approx(reference_ndcg(c, queries, qrels, chosen).mean(), abs=1e-4)
    held = result["held_out"]
    assert held["folds"] == 2 and len(held["chosen"]) == 2 and 0 < held["nDCG@10"] <= 1
    best = max(scores["fields"].values())
    assert held["gain_over_best_field"] == pytest.approx(held["nDCG@10"] - best, abs=1e-4)

    c.save_pipeline("tuned", chosen, default=True)
    reopened = retriever.Collection.open(c.path)
    assert reopened.config.default_pipeline == "tuned" and reopened.config.pipeline("tuned") == chosen
    text = next(iter(queries.values()))
    assert reopened.search(text, k=5)[0].ids == c.search(text, k=5, pipeline=chosen)[0].ids
    assert reopened.search(text, k=5, fields="flat")[0].ids == c.search(text, k=5, fields="flat")[0].ids


def test_the_built_in_hybrid_pipeline(judged):
    c, queries, _, _ = judged
    text = next(iter(queries.values()))
    by_name = c.search(text, k=5, pipeline=HYBRID)
    assert by_name[0].ids == c.search(text, k=5, pipeline=hybrid(["bm25", "flat", "loose"]))[0].ids
    assert set(by_name[0].field_scores) == {"bm25", "flat", "loose", "fuse"}
    with pytest.raises(NotFound, match="hybrid \\(built in\\)"):
        c.search(text, pipeline="nope")
    server = Server(Registry.open_data_dir(c.path.parent), ServerOptions(port=0)).start()
    try:  # by name over the wire too
        far = retriever.connect(f"grpc://127.0.0.1:{server.port}/t")
        assert far.search(text, k=5, pipeline=HYBRID)[0].ids == by_name[0].ids
    finally:
        server.stop()


def test_tune_refuses_what_it_cannot_do(judged):
    c, queries, qrels, _ = judged
    for how, words in (
        ({"folds": 0}, "folds"),
        ({"folds": 10**6}, "folds"),
        ({"depths": ()}, "depths"),
        ({"depths": (0,)}, "depths"),
        ({"fields": ["nope"]}, "unknown field"),
    ):
        with pytest.raises((InvalidRequest, NotFound), match=words):
            tuning.tune(c, queries, qrels, progress=False, **how)
    with pytest.raises(retriever.InvalidConfig, match="pipeline name"):
        c.save_pipeline("bad name!", {"prefetch": [{"field": "bm25"}]})
    with pytest.raises(retriever.InvalidConfig, match="unknown field"):
        c.save_pipeline("x", {"prefetch": [{"field": "nope"}]})
    assert "x" not in retriever.Collection.open(c.path).config.pipelines


def test_cli_tune_then_eval(judged, tmp_path):
    c, _, _, root = judged
    invoke = CliRunner().invoke
    dry = invoke(
        app,
        [
            "tune",
            str(c.path),
            "--beir",
            str(root / "beir"),
            "--depths",
            "20,40",
            "--folds",
            "1",
            "--dry-run",
            "--json",
        ],
    )
    assert dry.exit_code == 0, dry.output
    assert (
        json.loads(dry.stdout)["kept_as"] is None
        and "quick" not in retriever.Collection.open(c.path).config.pipelines
    )
    kept = invoke(
        app, ["tune", str(c.path), "--beir", str(root / "beir"), "--depths", "20,40", "--name", "quick"]
    )
    assert kept.exit_code == 0, kept.output
    assert "held out (2 folds)" in kept.output and "kept as pipeline 'quick'" in kept.output
    scored = invoke(
        app,
        [
            "eval",
            str(c.path),
            "--beir",
            str(root / "beir"),
            "--split",
            "train",
            "--pipeline",
            "quick",
            "--json",
        ],
    )
    assert scored.exit_code == 0, scored.output
    assert json.loads(scored.stdout)["nDCG@10"] > 0
    bad = invoke(app, ["tune", str(c.path), "--beir", str(root / "beir"), "--depths", "a,b"])
    assert bad.exit_code == 2 and "--depths takes" in bad.output
    remote = invoke(app, ["tune", "grpc://127.0.0.1:1/t", "--beir", str(root / "beir")])
    assert remote.exit_code == 2 and "runs on a collection directory" in remote.output


def test_gathering_stays_within_the_collections_limits(judged, tmp_path):
    c, queries, qrels, _ = judged
    tight = retriever.Collection.create(tmp_path / "tight", {**c.config.to_dict(), "max_batch": 3,
                                                              "max_candidates": 400})
    tight.add(c.get([f"d{i}" for i in range(160)]))
    names = ["bm25", "flat", "loose"]
    everyone = np.arange(len(queries))
    roomy = tuning.Judged.gather(c, queries, qrels, names, depth=60, progress=False)
    small = tuning.Judged.gather(tight, queries, qrels, names, depth=60, progress=False)  # 2 queries a call
    pipeline = hybrid(names, 60)
    np.testing.assert_array_equal(small.ndcg(pipeline, everyone), roomy.ndcg(pipeline, everyone))
