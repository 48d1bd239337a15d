"""A sharded collection, searched as one: the router fans each call out to its shards and merges
their answers into exactly the answer the unsharded collection gives.

Query texts are encoded here, once, for the fields whose models alone encode them (`queries.py`);
then a search takes up to three rounds, each one call per shard in parallel:
1. statistics (only when a searched field reads them: BM25, inference-free sparse): each shard's
   document count, lengths and query-term frequencies, summed into the collection's;
2. search: each shard's candidates under those statistics, with every score a later stage reads
   (`shard.ShardAnswer`); the router merges each field's lists into the collection's top k, and
   runs the same fuse and re-rank stages (`pipeline.run`) as one collection does;
3. documents: the stored documents of the hits kept.
A shard that does not answer within the deadline is left out: the hits come from the others and
say which shards are missing (`Results.missing_shards`). Writes go to the shard owning each id.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from retriever import pipeline as pipeline_module
from retriever.collection import check_k, check_params, field_depth
from retriever.config import CollectionConfig
from retriever.errors import InvalidRequest, RetrieverError, Unavailable, WriteFailed
from retriever.fields import kind_of
from retriever.fields import statistics as field_statistics
from retriever.pipeline import Fuse, Pipeline, Prefetch
from retriever.documents import document_id
from retriever.types import DocumentList, Results, are_texts

from .manifest import shard_of
from .queries import QueryEncoder
from .shard import ShardAnswer
from .transport import Shards

DEFAULT_DEADLINE = 10.0  # seconds a search waits for its shards


class Router:
    """The collection API (search, add, delete, get, count, info, generate) over shards."""

    def __init__(
        self, config: CollectionConfig, shards: Shards, *, deadline: float = DEFAULT_DEADLINE
    ) -> None:
        self.config = config
        self.shards = shards
        self.deadline = deadline
        self.queries = QueryEncoder(config)

    @property
    def name(self) -> str:
        return self.config.name

    def close(self) -> None:
        self.shards.close()

    def __enter__(self) -> "Router":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- reads -----------------------------------------------------------------------------

    def search(
        self,
        queries,
        k: int = 10,
        *,
        fields: Sequence[str] | str | None = None,
        filter: Mapping[str, Any] | None = None,
        params: Mapping[str, int] | None = None,
        fusion: str = "rrf",
        weights: Mapping[str, float] | None = None,
        normalization: str = "minmax",
        pipeline: "Pipeline | Mapping[str, Any] | str | None" = None,
    ) -> Results:
        """As `Collection.search`; the results name the shards that did not answer in time."""
        k = check_k(k, self.config.max_k)
        params = check_params(params)
        plan, fused = self._plan(k, fields, params, fusion, weights, normalization, pipeline)
        spec = plan.fusion_spec()
        queries = self.queries.encoded(queries, plan.fields, params)
        everyone = range(len(self.shards.names))
        asked, statistics = everyone, None
        if self._reads_statistics(queries, plan.fields):
            parts = self._read("statistics", asked, (queries, plan.fields, params))
            asked = sorted(parts)  # a shard missing here would score with the others' totals: left out
            statistics = field_statistics.add(parts.values())
        inline = len(plan.prefetch) == 1 and not plan.rerank  # hits only from each shard's own top k
        answers = self._read(
            "search", asked, (queries, plan.to_dict(), filter, params, k, statistics, inline)
        )
        merged = _Merged(answers)
        scores, keys, stages = pipeline_module.run(merged.score, plan, spec, merged.found(plan), k)
        if not fused:
            stages.pop(pipeline_module.FUSED, None)
        missing = tuple(self.shards.names[i] for i in everyone if i not in answers)
        flat = [i for row in merged.ids_of(keys) for i in row]
        documents = (
            merged.documents_of(keys) if inline else self._documents(flat, merged.owner(keys[keys >= 0]))
        )
        return merged.results(flat, scores, keys, stages, documents, missing)

    def _plan(self, k, fields, params, fusion, weights, normalization, pipeline) -> tuple[Pipeline, bool]:
        """The search as a pipeline (a fields search is one), and whether its fuse score is asked."""
        if pipeline is None and fields is None and self.config.default_pipeline is not None:
            pipeline = self.config.default_pipeline
        if pipeline is not None:
            if fields is not None:
                raise InvalidRequest("give a pipeline, or fields to search: the pipeline names its fields")
            return self.config.pipeline(pipeline) if isinstance(pipeline, str) else Pipeline.of(
                pipeline
            ), True
        names = [fields] if isinstance(fields, str) else list(fields or [self.config.fields[0].name])
        depth = field_depth(k, len(names), params)
        if len(names) == 1:
            return Pipeline((Prefetch(names[0], depth),)), False
        return Pipeline(
            tuple(Prefetch(n, depth) for n in names), Fuse(fusion, weights or {}, normalization)
        ), False

    def _reads_statistics(self, queries, names: list[str]) -> bool:
        """Whether a searched field may read collection-wide statistics of text queries."""
        reading = [n for n in names if kind_of(self.config.field(n)).collection_statistics]
        if isinstance(queries, Mapping):
            return any(are_texts(queries.get(n)) for n in reading)
        return bool(reading) and are_texts(queries)

    def _read(self, method: str, shards: Iterable[int], args: tuple) -> dict[int, Any]:
        """Each answering shard's answer (at least one); a shard's refusal of the request is the
        caller's error."""
        answers = self.shards.call(method, {i: (args, {}) for i in shards}, self.deadline)
        failures = [a for a in answers.values() if isinstance(a, BaseException)]
        for failure in failures:
            if isinstance(failure, RetrieverError) and not isinstance(failure, Unavailable):
                raise failure
        if failures and len(failures) == len(answers):
            raise Unavailable(f"no shard of {self.name!r} could answer: {failures[0]}")
        return {i: a for i, a in answers.items() if not isinstance(a, BaseException)}

    def _documents(self, ids: list[str], owners: np.ndarray) -> DocumentList:
        """The stored documents of hits `ids`, from their shards `owners` (a shard gone since it
        answered the search leaves its hits' documents as their ids alone)."""
        rows = {int(s): np.flatnonzero(owners == s) for s in np.unique(owners)}
        found = self.shards.call(
            "documents", {s: (([ids[j] for j in r],), {}) for s, r in rows.items()}, self.deadline
        )
        documents: list[dict[str, Any]] = [{"id": i} for i in ids]
        for s, r in rows.items():
            if isinstance(found[s], BaseException):
                continue
            for j, document in zip(r.tolist(), found[s]):
                documents[j] = document if document is not None else documents[j]
        return DocumentList(documents)

    def get(self, ids: Iterable[str]) -> list[dict[str, Any] | None]:
        """The stored documents with these ids, in the order asked (None for an id not stored)."""
        ids = [ids] if isinstance(ids, str) else [str(i) for i in ids]
        if len(ids) > self.config.max_candidates:  # as one collection allows
            raise InvalidRequest(
                f"{len(ids):,} ids asked at once; this collection allows {self.config.max_candidates:,} "
                "(max_candidates)"
            )
        by_shard, answers = self._to_owners("documents", ids)
        out: list[dict[str, Any] | None] = [None] * len(ids)
        for s, rows in by_shard.items():
            for j, document in zip(rows, answers[s]):
                out[j] = document
        return out

    def count(self, filter: Mapping[str, Any] | None = None) -> int:
        return sum(self._each("count", filter).values())

    def __len__(self) -> int:
        return self.count()

    def info(self) -> dict[str, Any]:
        """The shards' facts, and the collection's: counts summed, `version` the sum of the shards'
        (it grows with every write to any shard)."""
        shards = self._each("info")
        infos = [shards[i] for i in sorted(shards)]
        return {
            "name": self.name,
            "version": sum(s["version"] for s in infos),
            "counts": {key: sum(s["counts"][key] for s in infos) for key in infos[0]["counts"]},
            "shards": dict(zip(self.shards.names, infos)),
        }

    @property
    def version(self) -> int:
        return self.info()["version"]

    def schema(self) -> dict[str, Any]:
        """The collection's schema (every shard has the same): from the first shard answering."""
        answers = self._read("schema", range(len(self.shards.names)), ())
        return answers[min(answers)]

    def warm(self) -> None:
        """Every shard loads its encoders now, and the router its own, rather than in their first
        searches' time."""
        self.queries.warm()
        self._each("warm")

    def scroll(self, *args, **kwargs):
        raise InvalidRequest(
            "scroll is not offered on a sharded collection yet: search, or scroll each shard"
        )

    def save_pipeline(self, *args, **kwargs):
        raise InvalidRequest(
            "a sharded collection's pipelines are its config's: name them in the config it was built with"
        )

    def flush(self) -> bool:
        """Every shard's write buffer into a segment."""
        return any(self._each("flush").values())

    # ---- writes ----------------------------------------------------------------------------

    def add(self, documents: Iterable[Mapping[str, Any]], vectors: Mapping[str, Any] | None = None) -> int:
        """Each document (and its row of each field's `vectors`) to the shard owning its id."""
        documents = list(documents)
        for i, document in enumerate(documents):
            if not isinstance(document, Mapping):
                raise InvalidRequest(f"document {i} must be a mapping, got {type(document).__name__}")
        ids = [document_id(d, i) for i, d in enumerate(documents)]
        calls = {}
        for s, rows in self._by_shard(ids).items():
            part = {name: _rows_of(value, rows) for name, value in (vectors or {}).items()}
            calls[s] = ([documents[j] for j in rows], part or None)
        return sum(self._all("add", calls).values())

    def delete(self, ids: Iterable[str]) -> int:
        ids = [ids] if isinstance(ids, str) else [str(i) for i in ids]
        return sum(self._to_owners("delete", ids)[1].values())

    def _by_shard(self, ids: list[str]) -> dict[int, list[int]]:
        by_shard: dict[int, list[int]] = {}
        for j, i in enumerate(ids):
            by_shard.setdefault(shard_of(i, len(self.shards.names)), []).append(j)
        return by_shard

    def _to_owners(self, method: str, ids: list[str]) -> tuple[dict[int, list[int]], dict[int, Any]]:
        """Each shard called with the ids it owns -> ({shard: positions in `ids`}, {shard: answer})."""
        by_shard = self._by_shard(ids)
        return by_shard, self._all(method, {s: ([ids[j] for j in rows],) for s, rows in by_shard.items()})

    def _each(self, method: str, *args) -> dict[int, Any]:
        """Every shard called with the same arguments; every one must answer."""
        return self._all(method, {i: args for i in range(len(self.shards.names))})

    def _all(self, method: str, calls: Mapping[int, tuple]) -> dict[int, Any]:
        """Every shard called must answer: a write or a count is not partial."""
        answers = self.shards.call(method, {i: (args, {}) for i, args in calls.items()}, None)
        failed = {i: a for i, a in answers.items() if isinstance(a, BaseException)}
        if not failed:
            return answers
        first = next(iter(failed.values()))
        done = [self.shards.names[i] for i in answers if i not in failed]
        write = method in ("add", "delete")
        if isinstance(first, RetrieverError) and not isinstance(first, Unavailable) and not (write and done):
            raise first  # the request's fault, and nothing of it was written
        names = ", ".join(self.shards.names[i] for i in failed)
        if write:
            raise WriteFailed(
                f"{method} failed on shard(s) {names} ({first}); shards that committed their "
                f"part: {', '.join(done) or 'none'}. Writes are idempotent: send the request again"
            ) from first
        raise Unavailable(f"shard(s) {names} did not answer {method!r}: {first}") from first

    # ---- generation ------------------------------------------------------------------------

    def generate(
        self,
        question: str,
        k: int = 5,
        *,
        mode: str = "blend",
        recompute_ratio: float | None = None,
        max_new_tokens: int = 128,
        fields=None,
        filter=None,
        params=None,
    ):
        """As `Collection.generate`: retrieves through the shards, answers here."""
        from retriever.rag.service import retrieve_and_answer

        return retrieve_and_answer(
            self,
            question,
            k,
            mode=mode,
            recompute_ratio=recompute_ratio,
            max_new_tokens=max_new_tokens,
            fields=fields,
            filter=filter,
            params=params,
        )


class _Merged:
    """The answering shards' candidates under one key space: shard s's candidate at position p of
    its union is key `base[s] + p`; a field's exact scores of every key sit side by side."""

    def __init__(self, answers: Mapping[int, ShardAnswer]) -> None:
        self.order = sorted(answers)
        self.answers = [answers[s] for s in self.order]
        widths = [a.width for a in self.answers]
        self.bases = np.concatenate([[0], np.cumsum(widths)]).astype(np.int64)  # [S + 1]
        self.size = len(self.answers[0].ids)
        self.ids = self._side_by_side([a.ids for a in self.answers])  # [B][sum U]
        self.exact = {
            name: np.concatenate([a.exact[name] for a in self.answers], axis=1)
            for name in self.answers[0].exact
        }

    def found(self, plan: Pipeline) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Each prefetched field's best `k` over every shard's list (best first, -1 keys last)."""
        out = {}
        for stage in plan.prefetch:
            scores = np.concatenate([a.found[stage.field][0] for a in self.answers], axis=1)
            keys = np.concatenate(
                [
                    np.where(a.found[stage.field][1] >= 0, a.found[stage.field][1] + base, -1)
                    for a, base in zip(self.answers, self.bases)
                ],
                axis=1,
            )
            order = pipeline_module.best_first(scores, keys)[:, : stage.k]
            out[stage.field] = np.take_along_axis(scores, order, 1), np.take_along_axis(keys, order, 1)
        return out

    def score(self, name: str, keys: np.ndarray) -> np.ndarray:
        table = self.exact[name]
        if table.shape[1] == 0:
            return np.full(keys.shape, -np.inf, dtype=np.float32)
        return np.where(keys >= 0, np.take_along_axis(table, np.maximum(keys, 0), 1), -np.inf).astype(
            np.float32
        )

    def owner(self, keys: np.ndarray) -> np.ndarray:
        """The shard (its number) holding each key."""
        return np.asarray(self.order)[np.searchsorted(self.bases, keys, side="right") - 1]

    def _side_by_side(self, parts: list[list[list]]) -> list[list]:
        """Each answer's per-query lists ([B][<=U]) -> [B][sum U], each padded to its answer's
        width with None: indexed by key."""
        return [
            [x for a, part in zip(self.answers, parts) for x in part[b] + [None] * (a.width - len(part[b]))]
            for b in range(self.size)
        ]

    def documents_of(self, keys: np.ndarray) -> DocumentList:
        """The documents the shards sent with their candidates, of keys [B, k] in batch order."""
        rows = self._side_by_side([a.documents for a in self.answers])
        return DocumentList([d for row in _at_keys(rows, keys) for d in row])

    def ids_of(self, keys: np.ndarray) -> list[list[str]]:
        """keys [B, k] (-1 padding) -> each query's ids."""
        return _at_keys(self.ids, keys)

    def results(
        self, ids: list[str], scores, keys, stages, documents: DocumentList, missing: tuple[str, ...]
    ) -> Results:
        """The batch's `Results` of keys [B, k] (-1 padding), `ids` their ids, query after query."""
        valid = keys >= 0
        offsets = np.zeros(self.size + 1, np.int64)
        np.cumsum(valid.sum(axis=1), out=offsets[1:])
        reasons = []
        for b, count in enumerate(np.diff(offsets).tolist()):
            given = {a.reasons[b] for a in self.answers}
            reason = next(iter(given)) if None not in given and len(given) == 1 else None
            reasons.append(reason or (None if count else "the collection has no documents to return"))
        return Results(
            offsets, scores[valid], {n: v[valid] for n, v in stages.items()},
            np.arange(len(ids), dtype=np.int64), documents, reasons, missing, ids,
        )


def _rows_of(value, rows: list[int]):
    """The given documents' rows of one field's vectors (a matrix, or one entry per document)."""
    if isinstance(value, np.ndarray):
        return value[rows]
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], np.ndarray):
        tokens, offsets = (
            value  # token vectors [T, D] of all documents, document j's at offsets[j]:offsets[j + 1]
        )
        return [tokens[offsets[j] : offsets[j + 1]] for j in rows]
    return [value[j] for j in rows]


def _at_keys(rows: list[list], keys: np.ndarray) -> list[list]:
    """rows [B][sum U] read at keys [B, k] (-1 padding dropped)."""
    return [[rows[b][key] for key in row if key >= 0] for b, row in enumerate(keys.tolist())]
