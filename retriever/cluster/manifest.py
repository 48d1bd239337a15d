"""The cluster manifest: what a sharded collection is made of (`cluster.json`, beside its shards).

    {"format_version": 1, "name": "scifact", "shards": [{"name": "shard-0", "path": "shards/shard-0"}, ...],
     "config": {...the collection config...}, "documents": 5183, "statistics": {...}, "checksum": "..."}

Shard paths are relative to the manifest's directory, so a built cluster can be copied or mounted
elsewhere whole. Documents live on the shard a stable hash of their id names (`shard_of`); the
`statistics` are the collection-wide totals at build time, for the record: searches gather live
ones from the shards (`retriever.fields.statistics`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from retriever.config import CollectionConfig
from retriever.errors import CorruptIndex, InvalidRequest, NotFound
from retriever.index import disk, storage

MANIFEST = "cluster.json"
FORMAT_VERSION = 1
MAX_SHARDS = 4096


def shard_of(document_id: str, shards: int) -> int:
    """The shard that owns a document id: stable across processes, machines and Python versions
    (unlike `hash`), and spread evenly (the first 8 bytes of its BLAKE2b digest)."""
    digest = hashlib.blake2b(document_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") % shards


def check_shards(count: Any) -> int:
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_SHARDS:
        raise InvalidRequest(f"shards must be an integer from 1 to {MAX_SHARDS}, got {count!r}")
    return count


@dataclass(frozen=True)
class ClusterManifest:
    name: str
    config: CollectionConfig
    shards: tuple[str, ...]  # shard names, in shard order: shard i owns ids with shard_of(id, n) == i
    paths: tuple[str, ...]  # each shard collection's directory, relative to the manifest's
    documents: int = 0
    statistics: dict[str, Any] | None = None

    @classmethod
    def planned(cls, config: CollectionConfig, shards: int) -> "ClusterManifest":
        names = tuple(f"shard-{i}" for i in range(check_shards(shards)))
        return cls(config.name, config, names, tuple(f"shards/{n}" for n in names))

    def shard_paths(self, root: str | Path) -> list[Path]:
        return [Path(root) / p for p in self.paths]

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "name": self.name,
            "config": self.config.to_dict(),
            "shards": [{"name": n, "path": p} for n, p in zip(self.shards, self.paths)],
            "documents": self.documents,
            "statistics": self.statistics or {},
        }

    def write(self, root: str | Path) -> Path:
        """Atomically (temp, fsync, rename, fsync the directory) as `root/cluster.json`."""
        root = Path(root)
        body = self.to_dict()
        text = json.dumps({**body, "checksum": storage.json_digest(body)}, indent=1, sort_keys=True).encode()
        tmp = root / f".{MANIFEST}.tmp"
        disk.write_file(tmp, text)
        disk.replace(tmp, root / MANIFEST)
        disk.fsync_dir(root)
        return root / MANIFEST

    @classmethod
    def read(cls, path: str | Path) -> tuple["ClusterManifest", Path]:
        """A cluster manifest (its file, or the directory holding it) -> (it, its directory)."""
        path = Path(path)
        if path.is_dir():
            path = path / MANIFEST
        if not path.exists():
            raise NotFound(
                f"no cluster manifest at {str(path)!r} (`retriever build --ray --shards N` makes one)"
            )
        try:
            raw = json.loads(path.read_bytes())
            body = {key: value for key, value in raw.items() if key != "checksum"}
            if raw.get("checksum") != storage.json_digest(body):
                raise CorruptIndex(f"cluster manifest {str(path)!r} does not match its checksum")
            if raw["format_version"] > FORMAT_VERSION:
                raise CorruptIndex(
                    f"cluster manifest {str(path)!r} is format {raw['format_version']}; this version "
                    f"reads up to {FORMAT_VERSION}: upgrade retriever"
                )
            shards = raw["shards"]
            manifest = cls(
                raw["name"],
                CollectionConfig.from_dict(raw["config"]),
                tuple(s["name"] for s in shards),
                tuple(s["path"] for s in shards),
                int(raw["documents"]),
                raw["statistics"],
            )
        except (ValueError, KeyError, TypeError) as e:
            raise CorruptIndex(f"cluster manifest {str(path)!r} is not readable: {e}") from None
        for p in manifest.paths:
            if Path(p).is_absolute() or ".." in Path(p).parts:
                raise CorruptIndex(f"cluster manifest {str(path)!r}: shard path {p!r} leaves its directory")
        return manifest, path.parent
