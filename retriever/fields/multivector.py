"""The `multivector` kind: token vectors per document. MUVERA encodings in a dense index find candidates, exact
MaxSim over the stored token vectors re-ranks them (or scores every document, `exhaustive`).
With `index = "SPANN..."` the encodings are stored as vector segments and searched by SPANN
(posting lists on disk), exactly as a dense field's vectors are."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from retriever.encoders.models import choose_device
from retriever.errors import CorruptIndex, InvalidConfig, InvalidRequest
from retriever.index import storage
from retriever.index.faiss_index import FaissIndex
from retriever.index.fde import FdeConfig, FdeEncoder
from retriever.index.tokens import TokenStore, compress
from retriever.index.vectors import VectorStore
from retriever.kernels.maxsim import maxsim

from .base import FieldConfig, check_int
from .dense import index_with
from .spann import SpannVectors, is_spann, spann_params

MAXSIM_BLOCK = 1 << 17  # document tokens decompressed and scored per step when searching exhaustively
FDE_KEYS = ("repetitions", "simhash_bits", "projection_dim", "fill_empty_partitions", "final_dim", "seed")
TOKEN_DTYPES = ("float16", "int8")


@dataclass(frozen=True)
class MultiVectorConfig(FieldConfig):
    """Token vectors from a sentence-transformers `model` (projected to `token_dim` when set) or
    your own of width `dim`; MUVERA encodings (`fde` settings) in a faiss `index` find `rerank`
    candidates that exact MaxSim re-ranks; tokens are kept as `token_dtype` (float16 or int8)."""

    dim: int | None = None
    index: str = "Flat"
    train_size: int = 65_536
    search: Mapping[str, int] = field(default_factory=dict)
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

    def check(self) -> None:
        where = self.where
        if self.model is None and self.dim is None:
            raise InvalidConfig(f"{where}: give a sentence-transformers `model` for token vectors, or `dim` to bring your own")
        for key in ("dim", "token_dim", "query_max_length", "rerank", "max_fde_dim", "train_size"):
            check_int(where, key, getattr(self, key), low=1, optional=key in ("dim", "token_dim"))
        if self.token_dtype not in TOKEN_DTYPES:
            raise InvalidConfig(f"{where}: token_dtype must be one of {TOKEN_DTYPES}, got {self.token_dtype!r}")
        unknown = sorted(set(self.fde) - set(FDE_KEYS))
        if unknown:
            raise InvalidConfig(f"{where}: unknown fde setting(s) {unknown}; known: {list(FDE_KEYS)}")
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


class MultiVectorKind:
    name = "multivector"
    config = MultiVectorConfig
    request_params = {"nprobe": 1, "efSearch": 1, "rerank": 1, "exhaustive": 0, "prune_pct": 0, "rescore": 0}
    vector_input = False

    def has_encoder(self, config: MultiVectorConfig) -> bool:
        return config.model is not None

    def make_encoder(self, config: MultiVectorConfig):
        from retriever.encoders.multivector import TokenEncoder

        return TokenEncoder(config.model, batch_size=config.batch_size, token_dim=config.token_dim,
                            skip_special=config.skip_special, skip_punctuation=config.skip_punctuation)

    def initial_size(self, config: MultiVectorConfig) -> int:
        return config.dim if config.dim is not None else self.make_encoder(config).dim

    def create(self, path, config: MultiVectorConfig, dim: int):
        return MultiVectorField.empty_entry(path, config, dim)

    def open(self, path, config: MultiVectorConfig, entry, files, num_rows: int) -> "MultiVectorField":
        return MultiVectorField.open(path, config, entry, files, num_rows)


MULTIVECTOR = MultiVectorKind()


@dataclass(frozen=True)
class MultiVectors:
    """Point clouds: cloud i is tokens[offsets[i]:offsets[i+1]]. tokens [T, D] float32, offsets [N + 1]."""

    tokens: np.ndarray
    offsets: np.ndarray

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def cloud(self, i: int) -> np.ndarray:
        return self.tokens[self.offsets[i] : self.offsets[i + 1]]

    @property
    def empty(self) -> np.ndarray:
        return np.diff(self.offsets) == 0


class MultiVectorField:
    def __init__(self, config: MultiVectorConfig, entry: dict[str, Any], index: FaissIndex | SpannVectors, tokens: TokenStore) -> None:
        self.config = config
        self.entry = entry
        self.dim = int(entry["dim"])  # token dimension
        self.index = index
        self.tokens = tokens
        self.fde = FdeEncoder(FdeConfig(**entry["fde"]), self.dim)

    # ---- opening -----------------------------------------------------------------------------

    @classmethod
    def empty_entry(cls, path, config: MultiVectorConfig, dim: int) -> tuple[dict[str, Any], dict[str, Any]]:
        fde = FdeConfig(**config.fde)
        if fde.dimension(dim) > config.max_fde_dim:
            raise InvalidConfig(f"field {config.name!r}: the FDE would have {fde.dimension(dim)} dimensions, over max_fde_dim = "
                                f"{config.max_fde_dim}; lower repetitions, simhash_bits or projection_dim, or set fde.final_dim")
        entry = {"dim": dim, "fde": fde.to_dict(), "fde_dim": fde.dimension(dim), "tokens": []}
        if is_spann(config.index):
            spann_params(config.index, "ip")  # a bad factory string fails at create
            return {**entry, "index": None, "spann": None, "encodings": []}, {}
        name = f"{config.name}.index-{1:06d}.faiss"
        files = {name: storage.write_new_file(path, name, FaissIndex(config.index, fde.dimension(dim), "ip").to_bytes())}
        return {**entry, "index": name}, files

    @classmethod
    def open(cls, path, config: MultiVectorConfig, entry: dict[str, Any], files: dict[str, Any], num_rows: int) -> "MultiVectorField":
        if is_spann(config.index):
            encodings = VectorStore([storage.open_npy_verified(path, n, files[n]) for n in entry["encodings"]], entry["fde_dim"])
            index = SpannVectors.open(path, entry, encodings, "ip")
        else:
            index = FaissIndex.from_bytes(storage.read_verified(path, entry["index"], files[entry["index"]]), config.index, entry["fde_dim"], "ip")
            index.use_gpu()
        segments = []
        for seg in entry["tokens"]:
            load = lambda name: storage.open_npy_verified(path, name, files[name]) if name else None  # noqa: E731
            segments.append((load(seg["codes"]), load(seg["scales"]), load(seg["offsets"])))
        tokens = TokenStore(segments, entry["dim"])
        if index.ntotal != num_rows or len(tokens) != num_rows:
            raise CorruptIndex(f"field {config.name!r} holds {index.ntotal} encodings / {len(tokens)} token lists for {num_rows} documents")
        return cls(config, entry, index, tokens)

    def info(self) -> dict[str, Any]:
        n = max(len(self.tokens), 1)
        return {"kind": "multivector", "model": self.config.model, "token_dim": self.dim, "fde": self.entry["fde"],
                "fde_dim": self.entry["fde_dim"], "index": self.config.index, "ntotal": self.index.ntotal,
                "token_dtype": self.config.token_dtype, "token_bytes": self.tokens.nbytes,
                "bytes_per_document": round((self.tokens.nbytes + self.entry.get("index_bytes", 0)) / n, 1)}

    # ---- documents and queries ------------------------------------------------------------------

    def documents_from_texts(self, encoder, texts: list[str], progress: bool = False) -> MultiVectors:
        from retriever.encoders.multivector import TokenSettings

        settings = TokenSettings(self.config.max_length or 256, self.config.document_prefix)
        return self.check_documents(encoder.encode(texts, settings, progress=progress), len(texts))

    def queries_from_texts(self, encoder, texts: list[str], params: Mapping[str, int]) -> MultiVectors:
        from retriever.encoders.multivector import TokenSettings

        return self.check_queries(encoder.encode(texts, TokenSettings(self.config.query_max_length, self.config.query_prefix)))

    def unmatchable(self, queries: MultiVectors) -> None:
        return None

    def probe(self, rows: np.ndarray, deleted: np.ndarray, k: int, min_recall: float):
        return {"checked": False}, []  # no cheap exact reference to sample against

    def check_documents(self, given, count: int) -> MultiVectors:
        clouds = self._clouds(given, "document")
        if len(clouds) != count:
            raise InvalidRequest(f"{count} documents but {len(clouds)} token lists for field {self.config.name!r}")
        return clouds

    def check_queries(self, given) -> MultiVectors:
        clouds = self._clouds(given, "query")
        empty = np.flatnonzero(clouds.empty)
        if len(empty):
            raise InvalidRequest(f"query {int(empty[0])} has no tokens for field {self.config.name!r} after skipping special tokens and punctuation")
        return clouds

    def _clouds(self, given, what: str) -> MultiVectors:
        """(tokens [T, D], offsets [N + 1]) or a list of [t_i, D] arrays -> checked, L2-normalized clouds."""
        if isinstance(given, MultiVectors):
            return given
        try:
            if isinstance(given, tuple) and len(given) == 2 and np.ndim(given[1]) == 1:
                tokens, offsets = np.asarray(given[0], dtype=np.float32), np.asarray(given[1], dtype=np.int64)
            else:
                arrays = [np.asarray(a, dtype=np.float32).reshape(-1, self.dim) if np.size(a) == 0 else np.asarray(a, dtype=np.float32) for a in given]
                if any(a.ndim != 2 or a.shape[1] != self.dim for a in arrays):
                    bad = next(a.shape for a in arrays if a.ndim != 2 or a.shape[1] != self.dim)
                    raise InvalidRequest(f"{what} token vectors for field {self.config.name!r} must be [tokens, {self.dim}], got {bad}")
                tokens = np.concatenate(arrays) if arrays else np.zeros((0, self.dim), np.float32)
                offsets = np.concatenate([[0], np.cumsum([len(a) for a in arrays])]).astype(np.int64)
        except (TypeError, ValueError):
            raise InvalidRequest(f"{what} token vectors for field {self.config.name!r} must be a list of [tokens, {self.dim}] arrays") from None
        if tokens.ndim != 2 or tokens.shape[1] != self.dim:
            raise InvalidRequest(f"{what} token vectors for field {self.config.name!r} must have dimension {self.dim}, got shape {tokens.shape}")
        if len(offsets) < 1 or offsets[0] != 0 or offsets[-1] != len(tokens) or (np.diff(offsets) < 0).any():
            raise InvalidRequest(f"{what} token offsets must rise from 0 to the number of tokens ({len(tokens)})")
        if not np.isfinite(tokens).all():
            raise InvalidRequest(f"{what} token vectors for field {self.config.name!r} contain NaN or inf")
        norms = np.linalg.norm(tokens, axis=1, keepdims=True)
        return MultiVectors((tokens / np.where(norms > 0, norms, 1)).astype(np.float32), offsets)

    # ---- writing -------------------------------------------------------------------------------

    def prepare(self, clouds: MultiVectors, first_row: int, deleted: np.ndarray) -> "PendingClouds":
        encodings = self.fde.encode_documents(clouds.tokens, clouds.offsets)  # [N, fde_dim]
        codes, scales = compress(clouds.tokens, self.config.token_dtype)
        if isinstance(self.index, SpannVectors):  # built from the stored encodings once they are written
            return PendingClouds(self, self.index, codes, scales, clouds.offsets, encodings, deleted)
        index = index_with(self.index, encodings, self.config.train_size)
        return PendingClouds(self, index, codes, scales, clouds.offsets)

    # ---- search --------------------------------------------------------------------------------

    def search(self, queries: MultiVectors, k: int, params: Mapping[str, int], allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """-> (scores [B, k], rows [B, k]) by exact MaxSim, -inf / -1 padded. Candidates come from the
        FDE index (`rerank` of them), or every document with `exhaustive=1`."""
        if params.get("exhaustive"):
            return self._exhaustive(queries, k, allowed)
        rerank = max(k, int(params.get("rerank", self.config.rerank)))
        search_params = {key: params[key] for key in ("nprobe", "efSearch", "prune_pct", "rescore") if key in params}
        encoded = self.fde.encode_queries(queries.tokens, queries.offsets)  # [B, fde_dim]
        _, candidates = self.index.search(encoded, rerank, {**self.config.search, **search_params}, allowed)  # [B, C]
        scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        rows = np.full((len(queries), k), -1, dtype=np.int64)
        for b in range(len(queries)):
            found = candidates[b][candidates[b] >= 0]
            tokens, offsets = self.tokens.gather(found)
            exact = maxsim(queries.cloud(b), tokens, offsets, self._device)
            best = np.lexsort((found, -exact))[:k]
            scores[b, : len(best)], rows[b, : len(best)] = exact[best], found[best]
        return scores, rows

    def _exhaustive(self, queries: MultiVectors, k: int, allowed: np.ndarray | None):
        """Brute-force MaxSim over every stored document (the quality reference), in blocks of
        documents so only one block of tokens is decompressed at a time."""
        rows_all = np.arange(len(self.tokens)) if allowed is None else np.flatnonzero(allowed[: len(self.tokens)])
        exact = np.zeros((len(queries), len(rows_all)), dtype=np.float32)  # [B, N]
        lengths = self.tokens.lengths(rows_all)
        ends = np.searchsorted(np.cumsum(lengths), np.arange(MAXSIM_BLOCK, int(lengths.sum()) + MAXSIM_BLOCK, MAXSIM_BLOCK), side="right")
        start = 0
        for end in np.unique(np.maximum(ends, 1)):
            if end <= start:
                continue
            tokens, offsets = self.tokens.gather(rows_all[start:end])
            for b in range(len(queries)):
                exact[b, start:end] = maxsim(queries.cloud(b), tokens, offsets, self._device)
            start = end
        scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        rows = np.full((len(queries), k), -1, dtype=np.int64)
        for b in range(len(queries)):
            best = np.lexsort((rows_all, -exact[b]))[:k]
            scores[b, : len(best)], rows[b, : len(best)] = exact[b, best], rows_all[best]
        return scores, rows

    @functools.cached_property
    def _device(self) -> str:
        return choose_device()


@dataclass
class PendingClouds:
    field: MultiVectorField
    index: FaissIndex | SpannVectors
    codes: np.ndarray
    scales: np.ndarray | None
    offsets: np.ndarray
    encodings: np.ndarray | None = None  # SPANN: the new rows' FDEs [N, fde_dim], stored as a segment
    deleted: np.ndarray | None = None

    def write(self, path, version: int, num_rows: int):
        name = self.field.config.name
        files: dict[str, Any] = {}
        seg: dict[str, Any] = {"scales": None}
        for part, array in (("codes", self.codes), ("scales", self.scales), ("offsets", self.offsets)):
            if array is None:
                continue
            file = f"{name}.tokens-{version:06d}.{part}.npy"
            files[file] = storage.write_new_file(path, file, storage.npy_bytes(array))
            seg[part] = file
        entry = {**self.field.entry, "tokens": [*self.field.entry["tokens"], seg]}
        index = self.index
        if isinstance(index, SpannVectors):
            ename = f"{name}.encodings-{version:06d}.npy"
            files[ename] = storage.write_new_file(path, ename, storage.npy_bytes(self.encodings))
            entry["encodings"] = [*entry["encodings"], ename]
            stored = VectorStore([*index.store.segments, np.load(path / ename, mmap_mode="r")], entry["fde_dim"])
            index, entry["spann"] = index.refreshed(path, version, name, stored, self.deleted, self.field.config.index, entry["spann"])
        else:
            iname = f"{name}.index-{version:06d}.faiss"
            files[iname] = storage.write_new_file(path, iname, index.to_bytes())
            entry.update(index=iname, index_bytes=files[iname]["size"])
        load = lambda f: np.load(path / f, mmap_mode="r") if f else None  # noqa: E731
        segments = [*self.field.tokens.segments, (load(seg["codes"]), load(seg["scales"]), load(seg["offsets"]))]
        return entry, files, functools.partial(MultiVectorField, self.field.config, entry, index, TokenStore(segments, self.field.dim))

