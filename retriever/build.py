"""`retriever build`: encode a corpus in resumable blocks, then index and commit it in one version."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from retriever.index import storage

from .collection import Collection
from .config import CollectionConfig
from .corpus import read_corpus
from .documents import document_texts, documents_to_table
from .fields import kind_of
from .errors import AlreadyExists, InvalidRequest

WORK_DIR = ".build"
log = logging.getLogger(__name__)


def build(
    config: CollectionConfig, input_path: str | Path, out: str | Path, *, resume: bool = False,
    block_size: int = 512, progress: bool = True,
) -> Collection:
    """Build a collection at `out` from a corpus. Encoded blocks are kept in `out/.build/` until
    the commit, so `resume=True` after an interruption encodes only what is missing."""
    out = Path(out)
    docs, given = read_corpus(input_path, [f.name for f in config.fields if kind_of(f).vector_input])
    table = documents_to_table(docs)  # validates ids before any encoding
    log.info("read %d documents from %s", table.num_rows, input_path)
    collection = _empty_collection(out, config, resume)
    work = out / WORK_DIR
    storage.prepare_work_dir(work, _state(config, input_path, block_size, table.num_rows), resume,
                             f"the input, config or block size changed since the build in {str(out)!r} was interrupted; build again without --resume")
    vectors: dict[str, np.ndarray] = {}
    texts = None
    for field in config.fields:
        if not kind_of(field).vector_input:
            continue  # tokenized or sparse-encoded by `add` below (not resumable yet)
        if field.name in given:
            vectors[field.name] = given[field.name]
            continue
        if not kind_of(field).has_encoder(field):
            raise InvalidRequest(f"field {field.name!r} has no model and the input carries no {field.name!r} vectors")
        texts = texts if texts is not None else document_texts(table, config.text_keys)
        vectors[field.name] = _encode_blocks(collection, field.name, texts, work, block_size, progress)
    log.info(
        "indexing %d documents (%s)", table.num_rows, ", ".join(f"{f.name}: {f.kind}" for f in config.fields)
    )
    collection.add(table.to_pylist(), vectors=vectors, progress=progress)
    collection.flush()  # a small build is logged first: into a segment, so the output holds no log
    shutil.rmtree(work, ignore_errors=True)
    log.info("committed version %d to %s", collection.version, out)
    return collection


def _empty_collection(out: Path, config: CollectionConfig, resume: bool) -> Collection:
    if not (out / storage.MANIFEST).exists():
        return Collection.create(out, config)
    existing = Collection.open(out)
    if existing.counts["rows"] > 0:
        raise AlreadyExists(f"{str(out)!r} already holds a built collection ({len(existing)} documents); choose another --out")
    if not resume:
        raise AlreadyExists(f"{str(out)!r} holds an unfinished build; pass --resume to continue it")
    if existing.config != config:
        raise InvalidRequest(f"{str(out)!r} was started with a different config; remove it or use the same config")
    return existing


def _state(config: CollectionConfig, input_path, block_size: int, count: int) -> dict[str, Any]:
    stat = os.stat(input_path)
    return {"config": config.to_dict(), "input": str(Path(input_path).resolve()), "input_size": stat.st_size,
            "input_mtime": stat.st_mtime, "block_size": block_size, "documents": count}


def _encode_blocks(collection: Collection, field: str, texts: list[str], work: Path, block_size: int, progress: bool) -> np.ndarray:
    """[N, D] vectors in document order. Texts are encoded sorted by length, so each batch pads
    little; each finished block is saved so an interrupted build resumes after it."""
    encoder = collection.encoder(field)
    order = np.argsort([len(t) for t in texts], kind="stable")
    out = np.zeros((len(texts), collection.fields[field].dim), dtype=np.float32)
    bar = tqdm(total=len(texts), desc=f"encoding {field}", unit="doc", disable=not progress)
    for block, start in enumerate(range(0, len(texts), block_size)):
        rows = order[start : start + block_size]
        path = work / f"{field}-{block:06d}.npy"
        if path.exists():
            vectors = np.load(path)
        else:
            vectors = encoder.encode([texts[r] for r in rows])
            tmp = path.with_suffix(".tmp")
            with open(tmp, "wb") as f:
                np.save(f, vectors)
            os.replace(tmp, path)
        out[rows] = vectors
        bar.update(len(rows))
    bar.close()
    return out
