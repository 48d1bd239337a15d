"""`retriever build --ray --shards N`: a sharded collection built on Ray.

1. Encode (Ray Data). The corpus is read as Ray Data blocks; each document goes to the shard a
   stable hash of its id names (`shard_of`); the fields that take vectors are encoded by
   `map_batches` on a pool of actors, each loading its models once (on a GPU each when the
   cluster has GPUs). Documents and vectors land as Parquet under `OUT/.ray-build/encoded/`,
   one folder per shard; a marker file records that the step finished.
2. Write (one Ray task per shard, in parallel). Each shard's Parquet is added to its shard
   collection `OUT/shards/shard-i` a chunk at a time, each chunk one committed segment (the
   other fields, BM25 and learned sparse, are encoded here, in the shard's task).
3. The cluster manifest `OUT/cluster.json`, written last.

A killed build resumes (`--resume`): the encode step is skipped once its marker is written, and
each shard continues after the chunks it committed (its rows count what it has consumed).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray

from retriever.build import DEFAULT_MEMORY_CAP, chunk_rows
from retriever.collection import Collection
from retriever.config import CollectionConfig
from retriever.corpus import chunk_folder, pop_vectors, vector_column
from retriever.documents import document_id, document_texts, documents_to_table
from retriever.errors import AlreadyExists, InvalidRequest, RetrieverError
from retriever.fields import kind_of
from retriever.index import storage
from retriever.fields import statistics as field_statistics

from .manifest import MANIFEST, ClusterManifest, shard_of

WORK = ".ray-build"
ENCODED = "encoded"
ENCODED_DONE = "encoded.done"
DOCUMENT = "__document__"  # the column holding each document as JSON (its keys vary by document)
SHARD = "__shard__"
log = logging.getLogger(__name__)


def build(
    config: CollectionConfig,
    input_path: str | Path,
    out: str | Path,
    *,
    shards: int,
    workers: int = 1,
    resume: bool = False,
    batch_size: int = 256,
    memory_cap: int = DEFAULT_MEMORY_CAP,
    gpus: float | None = None,
    progress: bool = False,
) -> ClusterManifest:
    """Build a `shards`-way sharded collection at `out` on the Ray cluster this process joined
    (`ray_serve.start`), encoding on `workers` actors (each with `gpus` GPUs; by default one
    when the cluster has any); `progress` shows Ray Data's progress bars (on stderr)."""
    out = Path(out)
    manifest = ClusterManifest.planned(config, shards)
    if (out / MANIFEST).exists():
        raise AlreadyExists(f"{str(out)!r} already holds a built sharded collection; choose another --out")
    work = out / WORK
    if out.exists() and any(out.iterdir()) and not (resume and work.exists()):
        raise AlreadyExists(
            f"{str(out)!r} is not empty"
            + ("; pass --resume to continue the build there" if work.exists() else "")
        )
    out.mkdir(parents=True, exist_ok=True)
    state = {"config": config.to_dict(), "input": str(Path(input_path).resolve()), "shards": shards}
    storage.prepare_work_dir(
        work,
        state,
        resume,
        "the config, input or --shards changed since the interrupted build; build again into a new --out",
    )
    if not (work / ENCODED_DONE).exists():
        shutil.rmtree(work / ENCODED, ignore_errors=True)
        _encode(config, Path(input_path), work / ENCODED, shards, workers, batch_size, gpus, progress)
        (work / ENCODED_DONE).write_text("done\n")
    chunk, largest = chunk_rows(config, memory_cap)
    write = ray.remote(_write_shard)
    tasks = [
        write.remote(
            config.to_dict(),
            sorted(str(p) for p in (work / ENCODED).glob(f"{SHARD}={i}/*.parquet")),
            str(path),
            chunk,
            largest,
        )
        for i, path in enumerate(manifest.shard_paths(out))
    ]
    totals = ray.get(tasks)
    documents = sum(t["documents"] for t in totals)
    statistics = {
        "fields": field_statistics.add_totals(t["fields"] for t in totals),
        "shards": dict(zip(manifest.shards, totals)),
    }
    done = ClusterManifest(manifest.name, config, manifest.shards, manifest.paths, documents, statistics)
    done.write(out)
    shutil.rmtree(work, ignore_errors=True)
    return done


def _encode(
    config: CollectionConfig,
    input_path: Path,
    encoded: Path,
    shards: int,
    workers: int,
    batch_size: int,
    gpus: float | None,
    progress: bool,
) -> None:
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = progress
    resources = ray.cluster_resources()
    if gpus is None:
        gpus = 1.0 if resources.get("GPU", 0) >= 1 else 0.0
    # encoders on CPUs leave one for reading and writing blocks: with every CPU held by an
    # actor, Ray Data's read tasks wait forever for one
    cpus = 0.0 if gpus else max(0.1, min(1.0, (resources.get("CPU", 1) - 1) / workers))
    dataset = _read(input_path)
    dataset = dataset.map_batches(
        _Encode,
        # on CPUs, each actor's torch threads: its share of the machine's cores, not Ray's 1
        fn_constructor_args=(
            config.to_dict(),
            shards,
            0 if gpus else max(1, int(resources.get("CPU", 1)) // workers),
        ),
        batch_size=batch_size,
        batch_format="pyarrow",
        concurrency=workers,
        num_gpus=gpus,
        num_cpus=cpus,
    )
    try:
        dataset.write_parquet(str(encoded), partition_cols=[SHARD])
    except Exception as e:  # noqa: BLE001 (Ray Data wraps an encoder's error in its own)
        cause = e
        while cause is not None and not isinstance(cause, RetrieverError):
            cause = cause.__cause__ or getattr(cause, "cause", None)
        raise (cause or e) from None


def _read(input_path: Path):
    """The corpus as a Ray Data dataset of raw rows: JSON lines (`line`), Parquet columns, or the
    passages of a folder of text files."""
    import ray.data

    if input_path.is_dir():
        return ray.data.from_items([{"line": json.dumps(d)} for d in chunk_folder(input_path)])
    if not input_path.exists():
        raise InvalidRequest(f"input {str(input_path)!r} does not exist")
    suffix = input_path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        return ray.data.read_text(str(input_path)).rename_columns({"text": "line"})
    if suffix == ".parquet":
        return ray.data.read_parquet(str(input_path))
    raise InvalidRequest(f"input {str(input_path)!r}: a sharded build reads .jsonl, .parquet or a folder")


class _Encode:
    """Ray Data actor: raw rows -> (shard, document JSON, each vector field's vectors)."""

    def __init__(self, config: dict[str, Any], shards: int, threads: int = 0) -> None:
        if threads:
            import torch

            torch.set_num_threads(threads)
        self.config = CollectionConfig.from_dict(config)
        self.shards = shards
        self.vector_fields = [f for f in self.config.fields if kind_of(f).vector_input and f.source is None]
        self.encoders = {
            f.name: kind_of(f).make_encoder(f) for f in self.vector_fields if kind_of(f).has_encoder(f)
        }

    def __call__(self, batch: pa.Table) -> pa.Table:
        names = [f.name for f in self.vector_fields]
        if batch.column_names == ["line"]:  # JSON lines: vectors are keys of the documents
            documents = _parsed(batch.column("line").to_pylist())
            given = pop_vectors(documents, names)
        else:
            given = {n: vector_column(batch, n) for n in names if n in batch.column_names}
            documents = batch.drop_columns(list(given)).to_pylist()
        columns: dict[str, Any] = {
            SHARD: pa.array(
                [shard_of(document_id(d, i), self.shards) for i, d in enumerate(documents)], pa.int32()
            ),
            DOCUMENT: pa.array([json.dumps(d) for d in documents]),
        }
        texts = None
        for field in self.vector_fields:
            if field.name in given:
                vectors = given[field.name]
            elif field.name in self.encoders:
                texts = (
                    texts
                    if texts is not None
                    else document_texts(documents_to_table(documents), self.config.text_keys)
                )
                vectors = np.asarray(self.encoders[field.name].encode(texts), dtype=np.float32)
            else:
                raise InvalidRequest(
                    f"field {field.name!r} has no model and the input carries no {field.name!r} vectors"
                )
            columns[field.name] = pa.FixedSizeListArray.from_arrays(
                pa.array(vectors.ravel()), vectors.shape[1]
            )
        return pa.table(columns)


def _parsed(lines: list[str]) -> list[dict[str, Any]]:
    out = []
    for line in lines:
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise InvalidRequest(f"a corpus line is not valid JSON: {e}: {line[:80]!r}") from None
        if not isinstance(record, dict):
            raise InvalidRequest(
                f"a corpus line is a JSON {type(record).__name__}, not an object: {line[:80]!r}"
            )
        out.append(record)
    return out


def _write_shard(
    config: dict[str, Any], files: list[str], path: str, chunk: int, largest: int
) -> dict[str, int]:
    """One shard's encoded Parquet into its collection, a chunk (one segment) at a time, after
    the rows an interrupted build committed."""
    config_ = CollectionConfig.from_dict(config)
    directory = Path(path)
    collection = (
        Collection.open(directory)
        if (directory / "manifest.json").exists()
        else Collection.create(directory, config_)
    )
    collection.max_segment_rows = largest
    done, seen = collection.counts["rows"], 0
    vector_fields = [f.name for f in config_.fields if kind_of(f).vector_input and f.source is None]
    for file in files:
        for batch in pq.ParquetFile(file, pre_buffer=False).iter_batches(batch_size=chunk):
            skip, seen = max(0, done - seen), seen + batch.num_rows
            if skip >= batch.num_rows:
                continue  # committed before the interruption
            batch = batch.slice(skip)
            documents = [json.loads(d) for d in batch.column(DOCUMENT).to_pylist()]
            vectors = {n: vector_column(batch, n) for n in vector_fields if n in batch.schema.names}
            collection.add(documents, vectors=vectors or None)
    collection.flush()
    return {"documents": len(collection), "fields": field_statistics.totals(collection.fields)}
