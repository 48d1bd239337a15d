"""Python values <-> protobuf messages. The only module that imports the generated code."""

from __future__ import annotations

import json
from typing import Any, Mapping, Sequence

import numpy as np

from ._proto.retriever.v1 import retriever_pb2 as pb
from ._proto.retriever.v1 import retriever_pb2_grpc as pb_grpc
from .errors import InvalidRequest
from .fields.base import shape_words
from .pipeline import Fuse, Pipeline, Prefetch, Rerank
from .types import DocumentList, Results, are_texts

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
                   fusion: str = "rrf", weights=None, normalization: str = "minmax",
                   pipeline=None) -> pb.SearchRequest:
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
    if isinstance(pipeline, str):
        request.pipeline_name = pipeline
    elif pipeline is not None:
        request.pipeline.CopyFrom(pipeline_to_pb(pipeline))
    if isinstance(queries, Mapping) and all(isinstance(key, str) for key in queries):
        for name, value in queries.items():
            request.field_queries[name].CopyFrom(field_queries_to_pb(value))
    elif are_texts(queries) or (isinstance(queries, Sequence) and not queries):
        request.texts.extend([queries] if isinstance(queries, str) else queries)
    else:
        source = query_source(queries)
        getattr(request, source).CopyFrom(TO_PB[source](queries))
    return request


def query_source(value) -> str:
    """Which FieldQueries source a Python value is: texts, sparse, tokens, codes or vectors."""
    if are_texts(value):
        return "texts"
    if is_sparse(value):
        return "sparse"
    if is_tokens(value):
        return "tokens"
    if isinstance(value, np.ndarray) and value.dtype == np.uint8:
        return "codes"
    return "vectors"


def field_queries_to_pb(value) -> pb.FieldQueries:
    source = query_source(value)
    if source == "texts":
        return pb.FieldQueries(texts=pb.Texts(texts=[value] if isinstance(value, str) else value))
    return pb.FieldQueries(**{source: TO_PB[source](value)})


def field_queries_from_pb(message: pb.FieldQueries, what: str) -> Any:
    source = message.WhichOneof("source")
    if source is None:
        raise InvalidRequest(f"{what}: no queries given (set one of texts, vectors, sparse, tokens, codes)")
    if source == "texts":
        return list(message.texts.texts)
    return FROM_PB[source](getattr(message, source), what)


def search_arguments(request: pb.SearchRequest) -> dict[str, Any]:
    """Keyword arguments for `Collection.search` from a request (validated by the collection)."""
    conditions = filter_from_json(request.filter_json)
    return {
        "queries": _request_queries(request),
        "k": request.k or 10,
        "fields": list(request.fields) or None,
        "filter": conditions,
        "params": dict(request.params) or None,
        "fusion": request.fusion or "rrf",
        "weights": dict(request.weights) or None,
        "normalization": request.normalization or "minmax",
        "pipeline": (pipeline_from_pb(request.pipeline) if request.HasField("pipeline")
                     else request.pipeline_name or None),
    }


def pipeline_to_pb(pipeline) -> pb.Pipeline:
    """A `Pipeline` (or its dict) -> message."""
    pipeline = Pipeline.of(pipeline)
    message = pb.Pipeline(
        prefetch=[
            pb.PrefetchStage(field=s.field, k=s.k, params=dict(s.params),
                             filter_json=filter_to_json(s.filter))
            for s in pipeline.prefetch
        ],
        fuse=pb.FuseStage(method=pipeline.fuse.method, weights=dict(pipeline.fuse.weights),
                          normalization=pipeline.fuse.normalization, complete=pipeline.fuse.complete),
    )
    for stage in pipeline.rerank:
        message.rerank.append(pb.RerankStage(field=stage.field, k=stage.k))
    return message


def pipeline_from_pb(message: pb.Pipeline) -> Pipeline:
    """An unset k, method or normalization (0 or "") takes the stage's own default."""
    def given(**values):
        return {key: value for key, value in values.items() if value}

    return Pipeline(
        prefetch=tuple(Prefetch(p.field, params=dict(p.params), filter=filter_from_json(p.filter_json),
                                **given(k=p.k))
                       for p in message.prefetch),
        fuse=Fuse(weights=dict(message.fuse.weights), complete=message.fuse.complete,
                  **given(method=message.fuse.method, normalization=message.fuse.normalization)),
        rerank=tuple(Rerank(r.field, r.k if r.HasField("k") else None) for r in message.rerank),
    )


def search_response(results: Results, with_documents: bool) -> pb.SearchResponse:
    """All queries' hits in the flat columns `Results` already keeps (one message, no per-hit work)."""
    return pb.SearchResponse(
        offsets=results.offsets.tolist(),
        ids=results.ids,
        scores=_float32_bytes(results.scores),
        field_scores={n: _float32_bytes(v) for n, v in results.field_scores.items()},
        documents_json=documents_json(results.documents) if with_documents else [],
        reasons=[r or "" for r in results.reasons],
        missing_shards=results.missing_shards,
    )


def results_from_response(response: pb.SearchResponse) -> Results:
    ids = list(response.ids)
    documents = [json.loads(d) for d in response.documents_json]
    return Results(
        np.asarray(response.offsets, np.int64),
        np.frombuffer(response.scores, dtype="<f4"),
        {n: np.frombuffer(b, dtype="<f4") for n, b in response.field_scores.items()},
        np.arange(len(ids), dtype=np.int64),  # rows index the response's own documents
        DocumentList(documents) if documents else None,
        [r or None for r in response.reasons],
        tuple(response.missing_shards),
        ids,
    )


def matrix_to_pb(matrix) -> pb.Matrix:
    """[N, D] (or one vector [D]) -> Matrix. Ragged rows are refused here, as in-process."""
    try:
        array = np.atleast_2d(np.asarray(matrix, dtype="<f4"))
    except ValueError:
        raise InvalidRequest("query vectors have different dimensions") from None
    if array.ndim != 2:
        raise InvalidRequest(f"vectors must form a [rows, dim] matrix, got {shape_words(array.shape)}")
    rows, dim = array.shape
    return pb.Matrix(rows=rows, dim=dim, float32_le=np.ascontiguousarray(array).tobytes())


def _request_queries(request: pb.SearchRequest) -> Any:
    """The queries a SearchRequest carries: one source for every field, or one per field."""
    single = [s for s in FROM_PB if request.HasField(s)] + (["texts"] if request.texts else [])
    per_field = {
        n: field_queries_from_pb(m, f"queries for field {n!r}") for n, m in request.field_queries.items()
    }
    for entries, source in ((request.field_vectors, "vectors"), (request.field_sparse, "sparse")):
        twice = sorted(set(entries) & set(per_field))
        if twice:
            raise InvalidRequest(f"field(s) {twice} given queries twice (one entry per field)")
        per_field.update({n: FROM_PB[source](m, f"queries for field {n!r}") for n, m in entries.items()})
    if len(single) + bool(per_field) != 1:
        given = [*single, *(["per-field queries"] if per_field else [])]
        raise InvalidRequest(
            f"give exactly one query source (texts, vectors, sparse, tokens or codes) or per-field queries, "
            f"got {given}"
            if given else "no queries given"
        )
    if per_field:
        return per_field
    if single == ["texts"]:
        return list(request.texts)
    return FROM_PB[single[0]](getattr(request, single[0]), "queries")


def matrix_from_pb(matrix: pb.Matrix, what: str) -> np.ndarray:
    if len(matrix.float32_le) != 4 * matrix.rows * matrix.dim:
        needed = 4 * matrix.rows * matrix.dim
        raise InvalidRequest(
            f"{what}: {matrix.rows} x {matrix.dim} float32 needs {needed} bytes, got {len(matrix.float32_le)}"
        )
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
            raise InvalidRequest(
                f"sparse vector {i} must be a (term ids, values) pair of equal length or a "
                "{term id: value} dict"
            ) from None
        if len(terms) and not np.issubdtype(terms.dtype, np.integer):
            raise InvalidRequest(f"sparse vector {i}: term ids must be integers, got {terms.dtype}")
        ids.append(terms.astype("<i8"))
        values.append(weights.astype("<f4"))
        offsets.append(offsets[-1] + len(terms))
    return pb.SparseMatrix(offsets=offsets, term_ids_int64_le=np.concatenate(ids).tobytes(),
                           values_float32_le=np.concatenate(values).tobytes())


def sparse_from_pb(matrix: pb.SparseMatrix, what: str) -> list[tuple[np.ndarray, np.ndarray]]:
    offsets = np.asarray(matrix.offsets, dtype=np.int64)
    count = len(matrix.term_ids_int64_le) // 8
    if len(offsets) < 2 or offsets[0] != 0 or offsets[-1] != count or (np.diff(offsets) < 0).any() \
            or len(matrix.term_ids_int64_le) != 8 * count or len(matrix.values_float32_le) != 4 * count:
        raise InvalidRequest(
            f"{what}: offsets must rise from 0 to the number of terms, with 8 bytes per term id and 4 per "
            "value"
        )
    ids = np.frombuffer(matrix.term_ids_int64_le, dtype="<i8")
    values = np.frombuffer(matrix.values_float32_le, dtype="<f4")
    return [(ids[lo:hi], values[lo:hi]) for lo, hi in zip(offsets[:-1], offsets[1:])]


def _stacked_tokens(value) -> bool:
    """A (tokens [T, D], offsets [N + 1]) pair."""
    return isinstance(value, tuple) and len(value) == 2 and np.ndim(value[0]) == 2 and np.ndim(value[1]) == 1


def is_tokens(value) -> bool:
    """Token matrices: a (tokens [T, D], offsets [N + 1]) pair, or a list of [t_i, D] matrices."""
    if isinstance(value, np.ndarray):
        return False
    if _stacked_tokens(value):
        return True
    return isinstance(value, Sequence) and bool(value) and all(np.ndim(item) == 2 for item in value)


def rows_of(value, lo: int, hi: int):
    """Items lo .. hi - 1 of a field's vectors, in any form `upsert_batch` takes."""
    if _stacked_tokens(value):
        tokens, offsets = value
        offsets = np.asarray(offsets)[lo : hi + 1]
        return tokens[offsets[0] : offsets[-1]], offsets - offsets[0]
    if is_sparse(value) or is_tokens(value):
        return value[lo:hi]
    return np.asarray(value)[lo:hi]


def tokens_to_pb(value) -> pb.TokenMatrices:
    if _stacked_tokens(value):
        tokens, offsets = np.asarray(value[0]), np.asarray(value[1], dtype=np.int64)
    else:
        items = [np.asarray(item, dtype="<f4") for item in value]
        if len({item.shape[1] for item in items}) > 1:
            raise InvalidRequest("token vectors have different dimensions")
        offsets = np.concatenate([[0], np.cumsum([len(item) for item in items])])
        tokens = np.concatenate(items) if items else np.zeros((0, 0), "<f4")
    return pb.TokenMatrices(offsets=offsets.tolist(), tokens=matrix_to_pb(tokens))


def tokens_from_pb(message: pb.TokenMatrices, what: str) -> tuple[np.ndarray, np.ndarray]:
    """(tokens [T, D], offsets [N + 1]), as `Collection.search` and `add` take them."""
    tokens = matrix_from_pb(message.tokens, f"{what} (token vectors)")
    offsets = np.asarray(message.offsets, dtype=np.int64)
    if len(offsets) < 2 or offsets[0] != 0 or offsets[-1] != len(tokens) or (np.diff(offsets) < 0).any():
        raise InvalidRequest(
            f"{what}: offsets must rise from 0 to the number of token vectors ({len(tokens)}), "
            "one more entry than items"
        )
    return tokens, offsets


def codes_to_pb(codes: np.ndarray) -> pb.CodeMatrix:
    codes = np.atleast_2d(codes)
    if codes.ndim != 2:
        raise InvalidRequest(f"packed codes must be a [queries, bytes] uint8 matrix, not {codes.ndim}-D")
    rows, width = codes.shape
    return pb.CodeMatrix(rows=rows, width=width, codes=np.ascontiguousarray(codes).tobytes())


def codes_from_pb(message: pb.CodeMatrix, what: str) -> np.ndarray:
    if len(message.codes) != message.rows * message.width:
        raise InvalidRequest(
            f"{what}: {message.rows} codes of {message.width} bytes need {message.rows * message.width} "
            f"bytes, got {len(message.codes)}"
        )
    return np.frombuffer(message.codes, dtype=np.uint8).reshape(message.rows, message.width)


def _float32_bytes(values: np.ndarray) -> bytes:
    return np.asarray(values, dtype="<f4").tobytes()


# ---- writes and collection facts --------------------------------------------------------------


def upsert_batch(
    collection: str, documents: Sequence[Mapping[str, Any]], vectors: Mapping[str, Any] | None
) -> pb.UpsertBatch:
    given = vectors or {}
    return pb.UpsertBatch(
        collection=collection, documents_json=[json.dumps(d, default=str) for d in documents],
        vectors={name: matrix_to_pb(v) for name, v in given.items() if query_source(v) == "vectors"},
        sparse_vectors={name: sparse_to_pb(v) for name, v in given.items() if is_sparse(v)},
        token_vectors={name: tokens_to_pb(v) for name, v in given.items() if query_source(v) == "tokens"},
    )


def upsert_arguments(batch: pb.UpsertBatch) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
    documents = []
    for i, text in enumerate(batch.documents_json):
        documents.append(_json(text, f"document {i}"))
    vectors: dict[str, Any] = {}
    given = ((batch.vectors, "vectors"), (batch.sparse_vectors, "sparse"), (batch.token_vectors, "tokens"))
    for entries, source in given:
        twice = sorted(set(entries) & set(vectors))
        if twice:
            raise InvalidRequest(f"field(s) {twice} given vectors twice (one entry per field)")
        vectors.update({n: FROM_PB[source](m, f"vectors for field {n!r}") for n, m in entries.items()})
    return documents, vectors


def collection_info(collection) -> pb.CollectionInfo:
    """A collection's facts, its config and its typed schema (`Collection.schema()`)."""
    info, schema = collection.info(), collection.schema()
    counts = info["counts"]
    return pb.CollectionInfo(
        name=info["name"], version=info["version"], documents=counts["documents"], rows=counts["rows"],
        deleted=counts["deleted"], config_json=json.dumps(collection.config.to_dict()),
        info_json=json.dumps(info, default=str),
        fields=[pb.FieldSchema(**{**f, "params": _params_to_pb(f["params"])}) for f in schema["fields"]],
        max_k=schema["max_k"], max_batch=schema["max_batch"], max_candidates=schema["max_candidates"],
        text_keys=schema["text_keys"], params=_params_to_pb(schema["params"]),
    )


def schema_from_info(message: pb.CollectionInfo) -> dict[str, Any]:
    """`Collection.schema()` from a CollectionInfo."""
    fields = []
    for f in message.fields:
        names = ("name", "kind", "model", "dim", "metric", "index", "source", "code_bytes")
        fields.append({**{n: getattr(f, n) for n in names}, "query_inputs": list(f.query_inputs),
                       "params": _params_from_pb(f.params)})
    return {"name": message.name, "text_keys": list(message.text_keys), "max_k": message.max_k,
            "max_batch": message.max_batch, "max_candidates": message.max_candidates,
            "params": _params_from_pb(message.params), "fields": fields}


def _params_to_pb(params: Mapping[str, Mapping[str, Any]]) -> list[pb.ParamRange]:
    return [pb.ParamRange(name=n, **{k: v for k, v in p.items() if v is not None}) for n, p in params.items()]


def _params_from_pb(params) -> dict[str, dict[str, Any]]:
    ranges = {}
    for p in params:
        ranges[p.name] = {"low": p.low, "high": p.high if p.HasField("high") else None, "depth": p.depth}
    return ranges


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


def generate_request(collection: str, question: str, k: int, mode: str, recompute_ratio, max_new_tokens: int,
                     fields, filter, params) -> pb.GenerateRequest:
    request = pb.GenerateRequest(collection=collection, question=question, k=k, mode=mode,
                                 max_new_tokens=max_new_tokens,
                                 fields=[fields] if isinstance(fields, str) else list(fields or []),
                                 filter_json=filter_to_json(filter), params=dict(params or {}))
    if recompute_ratio is not None:
        request.recompute_ratio = recompute_ratio
    return request


def generate_arguments(request: pb.GenerateRequest) -> dict[str, Any]:
    conditions = filter_from_json(request.filter_json)
    return {"question": request.question, "k": request.k or 5, "mode": request.mode or "blend",
            "recompute_ratio": request.recompute_ratio if request.HasField("recompute_ratio") else None,
            "max_new_tokens": request.max_new_tokens or 128, "fields": list(request.fields) or None,
            "filter": conditions, "params": dict(request.params) or None}


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
    stats = json.dumps(piece.stats) if piece.stats is not None else ""
    return pb.GenerateChunk(text=piece.text, stats_json=stats)


def piece_from_chunk(chunk: pb.GenerateChunk):
    from .rag.generate import Piece

    return Piece(chunk.text, json.loads(chunk.stats_json) if chunk.stats_json else None)


# each FieldQueries source but texts: its Python value -> message, and back
TO_PB = {"vectors": matrix_to_pb, "sparse": sparse_to_pb, "tokens": tokens_to_pb, "codes": codes_to_pb}
FROM_PB = {
    "vectors": matrix_from_pb, "sparse": sparse_from_pb, "tokens": tokens_from_pb, "codes": codes_from_pb,
}
