"""Attacks on the server a hostile or careless client can make: each one must leave searches and
health checks answering, and get a clear status itself."""

import queue
import threading
import time

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

import retriever
from helpers import slow_registry, make_docs, random_vectors, vector_config
from retriever.conversions import pb_grpc
from retriever.registry import Registry
from retriever.server import Server, ServerOptions


@pytest.fixture(scope="module")
def collection_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("attacks") / "vecs"
    c = retriever.Collection.create(path, vector_config("IVF8,Flat"))
    c.add(make_docs(500), vectors={"dense": random_vectors(500, 16, seed=1)})
    return path


def serve(path, **options) -> Server:
    return Server(Registry.open([path]), ServerOptions(port=0, **options)).start()


class IdleStream:
    """An Upsert stream whose client opens it and then sends nothing until told to close."""

    def __init__(self, port: int) -> None:
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        self._messages: queue.Queue = queue.Queue()
        self.acks = pb_grpc.RetrieverStub(self.channel).Upsert(iter(self._messages.get, None), timeout=60)

    def code(self) -> grpc.StatusCode:
        """How the server ended the stream (waits for it)."""
        try:
            list(self.acks)
            return grpc.StatusCode.OK
        except grpc.RpcError as e:
            return e.code()

    def close(self) -> None:
        self._messages.put(None)
        self.acks.cancel()
        self.channel.close()


def health_status(port: int, name: str = "") -> int:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        request = health_pb2.HealthCheckRequest(service=name)
        return health_pb2_grpc.HealthStub(channel).Check(request, timeout=2).status


def test_idle_upsert_streams_do_not_stall_searches_and_are_closed(collection_dir):
    server = serve(collection_dir, workers=2, max_streams=4, stream_idle_seconds=1.5)
    streams = [IdleStream(server.port) for _ in range(4)]
    try:
        time.sleep(0.3)  # the streams are open on the server
        far = retriever.connect(f"grpc://127.0.0.1:{server.port}/vecs", timeout=2)
        for _ in range(5):  # more searches than worker threads, each answered at once
            assert len(far.search(np.ones((1, 16)), k=3)[0]) == 3
        assert health_status(server.port) == health_pb2.HealthCheckResponse.SERVING
        extra = IdleStream(server.port)
        assert extra.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # past the cap on open streams
        extra.close()
        assert {s.code() for s in streams} == {grpc.StatusCode.DEADLINE_EXCEEDED}  # idle too long
        assert far.add(make_docs(3, start=1000), vectors={"dense": random_vectors(3, 16, seed=2)}) == 3
    finally:
        for s in streams:
            s.close()
        server.stop()



def test_health_answers_while_every_call_slot_is_taken(collection_dir):
    registry = slow_registry(delay=1.0)
    registry.add_path(collection_dir)
    server = Server(registry, ServerOptions(port=0, workers=1, max_concurrent_rpcs=1)).start()
    far = retriever.connect(f"grpc://127.0.0.1:{server.port}/vecs", timeout=10)
    busy = threading.Thread(target=lambda: far.search(np.ones((1, 16)), k=3))
    busy.start()
    try:
        time.sleep(0.3)
        start = time.perf_counter()
        serving = health_pb2.HealthCheckResponse.SERVING
        assert health_status(server.port) == health_status(server.port, "vecs") == serving
        assert time.perf_counter() - start < 0.5
        with pytest.raises(retriever.RetrieverError) as info:
            far.search(np.ones((1, 16)), k=3)
        assert info.value.grpc_code == "RESOURCE_EXHAUSTED" and "retry" in str(info.value)
    finally:
        busy.join()
        server.stop()


@pytest.mark.parametrize(
    "queries, k, params, words",
    [
        (8, 10, {"rescore": 10**7}, "max_candidates"),  # once 25 s and 6.8 GB
        (1, 10, {"rescore": 2**40}, "max_candidates"),  # once "Unable to allocate 4.00 TiB"
        (1, 10, {"nprobe": 10**6}, "max_candidates"),
        (2, 10, {"candidates": 60_000}, "max_candidates"),
        (1024, 100, {}, "max_candidates"),  # the largest batch at the largest k (max_k 100 here)
        (1, 10, {"asymmetric": 2}, "from 0 to 1"),
        (1, 10, {"rescore": 2**70}, "out of range"),  # past int64: the client refuses to send it
    ],
)
def test_work_scaling_parameters_are_refused_before_any_work(collection_dir, queries, k, params, words):
    server = serve(collection_dir)
    try:
        far = retriever.connect(f"grpc://127.0.0.1:{server.port}/vecs", timeout=10)
        start = time.perf_counter()
        with pytest.raises((retriever.InvalidRequest, ValueError)) as info:
            far.search(random_vectors(queries, 16, seed=3), k=k, params=params)
        assert words in str(info.value)
        assert time.perf_counter() - start < 1.0
        assert len(far.search(np.ones((1, 16)), k=3)[0]) == 3
    finally:
        server.stop()


def damaged_copy(source, target):
    import shutil

    shutil.copytree(source, target)
    (target / "manifest.json").write_text("{not json")
    return target


@pytest.mark.parametrize("damaged_first", [True, False])
def test_a_bad_directory_never_stops_the_server_or_hides_a_healthy_collection(
    collection_dir, tmp_path, damaged_first
):
    twin = damaged_copy(collection_dir, tmp_path / "other" / "vecs")  # damaged, named like the healthy one
    badly_named = damaged_copy(collection_dir, tmp_path / "not a name!")
    empty = tmp_path / "empty"
    empty.mkdir()
    paths = [twin, collection_dir] if damaged_first else [collection_dir, twin]
    registry = Registry.open([*paths, badly_named, empty, tmp_path / "missing"])
    server = Server(registry, ServerOptions(port=0)).start()
    try:
        assert registry.names() == ["vecs"] and registry.healthy("vecs")
        far = retriever.connect(f"grpc://127.0.0.1:{server.port}/vecs", timeout=5)
        assert len(far.search(np.ones((1, 16)), k=3)[0]) == 3
        assert health_status(server.port, "vecs") == health_pb2.HealthCheckResponse.SERVING
        left_out = {twin, badly_named, empty, tmp_path / "missing"}
        assert set(registry.not_served) == {str(p) for p in left_out}
        assert "damaged" in registry.not_served[str(twin)]
    finally:
        server.stop()


def test_a_port_in_use_is_a_clear_error(collection_dir):
    server = serve(collection_dir)
    try:
        with pytest.raises(retriever.errors.InvalidConfig, match="cannot listen"):
            Server(Registry.open([collection_dir]), ServerOptions(port=server.port))
    finally:
        server.stop()
