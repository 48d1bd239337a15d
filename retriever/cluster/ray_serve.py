"""Shards served by Ray Serve: one deployment per shard (replicas configurable), a router
deployment that fans each call out to them, and `RayCollection`, the collection API over the
router's handle (what `retriever.connect("ray://...")` and `retriever serve --ray` use).

Ray is imported with this module, which nothing imports until a Ray path is asked for. Ray moves
arguments and answers between processes in its own object format; nothing here is stored.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import ray
from ray import serve
from ray.serve.config import ProxyLocation

from retriever.config import CollectionConfig
from retriever.errors import InvalidRequest, RetrieverError, Unavailable

from .manifest import ClusterManifest
from .router import DEFAULT_DEADLINE, Router
from .shard import Shard
from .transport import Calls

APP_PREFIX = "retriever-"  # + the collection's name: its Serve application
CALL_TIMEOUT = 600.0  # seconds a client waits for the router (a search has its own shard deadline)


@serve.deployment
class ShardReplica(Shard):
    """A replica of one shard: opens the shard's collection directory (a path every node reaches),
    warm before it takes requests (a replica Serve starts in place of a dead one too)."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.warm()

    def pid(self) -> int:
        return os.getpid()


class RayShards:
    """Shards as Serve deployment handles; a replica that dies or is late answers Unavailable."""

    def __init__(self, names: Sequence[str], handles: Sequence[Any]) -> None:
        self.names = tuple(names)
        self.handles = list(handles)

    def call(self, method: str, calls: Calls, timeout: float | None) -> dict[int, Any]:
        responses = {
            i: getattr(self.handles[i], method).remote(*args, **kwargs) for i, (args, kwargs) in calls.items()
        }
        end = None if timeout is None else time.monotonic() + timeout
        out: dict[int, Any] = {}
        for i, response in responses.items():
            try:
                out[i] = response.result(timeout_s=None if end is None else max(0.0, end - time.monotonic()))
            except TimeoutError:
                response.cancel()
                out[i] = Unavailable(f"shard {self.names[i]!r} did not answer within {timeout}s")
            except Exception as e:  # noqa: BLE001 (any failure of a shard is that shard's answer)
                out[i] = _as_engine_error(e, f"shard {self.names[i]!r}")
        return out

    def close(self) -> None:
        pass  # the deployments outlive one router


@serve.deployment
class RouterReplica(Router):
    """The router as a deployment: its handles reach every shard deployment."""

    def __init__(self, manifest: str, deadline: float, *shards: Any) -> None:
        cluster, _ = ClusterManifest.read(manifest)
        super().__init__(cluster.config, RayShards(cluster.shards, shards), deadline=deadline)

    def collection_config(self) -> dict[str, Any]:
        return self.config.to_dict()

    def generate(self, *args, **kwargs) -> Iterator[Any]:
        yield from super().generate(*args, **kwargs)  # a generator: Serve streams its pieces


def start(address: str | None = None, *, num_cpus: int | None = None) -> None:
    """Join the Ray cluster at `address` ("auto": the one on this machine), or start one here."""
    if not ray.is_initialized():
        ray.init(
            address=address,
            num_cpus=num_cpus,
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
        )


def deploy(
    manifest_path: str | Path,
    *,
    replicas: int = 1,
    router_replicas: int = 1,
    cpus: float | None = None,
    deadline: float = DEFAULT_DEADLINE,
) -> "RayCollection":
    """Serve a built cluster (its manifest) on the Ray cluster this process joined (`start`):
    `replicas` of each shard and `router_replicas` of the router, each holding `cpus` CPUs (by
    default 1, or the share of the cluster's CPUs that lets them all start)."""
    manifest, root = ClusterManifest.read(manifest_path)
    for name, value in (("replicas", replicas), ("router replicas", router_replicas)):
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 64:
            raise InvalidRequest(f"{name} must be an integer from 1 to 64, got {value!r}")
    count = len(manifest.shards) * replicas + router_replicas
    total = ray.cluster_resources().get("CPU", 0)
    if cpus is None:
        cpus = min(1.0, total / count)
    if cpus * count > total:  # Serve would wait for them forever
        raise InvalidRequest(
            f"{count} replicas x {cpus} CPUs do not fit the Ray cluster's {total:g} CPUs: ask fewer CPUs "
            "per replica, or fewer replicas"
        )
    serve.start(proxy_location=ProxyLocation.Disabled)  # no HTTP: our gRPC server is the front door
    options = {"ray_actor_options": {"num_cpus": cpus}, "max_ongoing_requests": 32}
    shards = [
        ShardReplica.options(name=f"shard-{i}", num_replicas=replicas, **options).bind(str(path))
        for i, path in enumerate(manifest.shard_paths(root))
    ]
    router = RouterReplica.options(name="router", num_replicas=router_replicas, **options).bind(
        str(Path(root) / "cluster.json"), deadline, *shards
    )
    handle = serve.run(router, name=APP_PREFIX + manifest.name, route_prefix=None)
    _result(handle.warm.remote())
    return RayCollection(handle, manifest.config)


def undeploy(name: str) -> None:
    serve.delete(APP_PREFIX + name)


def connect(target: str) -> "RayCollection":
    """`ray://NAME` (the Ray cluster this machine runs) or `ray://ADDRESS/NAME`: a served cluster."""
    rest = target.removeprefix("ray://")
    address, _, name = rest.rpartition("/")
    if not name:
        raise InvalidRequest(f"{target!r}: expected ray://NAME or ray://ADDRESS/NAME")
    if not ray.is_initialized():
        ray.init(address=address or "auto", log_to_driver=False, configure_logging=False)
    try:
        handle = serve.get_app_handle(APP_PREFIX + name)
    except Exception as e:  # noqa: BLE001 (Serve's words for an application it does not run)
        raise Unavailable(f"no sharded collection {name!r} is served on this Ray cluster: {e}") from None
    config = _result(handle.collection_config.remote())
    return RayCollection(handle, CollectionConfig.from_dict(config))


class RayCollection:
    """The collection API over the router deployment: the same methods and `Results` as in-process."""

    def __init__(self, handle: Any, config: CollectionConfig) -> None:
        self.handle = handle
        self.config = config

    @property
    def name(self) -> str:
        return self.config.name

    def search(self, queries, k: int = 10, **options):
        return _result(self.handle.search.remote(queries, k, **options))

    def add(self, documents, vectors=None) -> int:
        return _result(self.handle.add.remote(list(documents), vectors))

    def delete(self, ids) -> int:
        return _result(self.handle.delete.remote(list(ids) if not isinstance(ids, str) else ids))

    def get(self, ids):
        return _result(self.handle.get.remote(list(ids) if not isinstance(ids, str) else ids))

    def count(self, filter=None) -> int:
        return _result(self.handle.count.remote(filter))

    def __len__(self) -> int:
        return self.count()

    def info(self) -> dict[str, Any]:
        return _result(self.handle.info.remote())

    def schema(self) -> dict[str, Any]:
        return _result(self.handle.schema.remote())

    @property
    def version(self) -> int:
        return int(self.info()["version"])

    def generate(self, question: str, k: int = 5, **options) -> Iterator[Any]:
        try:
            yield from self.handle.options(stream=True).generate.remote(question, k, **options)
        except Exception as e:  # noqa: BLE001
            raise _as_engine_error(e, "the router") from None

    def close(self) -> None:
        pass


def _result(response) -> Any:
    try:
        return response.result(timeout_s=CALL_TIMEOUT)
    except Exception as e:  # noqa: BLE001 (Ray's errors become the engine's)
        raise _as_engine_error(e, "the router") from None


def _as_engine_error(error: Exception, who: str) -> RetrieverError:
    """An error raised in a replica, as the engine's own (Ray wraps it with its traceback); a
    replica that died or cannot be reached: Unavailable."""
    cause = getattr(error, "cause", None)
    if isinstance(cause, RetrieverError):
        return cause
    if isinstance(error, RetrieverError):
        return error
    return Unavailable(f"{who} is unavailable: {type(error).__name__}: {str(error).splitlines()[0][:300]}")
