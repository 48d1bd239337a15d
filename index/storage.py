"""On-disk collection state: manifest, checksums, atomic commit, verified loading.

Invariants:
- Data files are write-once: every commit writes new files under new names, so a reader that
  opened version N keeps valid files while version N+1 is written.
- `manifest.json` is replaced only by rename after the new files and the manifest itself are
  fsynced, then the directory is fsynced. A writer killed at any point leaves the old manifest.
- A file is loaded only after its size and sha256 match the manifest; faiss trusts the sizes in
  its own files, so an unchecked file could crash the process instead of raising.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from retriever.errors import CorruptIndex, InvalidRequest, NotFound, RetrieverError

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
LOCK = ".lock"
_CHUNK = 1 << 22


def sha256_bytes(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_CHUNK):
            h.update(block)
    return h.hexdigest()


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_new_file(directory: Path, name: str, data: bytes) -> dict[str, Any]:
    """Write a data file durably; returns its manifest entry {size, sha256}.

    Names carry the version being committed, so a file already under this name is debris from a
    writer that died before its manifest was published: no manifest names it, and it is replaced.
    """
    path = directory / name
    tmp = directory / f".{name}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return {"size": len(data), "sha256": sha256_bytes(data)}


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def _manifest_digest(body: dict[str, Any]) -> str:
    return sha256_bytes(json.dumps(body, sort_keys=True, separators=(",", ":")).encode())


def commit_manifest(directory: Path, body: dict[str, Any]) -> None:
    """Atomically publish `body` as the collection's manifest (temp, fsync, rename, fsync dir)."""
    body = {**body, "format_version": FORMAT_VERSION}
    text = json.dumps({**body, "checksum": _manifest_digest(body)}, indent=1, sort_keys=True)
    tmp = directory / f".{MANIFEST}.{body['version']}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    fsync_dir(directory)  # the data files' directory entries are durable before the manifest names them
    os.replace(tmp, directory / MANIFEST)
    fsync_dir(directory)


def read_manifest(directory: Path) -> dict[str, Any]:
    path = Path(directory) / MANIFEST
    if not Path(directory).is_dir():
        raise NotFound(f"collection directory {str(directory)!r} does not exist")
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise CorruptIndex(f"{str(path)!r} is missing: {str(directory)!r} is not a collection or its manifest was lost") from None
    try:
        data = json.loads(raw)
        checksum = data.pop("checksum")
    except (ValueError, KeyError, AttributeError, TypeError):
        raise CorruptIndex(f"{str(path)!r} is not a valid manifest (unreadable JSON or no checksum)") from None
    if _manifest_digest(data) != checksum:
        raise CorruptIndex(f"{str(path)!r} failed its checksum: the manifest was modified or damaged")
    if data.get("format_version") != FORMAT_VERSION:
        raise CorruptIndex(f"{str(path)!r} has format_version {data.get('format_version')!r}; this engine reads {FORMAT_VERSION}")
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


def open_npy_verified(directory: Path, name: str, entry: dict[str, Any]) -> np.ndarray:
    """A read-only memory map of an .npy file, after its checksum matched (streamed, not loaded)."""
    path = Path(directory) / name
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise CorruptIndex(f"{str(path)!r} is listed in the manifest but missing") from None
    _check(path, size, sha256_file(path), entry)
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
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


def _check(path: Path, size: int, digest: str, entry: dict[str, Any]) -> None:
    if size != entry["size"]:
        raise CorruptIndex(f"{str(path)!r} has {size} bytes but the manifest records {entry['size']}: file truncated or replaced")
    if digest != entry["sha256"]:
        raise CorruptIndex(f"{str(path)!r} failed its sha256 checksum: the file is corrupt")


def remove_unreferenced(directory: Path, keep: set[str]) -> None:
    """Delete data files (and stale temp files) that no kept manifest names, and index
    directories (SPANN's `*.spann`) likewise."""
    for path in Path(directory).iterdir():
        if path.name in keep or path.name in (MANIFEST, LOCK):
            continue
        if path.is_dir():
            if path.suffix == ".spann":
                shutil.rmtree(path, ignore_errors=True)
            continue
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def writer_lock(directory: Path) -> Iterator[None]:
    """One writer per collection directory at a time (readers take no lock)."""
    fd = os.open(Path(directory) / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RetrieverError(f"another writer holds {str(directory)!r}; wait for it to finish") from None
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
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    state_file.write_text(json.dumps(state))
