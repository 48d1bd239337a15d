"""Sharded collections behind the gRPC server: the server's registry over routers (in this
process over local shards, or over a Ray Serve router deployment), so the wire contract, the CLI
and the Node client reach a cluster unchanged. Searches, writes, documents, counts, generation
and collection facts work; creating, dropping, snapshotting or restoring a cluster goes through
`retriever build --ray` and the shard directories instead."""

from __future__ import annotations

from typing import Any, Callable, Mapping, TypeVar

from retriever.errors import InvalidRequest, NotFound

T = TypeVar("T")


class ClusterRegistry:
    """What the server asks of its registry, for sharded collections (each a router)."""

    def __init__(self, routers: Mapping[str, Any]) -> None:
        self.routers = dict(routers)
        self.not_served: dict[str, str] = {}
        self.data_dir = None
        self.on_change: Callable[[str, bool | None], None] | None = None

    def names(self) -> list[str]:
        return sorted(self.routers)

    def healthy(self, name: str) -> bool:
        return name in self.routers

    def rescan(self, every: float = 0.0) -> None:
        pass  # the clusters served are fixed at start

    def reader(self, name: str):
        if name not in self.routers:
            raise NotFound(f"unknown collection {name!r}; served: {self.names()}")
        return self.routers[name]

    def write(self, name: str, change: Callable[[Any], T]) -> tuple[T, Any]:
        """Writes are durable on their shards when `change` returns (each shard logs and syncs)."""
        router = self.reader(name)
        return change(router), router

    def start_merging(self) -> None:
        pass  # each shard merges its own segments as it writes

    def stop_merging(self) -> None:
        pass

    def _unsupported(self, *args, **kwargs):
        raise InvalidRequest(
            "this server serves sharded collections: create, drop, snapshot and restore them with "
            "`retriever build --ray` and their shard directories"
        )

    create = restore = drop = check_new = path = _unsupported
