"""Server options: TLS, Prometheus metrics, reflection, graceful shutdown, the concurrency cap, retries."""

import shutil
import subprocess
import threading
import time
import urllib.request

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

import retriever
from helpers import slow_registry, make_docs, random_vectors, vector_config
from retriever.registry import Registry
from retriever.server import Server, ServerOptions


@pytest.fixture(scope="module")
def collection_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("opts") / "vecs"
    c = retriever.Collection.create(path, vector_config())
    c.add(make_docs(2000), vectors={"dense": random_vectors(2000, 16, seed=1)})
    return path


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to make a certificate")
def test_tls(collection_dir, tmp_path):
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert, "-days", "1",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"], check=True, capture_output=True)
    server = Server(Registry.open([collection_dir]), ServerOptions(port=0, tls_cert=cert.read_bytes(), tls_key=key.read_bytes())).start()
    try:
        far = retriever.connect(f"grpcs://localhost:{server.port}/vecs", root_certificates=cert.read_bytes())
        assert len(far) == 2000
        plain = retriever.connect(f"grpc://localhost:{server.port}/vecs", timeout=2)
        with pytest.raises(retriever.RetrieverError):
            len(plain)
    finally:
        server.stop()


def test_metrics_and_reflection(collection_dir):
    metrics_port = free_port()
    server = Server(Registry.open([collection_dir]), ServerOptions(port=0, metrics_port=metrics_port, reflection=True)).start()
    try:
        far = retriever.connect(f"grpc://127.0.0.1:{server.port}/vecs")
        far.search(np.ones((2, 16)), k=3)
        with pytest.raises(retriever.InvalidRequest):
            far.search(np.ones((1, 3)))
        text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
        assert 'retriever_rpc_total{code="OK",method="Search"} 1.0' in text
        assert 'retriever_rpc_total{code="INVALID_ARGUMENT",method="Search"} 1.0' in text
        from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

        channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        [answer] = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)
        names = {s.name for s in answer.list_services_response.service}
        assert "retriever.v1.Retriever" in names and "grpc.health.v1.Health" in names
        channel.close()
    finally:
        server.stop()



def test_graceful_shutdown_reports_not_serving_and_finishes_in_flight_calls(collection_dir):
    registry = slow_registry(delay=0.5)
    registry.add_path(collection_dir)
    server = Server(registry, ServerOptions(port=0, grace_seconds=5)).start()
    far = retriever.connect(f"grpc://127.0.0.1:{server.port}/vecs", timeout=30)
    results, errors = [], []

    def call():
        try:
            results.append(far.search(np.ones((3, 16)), k=5))
        except retriever.RetrieverError as e:
            errors.append(e)

    calls = [threading.Thread(target=call) for _ in range(4)]
    for t in calls:
        t.start()
    time.sleep(0.2)
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    health = health_pb2_grpc.HealthStub(channel)
    assert health.Check(health_pb2.HealthCheckRequest(service="vecs"), timeout=2).status == health_pb2.HealthCheckResponse.SERVING
    started = time.perf_counter()
    stopper = threading.Thread(target=server.stop)
    stopper.start()
    time.sleep(0.05)
    try:  # health turns NOT_SERVING first; once the listener closes, a refusal is right too
        status = health.Check(health_pb2.HealthCheckRequest(service="vecs"), timeout=2).status
        assert status == health_pb2.HealthCheckResponse.NOT_SERVING
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.UNAVAILABLE
    for t in calls:
        t.join()
    stopper.join()
    assert not errors and len(results) == 4 and all(len(h[0]) == 5 for h in results)
    assert time.perf_counter() - started >= 0.2, "stop() waited for the in-flight calls"
    channel.close()


def test_concurrency_cap_answers_resource_exhausted(collection_dir):
    server = Server(Registry.open([collection_dir]), ServerOptions(port=0, workers=2, max_concurrent_rpcs=1)).start()
    far = retriever.connect(f"grpc://127.0.0.1:{server.port}/vecs", timeout=30)
    queries = random_vectors(1000, 16, seed=3)
    codes = []

    def call():
        try:
            far.search(queries, k=20)
            codes.append("OK")
        except retriever.RetrieverError as e:
            codes.append(e.grpc_code)

    threads = [threading.Thread(target=call) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    server.stop()
    assert "OK" in codes and "RESOURCE_EXHAUSTED" in codes and set(codes) <= {"OK", "RESOURCE_EXHAUSTED"}


def test_unreachable_server_is_unavailable_after_retries():
    far = retriever.connect(f"grpc://127.0.0.1:{free_port()}/vecs", timeout=3)
    start = time.perf_counter()
    with pytest.raises(retriever.errors.Unavailable):
        far.search(np.ones((1, 16)))
    assert time.perf_counter() - start < 3.5


def test_metrics_record_codes_set_by_abort(collection_dir):
    """A search that outlives its deadline counts as DEADLINE_EXCEEDED (not CANCELLED)."""
    registry = slow_registry(delay=0.5)
    registry.add_path(collection_dir)
    metrics_port = free_port()
    server = Server(registry, ServerOptions(port=0, metrics_port=metrics_port)).start()
    try:
        far = retriever.connect(f"grpc://127.0.0.1:{server.port}/vecs", timeout=0.3)
        with pytest.raises(retriever.RetrieverError):
            far.search(np.ones((1, 16)))
        time.sleep(0.5)
        text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
        assert 'retriever_rpc_total{code="DEADLINE_EXCEEDED",method="Search"} 1.0' in text
    finally:
        server.stop()
