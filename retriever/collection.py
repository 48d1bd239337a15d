"""Collection: a directory of documents and fields, opened at one pinned manifest version."""

from __future__ import annotations

import copy
import io
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from retriever.index import storage
from retriever.index.faiss_index import FaissIndex
from retriever.index.vectors import VectorStore

from . import fusion
from .config import CollectionConfig
from .documents import DocumentTable, concat, document_texts, documents_to_table
from .encoders.dense import DenseEncoder
from .errors import AlreadyExists, CorruptIndex, InvalidRequest, NotFound, RetrieverError
from .fields import DenseField
from .filters import filter_mask
from .types import Hits

REQUEST_PARAMS = {"nprobe": 1, "efSearch": 1, "rescore": 0}  # name -> smallest allowed value
Queries = str | Sequence[str] | np.ndarray | Mapping[str, np.ndarray]


class Collection:
    """Documents plus searchable fields. A `Collection` object is pinned to the manifest version
    it was opened at: writers elsewhere never change what it sees; `reopen()` moves forward."""

    def __init__(self, path: Path, config: CollectionConfig, manifest: dict[str, Any], documents: DocumentTable,
                 deleted: np.ndarray, fields: dict[str, DenseField]) -> None:
        self.path = path
        self.config = config  # fixed at create: commits never change it
        self._encoders: dict[str, DenseEncoder] = {}
        self._set_state(manifest, documents, deleted, fields)

    def _set_state(self, manifest, documents: DocumentTable, deleted: np.ndarray, fields: dict[str, DenseField]) -> None:
        self.manifest = manifest
        self.documents = documents
        self.deleted = deleted  # [rows] bool
        self.fields = fields
        self._live = None if not deleted.any() else ~deleted

    # ---- lifecycle -------------------------------------------------------------------------

    @classmethod
    def create(cls, path: str | Path, config: CollectionConfig | Mapping[str, Any] | str | Path) -> "Collection":
        """Make an empty collection directory (fails if one is already there)."""
        path = Path(path)
        config = _as_config(config)
        if (path / storage.MANIFEST).exists():
            raise AlreadyExists(f"{str(path)!r} already holds a collection; open it, or choose another directory")
        dims = {f.name: f.dim or DenseEncoder(f.model, batch_size=f.batch_size).dim for f in config.fields}
        path.mkdir(parents=True, exist_ok=True)
        files: dict[str, Any] = {}
        fields = {}
        for f in config.fields:
            name = f"{f.name}.index-{1:06d}.faiss"
            files[name] = storage.write_new_file(path, name, FaissIndex(f.index, dims[f.name], f.metric).to_bytes())
            fields[f.name] = {"dim": dims[f.name], "index": name, "vectors": []}
        manifest = {
            "version": 1,
            "parent": None,
            "config": config.to_dict(),
            "counts": {"rows": 0, "documents": 0, "deleted": 0},
            "documents": [],
            "deleted": None,
            "fields": fields,
            "files": files,
        }
        with storage.writer_lock(path):
            storage.commit_manifest(path, manifest)
        return cls.open(path)

    @classmethod
    def open(cls, path: str | Path) -> "Collection":
        """Open the current version; every file is checked against the manifest before use."""
        path = Path(path)
        manifest = storage.read_manifest(path)
        files = manifest["files"]
        segments = [pq.read_table(io.BytesIO(storage.read_verified(path, n, files[n]))) for n in manifest["documents"]]
        documents = DocumentTable(concat(segments))
        deleted = np.zeros(documents.num_rows, dtype=bool)
        if manifest["deleted"]:
            deleted[storage.open_npy_verified(path, manifest["deleted"], files[manifest["deleted"]])] = True
        config = CollectionConfig.from_dict(manifest["config"])
        fields = {}
        for f in config.fields:
            entry = manifest["fields"][f.name]
            index = FaissIndex.from_bytes(storage.read_verified(path, entry["index"], files[entry["index"]]), f.index, entry["dim"], f.metric)
            index.use_gpu()
            vectors = VectorStore([storage.open_npy_verified(path, n, files[n]) for n in entry["vectors"]], entry["dim"])
            if index.ntotal != documents.num_rows or len(vectors) != documents.num_rows:
                raise CorruptIndex(
                    f"field {f.name!r} holds {index.ntotal} indexed / {len(vectors)} stored vectors for {documents.num_rows} documents"
                )
            fields[f.name] = DenseField(f, entry["dim"], index, vectors)
        return cls(path, config, manifest, documents, deleted, fields)

    def snapshot(self) -> "Collection":
        """A view pinned at this object's current version: later writes through this object
        replace its state wholesale and leave the view untouched."""
        return copy.copy(self)

    def reopen(self) -> "Collection":
        """The newest committed version of this collection."""
        return Collection.open(self.path)

    # ---- facts -------------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def version(self) -> int:
        return int(self.manifest["version"])

    def __len__(self) -> int:
        return int(self.manifest["counts"]["documents"])

    def info(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "path": str(self.path),
            "version": self.version,
            "counts": dict(self.manifest["counts"]),
            "fields": {
                name: {"kind": f.config.kind, "model": f.config.model, "dim": f.dim, "index": f.config.index,
                       "metric": f.config.metric, "rescore": f.config.rescore, "ntotal": f.index.ntotal}
                for name, f in self.fields.items()
            },
            "bytes_on_disk": sum(e["size"] for e in self.manifest["files"].values()),
        }

    # ---- writes ------------------------------------------------------------------------------

    def add(self, documents: Iterable[Mapping[str, Any]], vectors: Mapping[str, np.ndarray] | None = None, *, progress: bool = False) -> int:
        """Insert documents, replacing any with the same id (upsert). Returns how many were added.

        `vectors` {field: [N, D]} supplies precomputed embeddings; other fields are encoded from the
        documents' text. Nothing on disk changes unless the whole batch is valid and committed.
        """
        table = documents_to_table(documents)
        concat([self.documents.table.slice(0, 0), table])  # schema clash -> InvalidRequest before any work
        unknown = set(vectors or {}) - set(self.fields)
        if unknown:
            raise NotFound(f"vectors given for unknown field(s) {sorted(unknown)}; fields: {list(self.fields)}")
        texts = None
        new_vectors = {}
        for name, field in self.fields.items():
            given = (vectors or {}).get(name)
            if given is None:
                if field.config.model is None:
                    raise InvalidRequest(f"field {name!r} has no model: pass its vectors, e.g. vectors={{{name!r}: array}}")
                texts = texts if texts is not None else document_texts(table, self.config.text_keys)
                given = self.encoder(name).encode(texts, progress=progress)
            new_vectors[name] = self._check_vectors(field, given, table.num_rows, "document")
        live = self.documents.live_rows(self.deleted)
        replaced = [live[i] for i in table.column("id").to_pylist() if i in live]
        deleted = np.concatenate([self.deleted, np.zeros(table.num_rows, dtype=bool)])
        deleted[replaced] = True
        self._commit(table, new_vectors, deleted)
        return table.num_rows

    def delete(self, ids: Iterable[str]) -> int:
        """Delete documents by id; unknown ids are ignored. Returns how many were deleted."""
        ids = [ids] if isinstance(ids, str) else list(ids)
        live = self.documents.live_rows(self.deleted)
        rows = [live[str(i)] for i in ids if str(i) in live]
        if not rows:
            return 0
        deleted = self.deleted.copy()
        deleted[rows] = True
        self._commit(None, {}, deleted)
        return len(rows)

    def _commit(self, table: pa.Table | None, new_vectors: dict[str, np.ndarray], deleted: np.ndarray) -> None:
        """Publish one new version: fallible in-memory work first, then new files, then the manifest."""
        path, old = self.path, self.manifest
        v = self.version + 1
        indexes = {name: self.fields[name].index_with(vectors) for name, vectors in new_vectors.items()}
        with storage.writer_lock(path):
            on_disk = storage.read_manifest(path)["version"]
            if on_disk != self.version:
                raise RetrieverError(f"{str(path)!r} moved to version {on_disk} since this object opened version {self.version}; reopen() and retry")
            files = dict(old["files"])
            manifest = {**old, "version": v, "parent": self.version, "fields": {}}
            documents, fields = self.documents, dict(self.fields)
            if table is not None:
                name = f"docs-{v:06d}.parquet"
                files[name] = storage.write_new_file(path, name, _parquet_bytes(table))
                manifest["documents"] = [*old["documents"], name]
                documents = DocumentTable(concat([self.documents.table, table]))
            for fname, field in self.fields.items():
                entry = dict(old["fields"][fname])
                if fname in indexes:
                    vname, iname = f"{fname}.vectors-{v:06d}.npy", f"{fname}.index-{v:06d}.faiss"
                    files[vname] = storage.write_new_file(path, vname, storage.npy_bytes(new_vectors[fname]))
                    files[iname] = storage.write_new_file(path, iname, indexes[fname].to_bytes())
                    fields[fname] = field.with_segment(indexes[fname], np.load(path / vname, mmap_mode="r"))
                    entry["vectors"] = [*entry["vectors"], vname]
                    entry["index"] = iname
                manifest["fields"][fname] = entry
            manifest["deleted"] = None
            if deleted.any():
                dname = f"deleted-{v:06d}.npy"
                files[dname] = storage.write_new_file(path, dname, storage.npy_bytes(np.flatnonzero(deleted).astype(np.int64)))
                manifest["deleted"] = dname
            referenced = _referenced(manifest)
            manifest["files"] = {n: e for n, e in files.items() if n in referenced}
            rows = len(deleted)
            manifest["counts"] = {"rows": rows, "documents": int(rows - deleted.sum()), "deleted": int(deleted.sum())}
            storage.commit_manifest(path, manifest)
            storage.remove_unreferenced(path, referenced | _referenced(old))
        self._set_state(manifest, documents, deleted, fields)

    # ---- search ------------------------------------------------------------------------------

    def search(
        self,
        queries: Queries,
        k: int = 10,
        *,
        fields: Sequence[str] | str | None = None,
        filter: Mapping[str, Any] | None = None,
        params: Mapping[str, int] | None = None,
    ) -> list[Hits]:
        """One `Hits` per query. `queries` is a text, a list of texts, a vector or matrix [B, D],
        or {field: matrix}. Several fields are fused with reciprocal rank fusion."""
        k = self._check_k(k)
        names = self._field_names(fields)
        params = _check_params(params)
        batch = self._query_vectors(queries, names)
        allowed = self._allowed(filter)
        if allowed is not None and not allowed.any():
            size = len(next(iter(batch.values())))
            empty = np.zeros((size, 0), np.float32), np.zeros((size, 0), np.int64)
            return self._hits(*empty, {n: empty[0] for n in names}, "no document matches the filter")
        per_field = {n: self.fields[n].search(batch[n], k, params, allowed) for n in names}
        if len(names) == 1:
            scores, rows = per_field[names[0]]
            return self._hits(scores, rows, {names[0]: scores}, None)
        return self._hits(*fusion.rrf(per_field, k), None)

    def encoder(self, field: str) -> DenseEncoder:
        """The field's text encoder, loaded on first use."""
        config = self.config.field(field)
        if config.model is None:
            raise InvalidRequest(f"field {field!r} has no model (its vectors were brought in); search it with vectors")
        if field not in self._encoders:
            self._encoders[field] = DenseEncoder(config.model, batch_size=config.batch_size, max_length=config.max_length, normalize=config.normalize)
        return self._encoders[field]

    def _hits(self, scores: np.ndarray, rows: np.ndarray, field_scores: dict[str, np.ndarray], reason: str | None) -> list[Hits]:
        """scores/rows [B, k] (-1 rows pad the end) -> one `Hits` per query, padding dropped."""
        if self.documents.num_rows == 0:
            ids: list[list[str]] = [[] for _ in range(len(rows))]
        else:
            ids = self.documents.ids[rows].tolist()  # [B][k]; -1 rows are dropped below
        complete = (rows[:, -1] >= 0).tolist() if rows.shape[1] else [True] * len(rows)  # [B]
        documents, out = self.documents, []
        for b, (s, r, i) in enumerate(zip(scores, rows, ids)):
            per_field = {n: v[b] for n, v in field_scores.items()}
            if not complete[b]:
                found = r >= 0
                s, r, i = s[found], r[found], i[: int(found.sum())]
                per_field = {n: v[found] for n, v in per_field.items()}
            why = reason if reason or i else "the collection has no documents to return"
            out.append(Hits(i, s, per_field, r, documents, why))
        return out

    def _check_k(self, k: int) -> int:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= self.config.max_k:
            raise InvalidRequest(f"k must be an integer from 1 to {self.config.max_k} (the collection's max_k), got {k!r}")
        return int(k)

    def _field_names(self, fields) -> list[str]:
        names = [fields] if isinstance(fields, str) else list(fields or [self.config.fields[0].name])
        if not names:
            raise InvalidRequest("fields must name at least one field")
        for n in names:
            if n not in self.fields:
                raise NotFound(f"unknown field {n!r} in collection {self.name!r}; fields: {list(self.fields)}")
        return names

    def _query_vectors(self, queries: Queries, names: list[str]) -> dict[str, np.ndarray]:
        if isinstance(queries, np.ndarray) and len(names) == 1:
            return {names[0]: self._check_query_matrix(names[0], queries)}
        if isinstance(queries, Mapping):
            missing = [n for n in names if n not in queries]
            if missing:
                raise InvalidRequest(f"query vectors missing for field(s) {missing}")
            return {n: self._check_query_matrix(n, queries[n]) for n in names}
        if isinstance(queries, np.ndarray) or (isinstance(queries, Sequence) and queries and not isinstance(queries, str) and not isinstance(queries[0], str)):
            if len(names) > 1:
                raise InvalidRequest("with several fields, pass query vectors as {field: matrix}")
            return {names[0]: self._check_query_matrix(names[0], queries)}
        texts = [queries] if isinstance(queries, str) else list(queries)
        if not texts:
            raise InvalidRequest("no queries given")
        self._check_batch(len(texts))
        for i, t in enumerate(texts):
            if not isinstance(t, str) or not t.strip():
                raise InvalidRequest(f"query {i} is empty or not a string: {t!r}")
        return {n: self.encoder(n).encode(texts) for n in names}

    def _check_query_matrix(self, name: str, matrix) -> np.ndarray:
        field = self.fields[name]
        try:
            array = np.ascontiguousarray(matrix, dtype=np.float32)
        except (TypeError, ValueError):
            raise InvalidRequest(f"query vectors for field {name!r} are not numeric") from None
        if array.ndim == 1:
            array = array[None, :]
        if array.ndim != 2 or array.shape[0] == 0:
            raise InvalidRequest(f"query vectors for field {name!r} must have shape [batch, {field.dim}], got {array.shape}")
        self._check_batch(array.shape[0])
        return self._check_vectors(field, array, array.shape[0], "query")

    def _check_vectors(self, field: DenseField, vectors, count: int, what: str) -> np.ndarray:
        array = np.ascontiguousarray(vectors, dtype=np.float32)
        if array.ndim != 2 or array.shape[1] != field.dim:
            raise InvalidRequest(f"{what} vectors for field {field.config.name!r} must have dimension {field.dim}, got shape {array.shape}")
        if array.shape[0] != count:
            raise InvalidRequest(f"{count} {what}s but {array.shape[0]} vectors for field {field.config.name!r}")
        squared = np.vecdot(array, array)  # [N]; NaN/inf in a row makes its sum non-finite
        if not (squared.min() > 0 and squared.sum() < np.inf):  # NaN fails both comparisons
            self._explain_bad_vectors(field, array, what)
        return array / np.sqrt(squared)[:, None] if field.config.normalize else array

    @staticmethod
    def _explain_bad_vectors(field: DenseField, array: np.ndarray, what: str) -> None:
        if array.shape[0] == 0:
            return
        finite = np.isfinite(array).all(axis=1)
        if not finite.all():
            raise InvalidRequest(f"{what} vector {int(np.flatnonzero(~finite)[0])} for field {field.config.name!r} contains NaN or inf")
        if field.config.normalize and not array.any(axis=1).all():
            raise InvalidRequest(f"a {what} vector for field {field.config.name!r} is all zeros and cannot be normalized")
        if not np.isfinite(np.linalg.norm(array.astype(np.float64), axis=1)).all():
            raise InvalidRequest(f"a {what} vector for field {field.config.name!r} has values too large for float32 arithmetic")

    def _check_batch(self, size: int) -> None:
        if size > self.config.max_batch:
            raise InvalidRequest(f"{size} queries in one request; the collection's max_batch is {self.config.max_batch}")

    def _allowed(self, conditions) -> np.ndarray | None:
        if conditions is None:
            return self._live
        mask = filter_mask(self.documents.table, conditions)
        return mask if self._live is None else mask & self._live


def connect(target: str | Path, **options):
    """A collection directory opened in-process, or `grpc://host:port/name` served remotely
    (options: token, timeout, root_certificates); both answer with the same methods and `Hits`."""
    if isinstance(target, str) and target.startswith(("grpc://", "grpcs://")):
        from .client import RemoteCollection

        return RemoteCollection.from_url(target, **options)
    if options:
        raise InvalidRequest(f"options {sorted(options)} apply to grpc:// targets only")
    return Collection.open(target)


def _as_config(config) -> CollectionConfig:
    if isinstance(config, CollectionConfig):
        return config
    if isinstance(config, Mapping):
        return CollectionConfig.from_dict(config)
    return CollectionConfig.from_toml(config)


def _check_params(params) -> dict[str, int]:
    if not params:
        return {}
    params = dict(params)
    for key, value in params.items():
        if key not in REQUEST_PARAMS:
            raise InvalidRequest(f"unknown search parameter {key!r}; known: {list(REQUEST_PARAMS)}")
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < REQUEST_PARAMS[key]:
            raise InvalidRequest(f"search parameter {key!r} must be an integer >= {REQUEST_PARAMS[key]}, got {value!r}")
    return params


def _parquet_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def _referenced(manifest: dict[str, Any]) -> set[str]:
    names = set(manifest["documents"])
    if manifest["deleted"]:
        names.add(manifest["deleted"])
    for entry in manifest["fields"].values():
        names.add(entry["index"])
        names.update(entry["vectors"])
    return names
