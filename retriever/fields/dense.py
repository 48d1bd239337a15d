"""The `dense` kind: one vector per document in a faiss index (or SPANN), float vectors kept on
disk for exact re-scoring of an approximate index's candidates."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np

from retriever.errors import CorruptIndex, InvalidConfig, InvalidRequest
from retriever.index import storage
from retriever.index.faiss_index import FaissIndex
from retriever.index.vectors import VectorStore
from retriever.kernels import cpu

from .base import FieldConfig, check_choice, check_int, recall_probe
from .spann import SpannVectors, is_spann, spann_params

METRICS = ("ip", "l2")
SEARCH_PARAMS = ("nprobe", "efSearch")  # settable per field in the config's `search` table


@dataclass(frozen=True)
class DenseConfig(FieldConfig):
    """`model` names a sentence-transformers model (or a path); leave it out to bring your own
    vectors, in which case `dim` is required. `index` is a faiss factory string (or SPANN...).
    `rescore` > 0 re-scores that many candidates exactly with the float vectors kept on disk."""

    dim: int | None = None
    index: str = "Flat"
    metric: str = "ip"
    normalize: bool = True
    rescore: int | None = None
    train_size: int = 65_536
    search: Mapping[str, int] = field(default_factory=dict)

    def check(self) -> None:
        check_choice(self.where, "metric", self.metric, METRICS)
        if self.model is None and self.dim is None:
            raise InvalidConfig(f"{self.where}: give a `model` to encode text, or a `dim` to bring your own vectors")
        if self.rescore is None:
            object.__setattr__(self, "rescore", 0)
        check_vector_keys(self, "'Flat' or 'IVF1024,PQ48'")


def check_vector_keys(config, example: str) -> None:
    """Keys dense and binary fields share: dim, rescore depth, training sample, index, search parameters."""
    where = config.where
    check_int(where, "dim", config.dim, low=1, optional=True)
    check_int(where, "rescore", config.rescore, low=0)
    check_int(where, "train_size", config.train_size, low=1)
    if not isinstance(config.index, str) or not config.index.strip():
        raise InvalidConfig(f"{where}: index must be a faiss factory string such as {example}")
    unknown = set(config.search) - set(SEARCH_PARAMS)
    if unknown:
        raise InvalidConfig(f"{where}: unknown search parameter(s) {sorted(unknown)}; known: {list(SEARCH_PARAMS)}")
    for key, value in config.search.items():
        check_int(where, f"search.{key}", value, low=1)
    object.__setattr__(config, "search", dict(config.search))


class DenseKind:
    name = "dense"
    config = DenseConfig
    request_params = {"nprobe": 1, "efSearch": 1, "rescore": 0, "prune_pct": 0}
    vector_input = True

    def has_encoder(self, config: DenseConfig) -> bool:
        return config.model is not None

    def make_encoder(self, config: DenseConfig):
        from retriever.encoders.dense import DenseEncoder

        return DenseEncoder(config.model, batch_size=config.batch_size, max_length=config.max_length, normalize=config.normalize)

    def initial_size(self, config: DenseConfig) -> int:
        return config.dim if config.dim is not None else self.make_encoder(config).dim

    def create(self, path, config: DenseConfig, dim: int) -> tuple[dict[str, Any], dict[str, Any]]:
        return DenseField.empty_entry(path, config, dim)

    def open(self, path, config: DenseConfig, entry, files, num_rows: int) -> "DenseField":
        return DenseField.open(path, config, entry, files, num_rows)


DENSE = DenseKind()


@dataclass(frozen=True)
class DenseField:
    config: DenseConfig
    dim: int
    index: FaissIndex | SpannVectors
    vectors: VectorStore
    entry: dict[str, Any]  # this version's manifest entry

    def search(
        self, queries: np.ndarray, k: int, params: Mapping[str, int], allowed: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """queries [B, D] -> (scores [B, k], rows [B, k]); the top `rescore` candidates of an
        approximate index are re-scored exactly with the stored float vectors."""
        if self.config.search:
            params = {**self.config.search, **params}
        rescore = int(params.get("rescore", self.config.rescore))
        if rescore == 0 or self.index.exact:
            return self.index.search(queries, k, params, allowed)
        scores, rows = self.index.search(queries, max(k, rescore), params, allowed)
        exact = cpu.rescore(queries, self.vectors.gather(rows), rows >= 0, self.config.metric)  # [B, C]
        return cpu.top_k_rows(exact, rows, k)

    @classmethod
    def empty_entry(cls, path, config: DenseConfig, dim: int) -> tuple[dict[str, Any], dict[str, Any]]:
        if is_spann(config.index):
            spann_params(config.index, config.metric)  # a bad factory string fails at create
            return {"dim": dim, "index": None, "spann": None, "vectors": []}, {}
        name = f"{config.name}.index-{1:06d}.faiss"
        files = {name: storage.write_new_file(path, name, FaissIndex(config.index, dim, config.metric).to_bytes())}
        return {"dim": dim, "index": name, "vectors": []}, files

    @classmethod
    def open(cls, path, config: DenseConfig, entry: dict[str, Any], files: dict[str, Any], num_rows: int) -> "DenseField":
        vectors = VectorStore([storage.open_npy_verified(path, n, files[n]) for n in entry["vectors"]], entry["dim"])
        if is_spann(config.index):
            index = SpannVectors.open(path, entry, vectors, config.metric)
        else:
            index = FaissIndex.from_bytes(storage.read_verified(path, entry["index"], files[entry["index"]]), config.index, entry["dim"], config.metric)
            index.use_gpu()
        if index.ntotal != num_rows or len(vectors) != num_rows:
            raise CorruptIndex(f"field {config.name!r} holds {index.ntotal} indexed / {len(vectors)} stored vectors for {num_rows} documents")
        return cls(config, entry["dim"], index, vectors, entry)

    def info(self) -> dict[str, Any]:
        c = self.config
        return {"kind": c.kind, "model": c.model, "dim": self.dim, "index": c.index, "metric": c.metric,
                "rescore": c.rescore, "ntotal": self.index.ntotal}

    def documents_from_texts(self, encoder, texts: list[str], progress: bool = False) -> np.ndarray:
        return self.check_documents(encoder.encode(texts, progress=progress), len(texts))

    def check_documents(self, given, count: int) -> np.ndarray:
        return check_vectors(self, given, count, "document")

    def queries_from_texts(self, encoder, texts: list[str], params: Mapping[str, int]) -> np.ndarray:
        return encoder.encode(texts)

    def check_queries(self, given) -> np.ndarray:
        return check_query_vectors(self, given)

    def unmatchable(self, queries: np.ndarray) -> None:
        return None

    def probe(self, rows: np.ndarray, deleted: np.ndarray, k: int, min_recall: float):
        return recall_probe(self, self.vectors.to_array(), self.config.metric, self.index.exact, rows, deleted, k, min_recall)

    def prepare(self, vectors: np.ndarray, first_row: int, deleted: np.ndarray) -> "PendingVectors":
        if isinstance(self.index, SpannVectors):  # built from the stored vectors once they are written
            return PendingVectors(self, vectors, self.index, deleted)
        return PendingVectors(self, vectors, index_with(self.index, vectors, self.config.train_size), deleted)


@dataclass(frozen=True)
class PendingVectors:
    """New vectors and the index that holds them, written at commit time."""

    field: DenseField
    vectors: np.ndarray
    index: FaissIndex | SpannVectors
    deleted: np.ndarray

    def write(self, path, version: int, num_rows: int) -> tuple[dict[str, Any], dict[str, Any], Callable[[], DenseField]]:
        """Write the new files -> (manifest entry, {file: size and checksum}, the field's state at
        the new version, made only once that version is published)."""
        config = self.field.config
        vname = f"{config.name}.vectors-{version:06d}.npy"
        files = {vname: storage.write_new_file(path, vname, storage.npy_bytes(self.vectors))}
        entry = {**self.field.entry, "vectors": [*self.field.entry["vectors"], vname]}
        stored = VectorStore([*self.field.vectors.segments, np.load(path / vname, mmap_mode="r")], self.field.dim)
        index = self.index
        if isinstance(index, SpannVectors):
            index, entry["spann"] = index.refreshed(path, version, config.name, stored, self.deleted, config.index, entry["spann"])
        else:
            iname = f"{config.name}.index-{version:06d}.faiss"
            files[iname] = storage.write_new_file(path, iname, index.to_bytes())
            entry["index"] = iname
        return entry, files, functools.partial(DenseField, config, self.field.dim, index, stored, entry)


def check_query_vectors(field, given) -> np.ndarray:
    """A query vector [D] or matrix [B, D] for a field with `config` and `dim`, checked as `check_vectors`."""
    try:
        array = np.ascontiguousarray(given, dtype=np.float32)
    except (TypeError, ValueError):
        raise InvalidRequest(f"query vectors for field {field.config.name!r} are not numeric") from None
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2 or array.shape[0] == 0:
        raise InvalidRequest(f"query vectors for field {field.config.name!r} must have shape [batch, {field.dim}], got {array.shape}")
    return check_vectors(field, array, array.shape[0], "query")


def check_vectors(field, vectors, count: int, what: str) -> np.ndarray:
    """Float32 [count, dim] vectors, normalized when the field asks; clear errors otherwise."""
    array = np.ascontiguousarray(vectors, dtype=np.float32)
    if array.ndim != 2 or array.shape[1] != field.dim:
        raise InvalidRequest(f"{what} vectors for field {field.config.name!r} must have dimension {field.dim}, got shape {array.shape}")
    if array.shape[0] != count:
        raise InvalidRequest(f"{count} {what}s but {array.shape[0]} vectors for field {field.config.name!r}")
    squared = np.vecdot(array, array)  # [N]; NaN/inf in a row makes its sum non-finite
    if not (squared.min() > 0 and squared.sum() < np.inf):  # NaN fails both comparisons
        _explain_bad_vectors(field, array, what)
    return array / np.sqrt(squared)[:, None] if field.config.normalize else array


def _explain_bad_vectors(field, array: np.ndarray, what: str) -> None:
    if array.shape[0] == 0:
        return
    finite = np.isfinite(array).all(axis=1)
    if not finite.all():
        raise InvalidRequest(f"{what} vector {int(np.flatnonzero(~finite)[0])} for field {field.config.name!r} contains NaN or inf")
    if field.config.normalize and not array.any(axis=1).all():
        raise InvalidRequest(f"a {what} vector for field {field.config.name!r} is all zeros and cannot be normalized")
    if not np.isfinite(np.linalg.norm(array.astype(np.float64), axis=1)).all():
        raise InvalidRequest(f"a {what} vector for field {field.config.name!r} has values too large for float32 arithmetic")


def index_with(index: FaissIndex, vectors: np.ndarray, train_size: int) -> FaissIndex:
    """A copy of `index` holding these vectors [N, D] too, trained on a sample first if needed
    (the original is left unchanged for pinned readers)."""
    extended = index.clone()
    if not extended.cpu_index.is_trained:
        extended.train(training_sample(vectors, train_size))
    extended.add(vectors)
    extended.use_gpu()
    return extended


def training_sample(vectors: np.ndarray, size: int, seed: int = 0) -> np.ndarray:
    """At most `size` rows drawn without replacement (seeded, so builds are reproducible)."""
    if len(vectors) <= size:
        return vectors
    rows = np.sort(np.random.default_rng(seed).choice(len(vectors), size=size, replace=False))
    return vectors[rows]
