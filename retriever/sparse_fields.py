"""BM25 and learned-sparse fields at run time: inverted segments on disk, posting weights in memory.

Both kinds keep integer values per posting (term counts, or impacts quantized to uint8 with a
per-segment scale) and turn them into float32 posting weights once per opened version; a query
is a list of (term, weight) pairs scored exactly by `kernels/sparse.py`.
"""

from __future__ import annotations

import functools
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from retriever.index import storage
from retriever.index.bm25 import VARIANTS
from retriever.index.sparse import SEGMENT_ARRAYS, InvertedIndex, PostingSegment, SparseRows, build_segment, merge_segments, smallest_dtype

from .config import FieldConfig
from .errors import CorruptIndex, InvalidRequest

IMPACT_LEVELS = 255  # learned weights are stored as uint8 impacts: weight ~= impact x scale
MAX_SEGMENTS = 16
WEIGHT_CHUNK = 1 << 22  # postings turned into weights per step (bounds the temporary memory)
TOKENIZE_BLOCK = 50_000  # documents per tokenizer call (progress steps)
NO_TERMS = "the query has no searchable terms after tokenization"


@dataclass(frozen=True)
class SparseDocuments:
    """Documents ready for indexing: vectors (term counts or learned weights), BM25 lengths and the
    vocabulary terms first seen in this batch (their ids follow the field's vocabulary)."""

    vectors: SparseRows
    lengths: np.ndarray | None = None
    new_terms: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class TokenizedDocuments:
    """BM25 documents before their terms have vocabulary ids: `terms` [batch terms] in batch-id
    order, `flat` [tokens] batch term ids, `lengths` [N] tokens per document. Ids are given at
    commit (under the writer lock, against the version being extended), never earlier."""

    terms: list[str]
    flat: np.ndarray
    lengths: np.ndarray


class InvertedField:
    """Shared run-time behaviour of `bm25` and `sparse` fields."""

    def __init__(self, config: FieldConfig, entry: dict[str, Any], segments: list[PostingSegment], num_rows: int) -> None:
        self.config = config
        self.entry = entry  # this version's manifest entry
        self.segments = segments
        self.num_rows = num_rows
        self.num_terms = int(entry["num_terms"])

    # ---- opening ---------------------------------------------------------------------------

    @classmethod
    def empty_entry(cls, config: FieldConfig, num_terms: int) -> dict[str, Any]:
        return {"num_terms": num_terms, "segments": [], "vocab": []}

    @classmethod
    def open(cls, path: Path, config: FieldConfig, entry: dict[str, Any], files: dict[str, Any], num_rows: int) -> "InvertedField":
        segments = []
        for seg in entry["segments"]:
            arrays = {name: storage.open_npy_verified(path, seg["arrays"][name], files[seg["arrays"][name]]) for name in SEGMENT_ARRAYS}
            segments.append(PostingSegment.from_arrays(arrays))
        return cls(config, entry, segments, num_rows)

    # ---- facts -----------------------------------------------------------------------------

    @property
    def dim(self) -> int:
        return self.num_terms

    @property
    def num_documents(self) -> int:
        """Documents in the postings (deleted ones count until a merge drops them, as in Lucene)."""
        return sum(len(s.doc_rows) for s in self.segments)

    def info(self) -> dict[str, Any]:
        postings = sum(len(s.rows) for s in self.segments)
        return {"kind": self.config.kind, "model": self.config.model, "terms": self.num_terms,
                "segments": len(self.segments), "postings": postings, "documents_indexed": self.num_documents}

    @functools.cached_property
    def df(self) -> np.ndarray:
        """[T] documents holding each term, over all segments."""
        total = np.zeros(self.num_terms, dtype=np.int64)
        for s in self.segments:
            total += s.df(self.num_terms)
        return total

    @functools.cached_property
    def index(self) -> InvertedIndex:
        return InvertedIndex(self.segments, [self.posting_weights(i) for i in range(len(self.segments))], self.num_rows)

    def posting_weights(self, i: int) -> np.ndarray:
        raise NotImplementedError

    # ---- search ----------------------------------------------------------------------------

    def search(self, queries: SparseRows, k: int, params: Mapping[str, int], allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """Queries with distinct terms each -> (scores [B, k] float32, rows [B, k] int64), -inf / -1 padded."""
        return self.index.search(queries, k, allowed)

    def check_queries(self, given) -> SparseRows:
        """Sparse query vectors passed directly: a list of (term ids, weights) pairs or dicts."""
        if isinstance(given, SparseRows):
            return given
        return SparseRows.from_pairs(_as_list(given, "sparse query vectors"), "sparse query vector", self.num_terms)

    # ---- writing ---------------------------------------------------------------------------

    def prepare(self, documents: SparseDocuments, first_row: int, deleted: np.ndarray) -> "PendingSegments":
        """In-memory work for adding documents (rows first_row..): the new segment, plus a merge of
        the tail segments when they have grown comparable (so a collection keeps few segments)."""
        num_terms = self.num_terms + len(documents.new_terms)
        new, scale = self._new_segment(documents, first_row, num_terms)
        kept = [(seg, meta) for seg, meta in zip(self.segments, self.entry["segments"])]
        tail = [(new, {"scale": scale})]
        while kept and (len(kept) + len(tail) > MAX_SEGMENTS or len(kept[-1][0].doc_rows) <= 2 * sum(len(s.doc_rows) for s, _ in tail)):
            tail.insert(0, kept.pop())
        if len(tail) > 1:
            tail = [self._merge(tail, num_terms, deleted)]
        return PendingSegments(self, kept, tail, num_terms, documents.new_terms)

    def _new_segment(self, documents: SparseDocuments, first_row: int, num_terms: int) -> tuple[PostingSegment, float]:
        raise NotImplementedError

    def _merge(self, parts, num_terms: int, deleted: np.ndarray):
        scales = {meta["scale"] for _, meta in parts}
        if len(scales) == 1:
            return merge_segments([s for s, _ in parts], num_terms, deleted), {"scale": scales.pop()}
        # learned impacts with different scales: requantize to the largest one
        scale = max(scales)
        rescaled = [_rescaled(s, meta["scale"] / scale) for s, meta in parts]
        return merge_segments(rescaled, num_terms, deleted), {"scale": scale}

    def with_state(self, entry: dict[str, Any], segments: list[PostingSegment], num_rows: int, new_terms: list[str]) -> "InvertedField":
        """This field at the next version (`new_terms` extend a BM25 vocabulary)."""
        return type(self)(self.config, entry, segments, num_rows)


@dataclass
class PendingSegments:
    """A field's new segments, built in memory and written at commit time."""

    field: InvertedField
    kept: list[tuple[PostingSegment, dict[str, Any]]]
    fresh: list[tuple[PostingSegment, dict[str, Any]]]
    num_terms: int
    new_terms: list[str]

    def write(self, path: Path, version: int, num_rows: int) -> tuple[dict[str, Any], dict[str, Any], Callable[[], InvertedField]]:
        """Write the new files -> (manifest entry, {file: size and checksum}, the field opened on them,
        made only once the version is published: a BM25 vocabulary grows only then)."""
        name = self.field.config.name
        files: dict[str, Any] = {}
        entries = [meta for _, meta in self.kept]
        segments = [seg for seg, _ in self.kept]
        for n, (seg, meta) in enumerate(self.fresh):
            arrays = {}
            for array_name, array in seg.arrays().items():
                file = f"{name}.seg-{version:06d}-{n}.{array_name}.npy"
                files[file] = storage.write_new_file(path, file, storage.npy_bytes(array))
                arrays[array_name] = file
            entries.append({**meta, "arrays": arrays, "documents": len(seg.doc_rows)})
            segments.append(PostingSegment.from_arrays({k: np.load(path / f, mmap_mode="r") for k, f in arrays.items()}))
        vocab = list(self.field.entry["vocab"])
        if self.new_terms:
            file = f"{name}.vocab-{version:06d}.parquet"
            buf = io.BytesIO()
            pq.write_table(pa.table({"term": pa.array(self.new_terms, pa.string())}), buf)
            files[file] = storage.write_new_file(path, file, buf.getvalue())
            vocab.append(file)
        entry = {**self.field.entry, "num_terms": self.num_terms, "segments": entries, "vocab": vocab}
        return entry, files, functools.partial(self.field.with_state, entry, segments, num_rows, self.new_terms)


class Bm25Field(InvertedField):
    """Term counts and document lengths on disk; BM25 tf parts as posting weights, idf per query term."""

    def __init__(self, config: FieldConfig, entry: dict[str, Any], segments: list[PostingSegment], num_rows: int,
                 vocabulary: dict[str, int] | None = None) -> None:
        super().__init__(config, entry, segments, num_rows)
        self.variant = VARIANTS[config.variant]
        self.delta = config.delta if config.delta is not None else self.variant.delta
        # append-only and shared between versions: ids never change; a version ignores ids >= its num_terms
        self.vocabulary = vocabulary if vocabulary is not None else {}

    @classmethod
    def open(cls, path, config, entry, files, num_rows):
        field = super().open(path, config, entry, files, num_rows)
        terms: list[str] = []
        for file in entry["vocab"]:
            terms.extend(pq.read_table(io.BytesIO(storage.read_verified(path, file, files[file]))).column("term").to_pylist())
        if len(terms) != field.num_terms:
            raise CorruptIndex(f"field {config.name!r}: vocabulary holds {len(terms)} terms, the manifest says {field.num_terms}")
        field.vocabulary.update((t, i) for i, t in enumerate(terms))
        return field

    def with_state(self, entry, segments, num_rows, new_terms):
        # readers of older versions share this dict safely: they ignore ids >= their num_terms
        self.vocabulary.update((term, self.num_terms + i) for i, term in enumerate(new_terms))
        return Bm25Field(self.config, entry, segments, num_rows, self.vocabulary)

    def info(self) -> dict[str, Any]:
        return {**super().info(), "variant": self.config.variant, "k1": self.config.k1, "b": self.config.b}

    @functools.cached_property
    def _length_stats(self) -> tuple[np.ndarray, float]:
        """Document length by row [rows] float32 and the average length."""
        by_row = np.zeros(self.num_rows, dtype=np.float32)
        total = 0
        for s in self.segments:
            by_row[s.doc_rows] = s.doc_lengths
            total += int(np.asarray(s.doc_lengths, dtype=np.int64).sum())
        return by_row, total / max(self.num_documents, 1)

    @functools.cached_property
    def idf(self) -> np.ndarray:
        return self.variant.idf(self.df.astype(np.float64), self.num_documents).astype(np.float32)

    def posting_weights(self, i: int) -> np.ndarray:
        segment, (by_row, avg_len) = self.segments[i], self._length_stats
        out = np.empty(len(segment.rows), dtype=np.float32)
        for lo in range(0, len(out), WEIGHT_CHUNK):
            hi = lo + WEIGHT_CHUNK
            tf = np.asarray(segment.values[lo:hi], dtype=np.float32)
            out[lo:hi] = self.variant.tf(tf, by_row[segment.rows[lo:hi]], avg_len, self.config.k1, self.config.b, self.delta)
        return out

    def queries_from_tokens(self, tokens: list[list[str]]) -> SparseRows:
        """Each query's terms known to this version, weighted by count x idf."""
        get, limit = self.vocabulary.get, self.num_terms
        ids = [[i for i in map(get, words) if i is not None and i < limit] for words in tokens]
        rows = _distinct_per_row(ids)
        return SparseRows(rows.indptr, rows.terms, (rows.values * self.idf[rows.terms]).astype(np.float32))

    def check_queries(self, given) -> SparseRows:
        raise InvalidRequest(f"field {self.config.name!r} is a bm25 field: search it with text")

    def check_documents(self, given, count: int) -> SparseDocuments:
        raise InvalidRequest(f"field {self.config.name!r} is a bm25 field: it is built from the documents' text, not from vectors")

    def queries_from_texts(self, tokenizer, texts: list[str], params: Mapping[str, int]) -> SparseRows:
        return self.queries_from_tokens(tokenizer.many(texts))

    def documents_from_texts(self, tokenizer, texts: list[str], progress: bool = False) -> "TokenizedDocuments":
        """Each document's terms as ids within this batch; vocabulary ids are given by `prepare`."""
        from tqdm.auto import tqdm

        local: dict[str, int] = {}  # term -> id within this batch
        word_ids: dict[str, int] = {}  # word -> its term's batch id, -1 for stopwords
        flat, lengths = [], []
        with tqdm(total=len(texts), desc="tokenizing", unit="doc", disable=not progress) as bar:
            for start in range(0, len(texts), TOKENIZE_BLOCK):
                words = tokenizer.words(texts[start : start + TOKENIZE_BLOCK])
                for word, term in tokenizer.terms(set().union(*words) - word_ids.keys()).items():
                    word_ids[word] = -1 if term is None else local.setdefault(term, len(local))
                block = np.fromiter((word_ids[w] for ws in words for w in ws), dtype=np.int64)
                doc = np.repeat(np.arange(len(words)), [len(ws) for ws in words])  # [tokens]
                kept = block >= 0
                lengths.append(np.bincount(doc[kept], minlength=len(words)))
                flat.append(block[kept])
                bar.update(len(words))
        return TokenizedDocuments(list(local), np.concatenate(flat) if flat else np.zeros(0, np.int64), np.concatenate(lengths))

    def prepare(self, documents: "TokenizedDocuments", first_row: int, deleted: np.ndarray) -> PendingSegments:
        return super().prepare(self._count(documents), first_row, deleted)

    def _count(self, documents: "TokenizedDocuments") -> SparseDocuments:
        """Batch term ids -> counts per (document, vocabulary term); terms new to this version's
        vocabulary get the next ids, in the batch's order."""
        base, flat, lengths = self.num_terms, documents.flat, documents.lengths
        to_global = np.empty(len(documents.terms), dtype=np.int64)
        new_terms = []
        for i, term in enumerate(documents.terms):
            known = self.vocabulary.get(term)
            if known is not None and known < base:
                to_global[i] = known
            else:
                to_global[i] = base + len(new_terms)
                new_terms.append(term)
        num_terms = max(base + len(new_terms), 1)
        docs = np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)
        keys, counts = np.unique(docs * num_terms + to_global[flat], return_counts=True)  # sorted by doc, then term
        indptr = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(np.bincount(keys // num_terms, minlength=len(lengths)), out=indptr[1:])
        return SparseDocuments(SparseRows(indptr, keys % num_terms, counts.astype(np.float32)), lengths, new_terms)

    def _new_segment(self, documents, first_row, num_terms):
        counts = documents.vectors.values
        return build_segment(documents.vectors, first_row, num_terms, smallest_dtype(counts), documents.lengths), 1.0


class LearnedSparseField(InvertedField):
    """uint8 impacts with a per-segment scale; queries from the model, or inference-free."""

    def info(self) -> dict[str, Any]:
        return {**super().info(), "query": self.config.query, "query_weights": self.config.query_weights,
                "top_terms": self.config.top_terms, "impacts": "uint8"}

    def posting_weights(self, i: int) -> np.ndarray:
        scale = np.float32(self.entry["segments"][i]["scale"])
        return np.asarray(self.segments[i].values, dtype=np.float32) * scale

    @functools.cached_property
    def idf(self) -> np.ndarray:
        """Inference-free query weights: Lucene's idf from this collection's document frequencies."""
        return VARIANTS["lucene"].idf(self.df.astype(np.float64), self.num_documents).astype(np.float32)

    def check_documents(self, given, count: int) -> SparseDocuments:
        vectors = SparseRows.from_pairs(_as_list(given, "sparse document vectors"), "sparse document vector", self.num_terms)
        if len(vectors) != count:
            raise InvalidRequest(f"{count} documents but {len(vectors)} sparse vectors for field {self.config.name!r}")
        return SparseDocuments(vectors)

    def documents_from_texts(self, encoder, texts: list[str], progress: bool = False) -> SparseDocuments:
        return SparseDocuments(encoder.encode(texts, top_terms=self.config.top_terms, min_weight=self.config.min_weight, progress=progress))

    def queries_from_texts(self, encoder, texts: list[str], params: Mapping[str, int]) -> SparseRows:
        """Model queries, or inference-free ones (config `query`, or the request's `inference_free=1`)."""
        if self.config.query == "model" and not params.get("inference_free"):
            return encoder.encode(texts)
        if self.config.query_weights == "faster-clip":
            return self.queries_from_table([_faster_clip().encode_query(t) for t in texts])
        return self.queries_from_token_ids(encoder.token_ids(texts))

    def queries_from_token_ids(self, token_ids: list[np.ndarray]) -> SparseRows:
        """Inference-free: each distinct query token weighted by its idf; terms no document holds drop out."""
        df = self.df
        known = [[t for t in ids.tolist() if t < self.num_terms and df[t] > 0] for ids in token_ids]
        rows = _distinct_per_row(known)
        return SparseRows(rows.indptr, rows.terms, self.idf[rows.terms])

    def queries_from_table(self, tables: list[dict]) -> SparseRows:
        """Inference-free with a fixed token weight table ({token id: weight} per query)."""
        return self.check_queries([{int(t): float(w) for t, w in table.items() if int(t) < self.num_terms} for table in tables])

    def _new_segment(self, documents, first_row, num_terms):
        vectors = documents.vectors
        top = float(vectors.values.max()) if len(vectors.values) else 0.0
        scale = top / IMPACT_LEVELS if top > 0 else 1.0
        impacts = np.rint(vectors.values / scale)
        keep = impacts > 0  # weights that quantize to nothing are dropped
        sizes = np.add.reduceat(keep, vectors.indptr[:-1]) if len(keep) else np.zeros(len(vectors), np.int64)
        sizes = np.where(np.diff(vectors.indptr) > 0, sizes, 0)
        indptr = np.zeros(len(vectors) + 1, dtype=np.int64)
        np.cumsum(sizes, out=indptr[1:])
        kept = SparseRows(indptr, vectors.terms[keep], impacts[keep])
        return build_segment(kept, first_row, num_terms, np.uint8), scale


@functools.cache
def _faster_clip():
    try:
        import faster_clip
    except ImportError:
        raise InvalidRequest("query_weights = 'faster-clip' needs the faster-clip package: pip install faster-clip==0.4.0") from None
    return faster_clip.SparseEncoder()


def _rescaled(segment: PostingSegment, factor: float) -> PostingSegment:
    values = np.clip(np.rint(np.asarray(segment.values, dtype=np.float32) * factor), 0, IMPACT_LEVELS).astype(np.uint8)
    return PostingSegment(segment.indptr, segment.rows, values, segment.doc_rows, segment.doc_lengths)


def _distinct_per_row(ids: list[list[int]]) -> SparseRows:
    """Term ids per query (repeats allowed) -> each query's distinct terms, sorted, with their counts.
    Plain Python: queries are short, and numpy's fixed cost per call would dominate."""
    indptr, terms, counts = [0], [], []
    for row in ids:
        count: dict[int, int] = {}
        for t in row:
            count[t] = count.get(t, 0) + 1
        for t in sorted(count):
            terms.append(t)
            counts.append(count[t])
        indptr.append(len(terms))
    return SparseRows(np.array(indptr, np.int64), np.array(terms, np.int64), np.array(counts, np.float32))


def _as_list(given, what: str) -> list:
    if isinstance(given, (dict, tuple)):
        return [given]
    if not isinstance(given, list) or not given:
        raise InvalidRequest(f"{what} must be a non-empty list of (term ids, values) pairs or {{term id: value}} dicts")
    return given
