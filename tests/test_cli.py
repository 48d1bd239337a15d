"""End to end through the CLI on a tiny corpus with the real MiniLM model."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

import retriever
from helpers import MINILM_CONFIG, TINY_CORPUS
from retriever import build as build_module
from retriever.cli import app
from retriever.encoders.dense import DenseEncoder

runner = CliRunner()


def invoke(*args):
    result = runner.invoke(app, [str(a) for a in args])
    return result, (json.loads(result.stdout) if "--json" in args and result.stdout.strip() else None)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    (root / "config.toml").write_text(MINILM_CONFIG)
    with open(root / "corpus.jsonl", "w", encoding="utf-8") as f:
        for doc in TINY_CORPUS:
            f.write(json.dumps(doc, ensure_ascii=False) + "\n")
    (root / "queries.jsonl").write_text(
        json.dumps({"_id": "q1", "text": "which animal barks?"}) + "\n" + json.dumps({"_id": "q2", "text": "how is bread made"}) + "\n"
    )
    (root / "qrels").mkdir()
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\tdog\t1\nq2\tbread\t1\n")
    return root


@pytest.fixture(scope="module")
def built(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("built") / "tiny"
    result, data = invoke("build", "--config", corpus / "config.toml", "--input", corpus / "corpus.jsonl", "--out", out, "--json")
    assert result.exit_code == 0, result.output
    assert data["counts"]["documents"] == len(TINY_CORPUS)
    return out


def test_search_finds_the_right_document(built):
    result, data = invoke("search", built, "which animal barks?", "star at the centre of the solar system", "-k", "2", "--json")
    assert result.exit_code == 0, result.output
    assert [r["hits"][0]["id"] for r in data["results"]] == ["dog", "sun"]
    assert data["results"][0]["hits"][0]["document"]["title"] == "Dogs"


def test_cli_matches_python_api(built):
    _, data = invoke("search", built, "rain from clouds", "-k", "6", "--json")
    [hits] = retriever.connect(built).search("rain from clouds", k=6)
    assert [h["id"] for h in data["results"][0]["hits"]] == hits.ids
    np.testing.assert_allclose([h["score"] for h in data["results"][0]["hits"]], hits.scores, rtol=1e-6)


def test_eval_scores_and_writes_trec_run(built, corpus, tmp_path):
    run_file = tmp_path / "run.trec"
    result, data = invoke("eval", built, "--beir", corpus, "--run", run_file, "--json")
    assert result.exit_code == 0, result.output
    assert data["nDCG@10"] == 1.0 and data["R@100"] == 1.0 and data["queries"] == 2
    assert data["qps"] > 0 and data["latency_ms"]["p50"] <= data["latency_ms"]["p99"]
    lines = run_file.read_text().splitlines()
    assert len(lines) == 2 * len(TINY_CORPUS)
    qid, q0, doc, rank, score, tag = lines[0].split()
    assert (qid, q0, doc, rank, tag) == ("q1", "Q0", "dog", "1", "tiny")


def test_info_and_check(built):
    result, data = invoke("info", built, "--json")
    assert data["fields"]["dense"]["dim"] == 384 and data["counts"]["documents"] == len(TINY_CORPUS)
    result, data = invoke("check", built, "--json")
    assert result.exit_code == 0 and data["ok"] and data["fields"]["dense"]["recall@10"] == 1.0


def test_errors_are_one_clear_line(built, tmp_path):
    result, data = invoke("search", tmp_path / "nowhere", "x", "--json")
    assert result.exit_code == 2 and "does not exist" in data["error"]
    result, data = invoke("search", built, "x", "-k", "0", "--json")
    assert result.exit_code == 2 and "k must be" in data["error"]
    result, data = invoke("search", built, "x", "--filter", "{bad", "--json")
    assert result.exit_code == 2 and "not valid JSON" in data["error"]
    result, data = invoke("search", built, "x", "--fields", "sparse", "--json")
    assert result.exit_code == 2 and "unknown field" in data["error"]


def test_build_refuses_to_overwrite(built, corpus):
    result, data = invoke("build", "--config", corpus / "config.toml", "--input", corpus / "corpus.jsonl", "--out", built, "--json")
    assert result.exit_code == 2 and "already holds" in data["error"]


def test_build_into_a_directory_with_other_files_refuses_and_touches_nothing(corpus, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")
    result, data = invoke(
        "build",
        "--config",
        corpus / "config.toml",
        "--input",
        corpus / "corpus.jsonl",
        "--out",
        out,
        "--json",
    )
    assert result.exit_code == 2 and "not an empty directory" in data["error"]
    assert [p.name for p in out.iterdir()] == ["notes.txt"] and (out / "notes.txt").read_text() == "my notes"


BM25_CONFIG = 'name = "c"\n[[fields]]\nname = "bm25"\nkind = "bm25"\n'
BAD_LINES = {
    "not UTF-8": b'{"id": "a", "text": "hello \xff\xfe world"}\n',
    "nests too deeply": b'{"id": "a", "text": "x", "n": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n",
    "64-bit": b'{"id": "a", "text": "x", "n": 1000000000000000000000000000000}\n',
    "JSON list, not an object": b"[1, 2, 3]\n",
}


@pytest.mark.parametrize("words", BAD_LINES)
def test_a_bad_corpus_line_is_one_line_of_error_and_leaves_no_directory(tmp_path, words):
    (tmp_path / "c.toml").write_text(BM25_CONFIG)
    (tmp_path / "corpus.jsonl").write_bytes(b'{"id": "ok", "text": "fine"}\n' + BAD_LINES[words])
    out = tmp_path / "out"
    arguments = ["build", "-c", tmp_path / "c.toml", "-i", tmp_path / "corpus.jsonl", "-o", out, "--json"]
    result = runner.invoke(app, [str(a) for a in arguments])
    assert result.exit_code == 2 and result.exception is None or isinstance(result.exception, SystemExit)
    error = json.loads(result.stdout)["error"]
    assert words.split(",")[0].replace("not UTF-8", "utf-8") in error and "\n" not in error
    assert not out.exists()


def test_nan_vectors_leave_no_half_built_collection(tmp_path):
    (tmp_path / "c.toml").write_text('name = "c"\n[[fields]]\nname = "dense"\ndim = 8\n')
    np.save(tmp_path / "v.npy", np.full((3, 8), np.nan, dtype=np.float32))
    out = tmp_path / "out"
    result, data = invoke("build", "-c", tmp_path / "c.toml", "-i", tmp_path / "v.npy", "-o", out, "--json")
    assert result.exit_code == 2 and "NaN" in data["error"] and not out.exists()
    out.mkdir()  # an empty directory given: left as it was, empty
    result, data = invoke("build", "-c", tmp_path / "c.toml", "-i", tmp_path / "v.npy", "-o", out, "--json")
    assert result.exit_code == 2 and out.exists() and not any(out.iterdir())


def test_resume_encodes_only_missing_blocks(corpus, tmp_path, monkeypatch):
    config = retriever.CollectionConfig.from_toml(corpus / "config.toml")
    out = tmp_path / "resumed"
    calls = []
    real_encode = DenseEncoder.encode

    def failing_encode(self, texts, **kw):
        calls.append(len(texts))
        if len(calls) == 2:
            raise KeyboardInterrupt  # the user pressed Ctrl-C during the second block
        return real_encode(self, texts, **kw)

    monkeypatch.setattr(DenseEncoder, "encode", failing_encode)
    with pytest.raises(KeyboardInterrupt):
        build_module.build(config, corpus / "corpus.jsonl", out, block_size=2, progress=False)
    with pytest.raises(retriever.AlreadyExists, match="--resume"):
        build_module.build(config, corpus / "corpus.jsonl", out, block_size=2, progress=False)
    calls.clear()
    monkeypatch.setattr(DenseEncoder, "encode", lambda self, texts, **kw: (calls.append(len(texts)), real_encode(self, texts, **kw))[1])
    resumed = build_module.build(config, corpus / "corpus.jsonl", out, resume=True, block_size=2, progress=False)
    assert calls == [2, 2], "the first block came from disk"
    assert len(resumed) == len(TINY_CORPUS) and not (out / ".build").exists()
    fresh = build_module.build(config, corpus / "corpus.jsonl", tmp_path / "fresh", block_size=2, progress=False)
    np.testing.assert_allclose(resumed.fields["dense"].vectors.to_array(), fresh.fields["dense"].vectors.to_array(), atol=1e-5)


def test_bring_your_own_vectors_build_and_search(tmp_path):
    from helpers import random_vectors

    x = random_vectors(400, 12, seed=4)
    np.save(tmp_path / "v.npy", x)
    np.save(tmp_path / "q.npy", x[[7, 300]])
    (tmp_path / "c.toml").write_text('name = "v"\n[[fields]]\nname = "dense"\ndim = 12\nindex = "HNSW16"\n')
    result, _ = invoke("build", "-c", tmp_path / "c.toml", "-i", tmp_path / "v.npy", "-o", tmp_path / "v", "--json")
    assert result.exit_code == 0, result.output
    result, data = invoke("search", tmp_path / "v", "--vectors", tmp_path / "q.npy", "-k", "3", "--json")
    assert [r["hits"][0]["id"] for r in data["results"]] == ["7", "300"]
    result, data = invoke("search", tmp_path / "v", "some text", "--json")
    assert result.exit_code == 2 and "has no model" in data["error"]


HYBRID_CONFIG = MINILM_CONFIG + """
[[fields]]
name = "bm25"
kind = "bm25"
"""


@pytest.fixture(scope="module")
def hybrid(corpus, tmp_path_factory):
    (corpus / "hybrid.toml").write_text(HYBRID_CONFIG)
    out = tmp_path_factory.mktemp("hybrid") / "tiny"
    result, _ = invoke("build", "--config", corpus / "hybrid.toml", "--input", corpus / "corpus.jsonl", "--out", out, "--json")
    assert result.exit_code == 0, result.output
    return out


@pytest.mark.parametrize("extra", [["--fields", "bm25"], ["--fields", "dense,bm25"],
                                   ["--fields", "dense,bm25", "--fusion", "weighted", "--weights", "dense=0.2,bm25=1", "--normalization", "zscore"]])
def test_search_fields_and_fusion_match_python_api(hybrid, extra):
    result, data = invoke("search", hybrid, "bread baked with yeast", "-k", "4", *extra, "--json")
    assert result.exit_code == 0, result.output
    options = {"fields": extra[1].split(",")}
    if "--fusion" in extra:
        options.update(fusion="weighted", weights={"dense": 0.2, "bm25": 1.0}, normalization="zscore")
    [hits] = retriever.connect(hybrid).search("bread baked with yeast", k=4, **options)
    assert [h["id"] for h in data["results"][0]["hits"]] == hits.ids
    assert hits.ids[0] == "bread"


def test_eval_with_fields_and_fusion(hybrid, corpus):
    result, data = invoke("eval", hybrid, "--beir", corpus, "--fields", "dense,bm25", "--fusion", "rrf", "--json")
    assert result.exit_code == 0, result.output
    assert data["fields"] == ["dense", "bm25"] and data["fusion"] == "rrf" and data["nDCG@10"] > 0.9


@pytest.mark.parametrize("extra, words", [(["--fusion", "max"], "fusion must be one of"), (["--weights", "dense=x"], "FIELD=NUMBER"),
                                          (["--weights", "nope=1"], "not searched")])
def test_bad_fusion_options_are_clear_errors(hybrid, extra, words):
    result, _ = invoke("search", hybrid, "bread", "--fields", "dense,bm25", *extra)
    assert result.exit_code == 2 and words in result.output


def test_multivector_search_exhaustive_and_rerank(corpus, tmp_path):
    (corpus / "tokens.toml").write_text(
        'name = "tok"\n[[fields]]\nname = "tok"\nkind = "multivector"\nmodel = "sentence-transformers/all-MiniLM-L6-v2"\n'
        'token_dim = 64\nfde = { repetitions = 8, simhash_bits = 3, projection_dim = 16 }\n')
    result, _ = invoke("build", "--config", corpus / "tokens.toml", "--input", corpus / "corpus.jsonl", "--out", tmp_path / "tok", "--json")
    assert result.exit_code == 0, result.output
    runs = [invoke("search", tmp_path / "tok", "which animal barks?", "-k", "3", *extra, "--json")[1]
            for extra in (["--exhaustive"], ["-p", "rerank=6"])]
    assert runs[0]["results"][0]["hits"][0]["id"] == "dog"
    assert [h["id"] for h in runs[0]["results"][0]["hits"]] == [h["id"] for h in runs[1]["results"][0]["hits"]]


def test_binary_field_built_from_text_and_searched(corpus, tmp_path):
    (corpus / "binary.toml").write_text(
        HYBRID_CONFIG.split("[[fields]]\nname = \"bm25\"")[0]
        + '[[fields]]\nname = "bits"\nkind = "binary"\nsource = "dense"\nmethod = "sign"\nbits = 2\n')
    result, _ = invoke("build", "--config", corpus / "binary.toml", "--input", corpus / "corpus.jsonl", "--out", tmp_path / "b", "--json")
    assert result.exit_code == 0, result.output
    rescored = invoke("search", tmp_path / "b", "which animal barks?", "-k", "3", "--fields", "bits", "--json")[1]
    floats = invoke("search", tmp_path / "b", "which animal barks?", "-k", "3", "--json")[1]
    assert [h["id"] for h in rescored["results"][0]["hits"]] == [h["id"] for h in floats["results"][0]["hits"]]
    codes_only = invoke("search", tmp_path / "b", "which animal barks?", "-k", "3", "--fields", "bits", "-p", "rescore=0", "--json")[1]
    assert len(codes_only["results"][0]["hits"]) == 3
    result, data = invoke("info", tmp_path / "b", "--json")
    assert data["fields"]["bits"]["bytes_per_vector"] == 96 and data["fields"]["bits"]["method"] == "sign"
    result, data = invoke("check", tmp_path / "b", "--json")
    assert result.exit_code == 0 and data["ok"] and data["fields"]["bits"]["recall@10"] >= 0.9, result.output


def test_generate_streams_an_answer_with_stats(built):
    from helpers import tiny_llama, word_tokenizer
    from retriever.rag.generate import RagGenerator
    from retriever.rag.service import set_generator
    from retriever.rag.store import ChunkCacheStore, Tier

    set_generator(RagGenerator(tiny_llama(0), word_tokenizer(), ChunkCacheStore([Tier("memory", 1 << 26)])))
    try:
        result, data = invoke("generate", built, "which animal barks?", "-k", "2", "--max-new-tokens", "4", "--json")
        assert result.exit_code == 0, result.output
        assert data["stats"]["mode"] == "blend" and len(data["stats"]["chunk_ids"]) == 2 and data["stats"]["new_tokens"] <= 4
        result, _ = invoke("generate", built, "which animal barks?", "--mode", "fast")
        assert result.exit_code == 2 and "mode must be one of" in result.output
    finally:
        set_generator(None)


def test_eval_on_a_split_that_judges_nothing_says_so(tmp_path):
    (tmp_path / "qrels").mkdir()
    (tmp_path / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n")
    (tmp_path / "queries.jsonl").write_text('{"_id": "q1", "text": "anything"}\n')
    from retriever.evaluation import load_beir

    with pytest.raises(retriever.InvalidRequest, match="judges no queries"):
        load_beir(tmp_path, "test")
