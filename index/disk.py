"""The one I/O layer that index and collection writes go through: create and write a file, fsync,
rename, unlink, make and remove directories. Each of these is one numbered operation, so a test
can make the Nth operation fail (ENOSPC, EIO) and check what the engine leaves behind, as SQLite's
`ioerr` tests and Lucene's MockDirectoryWrapper do. Appends and truncation (the write-ahead log)
are operations too. Reads do not pass through here.

The fault seam is process-wide (`inject`): faults exist for tests, and a flag passed down every
call path would be threaded through code that otherwise never needs it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Iterator


@dataclass
class Faults:
    """Counts operations; the one numbered `fail_at` (0-based) raises OSError(`code`), once.
    `fail_at=None` only counts (how many operations a write takes); `ops` records their kinds and
    `names` the file each one touched."""

    fail_at: int | None = None
    code: int = errno.ENOSPC
    count: int = 0
    ops: list[str] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def step(self, kind: str, path: Path) -> None:
        with self._lock:
            n = self.count
            self.count += 1
            self.ops.append(kind)
            self.names.append(path.name)
        if n == self.fail_at:
            raise OSError(self.code, f"{os.strerror(self.code)} (injected at {kind} #{n})", str(path))


_faults: Faults | None = None


@contextlib.contextmanager
def inject(faults: Faults) -> Iterator[Faults]:
    """Every disk operation inside the block is counted by `faults` (and the chosen one fails)."""
    global _faults
    previous, _faults = _faults, faults
    try:
        yield faults
    finally:
        _faults = previous


def _step(kind: str, path: Path) -> None:
    if _faults is not None:
        _faults.step(kind, path)


class _Writer:
    """A file being written: each `write` is one operation; closing the block fsyncs it."""

    def __init__(self, handle: BinaryIO, path: Path) -> None:
        self._handle, self._path = handle, path

    def write(self, data: bytes | memoryview) -> None:
        _step("write", self._path)
        self._handle.write(data)


@contextlib.contextmanager
def create(path: Path) -> Iterator[_Writer]:
    """Write `path` from scratch (truncating it); the data is flushed and fsynced when the block ends."""
    path = Path(path)
    _step("create", path)
    with open(path, "wb") as handle:
        yield _Writer(handle, path)
        handle.flush()
        _step("fsync", path)
        os.fsync(handle.fileno())


def write_file(path: Path, data: bytes | memoryview) -> None:
    """`path` holds exactly `data`, durably (not yet its directory entry: see `fsync_dir`)."""
    with create(path) as out:
        out.write(data)


def replace(source: Path, target: Path) -> None:
    _step("rename", Path(target))
    os.replace(source, target)


def fsync_dir(directory: Path) -> None:
    """Make the directory's entries (new names, renames, removals) durable."""
    _fsync("fsync_dir", Path(directory))


def append(path: Path, data: bytes | memoryview) -> None:
    """Add `data` at the end of `path` (created if missing); durable only after `fsync_file`."""
    _step("append", Path(path))
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    """Make `path`'s data durable (what `append` added)."""
    _fsync("fsync", Path(path))


def _fsync(kind: str, path: Path) -> None:
    _step(kind, path)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def truncate(path: Path, size: int) -> None:
    """Cut `path` to `size` bytes, durably (a missing file is not an error)."""
    _step("truncate", Path(path))
    try:
        fd = os.open(path, os.O_WRONLY)
    except FileNotFoundError:
        return
    try:
        os.ftruncate(fd, size)
        os.fsync(fd)
    finally:
        os.close(fd)


def unlink(path: Path) -> None:
    _step("unlink", Path(path))
    Path(path).unlink(missing_ok=True)


def mkdir(path: Path) -> None:
    _step("mkdir", Path(path))
    Path(path).mkdir(parents=True, exist_ok=True)


def rmtree(path: Path) -> None:
    """Remove a directory tree the engine wrote (a missing one is not an error)."""
    _step("rmtree", Path(path))
    shutil.rmtree(path, ignore_errors=True)
