"""The same requests in-process and over gRPC; bad input over the wire gets the right status code."""

import errno
import subprocess
import time
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import retriever
from helpers import (
    MINILM_CONFIG,
    TINY_CORPUS,
    clouds,
    make_docs,
    random_vectors,
    sparse_vectors,
    split,
    vector_config,
)
from retriever.config import CollectionConfig
from retriever.pipeline import Pipeline, Prefetch, Rerank
from retriever.conversions import pb, pb_grpc
from retriever.index import disk
from retriever.registry import Registry
from retriever.server import Server, ServerOptions

TOKEN = "s3cret"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("served")
    vecs = retriever.Collection.create(root / "vecs", vector_config("IVF8,Flat", rescore=20))
    vecs.add(make_docs(400), vectors={"dense": random_vectors(400, 16, seed=11)})
    text = retriever.Collection.create(root / "tiny", CollectionConfig.from_dict(__import__("tomllib").loads(MINILM_CONFIG)))
    text.add(TINY_CORPUS)
    lexical = retriever.Collection.create(root / "lex", {"name": "lex", "fields": [
        {"name": "bm25", "kind": "bm25"}, {"name": "sp", "kind": "sparse", "dim": 40}, {"name": "dense", "dim": 16},
        {"name": "bits", "kind": "binary", "source": "dense", "method": "sign", "bits": 2, "rescore": 10}]})
    lexical.add(make_docs(50), vectors={"sp": sparse_vectors(50, seed=1), "dense": random_vectors(50, 16, seed=2)})
    kinds = retriever.Collection.create(root / "kinds", {"name": "kinds", "max_candidates": 10**6, "fields": [
        {"name": "tok", "kind": "multivector", "dim": 16, "token_index": "Flat",
         "fde": {"repetitions": 8, "simhash_bits": 3, "projection_dim": 8}},
        {"name": "spann", "dim": 16, "index": "SPANN,L40"}, {"name": "bm25", "kind": "bm25"}]})
    tokens = split(*clouds(150, 16, seed=5))
    kinds.add(make_docs(150), vectors={"tok": tokens, "spann": random_vectors(150, 16, seed=6)})
    broken = retriever.Collection.create(root / "broken", {"name": "broken", "fields": [{"name": "dense", "dim": 4}]})
    (broken.path / "manifest.json").write_text("{not json")
    server = Server(Registry.open([root / n for n in ("vecs", "tiny", "lex", "kinds", "broken")]),
                    ServerOptions(port=0, token=TOKEN, max_message_bytes=1 << 20)).start()
    yield root, server
    server.stop()


def remote(served, name="vecs", **options):
    root, server = served
    return retriever.connect(f"grpc://127.0.0.1:{server.port}/{name}", token=TOKEN, **options)


def stub(served, token=TOKEN):
    channel = grpc.insecure_channel(f"127.0.0.1:{served[1].port}")
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    return pb_grpc.RetrieverStub(channel), metadata, channel


def same_hits(local, far):
    assert len(local) == len(far)
    np.testing.assert_array_equal(local.offsets, far.offsets)  # the batch's columns, as sent
    assert local.ids == far.ids and local.reasons == far.reasons
    for a, b in zip(local, far):
        assert a.ids == b.ids
        np.testing.assert_array_equal(a.scores, b.scores)
        assert a.field_scores.keys() == b.field_scores.keys()
        for name in a.field_scores:  # each field's (or stage's) own scores, NaN where absent
            np.testing.assert_array_equal(a.field_scores[name], b.field_scores[name])
        assert a.documents == b.documents
        assert a.reason == b.reason


@pytest.mark.parametrize(
    "name, request_",
    [
        ("vecs", dict(queries=random_vectors(5, 16, seed=3), k=7)),
        ("vecs", dict(queries=random_vectors(1, 16, seed=4)[0], k=3, params={"nprobe": 8, "rescore": 0})),
        ("vecs", dict(queries=random_vectors(3, 16, seed=5), k=5, filter={"year": {"gte": 2005}, "lang": {"in": ["en", "de"]}})),
        ("vecs", dict(queries=random_vectors(2, 16, seed=6), k=4, filter={"lang": "none"})),
        ("vecs", dict(queries={"dense": random_vectors(2, 16, seed=7)}, k=2, fields=["dense"])),
        ("tiny", dict(queries=["which animal barks?", "baking bread", "the sun"], k=3)),
        ("tiny", dict(queries="python code", k=6)),
        ("lex", dict(queries=["document 7", "the of", "documents 12 and 13"], k=5, fields="bm25")),
        ("lex", dict(queries=sparse_vectors(3, seed=5), k=4, fields="sp")),
        ("lex", dict(queries=[(np.array([1, 5]), np.array([0.5, 2.0]))], k=4, fields="sp", filter={"lang": "fr"})),
        ("lex", dict(queries={"sp": sparse_vectors(2, seed=6), "dense": random_vectors(2, 16, seed=7)}, k=6,
                     fields=["sp", "dense"], fusion="weighted", weights={"sp": 2.0, "dense": 0.5}, normalization="zscore")),
        ("lex", dict(queries={"sp": sparse_vectors(2, seed=8), "dense": random_vectors(2, 16, seed=9)}, k=6, fields=["dense", "sp"])),
        ("lex", dict(queries=random_vectors(3, 16, seed=10), k=5, fields="bits")),
        ("lex", dict(queries=random_vectors(2, 16, seed=11), k=5, fields="bits", params={"rescore": 0, "asymmetric": 1})),
        ("lex", dict(queries={"bits": random_vectors(2, 16, seed=12), "sp": sparse_vectors(2, seed=13)}, k=6, fields=["bits", "sp"],
                     filter={"lang": "en"})),
        # packed codes, token matrices (as a list and as tokens + offsets), SPANN, and per-field
        # sources in one request: texts for one field, vectors for another
        ("lex", dict(queries=np.random.default_rng(1).integers(0, 256, (3, 4), np.uint8), k=5,
                     fields="bits")),
        ("lex", dict(queries={"bm25": ["document 7", "document 12"], "dense": random_vectors(2, 16, seed=14)},
                     k=6, fields=["bm25", "dense"])),
        ("lex", dict(queries={"bm25": "document 3", "bits": np.full((1, 4), 7, np.uint8)}, k=4,
                     fields=["bits", "bm25"])),
        ("kinds", dict(queries=split(*clouds(3, 16, seed=7, max_tokens=5)), k=5, fields="tok")),
        ("kinds", dict(queries=clouds(2, 16, seed=8, max_tokens=4), k=5, fields="tok",
                       params={"exhaustive": 1})),
        ("kinds", dict(queries=split(*clouds(2, 16, seed=17, max_tokens=4)), k=5, fields="tok",
                       params={"xtr": 1, "token_k": 20, "rescore": 10})),
        ("kinds", dict(queries=random_vectors(4, 16, seed=9), k=5, fields="spann")),
        ("kinds", dict(queries={"tok": split(*clouds(2, 16, seed=10)), "bm25": ["document 4", "document 40"],
                                "spann": random_vectors(2, 16, seed=11)},
                       k=6, fields=["tok", "spann", "bm25"])),
        # pipelines: prefetch, fuse, re-rank; each stage's scores come back
        ("kinds", dict(queries={"tok": split(*clouds(2, 16, seed=12)), "bm25": ["document 4", "document 9"],
                                "spann": random_vectors(2, 16, seed=13)}, k=5,
                       pipeline=Pipeline([Prefetch("bm25", k=30), Prefetch("spann", k=30)],
                                         rerank=[Rerank("tok")]))),
        ("lex", dict(queries={"bm25": ["document 7", "document 12"], "dense": random_vectors(2, 16, seed=15)},
                     k=4, filter={"year": {"gte": 1995}},
                     pipeline={"prefetch": [{"field": "bm25", "k": 20, "filter": {"lang": "en"}},
                                            {"field": "dense", "k": 20, "params": {"rescore": 0}}],
                               "fuse": {"method": "weighted", "weights": {"bm25": 2.0}, "complete": True},
                               "rerank": [{"field": "dense", "k": 8}]})),
    ],
)
def test_congruence_in_process_and_remote(served, name, request_):
    root, _ = served
    local = retriever.connect(root / name).search(**request_)
    same_hits(local, remote(served, name).search(**request_))


@pytest.mark.parametrize("name", ["vecs", "tiny", "lex", "kinds"])
def test_schema_over_the_wire_is_the_collections(served, name):
    root, _ = served
    assert remote(served, name).schema() == retriever.connect(root / name).schema()


def test_schema_names_what_each_field_takes(served):
    lex = {f["name"]: f for f in remote(served, "lex").schema()["fields"]}
    assert lex["bm25"]["query_inputs"] == ["texts"] and lex["bm25"]["dim"] == 0
    assert lex["dense"]["query_inputs"] == ["vectors"] and lex["dense"]["dim"] == 16  # no model: no texts
    assert lex["bits"]["query_inputs"] == ["vectors", "codes"] and lex["bits"]["code_bytes"] == 4
    assert lex["bits"]["source"] == "dense"
    assert lex["bits"]["params"]["asymmetric"] == {"low": 0, "high": 1, "depth": False}
    assert lex["dense"]["params"]["rescore"] == {"low": 0, "high": None, "depth": True}
    [tiny] = remote(served, "tiny").schema()["fields"]
    assert tiny["query_inputs"] == ["texts", "vectors"] and tiny["model"] and tiny["dim"] == 384
    kinds = {f["name"]: f for f in remote(served, "kinds").schema()["fields"]}
    assert kinds["tok"]["query_inputs"] == ["tokens"] and kinds["tok"]["dim"] == 16


def test_token_matrices_upsert_and_bad_shapes_over_the_wire(served):
    root, _ = served
    far = remote(served, "kinds")
    new = split(*clouds(2, 16, seed=30))
    docs = [{"id": "mv1", "text": "one"}, {"id": "mv2", "text": "two"}]
    far.add(docs, vectors={"tok": new, "spann": random_vectors(2, 16, seed=31)})
    assert far.search([new[1]], k=1, fields="tok", params={"exhaustive": 1})[0].ids == ["mv2"]
    local = retriever.connect(root / "kinds")
    same_hits(local.search(new, k=3, fields="tok"), far.search(new, k=3, fields="tok"))
    with pytest.raises(retriever.InvalidRequest, match="different dimensions"):  # refused before sending
        far.add([{"id": "mv3", "text": "x"}], vectors={"tok": [np.ones((2, 16)), np.ones((2, 15))]})
    s, metadata, channel = stub(served)
    tokens = pb.Matrix(rows=3, dim=16, float32_le=b"\0" * (3 * 16 * 4))
    for offsets, words in (([0, 2], "offsets must rise from 0 to the number of token vectors"),
                           ([0, 2, 1, 3], "offsets must rise"), ([], "offsets must rise")):
        given = pb.TokenMatrices(offsets=offsets, tokens=tokens)
        bad = pb.SearchRequest(collection="kinds", fields=["tok"], tokens=given)
        with pytest.raises(grpc.RpcError) as info:
            s.Search(bad, metadata=metadata, timeout=5)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and words in info.value.details()
    short = pb.CodeMatrix(rows=2, width=4, codes=b"\0" * 7)
    codes = pb.SearchRequest(collection="lex", fields=["bits"], codes=short)
    with pytest.raises(grpc.RpcError) as info:
        s.Search(codes, metadata=metadata, timeout=5)
    assert "need 8 bytes, got 7" in info.value.details()
    five = pb.CodeMatrix(rows=1, width=5, codes=bytes(5))
    wide = pb.SearchRequest(collection="lex", fields=["bits"], codes=five)
    with pytest.raises(grpc.RpcError) as info:
        s.Search(wide, metadata=metadata, timeout=5)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "uint8 [batch, 4]" in info.value.details()
    vector = pb.Matrix(rows=1, dim=16, float32_le=bytes(64))
    twice = pb.SearchRequest(collection="lex", fields=["dense"], field_vectors={"dense": vector},
                             field_queries={"dense": pb.FieldQueries(texts=pb.Texts(texts=["a"]))})
    with pytest.raises(grpc.RpcError) as info:
        s.Search(twice, metadata=metadata, timeout=5)
    assert "given queries twice" in info.value.details()
    empty = pb.SearchRequest(collection="lex", fields=["dense"], field_queries={"dense": pb.FieldQueries()})
    with pytest.raises(grpc.RpcError) as info:
        s.Search(empty, metadata=metadata, timeout=5)
    assert "no queries given" in info.value.details()
    channel.close()


def test_per_field_query_counts_must_agree(served):
    with pytest.raises(retriever.InvalidRequest, match="different numbers of queries"):
        queries = {"bm25": ["a b", "c"], "dense": random_vectors(3, 16)}
        remote(served, "lex").search(queries, fields=["bm25", "dense"])


def test_sparse_upsert_and_bad_sparse_input_over_the_wire(served):
    root, _ = served
    far = remote(served, "lex")
    far.add([{"id": "new1", "text": "zebra zebra"}], vectors={"sp": [{39: 3.0}], "dense": random_vectors(1, 16, seed=20)})
    assert far.search([{39: 1.0}], k=1, fields="sp")[0].ids == ["new1"]
    assert far.search("zebra", k=1, fields="bm25")[0].ids == ["new1"]
    for bad, words in (([([2, 1], [1.0, 1.0])], "strictly increasing"), ([([1], [float("nan")])], "NaN"), ([([-3], [1.0])], "negative")):
        with pytest.raises(retriever.errors.InvalidRequest, match=words):
            far.search(bad, fields="sp")
    with pytest.raises(retriever.errors.InvalidRequest, match="fusion"):
        far.search("zebra", fields=["bm25", "sp"], fusion="max")
    same_hits(retriever.connect(root / "lex").search("zebra", k=3, fields="bm25"), far.search("zebra", k=3, fields="bm25"))


def test_upsert_stream_and_delete_match_in_process(served, tmp_path):
    root, _ = served
    far = remote(served, "vecs")
    before = far.version
    docs, vectors = make_docs(30, start=1000), random_vectors(30, 16, seed=12)
    acks = list(far.upsert_stream(docs, {"dense": vectors}, batch_size=8))
    assert [a.batch for a in acks] == [0, 1, 2, 3] and sum(a.upserted for a in acks) == 30
    versions = [a.version for a in acks]  # small batches are logged: a version comes with a flush
    assert versions == sorted(versions) and versions[0] >= before and far.version == versions[-1]
    assert far.delete(["d1000", "d1001", "missing"]) == 2
    local = retriever.connect(root / "vecs")  # what is on disk: every acked batch and the delete
    assert len(local) == len(far) == 428
    same_hits(local.search(vectors, k=5), far.search(vectors, k=5))
    [h] = far.search(vectors[5], k=1)
    assert h.ids == ["d1005"]


@pytest.mark.parametrize("code, status", [(errno.ENOSPC, "RESOURCE_EXHAUSTED"), (errno.EIO, "ABORTED")])
def test_a_failed_disk_write_is_a_clear_status_and_the_next_write_succeeds(served, code, status):
    root, server = served
    while server.registry.merges_pending():  # faults are process-wide: let the background merger settle first
        time.sleep(0.02)
    far = remote(served, "lex")
    before, docs = far.version, [{"id": "late", "text": "a late document about walruses"}]
    vectors = {"sp": sparse_vectors(1, seed=3), "dense": random_vectors(1, 16, seed=3)}
    with disk.inject(disk.Faults(fail_at=3, code=code)):
        got, message = code_of(lambda: far.add(docs, vectors))
    assert got == status and "retry" in message
    assert far.version == before and retriever.connect(root / "lex").version == before
    assert far.add(docs, vectors) == 1
    assert far.search("walruses", fields="bm25")[0].ids == ["late"]
    assert far.delete(["late"]) == 1


def code_of(call):
    with pytest.raises(retriever.RetrieverError) as info:
        call()
    return info.value.grpc_code, str(info.value)


@pytest.mark.parametrize(
    "call, code, words",
    [
        (lambda r: r.search(np.ones((1, 9))), "INVALID_ARGUMENT", "dimension 16"),
        (lambda r: r.search(np.full((1, 16), np.nan)), "INVALID_ARGUMENT", "NaN"),
        (lambda r: r.search(np.ones((1, 16)), k=5000), "INVALID_ARGUMENT", "max_k"),
        (lambda r: r.search(np.ones((1, 16)), filter={"colour": 1}), "INVALID_ARGUMENT", "unknown document column"),
        (lambda r: r.search(np.ones((1, 16)), params={"nprobe": 0}), "INVALID_ARGUMENT", "nprobe"),
        (lambda r: r.search(np.ones((1, 16)), fields=["sparse"]), "NOT_FOUND", "unknown field"),
        (lambda r: r.search([]), "INVALID_ARGUMENT", "no queries"),
        (lambda r: r.add([{"id": "x"}, {"id": "x"}], {"dense": np.ones((2, 16))}), "INVALID_ARGUMENT", "appears twice"),
        (lambda r: r.add([{"id": "x"}], {"dense": np.ones((1, 3))}), "INVALID_ARGUMENT", "dimension 16"),
        (lambda r: r.search(np.ones((3000, 16))), "INVALID_ARGUMENT", "max_batch"),
        (lambda r: r.search(np.ones((1, 300_000))), "RESOURCE_EXHAUSTED", ""),  # 1.2 MB > the server's 1 MiB limit
        (lambda r: r.add([{"id": "x", "n": 10**30}], {"dense": np.ones((1, 16))}),
         "INVALID_ARGUMENT", "64-bit"),
        (lambda r: r.search(np.ones((1, 16)), filter={"year": {"in": [10**30]}}),
         "INVALID_ARGUMENT", "64-bit"),
        (lambda r: r.search(np.ones((1, 16)), filter={"lang": {"gte": 5}}),
         "INVALID_ARGUMENT", "compares numbers"),
    ],
)
def test_bad_input_over_the_wire(served, call, code, words):
    got, message = code_of(lambda: call(remote(served)))
    assert got == code and words in message


@pytest.mark.parametrize("field", ["filter_json", "documents_json"])
def test_json_nested_too_deeply_is_invalid_argument(served, field):
    s, metadata, channel = stub(served)
    deep = "[" * 100_000 + "]" * 100_000
    with pytest.raises(grpc.RpcError) as info:
        if field == "filter_json":
            request = pb.SearchRequest(collection="vecs", texts=["x"], filter_json=deep)
            s.Search(request, metadata=metadata, timeout=5)
        else:
            batches = iter([pb.UpsertBatch(collection="vecs", documents_json=[deep])])
            list(s.Upsert(batches, metadata=metadata, timeout=5))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "nests too deeply" in info.value.details()
    channel.close()


def test_ragged_query_vectors_are_refused_before_sending(served):
    with pytest.raises(retriever.InvalidRequest, match="different dimensions"):
        remote(served).search([np.ones(16), np.ones(15)])


def test_matrix_with_wrong_byte_count(served):
    s, metadata, channel = stub(served)
    bad = pb.SearchRequest(collection="vecs", vectors=pb.Matrix(rows=2, dim=16, float32_le=b"\0" * 100))
    with pytest.raises(grpc.RpcError) as info:
        s.Search(bad, metadata=metadata, timeout=5)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "needs 128 bytes" in info.value.details()
    both = pb.SearchRequest(collection="vecs", texts=["a"], vectors=pb.Matrix(rows=1, dim=16, float32_le=b"\0" * 64))
    with pytest.raises(grpc.RpcError) as info:
        s.Search(both, metadata=metadata, timeout=5)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "exactly one" in info.value.details()
    channel.close()


def test_empty_text_query_over_the_wire(served):
    got, message = code_of(lambda: remote(served, "tiny").search(["  "]))
    assert got == "INVALID_ARGUMENT" and "empty" in message


@pytest.mark.parametrize("name", ["nope", "../vecs", "a/b", "vecs\x00", "ve\x07cs", "", "x" * 100])
def test_collection_names(served, name):
    s, metadata, channel = stub(served)
    with pytest.raises(grpc.RpcError) as info:
        s.GetCollection(pb.GetCollectionRequest(collection=name), metadata=metadata, timeout=5)
    expected = grpc.StatusCode.NOT_FOUND if name == "nope" else grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.code() == expected
    assert "broken" not in info.value.details(), "other collections are never listed"
    channel.close()


def test_damaged_collection_is_data_loss_and_others_keep_serving(served):
    got, message = code_of(lambda: remote(served, "broken").search(np.ones((1, 4))))
    assert got == "DATA_LOSS" and "damaged" in message
    assert len(remote(served).search(np.ones((1, 16)), k=3)[0]) == 3
    s, metadata, channel = stub(served)
    health = health_pb2_grpc.HealthStub(channel)
    def status(name):
        return health.Check(health_pb2.HealthCheckRequest(service=name), metadata=metadata, timeout=5).status

    assert status("") == status("vecs") == health_pb2.HealthCheckResponse.SERVING
    assert status("broken") == health_pb2.HealthCheckResponse.NOT_SERVING
    channel.close()


@pytest.mark.parametrize(
    "raw",
    [b"\xff\x00\x13garbage\x99", pb.SearchRequest(collection="vecs").SerializeToString()[:-1] + b"\xff",
     b"\x0a\x02\xc3\x28"],  # the last: field 1 (collection) holding invalid UTF-8
)
def test_malformed_bytes_are_invalid_argument_and_do_not_hurt_the_server(served, raw):
    channel = grpc.insecure_channel(f"127.0.0.1:{served[1].port}")
    call = channel.unary_unary("/retriever.v1.Retriever/Search")  # bytes in, bytes out
    with pytest.raises(grpc.RpcError) as info:
        call(raw, metadata=(("authorization", f"Bearer {TOKEN}"),), timeout=5)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid SearchRequest" in info.value.details()
    channel.close()
    assert len(remote(served).search(np.ones((1, 16)), k=2)[0]) == 2


def test_an_unknown_method_is_unimplemented_with_or_without_a_token(served):
    channel = grpc.insecure_channel(f"127.0.0.1:{served[1].port}")
    call = channel.unary_unary("/retriever.v1.Retriever/Nope")
    for metadata in ((), (("authorization", f"Bearer {TOKEN}"),)):
        with pytest.raises(grpc.RpcError) as info:
            call(b"", metadata=metadata, timeout=5)
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
    channel.close()


def test_bearer_token(served):
    for token, code in ((None, grpc.StatusCode.UNAUTHENTICATED), ("wrong", grpc.StatusCode.PERMISSION_DENIED)):
        s, metadata, channel = stub(served, token)
        with pytest.raises(grpc.RpcError) as info:
            s.ListCollections(pb.ListCollectionsRequest(), metadata=metadata, timeout=5)
        assert info.value.code() == code
        health = health_pb2_grpc.HealthStub(channel)
        # the server's health needs no token (probes); a collection's does (it tells which names exist)
        server_health = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        assert server_health.status == health_pb2.HealthCheckResponse.SERVING
        for name in ("vecs", "nope"):
            with pytest.raises(grpc.RpcError) as info:
                health.Check(health_pb2.HealthCheckRequest(service=name), metadata=metadata, timeout=5)
            assert info.value.code() == code
        channel.close()
    assert remote(served).list_collections() == ["broken", "kinds", "lex", "tiny", "vecs"]


def test_deadline_is_enforced(served):
    got, _ = code_of(lambda: remote(served, "tiny", timeout=1e-6).search("anything"))
    assert got == "DEADLINE_EXCEEDED"


ALLOWED = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.DATA_LOSS,
           grpc.StatusCode.RESOURCE_EXHAUSTED}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    collection=st.sampled_from(["vecs", "broken", "nope", "../x", ""]),
    rows=st.integers(0, 5),
    dim=st.integers(0, 20),
    data=st.binary(max_size=400),
    texts=st.lists(st.text(max_size=30), max_size=3),
    k=st.integers(min_value=0, max_value=3000),
    fields=st.lists(st.sampled_from(["dense", "other", ""]), max_size=2),
    filter_json=st.sampled_from(["", "{}", "[]", '{"year": {"gte": 2000}}', '{"lang": {"in": "en"}}', "{bad", '{"year": {"near": 1}}']),
    params=st.dictionaries(st.sampled_from(["nprobe", "efSearch", "rescore", "bogus"]), st.integers(-5, 10_000), max_size=3),
)
def test_any_search_request_gets_a_status_not_a_crash(served, collection, rows, dim, data, texts, k, fields, filter_json, params):
    s, metadata, channel = stub(served)
    request = pb.SearchRequest(collection=collection, vectors=pb.Matrix(rows=rows, dim=dim, float32_le=data), texts=texts,
                               k=k, fields=fields, filter_json=filter_json, params=params)
    try:
        s.Search(request, metadata=metadata, timeout=10)
        code = grpc.StatusCode.OK
    except grpc.RpcError as e:
        code = e.code()
    channel.close()
    assert code in ALLOWED, code


def test_server_still_healthy_after_the_fuzzing(served):
    test_damaged_collection_is_data_loss_and_others_keep_serving(served)


def test_generated_code_is_fresh():
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, str(root / "scripts" / "gen_proto.py"), "--check"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_generate_in_process_and_over_grpc(served):
    from helpers import tiny_llama, word_tokenizer
    from retriever.rag.generate import RagGenerator
    from retriever.rag.service import set_generator
    from retriever.rag.store import ChunkCacheStore, Tier

    root, _ = served
    set_generator(RagGenerator(tiny_llama(0), word_tokenizer(), ChunkCacheStore([Tier("memory", 1 << 26)])))
    try:
        options = dict(k=2, mode="blend", recompute_ratio=0.5, max_new_tokens=6)
        local = list(retriever.connect(root / "tiny").generate("which animal barks?", **options))
        far = list(remote(served, "tiny").generate("which animal barks?", **options))
        assert [p.text for p in local] == [p.text for p in far]
        assert far[-1].stats["chunk_ids"] == local[-1].stats["chunk_ids"] and len(far[-1].stats["chunk_ids"]) == 2
        assert far[-1].stats["mode"] == "blend" and far[-1].stats["cache_hits"] == 3  # the local call cached prefix and both chunks (the anchor is read only on a miss)
        with pytest.raises(retriever.errors.InvalidRequest, match="mode must be one of"):
            list(remote(served, "tiny").generate("barks", mode="fast"))
        with pytest.raises(retriever.errors.InvalidRequest, match="k must be"):
            list(remote(served, "tiny").generate("barks", k=100_000))
        with pytest.raises(retriever.errors.NotFound):
            list(remote(served, "nope").generate("barks"))
    finally:
        set_generator(None)


def test_error_messages_read_in_any_language(served):
    far = remote(served, "vecs")
    with pytest.raises(retriever.InvalidRequest) as info:
        far.search(np.ones((1, 7), np.float32))
    assert "must have dimension 16, got 1 vector of dimension 7" in str(info.value)
    with pytest.raises(retriever.InvalidRequest) as info:
        far.search(np.ones((2, 2, 16), np.float32), fields="dense")
    assert "3-dimensional array (2 x 2 x 16)" in str(info.value) and "shape" not in str(info.value)
    with pytest.raises(retriever.InvalidRequest, match=r"over gRPC UpsertBatch.vectors\['dense'\]"):
        far.add(make_docs(1, start=900))


def test_values_a_message_cannot_carry_are_refused_client_side(served):
    far = remote(served, "vecs")
    for ask in (dict(params={"rescore": 2**70}), dict(params={"nprobe": "many"}), dict(k=2**40),
                dict(fields=["dense"], weights={"dense": "heavy"})):
        with pytest.raises(retriever.InvalidRequest, match="cannot carry"):
            far.search(random_vectors(1, 16), **ask)
