"""The `bm25` kind: documents tokenized into term counts (a vocabulary that grows with the
collection), scored with a BM25 variant; queries are text only."""

from __future__ import annotations

import copy
import functools
import io
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from retriever.errors import CorruptIndex, InvalidConfig, InvalidRequest
from retriever.index import storage
from retriever.index.bm25 import VARIANTS
from retriever.index.sparse import PostingSegment, SparseRows, build_segment, smallest_dtype

from .base import FieldConfig, Param, check_choice, check_number
from .inverted import InvertedField, PendingPostings, SparseDocuments, distinct_per_row

WORD_CACHE = 1 << 20  # distinct query words whose term ids a version keeps
VOCABULARY = ".vocabulary"  # the vocabulary among `opened()`'s segments (no segment has this name)
WEIGHT_CHUNK = 1 << 22  # postings turned into weights per step (bounds the temporary memory)
TOKENIZE_BLOCK = 50_000  # documents per tokenizer call (progress steps)


@dataclass(frozen=True)
class Bm25Config(FieldConfig):
    """Text tokenized (`stopwords` "en" or "", `stemmer` a Snowball language or "") and scored
    with `variant` (lucene, robertson, atire, bm25l, bm25+) and `k1`, `b`, `delta`."""

    variant: str = "lucene"
    k1: float = 1.2
    b: float = 0.75
    delta: float | None = None
    stopwords: str = "en"
    stemmer: str = "english"

    def check(self) -> None:
        check_choice(self.where, "variant", self.variant, tuple(VARIANTS))
        check_number(self.where, "k1", self.k1, 0.0, 100.0)
        check_number(self.where, "b", self.b, 0.0, 1.0)
        if self.delta is not None:
            check_number(self.where, "delta", self.delta, 0.0, 100.0)
        if self.stopwords not in ("", "en"):
            raise InvalidConfig(f"{self.where}: stopwords must be 'en' or '' (none), got {self.stopwords!r}")
        if self.stemmer:
            import Stemmer

            if self.stemmer not in Stemmer.algorithms():
                raise InvalidConfig(
                    f"{self.where}: stemmer {self.stemmer!r} is not one of {Stemmer.algorithms()} (or '' "
                    "for none)"
                )


class Bm25Kind:
    name = "bm25"
    config = Bm25Config
    request_params: Mapping[str, Param] = {}
    vector_input = False
    collection_statistics = True
    query_inputs: tuple[str, ...] = ()

    def has_encoder(self, config: Bm25Config) -> bool:
        return True  # a tokenizer, no model

    def make_encoder(self, config: Bm25Config):
        from retriever.encoders.tokenize import Tokenizer

        return Tokenizer(stopwords=config.stopwords or None, stemmer=config.stemmer or None)

    def encode_queries(self, config: Bm25Config, tokenizer, texts: list[str], params: Mapping[str, int]):
        return None  # term ids are each shard's own

    def initial_size(self, config: Bm25Config) -> int:
        return 0  # the vocabulary grows with the documents

    def create(self, path, config: Bm25Config, size: int):
        return Bm25Field.empty_entry(config, size)

    def open(self, path, config: Bm25Config, entry, files, segments, reuse) -> "Bm25Field":
        return Bm25Field.open(path, config, entry, files, segments, reuse)


BM25 = Bm25Kind()


@dataclass(frozen=True)
class TokenizedDocuments:
    """BM25 documents before their terms have vocabulary ids: `terms` [batch terms] in batch-id
    order, `flat` [tokens] batch term ids, `lengths` [N] tokens per document. Ids are given at
    commit (under the writer lock, against the version being extended), never earlier."""

    terms: list[str]
    flat: np.ndarray
    lengths: np.ndarray


class Bm25Field(InvertedField):
    """Term counts and document lengths on disk; BM25 tf parts as posting weights, idf per query term."""

    def __init__(
        self,
        config: Bm25Config,
        entry: dict[str, Any],
        segments: list[PostingSegment],
        starts: list[int],
        scales: list[float],
        num_rows: int,
        names: list[str],
        vocabulary: dict[str, int] | None = None,
    ) -> None:
        super().__init__(config, entry, segments, starts, scales, num_rows, names)
        self.variant = VARIANTS[config.variant]
        self.delta = config.delta if config.delta is not None else self.variant.delta
        # append-only and shared between versions: ids never change; a version ignores ids >= its num_terms
        self.vocabulary = vocabulary if vocabulary is not None else {}  # term -> id
        self.terms: list[str] = []  # id -> term, shared as the vocabulary is
        self.sizes: list[int] = []  # terms per vocabulary file
        self._weighted_under: tuple[tuple[int, int], Bm25Field] | None = None  # see `under`

    @classmethod
    def open(cls, path, config, entry, files, segments, reuse):
        field = super().open(path, config, entry, files, segments, reuse)
        if VOCABULARY in reuse and reuse[VOCABULARY][0] == entry["vocab"]:  # the same files: the same terms
            field.vocabulary, field.terms, field.sizes = reuse[VOCABULARY][1:]
            return field
        for file in entry["vocab"]:
            terms = storage.read_parquet_verified(path, file, files[file]).column("term").to_pylist()
            field.terms.extend(terms)
            field.sizes.append(len(terms))
        if len(field.terms) != field.num_terms:
            raise CorruptIndex(
                f"field {config.name!r}: vocabulary holds {len(field.terms)} terms, the manifest says "
                f"{field.num_terms}"
            )
        field.vocabulary.update((t, i) for i, t in enumerate(field.terms))
        return field

    def write_vocabulary(self, path, name: str, new_terms: list[str]):
        """New terms go in a new vocabulary file, merged with the newest files while the one before
        holds no more terms than they do: O(log V) files, each term rewritten O(log V) times."""
        if not new_terms:
            return self.vocabulary_keys(), {}
        first, tail = len(self.sizes), len(new_terms)
        while first > 0 and self.sizes[first - 1] <= tail:
            first -= 1
            tail += self.sizes[first]
        start = sum(self.sizes[:first])
        file = f"{name}.{self.config.name}.vocab.parquet"
        buf = io.BytesIO()
        pq.write_table(
            pa.table({"term": pa.array(self.terms[start : self.num_terms] + new_terms, pa.string())}), buf
        )
        files = {file: storage.write_new_file(path, file, buf.getvalue())}
        return {
            "vocab": [*self.entry["vocab"][:first], file],
            "vocab_sizes": [*self.sizes[:first], tail],
        }, files

    def vocabulary_keys(self) -> dict[str, Any]:
        return {"vocab": self.entry["vocab"], "vocab_sizes": self.sizes}

    def with_state(self, entry, segments, starts, scales, num_rows, names, new_terms):
        # readers of older versions share these safely: they ignore ids >= their num_terms
        self.vocabulary.update((term, self.num_terms + i) for i, term in enumerate(new_terms))
        del self.terms[
            self.num_terms :
        ]  # ids past this version's (none, unless a commit failed after writing)
        self.terms.extend(new_terms)
        field = Bm25Field(self.config, entry, segments, starts, scales, num_rows, names, self.vocabulary)
        field.terms, field.sizes = self.terms, list(entry["vocab_sizes"])
        return field

    def opened(self) -> dict[str, Any]:
        return {
            **super().opened(),
            VOCABULARY: (self.entry["vocab"], self.vocabulary, self.terms, self.sizes),
        }

    def info(self) -> dict[str, Any]:
        return {**super().info(), "variant": self.config.variant, "k1": self.config.k1, "b": self.config.b}

    @functools.cached_property
    def _lengths(self) -> tuple[np.ndarray, int]:
        """Document length by row [rows] float32 and the total length."""
        by_row = np.zeros(self.num_rows, dtype=np.float32)
        total = 0
        for s, start in zip(self.segments, self.starts):
            by_row[np.asarray(s.doc_rows, dtype=np.int64) + start] = s.doc_lengths
            total += int(np.asarray(s.doc_lengths, dtype=np.int64).sum())
        return by_row, total

    @property
    def average_length(self) -> float:
        totals = self.statistics or self.own_totals()
        return totals["length"] / max(totals["documents"], 1)

    def own_totals(self) -> dict[str, int]:
        return {"documents": self.num_documents, "length": self._lengths[1]}

    def idf_of(self, df: np.ndarray, documents: int) -> np.ndarray:
        return self.variant.idf(df.astype(np.float64), documents).astype(np.float32)

    def query_terms(self, tokenizer, texts: list[str], params: Mapping[str, int]) -> list[tuple[str, int]]:
        get, limit = self.vocabulary.get, self.num_terms
        words = {w for ws in tokenizer.many(texts) for w in ws}
        return [(w, i) for w in sorted(words) if (i := get(w)) is not None and i < limit]

    def term_key(self, term: int) -> str:
        return self.terms[term]

    def under(self, statistics: Mapping[str, Any]) -> "Bm25Field":
        """Posting weights read the average length: they are weighted again when the collection's
        totals change, once (the last totals' weights are kept)."""
        totals = (statistics["documents"], statistics["length"])
        kept = self._weighted_under
        if kept is None or kept[0] != totals:
            weighted = copy.copy(self)
            weighted.__dict__.pop("index", None)
            weighted.statistics = statistics
            weighted.index  # noqa: B018 (weighted now, once, for every view that shares these totals)
            kept = self._weighted_under = (totals, weighted)
        view = copy.copy(kept[1])
        view.statistics = statistics
        return view

    def posting_weights(self, i: int) -> np.ndarray:
        segment, start, by_row = self.segments[i], self.starts[i], self._lengths[0]
        avg_len = self.average_length
        out = np.empty(len(segment.rows), dtype=np.float32)
        for lo in range(0, len(out), WEIGHT_CHUNK):
            hi = lo + WEIGHT_CHUNK
            tf = np.asarray(segment.values[lo:hi], dtype=np.float32)
            lengths = by_row[np.asarray(segment.rows[lo:hi], dtype=np.int64) + start]
            out[lo:hi] = self.variant.tf(tf, lengths, avg_len, self.config.k1, self.config.b, self.delta)
        return out

    def queries_from_texts(self, tokenizer, texts: list[str], params: Mapping[str, int]) -> SparseRows:
        """Each query's terms known to this version, weighted by count x idf: words go to term ids
        in one lookup each, through this version's cache of the words queries used."""
        words = tokenizer.words(texts)
        known = self._word_ids  # shared by threads: this batch reads its own copy of what it needs
        batch = {w: known.get(w) for ws in words for w in ws}
        unseen = [w for w, i in batch.items() if i is None]
        if unseen:
            get, limit = self.vocabulary.get, self.num_terms
            for word, term in tokenizer.terms(unseen).items():
                i = None if term is None else get(term)
                batch[word] = i if i is not None and i < limit else -1
            if len(known) + len(unseen) > WORD_CACHE:  # bounded: a flood of distinct words starts it anew
                known.clear()
            if len(unseen) <= WORD_CACHE:
                known.update((w, batch[w]) for w in unseen)
        rows = distinct_per_row([list(map(batch.__getitem__, ws)) for ws in words])  # -1s dropped
        idf = self.query_idf(rows.terms)
        return SparseRows(rows.indptr, rows.terms, (rows.values * idf).astype(np.float32))

    @functools.cached_property
    def _word_ids(self) -> dict[str, int]:
        """{word: its term's id in this version, -1 for stopwords and unknown terms}."""
        return {}

    def check_queries(self, given) -> SparseRows:
        raise InvalidRequest(f"field {self.config.name!r} is a bm25 field: search it with text")

    def check_documents(self, given, count: int) -> SparseDocuments:
        raise InvalidRequest(
            f"field {self.config.name!r} is a bm25 field: it is built from the documents' text, not from "
            "vectors"
        )

    def documents_from_texts(
        self, tokenizer, texts: list[str], progress: bool = False
    ) -> "TokenizedDocuments":
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
        return TokenizedDocuments(
            list(local), np.concatenate(flat) if flat else np.zeros(0, np.int64), np.concatenate(lengths)
        )

    def prepare(self, documents: "TokenizedDocuments") -> PendingPostings:
        return super().prepare(self._count(documents))

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
        keys, counts = np.unique(
            docs * num_terms + to_global[flat], return_counts=True
        )  # sorted by doc, then term
        indptr = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(np.bincount(keys // num_terms, minlength=len(lengths)), out=indptr[1:])
        return SparseDocuments(
            SparseRows(indptr, keys % num_terms, counts.astype(np.float32)), lengths, new_terms
        )

    def _new_segment(self, documents, num_terms):
        counts = documents.vectors.values
        return build_segment(documents.vectors, 0, num_terms, smallest_dtype(counts), documents.lengths), 1.0
