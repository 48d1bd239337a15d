"""Sharded collections: documents spread over shard collections by a hash of their id, searched
as one collection by a `Router` whose answers equal the unsharded collection's.

    cluster.create(root, config, shards=3)      # empty shards and root/cluster.json
    with cluster.open_local(root) as router:      # the shards in this process (one machine)
        router.add(documents); router.search("query")

On Ray (`retriever.cluster.ray_build`, `retriever.cluster.ray_serve`) the same shards are built
by Ray Data and served by Ray Serve deployments; docs/scale-out.md shows the commands.
"""

from __future__ import annotations

from pathlib import Path

from retriever.collection import Collection, _as_config

from .manifest import MANIFEST, ClusterManifest, shard_of
from .router import DEFAULT_DEADLINE, Router
from .shard import Shard
from .transport import LocalShards

__all__ = [
    "MANIFEST",
    "ClusterManifest",
    "LocalShards",
    "Router",
    "Shard",
    "create",
    "open_local",
    "shard_of",
]


def create(root: str | Path, config, shards: int) -> ClusterManifest:
    """Empty shard collections under `root` and the cluster manifest naming them."""
    config = _as_config(config)
    manifest = ClusterManifest.planned(config, shards)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for path in manifest.shard_paths(root):
        Collection.create(path, config)
    manifest.write(root)
    return manifest


def open_local(root: str | Path, *, deadline: float = DEFAULT_DEADLINE) -> Router:
    """A router over the cluster's shards, each opened in this process (close it, or use `with`)."""
    manifest, root = ClusterManifest.read(root)
    return Router(
        manifest.config,
        LocalShards(manifest.shards, [Shard(p) for p in manifest.shard_paths(root)]),
        deadline=deadline,
    )
