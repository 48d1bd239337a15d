"""How a router reaches its shards: one call per shard, answers gathered under a deadline.

`Shards` is the interface; `LocalShards` runs `Shard` objects on threads of this process (one
machine, tests), `retriever.cluster.ray_serve.RayShards` calls Ray Serve deployments. A shard
that raises, or does not answer in time, answers with the exception: the router decides what a
missing shard means (a flagged partial search, a failed write).
"""

from __future__ import annotations

from concurrent import futures
from typing import Any, Mapping, Protocol, Sequence

from retriever.errors import Unavailable

Calls = Mapping[int, tuple[tuple, dict[str, Any]]]  # {shard: (args, keyword args)}


class Shards(Protocol):
    names: tuple[str, ...]

    def call(self, method: str, calls: Calls, timeout: float | None) -> dict[int, Any]:
        """{shard: its answer, or the exception it raised (Unavailable when it did not answer
        within `timeout` seconds)} for every shard called."""

    def close(self) -> None: ...


class LocalShards:
    """Shards in this process, each called on its own thread."""

    def __init__(self, names: Sequence[str], shards: Sequence[Any]) -> None:
        self.names = tuple(names)
        self.shards = list(shards)
        self._pool = futures.ThreadPoolExecutor(max(1, len(self.shards)), thread_name_prefix="shard")

    def call(self, method: str, calls: Calls, timeout: float | None) -> dict[int, Any]:
        running = {
            self._pool.submit(getattr(self.shards[i], method), *args, **kwargs): i
            for i, (args, kwargs) in calls.items()
        }
        done, late = futures.wait(running, timeout=timeout)
        out: dict[int, Any] = {}
        for future in done:
            error = future.exception()
            out[running[future]] = error if error is not None else future.result()
        for future in late:
            out[running[future]] = Unavailable(
                f"shard {self.names[running[future]]!r} did not answer within {timeout}s"
            )
        return out

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
