"""Remote collections over gRPC, with the same methods, arguments and `Results` as `Collection`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, BinaryIO, Iterable, Iterator, Mapping, Sequence
from urllib.parse import urlparse

import grpc
import numpy as np

from . import conversions, snapshots
from .conversions import pb, pb_grpc
from .errors import InvalidRequest, RetrieverError, error_for_code
from .types import Results

UPSERT_BATCH = 256
# gRPC's own retry machinery: UNAVAILABLE is retried with exponential backoff and jitter.
_SERVICE_CONFIG = json.dumps({"methodConfig": [{
    "name": [{"service": "retriever.v1.Retriever"}],
    "retryPolicy": {"maxAttempts": 5, "initialBackoff": "0.1s", "maxBackoff": "2s",
                    "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]},
}]})


class RemoteCollection:
    """One collection on a `retriever serve` process. Every call carries a deadline (`timeout`)."""

    def __init__(self, address: str, name: str, *, token: str | None = None, timeout: float = 30.0,
                 root_certificates: bytes | None = None, max_message_bytes: int = 16 * 1024 * 1024) -> None:
        options = [("grpc.service_config", _SERVICE_CONFIG), ("grpc.enable_retries", 1),
                   ("grpc.max_receive_message_length", max_message_bytes),
                   ("grpc.max_send_message_length", max_message_bytes)]
        if root_certificates is not None:
            self._channel = grpc.secure_channel(address, grpc.ssl_channel_credentials(root_certificates), options=options)
        else:
            self._channel = grpc.insecure_channel(address, options=options)
        self._stub = pb_grpc.RetrieverStub(self._channel)
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self.name = name
        self.timeout = timeout

    @classmethod
    def from_url(cls, url: str, **options) -> "RemoteCollection":
        """`grpc://host:port/name` (plain) or `grpcs://host:port/name` (TLS; give root_certificates)."""
        parsed = urlparse(url)
        name = parsed.path.strip("/")
        if not parsed.hostname or not parsed.port or not name:
            raise InvalidRequest(f"expected grpc://host:port/collection, got {url!r}")
        if parsed.scheme == "grpcs" and options.get("root_certificates") is None:
            raise InvalidRequest("grpcs:// needs root_certificates (the server's CA, PEM bytes)")
        return cls(f"{parsed.hostname}:{parsed.port}", name, **options)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "RemoteCollection":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _call(self, method, request):
        try:
            return method(request, timeout=self.timeout, metadata=self._metadata)
        except grpc.RpcError as e:
            raise error_for_code(e.code().name, e.details() or "") from None

    # ---- the Collection API ----------------------------------------------------------------

    def search(self, queries, k: int = 10, *, fields: Sequence[str] | str | None = None,
               filter: Mapping[str, Any] | None = None, params: Mapping[str, int] | None = None,
               fusion: str = "rrf", weights: Mapping[str, float] | None = None, normalization: str = "minmax",
               with_documents: bool = True, pipeline=None) -> Results:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise InvalidRequest(f"k must be a positive integer, got {k!r}")
        request = _built(lambda: conversions.search_request(
            self.name, queries, int(k), fields, filter, params, with_documents,
            fusion=fusion, weights=weights, normalization=normalization, pipeline=pipeline,
        ))
        return conversions.results_from_response(self._call(self._stub.Search, request))

    def generate(self, question: str, k: int = 5, *, mode: str = "blend", recompute_ratio: float | None = None,
                 max_new_tokens: int = 128, fields: Sequence[str] | str | None = None, filter: Mapping[str, Any] | None = None,
                 params: Mapping[str, int] | None = None) -> Iterator:
        """As `Collection.generate`: pieces with `.text` stream in as the server decodes them;
        the last one carries `.stats`. The deadline (`timeout`) covers the whole answer."""
        request = _built(lambda: conversions.generate_request(
            self.name, question, k, mode, recompute_ratio, max_new_tokens, fields, filter, params
        ))
        stream = self._stub.Generate(request, timeout=self.timeout, metadata=self._metadata)
        try:
            for chunk in stream:
                yield conversions.piece_from_chunk(chunk)
        except grpc.RpcError as e:
            raise error_for_code(e.code().name, e.details() or "") from None

    def add(self, documents: Iterable[Mapping[str, Any]], vectors: Mapping[str, np.ndarray] | None = None,
            *, batch_size: int = UPSERT_BATCH) -> int:
        """Upsert in streamed batches; returns how many were upserted. Each acked batch is durable."""
        return sum(ack.upserted for ack in self.upsert_stream(documents, vectors, batch_size=batch_size))

    def upsert_stream(self, documents, vectors=None, *, batch_size: int = UPSERT_BATCH) -> Iterator[pb.UpsertAck]:
        """The acks as they arrive, one per batch, each sent after the batch is committed."""
        documents = list(documents)
        refused: list[RetrieverError] = []  # gRPC reports a request iterator's error as UNKNOWN

        def batches():
            try:
                for i in range(0, len(documents), batch_size):
                    rows = {n: conversions.rows_of(m, i, i + batch_size) for n, m in (vectors or {}).items()}
                    yield conversions.upsert_batch(self.name, documents[i : i + batch_size], rows)
            except RetrieverError as e:
                refused.append(e)
                raise

        try:
            yield from self._stub.Upsert(batches(), timeout=self.timeout, metadata=self._metadata)
        except grpc.RpcError as e:
            if refused:
                raise refused[0] from None
            raise error_for_code(e.code().name, e.details() or "") from None

    def delete(self, ids: Iterable[str]) -> int:
        ids = [ids] if isinstance(ids, str) else [str(i) for i in ids]
        return self._call(self._stub.Delete, pb.DeleteRequest(collection=self.name, ids=ids)).deleted

    def info(self) -> dict[str, Any]:
        return json.loads(self._collection_info().info_json)

    def schema(self) -> dict[str, Any]:
        return conversions.schema_from_info(self._collection_info())

    def _collection_info(self) -> pb.CollectionInfo:
        return self._call(self._stub.GetCollection, pb.GetCollectionRequest(collection=self.name))

    @property
    def version(self) -> int:
        return int(self.info()["version"])

    def __len__(self) -> int:
        return int(self.info()["counts"]["documents"])

    def list_collections(self) -> list[str]:
        return list(self._call(self._stub.ListCollections, pb.ListCollectionsRequest()).names)

    def get(self, ids: Iterable[str]) -> list[dict[str, Any] | None]:
        """As `Collection.get`: the stored documents in the order asked, None where not stored."""
        ids = [ids] if isinstance(ids, str) else [str(i) for i in ids]
        response = self._call(self._stub.GetDocuments, pb.GetDocumentsRequest(collection=self.name, ids=ids))
        missing, found = set(response.missing), iter(response.documents_json)
        return [None if i in missing else json.loads(next(found)) for i in ids]

    def count(self, filter: Mapping[str, Any] | None = None) -> int:
        request = pb.CountRequest(collection=self.name, filter_json=conversions.filter_to_json(filter))
        return int(self._call(self._stub.Count, request).count)

    def scroll(self, filter: Mapping[str, Any] | None = None, limit: int = 100,
               after: str | None = None) -> tuple[list[dict[str, Any]], str | None]:
        """As `Collection.scroll`: (a page of documents in id order, the `after` of the next page or None)."""
        filter_json = conversions.filter_to_json(filter)
        request = pb.ScrollRequest(collection=self.name, filter_json=filter_json, limit=limit)
        if after is not None:
            request.after = after
        response = self._call(self._stub.Scroll, request)
        return [json.loads(d) for d in response.documents_json], (
            response.next_after if response.HasField("next_after") else None
        )

    def create(self, config: Mapping[str, Any] | str) -> dict[str, Any]:
        """Create this collection on a server started with --data-dir, from a config (a mapping,
        or TOML text) whose name is this collection's; returns its info."""
        request = (pb.CreateCollectionRequest(config_toml=config) if isinstance(config, str)
                   else pb.CreateCollectionRequest(config_json=json.dumps(dict(config))))
        return json.loads(self._call(self._stub.CreateCollection, request).info_json)

    def save_pipeline(self, name: str, pipeline, *, default: bool = False) -> None:
        """As `Collection.save_pipeline`, on the server (an admin token)."""
        request = pb.SavePipelineRequest(collection=self.name, name=name, make_default=default,
                                         pipeline=_built(lambda: conversions.pipeline_to_pb(pipeline)))
        self._call(self._stub.SavePipeline, request)

    def snapshot(self, out: str | Path | BinaryIO) -> int:
        """Write a consistent snapshot of this collection (a tar archive) to a file or path;
        returns the version archived. Needs an admin token."""
        with snapshots.opened(out, "wb") as target:
            version = 0
            try:
                request = pb.SnapshotRequest(collection=self.name)
                for chunk in self._stub.Snapshot(request, timeout=self.timeout, metadata=self._metadata):
                    version = version or chunk.version
                    target.write(chunk.data)
            except grpc.RpcError as e:
                raise error_for_code(e.code().name, e.details() or "") from None
            return version

    def restore(self, archive: str | Path | BinaryIO) -> dict[str, Any]:
        """Make this collection from a snapshot archive on a server started with --data-dir;
        returns its info. Needs an admin token."""
        with snapshots.opened(archive, "rb") as source:
            name = self.name

            def chunks():
                yield pb.RestoreChunk(collection=name, data=source.read(snapshots.CHUNK))
                while data := source.read(snapshots.CHUNK):
                    yield pb.RestoreChunk(data=data)

            return json.loads(self._call(self._stub.Restore, chunks()).info_json)

    def drop(self) -> None:
        """Delete this collection (and every file of it) on a server started with --data-dir."""
        self._call(self._stub.DropCollection, pb.DropCollectionRequest(collection=self.name))


def _built(build):
    """A request message from `build()`; a value the message cannot carry (a parameter past 64
    bits, a k past 32, a string where a number goes) is the caller's mistake, said so."""
    try:
        return build()
    except RetrieverError:
        raise
    except (TypeError, ValueError) as e:
        raise InvalidRequest(f"the request holds a value it cannot carry ({e}): parameters, k and weights "
                             "are numbers within their ranges") from None
