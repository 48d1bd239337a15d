"""The `dense` kind: one vector per document in a faiss index (or SPANN), float vectors kept on
disk for exact re-scoring of an approximate index's candidates."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field, replace
from typing import Any, Mapping

import numpy as np

from retriever.errors import CorruptIndex, InvalidConfig, InvalidRequest
from retriever.index import jpq, storage
from retriever.index.faiss_index import FaissIndex
from retriever.index.flat import FlatVectors
from retriever.index.vectors import VectorStore
from retriever.kernels import cpu
from retriever.kernels import vectors as vectors_kernels

from . import parts as parts_module
from .base import (
    FieldConfig,
    ModelKind,
    Param,
    SegmentView,
    check_choice,
    check_int,
    check_number,
    depth,
    merge_top_k,
    recall_probe,
    shape_words,
)
from .spann import SpannVectors, is_spann, spann_params

METRICS = ("ip", "l2")
SMALL_PART = 4096  # exact parts smaller than this are scanned together (`DenseField._scans`)
SEARCH_PARAMS = ("nprobe", "efSearch")  # settable per field in the config's `search` table
PQ_RESCORE = 100  # candidates re-scored by default when the index stores PQ codes


@dataclass(frozen=True)
class DenseConfig(FieldConfig):
    """`model` names a sentence-transformers model (or a path); leave it out to bring your own
    vectors, in which case `dim` is required. `index` is a faiss factory string (or SPANN...).
    `rescore` > 0 re-scores that many candidates exactly with the float vectors kept on disk (on
    by default for PQ codes). Each segment's IVF nprobe or HNSW efSearch is chosen when its
    index is built, as the smallest reaching `target_recall` against exact search; `search`
    sets them for every segment instead."""

    dim: int | None = None
    index: str = "Flat"
    metric: str = "ip"
    normalize: bool = True
    rescore: int | None = None
    train_size: int = 65_536
    search: Mapping[str, int] = field(default_factory=dict)
    target_recall: float = 0.95

    def check(self) -> None:
        check_choice(self.where, "metric", self.metric, METRICS)
        if self.model is None and self.dim is None:
            raise InvalidConfig(
                f"{self.where}: give a `model` to encode text, or a `dim` to bring your own vectors"
            )
        if self.rescore is None:  # PQ codes alone lose too much: re-score their best candidates
            object.__setattr__(self, "rescore", PQ_RESCORE if "PQ" in str(self.index).upper() else 0)
        check_number(self.where, "target_recall", self.target_recall, low=0.0, high=1.0)
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
        raise InvalidConfig(
            f"{where}: unknown search parameter(s) {sorted(unknown)}; known: {list(SEARCH_PARAMS)}"
        )
    for key, value in config.search.items():
        check_int(where, f"search.{key}", value, low=1)
    object.__setattr__(config, "search", dict(config.search))


class DenseKind(ModelKind):
    name = "dense"
    config = DenseConfig
    request_params = {"nprobe": depth(1), "efSearch": depth(1), "rescore": depth(0), "prune_pct": Param(0)}
    vector_input = True
    collection_statistics = False
    query_inputs = ("vectors",)

    def encode_queries(self, config: DenseConfig, encoder, texts: list[str], params: Mapping[str, int]):
        return encoder.encode(texts)

    def make_encoder(self, config: DenseConfig):
        from retriever.encoders.dense import DenseEncoder

        return DenseEncoder(
            config.model,
            batch_size=config.batch_size,
            max_length=config.max_length,
            normalize=config.normalize,
        )

    def create(self, path, config: DenseConfig, dim: int) -> tuple[dict[str, Any], dict[str, Any]]:
        if is_spann(config.index):
            spann_params(config.index, config.metric)  # a bad factory string fails at create
        else:
            FaissIndex(config.index, dim, config.metric)  # likewise
        return {"dim": dim}, {}

    def open(
        self, path, config: DenseConfig, shared, files, segments: list[SegmentView], reuse
    ) -> "DenseField":
        dim = shared["dim"]
        ranking = None
        if shared.get("pq_training"):  # labelled queries every PQ index of the field trains on
            name = shared["pq_training"]
            ranking = jpq.RankingSet.from_bytes(storage.read_verified(path, name, files[name]))
        if "vectors" in shared:  # storage format 1: one index over every row, vectors per commit
            return DenseField(config, dim, [_legacy_part(path, config, shared, files)], shared, [""])
        parts = []
        for segment in segments:
            if segment.name in reuse:
                parts.append(reuse[segment.name])
                continue
            vectors = VectorStore(
                [storage.open_npy_verified(path, segment.entry["vectors"], files[segment.entry["vectors"]])],
                dim,
            )
            index = parts_module.open_index(path, segment.entry, files, vectors, config.metric)
            if index.ntotal != segment.rows or len(vectors) != segment.rows:
                raise CorruptIndex(
                    f"field {config.name!r} holds {index.ntotal} indexed / {len(vectors)} stored vectors "
                    "for the "
                    f"{segment.rows} documents of segment {segment.name!r}"
                )
            parts.append(DensePart(index, vectors, segment.entry.get("search", {}),
                                   segment.entry.get("pq_training")))
        return DenseField(config, dim, parts, shared, [s.name for s in segments], ranking)


DENSE = DenseKind()


@dataclass(frozen=True)
class DensePart:
    """One segment's vectors [rows, D] (memory-mapped), their index, and the search parameters
    chosen for it when it was built."""

    index: FaissIndex | SpannVectors
    vectors: VectorStore
    tuned: Mapping[str, int] = field(default_factory=dict)
    trained: Mapping[str, Any] | None = None  # how ranking training of its PQ centroids went


@dataclass(frozen=True)
class DenseField:
    config: DenseConfig
    dim: int
    parts: list[DensePart]
    entry: dict[str, Any]  # the shared manifest entry
    names: list[str]  # each part's segment
    ranking: jpq.RankingSet | None = None  # labelled queries its PQ indexes train on (`tune_pq`)

    def opened(self) -> dict[str, DensePart]:
        return dict(zip(self.names, self.parts))

    @functools.cached_property
    def starts(self) -> list[int]:
        return (
            np.concatenate([[0], np.cumsum([len(p.vectors) for p in self.parts])]).astype(np.int64).tolist()
        )

    @functools.cached_property
    def vectors(self) -> VectorStore:
        """Every row's stored vector, across segments (for re-scoring and `check`)."""
        return VectorStore([array for p in self.parts for array in p.vectors.segments], self.dim)

    def search(
        self, queries: np.ndarray, k: int, params: Mapping[str, int], allowed: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """queries [B, D] -> (scores [B, k], rows [B, k]) over every segment; the top `rescore`
        candidates of an approximate index are re-scored exactly with the stored float vectors."""
        if self.config.search:
            params = {**self.config.search, **params}
        rescore = int(params.get("rescore", self.config.rescore))
        found, starts = [], []
        for part, start in self._scans:
            local = None if allowed is None else allowed[start : start + len(part.vectors)]
            found.append(
                parts_module.search(
                    part.index, part.vectors, queries, k, {**part.tuned, **params} if part.tuned else params,
                    local, rescore, self.config.metric,
                )
            )
            starts.append(start)
        return merge_top_k(found, starts, len(queries), k)

    @functools.cached_property
    def _scans(self) -> list[tuple[DensePart, int]]:
        """The parts a search visits, with their first row: a run of adjacent small exact parts (a
        write buffer's, fresh segments') is scanned as one, so each costs one call, not many."""
        out: list[tuple[DensePart, int]] = []
        run: list[DensePart] = []
        for part, start in zip([*self.parts, None], self.starts):
            if part is not None and isinstance(part.index, FlatVectors) and part.index.ntotal < SMALL_PART:
                run.append(part)
                continue
            if len(run) > 1:
                joined = np.concatenate([np.asarray(p.vectors.segments[0]) for p in run])
                index = FlatVectors(joined, self.config.metric)
                index.use_gpu()
                out.append((DensePart(index, VectorStore([joined], self.dim)), start - len(joined)))
            elif run:
                out.append((run[0], start - len(run[0].vectors)))
            run = []
            if part is not None:
                out.append((part, start))
        return out

    def merge(self, path, name: str, rows: np.ndarray):
        entry, files, _ = _write_part(path, name, self.config, self.vectors.gather(rows), self.ranking)
        return {key: self.entry[key] for key in ("dim", "pq_training") if key in self.entry}, entry, files

    @property
    def exact(self) -> bool:
        return all(p.index.exact for p in self.parts)

    def info(self) -> dict[str, Any]:
        c = self.config
        return {
            "kind": c.kind,
            "model": c.model,
            "dim": self.dim,
            "index": c.index,
            "metric": c.metric,
            "rescore": c.rescore,
            "ntotal": len(self.vectors),
            "segments": len(self.parts),
            "segment_indexes": sorted(
                {"SPANN" if isinstance(p.index, SpannVectors) else p.index.factory for p in self.parts}
            ),
            "target_recall": c.target_recall,
            # the search parameters chosen per segment at build (a request's or `search`'s win)
            "tuned": [{"rows": len(p.vectors), **p.tuned} for p in self.parts if p.tuned],
            # ranking-trained PQ (`tune_pq`): held-out reciprocal rank before / after, per segment
            "pq_training": [{"rows": len(p.vectors), **p.trained} for p in self.parts if p.trained],
        }

    def documents_from_texts(self, encoder, texts: list[str], progress: bool = False) -> np.ndarray:
        return self.check_documents(encoder.encode(texts, progress=progress), len(texts))

    def check_documents(self, given, count: int) -> np.ndarray:
        return check_vectors(self, given, count, "document")

    def queries_from_texts(self, encoder, texts: list[str], params: Mapping[str, int]) -> np.ndarray:
        return DENSE.encode_queries(self.config, encoder, texts, params)

    def check_queries(self, given) -> np.ndarray:
        return check_query_vectors(self, given)

    def score(self, queries: np.ndarray, rows: np.ndarray) -> np.ndarray:
        return cpu.rescore(queries, self.vectors.gather(rows), rows >= 0, self.config.metric)

    def unmatchable(self, queries: np.ndarray) -> None:
        return None

    def probe(self, rows: np.ndarray, deleted: np.ndarray, k: int, min_recall: float):
        return recall_probe(
            self, self.vectors.to_array(), self.config.metric, self.exact, rows, deleted, k, min_recall
        )

    def prepare(self, vectors: np.ndarray) -> "PendingVectors":
        return PendingVectors(self, vectors)


@dataclass(frozen=True)
class PendingVectors:
    """A new segment's vectors, written (with their index) at commit time."""

    field: DenseField
    vectors: np.ndarray

    def write(self, path, name: str):
        field = self.field
        entry, files, part = _write_part(path, name, field.config, self.vectors, field.ranking)
        return (
            field.entry,
            entry,
            files,
            lambda: replace(field, parts=[*field.parts, part], names=[*field.names, name]),
        )


def _write_part(path, segment: str, config: DenseConfig, vectors: np.ndarray, ranking=None):
    """A segment's vectors and index -> (entry, files, the part opened on them)."""
    prefix = f"{segment}.{config.name}"
    vname = f"{prefix}.vectors.npy"
    files = {vname: storage.write_new_file(path, vname, storage.npy_bytes(vectors))}
    stored = VectorStore([storage.load_written(path, vname)], vectors.shape[1])
    entry, written, index = parts_module.build(
        path, prefix, config.index, stored.segments[0], config.metric, config.train_size, stored=True,
        target_recall=config.target_recall, rescore=config.rescore, ranking=ranking,
    )
    files.update(written)
    part = DensePart(index, stored, entry.get("search", {}), entry.get("pq_training"))
    return {"vectors": vname, **entry}, files, part


def _legacy_part(path, config: DenseConfig, entry, files) -> DensePart:
    """Storage format 1: one index (or SPANN directory) over every row, vectors in several files."""
    vectors = VectorStore(
        [storage.open_npy_verified(path, n, files[n]) for n in entry["vectors"]], entry["dim"]
    )
    if entry.get("spann") is not None or is_spann(config.index):
        index = SpannVectors.open(path, entry, vectors, config.metric)
    else:
        data = storage.read_verified(path, entry["index"], files[entry["index"]])
        index = FaissIndex.from_bytes(data, config.index, entry["dim"], config.metric)
        index.use_gpu()
    if index.ntotal != len(vectors):
        raise CorruptIndex(
            f"field {config.name!r} holds {index.ntotal} indexed / {len(vectors)} stored vectors"
        )
    return DensePart(index, vectors)


def check_query_vectors(field, given) -> np.ndarray:
    """A query vector [D] or matrix [B, D] for a field with `config` and `dim`, checked as `check_vectors`."""
    try:
        array = np.ascontiguousarray(given, dtype=np.float32)
    except (TypeError, ValueError):
        raise InvalidRequest(
            f"query vectors for field {field.config.name!r} must be numbers: vectors of dimension {field.dim}"
        ) from None
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2 or array.shape[0] == 0:
        raise InvalidRequest(
            f"query vectors for field {field.config.name!r} must be one or more vectors of dimension "
            f"{field.dim}, got {shape_words(array.shape)}"
        )
    return check_vectors(field, array, array.shape[0], "query")


def check_vectors(field, vectors, count: int, what: str) -> np.ndarray:
    """Float32 [count, dim] vectors, normalized when the field asks; clear errors otherwise."""
    array = np.ascontiguousarray(vectors, dtype=np.float32)
    if array.ndim != 2 or array.shape[1] != field.dim:
        raise InvalidRequest(
            f"{what} vectors for field {field.config.name!r} must have dimension {field.dim}, got "
            f"{shape_words(array.shape)}"
        )
    if array.shape[0] != count:
        raise InvalidRequest(f"{count} {what}s but {array.shape[0]} vectors for field {field.config.name!r}")
    checked = vectors_kernels.checked_rows(array, field.config.normalize)
    if checked is None:
        _explain_bad_vectors(field, array, what)  # raises
    return checked


def _explain_bad_vectors(field, array: np.ndarray, what: str) -> None:
    """Raise the error that names why `kernels.vectors.checked_rows` refused these vectors."""
    finite = np.isfinite(array).all(axis=1)
    if not finite.all():
        raise InvalidRequest(
            f"{what} vector {int(np.flatnonzero(~finite)[0])} for field {field.config.name!r} contains NaN "
            "or inf"
        )
    raise InvalidRequest(
        f"a {what} vector for field {field.config.name!r} is all zeros and cannot be normalized"
    )
