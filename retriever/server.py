"""gRPC server on grpc.aio: a thin servicer over the registry, plus health, auth, limits, metrics
and shutdown.

Calls are coroutines on one event-loop thread; their blocking work (searches, writes, generation)
runs on a pool of `workers` threads. A stream that waits on its client holds no thread, streams
have their own cap and an idle timeout, and health checks pass every cap, so idle or greedy
clients cannot starve searches or fail a liveness probe. Requests arrive as bytes and are parsed
here, so a malformed one is INVALID_ARGUMENT like any other client mistake."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import signal
import tempfile
import threading
import time
from concurrent import futures
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

from . import conversions, snapshots
from .conversions import pb
from .errors import InvalidConfig, Overloaded, RetrieverError, grpc_code_name
from .registry import Registry

HEALTH_SERVICE = "grpc.health.v1.Health"
SERVICE = pb.DESCRIPTOR.services_by_name["Retriever"]
SCOPES = ("read", "write", "admin")  # what a token may do; each scope includes those before it
# the scope each method needs; the others read
METHOD_SCOPES = {
    "Upsert": "write", "Delete": "write",
    "CreateCollection": "admin", "DropCollection": "admin", "Snapshot": "admin", "Restore": "admin",
    "SavePipeline": "admin",
}
T = TypeVar("T")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServerOptions:
    host: str = "127.0.0.1"
    port: int = 50051
    workers: int = 8                      # threads that run searches, writes and generation
    max_concurrent_rpcs: int = 64         # unary calls in flight; more are refused RESOURCE_EXHAUSTED
    max_streams: int = 16                 # Upsert and Generate streams open at once; more are refused
    stream_idle_seconds: float = 30.0     # an Upsert stream that sends nothing this long is closed
    max_message_bytes: int = 16 * 1024 * 1024
    token: str | None = None              # admin bearer token: every call (any token turns auth on)
    write_token: str | None = None        # a token that may read and write documents, not create or drop
    read_token: str | None = None         # a token that may only read
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


class _Status(Exception):
    """A status the server itself decides (not a library error): the deadline, an idle stream."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class _Gate:
    """Calls of one kind in flight (all on the event loop's thread); one past `limit` is refused
    at once rather than queued, so a client learns to back off before its deadline passes."""

    def __init__(self, limit: int, what: str) -> None:
        self.limit, self.what, self.open = limit, what, 0

    @contextlib.contextmanager
    def admit(self):
        if self.open >= self.limit:
            raise Overloaded(f"the server is answering its limit of {self.limit} {self.what}; retry shortly")
        self.open += 1
        try:
            yield
        finally:
            self.open -= 1


class RetrieverServicer:
    """Parses, delegates to the registry's collections on a worker thread, converts back."""

    def __init__(self, registry: Registry, metrics: _Metrics, options: ServerOptions) -> None:
        self.registry = registry
        self.metrics = metrics
        self.options = options
        self.pool = futures.ThreadPoolExecutor(options.workers, thread_name_prefix="retriever-call")
        self.unary = _Gate(options.max_concurrent_rpcs, "calls at once")
        self.streams = _Gate(options.max_streams, "open streams")

    # ---- the service's methods (bytes in, messages out) --------------------------------------

    async def Search(self, raw: bytes, context) -> pb.SearchResponse:
        def work():
            request = conversions.parse(pb.SearchRequest, raw)
            collection = self.registry.reader(request.collection)
            hits = collection.search(**conversions.search_arguments(request))
            return conversions.search_response(hits, with_documents=not request.omit_documents)

        return await self._unary("Search", context, work)

    async def Upsert(self, requests: AsyncIterator[bytes], context) -> AsyncIterator[pb.UpsertAck]:
        def work(number: int, raw: bytes):
            batch = conversions.parse(pb.UpsertBatch, raw)
            documents, vectors = conversions.upsert_arguments(batch)
            count, snapshot = self.registry.write(
                batch.collection, lambda c: c.add(documents, vectors=vectors or None)
            )
            # sent after the commit: durable
            return pb.UpsertAck(batch=number, upserted=count, version=snapshot.version)

        async with self._call("Upsert", context, self.streams):
            number = 0
            while (raw := await self._next(requests)) is not None:
                yield await self._run(context, lambda: work(number, raw))
                number += 1

    async def Delete(self, raw: bytes, context) -> pb.DeleteResponse:
        def work():
            request = conversions.parse(pb.DeleteRequest, raw)
            count, snapshot = self.registry.write(request.collection, lambda c: c.delete(list(request.ids)))
            return pb.DeleteResponse(deleted=count, version=snapshot.version)

        return await self._unary("Delete", context, work)

    async def ListCollections(self, raw: bytes, context) -> pb.ListCollectionsResponse:
        def work():
            conversions.parse(pb.ListCollectionsRequest, raw)
            self.registry.rescan()
            return pb.ListCollectionsResponse(names=self.registry.names())

        return await self._unary("ListCollections", context, work)

    async def GetCollection(self, raw: bytes, context) -> pb.CollectionInfo:
        def work():
            collection = self.registry.reader(conversions.parse(pb.GetCollectionRequest, raw).collection)
            return conversions.collection_info(collection)

        return await self._unary("GetCollection", context, work)

    async def GetDocuments(self, raw: bytes, context) -> pb.GetDocumentsResponse:
        def work():
            request = conversions.parse(pb.GetDocumentsRequest, raw)
            found = self.registry.reader(request.collection).get(list(request.ids))
            return pb.GetDocumentsResponse(
                documents_json=conversions.documents_json(d for d in found if d is not None),
                missing=[i for i, d in zip(request.ids, found) if d is None],
            )

        return await self._unary("GetDocuments", context, work)

    async def Count(self, raw: bytes, context) -> pb.CountResponse:
        def work():
            request = conversions.parse(pb.CountRequest, raw)
            collection = self.registry.reader(request.collection)
            return pb.CountResponse(count=collection.count(conversions.filter_from_json(request.filter_json)))

        return await self._unary("Count", context, work)

    async def Scroll(self, raw: bytes, context) -> pb.ScrollResponse:
        def work():
            request = conversions.parse(pb.ScrollRequest, raw)
            collection = self.registry.reader(request.collection)
            page, after = collection.scroll(**conversions.scroll_arguments(request))
            response = pb.ScrollResponse(documents_json=conversions.documents_json(page))
            if after is not None:
                response.next_after = after
            return response

        return await self._unary("Scroll", context, work)

    async def CreateCollection(self, raw: bytes, context) -> pb.CollectionInfo:
        def work():
            request = conversions.parse(pb.CreateCollectionRequest, raw)
            collection = self.registry.create(conversions.config_from_request(request))
            return conversions.collection_info(collection)

        return await self._unary("CreateCollection", context, work)

    async def DropCollection(self, raw: bytes, context) -> pb.DropCollectionResponse:
        def work():
            self.registry.drop(conversions.parse(pb.DropCollectionRequest, raw).collection)
            return pb.DropCollectionResponse()

        return await self._unary("DropCollection", context, work)

    async def SavePipeline(self, raw: bytes, context) -> pb.SavePipelineResponse:
        def work():
            request = conversions.parse(pb.SavePipelineRequest, raw)
            pipeline = conversions.pipeline_from_pb(request.pipeline)
            def save(collection):
                collection.save_pipeline(request.name, pipeline, default=request.make_default)

            _, snapshot = self.registry.write(request.collection, save)
            return pb.SavePipelineResponse(version=snapshot.version)

        return await self._unary("SavePipeline", context, work)

    async def Snapshot(self, raw: bytes, context) -> AsyncIterator[pb.SnapshotChunk]:
        def start() -> snapshots.Archive:
            name = conversions.parse(pb.SnapshotRequest, raw).collection
            self.registry.write(name, lambda c: c.flush())  # every acked write into a version
            return snapshots.Archive(self.registry.path(name))

        async with self._call("Snapshot", context, self.streams):
            archive = await self._run(context, start)
            try:
                pieces, version = archive.chunks(), archive.version
                while (piece := await self._run(context, lambda: next(pieces, None))) is not None:
                    yield pb.SnapshotChunk(data=piece, version=version)
                    version = 0
            finally:
                archive.close()

    async def Restore(self, requests: AsyncIterator[bytes], context) -> pb.CollectionInfo:
        async with self._call("Restore", context, self.streams):
            first = await self._next(requests)
            name = conversions.parse(pb.RestoreChunk, first or b"").collection
            await self._run(context, lambda: self.registry.check_new(name))
            # the archive is spooled to an unnamed file in the data directory (gone when closed)
            spool = await self._run(context, lambda: tempfile.TemporaryFile(dir=self.registry.data_dir))
            with spool:
                raw = first
                while raw is not None:
                    data = conversions.parse(pb.RestoreChunk, raw).data
                    await self._run(context, lambda: spool.write(data))
                    raw = await self._next(requests)

                def finish():
                    spool.seek(0)
                    return conversions.collection_info(self.registry.restore(name, spool))

                return await self._run(context, finish)

    async def Generate(self, raw: bytes, context) -> AsyncIterator[pb.GenerateChunk]:
        def start():
            request = conversions.parse(pb.GenerateRequest, raw)
            collection = self.registry.reader(request.collection)
            return iter(collection.generate(**conversions.generate_arguments(request)))

        async with self._call("Generate", context, self.streams):
            pieces = await self._run(context, start)
            while (piece := await self._run(context, lambda: next(pieces, None))) is not None:
                yield conversions.generate_chunk(piece)

    # ---- how every call runs ------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _call(self, method: str, context, gate: _Gate):
        """One call: admitted through `gate`, its errors mapped to status codes (the only place
        this happens), counted in the metrics."""
        start, code = time.perf_counter(), "OK"
        try:
            with gate.admit():
                yield
            return
        except _Status as e:
            code, message = e.code, str(e)
        except RetrieverError as e:
            code, message = grpc_code_name(e), str(e)
        except (asyncio.CancelledError, GeneratorExit):  # the client went away, or its deadline passed
            remaining = context.time_remaining()
            code = "DEADLINE_EXCEEDED" if remaining is not None and remaining <= 0 else "CANCELLED"
            raise
        except Exception:
            log.exception("%s failed", method)
            code = "INTERNAL"
            message = f"the server failed to answer this {method} call (its log has the details)"
        finally:
            self.metrics.calls.labels(method, code).inc()
            self.metrics.seconds.labels(method).observe(time.perf_counter() - start)
        await context.abort(getattr(grpc.StatusCode, code), message)

    async def _unary(self, method: str, context, work: Callable[[], T]) -> T:
        """A unary call: `work()` on a worker thread, as `_call` and `_run` say."""
        async with self._call(method, context, self.unary):
            return await self._run(context, work)

    async def _run(self, context, work: Callable[[], T]) -> T:
        """`work()` on a worker thread, within the call's deadline."""
        _check_deadline(context)
        result = await asyncio.get_running_loop().run_in_executor(self.pool, work)
        _check_deadline(context)
        return result

    async def _next(self, requests: AsyncIterator[bytes]) -> bytes | None:
        """A stream's next message, or None at its end; a stream idle too long is closed."""
        try:
            return await asyncio.wait_for(anext(requests), self.options.stream_idle_seconds)
        except StopAsyncIteration:
            return None
        except asyncio.TimeoutError:
            raise _Status(
                "DEADLINE_EXCEEDED",
                f"the stream sent nothing for {self.options.stream_idle_seconds:g} s and was closed; "
                "the batches acked before are committed",
            ) from None


def _health_status(healthy: bool | None) -> int:
    statuses = health_pb2.HealthCheckResponse
    return {True: statuses.SERVING, False: statuses.NOT_SERVING, None: statuses.SERVICE_UNKNOWN}[healthy]


def _check_deadline(context) -> None:
    remaining = context.time_remaining()
    if remaining is not None and remaining <= 0:
        raise _Status("DEADLINE_EXCEEDED", "deadline passed before the work finished")


def _service_handler(servicer: RetrieverServicer) -> grpc.GenericRpcHandler:
    """The Retriever service from its descriptor, taking requests as bytes (`conversions.parse`
    turns a malformed one into a clear INVALID_ARGUMENT; gRPC's own parsing answers INTERNAL)."""
    kinds = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }
    handlers = {
        method.name: kinds[method.client_streaming, method.server_streaming](
            getattr(servicer, method.name), response_serializer=lambda message: message.SerializeToString()
        )
        for method in SERVICE.methods
    }
    return grpc.method_handlers_generic_handler(SERVICE.full_name, handlers)


def _scoped_tokens(options: ServerOptions) -> dict[bytes, str]:
    """{token: its scope} of the tokens configured (empty: auth is off)."""
    given = {"admin": options.token, "write": options.write_token, "read": options.read_token}
    tokens = {token.encode(): scope for scope, token in given.items() if token}
    if len(tokens) < sum(1 for token in given.values() if token):
        raise InvalidConfig("the admin, write and read tokens must differ")
    return tokens


def _token_refusal(
    metadata, tokens: dict[bytes, str], needed: str, method: str
) -> tuple[grpc.StatusCode, str] | None:
    """Why a call's `authorization` metadata is refused, or None when it carries a token whose
    scope covers `needed`."""
    header = next((value for key, value in metadata or () if key == "authorization"), "")
    if not header.startswith("Bearer "):
        missing = "missing bearer token (metadata `authorization: Bearer <token>`)"
        return grpc.StatusCode.UNAUTHENTICATED, missing
    presented = header[len("Bearer "):].encode()
    # every token compared (in constant time each), so the time taken tells nothing of which matched
    matches = [scope for token, scope in tokens.items() if hmac.compare_digest(presented, token)]
    if not matches:
        return grpc.StatusCode.PERMISSION_DENIED, "bearer token not accepted"
    if SCOPES.index(matches[0]) < SCOPES.index(needed):
        article = "an" if needed == "admin" else "a"
        because = f"this token may {matches[0]}; {method} needs {article} {needed} token"
        return grpc.StatusCode.PERMISSION_DENIED, because
    return None


class _BearerAuth(grpc.aio.ServerInterceptor):
    """`authorization: Bearer <token>` on every call but health checks (which check it themselves),
    with a scope that covers the method."""

    def __init__(self, tokens: dict[bytes, str]) -> None:
        self._tokens = tokens

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None or details.method.startswith(f"/{HEALTH_SERVICE}/"):
            return handler  # an unknown method is UNIMPLEMENTED, with or without a token
        method = details.method.rsplit("/", 1)[-1]
        needed = METHOD_SCOPES.get(method, "read")
        refusal = _token_refusal(details.invocation_metadata, self._tokens, needed, method)
        return handler if refusal is None else _deny(handler, *refusal)


def _deny(handler: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler:
    async def abort(request, context):
        await context.abort(code, message)

    serializers = {"request_deserializer": handler.request_deserializer, "response_serializer": handler.response_serializer}
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(abort, **serializers)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(abort, **serializers)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(abort, **serializers)
    return grpc.stream_stream_rpc_method_handler(abort, **serializers)


class _Health(health_aio.HealthServicer):
    """The standard health service. The server's own health ("") is open to all, for probes;
    with a token on, a collection's health needs it (its answer tells which names exist)."""

    def __init__(self, tokens: dict[bytes, str]) -> None:
        super().__init__()
        self._tokens = tokens

    async def Check(self, request, context):
        await self._authorize(request, context)
        return await super().Check(request, context)

    async def Watch(self, request, context):
        await self._authorize(request, context)
        return await super().Watch(request, context)

    async def _authorize(self, request, context) -> None:
        if self._tokens and request.service:
            refusal = _token_refusal(context.invocation_metadata(), self._tokens, "read", "Check")
            if refusal is not None:
                await context.abort(*refusal)


class Server:
    """A running server; `stop()` turns health NOT_SERVING, then lets in-flight calls finish.
    The aio server lives on its own event-loop thread, so callers use it synchronously."""

    def __init__(self, registry: Registry, options: ServerOptions) -> None:
        self.registry = registry
        self.options = options
        self.metrics = _Metrics()
        self.servicer = RetrieverServicer(registry, self.metrics, options)
        self.tokens = _scoped_tokens(options)
        self.health = _Health(self.tokens)
        self._stopped = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="retriever-grpc", daemon=True)
        self._thread.start()
        try:
            self.port = self._on_loop(self._bind())
        except BaseException:
            self._close_loop()
            raise

    async def _bind(self) -> int:
        """Make the aio server (on its loop) and bind its port."""
        options = self.options
        limits = [("grpc.max_receive_message_length", options.max_message_bytes),
                  ("grpc.max_send_message_length", options.max_message_bytes),
                  ("grpc.so_reuseport", 0)]  # a second server on a port in use fails, not shares it
        interceptors = [_BearerAuth(self.tokens)] if self.tokens else []
        self.grpc_server = grpc.aio.server(options=limits, interceptors=interceptors)
        self.grpc_server.add_generic_rpc_handlers([_service_handler(self.servicer)])
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc_server)
        if options.reflection:
            from grpc_reflection.v1alpha import reflection

            names = (SERVICE.full_name, HEALTH_SERVICE, reflection.SERVICE_NAME)
            reflection.enable_server_reflection(names, self.grpc_server)
        address = f"{options.host}:{options.port}"
        try:
            if options.tls_cert:
                credentials = grpc.ssl_server_credentials([(options.tls_key, options.tls_cert)])
                return self.grpc_server.add_secure_port(address, credentials)
            return self.grpc_server.add_insecure_port(address)
        except RuntimeError as e:  # grpc's words for a port in use or a host that is not ours
            raise InvalidConfig(f"cannot listen on {address}: {e}") from None

    def _on_loop(self, coroutine) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def start(self) -> "Server":
        if self.options.metrics_port is not None:
            from prometheus_client import start_http_server

            start_http_server(self.options.metrics_port, addr=self.options.host, registry=self.metrics.registry)
        self._on_loop(self._start())
        self.registry.start_merging()
        return self

    async def _start(self) -> None:
        for name in self.registry.names():
            await self.health.set(name, _health_status(self.registry.healthy(name)))
        await self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        self.registry.on_change = self._collection_changed
        await self.grpc_server.start()

    def _collection_changed(self, name: str, healthy: bool | None) -> None:
        """A collection created, dropped or found by a rescan (on a worker thread): its health."""
        asyncio.run_coroutine_threadsafe(self.health.set(name, _health_status(healthy)), self._loop)

    def stop(self) -> None:
        if self._stopped.is_set():
            return
        self._on_loop(self._stop())
        self.registry.stop_merging()
        self._close_loop()
        self._stopped.set()

    async def _stop(self) -> None:
        await self.health.enter_graceful_shutdown()  # load balancers stop sending before calls are cut
        await self.grpc_server.stop(self.options.grace_seconds)

    def _close_loop(self) -> None:
        self.servicer.pool.shutdown(wait=False)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def wait(self) -> None:
        """Serve until SIGTERM or SIGINT, then shut down gracefully."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: threading.Thread(target=self.stop, daemon=True).start())
        self._stopped.wait()
