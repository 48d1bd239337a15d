"""Snapshots: one committed version of a collection as a tar archive, and its restore.

An archive holds every file the version's manifest names, then the manifest itself, last. It is
made while the version is pinned (a reader lease), so writers and merges carry on meanwhile and
no file it needs is retired. Restoring checks every file against the manifest's sizes and
checksums before the manifest is written: a damaged or cut-short archive leaves no collection.
"""

from __future__ import annotations

import contextlib
import re
import tarfile
from pathlib import Path
from typing import BinaryIO, Iterator

from retriever.index import disk, storage

from .config import check_name
from .errors import CorruptIndex

CHUNK = 1 << 20  # bytes an archive is produced and read in
_BLOCK = 512  # tar's block: each header and each file's data fill whole blocks
# a name an archive may hold: a plain relative path of the engine's files, no `..` or absolute
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_\-][\w.\-]*(?:/[A-Za-z0-9_\-][\w.\-]*)*$")


class Archive:
    """The archive of a collection's newest committed version, pinned from construction to
    `close()`: its `version`, then its bytes from `chunks()`."""

    def __init__(self, path: str | Path, chunk_bytes: int = CHUNK) -> None:
        self.path, self.chunk_bytes = Path(path), chunk_bytes
        self._pin = storage.pinned(self.path)
        self.manifest = self._pin.__enter__()
        self.version = int(self.manifest["version"])

    def chunks(self) -> Iterator[bytes]:
        """Pieces of at most `chunk_bytes` (headers and padding are smaller)."""
        files = self.manifest["files"]
        for name in sorted(files):
            size = files[name]["size"]
            yield _header(name, size)
            with open(self.path / name, "rb") as source:
                for _ in range(0, size, self.chunk_bytes):
                    yield source.read(self.chunk_bytes)
            yield bytes(-size % _BLOCK)
        text = storage.manifest_text(self.manifest)
        yield _header(storage.MANIFEST, len(text))
        yield text + bytes(-len(text) % _BLOCK)
        yield bytes(2 * _BLOCK)  # the end of the archive

    def close(self) -> None:
        self._pin.__exit__(None, None, None)

    def __enter__(self) -> "Archive":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@contextlib.contextmanager
def opened(target: str | Path | BinaryIO, mode: str) -> Iterator[BinaryIO]:
    """A file object given as itself (left open), or a path opened in `mode` (closed after)."""
    if hasattr(target, "read" if "r" in mode else "write"):
        yield target
        return
    with open(target, mode) as handle:
        yield handle


def write(path: str | Path, out: BinaryIO) -> int:
    """Write the archive of the collection at `path` to `out`; returns the version archived."""
    with Archive(path) as archive:
        for piece in archive.chunks():
            out.write(piece)
        return archive.version


def restore(source: BinaryIO, path: str | Path, name: str | None = None) -> dict:
    """Make the collection in the archive `source` at `path` (an empty or missing directory),
    renamed `name` when given. Returns its manifest. Nothing is left at `path` when it fails."""
    path = Path(path)
    if name is not None:
        check_name(name)
    storage.check_new_directory(path)
    made = not path.exists()
    disk.mkdir(path)
    try:
        manifest = _extract(source, path)
        problems = storage.verify_files(path, manifest["files"])
        if problems:
            raise CorruptIndex(f"the snapshot is damaged: {'; '.join(problems[:3])}")
        if name is not None:
            manifest["config"]["name"] = name
        manifest.pop("retired", None)
        storage.commit_manifest(path, manifest)
    except BaseException:
        storage.undo_create(path, made)
        raise
    return manifest


def _extract(source: BinaryIO, path: Path) -> dict:
    """Write the archive's data files into `path`; returns its manifest (not yet written)."""
    manifest = None
    try:
        with tarfile.open(fileobj=source, mode="r|") as archive:
            for member in archive:
                if not member.isfile() or not _SAFE_NAME.match(member.name):
                    raise CorruptIndex(f"the snapshot holds {member.name!r}, which no collection has")
                data = archive.extractfile(member)
                if member.name == storage.MANIFEST:
                    manifest = storage.parse_manifest(data.read(), "the snapshot's manifest")
                    continue
                (path / member.name).parent.mkdir(parents=True, exist_ok=True)
                with disk.create(path / member.name) as out:
                    while piece := data.read(CHUNK):
                        out.write(piece)
    except (tarfile.TarError, EOFError) as e:
        raise CorruptIndex(f"the snapshot is not a complete archive: {e}") from None
    if manifest is None:
        raise CorruptIndex("the snapshot holds no manifest.json (cut short?)")
    written = {p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()}
    if written != set(manifest["files"]):
        missing, foreign = sorted(set(manifest["files"]) - written), sorted(written - set(manifest["files"]))
        raise CorruptIndex(
            f"the snapshot's files differ from those its manifest names (missing {missing[:3]}, "
            f"not named {foreign[:3]})"
        )
    disk.fsync_dir(path)
    return manifest


def _header(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, 0o644, 0
    return info.tobuf(format=tarfile.PAX_FORMAT)

