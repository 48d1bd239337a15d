from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Matrix(_message.Message):
    __slots__ = ("rows", "dim", "float32_le")
    ROWS_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    FLOAT32_LE_FIELD_NUMBER: _ClassVar[int]
    rows: int
    dim: int
    float32_le: bytes
    def __init__(self, rows: _Optional[int] = ..., dim: _Optional[int] = ..., float32_le: _Optional[bytes] = ...) -> None: ...

class SparseMatrix(_message.Message):
    __slots__ = ("offsets", "term_ids_int64_le", "values_float32_le")
    OFFSETS_FIELD_NUMBER: _ClassVar[int]
    TERM_IDS_INT64_LE_FIELD_NUMBER: _ClassVar[int]
    VALUES_FLOAT32_LE_FIELD_NUMBER: _ClassVar[int]
    offsets: _containers.RepeatedScalarFieldContainer[int]
    term_ids_int64_le: bytes
    values_float32_le: bytes
    def __init__(self, offsets: _Optional[_Iterable[int]] = ..., term_ids_int64_le: _Optional[bytes] = ..., values_float32_le: _Optional[bytes] = ...) -> None: ...

class TokenMatrices(_message.Message):
    __slots__ = ("offsets", "tokens")
    OFFSETS_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    offsets: _containers.RepeatedScalarFieldContainer[int]
    tokens: Matrix
    def __init__(self, offsets: _Optional[_Iterable[int]] = ..., tokens: _Optional[_Union[Matrix, _Mapping]] = ...) -> None: ...

class CodeMatrix(_message.Message):
    __slots__ = ("rows", "width", "codes")
    ROWS_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    CODES_FIELD_NUMBER: _ClassVar[int]
    rows: int
    width: int
    codes: bytes
    def __init__(self, rows: _Optional[int] = ..., width: _Optional[int] = ..., codes: _Optional[bytes] = ...) -> None: ...

class Texts(_message.Message):
    __slots__ = ("texts",)
    TEXTS_FIELD_NUMBER: _ClassVar[int]
    texts: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, texts: _Optional[_Iterable[str]] = ...) -> None: ...

class FieldQueries(_message.Message):
    __slots__ = ("texts", "vectors", "sparse", "tokens", "codes")
    TEXTS_FIELD_NUMBER: _ClassVar[int]
    VECTORS_FIELD_NUMBER: _ClassVar[int]
    SPARSE_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    CODES_FIELD_NUMBER: _ClassVar[int]
    texts: Texts
    vectors: Matrix
    sparse: SparseMatrix
    tokens: TokenMatrices
    codes: CodeMatrix
    def __init__(self, texts: _Optional[_Union[Texts, _Mapping]] = ..., vectors: _Optional[_Union[Matrix, _Mapping]] = ..., sparse: _Optional[_Union[SparseMatrix, _Mapping]] = ..., tokens: _Optional[_Union[TokenMatrices, _Mapping]] = ..., codes: _Optional[_Union[CodeMatrix, _Mapping]] = ...) -> None: ...

class SearchRequest(_message.Message):
    __slots__ = ("collection", "texts", "vectors", "field_vectors", "k", "fields", "fusion", "filter_json", "params", "omit_documents", "weights", "normalization", "sparse", "field_sparse", "field_queries", "tokens", "codes", "pipeline", "pipeline_name")
    class FieldVectorsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Matrix
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Matrix, _Mapping]] = ...) -> None: ...
    class ParamsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class WeightsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class FieldSparseEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: SparseMatrix
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[SparseMatrix, _Mapping]] = ...) -> None: ...
    class FieldQueriesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: FieldQueries
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[FieldQueries, _Mapping]] = ...) -> None: ...
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    TEXTS_FIELD_NUMBER: _ClassVar[int]
    VECTORS_FIELD_NUMBER: _ClassVar[int]
    FIELD_VECTORS_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    FIELDS_FIELD_NUMBER: _ClassVar[int]
    FUSION_FIELD_NUMBER: _ClassVar[int]
    FILTER_JSON_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    OMIT_DOCUMENTS_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    NORMALIZATION_FIELD_NUMBER: _ClassVar[int]
    SPARSE_FIELD_NUMBER: _ClassVar[int]
    FIELD_SPARSE_FIELD_NUMBER: _ClassVar[int]
    FIELD_QUERIES_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    CODES_FIELD_NUMBER: _ClassVar[int]
    PIPELINE_FIELD_NUMBER: _ClassVar[int]
    PIPELINE_NAME_FIELD_NUMBER: _ClassVar[int]
    collection: str
    texts: _containers.RepeatedScalarFieldContainer[str]
    vectors: Matrix
    field_vectors: _containers.MessageMap[str, Matrix]
    k: int
    fields: _containers.RepeatedScalarFieldContainer[str]
    fusion: str
    filter_json: str
    params: _containers.ScalarMap[str, int]
    omit_documents: bool
    weights: _containers.ScalarMap[str, float]
    normalization: str
    sparse: SparseMatrix
    field_sparse: _containers.MessageMap[str, SparseMatrix]
    field_queries: _containers.MessageMap[str, FieldQueries]
    tokens: TokenMatrices
    codes: CodeMatrix
    pipeline: Pipeline
    pipeline_name: str
    def __init__(self, collection: _Optional[str] = ..., texts: _Optional[_Iterable[str]] = ..., vectors: _Optional[_Union[Matrix, _Mapping]] = ..., field_vectors: _Optional[_Mapping[str, Matrix]] = ..., k: _Optional[int] = ..., fields: _Optional[_Iterable[str]] = ..., fusion: _Optional[str] = ..., filter_json: _Optional[str] = ..., params: _Optional[_Mapping[str, int]] = ..., omit_documents: _Optional[bool] = ..., weights: _Optional[_Mapping[str, float]] = ..., normalization: _Optional[str] = ..., sparse: _Optional[_Union[SparseMatrix, _Mapping]] = ..., field_sparse: _Optional[_Mapping[str, SparseMatrix]] = ..., field_queries: _Optional[_Mapping[str, FieldQueries]] = ..., tokens: _Optional[_Union[TokenMatrices, _Mapping]] = ..., codes: _Optional[_Union[CodeMatrix, _Mapping]] = ..., pipeline: _Optional[_Union[Pipeline, _Mapping]] = ..., pipeline_name: _Optional[str] = ...) -> None: ...

class Pipeline(_message.Message):
    __slots__ = ("prefetch", "fuse", "rerank")
    PREFETCH_FIELD_NUMBER: _ClassVar[int]
    FUSE_FIELD_NUMBER: _ClassVar[int]
    RERANK_FIELD_NUMBER: _ClassVar[int]
    prefetch: _containers.RepeatedCompositeFieldContainer[PrefetchStage]
    fuse: FuseStage
    rerank: _containers.RepeatedCompositeFieldContainer[RerankStage]
    def __init__(self, prefetch: _Optional[_Iterable[_Union[PrefetchStage, _Mapping]]] = ..., fuse: _Optional[_Union[FuseStage, _Mapping]] = ..., rerank: _Optional[_Iterable[_Union[RerankStage, _Mapping]]] = ...) -> None: ...

class PrefetchStage(_message.Message):
    __slots__ = ("field", "k", "params", "filter_json")
    class ParamsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    FIELD_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    FILTER_JSON_FIELD_NUMBER: _ClassVar[int]
    field: str
    k: int
    params: _containers.ScalarMap[str, int]
    filter_json: str
    def __init__(self, field: _Optional[str] = ..., k: _Optional[int] = ..., params: _Optional[_Mapping[str, int]] = ..., filter_json: _Optional[str] = ...) -> None: ...

class FuseStage(_message.Message):
    __slots__ = ("method", "weights", "normalization", "complete")
    class WeightsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    METHOD_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    NORMALIZATION_FIELD_NUMBER: _ClassVar[int]
    COMPLETE_FIELD_NUMBER: _ClassVar[int]
    method: str
    weights: _containers.ScalarMap[str, float]
    normalization: str
    complete: bool
    def __init__(self, method: _Optional[str] = ..., weights: _Optional[_Mapping[str, float]] = ..., normalization: _Optional[str] = ..., complete: _Optional[bool] = ...) -> None: ...

class RerankStage(_message.Message):
    __slots__ = ("field", "k")
    FIELD_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    field: str
    k: int
    def __init__(self, field: _Optional[str] = ..., k: _Optional[int] = ...) -> None: ...

class SearchResponse(_message.Message):
    __slots__ = ("offsets", "ids", "scores", "field_scores", "documents_json", "reasons", "missing_shards")
    class FieldScoresEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: bytes
        def __init__(self, key: _Optional[str] = ..., value: _Optional[bytes] = ...) -> None: ...
    OFFSETS_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    FIELD_SCORES_FIELD_NUMBER: _ClassVar[int]
    DOCUMENTS_JSON_FIELD_NUMBER: _ClassVar[int]
    REASONS_FIELD_NUMBER: _ClassVar[int]
    MISSING_SHARDS_FIELD_NUMBER: _ClassVar[int]
    offsets: _containers.RepeatedScalarFieldContainer[int]
    ids: _containers.RepeatedScalarFieldContainer[str]
    scores: bytes
    field_scores: _containers.ScalarMap[str, bytes]
    documents_json: _containers.RepeatedScalarFieldContainer[str]
    reasons: _containers.RepeatedScalarFieldContainer[str]
    missing_shards: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, offsets: _Optional[_Iterable[int]] = ..., ids: _Optional[_Iterable[str]] = ..., scores: _Optional[bytes] = ..., field_scores: _Optional[_Mapping[str, bytes]] = ..., documents_json: _Optional[_Iterable[str]] = ..., reasons: _Optional[_Iterable[str]] = ..., missing_shards: _Optional[_Iterable[str]] = ...) -> None: ...

class UpsertBatch(_message.Message):
    __slots__ = ("collection", "documents_json", "vectors", "sparse_vectors", "token_vectors")
    class VectorsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Matrix
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Matrix, _Mapping]] = ...) -> None: ...
    class SparseVectorsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: SparseMatrix
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[SparseMatrix, _Mapping]] = ...) -> None: ...
    class TokenVectorsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: TokenMatrices
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[TokenMatrices, _Mapping]] = ...) -> None: ...
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    DOCUMENTS_JSON_FIELD_NUMBER: _ClassVar[int]
    VECTORS_FIELD_NUMBER: _ClassVar[int]
    SPARSE_VECTORS_FIELD_NUMBER: _ClassVar[int]
    TOKEN_VECTORS_FIELD_NUMBER: _ClassVar[int]
    collection: str
    documents_json: _containers.RepeatedScalarFieldContainer[str]
    vectors: _containers.MessageMap[str, Matrix]
    sparse_vectors: _containers.MessageMap[str, SparseMatrix]
    token_vectors: _containers.MessageMap[str, TokenMatrices]
    def __init__(self, collection: _Optional[str] = ..., documents_json: _Optional[_Iterable[str]] = ..., vectors: _Optional[_Mapping[str, Matrix]] = ..., sparse_vectors: _Optional[_Mapping[str, SparseMatrix]] = ..., token_vectors: _Optional[_Mapping[str, TokenMatrices]] = ...) -> None: ...

class UpsertAck(_message.Message):
    __slots__ = ("batch", "upserted", "version")
    BATCH_FIELD_NUMBER: _ClassVar[int]
    UPSERTED_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    batch: int
    upserted: int
    version: int
    def __init__(self, batch: _Optional[int] = ..., upserted: _Optional[int] = ..., version: _Optional[int] = ...) -> None: ...

class DeleteRequest(_message.Message):
    __slots__ = ("collection", "ids")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    collection: str
    ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, collection: _Optional[str] = ..., ids: _Optional[_Iterable[str]] = ...) -> None: ...

class DeleteResponse(_message.Message):
    __slots__ = ("deleted", "version")
    DELETED_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    deleted: int
    version: int
    def __init__(self, deleted: _Optional[int] = ..., version: _Optional[int] = ...) -> None: ...

class ListCollectionsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListCollectionsResponse(_message.Message):
    __slots__ = ("names",)
    NAMES_FIELD_NUMBER: _ClassVar[int]
    names: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, names: _Optional[_Iterable[str]] = ...) -> None: ...

class GetCollectionRequest(_message.Message):
    __slots__ = ("collection",)
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    collection: str
    def __init__(self, collection: _Optional[str] = ...) -> None: ...

class CollectionInfo(_message.Message):
    __slots__ = ("name", "version", "documents", "rows", "deleted", "config_json", "info_json", "fields", "max_k", "max_batch", "max_candidates", "text_keys", "params")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DOCUMENTS_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    DELETED_FIELD_NUMBER: _ClassVar[int]
    CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    INFO_JSON_FIELD_NUMBER: _ClassVar[int]
    FIELDS_FIELD_NUMBER: _ClassVar[int]
    MAX_K_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_FIELD_NUMBER: _ClassVar[int]
    MAX_CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    TEXT_KEYS_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    documents: int
    rows: int
    deleted: int
    config_json: str
    info_json: str
    fields: _containers.RepeatedCompositeFieldContainer[FieldSchema]
    max_k: int
    max_batch: int
    max_candidates: int
    text_keys: _containers.RepeatedScalarFieldContainer[str]
    params: _containers.RepeatedCompositeFieldContainer[ParamRange]
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ..., documents: _Optional[int] = ..., rows: _Optional[int] = ..., deleted: _Optional[int] = ..., config_json: _Optional[str] = ..., info_json: _Optional[str] = ..., fields: _Optional[_Iterable[_Union[FieldSchema, _Mapping]]] = ..., max_k: _Optional[int] = ..., max_batch: _Optional[int] = ..., max_candidates: _Optional[int] = ..., text_keys: _Optional[_Iterable[str]] = ..., params: _Optional[_Iterable[_Union[ParamRange, _Mapping]]] = ...) -> None: ...

class FieldSchema(_message.Message):
    __slots__ = ("name", "kind", "model", "dim", "metric", "index", "source", "code_bytes", "query_inputs", "params")
    NAME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    CODE_BYTES_FIELD_NUMBER: _ClassVar[int]
    QUERY_INPUTS_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    name: str
    kind: str
    model: str
    dim: int
    metric: str
    index: str
    source: str
    code_bytes: int
    query_inputs: _containers.RepeatedScalarFieldContainer[str]
    params: _containers.RepeatedCompositeFieldContainer[ParamRange]
    def __init__(self, name: _Optional[str] = ..., kind: _Optional[str] = ..., model: _Optional[str] = ..., dim: _Optional[int] = ..., metric: _Optional[str] = ..., index: _Optional[str] = ..., source: _Optional[str] = ..., code_bytes: _Optional[int] = ..., query_inputs: _Optional[_Iterable[str]] = ..., params: _Optional[_Iterable[_Union[ParamRange, _Mapping]]] = ...) -> None: ...

class ParamRange(_message.Message):
    __slots__ = ("name", "low", "high", "depth")
    NAME_FIELD_NUMBER: _ClassVar[int]
    LOW_FIELD_NUMBER: _ClassVar[int]
    HIGH_FIELD_NUMBER: _ClassVar[int]
    DEPTH_FIELD_NUMBER: _ClassVar[int]
    name: str
    low: int
    high: int
    depth: bool
    def __init__(self, name: _Optional[str] = ..., low: _Optional[int] = ..., high: _Optional[int] = ..., depth: _Optional[bool] = ...) -> None: ...

class GenerateRequest(_message.Message):
    __slots__ = ("collection", "question", "k", "mode", "recompute_ratio", "max_new_tokens", "fields", "filter_json", "params")
    class ParamsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    QUESTION_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    RECOMPUTE_RATIO_FIELD_NUMBER: _ClassVar[int]
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    FIELDS_FIELD_NUMBER: _ClassVar[int]
    FILTER_JSON_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    collection: str
    question: str
    k: int
    mode: str
    recompute_ratio: float
    max_new_tokens: int
    fields: _containers.RepeatedScalarFieldContainer[str]
    filter_json: str
    params: _containers.ScalarMap[str, int]
    def __init__(self, collection: _Optional[str] = ..., question: _Optional[str] = ..., k: _Optional[int] = ..., mode: _Optional[str] = ..., recompute_ratio: _Optional[float] = ..., max_new_tokens: _Optional[int] = ..., fields: _Optional[_Iterable[str]] = ..., filter_json: _Optional[str] = ..., params: _Optional[_Mapping[str, int]] = ...) -> None: ...

class GenerateChunk(_message.Message):
    __slots__ = ("text", "stats_json")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    STATS_JSON_FIELD_NUMBER: _ClassVar[int]
    text: str
    stats_json: str
    def __init__(self, text: _Optional[str] = ..., stats_json: _Optional[str] = ...) -> None: ...

class GetDocumentsRequest(_message.Message):
    __slots__ = ("collection", "ids")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    collection: str
    ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, collection: _Optional[str] = ..., ids: _Optional[_Iterable[str]] = ...) -> None: ...

class GetDocumentsResponse(_message.Message):
    __slots__ = ("documents_json", "missing")
    DOCUMENTS_JSON_FIELD_NUMBER: _ClassVar[int]
    MISSING_FIELD_NUMBER: _ClassVar[int]
    documents_json: _containers.RepeatedScalarFieldContainer[str]
    missing: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, documents_json: _Optional[_Iterable[str]] = ..., missing: _Optional[_Iterable[str]] = ...) -> None: ...

class CountRequest(_message.Message):
    __slots__ = ("collection", "filter_json")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    FILTER_JSON_FIELD_NUMBER: _ClassVar[int]
    collection: str
    filter_json: str
    def __init__(self, collection: _Optional[str] = ..., filter_json: _Optional[str] = ...) -> None: ...

class CountResponse(_message.Message):
    __slots__ = ("count",)
    COUNT_FIELD_NUMBER: _ClassVar[int]
    count: int
    def __init__(self, count: _Optional[int] = ...) -> None: ...

class ScrollRequest(_message.Message):
    __slots__ = ("collection", "filter_json", "limit", "after")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    FILTER_JSON_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    AFTER_FIELD_NUMBER: _ClassVar[int]
    collection: str
    filter_json: str
    limit: int
    after: str
    def __init__(self, collection: _Optional[str] = ..., filter_json: _Optional[str] = ..., limit: _Optional[int] = ..., after: _Optional[str] = ...) -> None: ...

class ScrollResponse(_message.Message):
    __slots__ = ("documents_json", "next_after")
    DOCUMENTS_JSON_FIELD_NUMBER: _ClassVar[int]
    NEXT_AFTER_FIELD_NUMBER: _ClassVar[int]
    documents_json: _containers.RepeatedScalarFieldContainer[str]
    next_after: str
    def __init__(self, documents_json: _Optional[_Iterable[str]] = ..., next_after: _Optional[str] = ...) -> None: ...

class CreateCollectionRequest(_message.Message):
    __slots__ = ("config_toml", "config_json")
    CONFIG_TOML_FIELD_NUMBER: _ClassVar[int]
    CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    config_toml: str
    config_json: str
    def __init__(self, config_toml: _Optional[str] = ..., config_json: _Optional[str] = ...) -> None: ...

class DropCollectionRequest(_message.Message):
    __slots__ = ("collection",)
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    collection: str
    def __init__(self, collection: _Optional[str] = ...) -> None: ...

class DropCollectionResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SavePipelineRequest(_message.Message):
    __slots__ = ("collection", "name", "pipeline", "make_default")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    PIPELINE_FIELD_NUMBER: _ClassVar[int]
    MAKE_DEFAULT_FIELD_NUMBER: _ClassVar[int]
    collection: str
    name: str
    pipeline: Pipeline
    make_default: bool
    def __init__(self, collection: _Optional[str] = ..., name: _Optional[str] = ..., pipeline: _Optional[_Union[Pipeline, _Mapping]] = ..., make_default: _Optional[bool] = ...) -> None: ...

class SavePipelineResponse(_message.Message):
    __slots__ = ("version",)
    VERSION_FIELD_NUMBER: _ClassVar[int]
    version: int
    def __init__(self, version: _Optional[int] = ...) -> None: ...

class SnapshotRequest(_message.Message):
    __slots__ = ("collection",)
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    collection: str
    def __init__(self, collection: _Optional[str] = ...) -> None: ...

class SnapshotChunk(_message.Message):
    __slots__ = ("data", "version")
    DATA_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    version: int
    def __init__(self, data: _Optional[bytes] = ..., version: _Optional[int] = ...) -> None: ...

class RestoreChunk(_message.Message):
    __slots__ = ("collection", "data")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    collection: str
    data: bytes
    def __init__(self, collection: _Optional[str] = ..., data: _Optional[bytes] = ...) -> None: ...
