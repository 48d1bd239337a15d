"""Labelled queries for ranking-trained PQ (`Collection.tune_pq`, `retriever tune-pq`): which
fields can take it, and the queries with their relevant documents gathered as vectors
(`index.jpq.RankingSet`), the form the field keeps and trains every PQ index of it on."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Mapping

import numpy as np

from .errors import InvalidRequest
from .index import jpq
from .index.faiss_index import FaissIndex

if TYPE_CHECKING:
    from .collection import Collection


def checked_field(collection: "Collection", name: str, hold_out: str):
    """The dense field `name`, if its index keeps PQ codes scored by inner product."""
    if hold_out not in jpq.HOLD_OUTS:
        raise InvalidRequest(f"hold_out must be one of {jpq.HOLD_OUTS}, got {hold_out!r}")
    if name not in collection.fields:
        raise InvalidRequest(f"unknown field {name!r}; fields: {list(collection.fields)}")
    field = collection.fields[name]
    config = field.config
    if config.kind != "dense":
        raise InvalidRequest(f"ranking-trained PQ applies to dense fields; {name!r} is {config.kind!r}")
    if config.metric != "ip":
        raise InvalidRequest(
            f"ranking-trained PQ scores by inner product; field {name!r} uses {config.metric!r}"
        )
    spann = "SPANN" in config.index.upper()
    if spann or not jpq.supports(FaissIndex(config.index, field.dim, "ip").cpu_index):
        raise InvalidRequest(
            f"field {name!r} has index {config.index!r}: ranking-trained PQ needs PQ codes (e.g. "
            "'IVF1024,PQ48', 'IVF1024,PQ48x4fs' or 'PQ48')"
        )
    return field


def query_vectors(
    collection: "Collection", name: str, queries: Mapping[str, Any], qrels: Mapping[str, Mapping[str, int]]
) -> tuple[list[str], np.ndarray]:
    """(ids of the judged queries, their vectors [Q, D]): texts are encoded by the field's model,
    vectors checked as a search's are."""
    for q, judged in qrels.items():
        if not isinstance(judged, Mapping) or not all(
            isinstance(d, str) and isinstance(g, (int, float)) and not isinstance(g, bool)
            for d, g in judged.items()
        ):
            raise InvalidRequest(
                f"qrels[{q!r}] must map document ids to numeric grades (e.g. {{'doc1': 1}}), "
                f"got {judged!r:.80}"
            )
    qids = [q for q in qrels if q in queries and any(grade > 0 for grade in qrels[q].values())]
    if len(qids) < 2:
        raise InvalidRequest(f"ranking-trained PQ needs at least 2 judged queries with a relevant "
                             f"document, got {len(qids)}")
    field = collection.fields[name]
    given = [queries[q] for q in qids]
    if all(isinstance(q, str) for q in given):
        if not collection.can_encode(name):
            raise InvalidRequest(f"field {name!r} has no model to encode query texts: give query vectors")
        return qids, field.queries_from_texts(collection.encoder(name), given, {})
    return qids, field.check_queries(np.stack([np.asarray(q, dtype=np.float32) for q in given]))


def ranking_set(
    field, qids: list[str], vectors: np.ndarray, qrels: Mapping[str, Mapping[str, int]],
    live_rows: Callable[[list[str]], np.ndarray], hold_out: str,
) -> jpq.RankingSet:
    """The judged queries whose relevant documents are live (`live_rows` of their ids), with
    those documents' vectors as the dense `field` stores them."""
    kept, positives, owner = [], [], []
    for q, vector in zip(qids, vectors):
        relevant = [doc for doc, grade in qrels[q].items() if grade > 0]
        rows = live_rows(relevant)
        if len(rows):
            positives.append(field.vectors.gather(rows))
            owner += [len(kept)] * len(rows)
            kept.append(vector)
    if len(kept) < 2:
        raise InvalidRequest(
            f"ranking-trained PQ needs at least 2 judged queries whose relevant documents are in the "
            f"collection; {len(kept)} of {len(qids)} have any"
        )
    return jpq.RankingSet(np.stack(kept).astype(np.float32), np.concatenate(positives).astype(np.float32),
                          np.asarray(owner, np.int64), hold_out)
