"""The field-kind interface: what every kind of field implements, and the keys every kind's config shares.

A kind (dense, bm25, sparse, multivector, binary) is one module of this package holding three
things: its config (a frozen dataclass extending `FieldConfig` with its own keys), its opened
field (the `Field` protocol: encode, check, prepare a write, search, describe itself), and a
`FieldKind` object that ties them together. `retriever/fields/__init__.py` registers the kinds
and is the only place that dispatches on a kind's name: the collection, `check`, `build` and
`eval` call these methods and know no kind.

A write goes: `documents_from_texts` or `check_documents` (outside the writer lock, the slow
part: models run here) -> `prepare` (under the lock, against the version being extended; pure
in-memory work) -> `Pending.write` (files) -> the returned maker, called only once the new
manifest is published (so a failed commit changes nothing in memory).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping, Protocol

import numpy as np

from retriever.errors import InvalidConfig
from retriever.kernels import cpu

NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_\-]{0,63}$")
NO_TERMS = "the query has no searchable terms after tokenization"
EXACT_MIN_RECALL = 0.99  # `check`: exact indexes may differ from exact search only on ties


@dataclass(frozen=True)
class FieldConfig:
    """Keys every field takes: `name`, `kind`, `model` (a model name or path; leave it out to
    bring your own vectors), `source` (another field whose vectors this one is derived from, for
    kinds that take one), `batch_size` and `max_length` for the encoder."""

    name: str
    kind: str = "dense"
    model: str | None = None
    source: str | None = None
    batch_size: int = 64
    max_length: int | None = None

    takes_source: ClassVar[bool] = False

    def __new__(cls, *args: Any, **kwargs: Any) -> "FieldConfig":
        """`FieldConfig(name=..., kind=..., ...)` builds the kind's own dataclass, as it always
        has for callers (the registry names the class; its keys are that kind's)."""
        if cls is FieldConfig:
            from . import KINDS

            kind = kwargs.get("kind", args[1] if len(args) > 1 else "dense")
            if kind not in KINDS:
                raise InvalidConfig(
                    f"field {kwargs.get('name')!r}: kind {kind!r} is not supported (supported: "
                    f"{', '.join(KINDS)})"
                )
            cls = KINDS[kind].config
        return super().__new__(cls)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not NAME.match(self.name):
            raise InvalidConfig(
                f"field name {self.name!r} must start with a letter and use letters, digits, _ or -"
            )
        if self.source is not None and not self.takes_source:
            raise InvalidConfig(f"{self.where}: key(s) ['source'] do not apply to a {self.kind!r} field")
        check_int(self.where, "batch_size", self.batch_size, low=1)
        check_int(self.where, "max_length", self.max_length, low=1, optional=True)
        self.check()

    @property
    def where(self) -> str:
        return f"field {self.name!r}"

    def check(self) -> None:
        """The kind's own keys; raise InvalidConfig naming the key and what it must be."""

    def check_among(self, fields: Mapping[str, "FieldConfig"], collection: str) -> None:
        """Rules that involve the collection's other fields (a binary field's `source`)."""

    def to_dict(self) -> dict[str, Any]:
        """Plain data for a manifest or TOML: this kind's keys, None values left out."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


@dataclass(frozen=True)
class SegmentView:
    """What a field sees of one collection segment: its name (the prefix of its files), its rows,
    and this field's entry in it."""

    name: str
    rows: int
    entry: dict[str, Any]


class Field(Protocol):
    """A field opened at one version of a collection: one part per segment, rows numbered across
    segments in order (segment s holds rows starts[s]..starts[s + 1] - 1)."""

    config: FieldConfig
    dim: int

    def info(self) -> dict[str, Any]: ...

    def documents_from_texts(self, encoder: Any, texts: list[str], progress: bool = False) -> Any:
        """What `prepare` takes, encoded from the documents' texts."""

    def check_documents(self, given: Any, count: int) -> Any:
        """What `prepare` takes, from vectors the caller brought (InvalidRequest when malformed)."""

    def queries_from_texts(self, encoder: Any, texts: list[str], params: Mapping[str, int]) -> Any: ...

    def check_queries(self, given: Any) -> Any: ...

    def prepare(self, payload: Any) -> "Pending":
        """In-memory work for a new segment holding `payload`. Must not change this field:
        readers may share it."""

    def merge(
        self, path: Path, name: str, rows: np.ndarray
    ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        """Write segment `name` holding these rows [R] (ascending; the live rows of the segments
        being merged), renumbered from 0 -> (the field's shared entry, its entry in the segment,
        {file: size and checksum}). Storage format 1 fields come out in the current layout."""

    def search(
        self, queries: Any, k: int, params: Mapping[str, int], allowed: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """-> (scores [B, k] float32, rows [B, k] int64), best first, -inf / -1 padded."""

    def score(self, queries: Any, rows: np.ndarray) -> np.ndarray:
        """The field's exact scores of given rows [B, C] (-1 where none) -> [B, C] float32, -inf
        at -1 rows: what a re-rank stage orders candidates by."""

    def unmatchable(self, queries: Any) -> np.ndarray | None:
        """[B] True where a query can match nothing (no known terms), or None if any query can match."""

    def probe(
        self, rows: np.ndarray, deleted: np.ndarray, k: int, min_recall: float
    ) -> tuple[dict[str, Any], list[str]]:
        """`retriever check`'s test of this field: (its report, problems found). `rows` are live
        rows to use as queries where the field can (stored vectors against exact search)."""

    def opened(self) -> Mapping[str, Any]:
        """Its segments as they are open, by segment name (for `FieldKind.open`'s `reuse`)."""


class Pending(Protocol):
    def write(
        self, path: Path, name: str
    ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], Callable[[], Field]]:
        """Write the new segment `name`'s files -> (the field's shared entry, its entry in the
        segment, {file: size and checksum}, a maker of the field at the new version, called only
        once that version is published)."""


@dataclass(frozen=True)
class Param:
    """A search parameter a kind reads, and its range (`high` None: no bound of its own). A
    `depth` (candidates, probes, graph breadth) scales a query's work, so a request's queries x
    its largest depth is held to the collection's `max_candidates`."""

    low: int
    high: int | None = None
    depth: bool = False


FLAG = Param(0, 1)


def shape_words(shape: tuple[int, ...], item: str = "vector", size: str = "dimension") -> str:
    """An array's shape as a client in any language reads it: "2 vectors of dimension 7" (or, with
    `item` and `size`, "2 codes of width 7")."""
    if len(shape) == 0:
        return "a single number"
    if len(shape) == 1:
        return f"one {item} of {size} {shape[0]}"
    if len(shape) == 2:
        return f"{shape[0]} {item}{'s' if shape[0] != 1 else ''} of {size} {shape[1]}"
    return f"a {len(shape)}-dimensional array ({' x '.join(map(str, shape))})"


def depth(low: int) -> Param:
    return Param(low, depth=True)


class FieldKind(Protocol):
    """One kind, as the registry holds it."""

    name: str
    config: type[FieldConfig]
    request_params: Mapping[str, Param]  # the search parameters it reads
    vector_input: bool  # documents may bring a [N, D] matrix (`build` encodes it in resumable blocks)
    collection_statistics: bool  # text queries may read collection-wide statistics (shards add them up)
    # the query forms `check_queries` takes besides texts, named as on the wire (FieldQueries)
    query_inputs: tuple[str, ...]

    def has_encoder(self, config: FieldConfig) -> bool:
        """Whether texts can be encoded for this field (a model, or a tokenizer that needs none)."""

    def make_encoder(self, config: FieldConfig) -> Any: ...

    def encode_queries(
        self, config: FieldConfig, encoder: Any, texts: list[str], params: Mapping[str, int]
    ) -> Any:
        """Query texts encoded as `check_queries` takes them, from the model alone; None where a
        field's query encoding reads the collection (a vocabulary, term frequencies). A sharded
        collection's router encodes once this way for every shard."""

    def initial_size(self, config: FieldConfig) -> int:
        """The new field's dimension (vector width, vocabulary size, 0 for a growing vocabulary)."""

    def create(self, path: Path, config: FieldConfig, size: int) -> tuple[dict[str, Any], dict[str, Any]]:
        """An empty field -> (its shared manifest entry, {file written: size and checksum})."""

    def open(
        self,
        path: Path,
        config: FieldConfig,
        shared: dict[str, Any],
        files: dict[str, Any],
        segments: list[SegmentView],
        reuse: Mapping[str, Any],
    ) -> Field:
        """The field at one version, every file checked against `files` before use. `reuse` holds
        segments already open (by name, from `Field.opened()` of an earlier version): a segment's
        files never change, so those are taken as they are."""


def merge_top_k(
    found: list[tuple[np.ndarray, np.ndarray]], starts: list[int], batch: int, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Each segment's (scores [B, k_s], local rows [B, k_s]) -> the best k over all, rows global,
    -inf / -1 padded."""
    if not found:
        return np.full((batch, k), -np.inf, np.float32), np.full((batch, k), -1, np.int64)
    if len(found) == 1 and starts[0] == 0:  # one segment: its rows are the collection's
        return padded(found[0][0][:, :k].astype(np.float32, copy=False), found[0][1][:, :k], k)
    scores = np.concatenate([s for s, _ in found], axis=1).astype(np.float32)
    rows = np.concatenate([np.where(r >= 0, r + start, -1) for (_, r), start in zip(found, starts)], axis=1)
    scores = np.where(rows >= 0, scores, np.float32(-np.inf))
    if len(found) == 1:
        return padded(scores[:, :k], rows[:, :k], k)
    # ties go to the lower row, whatever the segmentation: the kernel's merge of best lists
    empty = np.full((batch, k), -np.inf, np.float32), np.full((batch, k), -1, np.int64)
    owner = np.repeat(np.arange(batch), scores.shape[1])
    best_scores, best_rows = cpu.merge_best(*empty, owner, scores.ravel(), rows.ravel())
    return best_scores, np.where(np.isfinite(best_scores), best_rows, -1)


def padded(scores: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top lists [B, <= k] with -1 rows (or non-finite scores) where nothing was found, -inf / -1
    there, widened to k with -inf / -1."""
    # ufunc reductions straight: ndarray.min goes through numpy's Python-level wrapper
    if not (np.minimum.reduce(rows, axis=None, initial=0) >= 0
            and np.minimum.reduce(scores, axis=None, initial=0) > -np.inf):  # NaN fails too
        found = (rows >= 0) & np.isfinite(scores)
        scores = np.where(found, scores, np.float32(-np.inf))
        rows = np.where(found, rows, -1)
    if rows.shape[1] < k:
        pad = k - rows.shape[1]
        scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
        rows = np.pad(rows, ((0, 0), (0, pad)), constant_values=-1)
    return scores, rows


class ModelKind:
    """What kinds share whose texts a `model` encodes, or whose vectors are brought in (`dim`)."""

    def has_encoder(self, config) -> bool:
        return config.model is not None

    def initial_size(self, config) -> int:
        return config.dim if config.dim is not None else self.make_encoder(config).dim


def row_starts(segments: list[SegmentView]) -> np.ndarray:
    """[S + 1] first row of each segment, then the total."""
    return np.concatenate([[0], np.cumsum([s.rows for s in segments])]).astype(np.int64)


def check_int(where: str, key: str, value: Any, *, low: int, optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise InvalidConfig(f"{where}: {key} must be an integer >= {low}, got {value!r}")


def check_number(where: str, key: str, value: Any, low: float, high: float = float("inf")) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        bounds = f"from {low} to {high}" if high != float("inf") else f">= {low}"
        raise InvalidConfig(f"{where}: {key} must be a number {bounds}, got {value!r}")


def check_choice(where: str, key: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise InvalidConfig(f"{where}: {key} {value!r} is not one of {choices}")


def recall_probe(
    field: Field,
    base: np.ndarray,
    metric: str,
    exact: bool,
    rows: np.ndarray,
    deleted: np.ndarray,
    k: int,
    min_recall: float,
) -> tuple[dict[str, Any], list[str]]:
    """`check` for a field with stored vectors `base` [N, D]: the stored vectors of `rows` as
    queries, the field's top-k against exact search; a recall under the floor is a problem."""
    from retriever.kernels import reference

    allowed = ~deleted
    depth = min(k, int(allowed.sum()))
    _, approx = field.search(base[rows], depth, {}, None if allowed.all() else allowed)
    _, truth = reference.exact_search(base[rows], base, depth, metric, allowed)
    recall = float(np.mean([len(set(a[a >= 0]) & set(e[e >= 0])) / depth for a, e in zip(approx, truth)]))
    floor = EXACT_MIN_RECALL if exact else min_recall
    report = {f"recall@{k}": round(recall, 4), "exact": exact, "min_recall": floor}
    problems = (
        [f"field {field.config.name!r}: recall@{k} against exact search is {recall:.3f} < {floor}"]
        if recall < floor
        else []
    )
    return report, problems
