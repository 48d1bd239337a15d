"""The `binary` kind: packed codes of float vectors (recurrent binarization, sign, ITQ), searched
by Hamming distance (faiss binary indexes) or by lookup tables (SDC / asymmetric), with
candidates re-scored from vectors on disk."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping

import numpy as np

from retriever.encoders import binary
from retriever.errors import CorruptIndex, InvalidConfig, InvalidRequest
from retriever.index import storage
from retriever.index.faiss_index import HAMMING, FaissIndex
from retriever.index.vectors import VectorStore
from retriever.kernels import cpu
from retriever.kernels.binary import bitplane_top_k, candidate_scores

from .base import (
    FLAG,
    FieldConfig,
    ModelKind,
    check_choice,
    check_int,
    check_number,
    depth,
    recall_probe,
    shape_words,
)
from .dense import DENSE, check_query_vectors, check_vector_keys, check_vectors
from .parts import TUNE_K, train_floor, training_sample, tune

QUERY_BLOCK = 64  # queries whose lookup tables are built at once ([64, bytes, 256] float32)
BITPLANE_CANDIDATES = 64  # the bit-plane scan's best, re-scored exactly (at least twice the depth)
METHODS = ("sign", "itq", "recurrent")
SCORINGS = ("hamming", "sdc", "asymmetric")
RESCORE_DTYPES = ("float32", "int8")
DEFAULT_RESCORE = 100


@dataclass(frozen=True)
class BinaryConfig(FieldConfig):
    """Binarizes the vectors of the dense field named by `source` (or of its own `model` / `dim`)
    with `method` (sign, itq, recurrent) into `bits` (1-4) steps of `code_dim` bits each, trained
    on the first batch added; `scoring` is "hamming", "sdc" (symmetric, the query binarized too) or
    "asymmetric" (float query), by default hamming for 1 bit and sdc above; `index` is Flat or a
    faiss binary index (IVF{n}, HNSW{M}); the best `rescore` candidates (default 100) are
    re-scored with vectors kept on disk as `rescore_dtype` (float32 or int8). An IVF or HNSW
    index gets the smallest nprobe / efSearch whose candidates hold `target_recall` of the exact
    Hamming top 10, chosen per segment at build (`search` or a request's parameters win)."""

    dim: int | None = None
    normalize: bool = True
    method: str = "recurrent"
    bits: int = 1
    code_dim: int | None = None
    index: str = "Flat"
    scoring: str | None = None
    rescore: int | None = None
    rescore_dtype: str = "float32"
    train_size: int = 65_536
    search: Mapping[str, int] = field(default_factory=dict)
    seed: int = 0
    target_recall: float = 0.95

    takes_source: ClassVar[bool] = True

    def check(self) -> None:
        where = self.where
        if self.source is not None and (self.model is not None or self.dim is not None):
            raise InvalidConfig(
                f"{where}: a binary field takes its vectors from `source` {self.source!r}, or from its own "
                "`model` / `dim`, not both"
            )
        if self.source is None and self.model is None and self.dim is None:
            raise InvalidConfig(
                f"{where}: give `source` (a dense field of this collection), a `model`, or a `dim` to "
                "bring your own vectors"
            )
        check_choice(where, "method", self.method, METHODS)
        if isinstance(self.bits, bool) or not isinstance(self.bits, int) or not 1 <= self.bits <= 4:
            raise InvalidConfig(
                f"{where}: bits must be an integer from 1 to 4 (binarization steps per dimension), got "
                f"{self.bits!r}"
            )
        check_int(where, "code_dim", self.code_dim, low=8, optional=True)
        if self.code_dim is not None and self.code_dim % 8:
            raise InvalidConfig(
                f"{where}: code_dim must be a multiple of 8 (codes are packed in bytes), got {self.code_dim}"
            )
        if self.scoring is None:
            object.__setattr__(self, "scoring", "hamming" if self.bits == 1 else "sdc")
        check_choice(where, "scoring", self.scoring, SCORINGS)
        if self.rescore_dtype not in RESCORE_DTYPES:
            raise InvalidConfig(
                f"{where}: rescore_dtype must be one of {RESCORE_DTYPES}, got {self.rescore_dtype!r}"
            )
        if self.rescore is None:
            object.__setattr__(self, "rescore", DEFAULT_RESCORE)
        check_int(where, "seed", self.seed, low=0)
        check_number(where, "target_recall", self.target_recall, low=0.0, high=1.0)
        check_vector_keys(self, "'Flat' or 'IVF1024,PQ48'")

    def check_among(self, fields: Mapping[str, FieldConfig], collection: str) -> None:
        if self.source is None:
            return
        source = fields.get(self.source)
        if source is None or source.kind != DENSE.name:
            raise InvalidConfig(
                f"binary field {self.name!r}: source {self.source!r} is not a dense field of collection "
                f"{collection!r}"
            )
        if source.metric != "ip":
            raise InvalidConfig(
                f"binary field {self.name!r}: codes rank by inner product, but source {self.source!r} uses "
                f"metric {source.metric!r}"
            )


class BinaryKind(ModelKind):
    name = "binary"
    config = BinaryConfig
    request_params = {"nprobe": depth(1), "efSearch": depth(1), "rescore": depth(0), "asymmetric": FLAG}
    vector_input = False
    collection_statistics = False
    query_inputs = ("vectors", "codes")

    def encode_queries(self, config: BinaryConfig, encoder, texts: list[str], params: Mapping[str, int]):
        return encoder.encode(texts)  # float vectors: each shard binarizes them with its own binarizer

    def make_encoder(self, config: BinaryConfig):
        return DENSE.make_encoder(config)

    def create(self, path, config: BinaryConfig, dim: int):
        return BinaryField.empty_entry(path, config, dim)

    def open(self, path, config: BinaryConfig, entry, files, segments, reuse) -> "BinaryField":
        return BinaryField.open(path, config, entry, files, segments, reuse)


BINARY = BinaryKind()


@dataclass(frozen=True)
class QueryCodes:
    """Queries given as packed codes (uint8 [B, bytes]) rather than float vectors: scored by their
    codes alone (Hamming or SDC), since no float query is there to re-score with."""

    codes: np.ndarray

    def __len__(self) -> int:
        return len(self.codes)


def code_dim_for(config: BinaryConfig, dim: int) -> int:
    """Bits per step: as set, else the vector dimension rounded to bytes (down for itq, which
    cannot exceed it)."""
    if config.code_dim is not None:
        return config.code_dim
    if config.method == "itq":
        return max(8, dim // 8 * 8)
    return -(-dim // 8) * 8


def faiss_factory(config: BinaryConfig) -> str | None:
    """The faiss binary index over the codes, or None when an exhaustive lookup-table scan scores them."""
    name = config.index.strip()
    if name.upper() in ("FLAT", "BFLAT"):
        return "BFlat" if config.scoring == "hamming" else None
    return name if name.startswith("B") else "B" + name


@dataclass(frozen=True)
class BinaryPart:
    """One segment's binary index (None: scanned through lookup tables) and row count."""

    index: FaissIndex | None
    rows: int
    tuned: Mapping[str, int] = field(default_factory=dict)  # search parameters chosen at build


class BinaryField:
    """Codes, rescore vectors and scales of every segment in stores addressed by global row
    (one array per segment), and one index per segment."""

    def __init__(
        self,
        config: BinaryConfig,
        entry: dict[str, Any],
        binarizer: binary.Binarizer | None,
        parts: list[BinaryPart],
        codes: VectorStore,
        rescore: VectorStore,
        scales: VectorStore | None,
        names: list[str],
    ) -> None:
        self.config = config
        self.names = names  # each part's segment
        self.entry = entry  # the shared manifest entry
        self.dim = int(entry["dim"])  # float vector dimension
        self.code_dim = int(entry["code_dim"])
        self.binarizer = binarizer
        self.parts = parts
        self.starts = np.concatenate([[0], np.cumsum([p.rows for p in parts])]).astype(np.int64).tolist()
        self.codes = codes  # [N, bytes] uint8
        self.rescore_vectors = rescore  # [N, dim] float32 or int8
        self.scales = scales  # [N, 1] float32 per-vector scales of int8 rescore vectors

    def opened(self) -> dict[str, tuple]:
        """Per segment: (its part, codes, rescore vectors, scales) as open."""
        scales = self.scales.segments if self.scales is not None else [None] * len(self.parts)
        return {
            name: (part, c, r, sc)
            for name, part, c, r, sc in zip(
                self.names, self.parts, self.codes.segments, self.rescore_vectors.segments, scales
            )
        }

    # ---- opening -----------------------------------------------------------------------------

    @classmethod
    def empty_entry(cls, path, config: BinaryConfig, dim: int) -> tuple[dict[str, Any], dict[str, Any]]:
        code_dim = code_dim_for(config, dim)
        if config.method == "itq" and code_dim > dim:
            raise InvalidConfig(
                f"field {config.name!r}: itq codes have at most {dim} dimensions (the vectors'), got "
                f"code_dim {code_dim}"
            )
        factory = faiss_factory(config)
        if factory is not None:
            FaissIndex(factory, config.bits * code_dim, HAMMING)  # a bad factory string fails at create
        return {"dim": dim, "code_dim": code_dim, "binarizer": None}, {}

    @classmethod
    def open(
        cls, path, config: BinaryConfig, entry: dict[str, Any], files: dict[str, Any], segments: list, reuse
    ) -> "BinaryField":
        binarizer = None
        if entry["binarizer"]:
            binarizer = binary.Binarizer.from_bytes(
                storage.read_verified(path, entry["binarizer"], files[entry["binarizer"]])
            )
        width = config.bits * entry["code_dim"]
        int8 = config.rescore_dtype == "int8"
        arrays: dict[str, list[np.ndarray]] = {"codes": [], "rescore": [], "scales": []}
        parts = []
        # storage format 1 kept one index and lists of files in the shared entry: one part
        legacy = "codes" in entry
        for name, piece in [("", entry)] if legacy else [(s.name, s.entry) for s in segments]:
            if name in reuse:
                part, *stored = reuse[name]
                for key, array in zip(("codes", "rescore", "scales"), stored):
                    if array is not None:
                        arrays[key].append(array)
                parts.append(part)
                continue
            before = sum(len(a) for a in arrays["codes"])
            for key in ("codes", "rescore", "scales") if int8 else ("codes", "rescore"):
                names = piece[key] if isinstance(piece[key], list) else [piece[key]]
                arrays[key] += [storage.open_npy_verified(path, n, files[n]) for n in names]
            index = None
            if piece.get("index"):
                data = storage.read_verified(path, piece["index"], files[piece["index"]])
                index = FaissIndex.from_bytes(
                    data, piece.get("factory") or faiss_factory(config), width, HAMMING
                )
            rows = sum(len(a) for a in arrays["codes"]) - before
            parts.append(BinaryPart(index, rows, piece.get("search", {})))
        field = cls(
            config,
            entry,
            binarizer,
            parts,
            VectorStore(arrays["codes"], width // 8, np.uint8),
            VectorStore(arrays["rescore"], entry["dim"], np.int8 if int8 else np.float32),
            VectorStore(arrays["scales"], 1, np.float32) if int8 else None,
            [""] if legacy else [s.name for s in segments],
        )
        rows = sum(s.rows for s in segments)
        if (
            len(field.codes) != rows
            or len(field.rescore_vectors) != rows
            or any(p.index is not None and p.index.ntotal != p.rows for p in parts)
        ):
            raise CorruptIndex(
                f"field {config.name!r} holds {len(field.codes)} codes / {len(field.rescore_vectors)} "
                "vectors for "
                f"{rows} documents, or an index disagrees with its segment"
            )
        return field

    def info(self) -> dict[str, Any]:
        c = self.config
        code_bytes = c.bits * self.code_dim // 8
        return {
            "kind": "binary",
            "source": c.source,
            "model": c.model,
            "dim": self.dim,
            "method": c.method,
            "bits": c.bits,
            "code_dim": self.code_dim,
            "bytes_per_vector": code_bytes,
            "scoring": c.scoring,
            "index": c.index,
            "rescore": c.rescore,
            "rescore_dtype": c.rescore_dtype,
            "trained": self.binarizer is not None,
            "target_recall": c.target_recall,
            "tuned": [{"rows": p.rows, **p.tuned} for p in self.parts if p.tuned],
            "ntotal": len(self.codes),
            "segments": len(self.parts),
        }

    # ---- documents and queries ------------------------------------------------------------------

    def documents_from_texts(self, encoder, texts: list[str], progress: bool = False) -> np.ndarray:
        return self.check_documents(encoder.encode(texts, progress=progress), len(texts))

    def check_documents(self, given, count: int) -> np.ndarray:
        return check_vectors(self, given, count, "document")

    def queries_from_texts(self, encoder, texts: list[str], params: Mapping[str, int]) -> np.ndarray:
        return self.check_queries(BINARY.encode_queries(self.config, encoder, texts, params))

    def unmatchable(self, queries) -> None:
        return None

    def probe(self, rows: np.ndarray, deleted: np.ndarray, k: int, min_recall: float):
        base = self.rescore_vectors.to_array().astype(np.float32)  # the float vectors kept on disk
        if self.scales is not None:
            base *= self.scales.to_array()
        return recall_probe(self, base, "ip", False, rows, deleted, k, min_recall)

    def check_queries(self, given) -> np.ndarray | QueryCodes:
        """Float query vectors [B, dim], or packed codes as uint8 [B, code bytes]."""
        if isinstance(given, np.ndarray) and given.dtype == np.uint8:
            codes = given[None, :] if given.ndim == 1 else given
            width = self.config.bits * self.code_dim // 8
            if codes.ndim != 2 or codes.shape[1] != width or len(codes) == 0:
                raise InvalidRequest(
                    f"query codes for field {self.config.name!r} must be uint8 [batch, {width}] "
                    f"({self.config.bits} x {self.code_dim} bits, {width} bytes a code), got "
                    f"{shape_words(given.shape, 'code', 'width')}"
                )
            return QueryCodes(np.ascontiguousarray(codes))
        return check_query_vectors(self, given)

    # ---- writing -------------------------------------------------------------------------------

    def prepare(self, vectors: np.ndarray) -> "PendingCodes":
        binarizer = self.binarizer or self._train(vectors)
        codes = binarizer.encode(vectors)
        if self.config.rescore_dtype == "int8":
            scales = np.abs(vectors).max(axis=1, keepdims=True) / 127  # [N, 1]
            stored = np.round(vectors / np.where(scales > 0, scales, 1)).astype(np.int8)
            return PendingCodes(self, binarizer, codes, stored, scales.astype(np.float32))
        return PendingCodes(self, binarizer, codes, vectors, None)

    def merge(self, path, name: str, rows: np.ndarray):
        scales = None if self.scales is None else self.scales.gather(rows)
        entry, files, _ = write_part(
            path, name, self.config, self.codes.gather(rows), self.rescore_vectors.gather(rows), scales
        )
        return {key: self.entry[key] for key in ("dim", "code_dim", "binarizer")}, entry, files

    def _train(self, vectors: np.ndarray) -> binary.Binarizer:
        c = self.config
        sample = training_sample(vectors, c.train_size, c.seed)
        needed = binary.min_training_vectors(c.method, self.code_dim)
        if len(sample) < needed:
            raise InvalidRequest(
                f"field {c.name!r}: training its {c.method} binarizer needs at least {needed} vectors in "
                "the first batch "
                f"added, got {len(sample)}; add more documents at once (or raise train_size)"
            )
        return binary.fit(sample, c.method, c.bits, self.code_dim, seed=c.seed)

    # ---- search --------------------------------------------------------------------------------

    def search(
        self, queries: np.ndarray | QueryCodes, k: int, params: Mapping[str, int], allowed: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """queries [B, dim] float (or packed codes) -> (scores [B, k], rows [B, k]), -inf / -1
        padded. Codes find the top max(k, rescore) candidates; those are re-scored exactly from
        the stored vectors."""
        if self.config.search:
            params = {**self.config.search, **params}
        given_codes = isinstance(queries, QueryCodes)
        rescore = 0 if given_codes else int(params.get("rescore", self.config.rescore))
        scoring = "asymmetric" if params.get("asymmetric") and not given_codes else self.config.scoring
        depth = max(k, rescore)
        if self.binarizer is None or len(self.codes) == 0:
            return np.full((len(queries), k), -np.inf, np.float32), np.full((len(queries), k), -1, np.int64)
        # float queries are binarized once: for the faiss indexes and for SDC tables alike
        indexed = any(p.index is not None for p in self.parts)
        coded = (
            queries.codes
            if given_codes
            else (self.binarizer.encode(queries) if scoring != "asymmetric" or indexed else None)
        )
        found, scanned = [], []
        for i, (part, first) in enumerate(zip(self.parts, self.starts)):
            if part.index is not None and (scoring == "hamming" or not part.index.exact):
                local = None if allowed is None else allowed[first : first + part.rows]
                scores, rows = part.index.search(coded, depth, {**part.tuned, **params}, local)
                rows = np.where(rows >= 0, rows + first, -1)
                if (
                    scoring != "hamming" and not rescore
                ):  # approximate candidates, ordered by their codes' scores
                    scores = self._lookup_scores(self._query_side(queries, coded, scoring), rows)
                found.append((scores, rows))
            else:
                scanned.append(i)
        if scanned:
            found.append(self._scan(self._query_side(queries, coded, scoring), depth, allowed, scanned))
        scores = np.concatenate([s for s, _ in found], axis=1)
        rows = np.concatenate([r for _, r in found], axis=1)
        scores = self._rescore(queries, rows) if rescore else np.where(rows >= 0, scores, np.float32(-np.inf))
        return cpu.top_k_rows(scores, rows, k)  # depth >= k columns, -1 rows at -inf

    def _query_side(self, queries, codes: np.ndarray | None, scoring: str) -> np.ndarray:
        """What lookup tables are built from: the float query, or (SDC, Hamming) the query's decoded code."""
        return self.binarizer.query_side(queries) if scoring == "asymmetric" else self.binarizer.decode(codes)

    def _scan(self, side: np.ndarray, depth: int, allowed: np.ndarray | None, segments: list[int]):
        """The codes of these segments scored through lookup tables built from `side`, best `depth`
        kept: the bit-plane scan, which costs about a Hamming scan, ranks them first; its best
        candidates are re-scored exactly through the tables."""
        found_scores, found_rows = [], []
        for start in range(0, len(side), QUERY_BLOCK):
            block = side[start : start + QUERY_BLOCK]
            tables, offsets = self.binarizer.lookup_tables(block)
            weights = self.binarizer.bit_weights(block)
            per_segment = []
            for segment, first in self._code_pieces(segments):
                mask = (
                    None if allowed is None else np.ascontiguousarray(allowed[first : first + len(segment)])
                )
                count = max(BITPLANE_CANDIDATES, 2 * depth)
                rows = bitplane_top_k(weights, np.asarray(segment), count, mask)[1]
                exact = candidate_scores(tables, offsets, np.asarray(segment)[np.maximum(rows, 0)])
                scores = np.where(rows >= 0, exact, np.float32(-np.inf))
                per_segment.append((scores, np.where(rows >= 0, rows + first, -1)))
            scores = np.concatenate([s for s, _ in per_segment], axis=1)
            rows = np.concatenate([r for _, r in per_segment], axis=1)
            best = cpu.top_k_rows(scores, rows, depth)
            found_scores.append(best[0])
            found_rows.append(best[1])
        return np.concatenate(found_scores), np.concatenate(found_rows)

    def _lookup_scores(self, side: np.ndarray, rows: np.ndarray) -> np.ndarray:
        tables, offsets = self.binarizer.lookup_tables(side)
        scores = candidate_scores(tables, offsets, self.codes.gather(rows))
        return np.where(rows >= 0, scores, np.float32(-np.inf))

    def score(self, queries: np.ndarray | QueryCodes, rows: np.ndarray) -> np.ndarray:
        """Float re-scoring of the candidates from the vectors kept for it."""
        if isinstance(queries, QueryCodes):
            raise InvalidRequest(
                f"re-ranking by binary field {self.config.name!r} needs float query vectors (or texts), "
                "not packed codes"
            )
        return self._rescore(queries, rows)

    def _rescore(self, queries: np.ndarray, rows: np.ndarray) -> np.ndarray:
        candidates = self.rescore_vectors.gather(rows).astype(np.float32)  # [B, C, dim]
        if self.scales is not None:
            candidates *= self.scales.gather(rows)
        return cpu.rescore(queries, candidates, rows >= 0, "ip")

    def _code_pieces(self, segments: list[int]):
        """(codes array, first global row) of the code files these segments hold."""
        wanted = [(self.starts[s], self.starts[s + 1]) for s in segments]
        for array, first in zip(self.codes.segments, self.codes.starts):
            if any(lo <= first < hi for lo, hi in wanted):
                yield array, int(first)


@dataclass(frozen=True)
class PendingCodes:
    """A new segment's codes and rescore vectors (and the binarizer when just trained)."""

    field: BinaryField
    binarizer: binary.Binarizer
    codes: np.ndarray
    vectors: np.ndarray
    scales: np.ndarray | None

    def write(self, path, name: str):
        field = self.field
        shared = dict(field.entry)
        files: dict[str, Any] = {}
        if field.binarizer is None:  # trained on this, the first batch: shared by every segment from now on
            binarizer_file = f"{name}.{field.config.name}.binarizer.npz"
            files[binarizer_file] = storage.write_new_file(path, binarizer_file, self.binarizer.to_bytes())
            shared["binarizer"] = binarizer_file
        entry, written, (part, stored) = write_part(
            path, name, field.config, self.codes, self.vectors, self.scales
        )
        files.update(written)

        def extended(store: VectorStore | None, array) -> VectorStore | None:
            return None if store is None else VectorStore([*store.segments, array], store.dim, store.dtype)

        def make() -> BinaryField:
            return BinaryField(
                field.config,
                shared,
                self.binarizer,
                [*field.parts, part],
                extended(field.codes, stored["codes"]),
                extended(field.rescore_vectors, stored["rescore"]),
                extended(field.scales, stored.get("scales")),
                [*field.names, name],
            )

        return shared, entry, files, make


def write_part(
    path,
    segment: str,
    config: BinaryConfig,
    codes: np.ndarray,
    vectors: np.ndarray,
    scales: np.ndarray | None,
):
    """A segment's codes, rescore vectors, scales and index -> (entry, files, (part, {name: stored
    array}))."""
    prefix = f"{segment}.{config.name}"
    files: dict[str, Any] = {}
    entry: dict[str, Any] = {"scales": None, "index": None, "factory": None}
    stored = {}
    for part, array in (("codes", codes), ("rescore", vectors), ("scales", scales)):
        if array is None:
            continue
        file = f"{prefix}.{part}.npy"
        files[file] = storage.write_new_file(path, file, storage.npy_bytes(array))
        entry[part] = file
        stored[part] = storage.load_written(path, file)
    factory = segment_factory(config, len(codes))
    index = None
    if factory is not None:
        index = FaissIndex(factory, codes.shape[1] * 8, HAMMING)
        if not index.cpu_index.is_trained:
            index.train(training_sample(codes, config.train_size))
        index.add(codes)
        file = f"{prefix}.index.faiss"
        files[file] = storage.write_new_file(path, file, index.to_bytes())
        entry.update(index=file, factory=factory, search=_tuned(index, codes, config))
    return entry, files, (BinaryPart(index, len(codes), entry.get("search", {})), stored)


def _tuned(index: FaissIndex, codes: np.ndarray, config: BinaryConfig) -> dict[str, int]:
    """The binary index's nprobe / efSearch whose candidates (`rescore` deep, as a search takes
    them) hold `target_recall` of the exact Hamming top 10."""
    exact = FaissIndex("BFlat", codes.shape[1] * 8, HAMMING)
    exact.add(codes)
    depth = max(TUNE_K + 1, config.rescore)
    return tune(
        index, codes, config.target_recall,
        lambda queries, k, params: index.search(queries, depth, params, None)[1],
        lambda queries, k: exact.search(queries, k, {}, None)[1],
    )


def segment_factory(config: BinaryConfig, rows: int) -> str | None:
    """The binary index of a segment of `rows` codes: the configured one once the segment is big
    enough to train it, else its exhaustive equivalent (BFlat for Hamming, a lookup-table scan)."""
    factory = faiss_factory(config)
    if factory is None or rows >= train_floor(factory):
        return factory
    return "BFlat" if config.scoring == "hamming" else None
