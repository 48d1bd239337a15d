"""Collections created, read, dropped and found over the wire (`retriever serve --data-dir`)."""

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

import retriever
from helpers import make_docs, random_vectors, vector_config
from retriever.registry import Registry
from retriever.server import Server, ServerOptions

TOKEN = "t0ken"


@pytest.fixture
def served(tmp_path):
    server = Server(Registry.open_data_dir(tmp_path / "data"), ServerOptions(port=0, token=TOKEN)).start()
    yield tmp_path / "data", server
    server.stop()


def remote(server, name):
    return retriever.connect(f"grpc://127.0.0.1:{server.port}/{name}", token=TOKEN, timeout=10)


def health(server, name) -> int:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        request = health_pb2.HealthCheckRequest(service=name)
        metadata = (("authorization", f"Bearer {TOKEN}"),)
        return health_pb2_grpc.HealthStub(channel).Check(request, metadata=metadata, timeout=5).status


def test_create_fill_read_and_drop_over_the_wire(served):
    root, server = served
    far = remote(server, "vecs")
    info = far.create(vector_config())
    assert info["name"] == "vecs" and (root / "vecs" / "manifest.json").exists()
    assert health(server, "vecs") == health_pb2.HealthCheckResponse.SERVING
    far.add(make_docs(30), vectors={"dense": random_vectors(30, 16, seed=1)})
    far.delete(["d4"])
    local = retriever.Collection.open(root / "vecs")
    assert far.get(["d5", "d4", "nope"]) == local.get(["d5", "d4", "nope"])
    assert far.get(["d5"])[0]["id"] == "d5"
    assert far.count() == local.count() == 29 and far.count({"lang": "en"}) == local.count({"lang": "en"})
    page = dict(limit=4, after="d1")
    assert far.scroll({"lang": "en"}, **page) == local.scroll({"lang": "en"}, **page)
    with pytest.raises(retriever.AlreadyExists):
        far.create(vector_config())
    (root / "vecs" / "mine.txt").write_text("not the engine's")
    far.drop()
    assert [p.name for p in (root / "vecs").iterdir()] == ["mine.txt"]  # only the engine's files went
    with pytest.raises(retriever.NotFound):
        far.count()
    assert health(server, "vecs") == health_pb2.HealthCheckResponse.SERVICE_UNKNOWN


def test_collections_made_or_removed_by_another_process_are_found(served):
    root, server = served
    far = remote(server, "late")
    retriever.Collection.create(root / "late", {**vector_config(), "name": "late"}).add(
        make_docs(5), vectors={"dense": random_vectors(5, 16, seed=2)})
    assert far.list_collections() == ["late"] and far.count() == 5
    (root / "empty").mkdir()  # not a collection yet: left out, and tried again once it is one
    assert far.list_collections() == ["late"]
    retriever.Collection.create(root / "empty", {**vector_config(), "name": "filled"})
    assert far.list_collections() == ["filled", "late"]
    retriever.Collection.drop(root / "empty")
    retriever.Collection.drop(root / "late")
    assert not (root / "late").exists()
    import time

    time.sleep(1.1)  # the next rescan
    assert far.list_collections() == []


def test_lifecycle_refusals(served, tmp_path):
    root, server = served
    with pytest.raises(retriever.InvalidRequest, match="config"):
        remote(server, "x").create("name = [not toml")
    with pytest.raises(retriever.InvalidRequest, match="collection name"):  # INVALID_ARGUMENT
        remote(server, "x").create({"name": "../escape", "fields": [{"name": "d", "dim": 4}]})
    with pytest.raises(retriever.NotFound):
        remote(server, "nope").drop()
    fixed = Server(Registry.open([]), ServerOptions(port=0)).start()
    try:
        with pytest.raises(retriever.InvalidRequest, match="--data-dir"):
            retriever.connect(f"grpc://127.0.0.1:{fixed.port}/x", timeout=5).create(vector_config())
    finally:
        fixed.stop()
    assert not (root / ".." / "escape").exists()


def test_token_scopes(tmp_path):
    options = ServerOptions(port=0, token="admin-t", write_token="write-t", read_token="read-t")
    server = Server(Registry.open_data_dir(tmp_path / "data"), options).start()
    try:
        url = f"grpc://127.0.0.1:{server.port}/vecs"
        as_ = {s: retriever.connect(url, token=f"{s}-t", timeout=10) for s in ("admin", "write", "read")}
        for scope in ("read", "write"):
            with pytest.raises(retriever.errors.PermissionDenied, match=f"this token may {scope}; "
                               "CreateCollection needs an admin token"):
                as_[scope].create(vector_config())
        as_["admin"].create(vector_config())
        with pytest.raises(retriever.errors.PermissionDenied, match="may read; Upsert needs a write token"):
            as_["read"].add(make_docs(2), vectors={"dense": random_vectors(2, 16)})
        with pytest.raises(retriever.errors.PermissionDenied, match="may read; Delete needs a write token"):
            as_["read"].delete(["d0"])
        assert as_["write"].add(make_docs(5), vectors={"dense": random_vectors(5, 16)}) == 5
        assert as_["write"].delete(["d0"]) == 1
        assert as_["read"].count() == 4 and as_["read"].search(random_vectors(1, 16), k=2)[0].ids
        with pytest.raises(retriever.errors.PermissionDenied, match="may write; DropCollection needs an"):
            as_["write"].drop()
        with pytest.raises(retriever.errors.PermissionDenied, match="may write; SavePipeline needs an"):
            as_["write"].save_pipeline("p", {"prefetch": [{"field": "dense"}]})
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:  # a collection's health: any token
            request = health_pb2.HealthCheckRequest(service="vecs")
            check = health_pb2_grpc.HealthStub(channel).Check
            assert check(request, metadata=(("authorization", "Bearer read-t"),), timeout=5).status == 1
            with pytest.raises(grpc.RpcError):
                check(request, metadata=(("authorization", "Bearer nope"),), timeout=5)
        as_["admin"].drop()
    finally:
        server.stop()
    with pytest.raises(retriever.InvalidConfig, match="must differ"):
        Server(Registry.open_data_dir(tmp_path / "x"), ServerOptions(port=0, token="same", read_token="same"))


def test_snapshot_and_restore_over_the_wire(served, tmp_path):
    root, server = served
    far = remote(server, "vecs")
    far.create(vector_config())
    far.add(make_docs(40), vectors={"dense": random_vectors(40, 16, seed=1)})
    far.delete(["d7"])  # acked, maybe only in the write buffer: the snapshot flushes it
    archive = tmp_path / "vecs.tar"
    assert far.snapshot(archive) >= 1
    copy = remote(server, "copy")
    info = copy.restore(archive)
    assert info["name"] == "copy" and health(server, "copy") == health_pb2.HealthCheckResponse.SERVING
    queries = random_vectors(3, 16, seed=2)
    assert [h.ids for h in copy.search(queries, k=5)] == [h.ids for h in far.search(queries, k=5)]
    assert copy.count() == 39 and copy.get(["d7"]) == [None]
    with pytest.raises(retriever.AlreadyExists):
        copy.restore(archive)
    with pytest.raises(retriever.InvalidRequest, match="must start with a letter"):
        remote(server, "bad..name").restore(archive)
    (tmp_path / "cut.tar").write_bytes(archive.read_bytes()[:5000])
    with pytest.raises(retriever.CorruptIndex, match="not a complete archive"):
        remote(server, "cut").restore(tmp_path / "cut.tar")
    assert not (root / "cut").exists() and "cut" not in far.list_collections()
    with pytest.raises(retriever.NotFound):
        remote(server, "nope").snapshot(tmp_path / "nope.tar")


def test_snapshot_needs_an_admin_token(tmp_path):
    options = ServerOptions(port=0, token="admin-t", write_token="write-t")
    server = Server(Registry.open_data_dir(tmp_path / "data"), options).start()
    try:
        url = f"grpc://127.0.0.1:{server.port}/vecs"
        retriever.connect(url, token="admin-t").create(vector_config())
        with pytest.raises(retriever.errors.PermissionDenied, match="Snapshot needs an admin token"):
            retriever.connect(url, token="write-t").snapshot(tmp_path / "a.tar")
    finally:
        server.stop()
