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


# ---- search ----------------------------------------------------------------------------------


def search_request(collection: str, queries, k: int, fields, filter, params, fusion: str, with_documents: bool) -> pb.SearchRequest:
    return pb.SearchRequest(
        collection=collection,
        queries=_queries_to_pb(queries),
        k=k,
        fields=[fields] if isinstance(fields, str) else list(fields or []),
        fusion=fusion,
        filter_json=json.dumps(filter) if filter is not None else "",
        params=dict(params or {}),
        omit_documents=not with_documents,
    )


def search_arguments(request: pb.SearchRequest) -> dict[str, Any]:
    """Keyword arguments for `Collection.search` from a request (validated by the collection)."""
    if request.fusion not in ("", "rrf"):
        raise InvalidRequest(f"unknown fusion {request.fusion!r}; available: rrf")
    try:
        conditions = json.loads(request.filter_json) if request.filter_json else None
    except json.JSONDecodeError as e:
        raise InvalidRequest(f"filter_json is not valid JSON: {e}") from None
    return {
        "queries": _queries_from_pb(request.queries),
        "k": request.k or 10,
        "fields": list(request.fields) or None,
        "filter": conditions,
        "params": dict(request.params) or None,
    }


def search_response(hits: list[Hits], with_documents: bool) -> pb.SearchResponse:
    return pb.SearchResponse(results=[_hits_to_pb(h, with_documents) for h in hits])


def hits_from_response(response: pb.SearchResponse) -> list[Hits]:
    return [_hits_from_pb(r) for r in response.results]


def _hits_to_pb(hits: Hits, with_documents: bool) -> pb.QueryHits:
    return pb.QueryHits(
        ids=hits.ids,
        scores=hits.scores.tolist(),
        field_scores={n: pb.FieldScores(scores=s.tolist()) for n, s in hits.field_scores.items()},
        documents_json=[json.dumps(d, default=str) for d in hits.documents] if with_documents else [],
        reason=hits.reason or "",
    )


def _hits_from_pb(message: pb.QueryHits) -> Hits:
    ids = list(message.ids)
    documents = [json.loads(d) for d in message.documents_json] or [{"id": i} for i in ids]
    return Hits(
        ids,
        np.asarray(message.scores, dtype=np.float32),
        {n: np.asarray(s.scores, dtype=np.float32) for n, s in message.field_scores.items()},
        np.arange(len(ids), dtype=np.int64),
        DocumentList(documents),
        message.reason or None,
    )


def _queries_to_pb(queries) -> list[pb.Query]:
    if isinstance(queries, str):
        return [pb.Query(text=queries)]
    if isinstance(queries, Mapping):
        matrices = {n: np.atleast_2d(np.asarray(m, dtype=np.float32)) for n, m in queries.items()}
        size = len(next(iter(matrices.values()))) if matrices else 0
        return [pb.Query(field_vectors={n: pb.Vector(values=m[b].tolist()) for n, m in matrices.items()}) for b in range(size)]
    if isinstance(queries, np.ndarray):
        return [pb.Query(vector=pb.Vector(values=row.tolist())) for row in np.atleast_2d(queries.astype(np.float32))]
    if isinstance(queries, Sequence) and queries and not isinstance(queries[0], str):
        # rows sent as they are: the server names a dimension mismatch, as in-process search does
        return [pb.Query(vector=pb.Vector(values=np.asarray(row, dtype=np.float32).ravel().tolist())) for row in queries]
    return [pb.Query(text=q) for q in queries]


def _queries_from_pb(queries: Sequence[pb.Query]):
    kinds = {q.WhichOneof("kind") or ("field_vectors" if q.field_vectors else None) for q in queries}
    if not queries:
        raise InvalidRequest("no queries given")
    if len(kinds) != 1 or None in kinds:
        raise InvalidRequest("every query of a request must be of one kind: text, vector, or field_vectors")
    kind = kinds.pop()
    if kind == "text":
        return [q.text for q in queries]
    if kind == "vector":
        return _stack([q.vector.values for q in queries], "query vectors")
    names = set(queries[0].field_vectors)
    if any(set(q.field_vectors) != names for q in queries):
        raise InvalidRequest("every query must give vectors for the same fields")
    return {n: _stack([q.field_vectors[n].values for q in queries], f"query vectors for {n!r}") for n in names}


def _stack(rows, what: str) -> np.ndarray:
    lengths = {len(r) for r in rows}
    if len(lengths) != 1:
        raise InvalidRequest(f"{what} have different dimensions: {sorted(lengths)}")
    return np.asarray([list(r) for r in rows], dtype=np.float32)


# ---- writes and collection facts --------------------------------------------------------------


def upsert_batch(collection: str, documents: Sequence[Mapping[str, Any]], vectors: Mapping[str, np.ndarray] | None) -> pb.UpsertBatch:
    matrices = {}
    for name, matrix in (vectors or {}).items():
        matrix = np.atleast_2d(np.asarray(matrix, dtype=np.float32))
        matrices[name] = pb.Matrix(rows=matrix.shape[0], dim=matrix.shape[1], values=matrix.ravel().tolist())
    return pb.UpsertBatch(collection=collection, documents_json=[json.dumps(d, default=str) for d in documents], vectors=matrices)


def upsert_arguments(batch: pb.UpsertBatch) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
    documents = []
    for i, text in enumerate(batch.documents_json):
        try:
            documents.append(json.loads(text))
        except json.JSONDecodeError as e:
            raise InvalidRequest(f"document {i} is not valid JSON: {e}") from None
    vectors = {}
    for name, m in batch.vectors.items():
        if m.rows * m.dim != len(m.values):
            raise InvalidRequest(f"vectors for {name!r}: {m.rows} x {m.dim} needs {m.rows * m.dim} values, got {len(m.values)}")
        vectors[name] = np.asarray(m.values, dtype=np.float32).reshape(m.rows, m.dim)
    return documents, vectors


def collection_info(info: Mapping[str, Any], config: Mapping[str, Any]) -> pb.CollectionInfo:
    counts = info["counts"]
    return pb.CollectionInfo(
        name=info["name"], version=info["version"], documents=counts["documents"], rows=counts["rows"],
        deleted=counts["deleted"], config_json=json.dumps(config), info_json=json.dumps(info, default=str),
    )
