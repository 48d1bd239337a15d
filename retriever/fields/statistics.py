"""Collection-wide statistics: what a field's scores read of the whole collection, so that shards
of one collection score a query exactly as the collection would (distributed frequencies, as in
Elasticsearch's `dfs_query_then_fetch`).

Only inverted fields read any: BM25 its document count, total length and each query term's
document frequency; inference-free sparse queries the count and frequencies (their idf). A
field's statistics for a batch of queries are plain data, {"documents": N, "length": tokens (BM25),
"df": {term: documents holding it}}, with terms as text (BM25: each shard has its own term ids)
or as the model's token ids in decimal (sparse: one vocabulary everywhere).

    totals = add([shard.statistics(queries, fields) for shard in shards])
    shard.with_statistics(totals).search(queries, ...)   # scores of the unsharded collection
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from .inverted import InvertedField

Statistics = dict[str, dict[str, Any]]  # {field: {"documents", "length", "df"}}


def of_queries(field, encoder, texts: list[str], params: Mapping[str, int]) -> dict[str, Any] | None:
    """The field's statistics for these query texts, or None when its scores read none."""
    if not isinstance(field, InvertedField):
        return None
    return field.term_statistics(encoder, texts, params)


def add(parts: Iterable[Statistics]) -> Statistics:
    """Statistics of several shards -> those of the collection they make up."""
    total: Statistics = {}
    for part in parts:
        for name, stats in part.items():
            into = total.setdefault(name, {"documents": 0, "df": {}})
            into["documents"] += stats["documents"]
            if "length" in stats:
                into["length"] = into.get("length", 0) + stats["length"]
            df = into["df"]
            for term, count in stats["df"].items():
                df[term] = df.get(term, 0) + count
    return total


def totals(fields: Mapping[str, Any]) -> dict[str, dict[str, int]]:
    """{field: its document count (and BM25 total length)} for the fields that read statistics."""
    return {name: f.own_totals() for name, f in fields.items() if isinstance(f, InvertedField)}


def add_totals(parts: Iterable[Mapping[str, Mapping[str, int]]]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for part in parts:
        for name, counts in part.items():
            into = out.setdefault(name, {})
            for key, value in counts.items():
                into[key] = into.get(key, 0) + value
    return out


def applied(field, statistics: Mapping[str, Any] | None):
    """The field as it scores under the collection-wide `statistics` (itself without them)."""
    if statistics is None or not isinstance(field, InvertedField):
        return field
    return field.under(statistics)
