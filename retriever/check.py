"""`retriever check`: checksums, counts, and a sample of queries against exact search."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from retriever.index import storage
from retriever.kernels import reference

from .binary_field import BinaryField
from .collection import Collection
from .errors import RetrieverError
from .fields import DenseField
from .sparse_fields import InvertedField

EXACT_MIN_RECALL = 0.99  # exact indexes may differ only on ties


def check(path: str | Path, *, sample: int = 100, k: int = 10, min_recall: float = 0.5, seed: int = 0) -> dict[str, Any]:
    """{"ok", "problems", "fields": {name: {"recall@k", "exact"}}}; `ok` is False on any problem."""
    path = Path(path)
    try:
        with storage.pinned(path) as manifest:  # a writer elsewhere keeps this version's files meanwhile
            return _check_version(path, manifest, sample, k, min_recall, seed)
    except RetrieverError as e:
        return {"ok": False, "problems": [str(e)], "fields": {}}


def _check_version(path: Path, manifest: dict[str, Any], sample: int, k: int, min_recall: float, seed: int) -> dict[str, Any]:
    problems = storage.verify_files(path, manifest["files"])
    if problems:
        return {"ok": False, "problems": problems, "fields": {}}
    collection = Collection.load(path, manifest)
    fields = {}
    live = np.flatnonzero(~collection.deleted)
    if live.size:
        rows = np.random.default_rng(seed).choice(live, size=min(sample, live.size), replace=False)
        for name, field in collection.fields.items():
            if isinstance(field, InvertedField):
                fields[name] = inverted_coverage(collection, field, problems)
                continue
            if not isinstance(field, (DenseField, BinaryField)):
                fields[name] = {"checked": False}  # multi-vector: no cheap exact reference to sample against
                continue
            recall = sample_recall(collection, name, rows, k)
            exact = isinstance(field, DenseField) and field.index.exact
            floor = EXACT_MIN_RECALL if exact else min_recall
            fields[name] = {f"recall@{k}": round(recall, 4), "exact": exact, "min_recall": floor}
            if recall < floor:
                problems.append(f"field {name!r}: recall@{k} against exact search is {recall:.3f} < {floor}")
    return {"ok": not problems, "problems": problems, "fields": fields, "version": collection.version, "counts": manifest["counts"]}


def sample_recall(collection: Collection, field_name: str, rows: np.ndarray, k: int) -> float:
    """Mean overlap of the field's top-k with exact top-k, using stored vectors of `rows` as queries."""
    field = collection.fields[field_name]
    base = stored_vectors(field)
    queries = base[rows]
    allowed = ~collection.deleted
    k = min(k, int(allowed.sum()))
    _, approx = field.search(queries, k, {}, None if allowed.all() else allowed)
    _, exact = reference.exact_search(queries, base, k, "ip" if isinstance(field, BinaryField) else field.config.metric, allowed)
    overlap = [len(set(a[a >= 0]) & set(e[e >= 0])) / k for a, e in zip(approx, exact)]
    return float(np.mean(overlap))


def stored_vectors(field: DenseField | BinaryField) -> np.ndarray:
    """The float vectors a field keeps on disk (a binary field's int8 ones scaled back)."""
    if isinstance(field, DenseField):
        return field.vectors.to_array()
    base = field.rescore_vectors.to_array().astype(np.float32)
    return base * field.scales.to_array() if field.scales is not None else base


def inverted_coverage(collection: Collection, field: InvertedField, problems: list[str]) -> dict[str, Any]:
    """Every live document must be in exactly one segment of an inverted field (search there is exact)."""
    covered = np.zeros(len(collection.deleted), dtype=np.int64)
    for segment in field.segments:
        np.add.at(covered, np.asarray(segment.doc_rows), 1)
    live = ~collection.deleted
    missing, doubled = int((covered[live] == 0).sum()), int((covered[live] > 1).sum())
    if missing or doubled:
        problems.append(f"field {field.config.name!r}: {missing} live documents missing from the postings, {doubled} indexed twice")
    return {"exact": True, "segments": len(field.segments), "documents_indexed": int(covered.sum())}
