"""Collection and field configuration: frozen dataclasses read from TOML and validated on construction."""

from __future__ import annotations

import dataclasses
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .errors import InvalidConfig, NotFound

FIELD_KINDS = ("dense", "bm25", "sparse", "multivector", "binary")
METRICS = ("ip", "l2")
DEFAULT_SPARSE_MODEL = "splade-tiny"
BM25_VARIANTS = ("lucene", "robertson", "atire", "bm25l", "bm25+")
SPARSE_QUERY_MODES = ("model", "inference-free")
SPARSE_QUERY_WEIGHTS = ("idf", "faster-clip")
# Keys that only some kinds take; the rest (name, kind, model, batch_size, max_length) apply to all.
KIND_KEYS = {
    "dense": {"dim", "index", "metric", "normalize", "rescore", "train_size", "search"},
    "bm25": {"variant", "k1", "b", "delta", "stopwords", "stemmer"},
    "sparse": {"dim", "query", "query_weights", "top_terms", "min_weight"},
    "multivector": {"dim", "index", "train_size", "search", "fde", "token_dim", "skip_special", "skip_punctuation",
                    "query_max_length", "query_prefix", "document_prefix", "rerank", "token_dtype", "max_fde_dim"},
    "binary": {"dim", "normalize", "source", "method", "bits", "code_dim", "index", "scoring", "rescore", "rescore_dtype",
               "train_size", "search", "seed"},
}
BINARY_METHODS = ("sign", "itq", "recurrent")
BINARY_SCORINGS = ("hamming", "sdc", "asymmetric")
RESCORE_DTYPES = ("float32", "int8")
DEFAULT_BINARY_RESCORE = 100
FDE_KEYS = ("repetitions", "simhash_bits", "projection_dim", "fill_empty_partitions", "final_dim", "seed")
TOKEN_DTYPES = ("float16", "int8")
SEARCH_PARAMS = ("nprobe", "efSearch")
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_\-]{0,63}$")


def check_name(name: object, what: str = "collection name") -> str:
    """`name` if it is a safe identifier (no path separators, dots, NUL or control characters)."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidConfig(f"{what} {name!r} must start with a letter and use only letters, digits, _ or - (at most 64)")
    return name


@dataclass(frozen=True)
class FieldConfig:
    """One searchable field of a collection.

    `model` names a sentence-transformers model (or a path); leave it out to bring your own
    vectors, in which case `dim` is required. `index` is a faiss factory string.
    `rescore` > 0 re-scores that many candidates exactly with the float vectors kept on disk
    (default 0 for dense fields, 100 for binary ones).

    `bm25` fields tokenize text (`stopwords` "en" or "", `stemmer` a Snowball language or "") and
    score with `variant` (lucene, robertson, atire, bm25l, bm25+) and `k1`, `b`, `delta`.
    `sparse` fields hold learned term weights from a masked-LM `model` (default splade-tiny), or
    your own vectors over `dim` terms; documents keep their `top_terms` strongest terms above
    `min_weight`; `query` is "model" (encode queries too) or "inference-free" (tokenize only and
    weight each term by `query_weights`: "idf" from the collection, or the "faster-clip" table).
    `binary` fields binarize the vectors of the dense field named by `source` (or of their own
    `model` / `dim`) with `method` (sign, itq, recurrent) into `bits` (1-4) steps of `code_dim`
    bits each, trained on the first batch added; `scoring` is "hamming", "sdc" (symmetric, the
    query binarized too) or "asymmetric" (float query), by default hamming for 1 bit and sdc
    above; `index` is Flat or a faiss binary index (IVF{n}, HNSW{M}); candidates are re-scored
    with vectors kept on disk as `rescore_dtype` (float32 or int8).
    """

    name: str
    kind: str = "dense"
    model: str | None = None
    dim: int | None = None
    index: str = "Flat"
    metric: str = "ip"
    normalize: bool = True
    rescore: int | None = None
    train_size: int = 65_536
    batch_size: int = 64
    max_length: int | None = None
    search: Mapping[str, int] = field(default_factory=dict)
    variant: str = "lucene"
    k1: float = 1.2
    b: float = 0.75
    delta: float | None = None
    stopwords: str = "en"
    stemmer: str = "english"
    query: str = "model"
    query_weights: str = "idf"
    top_terms: int | None = 256
    min_weight: float = 0.0
    fde: Mapping[str, Any] = field(default_factory=dict)
    token_dim: int | None = None
    skip_special: bool = True
    skip_punctuation: bool = True
    query_max_length: int = 32
    query_prefix: str = ""
    document_prefix: str = ""
    rerank: int = 100
    token_dtype: str = "float16"
    max_fde_dim: int = 65_536
    source: str | None = None
    method: str = "recurrent"
    bits: int = 1
    code_dim: int | None = None
    scoring: str | None = None
    rescore_dtype: str = "float32"
    seed: int = 0

    def __post_init__(self) -> None:
        where = f"field {self.name!r}"
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise InvalidConfig(f"field name {self.name!r} must start with a letter and use letters, digits, _ or -")
        if self.kind not in FIELD_KINDS:
            raise InvalidConfig(f"{where}: kind {self.kind!r} is not supported (supported: {', '.join(FIELD_KINDS)})")
        _check_int(where, "batch_size", self.batch_size, low=1)
        _check_int(where, "max_length", self.max_length, low=1, optional=True)
        if self.kind == "bm25":
            self._check_bm25(where)
        elif self.kind == "sparse":
            self._check_sparse(where)
        elif self.kind == "multivector":
            self._check_multivector(where)
        elif self.kind == "binary":
            self._check_binary(where)
        else:
            self._check_dense(where)

    def _check_bm25(self, where: str) -> None:
        if self.variant not in BM25_VARIANTS:
            raise InvalidConfig(f"{where}: variant {self.variant!r} is not one of {BM25_VARIANTS}")
        for key, low, high in (("k1", 0.0, 100.0), ("b", 0.0, 1.0), ("delta", 0.0, 100.0)):
            value = getattr(self, key)
            if value is None and key == "delta":
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
                raise InvalidConfig(f"{where}: {key} must be a number from {low} to {high}, got {value!r}")
        if self.stopwords not in ("", "en"):
            raise InvalidConfig(f"{where}: stopwords must be 'en' or '' (none), got {self.stopwords!r}")
        if self.stemmer:
            import Stemmer

            if self.stemmer not in Stemmer.algorithms():
                raise InvalidConfig(f"{where}: stemmer {self.stemmer!r} is not one of {Stemmer.algorithms()} (or '' for none)")

    def _check_sparse(self, where: str) -> None:
        if self.model is None and self.dim is None:
            object.__setattr__(self, "model", DEFAULT_SPARSE_MODEL)
        _check_int(where, "dim", self.dim, low=1, optional=True)
        _check_int(where, "top_terms", self.top_terms, low=1, optional=True)
        if self.query not in SPARSE_QUERY_MODES:
            raise InvalidConfig(f"{where}: query must be one of {SPARSE_QUERY_MODES}, got {self.query!r}")
        if self.query_weights not in SPARSE_QUERY_WEIGHTS:
            raise InvalidConfig(f"{where}: query_weights must be one of {SPARSE_QUERY_WEIGHTS}, got {self.query_weights!r}")
        if isinstance(self.min_weight, bool) or not isinstance(self.min_weight, (int, float)) or not self.min_weight >= 0:
            raise InvalidConfig(f"{where}: min_weight must be a number >= 0, got {self.min_weight!r}")

    def _check_multivector(self, where: str) -> None:
        if self.model is None and self.dim is None:
            raise InvalidConfig(f"{where}: give a sentence-transformers `model` for token vectors, or `dim` to bring your own")
        for key, low in (("dim", 1), ("token_dim", 1), ("query_max_length", 1), ("rerank", 1), ("max_fde_dim", 1), ("train_size", 1)):
            _check_int(where, key, getattr(self, key), low=low, optional=key in ("dim", "token_dim"))
        if self.token_dtype not in TOKEN_DTYPES:
            raise InvalidConfig(f"{where}: token_dtype must be one of {TOKEN_DTYPES}, got {self.token_dtype!r}")
        unknown = sorted(set(self.fde) - set(FDE_KEYS))
        if unknown:
            raise InvalidConfig(f"{where}: unknown fde setting(s) {unknown}; known: {list(FDE_KEYS)}")
        from retriever.index.fde import FdeConfig

        try:
            fde = FdeConfig(**self.fde)
        except ValueError as e:
            raise InvalidConfig(f"{where}: {e}") from None
        width = self.token_dim or self.dim
        if width is not None and fde.dimension(width) > self.max_fde_dim:
            raise InvalidConfig(f"{where}: the FDE would have {fde.dimension(width)} dimensions, over max_fde_dim = {self.max_fde_dim}; "
                                "lower repetitions, simhash_bits or projection_dim, or set fde.final_dim")
        if not isinstance(self.index, str) or not self.index.strip():
            raise InvalidConfig(f"{where}: index must be a faiss factory string such as 'Flat' or 'HNSW32'")
        object.__setattr__(self, "fde", dict(self.fde))
        object.__setattr__(self, "search", dict(self.search))

    def _check_binary(self, where: str) -> None:
        if self.source is not None and (self.model is not None or self.dim is not None):
            raise InvalidConfig(f"{where}: a binary field takes its vectors from `source` {self.source!r}, or from its own `model` / `dim`, not both")
        if self.source is None and self.model is None and self.dim is None:
            raise InvalidConfig(f"{where}: give `source` (a dense field of this collection), a `model`, or a `dim` to bring your own vectors")
        if self.method not in BINARY_METHODS:
            raise InvalidConfig(f"{where}: method {self.method!r} is not one of {BINARY_METHODS}")
        if isinstance(self.bits, bool) or not isinstance(self.bits, int) or not 1 <= self.bits <= 4:
            raise InvalidConfig(f"{where}: bits must be an integer from 1 to 4 (binarization steps per dimension), got {self.bits!r}")
        _check_int(where, "code_dim", self.code_dim, low=8, optional=True)
        if self.code_dim is not None and self.code_dim % 8:
            raise InvalidConfig(f"{where}: code_dim must be a multiple of 8 (codes are packed in bytes), got {self.code_dim}")
        if self.scoring is None:
            object.__setattr__(self, "scoring", "hamming" if self.bits == 1 else "sdc")
        if self.scoring not in BINARY_SCORINGS:
            raise InvalidConfig(f"{where}: scoring {self.scoring!r} is not one of {BINARY_SCORINGS}")
        if self.rescore_dtype not in RESCORE_DTYPES:
            raise InvalidConfig(f"{where}: rescore_dtype must be one of {RESCORE_DTYPES}, got {self.rescore_dtype!r}")
        if self.rescore is None:
            object.__setattr__(self, "rescore", DEFAULT_BINARY_RESCORE)
        _check_int(where, "seed", self.seed, low=0)
        self._check_vector_source(where)

    def _check_dense(self, where: str) -> None:
        if self.metric not in METRICS:
            raise InvalidConfig(f"{where}: metric {self.metric!r} is not one of {METRICS}")
        if self.model is None and self.dim is None:
            raise InvalidConfig(f"{where}: give a `model` to encode text, or a `dim` to bring your own vectors")
        if self.rescore is None:
            object.__setattr__(self, "rescore", 0)
        self._check_vector_source(where)

    def _check_vector_source(self, where: str) -> None:
        """Keys dense and binary fields share: dim, rescore depth, training sample, index, search parameters."""
        _check_int(where, "dim", self.dim, low=1, optional=True)
        _check_int(where, "rescore", self.rescore, low=0)
        _check_int(where, "train_size", self.train_size, low=1)
        if not isinstance(self.index, str) or not self.index.strip():
            raise InvalidConfig(f"{where}: index must be a faiss factory string such as 'Flat' or 'IVF1024,PQ48'")
        unknown = set(self.search) - set(SEARCH_PARAMS)
        if unknown:
            raise InvalidConfig(f"{where}: unknown search parameter(s) {sorted(unknown)}; known: {list(SEARCH_PARAMS)}")
        for key, value in self.search.items():
            _check_int(where, f"search.{key}", value, low=1)
        object.__setattr__(self, "search", dict(self.search))


@dataclass(frozen=True)
class CollectionConfig:
    """A collection: its name, its fields, which document keys are encoded, and request limits."""

    name: str
    fields: tuple[FieldConfig, ...]
    text_keys: tuple[str, ...] = ("title", "text")
    max_k: int = 1000
    max_batch: int = 1024

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise InvalidConfig(f"collection name {self.name!r} must start with a letter and use letters, digits, _ or -")
        if not self.fields:
            raise InvalidConfig(f"collection {self.name!r} has no fields; add at least one [[fields]] table")
        names = [f.name for f in self.fields]
        if len(set(names)) != len(names):
            raise InvalidConfig(f"collection {self.name!r} has duplicate field names: {names}")
        for f in self.fields:
            if f.kind == "binary" and f.source is not None:
                source = next((s for s in self.fields if s.name == f.source), None)
                if source is None or source.kind != "dense":
                    raise InvalidConfig(f"binary field {f.name!r}: source {f.source!r} is not a dense field of collection {self.name!r}")
                if source.metric != "ip":
                    raise InvalidConfig(f"binary field {f.name!r}: codes rank by inner product, but source {f.source!r} uses metric {source.metric!r}")
        _check_int("collection", "max_k", self.max_k, low=1)
        _check_int("collection", "max_batch", self.max_batch, low=1)
        object.__setattr__(self, "fields", tuple(self.fields))
        object.__setattr__(self, "text_keys", tuple(self.text_keys))

    def field(self, name: str | None = None) -> FieldConfig:
        """The named field, or the first one when `name` is None."""
        if name is None:
            return self.fields[0]
        for f in self.fields:
            if f.name == name:
                return f
        raise NotFound(f"unknown field {name!r} in collection {self.name!r}; fields: {[f.name for f in self.fields]}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "CollectionConfig":
        data = dict(data)
        _reject_unknown("collection", data, cls)
        fields = data.pop("fields", None)
        if not isinstance(fields, list):
            raise InvalidConfig("collection config needs a list of [[fields]] tables")
        parsed = []
        for i, raw in enumerate(fields):
            if not isinstance(raw, Mapping):
                raise InvalidConfig(f"fields[{i}] must be a table")
            _reject_unknown(f"fields[{i}] ({raw.get('name', '?')})", raw, FieldConfig)
            _reject_other_kinds(f"fields[{i}] ({raw.get('name', '?')})", raw)
            try:
                parsed.append(FieldConfig(**raw))
            except TypeError as e:  # missing `name`
                raise InvalidConfig(f"fields[{i}]: {e}") from None
        try:
            return cls(fields=tuple(parsed), **data)
        except TypeError as e:
            raise InvalidConfig(f"collection config: {e}") from None

    @classmethod
    def from_toml(cls, path: str | Path) -> "CollectionConfig":
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise InvalidConfig(f"config file {str(path)!r} does not exist") from None
        except tomllib.TOMLDecodeError as e:
            raise InvalidConfig(f"config file {str(path)!r} is not valid TOML: {e}") from None
        return cls.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        """Plain data for the manifest; `from_dict(to_dict())` gives an equal config."""
        out = dataclasses.asdict(self)
        out["text_keys"] = list(self.text_keys)
        out["fields"] = [_own_keys(f) for f in out["fields"]]
        return out


def _own_keys(field_dict: dict[str, Any]) -> dict[str, Any]:
    """The keys that mean something for this field's kind, None values left out."""
    others = set().union(*KIND_KEYS.values()) - KIND_KEYS[field_dict["kind"]]
    return {k: v for k, v in field_dict.items() if v is not None and k not in others}


def _reject_other_kinds(where: str, raw: Mapping[str, Any]) -> None:
    kind = raw.get("kind", "dense")
    if kind not in KIND_KEYS:
        return  # FieldConfig names the bad kind
    foreign = sorted(set(raw) & (set().union(*KIND_KEYS.values()) - KIND_KEYS[kind]))
    if foreign:
        raise InvalidConfig(f"{where}: key(s) {foreign} do not apply to a {kind!r} field")


def _reject_unknown(where: str, data: Mapping[str, Any], cls: type) -> None:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise InvalidConfig(f"{where}: unknown key(s) {unknown}; known keys: {sorted(known)}")


def _check_int(where: str, key: str, value: Any, *, low: int, optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise InvalidConfig(f"{where}: {key} must be an integer >= {low}, got {value!r}")
