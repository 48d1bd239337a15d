"""The `multivector` kind: token vectors per document. MUVERA encodings in a dense index find
candidates, exact MaxSim over the stored token vectors re-ranks them (or scores every document, `exhaustive`).
With `index = "SPANN..."` the encodings are stored as vector segments and searched by SPANN
(posting lists on disk), exactly as a dense field's vectors are. With a `token_index`, every
document token is also indexed on its own, and `xtr = 1` searches by token retrieval (XTR,
`retriever.index.xtr`): documents scored from the tokens their query tokens retrieved."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from retriever.encoders.models import choose_device
from retriever.errors import CorruptIndex, InvalidConfig, InvalidRequest
from retriever.index import storage
from retriever.index.faiss_index import FaissIndex
from retriever.index.flat import FlatVectors
from retriever.index.fde import FdeConfig, FdeEncoder
from retriever.index.tokens import TokenStore, compress, decompress
from retriever.index.vectors import VectorStore
from retriever.index.xtr import TokenIndex, imputed_scores
from retriever.kernels.maxsim import maxsim

from . import parts as parts_module
from .base import (
    FLAG,
    FieldConfig,
    ModelKind,
    Param,
    check_int,
    check_number,
    depth,
    merge_top_k,
    shape_words,
)
from .spann import SpannVectors, is_spann, spann_params

MAXSIM_TILE = 4096  # stored tokens decompressed and scored at once by an exhaustive search: ~6 MB
FDE_KEYS = ("repetitions", "simhash_bits", "projection_dim", "fill_empty_partitions", "final_dim", "seed")
TOKEN_DTYPES = ("float16", "int8")
MAX_QUERY_TOKENS = 1024  # a query's tokens: each is encoded, and searched k' deep by token retrieval
MAX_RETRIEVED_TOKENS = 4_000_000  # a request's query tokens x token_k (~48 MB of retrieved tokens)


@dataclass(frozen=True)
class MultiVectorConfig(FieldConfig):
    """Token vectors from a sentence-transformers `model` (projected to `token_dim` when set) or
    your own of width `dim`; MUVERA encodings (`fde` settings) in a faiss `index` find `rerank`
    candidates that exact MaxSim re-ranks; tokens are kept as `token_dtype` (float16 or int8).
    An IVF or HNSW `index` gets the smallest nprobe / efSearch whose encodings' recall@10 against
    exact search reaches `target_recall`, chosen per segment at build (`search` or a request's
    parameters win). `token_index` (a faiss factory string, e.g. "IVF1024,PQ48x4fs") indexes every
    token for token retrieval (`xtr = 1` in `search` or a request): each query token retrieves its
    `token_k` nearest document tokens; a request's `rescore` re-ranks that many of the best
    documents by exact MaxSim (0: the token scores alone)."""

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
    target_recall: float = 0.95
    token_index: str | None = None
    token_k: int = 400  # SciFact, MiniLM: within 0.005 nDCG@10 of FDE + re-ranking 100 (docs/benchmarks.md)

    def check(self) -> None:
        where = self.where
        if self.model is None and self.dim is None:
            raise InvalidConfig(
                f"{where}: give a sentence-transformers `model` for token vectors, or `dim` to bring your own"
            )
        for key in ("dim", "token_dim", "query_max_length", "rerank", "max_fde_dim", "train_size", "token_k"):
            check_int(where, key, getattr(self, key), low=1, optional=key in ("dim", "token_dim"))
        check_number(where, "target_recall", self.target_recall, low=0.0, high=1.0)
        if self.token_dtype not in TOKEN_DTYPES:
            raise InvalidConfig(
                f"{where}: token_dtype must be one of {TOKEN_DTYPES}, got {self.token_dtype!r}"
            )
        unknown = sorted(set(self.fde) - set(FDE_KEYS))
        if unknown:
            raise InvalidConfig(f"{where}: unknown fde setting(s) {unknown}; known: {list(FDE_KEYS)}")
        try:
            fde = FdeConfig(**self.fde)
        except ValueError as e:
            raise InvalidConfig(f"{where}: {e}") from None
        width = self.token_dim or self.dim
        if width is not None and fde.dimension(width) > self.max_fde_dim:
            raise InvalidConfig(
                f"{where}: the FDE would have {fde.dimension(width)} dimensions, over max_fde_dim = "
                f"{self.max_fde_dim}; "
                "lower repetitions, simhash_bits or projection_dim, or set fde.final_dim"
            )
        if not isinstance(self.index, str) or not self.index.strip():
            raise InvalidConfig(f"{where}: index must be a faiss factory string such as 'Flat' or 'HNSW32'")
        token_index = self.token_index
        if token_index is not None and (
            not isinstance(token_index, str) or not token_index.strip() or is_spann(token_index)
        ):
            raise InvalidConfig(
                f"{where}: token_index must be a faiss factory string such as 'Flat' or 'IVF1024,PQ48x4fs' "
                f"(SPANN is not offered for tokens), got {self.token_index!r}"
            )
        known = MultiVectorKind.request_params  # `search` holds defaults for a request's params
        unknown = sorted(set(self.search) - set(known))
        if unknown:
            raise InvalidConfig(f"{where}: unknown search parameter(s) {unknown}; known: {list(known)}")
        for key, value in self.search.items():
            check_int(where, f"search.{key}", value, low=known[key].low)
            if known[key].high is not None and value > known[key].high:
                raise InvalidConfig(f"{where}: search.{key} must be at most {known[key].high}, got {value}")
        object.__setattr__(self, "fde", dict(self.fde))
        object.__setattr__(self, "search", dict(self.search))


class MultiVectorKind(ModelKind):
    name = "multivector"
    config = MultiVectorConfig
    request_params = {
        "nprobe": depth(1), "efSearch": depth(1), "rerank": depth(1), "exhaustive": FLAG,
        "prune_pct": Param(0), "rescore": depth(0), "xtr": FLAG, "token_k": depth(1),
    }
    vector_input = False
    collection_statistics = False
    query_inputs = ("tokens",)

    def encode_queries(self, config: MultiVectorConfig, encoder, texts: list[str], params: Mapping[str, int]):
        from retriever.encoders.multivector import TokenSettings

        return encoder.encode(texts, TokenSettings(config.query_max_length, config.query_prefix))

    def make_encoder(self, config: MultiVectorConfig):
        from retriever.encoders.multivector import TokenEncoder

        return TokenEncoder(
            config.model,
            batch_size=config.batch_size,
            token_dim=config.token_dim,
            skip_special=config.skip_special,
            skip_punctuation=config.skip_punctuation,
        )

    def create(self, path, config: MultiVectorConfig, dim: int):
        return MultiVectorField.empty_entry(path, config, dim)

    def open(self, path, config: MultiVectorConfig, entry, files, segments, reuse) -> "MultiVectorField":
        return MultiVectorField.open(path, config, entry, files, segments, reuse)


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


@dataclass(frozen=True)
class EncodingPart:
    """One segment's FDE index (faiss, or SPANN with the encodings on disk) and row count."""

    index: FaissIndex | SpannVectors
    rows: int
    tuned: Mapping[str, int] = field(default_factory=dict)  # search parameters chosen at build
    tokens: TokenIndex | None = None  # every token on its own, when the field has a token_index


class MultiVectorField:
    def __init__(
        self,
        config: MultiVectorConfig,
        entry: dict[str, Any],
        parts: list[EncodingPart],
        tokens: TokenStore,
        names: list[str],
    ) -> None:
        self.config = config
        self.names = names  # each part's segment
        self.entry = entry  # the shared manifest entry
        self.dim = int(entry["dim"])  # token dimension
        self.parts = parts
        self.starts = np.concatenate([[0], np.cumsum([p.rows for p in parts])]).astype(np.int64).tolist()
        self.tokens = tokens  # every segment's tokens, addressed by global row
        self.fde = FdeEncoder(FdeConfig(**entry["fde"]), self.dim)

    def opened(self) -> dict[str, tuple]:
        """Per segment: (its part, its token arrays) as open."""
        return {
            name: (part, stored) for name, part, stored in zip(self.names, self.parts, self.tokens.segments)
        }

    # ---- opening -----------------------------------------------------------------------------

    @classmethod
    def empty_entry(cls, path, config: MultiVectorConfig, dim: int) -> tuple[dict[str, Any], dict[str, Any]]:
        fde = FdeConfig(**config.fde)
        if fde.dimension(dim) > config.max_fde_dim:
            raise InvalidConfig(
                f"field {config.name!r}: the FDE would have {fde.dimension(dim)} dimensions, over "
                "max_fde_dim = "
                f"{config.max_fde_dim}; lower repetitions, simhash_bits or projection_dim, or set "
                "fde.final_dim"
            )
        if is_spann(config.index):
            spann_params(config.index, "ip")  # a bad factory string fails at create
        else:
            FaissIndex(config.index, fde.dimension(dim), "ip")  # likewise
        if config.token_index is not None:
            FaissIndex(config.token_index, dim, "ip")
        return {"dim": dim, "fde": fde.to_dict(), "fde_dim": fde.dimension(dim)}, {}

    @classmethod
    def open(
        cls,
        path,
        config: MultiVectorConfig,
        entry: dict[str, Any],
        files: dict[str, Any],
        segments: list,
        reuse,
    ) -> "MultiVectorField":
        def load(name):  # copy-on-write maps: the exhaustive scan hands tiles to torch in place
            return storage.open_npy_verified(path, name, files[name], private=True) if name else None

        legacy = "tokens" in entry  # format 1: one index over every row
        parts, token_arrays = [], []
        for name, piece in [("", entry)] if legacy else [(s.name, s.entry) for s in segments]:
            if name in reuse:
                part, stored = reuse[name]
                parts.append(part)
                token_arrays.append(stored)
                continue
            token_lists = piece["tokens"] if isinstance(piece["tokens"], list) else [piece["tokens"]]
            token_arrays += [(load(t["codes"]), load(t["scales"]), load(t["offsets"])) for t in token_lists]
            rows = sum(len(t[2]) - 1 for t in token_arrays) - sum(p.rows for p in parts)
            if piece.get("spann") or (legacy and is_spann(config.index)):
                names = piece["encodings"] if isinstance(piece["encodings"], list) else [piece["encodings"]]
                index = SpannVectors.open(
                    path, piece, VectorStore([load(n) for n in names], entry["fde_dim"]), "ip"
                )
            else:
                data = storage.read_verified(path, piece["index"], files[piece["index"]])
                index = FaissIndex.from_bytes(
                    data, piece.get("factory") or config.index, entry["fde_dim"], "ip"
                )
                index.use_gpu()
            if index.ntotal != rows:
                raise CorruptIndex(
                    f"field {config.name!r} holds {index.ntotal} encodings for {rows} token lists"
                )
            token_index = piece.get("token_index")
            if token_index:
                token_index = open_token_index(path, token_index, files, token_arrays[-1], entry["dim"])
            parts.append(EncodingPart(index, rows, piece.get("search", {}), token_index or None))
        tokens = TokenStore(token_arrays, entry["dim"])
        total = sum(s.rows for s in segments)
        if len(tokens) != total:
            raise CorruptIndex(f"field {config.name!r} holds {len(tokens)} token lists for {total} documents")
        return cls(config, entry, parts, tokens, [""] if legacy else [s.name for s in segments])

    def info(self) -> dict[str, Any]:
        n = max(len(self.tokens), 1)
        index_bytes = sum(
            p.index.cpu_index.ntotal * self.entry["fde_dim"] * 4
            for p in self.parts
            if isinstance(p.index, FaissIndex) and p.index.exact
        )
        return {
            "kind": "multivector",
            "model": self.config.model,
            "token_dim": self.dim,
            "fde": self.entry["fde"],
            "fde_dim": self.entry["fde_dim"],
            "index": self.config.index,
            "ntotal": len(self.tokens),
            "segments": len(self.parts),
            "token_dtype": self.config.token_dtype,
            "target_recall": self.config.target_recall,
            "tuned": [{"rows": p.rows, **p.tuned} for p in self.parts if p.tuned],
            "token_bytes": self.tokens.nbytes,
            "bytes_per_document": round((self.tokens.nbytes + index_bytes) / n, 1),
            "token_index": self.config.token_index,
            "token_index_bytes_per_document": round(
                sum(p.tokens.nbytes for p in self.parts if p.tokens is not None) / n, 1
            ),
        }

    # ---- documents and queries ------------------------------------------------------------------

    def documents_from_texts(self, encoder, texts: list[str], progress: bool = False) -> MultiVectors:
        from retriever.encoders.multivector import TokenSettings

        settings = TokenSettings(self.config.max_length or 256, self.config.document_prefix)
        return self.check_documents(encoder.encode(texts, settings, progress=progress), len(texts))

    def queries_from_texts(self, encoder, texts: list[str], params: Mapping[str, int]) -> MultiVectors:
        return self.check_queries(MULTIVECTOR.encode_queries(self.config, encoder, texts, params))

    def unmatchable(self, queries: MultiVectors) -> None:
        return None

    def probe(self, rows: np.ndarray, deleted: np.ndarray, k: int, min_recall: float):
        return {"checked": False}, []  # no cheap exact reference to sample against

    def check_documents(self, given, count: int) -> MultiVectors:
        clouds = self._clouds(given, "document")
        if len(clouds) != count:
            raise InvalidRequest(
                f"{count} documents but {len(clouds)} token lists for field {self.config.name!r}"
            )
        return clouds

    def check_queries(self, given) -> MultiVectors:
        clouds = self._clouds(given, "query")
        empty = np.flatnonzero(clouds.empty)
        if len(empty):
            raise InvalidRequest(
                f"query {int(empty[0])} has no tokens for field {self.config.name!r} after skipping "
                "special tokens and punctuation"
            )
        lengths = np.diff(clouds.offsets)
        long = np.flatnonzero(lengths > MAX_QUERY_TOKENS)
        if len(long):
            raise InvalidRequest(
                f"query {int(long[0])} has {int(lengths[long[0]])} token vectors for field "
                f"{self.config.name!r}; a query takes at most {MAX_QUERY_TOKENS}"
            )
        return clouds

    def _clouds(self, given, what: str) -> MultiVectors:
        """(tokens [T, D], offsets [N + 1]) or a list of [t_i, D] arrays -> checked, L2-normalized clouds."""
        if isinstance(given, MultiVectors):
            return given
        try:
            if isinstance(given, tuple) and len(given) == 2 and np.ndim(given[1]) == 1:
                tokens, offsets = np.asarray(given[0], dtype=np.float32), np.asarray(given[1], dtype=np.int64)
            else:
                arrays = [
                    np.asarray(a, dtype=np.float32).reshape(-1, self.dim)
                    if np.size(a) == 0
                    else np.asarray(a, dtype=np.float32)
                    for a in given
                ]
                if any(a.ndim != 2 or a.shape[1] != self.dim for a in arrays):
                    bad = next(a.shape for a in arrays if a.ndim != 2 or a.shape[1] != self.dim)
                    raise InvalidRequest(
                        f"{what} token vectors for field {self.config.name!r} must be [tokens, "
                        f"{self.dim}], got {bad}"
                    )
                tokens = np.concatenate(arrays) if arrays else np.zeros((0, self.dim), np.float32)
                offsets = np.concatenate([[0], np.cumsum([len(a) for a in arrays])]).astype(np.int64)
        except (TypeError, ValueError):
            raise InvalidRequest(
                f"{what} token vectors for field {self.config.name!r} must be a list of [tokens, "
                f"{self.dim}] arrays"
            ) from None
        if tokens.ndim != 2 or tokens.shape[1] != self.dim:
            raise InvalidRequest(
                f"{what} token vectors for field {self.config.name!r} must have dimension {self.dim}, got "
                f"{shape_words(tokens.shape)}"
            )
        if len(offsets) < 1 or offsets[0] != 0 or offsets[-1] != len(tokens) or (np.diff(offsets) < 0).any():
            raise InvalidRequest(
                f"{what} token offsets must rise from 0 to the number of tokens ({len(tokens)})"
            )
        if not np.isfinite(tokens).all():
            raise InvalidRequest(f"{what} token vectors for field {self.config.name!r} contain NaN or inf")
        norms = np.linalg.norm(tokens, axis=1, keepdims=True)
        return MultiVectors((tokens / np.where(norms > 0, norms, 1)).astype(np.float32), offsets)

    # ---- writing -------------------------------------------------------------------------------

    def prepare(self, clouds: MultiVectors) -> "PendingClouds":
        codes, scales = compress(clouds.tokens, self.config.token_dtype)
        return PendingClouds(self, codes, scales, clouds.offsets)

    def merge(self, path, name: str, rows: np.ndarray):
        tokens, offsets = self.tokens.gather(rows)
        codes, scales = compress(tokens, self.config.token_dtype)
        entry, files, _ = write_part(path, name, self, codes, scales, offsets)
        return {key: self.entry[key] for key in ("dim", "fde", "fde_dim")}, entry, files

    # ---- search --------------------------------------------------------------------------------

    def search(
        self, queries: MultiVectors, k: int, params: Mapping[str, int], allowed: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """-> (scores [B, k], rows [B, k]) by exact MaxSim, -inf / -1 padded. Candidates come from the
        FDE index (`rerank` of them), or every document with `exhaustive=1`; `xtr=1` scores by token
        retrieval instead (`_token_retrieval`)."""
        if params.get("exhaustive"):
            return self._exhaustive(queries, k, allowed)
        if params.get("xtr", self.config.search.get("xtr")):
            return self._token_retrieval(queries, k, params, allowed)
        rerank = max(k, int(params.get("rerank", self.config.rerank)))
        search_params = {
            key: params[key] for key in ("nprobe", "efSearch", "prune_pct", "rescore") if key in params
        }
        encoded = self.fde.encode_queries(queries.tokens, queries.offsets)  # [B, fde_dim]
        search_params = {**self.config.search, **search_params}
        found = []
        for part, start in zip(self.parts, self.starts):
            local = None if allowed is None else allowed[start : start + part.rows]
            found.append(part.index.search(encoded, rerank, {**part.tuned, **search_params}, local))
        _, candidates = merge_top_k(
            found, self.starts, len(queries), rerank
        )  # [B, C] the best by FDE over all segments
        scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        rows = np.full((len(queries), k), -1, dtype=np.int64)
        for b in range(len(queries)):
            found = candidates[b][candidates[b] >= 0]
            tokens, offsets = self.tokens.gather(found)
            exact = maxsim(queries.cloud(b), tokens, offsets, self._device)
            best = np.lexsort((found, -exact))[:k]
            scores[b, : len(best)], rows[b, : len(best)] = exact[best], found[best]
        return scores, rows

    def _token_retrieval(
        self, queries: MultiVectors, k: int, params: Mapping[str, int], allowed: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """XTR: every query token of the batch retrieves its `token_k` nearest document tokens in one
        search of each segment's token index; each query's documents are scored from those alone
        (`imputed_scores`), and the best `rescore` of them re-ranked by exact MaxSim when asked. A
        request's nprobe / efSearch apply to the token index (the field's `search` ones are its FDE
        index's; each token index has its own, chosen at build)."""
        if any(part.tokens is None for part in self.parts):
            raise InvalidRequest(
                f"field {self.config.name!r} has no token index to search by token retrieval (xtr): "
                "set token_index in its config when the collection is created"
            )
        settings = {**self.config.search, **params}
        token_k = int(settings.get("token_k", self.config.token_k))
        if len(queries.tokens) * token_k > MAX_RETRIEVED_TOKENS:
            raise InvalidRequest(
                f"{len(queries.tokens)} query tokens x token_k {token_k} is "
                f"{len(queries.tokens) * token_k:,} tokens to retrieve; a request retrieves at most "
                f"{MAX_RETRIEVED_TOKENS:,}: lower token_k or send fewer queries at once"
            )
        rescore = int(settings.get("rescore", 0))
        index_params = {key: params[key] for key in ("nprobe", "efSearch") if key in params}
        found = []
        for part, start in zip(self.parts, self.starts):
            local = None if allowed is None else allowed[start : start + part.rows]
            found.append(part.tokens.search(queries.tokens, token_k, index_params, local))
        # what one index over every token retrieves: [query tokens of the batch, token_k], rows
        # global; a document's several tokens stay several entries
        similarities, rows = merge_top_k(found, self.starts, len(queries.tokens), token_k)
        scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        out_rows = np.full((len(queries), k), -1, dtype=np.int64)
        for b in range(len(queries)):
            lo, hi = int(queries.offsets[b]), int(queries.offsets[b + 1])
            candidates, approximate = imputed_scores(similarities[lo:hi], rows[lo:hi])
            best = np.lexsort((candidates, -approximate))[: max(k, rescore)]
            candidates, approximate = candidates[best], approximate[best]
            if rescore and len(candidates):
                tokens, offsets = self.tokens.gather(candidates)
                approximate = maxsim(queries.cloud(b), tokens, offsets, self._device)
            best = np.lexsort((candidates, -approximate))[:k]
            scores[b, : len(best)], out_rows[b, : len(best)] = approximate[best], candidates[best]
        return scores, out_rows

    def score(self, queries: MultiVectors, rows: np.ndarray) -> np.ndarray:
        """Exact MaxSim of each query against its candidate rows."""
        out = np.full(rows.shape, -np.inf, dtype=np.float32)
        for b in range(len(queries)):
            valid = rows[b] >= 0
            if valid.any():
                tokens, offsets = self.tokens.gather(rows[b][valid])
                out[b, valid] = maxsim(queries.cloud(b), tokens, offsets, self._device)
        return out

    def _exhaustive(self, queries: MultiVectors, k: int, allowed: np.ndarray | None):
        """Brute-force MaxSim over every stored document (the quality reference), a tile of stored
        tokens at a time: each tile is decompressed once for the batch and stays in cache while
        every query scores it, so float16 tokens cost what float32 ones in memory do."""
        exact = np.full((len(queries), len(self.tokens)), -np.inf, dtype=np.float32)  # [B, N]
        for first, tile, offsets in self.tokens.tiles(MAXSIM_TILE):
            end = first + len(offsets) - 1
            if allowed is not None and not allowed[first:end].any():
                continue
            for b in range(len(queries)):
                exact[b, first:end] = maxsim(queries.cloud(b), tile, offsets, self._device)
        rows_all = (
            np.arange(len(self.tokens)) if allowed is None else np.flatnonzero(allowed[: len(self.tokens)])
        )
        exact = exact[:, rows_all]
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
    """A new segment's compressed tokens, written (with their FDE index) at commit time."""

    field: MultiVectorField
    codes: np.ndarray
    scales: np.ndarray | None
    offsets: np.ndarray

    def write(self, path, name: str):
        field = self.field
        entry, files, (part, stored) = write_part(path, name, field, self.codes, self.scales, self.offsets)

        def make() -> MultiVectorField:
            tokens = TokenStore([*field.tokens.segments, stored], field.dim)
            return MultiVectorField(
                field.config, field.entry, [*field.parts, part], tokens, [*field.names, name]
            )

        return field.entry, entry, files, make


def write_part(
    path,
    segment: str,
    field: MultiVectorField,
    codes: np.ndarray,
    scales: np.ndarray | None,
    offsets: np.ndarray,
):
    """A segment's tokens and the FDE index over them -> (entry, files, (part, stored token arrays)).
    FDEs are computed from the stored (compressed) tokens, so a document's encoding is the same
    whether it was written in this segment or merged into another."""
    config = field.config
    prefix = f"{segment}.{config.name}"
    files: dict[str, Any] = {}
    tokens: dict[str, Any] = {"scales": None}
    for part, array in (("codes", codes), ("scales", scales), ("offsets", offsets)):
        if array is not None:
            file = f"{prefix}.tokens.{part}.npy"
            files[file] = storage.write_new_file(path, file, storage.npy_bytes(array))
            tokens[part] = file
    def load(key):
        return storage.load_written(path, tokens[key], private=True) if tokens[key] else None

    stored = (load("codes"), load("scales"), load("offsets"))
    decoded = decompress(stored[0], stored[1])  # [T, D] float32
    encodings = field.fde.encode_documents(decoded, np.asarray(stored[2]))  # [N, fde_dim]
    entry: dict[str, Any] = {"tokens": tokens}
    token_index = None
    if config.token_index is not None:
        # stored=True: a segment too small to train gets no file; open decompresses its tokens
        entry["token_index"], written, index = parts_module.build(
            path, f"{prefix}.tokens", config.token_index, decoded, "ip", config.train_size,
            stored=True, target_recall=config.target_recall,
        )
        files.update(written)
        token_index = TokenIndex(index, np.asarray(stored[2]), entry["token_index"].get("search", {}))
    if is_spann(config.index) and len(encodings) >= parts_module.SPANN_MIN_ROWS:
        file = f"{prefix}.encodings.npy"
        files[file] = storage.write_new_file(path, file, storage.npy_bytes(encodings))
        encodings = storage.load_written(path, file)
        entry["encodings"] = file
    built, written, index = parts_module.build(
        path, prefix, config.index, encodings, "ip", config.train_size, target_recall=config.target_recall
    )
    files.update(written)
    part = EncodingPart(index, len(encodings), built.get("search", {}), token_index)
    return {**entry, **built}, files, (part, stored)


def open_token_index(path, entry: Mapping[str, Any], files: dict[str, Any], stored, dim: int) -> TokenIndex:
    """A segment's token index, after its file's checksum matched (none for a segment too small to
    train one: its tokens are searched exactly, decompressed here)."""
    codes, scales, offsets = stored
    if entry["index"] is None:
        index = FlatVectors(decompress(codes, scales), "ip")
    else:
        data = storage.read_verified(path, entry["index"], files[entry["index"]])
        index = FaissIndex.from_bytes(data, entry["factory"], dim, "ip")
    if index.ntotal != len(codes):
        raise CorruptIndex(f"a token index holds {index.ntotal} tokens for {len(codes)} stored tokens")
    index.use_gpu()
    return TokenIndex(index, np.asarray(offsets), entry.get("search", {}))
