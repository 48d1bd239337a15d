"""On-disk collection state: manifest, checksums, atomic commit, verified loading, reader leases.

Invariants:
- Data files are write-once: every commit writes new files under new names, so a reader that
  opened version N keeps valid files while version N+1 is written.
- `manifest.json` is replaced only by rename after the new files and the manifest itself are
  fsynced, then the directory is fsynced. A writer killed at any point leaves the old manifest.
- A file read whole (a faiss index, a vocabulary) is used only after its size and sha256 match the
  manifest; faiss trusts the sizes in its own files, so an unchecked file could crash the process
  instead of raising. A memory-mapped file (documents, vectors, postings) is opened after its size
  and the sha256 of its two ends (`END_BLOCK` bytes each: headers, footers, a torn tail) match, so
  opening costs O(files), not O(bytes), as Lucene checks footers at open; its full sha256 is
  verified by `retriever check` and before a merge reads it.
- A file is removed only when no reader can still need it. A reader *pins* a version while it
  opens (or checks) it: it holds a shared `flock` on `.lease-<version>` and confirms, after
  locking, that the manifest still names that version. Once open, every file it uses is memory
  mapped, read into memory or held open, so a later unlink cannot hurt it (POSIX keeps the
  inode). A commit retires the files its manifest drops (`retired`: file -> last version that
  names it) and removes them at a later commit, once no lease on a version that names them is
  held. Files that no manifest names (debris of a failed or killed commit) are removed too,
  but only names of the engine's own form: the engine deletes only files it named itself.
- Every write, rename, fsync and unlink goes through `disk`, where tests inject faults.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import io
import json
import logging
import os
import re
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from retriever.errors import (
    AlreadyExists,
    CorruptIndex,
    InvalidRequest,
    NotFound,
    RetrieverError,
    StorageFull,
    WriteFailed,
)

from . import disk

FORMAT_VERSION = 2  # 2: segments (documents + deletions per segment); 1 is read, and converted by `migrate`
READABLE_FORMATS = (1, 2)
MANIFEST = "manifest.json"
LOCK = ".lock"
LEASE_PREFIX = ".lease-"
BUILD_DIR = ".build"  # an unfinished `retriever build`'s encoded blocks
SCRATCH_PREFIX = "retriever-buffer-"  # a write buffer's private directory (retriever/buffer.py)
END_BLOCK = 1 << 16  # bytes at each end of a memory-mapped file that opening verifies
PIN_ATTEMPTS = 100  # a reader retries when a writer publishes between its manifest read and its lease
_CHUNK = 1 << 22
# The names the engine gives data files and index directories: `docs-000007.parquet`,
# `dense.vectors-000007.npy`, `bm25.seg-000007-0.rows.npy`, `tokens-000007.spann`, ...
_DATA_NAME = re.compile(
    r"^(?:[A-Za-z][\w\-]{0,63}[.\-])?[a-z]+-\d{6,}(?:[.\-][\w.\-]*)?\.(?:npy|npz|faiss|parquet|arrow|spann)$"
)
_TEMP_NAME = re.compile(r"^\.(.+)\.tmp$")
log = logging.getLogger(__name__)


def sha256_bytes(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_CHUNK):
            h.update(block)
    return h.hexdigest()


def write_new_file(directory: Path, name: str, data: bytes) -> dict[str, Any]:
    """Write a data file durably; returns its manifest entry {size, sha256}.

    Names carry the version being committed, so a file already under this name is debris from a
    writer that died before its manifest was published: no manifest names it, and it is replaced.
    """
    path = directory / name
    tmp = directory / f".{name}.tmp"
    disk.write_file(tmp, data)
    disk.replace(tmp, path)
    view = memoryview(data)
    ends = sha256_bytes(bytes(view[:END_BLOCK]) + bytes(view[max(END_BLOCK, len(view) - END_BLOCK) :]))
    return {"size": len(data), "sha256": sha256_bytes(data), "ends": [END_BLOCK, ends]}


def load_written(directory: Path, name: str, private: bool = False) -> np.ndarray:
    """An array this process just wrote: memory-mapped from a collection directory, read whole from
    a write buffer's scratch directory (in memory already; a map holds a descriptor per file).
    `private`: a copy-on-write map, as `open_npy_verified`."""
    path = Path(directory) / name
    if Path(directory).name.startswith(SCRATCH_PREFIX):
        return np.load(path, allow_pickle=False)
    return np.load(path, mmap_mode="c" if private else "r", allow_pickle=False)


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def json_digest(body: dict[str, Any]) -> str:
    """SHA-256 of a JSON body in one canonical form (sorted keys, no spaces): a manifest's checksum."""
    return sha256_bytes(json.dumps(body, sort_keys=True, separators=(",", ":")).encode())


def manifest_text(body: dict[str, Any]) -> bytes:
    """A manifest's bytes on disk: `body` (at its own format version) and its checksum."""
    body = {"format_version": FORMAT_VERSION, **body}
    return json.dumps({**body, "checksum": json_digest(body)}, indent=1, sort_keys=True).encode("utf-8")


def publish_manifest(directory: Path, body: dict[str, Any]) -> None:
    """Atomically make `body` the collection's manifest (temp, fsync, fsync dir, rename). Once this
    returns, readers see the new version; `disk.fsync_dir` afterwards makes the rename durable."""
    tmp = directory / f".{MANIFEST}.{body['version']}.tmp"
    disk.write_file(tmp, manifest_text({**body, "format_version": FORMAT_VERSION}))
    disk.fsync_dir(directory)  # the data files' directory entries are durable before the manifest names them
    disk.replace(tmp, directory / MANIFEST)


def commit_manifest(directory: Path, body: dict[str, Any]) -> None:
    """Publish `body` and make it durable (temp, fsync, rename, fsync dir)."""
    publish_manifest(directory, body)
    disk.fsync_dir(directory)


def write_error(directory: Path, error: OSError, what: str, outcome: str = "nothing changed") -> WriteFailed:
    """The error a caller sees when a disk operation of a write failed."""
    where = f"{what} in {str(directory)!r}"
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return StorageFull(f"{where} failed: no space left on the disk; {outcome}; free space and retry")
    cause = f"{error.strerror or error} ({Path(error.filename or '').name or 'disk'})"
    return WriteFailed(f"{where} failed: {cause}; {outcome}; retry later")


def read_manifest(directory: Path) -> dict[str, Any]:
    path = Path(directory) / MANIFEST
    if not Path(directory).is_dir():
        raise NotFound(f"collection directory {str(directory)!r} does not exist")
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise CorruptIndex(f"{str(path)!r} is missing: {str(directory)!r} is not a collection or its manifest was lost") from None
    return parse_manifest(raw, repr(str(path)))


def parse_manifest(raw: bytes, what: str) -> dict[str, Any]:
    """A manifest from its bytes, its checksum and format checked (`what` names it in errors)."""
    try:
        data = json.loads(raw)
        checksum = data.pop("checksum")
    except (ValueError, KeyError, AttributeError, TypeError):
        raise CorruptIndex(f"{what} is not a valid manifest (unreadable JSON or no checksum)") from None
    if json_digest(data) != checksum:
        raise CorruptIndex(f"{what} failed its checksum: the manifest was modified or damaged")
    if data.get("format_version") not in READABLE_FORMATS:
        raise CorruptIndex(
            f"{what} has format_version {data.get('format_version')!r}; this engine reads "
            f"{', '.join(map(str, READABLE_FORMATS))}"
        )
    return data


def read_verified(directory: Path, name: str, entry: dict[str, Any]) -> bytes:
    """The file's bytes, after checking size and sha256 against its manifest entry."""
    path = Path(directory) / name
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CorruptIndex(f"{str(path)!r} is listed in the manifest but missing") from None
    _check(path, len(data), sha256_bytes(data), entry)
    return data


def read_parquet_verified(directory: Path, name: str, entry: dict[str, Any]):
    """A Parquet file as an Arrow table, after its checksum matched (read with ParquetFile: the
    dataset API that `read_table` goes through imports pandas, ~60 MB resident)."""
    import pyarrow.parquet as pq

    return pq.ParquetFile(io.BytesIO(read_verified(directory, name, entry))).read()


def open_arrow_verified(directory: Path, name: str, entry: dict[str, Any]):
    """An Arrow IPC file as a table on a read-only memory map, after its checksum matched
    (streamed, not loaded: pages are read as rows are used)."""
    import pyarrow as pa

    path = Path(directory) / name
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise CorruptIndex(f"{str(path)!r} is listed in the manifest but missing") from None
    _check_ends(path, size, entry)
    try:
        return pa.ipc.open_file(pa.memory_map(str(path), "r")).read_all()
    except (pa.ArrowInvalid, OSError) as e:
        raise CorruptIndex(f"{str(path)!r} is not a readable Arrow file: {e}") from None


def open_npy_verified(directory: Path, name: str, entry: dict[str, Any], private: bool = False) -> np.ndarray:
    """A read-only memory map of an .npy file, after its checksum matched (streamed, not loaded).
    `private`: a copy-on-write map instead, which torch reads in place (it takes only writable
    arrays); nothing written to it would reach the file, and nothing here writes."""
    path = Path(directory) / name
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise CorruptIndex(f"{str(path)!r} is listed in the manifest but missing") from None
    _check_ends(path, size, entry)
    try:
        return np.load(path, mmap_mode="c" if private else "r", allow_pickle=False)
    except ValueError as e:
        raise CorruptIndex(f"{str(path)!r} is not a readable .npy array: {e}") from None


def verify_files(directory: Path, files: dict[str, dict[str, Any]]) -> list[str]:
    """Problems found when checking every listed file; empty when all match."""
    problems = []
    for name, entry in sorted(files.items()):
        path = Path(directory) / name
        try:
            _check(path, path.stat().st_size, sha256_file(path), entry)
        except FileNotFoundError:
            problems.append(f"{name}: missing")
        except CorruptIndex as e:
            problems.append(str(e))
    return problems


def _check_ends(path: Path, size: int, entry: dict[str, Any]) -> None:
    """Size and the two ends' sha256 (files written before `ends` existed: the whole sha256)."""
    if "ends" not in entry:
        _check(path, size, sha256_file(path), entry)
        return
    block, digest = entry["ends"]
    _check_size(path, size, entry)
    with open(path, "rb") as f:
        head = f.read(block)
        f.seek(max(block, size - block))
        tail = f.read()
    if sha256_bytes(head + tail) != digest:
        raise CorruptIndex(f"{str(path)!r} failed its sha256 checksum (its ends): the file is corrupt")


def _check(path: Path, size: int, digest: str, entry: dict[str, Any]) -> None:
    _check_size(path, size, entry)
    if digest != entry["sha256"]:
        raise CorruptIndex(f"{str(path)!r} failed its sha256 checksum: the file is corrupt")


def _check_size(path: Path, size: int, entry: dict[str, Any]) -> None:
    if size != entry["size"]:
        raise CorruptIndex(
            f"{str(path)!r} has {size} bytes but the manifest records {entry['size']}: "
            "file truncated or replaced"
        )


def retire(old: dict[str, Any], new_names: set[str], held: set[int]) -> tuple[dict[str, int], list[str]]:
    """The next manifest's `retired` map and the files that can go once it is published.

    `old` is the manifest being replaced, `new_names` what the next one names, `held` the versions
    readers hold leases on. Files the next manifest drops are retired with `last` = old version;
    they cannot go in this commit, since a reader may pin the old version until the rename.
    Files retired earlier go once no lease on a version <= their `last` is held (a reader that
    pins an older version later sees the newer manifest after locking, and moves on)."""
    oldest = min(held, default=old["version"] + 1)
    retired, removable = {}, []
    for name, last in old.get("retired", {}).items():
        if name in new_names:
            continue
        if last < oldest:
            removable.append(name)
        else:
            retired[name] = last
    for name in referenced_names(old) - new_names:
        retired[name] = old["version"]
    return retired, removable


def check_new_directory(directory: Path) -> None:
    """Refuse a directory a new collection cannot go in: one holding a collection or anything
    else (the engine owns, and may delete, every file in a collection's directory)."""
    if (directory / MANIFEST).exists():
        raise AlreadyExists(
            f"{str(directory)!r} already holds a collection; open it, or choose another directory"
        )
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise AlreadyExists(
            f"{str(directory)!r} is not an empty directory; a collection is created only in an empty "
            "or missing one (the engine owns, and may delete, every file in it)"
        )


def undo_create(directory: Path, made: bool) -> None:
    """Put back a directory a collection was created in (it was missing, `made`, or empty: every
    file in it is the engine's)."""
    with contextlib.suppress(OSError):
        if made:
            disk.rmtree(directory)
            return
        for leftover in Path(directory).iterdir():
            disk.rmtree(leftover) if leftover.is_dir() else disk.unlink(leftover)


def remove_collection(directory: Path, engine_names: Iterable[str]) -> None:
    """Delete a collection: its manifest first (from then on the directory is no collection),
    then every file the engine names (data, temp and lease files, `engine_names`), then the
    directory once empty. A file the engine did not write is left, and with it the directory."""
    directory = Path(directory)
    disk.unlink(directory / MANIFEST)
    disk.fsync_dir(directory)
    fixed = {LOCK, *engine_names}
    for path in list(directory.iterdir()):
        if path.name in fixed or path.name.startswith(LEASE_PREFIX) or _engine_named(path.name):
            disk.rmtree(path) if path.is_dir() else disk.unlink(path)
    with contextlib.suppress(OSError):
        directory.rmdir()


def remove_files(
    directory: Path, names: Iterable[str], manifest: dict[str, Any], in_flight: Iterable[str] = ()
) -> None:
    """Remove `names`, then any debris (engine-named files and temp files no manifest names, but
    not those of segments being written: names starting with an `in_flight` name and a dot).
    Best effort: a file that cannot be removed now is removed by a later commit."""
    keep = referenced_names(manifest) | set(manifest.get("retired", {}))
    busy = tuple(f"{name}." for name in in_flight) + tuple(f".{name}." for name in in_flight)
    debris = [p.name for p in Path(directory).iterdir()
              if p.name not in keep and _engine_named(p.name) and not p.name.startswith(busy)]
    for name in {*names, *debris}:
        path = Path(directory) / name
        try:
            disk.rmtree(path) if path.is_dir() else disk.unlink(path)
        except OSError as e:
            log.warning("could not remove %s (removed at a later commit): %s", path, e)


def referenced_names(manifest: dict[str, Any]) -> set[str]:
    """Every data file and index directory a manifest's documents, deletions and fields name."""
    names = set(_names_under(manifest.get("segments", [])))
    names.update(_names_under(manifest.get("documents", [])))  # format 1
    if manifest.get("deleted"):
        names.add(manifest["deleted"])
    names.update(_names_under(manifest.get("fields", {})))
    return names


def _names_under(entry: Any) -> list[str]:
    """Names of the engine's form anywhere under a manifest entry (strings in dicts and lists)."""
    if isinstance(entry, str):
        return [entry] if _DATA_NAME.match(entry) else []
    if isinstance(entry, dict):
        entry = list(entry.values())
    if isinstance(entry, list):
        return [name for item in entry for name in _names_under(item)]
    return []


def _engine_named(name: str) -> bool:
    temp = _TEMP_NAME.match(name)
    inner = temp[1] if temp else name
    if _DATA_NAME.match(inner):
        return True
    return temp is not None and re.fullmatch(rf"{re.escape(MANIFEST)}\.\d+", inner) is not None


# ---- reader leases ------------------------------------------------------------------------------


@contextlib.contextmanager
def pinned(directory: Path) -> Iterator[dict[str, Any]]:
    """The current manifest, with every file it names kept on disk while the block runs."""
    directory = Path(directory)
    for _ in range(PIN_ATTEMPTS):
        manifest = read_manifest(directory)
        with _lease(directory, int(manifest["version"])):
            if read_manifest(directory)["version"] == manifest["version"]:
                yield manifest
                return
    raise RetrieverError(
        f"{str(directory)!r} changed version {PIN_ATTEMPTS} times while it was being opened; retry"
    )


@contextlib.contextmanager
def _lease(directory: Path, version: int) -> Iterator[None]:
    path = directory / f"{LEASE_PREFIX}{version:06d}"
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:  # a read-only directory: no writer can remove files there either
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)


def held_leases(directory: Path, below: int) -> set[int]:
    """Versions below `below` that a reader holds a lease on; lease files nobody holds are removed."""
    held = set()
    for path in Path(directory).glob(f"{LEASE_PREFIX}*"):
        try:
            version = int(path.name[len(LEASE_PREFIX) :])
        except ValueError:
            continue
        if version >= below:
            continue
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            held.add(version)
            continue
        finally:
            os.close(fd)
        with contextlib.suppress(OSError):
            disk.unlink(path)  # unheld: a reader that locks it now re-reads the manifest and moves on
    return held


@contextlib.contextmanager
def writer_lock(directory: Path) -> Iterator[None]:
    """One writer per collection directory at a time (readers take no lock)."""
    fd = os.open(Path(directory) / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RetrieverError(
                f"another writer (another process, or another object in this one) is committing to "
                f"{str(directory)!r}; wait for it to finish and retry"
            ) from None
        yield
    finally:
        os.close(fd)


def prepare_work_dir(work: Path, state: dict[str, Any], resume: bool, changed: str) -> None:
    """A resumable job's scratch directory. With `resume` and the same `state` (JSON), what an
    interrupted run left there is kept; a different state raises `changed`; otherwise it starts empty."""
    state_file = work / "state.json"
    if resume and state_file.exists():
        if json.loads(state_file.read_text()) != json.loads(json.dumps(state)):
            raise InvalidRequest(changed)
        return
    disk.rmtree(work)
    disk.mkdir(work)
    disk.write_file(state_file, json.dumps(state).encode())
