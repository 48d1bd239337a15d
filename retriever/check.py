"""`retriever check`: checksums, counts, and a sample of queries against exact search."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from retriever.index import storage

from .collection import Collection
from .errors import RetrieverError


def check(path: str | Path, *, sample: int = 100, k: int = 10, min_recall: float = 0.5, seed: int = 0) -> dict[str, Any]:
    """{"ok", "problems", "fields": {name: {"recall@k", "exact"}}}; `ok` is False on any problem."""
    path = Path(path)
    try:
        for _ in range(storage.PIN_ATTEMPTS):
            with storage.pinned(path) as manifest:  # a writer elsewhere keeps this version's files meanwhile
                report = _check_version(path, manifest, sample, k, min_recall, seed)
                if report is not None:
                    return report
        raise RetrieverError(f"{str(path)!r} flushed its log too often while it was being checked; retry")
    except RetrieverError as e:
        return {"ok": False, "problems": [str(e)], "fields": {}}


def _check_version(
    path: Path, manifest: dict[str, Any], sample: int, k: int, min_recall: float, seed: int
) -> dict[str, Any] | None:
    problems = storage.verify_files(path, manifest["files"])
    if problems:
        return {"ok": False, "problems": problems, "fields": {}}
    collection = Collection.load(path, manifest)
    if not collection.replay_log():  # the write-ahead log's writes are checked too
        return None  # flushed meanwhile: check the newer version
    fields = {}
    live = np.flatnonzero(~collection.deleted)
    if live.size:
        rows = np.random.default_rng(seed).choice(live, size=min(sample, live.size), replace=False)
        for name, field in collection.fields.items():
            fields[name], found = field.probe(rows, collection.deleted, k, min_recall)
            problems.extend(found)
    return {"ok": not problems, "problems": problems, "fields": fields, "version": collection.version,
            "counts": collection.counts, "buffer": collection.info()["buffer"]}
