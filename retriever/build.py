"""`retriever build`: stream a corpus into a collection, a chunk of documents at a time.

Each chunk is read, encoded (in resumable blocks), and committed as a segment before the next is
read, so memory stays within `--memory-cap` whatever the corpus size: the chunk size and the
largest segment a merge may make are derived from the cap. An interrupted build resumes after
the chunks it committed, reusing the encoded blocks of the chunk it was in.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from retriever.index import storage

from .buffer import LOG_MAX_ROWS
from .collection import Collection
from .config import CollectionConfig
from .corpus import iter_corpus
from .documents import document_texts, documents_to_table
from .errors import AlreadyExists, InvalidRequest, RetrieverError
from .fields import kind_of

WORK_DIR = storage.BUILD_DIR
DEFAULT_MEMORY_CAP = 4 << 30
DOCUMENT_BYTES = 2048  # a document while its chunk is built: Python objects, Arrow, postings, copies
CHUNK_SHARE = 8  # a chunk's estimated bytes are this share of the cap (encoders, merges, copies)
MERGED_SHARE = 3  # a merged segment's estimated bytes: this share of the cap (a merge gathers rows)
log = logging.getLogger(__name__)


def build(
    config: CollectionConfig,
    input_path: str | Path,
    out: str | Path,
    *,
    resume: bool = False,
    block_size: int = 512,
    memory_cap: int = DEFAULT_MEMORY_CAP,
    progress: bool = True,
) -> Collection:
    """Build a collection at `out` from a corpus, a chunk at a time (a later document with an
    id already built replaces it). Encoded blocks are kept in `out/.build/` until their chunk is
    committed, so `resume=True` after an interruption encodes only what is missing."""
    out = Path(out)
    chunk, largest = chunk_rows(config, memory_cap)
    first, made = not (out / storage.MANIFEST).exists(), not out.exists()
    collection = _collection_to_fill(out, config, resume)
    try:
        return _fill(collection, config, input_path, out, resume, block_size, chunk, largest, progress)
    except RetrieverError:
        if first and not collection.counts["rows"]:  # nothing to resume: leave no directory behind
            storage.undo_create(out, made)
        raise


def _fill(collection: Collection, config: CollectionConfig, input_path, out: Path, resume: bool,
          block_size: int, chunk: int, largest: int, progress: bool) -> Collection:
    collection.max_segment_rows = largest
    work = out / WORK_DIR
    storage.prepare_work_dir(
        work,
        _state(config, input_path, block_size, chunk),
        resume,
        f"the input, config, block size or memory cap changed since the build in {str(out)!r} was "
        "interrupted; build again without --resume",
    )
    done = collection.counts["rows"]  # rows the interrupted build committed, in input order
    vector_fields = [f.name for f in config.fields if kind_of(f).vector_input]
    start = 0
    # closed on errors too, so that they print below it
    with tqdm(desc="building", unit="doc", disable=not progress) as bar:
        for docs, given in iter_corpus(input_path, vector_fields, chunk):
            if start + len(docs) <= done:  # committed before the interruption
                start += len(docs)
                bar.update(len(docs))
                continue
            table = documents_to_table(docs)  # validates ids before any encoding
            vectors = _chunk_vectors(collection, table, given, work, start, block_size)
            collection.add(docs, vectors=vectors)
            for block in work.glob(f"*-{start:012d}-*.npy"):
                block.unlink()
            start += len(docs)
            bar.update(len(docs))
    collection.flush()  # a small last chunk is logged first: into a segment, so the output holds no log
    shutil.rmtree(work, ignore_errors=True)
    log.info("built version %d of %s: %d documents", collection.version, out, len(collection))
    return collection


def chunk_rows(config: CollectionConfig, memory_cap: int) -> tuple[int, int]:
    """(documents per chunk, most live rows a merge may put in one segment) for a memory cap."""
    if memory_cap < 64 << 20:
        raise InvalidRequest(f"--memory-cap must be at least 64MB, got {memory_cap} bytes")
    vector_bytes = sum(  # a model's width is known once loaded: assume a wide one
        4 * (getattr(f, "dim", None) or 1024) for f in config.fields if kind_of(f).vector_input
    )
    per_row = DOCUMENT_BYTES + 3 * vector_bytes  # encoded, normalized, written
    chunk = max(LOG_MAX_ROWS + 1, memory_cap // CHUNK_SHARE // per_row)  # each chunk its own segment
    return int(chunk), int(max(chunk, memory_cap // MERGED_SHARE // per_row))


def parse_size(text: str) -> int:
    """'2GB', '512MB', '1.5G' or a number of bytes -> bytes."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)i?B?\s*", text, re.IGNORECASE)
    if not match:
        raise InvalidRequest(f"--memory-cap {text!r} is not a size such as 2GB or 512MB")
    scale = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}[match[2].upper()]
    return int(float(match[1]) * scale)


def _collection_to_fill(out: Path, config: CollectionConfig, resume: bool) -> Collection:
    if not (out / storage.MANIFEST).exists():
        return Collection.create(out, config)
    existing = Collection.open(out)
    if not (out / WORK_DIR).exists():
        raise AlreadyExists(
            f"{str(out)!r} already holds a built collection ({len(existing)} documents); choose another --out"
        )
    if not resume:
        raise AlreadyExists(f"{str(out)!r} holds an unfinished build; pass --resume to continue it")
    if existing.config != config:
        raise InvalidRequest(
            f"{str(out)!r} was started with a different config; remove it or use the same config"
        )
    return existing


def _state(config: CollectionConfig, input_path, block_size: int, chunk: int) -> dict[str, Any]:
    stat = os.stat(input_path)
    return {"config": config.to_dict(), "input": str(Path(input_path).resolve()), "input_size": stat.st_size,
            "input_mtime": stat.st_mtime, "block_size": block_size, "chunk": chunk}


def _chunk_vectors(collection: Collection, table, given: dict[str, np.ndarray], work: Path, start: int,
                   block_size: int) -> dict[str, np.ndarray]:
    """The chunk's vectors for each field that takes them: brought by the input, or encoded in
    resumable blocks. Other fields (tokenized, sparse) are encoded by `add`."""
    vectors: dict[str, np.ndarray] = {}
    texts = None
    for field in collection.config.fields:
        if not kind_of(field).vector_input or field.source is not None:
            continue
        if field.name in given:
            vectors[field.name] = given[field.name]
            continue
        if not kind_of(field).has_encoder(field):
            raise InvalidRequest(
                f"field {field.name!r} has no model and the input carries no {field.name!r} vectors"
            )
        texts = texts if texts is not None else document_texts(table, collection.config.text_keys)
        vectors[field.name] = _encode_blocks(collection, field.name, texts, work, start, block_size)
    return vectors


def _encode_blocks(collection: Collection, field: str, texts: list[str], work: Path, start: int,
                   block_size: int) -> np.ndarray:
    """[N, D] vectors in document order. Texts are encoded sorted by length, so each batch pads
    little; each finished block is saved so an interrupted build resumes after it."""
    encoder = collection.encoder(field)
    order = np.argsort([len(t) for t in texts], kind="stable")
    out = np.zeros((len(texts), collection.fields[field].dim), dtype=np.float32)
    for block, first in enumerate(range(0, len(texts), block_size)):
        rows = order[first : first + block_size]
        path = work / f"{field}-{start:012d}-{block:06d}.npy"
        if path.exists():
            vectors = np.load(path)
        else:
            vectors = encoder.encode([texts[r] for r in rows])
            tmp = path.with_suffix(".tmp")
            with open(tmp, "wb") as f:
                np.save(f, vectors)
            os.replace(tmp, path)
        out[rows] = vectors
    return out
