"""Collection: a directory of documents and fields, opened at one pinned manifest version."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any, BinaryIO

import numpy as np
import pyarrow as pa

from retriever.index import disk, storage, wal

from . import fusion as fusion_module
from . import pipeline as pipeline_module
from . import buffer, merge_policy, merging, snapshots
from .config import CollectionConfig, FieldConfig
from .documents import DocumentTable, concat, document_texts, documents_to_table, page_by_id
from .errors import CorruptIndex, InvalidRequest, NotFound, RetrieverError, WriteFailed
from .fields import KINDS, Field, kind_of, request_params
from .fields import base as field_base
from .fields import statistics as field_statistics
from .fields.base import NO_TERMS, Param, SegmentView
from .filters import filter_mask
from .segments import Segment, id_hashes, new_segment, open_segments, with_changed_deletions
from .text_encoders import TextEncoders
from .types import Results, are_texts

log = logging.getLogger(__name__)
FUSION_CANDIDATES = 100  # per-field candidates fused when several fields are searched
BACKGROUND_SLACK = 4  # a buffer this many times full is flushed by the write itself (backpressure)
FUSION_PARAMS = {"candidates": field_base.depth(1)}  # request parameters of the collection itself
Queries = str | Sequence[str] | np.ndarray | Mapping[str, Any]


class Collection:
    """Documents plus searchable fields. A `Collection` object is pinned to the manifest version
    it was opened at, plus the write-ahead log's writes after it (replayed at open into a buffer):
    writers elsewhere never change what it sees; `reopen()` moves forward.

    A small write (up to `buffer.LOG_MAX_ROWS` documents, or a delete) is acknowledged once its
    record is fsynced in the log, and searchable at once from the buffer; a flush (when the buffer
    is full, before a merge, on `flush()`) publishes the buffer as one segment in a new version.
    A larger write is committed as a segment of its own."""

    def __init__(self, path: Path, config: CollectionConfig, manifest: dict[str, Any],
                 segments: list[Segment], fields: dict[str, Field]) -> None:
        self.path = path
        self.config = config  # fixed at create, but for named pipelines (`save_pipeline`)
        self._encoders = TextEncoders(config)
        self.merge_inline = True  # merges run in the writing call; a server's background merger sets False
        # merges stop at this size: set by a build under a memory cap, kept in every later manifest
        self.max_segment_rows: int | None = manifest.get("max_segment_rows")
        self._merging: set[str] = set()  # names of merges in flight: their files are not debris
        self._holds_lock = False
        self.sync_writes = True  # a write returns once its log record is durable; a server syncs itself
        self._log = wal.Log(path)
        self._log_seq = int(manifest.get("log_applied", 0))  # the last logged write applied here
        self._log_end = 0  # bytes of the log read (or written) so far
        self._set_state(manifest, segments, fields)

    def _set_state(
        self,
        manifest,
        segments: list[Segment],
        fields: dict[str, Field],
        buffered: tuple[tuple[int, buffer.Write], ...] = (),
    ) -> None:
        """`segments`: the manifest's, then one per buffered write (`buffered`, with its sequence
        number); the manifest's segments may carry deletions made by buffered writes."""
        if manifest["config"] != getattr(self, "manifest", manifest)["config"]:  # a pipeline was saved
            self.config = CollectionConfig.from_dict(manifest["config"])
        self.manifest = manifest
        self.segments = segments
        self._buffered = buffered
        if not buffered:
            self._base = segments  # the segments as the manifest has them (deletions too)
            self._scratch: buffer.Scratch | None = None
        self.counts = _counts(segments)
        self.documents = DocumentTable([s.table for s in segments], segments)
        self.fields = fields
        for derived in ("deleted", "_live"):  # O(rows): made again on first use, not per write
            self.__dict__.pop(derived, None)

    @functools.cached_property
    def deleted(self) -> np.ndarray:
        """[rows] bool: the deleted rows of every segment, in row order."""
        return np.concatenate([s.deleted for s in self.segments]) if self.segments else np.zeros(0, bool)

    @functools.cached_property
    def _live(self) -> np.ndarray | None:
        """[rows] bool: the rows a search may return (None when all may)."""
        return None if not self.counts["deleted"] else ~self.deleted

    # ---- lifecycle -------------------------------------------------------------------------

    @classmethod
    def create(cls, path: str | Path, config: CollectionConfig | Mapping[str, Any] | str | Path) -> "Collection":
        """Make a collection in an empty or missing directory: the engine owns every file in it."""
        path = Path(path)
        config = _as_config(config)
        storage.check_new_directory(path)
        # loads models: fail before touching disk
        sizes = {f.name: kind_of(f).initial_size(f) for f in config.fields if f.source is None}
        sizes.update({f.name: sizes[f.source] for f in config.fields if f.source is not None})
        made = not path.exists()
        try:
            disk.mkdir(path)
            with storage.writer_lock(path):
                storage.commit_manifest(path, _first_manifest(path, config, sizes))
        except OSError as e:
            storage.undo_create(path, made)
            raise storage.write_error(path, e, "creating the collection") from None
        return cls.open(path)

    @classmethod
    def drop(cls, path: str | Path) -> None:
        """Delete the collection at `path`: every file the engine wrote there, then the directory
        once empty (a file the engine did not write is left, and the directory with it). Waits
        for its writer; objects already open keep answering from what they hold."""
        path = Path(path)
        cut_short = (path / storage.LOCK).exists()  # a drop that removed the manifest, then failed
        if not (path / storage.MANIFEST).exists() and not cut_short:
            raise NotFound(f"{str(path)!r} holds no collection")
        try:
            with storage.writer_lock(path):
                storage.remove_collection(path, (wal.LOG, storage.BUILD_DIR))
        except OSError as e:
            raise storage.write_error(path, e, "dropping the collection", "drop it again to finish") from None

    @classmethod
    def open(cls, path: str | Path) -> "Collection":
        """Open the current version and replay the log's writes after it; every file is checked
        against the manifest before use."""
        path = Path(path)
        for _ in range(storage.PIN_ATTEMPTS):
            with storage.pinned(path) as manifest:
                collection = cls.load(path, manifest)
                if collection.replay_log():
                    return collection
        raise RetrieverError(f"{str(path)!r} flushed its log too often while it was being opened; retry")

    @classmethod
    def load(cls, path: Path, manifest: dict[str, Any], previous: "Collection | None" = None) -> "Collection":
        """Open the version `manifest` describes (pinned by the caller with `storage.pinned`);
        segments `previous` (an earlier version) has open are taken from it, not read again."""
        files = manifest["files"]
        segments = open_segments(
            path, manifest, {s.entry["name"]: s for s in previous.segments} if previous else {}
        )
        config = CollectionConfig.from_dict(manifest["config"])
        fields = {}
        for f in config.fields:
            views = [
                SegmentView(s.entry["name"], s.rows, s.entry.get("fields", {}).get(f.name)) for s in segments
            ]
            reuse = previous.fields[f.name].opened() if previous else {}
            fields[f.name] = kind_of(f).open(path, f, manifest["fields"][f.name], files, views, reuse)
        return cls(path, config, manifest, segments, fields)

    def replay_log(self) -> bool:
        """Apply the log's writes newer than this object's into its buffer. False when the
        collection moved to a newer version meanwhile (a flush may have emptied the log)."""
        records, end, _ = wal.read(self.path, self._log_end)
        if storage.read_manifest(self.path)["version"] != self.version:
            return False
        self._apply_logged(records)
        self._log_end = end
        return True

    def _apply_logged(self, records: list[wal.Record]) -> None:
        """Apply the log's records this object lacks, in order; those at or below its last write
        are in a segment already (the log is emptied only after a flush publishes)."""
        for record in records:
            if record.seq > self._log_seq:
                if record.seq != self._log_seq + 1:
                    raise CorruptIndex(
                        f"{str(self.path)!r}: the write-ahead log jumps from write {self._log_seq} to "
                        f"{record.seq}"
                    )
                self._apply(record.seq, buffer.Write.from_bytes(record.body))
            self._log_end = record.end

    def view(self) -> "Collection":
        """A view pinned at this object's current version: later writes through this object
        replace its state wholesale and leave the view untouched."""
        return copy.copy(self)

    def snapshot(self, out: str | Path | BinaryIO) -> int:
        """Write a consistent snapshot to a file or path: the write buffer is flushed, then the
        newest version is archived (tar). Returns the version archived."""
        self.flush()
        with snapshots.opened(out, "wb") as target:
            return snapshots.write(self.path, target)

    @classmethod
    def restore(
        cls, archive: str | Path | BinaryIO, path: str | Path, name: str | None = None
    ) -> "Collection":
        """A collection at `path` (an empty or missing directory) made from a snapshot archive,
        renamed `name` when given; nothing is left at `path` when the archive is damaged."""
        with snapshots.opened(archive, "rb") as source:
            snapshots.restore(source, path, name=name)
        return cls.open(path)

    def reopen(self) -> "Collection":
        """The newest committed version of this collection, with the writes logged since (its
        encoders, already loaded here, are shared: the fields' configs never change)."""
        fresh = Collection.open(self.path)
        fresh._encoders = self._encoders
        return fresh

    # ---- facts -------------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def version(self) -> int:
        return int(self.manifest["version"])

    @property
    def _committed(self) -> int:
        """How many of `segments` the manifest holds (the rest are the buffer's)."""
        return len(self._base)

    @property
    def log_position(self) -> int:
        """The last logged write this object holds (writes are numbered from 1, across flushes)."""
        return self._log_seq

    def __len__(self) -> int:
        return int(self.counts["documents"])

    def info(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "path": str(self.path),
            "version": self.version,
            "counts": dict(self.counts),
            "format_version": self.manifest["format_version"],
            "segments": [
                {"name": s.entry["name"], "rows": s.rows, "deleted": s.deleted_count}
                for s in self.segments[: self._committed]
            ],
            "buffer": {
                "writes": len(self._buffered),
                "rows": sum(s.rows for s in self.segments[self._committed :]),
                "last_write": self._log_seq,  # its number in the log (writes are numbered from 1)
            },
            "fields": {name: f.info() for name, f in self.fields.items()},
            "bytes_on_disk": sum(e["size"] for e in self.manifest["files"].values()),
        }

    def schema(self) -> dict[str, Any]:
        """What a client needs to build requests: the request limits, and per field its kind,
        model, dimension, the query inputs it takes (texts, vectors, sparse, tokens, codes) and
        the search parameters it reads with their ranges."""
        config = self.config
        return {
            "name": self.name,
            "text_keys": list(config.text_keys),
            "max_k": config.max_k,
            "max_batch": config.max_batch,
            "max_candidates": config.max_candidates,
            "params": _param_ranges(FUSION_PARAMS),  # read when several fields are fused
            "fields": [self._field_schema(f) for f in config.fields],
        }

    def _field_schema(self, config: FieldConfig) -> dict[str, Any]:
        kind, facts = kind_of(config), self.fields[config.name].info()
        return {
            "name": config.name,
            "kind": config.kind,
            "model": config.model or "",
            "dim": int(facts.get("dim") or facts.get("token_dim") or 0),
            "metric": getattr(config, "metric", ""),
            "index": getattr(config, "index", None) or "",
            "source": config.source or "",
            "code_bytes": int(facts.get("bytes_per_vector", 0)),
            "query_inputs": [*(["texts"] if self.can_encode(config.name) else []), *kind.query_inputs],
            "params": _param_ranges(kind.request_params),
        }

    # ---- writes ------------------------------------------------------------------------------

    def add(self, documents: Iterable[Mapping[str, Any]], vectors: Mapping[str, Any] | None = None, *, progress: bool = False) -> int:
        """Insert documents, replacing any with the same id (upsert). Returns how many were added.

        `vectors` {field: ...} supplies precomputed vectors: a [N, D] matrix for a dense field, a
        list of (term ids, weights) pairs or {term id: weight} dicts for a sparse field. Other
        fields are encoded from the documents' text. Nothing on disk changes unless the whole
        batch is valid and committed.
        """
        table = documents_to_table(documents)
        concat([self.documents.table.slice(0, 0), table])  # schema clash -> InvalidRequest before any work
        unknown = set(vectors or {}) - set(self.fields)
        if unknown:
            raise NotFound(f"vectors given for unknown field(s) {sorted(unknown)}; fields: {list(self.fields)}")
        texts = None
        payloads = {}
        for name, field in self.fields.items():
            given = (vectors or {}).get(name)
            if field.config.source is not None:
                if given is not None:
                    raise InvalidRequest(f"field {name!r} binarizes the vectors of field {field.config.source!r}; pass those instead")
                continue
            if given is not None:
                payloads[name] = field.check_documents(given, table.num_rows)
                continue
            if not kind_of(field.config).has_encoder(field.config):
                raise InvalidRequest(
                    f"field {name!r} has no model: give its vectors with the documents (in Python "
                    f"vectors={{{name!r}: ...}}; over gRPC UpsertBatch.vectors[{name!r}])"
                )
            texts = texts if texts is not None else document_texts(table, self.config.text_keys)
            payloads[name] = field.documents_from_texts(self.encoder(name), texts, progress)
        self._commit(table, self._derived(payloads, table.num_rows), table.column("id").to_pylist())
        return table.num_rows

    def _derived(self, payloads: dict[str, Any], count: int) -> dict[str, Any]:
        """`payloads` plus those of fields derived from another field's vectors (binary fields)."""
        out = dict(payloads)
        for name, field in self.fields.items():
            if field.config.source is not None:
                out[name] = field.check_documents(payloads[field.config.source], count)
        return out

    def delete(self, ids: Iterable[str]) -> int:
        """Delete documents by id; unknown ids are ignored. Returns how many were deleted."""
        ids = [ids] if isinstance(ids, str) else list(ids)
        return self._commit(None, {}, [str(i) for i in ids])

    def _commit(self, table: pa.Table | None, payloads: dict[str, Any], ids: list[str]) -> int:
        """Publish one new version holding `table` (with its fields' `payloads`) in place of the
        live documents with these `ids`; returns how many live documents were replaced or deleted.

        Runs under the writer lock, on the newest version on disk (reloaded first when another
        writer moved it on). This object's state changes only once the new manifest is renamed
        into place; a failure before that leaves it, and the directory, at the old version."""
        with self._writer():
            self._catch_up()
            self._check_format()
            rows = self._live_rows(ids)
            if table is None and not len(rows):
                return 0
            if table is not None and table.num_rows > buffer.LOG_MAX_ROWS:
                self._flush()
                deleted = np.concatenate([self.deleted, np.zeros(table.num_rows, dtype=bool)])
                deleted[rows] = True
                pending = self._prepare(payloads)
                self._publish(lambda v: self._write_version(v, deleted, table, pending))
                self._merge_while_needed()
                return len(rows)
            self._log_write(table, payloads, ids, rows)
        if self.sync_writes:
            self.sync_log()
        return len(rows)

    # ---- the write-ahead log and its buffer ------------------------------------------------

    def _log_write(
        self, table: pa.Table | None, payloads: dict[str, Any], ids: list[str], rows: np.ndarray
    ) -> None:
        """Append a small write to the log and apply it to the buffer (the writer lock is held;
        `rows`: the live rows of `ids`); durable once `sync_log` returns. A full buffer is
        flushed: should that fail, the write stands (it is logged) and a later write flushes."""
        logged = {n: p for n, p in payloads.items() if self.fields[n].config.source is None}
        write, seq, start = buffer.Write(table, logged, ids), self._log_seq + 1, self._log_end
        pending = self._prepare(payloads)  # a payload the fields refuse is refused before logging
        try:
            end = self._log.append(seq, write.to_bytes(), start)
        except OSError as e:
            raise storage.write_error(self.path, e, "logging a write") from None
        try:
            self._apply(seq, write, pending, rows)
        except BaseException:
            with contextlib.suppress(OSError):  # else the next writer finds a record past this object's
                self._log.cut(start)
            raise
        self._log_end = end
        # a server's merger flushes a full buffer; its writes flush one only when far over
        if self._buffer_full(1 if self.merge_inline else BACKGROUND_SLACK):
            try:
                self._flush()
                self._merge_while_needed()
            except WriteFailed as e:
                log.warning("flushing the write buffer of %s failed, retried after a later write: %s",
                            self.path, e)

    def _prepare(self, payloads: dict[str, Any]) -> dict[str, Any]:
        """Each field's in-memory work for a write's documents (`payloads`, derived fields' included)."""
        return {name: self.fields[name].prepare(payload) for name, payload in payloads.items()}

    def _apply(
        self,
        seq: int,
        write: buffer.Write,
        pending: dict[str, Any] | None = None,
        rows: np.ndarray | None = None,
    ) -> None:
        """Logged write `seq` applied to this object's buffer: its documents a new scratch segment,
        its deletions marked in memory (`rows`: the live rows of its ids, found here if not given).
        Nothing changes here unless all of it succeeds."""
        if pending is None:  # a write read back from the log
            table = write.table
            pending = {} if table is None else self._prepare(self._derived(write.payloads, table.num_rows))
        rows = rows if rows is not None else self._live_rows(write.ids)
        segments = list(self.segments)
        starts = np.cumsum([0] + [s.rows for s in segments])
        owners = np.searchsorted(starts, rows, side="right") - 1
        for i in np.unique(owners).tolist():  # only the segments this write deletes from change
            now = segments[i].deleted.copy()
            now[rows[owners == i] - starts[i]] = True
            segments[i] = segments[i].with_state(segments[i].entry, now)
        fields = self.fields
        if write.table is not None:
            rows_added = write.table.num_rows
            scratch = self._scratch or buffer.Scratch()
            name = f"buf-{seq:06d}"
            made = {}
            try:
                for fname, work in pending.items():
                    *_, made[fname] = work.write(scratch.path, name)
            except OSError as e:
                raise storage.write_error(self.path, e, "buffering a logged write") from None
            fields = {**fields, **{fname: make() for fname, make in made.items()}}
            entry = {"name": name, "rows": rows_added, "documents": None, "deleted": None}
            segments.append(Segment(entry, write.table, np.zeros(rows_added, dtype=bool)))
            self._scratch = scratch
        self._set_state(self.manifest, segments, fields, (*self._buffered, (seq, write)))
        self._log_seq = seq

    def needs_flush(self) -> bool:
        """Whether the write buffer is full (what a background merger asks before flushing it)."""
        return self._buffer_full()

    def _buffer_full(self, times: int = 1) -> bool:
        rows = sum(s.rows for s in self.segments[self._committed :])
        return (
            len(self._buffered) >= times * buffer.FLUSH_WRITES
            or rows >= times * buffer.FLUSH_ROWS
            or self._log_end >= times * buffer.FLUSH_LOG_BYTES
        )

    def sync_log(self) -> None:
        """Make every write this object has logged durable (concurrent callers share one fsync)."""
        try:
            self._log.sync(self._log_end)
        except OSError as e:
            raise storage.write_error(self.path, e, "making a logged write durable") from None

    def flush(self) -> bool:
        """Publish the write buffer as a segment in a new version. False when it was empty."""
        with self._writer():
            self._catch_up()
            if not self._buffered:
                return False
            self._flush()
        return True

    def _flush(self) -> None:
        """Flush the buffer in the call (the writer lock is held)."""
        plan = self.plan_flush()
        if plan is not None:
            self.write_flush(plan)
            self.finish_flush(plan)

    def plan_flush(self) -> buffer.FlushPlan | None:
        """The buffer as it is now, to flush (call it, and `finish_flush`, where writes to this
        object are serialized; `write_flush` needs no lock, so writes go on meanwhile)."""
        if not self._buffered:
            return None
        first = self._committed
        merge = merging.plan(self.version, self.segments, self.fields, first, len(self.segments), False,
                             self.manifest["files"], name=f"seg-{self.version:06d}-f{self._log_seq}")
        plan = buffer.FlushPlan(self.version, self._log_seq, merge, self.segments[:first], self._scratch,
                                set(self.manifest["files"]))
        self._merging.update(plan.names)
        return plan

    def write_flush(self, plan: buffer.FlushPlan) -> None:
        """The flushed segment's files, and the shared files the buffer grew, into the directory."""
        try:
            merging.write(self.path, plan.merge)
            for name in storage.referenced_names({"fields": plan.merge.shared}) - plan.known:
                data = (plan.scratch.path / name).read_bytes()
                plan.files[name] = storage.write_new_file(self.path, name, data)
        except OSError as e:
            self.forget_flush(plan)
            raise storage.write_error(self.path, e, "flushing the write buffer") from None

    def finish_flush(self, plan: buffer.FlushPlan) -> bool:
        """Publish a written flush; writes logged since its plan stay in the buffer. False when
        another version came first (a direct commit or another process flushed those writes)."""
        try:
            with self._writer():
                self._catch_up()
                if self.version != plan.version:
                    log.info("flush %s of %s dropped: version %d came first", plan.merge.name, self.path,
                             self.version)
                    return False
                self._publish_keeping_buffer(lambda v: self._flushed_version(v, plan), plan.upto)
                return True
        finally:
            self.forget_flush(plan)

    def forget_flush(self, plan: buffer.FlushPlan) -> None:
        self._merging.difference_update(plan.names)

    def _flushed_version(self, v: int, plan: buffer.FlushPlan):
        """Version v: the buffer's live documents as one segment, the deletions buffered writes
        made in the manifest's segments as deletions files -> (manifest, segments, None)."""
        path, manifest = self.path, self._next_manifest(v)
        files = manifest["files"]
        masks = [s.deleted for s in plan.segments]  # the buffer's deletions at the plan
        segments, written = with_changed_deletions(path, v, self._base, masks)
        files.update(written)
        merged = plan.merge
        if merged.entry is not None:
            segments.append(Segment(merged.entry, merged.table, np.zeros(merged.table.num_rows, dtype=bool)))
            files.update(merged.files)
            for fname, shared in merged.shared.items():
                manifest["fields"][fname] = {**manifest["fields"][fname], **shared}
        files.update(plan.files)
        manifest["segments"] = [s.entry for s in segments]
        manifest["counts"] = _counts(segments)
        manifest["log_applied"] = plan.upto
        return manifest, segments, None

    def _publish_keeping_buffer(self, write: Callable[[int], tuple], upto: int) -> None:
        """Publish a version that holds the logged writes up to `upto` (a flush, or a merge: those
        already published), then apply the buffered writes after it again on top; the log is
        emptied when none are left."""
        tail = [(seq, w) for seq, w in self._buffered if seq > upto]
        self._publish(write)
        self._log_seq = upto
        try:
            for seq, w in tail:
                self._apply(seq, w)
        except RetrieverError:
            self._log_seq, self._log_end = upto, 0  # the next write replays the rest from the log
            raise
        if not tail:
            try:
                self._log.cut(0)
                self._log_end = 0
            except OSError as e:  # its records are at or below `log_applied`: readers skip them
                log.warning("emptying the write-ahead log of %s failed: %s", self.path, e)

    def optimize(self) -> int:
        """Merge every segment into one, dropping deleted rows (what `retriever optimize` runs).
        Returns how many segments were merged."""
        with self._writer():
            self._catch_up()
            self._check_format()
            self._flush()
            count = len(self.segments)
            if count > 1 or self.counts["deleted"]:
                self._merge_now(0, count)
                return count
        return 0

    def migrate(self) -> bool:
        """Rewrite a collection of an older storage format in the current one: its segments merged
        into one (deleted rows dropped), every field in the current layout. Returns False when
        there was nothing to do."""
        with self._writer():
            self._catch_up()
            if self.manifest["format_version"] == storage.FORMAT_VERSION:
                return False
            if self._buffered:
                raise CorruptIndex(
                    f"{str(self.path)!r} is in storage format {self.manifest['format_version']} but has a "
                    "write-ahead log, which only the current format writes"
                )
            self._merge_now(0, len(self.segments))
        return True

    def save_pipeline(self, name: str, pipeline, *, default: bool = False) -> None:
        """Keep `pipeline` (a `Pipeline` or its dict) in the config as `name`, replacing one of that
        name; with `default`, searches that name no fields run it. A new version: other readers see
        it when they reopen."""
        pipeline = pipeline_module.Pipeline.of(pipeline)
        with self._writer():
            self._catch_up()
            self._check_format()
            self._flush()
            data = self.config.to_dict()
            data["pipelines"][name] = pipeline.to_dict()
            if default:
                data["default_pipeline"] = name
            config = CollectionConfig.from_dict(data)  # checks the name and the fields it reads

            def write(v: int):
                manifest = self._next_manifest(v)
                manifest["config"] = config.to_dict()
                return manifest, self.segments, {}

            self._publish(write)

    def tune_pq(self, field: str, queries: Mapping[str, Any], qrels: Mapping[str, Mapping[str, int]],
                hold_out: str = "documents") -> list:
        """Ranking-trained PQ (JPQ, `retriever.index.jpq`) for a dense field with PQ codes: the
        judged queries (`queries` {query id: text or vector}, `qrels` {query id: {document id:
        grade}}) and their relevant documents' vectors are kept in the field, and every segment
        is rebuilt (a merge of all of them) with its PQ centroids trained on them; segments the
        field builds later (writes, merges) train theirs on the same set. `hold_out` "documents"
        keeps trained centroids only if they help queries about documents training never saw
        judged; "queries" only asks that they help unseen queries (judged documents may recur).
        Returns each trained segment's report (held-out reciprocal rank before and after, the
        epoch kept, 0 for k-means's centroids, seconds)."""
        from . import pq_tuning

        pq_tuning.checked_field(self, field, hold_out)
        qids, vectors = pq_tuning.query_vectors(self, field, queries, qrels)  # models run unlocked
        with self._writer():
            self._catch_up()
            self._check_format()
            self._flush()
            ranking = pq_tuning.ranking_set(
                self.fields[field], qids, vectors, qrels, self._live_rows, hold_out
            )

            def write(v: int):
                manifest = self._next_manifest(v)
                name = f"ranking-{v:06d}.{field}.npz"
                manifest["files"][name] = storage.write_new_file(self.path, name, ranking.to_bytes())
                manifest["fields"][field] = {**manifest["fields"][field], "pq_training": name}
                return manifest, self.segments, None

            self._publish(write)
            if self.segments:
                self._merge_now(0, len(self.segments))
        return self.fields[field].info()["pq_training"]

    # ---- merges ------------------------------------------------------------------------------

    def plan_merge(self) -> merging.MergePlan | None:
        """The next merge the policy asks for, pinned at this version (call it, and `finish_merge`,
        where writes to this object are serialized; `write_merge` needs no lock)."""
        # the manifest's segments as it has them: a merge publishes those; buffered writes stay buffered
        rows, deleted = [s.rows for s in self._base], [s.deleted_count for s in self._base]
        run = merge_policy.next_merge(rows, deleted, self.max_segment_rows)
        return None if run is None else self._plan(*run)

    def write_merge(self, plan: merging.MergePlan) -> merging.MergePlan:
        """The merged segment's files, from the pinned version only: writes may go on meanwhile."""
        try:
            return merging.write(self.path, plan)
        except OSError as e:
            self.forget_merge(plan)
            raise storage.write_error(self.path, e, "merging segments") from None
        except CorruptIndex:  # a damaged source file: the merge is refused, the segments stay
            self.forget_merge(plan)
            raise

    def finish_merge(self, plan: merging.MergePlan) -> bool:
        """Publish a written merge on the newest version, with deletions that reached its segments
        since the plan carried over. False when the run is gone (another process merged it)."""
        try:
            with self._writer():
                self._catch_up()
                at = merging.locate(plan, self._base)
                if at is None:
                    log.info("merge %s of %s dropped: its segments changed in another process",
                             plan.name, self.path)
                    return False
                upto = int(self.manifest.get("log_applied", 0))
                self._publish_keeping_buffer(lambda v: self._merged_version(v, plan, at), upto)
                return True
        finally:
            self.forget_merge(plan)

    def forget_merge(self, plan: merging.MergePlan) -> None:
        """A merge given up or done: its files, unless published, are debris from now on."""
        self._merging.discard(plan.name)

    def _plan(self, first: int, end: int) -> merging.MergePlan:
        migrating = self.manifest["format_version"] < storage.FORMAT_VERSION
        plan = merging.plan(
            self.version, self._base, self.fields, first, end, migrating, self.manifest["files"]
        )
        self._merging.add(plan.name)
        return plan

    def _merged_version(self, v: int, plan: merging.MergePlan, at: int):
        """Version v: the planned run replaced by its merged segment -> (manifest, segments, None:
        the fields are opened again, reusing every segment but the new one)."""
        manifest = self._next_manifest(v)
        segments, written = merging.finish(self.path, v, plan, self._base, at)
        manifest["files"].update(written)
        if self.manifest["format_version"] < storage.FORMAT_VERSION:
            manifest["fields"].update(plan.shared)  # migration: the fields' new layout
        manifest["segments"] = [s.entry for s in segments]
        manifest["counts"] = _counts(segments)
        return manifest, segments, None

    def _merge_now(self, first: int, end: int) -> None:
        """Plan, write and publish a merge of segments first..end-1 (the writer lock is held)."""
        plan = self._plan(first, end)
        self.write_merge(plan)
        self.finish_merge(plan)

    def _merge_while_needed(self) -> None:
        """Merges the policy asks for after a write (the writer lock is held), unless a background
        merger does them and keeps up: past MAX_SEGMENTS the writer merges too (backpressure), so
        segments stay bounded whatever the write rate. A merge that fails is logged and left for a
        later write: the write itself is already committed."""
        while self.merge_inline or len(self.segments) > merge_policy.MAX_SEGMENTS:
            plan = self.plan_merge()
            if plan is None:
                return
            try:
                self.write_merge(plan)
                self.finish_merge(plan)
            except (WriteFailed, CorruptIndex) as e:
                self.forget_merge(plan)
                log.warning("merge %s of %s failed, retried after a later write: %s", plan.name, self.path, e)
                return

    def _live_rows(self, ids: list[str]) -> np.ndarray:
        """The rows of these ids' live copies (each id has at most one), ascending [R] int64."""
        hashes, found, start = id_hashes(ids), [np.zeros(0, np.int64)], 0
        for segment in self.segments:
            rows = segment.lookup.rows_of(ids, hashes)
            found.append(start + rows[~segment.deleted[rows]])
            start += segment.rows
        return np.concatenate(found)

    @contextlib.contextmanager
    def _writer(self):
        """The collection's writer lock, held by this object (re-entered by its own merges)."""
        if self._holds_lock:
            yield
            return
        with storage.writer_lock(self.path):
            self._holds_lock = True
            try:
                yield
            finally:
                self._holds_lock = False

    def _check_format(self) -> None:
        if self.manifest["format_version"] < storage.FORMAT_VERSION:
            raise InvalidRequest(
                f"{str(self.path)!r} is in storage format {self.manifest['format_version']}, "
                "which this engine reads but does not write; convert it with "
                f"`retriever migrate {self.path}`, then retry"
            )

    def _publish(self, write: Callable[[int], tuple]) -> None:
        """Write and publish the next version (the writer lock is held): `write(version)` writes its
        files -> (manifest, segments, {field: make its in-memory state} or None to reopen). This
        object moves to the new version only once its manifest is renamed into place."""
        path = self.path
        held = storage.held_leases(path, below=self.version)
        try:
            manifest, segments, made = write(self.version + 1)
            referenced = storage.referenced_names(manifest)
            manifest["files"] = {n: e for n, e in manifest["files"].items() if n in referenced}
            manifest["retired"], removable = storage.retire(self.manifest, referenced, held)
            storage.publish_manifest(path, manifest)
        except OSError as e:
            # this attempt's files are debris now
            storage.remove_files(path, [], self.manifest, self._merging)
            raise storage.write_error(path, e, "committing a write") from None
        if made is None:  # a merge: segments were replaced, so the fields are opened anew
            fresh = Collection.load(path, manifest, previous=self)
            self._set_state(fresh.manifest, fresh.segments, fresh.fields)
        else:
            self._set_state(manifest, segments, {**self.fields, **{n: make() for n, make in made.items()}})
        try:
            disk.fsync_dir(path)
        except OSError as e:
            outcome = "the write is visible but may not survive a crash"
            raise storage.write_error(path, e, f"making version {self.version} durable", outcome) from None
        storage.remove_files(path, removable, manifest, self._merging)

    def _next_manifest(self, v: int) -> dict[str, Any]:
        manifest = {**self.manifest, "format_version": storage.FORMAT_VERSION, "version": v,
                    "parent": self.version, "fields": dict(self.manifest["fields"]),
                    "files": dict(self.manifest["files"])}
        for legacy in ("documents", "deleted"):  # format 1 kept these at the top; segments hold them now
            manifest.pop(legacy, None)
        if self.max_segment_rows is not None:
            manifest["max_segment_rows"] = self.max_segment_rows
        return manifest

    def _write_version(self, v: int, deleted: np.ndarray, table: pa.Table | None, pending: dict[str, Any]):
        """Version v: `deleted` [rows, new rows included] applied segment by segment, and a new
        segment for `table` (its fields' `pending` work) -> (manifest, segments, makers)."""
        path, manifest = self.path, self._next_manifest(v)
        files = manifest["files"]
        starts = np.cumsum([0] + [s.rows for s in self.segments])
        masks = [deleted[a:b] for a, b in zip(starts[:-1], starts[1:])]
        segments, written = with_changed_deletions(path, v, self.segments, masks)
        files.update(written)
        made = {}
        if table is not None:
            entry, written, table = new_segment(path, f"seg-{v:06d}", table)
            files.update(written)
            entry["fields"] = {}
            for fname, work in pending.items():
                manifest["fields"][fname], entry["fields"][fname], written, made[fname] = work.write(
                    path, entry["name"]
                )
                files.update(written)
            segments.append(Segment(entry, table, np.zeros(table.num_rows, dtype=bool)))
        manifest["segments"] = [s.entry for s in segments]
        manifest["counts"] = _counts(segments)
        return manifest, segments, made

    def _catch_up(self) -> None:
        """Move to the newest state on disk (the writer lock is held): the newest version, when
        another writer committed or this object's last commit failed after its rename, then any
        write another writer logged since; a torn record at the log's end is cut off."""
        if storage.read_manifest(self.path)["version"] != self.version:
            fresh = Collection.open(self.path)
            kept = ("_encoders", "merge_inline", "_merging", "_holds_lock", "sync_writes", "_log")
            vars(self).update({k: v for k, v in vars(fresh).items() if k not in kept})
        records, good, size = wal.read(self.path, self._log_end)
        try:
            self._log.cut_torn_tail(good, size)
        except OSError as e:
            raise storage.write_error(self.path, e, "cutting a torn record off the log") from None
        self._apply_logged(records)

    # ---- reading documents -------------------------------------------------------------------

    def get(self, ids: Iterable[str]) -> list[dict[str, Any] | None]:
        """The stored documents with these ids, in the order asked (None for an id not stored)."""
        ids = [ids] if isinstance(ids, str) else [str(i) for i in ids]
        if len(ids) > self.config.max_candidates:
            raise InvalidRequest(
                f"{len(ids):,} ids asked at once; this collection allows "
                f"{self.config.max_candidates:,} (max_candidates)"
            )
        found = {document["id"]: document for document in self.documents.take(self._live_rows(ids))}
        return [found.get(i) for i in ids]

    def count(self, filter: Mapping[str, Any] | None = None) -> int:
        """How many documents are stored (that match `filter`)."""
        if filter is None:
            return len(self)
        return int(self._allowed(filter).sum())

    def scroll(
        self, filter: Mapping[str, Any] | None = None, limit: int = 100, after: str | None = None
    ) -> tuple[list[dict[str, Any]], str | None]:
        """A page of stored documents (that match `filter`) in id order, starting after the id
        `after` -> (documents, the `after` of the next page, or None at the end)."""
        limit = self._check_k(limit, "limit")
        if after is not None and not isinstance(after, str):
            raise InvalidRequest(f"after must be a document id (a string), got {after!r}")
        page = page_by_id(self.documents.table, self._allowed(filter), after, limit).to_pylist()
        return page, (page[-1]["id"] if len(page) == limit else None)

    # ---- search ------------------------------------------------------------------------------

    def search(
        self,
        queries: Queries,
        k: int = 10,
        *,
        fields: Sequence[str] | str | None = None,
        filter: Mapping[str, Any] | None = None,
        params: Mapping[str, int] | None = None,
        fusion: str = "rrf",
        weights: Mapping[str, float] | None = None,
        normalization: str = "minmax",
        pipeline: "pipeline_module.Pipeline | Mapping[str, Any] | None" = None,
    ) -> Results:
        """The batch's `Results`: one `Hits` per query, kept in columns. `queries` is a text, a list
        of texts, a vector or matrix [B, D], sparse vectors (a list of (term ids, weights) pairs or
        dicts), token matrices for a multivector field (a list of [t_i, D] arrays, or (tokens,
        offsets)), packed codes for a binary field (uint8 [B, code bytes]), or {field: any of
        those}, one source per field (texts for a BM25 field beside vectors for a dense one).
        `schema()` says what each field takes. Several fields are fused: `fusion="rrf"`
        (reciprocal ranks) or `"weighted"` (each field's
        scores normalized per query with `normalization` "minmax", "zscore" or "robust", summed with
        `weights`, 1 each by default); each field contributes its top `params["candidates"]`.
        A `pipeline` (`retriever.pipeline.Pipeline`, its dict, or the name of one in the config)
        runs prefetch, fuse and re-rank stages instead of `fields` and fusion; each hit keeps every
        stage's score. With neither fields nor a pipeline, the config's `default_pipeline` runs
        when it has one."""
        if pipeline is None and fields is None and self.config.default_pipeline is not None:
            pipeline = self.config.default_pipeline
        if pipeline is not None:
            return self._search_pipeline(queries, k, pipeline, filter, params, fields)
        k = self._check_k(k)
        names = self._field_names(fields)
        params = check_params(params)
        # one field with the default fusion arguments: nothing to check, nothing to fuse
        plain = len(names) == 1 and not weights and (fusion, normalization) == ("rrf", "minmax")
        spec = None if plain else fusion_module.FusionSpec.checked(fusion, weights, normalization, names)
        depth = field_depth(k, len(names), params)
        batch = self._query_payloads(queries, names, params, max(depth, _depth(k, params)))
        size = len(next(iter(batch.values())))
        allowed = self._allowed(filter)
        if allowed is not None and not allowed.any():
            empty = np.zeros((size, 0), np.float32), np.zeros((size, 0), np.int64)
            return self._hits(*empty, {n: empty[0] for n in names}, "no document matches the filter")
        per_field = {n: self.fields[n].search(batch[n], depth, _field_params(self.fields[n], params), allowed) for n in names}
        reasons = self.no_terms_reasons(batch, names, size)
        if len(names) == 1:
            scores, rows = per_field[names[0]]
            return self._hits(scores, rows, {names[0]: scores}, reasons)
        return self._hits(*fusion_module.fuse(per_field, k, spec), reasons)

    def pipeline_fields(self, pipeline) -> list[str]:
        """The fields a pipeline (a `Pipeline`, its dict, or a name in the config) reads."""
        return self._field_names(self._pipeline(pipeline).fields)

    def _pipeline(self, pipeline) -> pipeline_module.Pipeline:
        if isinstance(pipeline, str):
            return self.config.pipeline(pipeline)
        return pipeline_module.Pipeline.of(pipeline)

    def _search_pipeline(self, queries, k, pipeline, filter, params, fields) -> Results:
        if fields is not None:
            raise InvalidRequest("give a pipeline, or fields to search: the pipeline names its fields")
        k = self._check_k(k)
        pipeline = self._pipeline(pipeline)
        spec = pipeline.fusion_spec()
        found, batch = self.prefetch(queries, pipeline, filter=filter, params=params, k=k)
        size = len(next(iter(batch.values())))
        if not found:
            empty = np.zeros((size, 0), np.float32), np.zeros((size, 0), np.int64)
            return self._hits(*empty, {}, "no document matches the filter")
        scores, rows, stages = pipeline_module.run(self.scorer(batch), pipeline, spec, found, k)
        reasons = self.no_terms_reasons(batch, [p.field for p in pipeline.prefetch], size)
        return self._hits(scores, rows, stages, reasons)

    def statistics(self, queries: Queries, fields: Sequence[str] | str,
                   params: Mapping[str, int] | None = None) -> field_statistics.Statistics:
        """The collection-wide statistics that scoring these queries in these fields reads, {field:
        ...} for the fields that read any (BM25, inference-free sparse). Shards of one collection
        add theirs up and search `with_statistics(the sum)`, scoring as the collection would."""
        names = self._field_names(fields)
        params = check_params(params)
        out = {}
        for name, given in self._queries_by_field(queries, names).items():
            if not are_texts(given):
                continue  # queries brought as vectors carry their own weights
            texts = [given] if isinstance(given, str) else list(given)
            field = self.fields[name]
            own = _field_params(field, params)
            stats = field_statistics.of_queries(field, self.encoder(name), texts, own)
            if stats is not None:
                out[name] = stats
        return out

    def with_statistics(self, statistics: Mapping[str, Mapping[str, Any]]) -> "Collection":
        """A view of this version whose fields score with these collection-wide statistics."""
        view = self.view()
        view.fields = {n: field_statistics.applied(f, statistics.get(n)) for n, f in self.fields.items()}
        return view

    def prefetch(self, queries: Queries, pipeline, *, filter: Mapping[str, Any] | None = None,
                 params: Mapping[str, int] | None = None, k: int = 10):
        """A pipeline's prefetch stages alone -> ({field: (scores [B, C], rows [B, C])} best first,
        -1 rows padding, or {} when no document matches `filter`; {field: its encoded queries}):
        what the fuse and re-rank stages (`pipeline.run`) take. `retriever tune` runs it once and
        tries many later stages on its result."""
        pipeline = self._pipeline(pipeline)
        names = self._field_names(pipeline.fields)
        base = check_params(params)
        stage_params = {p.field: check_params({**base, **p.params}) for p in pipeline.prefetch}
        depth = max([k, pipeline.depth, *(_depth(p.k, stage_params[p.field]) for p in pipeline.prefetch)])
        batch = self._query_payloads(queries, names, base, depth)
        allowed = self._allowed(filter)
        if allowed is not None and not allowed.any():
            return {}, batch
        found = {}
        for stage in pipeline.prefetch:  # the request's filter and params, then the stage's own
            own = allowed if stage.filter is None else self._allowed(stage.filter)
            field = self.fields[stage.field]
            found[stage.field] = field.search(
                batch[stage.field], stage.k, _field_params(field, stage_params[stage.field]),
                own if allowed is None or own is allowed else own & allowed,
            )
        return found, batch

    def scorer(self, payloads: Mapping[str, Any]) -> pipeline_module.Scorer:
        """Exact scores of rows for the encoded queries `payloads` (a pipeline's fuse and re-rank)."""
        return lambda name, rows: self.fields[name].score(payloads[name], rows)

    def generate(self, question: str, k: int = 5, *, mode: str = "blend", recompute_ratio: float | None = None,
                 max_new_tokens: int = 128, fields: Sequence[str] | str | None = None, filter: Mapping[str, Any] | None = None,
                 params: Mapping[str, int] | None = None):
        """Retrieve the top-k documents for `question` and answer it from them, reusing each
        chunk's cached KV (`mode` "blend" recomputes `recompute_ratio` of chunk tokens; "full",
        "prefix" and "reuse" are there to compare). Returns an iterator of pieces with `.text`;
        the last piece's `.stats` has cache hits, tokens recomputed and time to first token."""
        from .rag.service import retrieve_and_answer

        return retrieve_and_answer(self, question, k, mode=mode, recompute_ratio=recompute_ratio,
                                   max_new_tokens=max_new_tokens, fields=fields, filter=filter, params=params)

    def encoder(self, field: str):
        """The field's text encoder (sentence-transformers model, BM25 tokenizer or masked-LM), loaded on first use."""
        return self._encoders.get(field)

    def can_encode(self, field: str) -> bool:
        """Whether texts can be encoded for the field (it has a model, or needs none)."""
        return self.config.encodes_texts(field)

    def _hits(
        self, scores: np.ndarray, rows: np.ndarray, field_scores: dict[str, np.ndarray], reasons
    ) -> Results:
        """scores/rows [B, k] (-1 rows pad the end) -> the batch's `Results`, padding dropped.
        `reasons` is one reason for all queries, or one (or None) per query."""
        if not isinstance(reasons, list):
            reasons = [reasons] * len(rows)
        results = Results.from_padded(scores, rows, field_scores, self.documents, reasons)
        if len(results.scores) == rows.size > 0:  # every list is full
            return results
        empty = results.counts() == 0
        if empty.any():
            nothing = "the collection has no documents to return"
            results.reasons = [r or (nothing if e else None) for r, e in zip(reasons, empty.tolist())]
        return results

    def no_terms_reasons(self, batch: dict[str, Any], names: list[str], size: int) -> list[str | None]:
        """Per query: why nothing can match when no searched field can match it (no known terms)."""
        flags = [self.fields[n].unmatchable(batch[n]) for n in names]
        if any(f is None for f in flags):
            return [None] * size
        unmatched = flags[0] if len(flags) == 1 else np.logical_and.reduce(flags)
        if not unmatched.any():
            return [None] * size
        what = ", ".join(repr(n) for n in names)
        return [f"{NO_TERMS} (field {what})" if e else None for e in unmatched.tolist()]

    def _check_k(self, k: int, name: str = "k") -> int:
        """`k` (or a page size, `name`) checked against the collection's max_k."""
        return check_k(k, self.config.max_k, name)

    def _field_names(self, fields) -> list[str]:
        names = [fields] if isinstance(fields, str) else list(fields or [self.config.fields[0].name])
        if not names:
            raise InvalidRequest("fields must name at least one field")
        for n in names:
            if n not in self.fields:
                raise NotFound(f"unknown field {n!r} in collection {self.name!r}; fields: {list(self.fields)}")
        if len(set(names)) != len(names):
            raise InvalidRequest(f"a field is named twice in fields={names}")
        return names

    def _query_payloads(
        self, queries: Queries, names: list[str], params: Mapping[str, int], depth: int
    ) -> dict[str, Any]:
        """Each searched field's queries: encoded from text, or checked when given directly; their
        number is checked against the collection's limits (`depth`: per query) before any work."""
        texts: dict[str, list[str]] = {}
        payloads: dict[str, Any] = {}
        for n, given in self._queries_by_field(queries, names).items():
            if are_texts(given):
                texts[n] = [given] if isinstance(given, str) else list(given)
                check_query_texts(texts[n], n)
            else:
                payloads[n] = self.fields[n].check_queries(given)
        sizes = {n: len(p) for n, p in [*texts.items(), *payloads.items()]}
        if len(set(sizes.values())) > 1:
            raise InvalidRequest(f"fields were given different numbers of queries: {sizes}")
        self._check_batch(sizes[names[0]], depth)
        # a binary field searched beside its source, from the same texts, shares the encoded queries
        for n in sorted(texts, key=lambda n: self.fields[n].config.source is not None):
            source = self.fields[n].config.source
            if source in payloads and source in texts and texts[source] == texts[n]:
                payloads[n] = self.fields[n].check_queries(payloads[source])
            else:
                payloads[n] = self.fields[n].queries_from_texts(self.encoder(n), texts[n], params)
        return {n: payloads[n] for n in names}

    def _queries_by_field(self, queries: Queries, names: list[str]) -> dict[str, Any]:
        """{searched field: its queries as given}: texts serve every field; a mapping names each."""
        if are_texts(queries):
            return {n: queries for n in names}
        if isinstance(queries, Mapping) and all(isinstance(key, str) for key in queries):
            missing = [n for n in names if n not in queries]
            if missing:
                raise InvalidRequest(
                    f"queries missing for field(s) {missing}: give texts for every field, or one entry "
                    "(texts or vectors) per searched field"
                )
            return {n: queries[n] for n in names}
        if len(names) > 1:
            raise InvalidRequest("with several fields, give texts, or one entry (texts or vectors) per field")
        if isinstance(queries, (list, tuple)) and not queries:
            raise InvalidRequest("no queries given")
        return {names[0]: queries}

    def _check_batch(self, size: int, depth: int) -> None:
        limits = self.config
        check_batch_size(size, limits.max_batch)
        if size * depth > limits.max_candidates:
            raise InvalidRequest(
                f"{size} queries x {depth} results or candidates each (the largest of k, rescore, "
                f"candidates, rerank, nprobe and efSearch) is {size * depth:,}; this collection allows "
                f"{limits.max_candidates:,} a request (max_candidates): send fewer queries at once "
                "or ask for fewer"
            )

    def _allowed(self, conditions) -> np.ndarray | None:
        if conditions is None:
            return self._live
        mask = filter_mask(self.documents.table, conditions)
        return mask if self._live is None else mask & self._live


def connect(target: str | Path, **options):
    """A collection directory opened in-process, `grpc://host:port/name` served remotely (options:
    token, timeout, root_certificates), a sharded collection served on Ray (`ray://NAME`, or
    `ray://ADDRESS/NAME`), or a sharded collection's directory (its shards opened in-process);
    all answer with the same methods and `Results`."""
    if isinstance(target, str) and target.startswith(("grpc://", "grpcs://")):
        from .client import RemoteCollection

        return RemoteCollection.from_url(target, **options)
    if options:
        raise InvalidRequest(f"options {sorted(options)} apply to grpc:// targets only")
    if isinstance(target, str) and target.startswith("ray://"):
        from .cluster import ray_serve

        return ray_serve.connect(target)
    from .cluster.manifest import MANIFEST

    if (Path(target) / MANIFEST).exists():
        from .cluster import open_local

        return open_local(target)
    return Collection.open(target)


def _as_config(config) -> CollectionConfig:
    if isinstance(config, CollectionConfig):
        return config
    if isinstance(config, Mapping):
        return CollectionConfig.from_dict(config)
    return CollectionConfig.from_toml(config)


def _known_params() -> Mapping[str, Param]:
    return _params_of_kinds(tuple(KINDS.values()))


@functools.cache
def _params_of_kinds(kinds: tuple) -> Mapping[str, Param]:
    """Made once for these kinds (the registry's, which tests may extend): every request checks
    its parameters against it."""
    return MappingProxyType({**request_params(kinds), **FUSION_PARAMS})


def check_k(k, max_k: int, name: str = "k") -> int:
    """`k` (or a page size, `name`) checked against a collection's max_k."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= max_k:
        raise InvalidRequest(
            f"{name} must be an integer from 1 to {max_k} (the collection's max_k), got {k!r}"
        )
    return int(k)


def check_query_texts(texts: list[str], field: str) -> None:
    for i, text in enumerate(texts):
        if not text.strip():
            raise InvalidRequest(f"query {i} is empty (field {field!r})")


def check_batch_size(size: int, max_batch: int) -> None:
    if size > max_batch:
        raise InvalidRequest(f"{size} queries in one request; the collection's max_batch is {max_batch}")


def check_params(params) -> dict[str, int]:
    """A request's search parameters, each known and within its range (InvalidRequest if not)."""
    if not params:
        return {}
    params = dict(params)
    known = _known_params()
    for key, value in params.items():
        if key not in known:
            raise InvalidRequest(f"unknown search parameter {key!r}; known: {list(known)}")
        low, high = known[key].low, known[key].high
        integer = not isinstance(value, bool) and isinstance(value, (int, np.integer))
        if not integer or value < low or (high is not None and value > high):
            span = f"from {low} to {high}" if high is not None else f">= {low}"
            raise InvalidRequest(f"search parameter {key!r} must be an integer {span}, got {value!r}")
    return params


def _param_ranges(params: Mapping[str, Param]) -> dict[str, dict[str, Any]]:
    return {name: dataclasses.asdict(param) for name, param in params.items()}


def field_depth(k: int, fields: int, params: Mapping[str, int]) -> int:
    """The results each of `fields` searched fields gives: k for one field; fused fields give
    more candidates than k (`candidates`, FUSION_CANDIDATES by default)."""
    return k if fields == 1 else max(k, params.get("candidates", FUSION_CANDIDATES))


def _depth(k: int, params: Mapping[str, int]) -> int:
    """The most results or candidates a request asks of each query: k, or a larger depth parameter."""
    if not params:
        return k
    known = _known_params()
    return max([k, *(int(v) for key, v in params.items() if known[key].depth)])


def _counts(segments: list[Segment]) -> dict[str, int]:
    rows = sum(s.rows for s in segments)
    deleted = sum(s.deleted_count for s in segments)
    return {"rows": rows, "documents": rows - deleted, "deleted": deleted}


def _first_manifest(path: Path, config: CollectionConfig, sizes: dict[str, int]) -> dict[str, Any]:
    """Version 1: no documents, each field's empty entry (some write an empty index file)."""
    files: dict[str, Any] = {}
    fields = {}
    for f in config.fields:
        fields[f.name], written = kind_of(f).create(path, f, sizes[f.name])
        files.update(written)
    return {
        "version": 1,
        "parent": None,
        "config": config.to_dict(),
        "counts": {"rows": 0, "documents": 0, "deleted": 0},
        "segments": [],
        "fields": fields,
        "files": files,
        "retired": {},
    }


def _field_params(field: Field, params: Mapping[str, int]) -> Mapping[str, int]:
    if not params:
        return params
    keys = kind_of(field.config).request_params
    return {key: value for key, value in params.items() if key in keys}
