"""Python values <-> protobuf messages. The only module that imports the generated code."""

from __future__ import annotations

import json
from typing import Any, Mapping, Sequence

import numpy as np

from ._proto.retriever.v1 import retriever_pb2 as pb
from ._proto.retriever.v1 import retriever_pb2_grpc as pb_grpc
from .errors import InvalidRequest
from .types import DocumentList, Hits

__all__ = ["pb", "pb_grpc"]


def parse(message_type, raw: bytes):
    """A request message from its bytes; malformed bytes (invalid UTF-8 in a string, a truncated
    field) are the client's mistake, said in words."""
    try:
        return message_type.FromString(raw)
    except Exception as e:  # protobuf raises DecodeError, or RuntimeError from some backends
        raise InvalidRequest(
            f"the request is not a valid {message_type.DESCRIPTOR.name} message ({e}); "
            "is the client built from this server's retriever.proto?"
        ) from None


# ---- search ----------------------------------------------------------------------------------


def search_request(collection: str, queries, k: int, fields, filter, params, with_documents: bool, *,
                   fusion: str = "rrf", weights=None, normalization: str = "minmax") -> pb.SearchRequest:
    request = pb.SearchRequest(
        collection=collection,
        k=k,
        fields=[fields] if isinstance(fields, str) else list(fields or []),
        fusion=fusion,
        filter_json=filter_to_json(filter),
        params=dict(params or {}),
        omit_documents=not with_documents,
        weights=dict(weights or {}),
        normalization=normalization,
    )
    if isinstance(queries, str):
        request.texts.append(queries)
    elif isinstance(queries, Mapping) and all(isinstance(key, str) for key in queries):
        for name, value in queries.items():
            if is_sparse(value):
                request.field_sparse[name].CopyFrom(sparse_to_pb(value))
            else:
                request.field_vectors[name].CopyFrom(matrix_to_pb(value))
    elif is_sparse(queries):
        request.sparse.CopyFrom(sparse_to_pb(queries))
    elif isinstance(queries, np.ndarray) or (isinstance(queries, Sequence) and queries and not isinstance(queries[0], str)):
        request.vectors.CopyFrom(matrix_to_pb(queries))
    else:
        request.texts.extend(queries)
    return request


def search_arguments(request: pb.SearchRequest) -> dict[str, Any]:
    """Keyword arguments for `Collection.search` from a request (validated by the collection)."""
    conditions = filter_from_json(request.filter_json)
    per_field = bool(request.field_vectors) or bool(request.field_sparse)
    given = [bool(request.texts), request.HasField("vectors"), request.HasField("sparse"), per_field]
    if sum(given) != 1:
        raise InvalidRequest("give exactly one of texts, vectors, sparse, or field_vectors/field_sparse" if any(given) else "no queries given")
    if request.texts:
        queries: Any = list(request.texts)
    elif request.HasField("vectors"):
        queries = matrix_from_pb(request.vectors, "query vectors")
    elif request.HasField("sparse"):
        queries = sparse_from_pb(request.sparse, "sparse query vectors")
    else:
        both = sorted(set(request.field_vectors) & set(request.field_sparse))
        if both:
            raise InvalidRequest(f"field(s) {both} given both dense and sparse query vectors")
        queries = {n: matrix_from_pb(m, f"query vectors for {n!r}") for n, m in request.field_vectors.items()}
        queries.update({n: sparse_from_pb(m, f"sparse query vectors for {n!r}") for n, m in request.field_sparse.items()})
    return {
        "queries": queries,
        "k": request.k or 10,
        "fields": list(request.fields) or None,
        "filter": conditions,
        "params": dict(request.params) or None,
        "fusion": request.fusion or "rrf",
        "weights": dict(request.weights) or None,
        "normalization": request.normalization or "minmax",
    }


def search_response(hits: list[Hits], with_documents: bool) -> pb.SearchResponse:
    """All queries' hits in flat columns (one message, no per-hit objects)."""
    offsets = np.zeros(len(hits) + 1, dtype=np.int64)
    np.cumsum([len(h) for h in hits], out=offsets[1:])
    names = list(hits[0].field_scores) if hits else []
    return pb.SearchResponse(
        offsets=offsets.tolist(),
        ids=[i for h in hits for i in h.ids],
        scores=_float32_bytes([h.scores for h in hits]),
        field_scores={n: _float32_bytes([h.field_scores[n] for h in hits]) for n in names},
        documents_json=[json.dumps(d, default=str) for h in hits for d in h.documents] if with_documents else [],
        reasons=[h.reason or "" for h in hits],
    )


def hits_from_response(response: pb.SearchResponse) -> list[Hits]:
    offsets = list(response.offsets)
    ids = list(response.ids)
    scores = np.frombuffer(response.scores, dtype="<f4")
    fields = {n: np.frombuffer(b, dtype="<f4") for n, b in response.field_scores.items()}
    documents = [json.loads(d) for d in response.documents_json]
    positions = np.arange(max(np.diff(offsets), default=0), dtype=np.int64)  # rows index the hit's own documents
    out = []
    for b, reason in enumerate(response.reasons):
        lo, hi = offsets[b], offsets[b + 1]
        out.append(Hits(
            ids[lo:hi], scores[lo:hi], {n: v[lo:hi] for n, v in fields.items()},
            positions[: hi - lo], DocumentList(documents[lo:hi]) if documents else None, reason or None,
        ))
    return out


def matrix_to_pb(matrix) -> pb.Matrix:
    """[N, D] (or one vector [D]) -> Matrix. Ragged rows are refused here, as in-process."""
    try:
        array = np.atleast_2d(np.asarray(matrix, dtype="<f4"))
    except ValueError:
        raise InvalidRequest("query vectors have different dimensions") from None
    if array.ndim != 2:
        raise InvalidRequest(f"vectors must form a [rows, dim] matrix, got shape {array.shape}")
    return pb.Matrix(rows=array.shape[0], dim=array.shape[1], float32_le=np.ascontiguousarray(array).tobytes())


def matrix_from_pb(matrix: pb.Matrix, what: str) -> np.ndarray:
    if len(matrix.float32_le) != 4 * matrix.rows * matrix.dim:
        raise InvalidRequest(f"{what}: {matrix.rows} x {matrix.dim} float32 needs {4 * matrix.rows * matrix.dim} bytes, got {len(matrix.float32_le)}")
    return np.frombuffer(matrix.float32_le, dtype="<f4").reshape(matrix.rows, matrix.dim)


def is_sparse(value) -> bool:
    """A list of {term id: weight} dicts or of (term ids, weights) pairs (not a dense matrix)."""
    if isinstance(value, (dict, np.ndarray)) or not isinstance(value, Sequence) or not value:
        return False
    first = value[0]
    if isinstance(first, dict):
        return True
    return isinstance(first, (tuple, list)) and len(first) == 2 and not np.isscalar(first[0])


def sparse_to_pb(vectors) -> pb.SparseMatrix:
    """Sparse vectors -> SparseMatrix as given (the server validates them, as in-process)."""
    offsets, ids, values = [0], [], []
    for i, vector in enumerate(vectors):
        if isinstance(vector, dict):  # no order of its own: sent sorted, as in-process
            items = sorted(vector.items())
            vector = ([t for t, _ in items], [w for _, w in items])
        try:
            terms, weights = (np.asarray(part) for part in vector)
            if terms.ndim != 1 or weights.ndim != 1 or len(terms) != len(weights):
                raise ValueError
        except (TypeError, ValueError):
            raise InvalidRequest(f"sparse vector {i} must be a (term ids, values) pair of equal length or a {{term id: value}} dict") from None
        if len(terms) and not np.issubdtype(terms.dtype, np.integer):
            raise InvalidRequest(f"sparse vector {i}: term ids must be integers, got {terms.dtype}")
        ids.append(terms.astype("<i8"))
        values.append(weights.astype("<f4"))
        offsets.append(offsets[-1] + len(terms))
    return pb.SparseMatrix(offsets=offsets, term_ids_int64_le=np.concatenate(ids).tobytes(), values_float32_le=np.concatenate(values).tobytes())


def sparse_from_pb(matrix: pb.SparseMatrix, what: str) -> list[tuple[np.ndarray, np.ndarray]]:
    offsets = np.asarray(matrix.offsets, dtype=np.int64)
    count = len(matrix.term_ids_int64_le) // 8
    if len(offsets) < 2 or offsets[0] != 0 or offsets[-1] != count or (np.diff(offsets) < 0).any() \
            or len(matrix.term_ids_int64_le) != 8 * count or len(matrix.values_float32_le) != 4 * count:
        raise InvalidRequest(f"{what}: offsets must rise from 0 to the number of terms, with 8 bytes per term id and 4 per value")
    ids = np.frombuffer(matrix.term_ids_int64_le, dtype="<i8")
    values = np.frombuffer(matrix.values_float32_le, dtype="<f4")
    return [(ids[lo:hi], values[lo:hi]) for lo, hi in zip(offsets[:-1], offsets[1:])]


def _float32_bytes(arrays: list[np.ndarray]) -> bytes:
    return np.concatenate(arrays).astype("<f4", copy=False).tobytes() if arrays else b""


# ---- writes and collection facts --------------------------------------------------------------


def upsert_batch(collection: str, documents: Sequence[Mapping[str, Any]], vectors: Mapping[str, Any] | None) -> pb.UpsertBatch:
    given = vectors or {}
    return pb.UpsertBatch(
        collection=collection, documents_json=[json.dumps(d, default=str) for d in documents],
        vectors={name: matrix_to_pb(v) for name, v in given.items() if not is_sparse(v)},
        sparse_vectors={name: sparse_to_pb(v) for name, v in given.items() if is_sparse(v)},
    )


def upsert_arguments(batch: pb.UpsertBatch) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
    documents = []
    for i, text in enumerate(batch.documents_json):
        documents.append(_json(text, f"document {i}"))
    both = sorted(set(batch.vectors) & set(batch.sparse_vectors))
    if both:
        raise InvalidRequest(f"field(s) {both} given both dense and sparse vectors")
    vectors: dict[str, Any] = {name: matrix_from_pb(m, f"vectors for {name!r}") for name, m in batch.vectors.items()}
    vectors.update({name: sparse_from_pb(m, f"sparse vectors for {name!r}") for name, m in batch.sparse_vectors.items()})
    return documents, vectors


def collection_info(info: Mapping[str, Any], config: Mapping[str, Any]) -> pb.CollectionInfo:
    counts = info["counts"]
    return pb.CollectionInfo(
        name=info["name"], version=info["version"], documents=counts["documents"], rows=counts["rows"],
        deleted=counts["deleted"], config_json=json.dumps(config), info_json=json.dumps(info, default=str),
    )


def config_from_request(request: pb.CreateCollectionRequest):
    """The collection config a CreateCollection request carries (TOML or JSON, exactly one)."""
    import tomllib

    from .config import CollectionConfig

    if bool(request.config_toml) == bool(request.config_json):
        raise InvalidRequest("give the collection config as exactly one of config_toml or config_json")
    if request.config_json:
        data = _json(request.config_json, "config_json")
    else:
        try:
            data = tomllib.loads(request.config_toml)
        except tomllib.TOMLDecodeError as e:
            raise InvalidRequest(f"config_toml is not valid TOML: {e}") from None
    if not isinstance(data, dict):
        raise InvalidRequest("the collection config must be a table (a JSON object)")
    return CollectionConfig.from_dict(data)


def documents_json(documents) -> list[str]:
    return [json.dumps(d, default=str) for d in documents]


def scroll_arguments(request: pb.ScrollRequest) -> dict[str, Any]:
    return {"filter": filter_from_json(request.filter_json), "limit": request.limit or 100,
            "after": request.after if request.HasField("after") else None}


def generate_request(collection: str, question: str, k: int, mode: str, recompute_ratio, max_new_tokens: int, fields, filter,
                     params) -> pb.GenerateRequest:
    request = pb.GenerateRequest(collection=collection, question=question, k=k, mode=mode, max_new_tokens=max_new_tokens,
                                 fields=[fields] if isinstance(fields, str) else list(fields or []),
                                 filter_json=filter_to_json(filter), params=dict(params or {}))
    if recompute_ratio is not None:
        request.recompute_ratio = recompute_ratio
    return request


def generate_arguments(request: pb.GenerateRequest) -> dict[str, Any]:
    conditions = filter_from_json(request.filter_json)
    return {"question": request.question, "k": request.k or 5, "mode": request.mode or "blend",
            "recompute_ratio": request.recompute_ratio if request.HasField("recompute_ratio") else None,
            "max_new_tokens": request.max_new_tokens or 128, "fields": list(request.fields) or None, "filter": conditions,
            "params": dict(request.params) or None}


def filter_to_json(filter) -> str:
    return json.dumps(filter) if filter is not None else ""


def filter_from_json(filter_json: str):
    return _json(filter_json, "filter_json") if filter_json else None


def _json(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise InvalidRequest(f"{what} is not valid JSON: {e}") from None
    except RecursionError:
        raise InvalidRequest(f"{what} nests too deeply") from None


def generate_chunk(piece) -> pb.GenerateChunk:
    return pb.GenerateChunk(text=piece.text, stats_json=json.dumps(piece.stats) if piece.stats is not None else "")


def piece_from_chunk(chunk: pb.GenerateChunk):
    from .rag.generate import Piece

    return Piece(chunk.text, json.loads(chunk.stats_json) if chunk.stats_json else None)
