"""gRPC server: a thin servicer over the registry, plus health, auth, limits, metrics, shutdown."""

from __future__ import annotations

import functools
import hmac
import signal
import threading
import time
from concurrent import futures
from dataclasses import dataclass
from typing import Callable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from . import conversions
from .conversions import pb, pb_grpc
from .errors import RetrieverError, grpc_code_name
from .registry import Registry

HEALTH_SERVICE = "grpc.health.v1.Health"


@dataclass(frozen=True)
class ServerOptions:
    host: str = "127.0.0.1"
    port: int = 50051
    workers: int = 8
    max_concurrent_rpcs: int = 64         # more in flight are refused with RESOURCE_EXHAUSTED
    max_message_bytes: int = 16 * 1024 * 1024
    token: str | None = None              # bearer token required on every call but health checks
    tls_cert: bytes | None = None
    tls_key: bytes | None = None
    reflection: bool = False
    metrics_port: int | None = None
    grace_seconds: float = 10.0


class _Metrics:
    """Prometheus counters and latency histograms per method and status code."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.registry = CollectorRegistry()
        self.calls = Counter("retriever_rpc_total", "RPCs answered", ["method", "code"], registry=self.registry)
        self.seconds = Histogram("retriever_rpc_seconds", "RPC latency", ["method"], registry=self.registry)


def _rpc(method: Callable) -> Callable:
    """Map library errors to status codes (the only place this happens) and record metrics."""

    @functools.wraps(method)
    def wrapper(self: "RetrieverServicer", request, context: grpc.ServicerContext):
        start, code = time.perf_counter(), "OK"
        try:
            return method(self, request, context)
        except RetrieverError as e:
            code = grpc_code_name(e)
            context.abort(getattr(grpc.StatusCode, code), str(e))
        except Exception:
            code = context.code().name if context.code() is not None else "INTERNAL"  # set by context.abort
            raise
        finally:
            self.metrics.calls.labels(method.__name__, code).inc()
            self.metrics.seconds.labels(method.__name__).observe(time.perf_counter() - start)

    return wrapper


def _check_deadline(context: grpc.ServicerContext) -> None:
    remaining = context.time_remaining()
    if remaining is not None and remaining <= 0:
        context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline passed before the work finished")


class RetrieverServicer(pb_grpc.RetrieverServicer):
    """Converts, delegates to the registry's collections, converts back."""

    def __init__(self, registry: Registry, metrics: _Metrics) -> None:
        self.registry = registry
        self.metrics = metrics

    @_rpc
    def Search(self, request, context):
        collection = self.registry.reader(request.collection)
        arguments = conversions.search_arguments(request)
        _check_deadline(context)
        hits = collection.search(**arguments)
        _check_deadline(context)
        return conversions.search_response(hits, with_documents=not request.omit_documents)

    def Upsert(self, request_iterator, context):
        for number, batch in enumerate(request_iterator):
            yield self._upsert_batch((number, batch), context)

    @_rpc
    def _upsert_batch(self, numbered_batch, context):
        number, batch = numbered_batch
        documents, vectors = conversions.upsert_arguments(batch)
        _check_deadline(context)
        count, snapshot = self.registry.write(batch.collection, lambda c: c.add(documents, vectors=vectors or None))
        return pb.UpsertAck(batch=number, upserted=count, version=snapshot.version)  # sent after the commit: durable

    @_rpc
    def Delete(self, request, context):
        count, snapshot = self.registry.write(request.collection, lambda c: c.delete(list(request.ids)))
        return pb.DeleteResponse(deleted=count, version=snapshot.version)

    @_rpc
    def ListCollections(self, request, context):
        return pb.ListCollectionsResponse(names=self.registry.names())

    @_rpc
    def GetCollection(self, request, context):
        collection = self.registry.reader(request.collection)
        return conversions.collection_info(collection.info(), collection.config.to_dict())

    def Generate(self, request, context):
        start, code = time.perf_counter(), "OK"
        try:
            collection = self.registry.reader(request.collection)
            pieces = collection.generate(**conversions.generate_arguments(request))
            for piece in pieces:
                if not context.is_active():
                    return  # the client went away: stop decoding
                yield conversions.generate_chunk(piece)
        except RetrieverError as e:
            code = grpc_code_name(e)
            context.abort(getattr(grpc.StatusCode, code), str(e))
        finally:
            self.metrics.calls.labels("Generate", code).inc()
            self.metrics.seconds.labels("Generate").observe(time.perf_counter() - start)


class _BearerAuth(grpc.ServerInterceptor):
    """`authorization: Bearer <token>` on every call but health checks."""

    def __init__(self, token: str) -> None:
        self._token = token.encode()

    def intercept_service(self, continuation, details):
        if details.method.startswith(f"/{HEALTH_SERVICE}/"):
            return continuation(details)
        header = dict(details.invocation_metadata).get("authorization", "")
        if not header.startswith("Bearer "):
            return _deny(continuation(details), grpc.StatusCode.UNAUTHENTICATED, "missing bearer token")
        if not hmac.compare_digest(header[len("Bearer "):].encode(), self._token):
            return _deny(continuation(details), grpc.StatusCode.PERMISSION_DENIED, "bearer token not accepted")
        return continuation(details)


def _deny(handler: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler:
    def abort(request, context):
        context.abort(code, message)

    serializers = {"request_deserializer": handler.request_deserializer, "response_serializer": handler.response_serializer}
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(abort, **serializers)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(abort, **serializers)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(abort, **serializers)
    return grpc.stream_stream_rpc_method_handler(abort, **serializers)


class Server:
    """A running server; `stop()` turns health NOT_SERVING, then lets in-flight calls finish."""

    def __init__(self, registry: Registry, options: ServerOptions) -> None:
        self.registry = registry
        self.options = options
        self.metrics = _Metrics()
        limits = [("grpc.max_receive_message_length", options.max_message_bytes),
                  ("grpc.max_send_message_length", options.max_message_bytes)]
        interceptors = [_BearerAuth(options.token)] if options.token else []
        self.grpc_server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=options.workers), options=limits,
            maximum_concurrent_rpcs=options.max_concurrent_rpcs, interceptors=interceptors,
        )
        pb_grpc.add_RetrieverServicer_to_server(RetrieverServicer(registry, self.metrics), self.grpc_server)
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc_server)
        if options.reflection:
            from grpc_reflection.v1alpha import reflection

            names = (pb.DESCRIPTOR.services_by_name["Retriever"].full_name, HEALTH_SERVICE, reflection.SERVICE_NAME)
            reflection.enable_server_reflection(names, self.grpc_server)
        address = f"{options.host}:{options.port}"
        if options.tls_cert:
            credentials = grpc.ssl_server_credentials([(options.tls_key, options.tls_cert)])
            self.port = self.grpc_server.add_secure_port(address, credentials)
        else:
            self.port = self.grpc_server.add_insecure_port(address)
        self._stopped = threading.Event()

    def start(self) -> "Server":
        SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
        for name in self.registry.names():
            self.health.set(name, SERVING if self.registry.healthy(name) else NOT_SERVING)
        self.health.set("", SERVING)
        if self.options.metrics_port is not None:
            from prometheus_client import start_http_server

            start_http_server(self.options.metrics_port, addr=self.options.host, registry=self.metrics.registry)
        self.grpc_server.start()
        self.registry.start_merging()
        return self

    def stop(self) -> None:
        self.health.enter_graceful_shutdown()  # load balancers stop sending before calls are cut
        self.grpc_server.stop(self.options.grace_seconds).wait()
        self.registry.stop_merging()
        self._stopped.set()

    def wait(self) -> None:
        """Serve until SIGTERM or SIGINT, then shut down gracefully."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: threading.Thread(target=self.stop, daemon=True).start())
        self._stopped.wait()
