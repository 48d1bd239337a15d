"""The collections one server process serves: pinned snapshots for readers, one writer each."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from pathlib import Path
from typing import BinaryIO, Callable, TypeVar

from . import snapshots
from .collection import Collection
from .config import CollectionConfig, check_name
from .errors import AlreadyExists, CorruptIndex, InvalidConfig, InvalidRequest, NotFound, RetrieverError
from .index import storage

T = TypeVar("T")
RESCAN_SECONDS = 1.0  # an unknown name rescans the data directory at most this often
log = logging.getLogger(__name__)


class Registry:
    """Collections by name. A damaged collection is kept by its directory name and answers every
    request with CorruptIndex (DATA_LOSS) while the others keep serving. A directory that cannot
    be served under a name (not a collection, a name already served, a damaged one whose name is
    not a collection name) is left out and reported in `not_served`: one bad directory never stops
    a server or hides a healthy collection."""

    def __init__(self) -> None:
        self._readers: dict[str, Collection] = {}
        self._writers: dict[str, Collection] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._broken: dict[str, str] = {}  # name -> why it is damaged
        self._merger: threading.Thread | None = None
        self._to_merge: set[str] = set()
        self._wake = threading.Condition()
        self._stopping = False
        self._busy = False  # the merger is merging a collection
        self.not_served: dict[str, str] = {}  # directory -> why it is not served
        self._paths: dict[str, Path] = {}  # name -> directory, of every collection served
        self._no_manifest: set[str] = set()  # directories left out for holding no manifest (retried)
        self.data_dir: Path | None = None  # where collections are created, dropped and found
        self._changing = threading.Lock()  # creates, drops and rescans, one at a time
        self._scanned = 0.0
        self.on_change: Callable[[str, bool | None], None] | None = None  # (name, healthy; None: gone)

    @classmethod
    def open(cls, paths: list[str | Path]) -> "Registry":
        registry = cls()
        for path in paths:
            registry.add_path(Path(path))
        return registry

    @classmethod
    def open_data_dir(cls, root: str | Path) -> "Registry":
        """Every collection under `root`, and those created there later (over the wire, or by
        `retriever build` into it: found at the next rescan)."""
        registry = cls()
        registry.data_dir = Path(root)
        registry.data_dir.mkdir(parents=True, exist_ok=True)
        registry.rescan()
        return registry

    def rescan(self, every: float = 0.0) -> None:
        """Serve collections made in the data directory since the last scan (a build still under
        way is skipped) and stop serving those whose directory no longer holds one. `every`:
        skip the scan when one ran less than that many seconds ago."""
        if self.data_dir is None or time.monotonic() - self._scanned < every:
            return
        with self._changing:
            self._scanned = time.monotonic()
            for name, path in list(self._paths.items()):
                if not (path / storage.MANIFEST).exists():
                    self._forget(name)
            for waiting in [p for p in self.not_served if p in self._no_manifest]:
                if (Path(waiting) / storage.MANIFEST).exists():  # it became a collection since: try again
                    del self.not_served[waiting]
                    self._no_manifest.discard(waiting)
            known = {str(p) for p in self._paths.values()} | set(self.not_served)
            for path in sorted(self.data_dir.iterdir()):
                if path.is_dir() and not path.name.startswith(".") and str(path) not in known:
                    if not (path / storage.BUILD_DIR).exists():
                        self.add_path(path)

    def create(self, config: CollectionConfig) -> Collection:
        """A new, empty collection in its own directory under the data directory."""
        self._need_data_dir()
        with self._changing:
            if config.name in self._paths:
                raise AlreadyExists(f"collection {config.name!r} already exists")
            path = self.data_dir / config.name
            Collection.create(path, config)
            self.not_served.pop(str(path), None)
            self.add_path(path)
        return self.reader(config.name)

    def restore(self, name: str, archive: BinaryIO) -> Collection:
        """A collection `name` under the data directory, made from a snapshot archive."""
        with self._changing:
            self.check_new(name)
            path = self.data_dir / name
            snapshots.restore(archive, path, name=name)
            self.not_served.pop(str(path), None)
            self.add_path(path)
        return self.reader(name)

    def check_new(self, name: str) -> None:
        """Refuse what would stop a collection `name` being made here (before a costly upload)."""
        self._need_data_dir()
        check_name(name)
        if name in self._paths:
            raise AlreadyExists(f"collection {name!r} already exists; restore under another name")

    def path(self, name: str) -> Path:
        """The directory of a collection served (NotFound, or CorruptIndex, when it is not)."""
        self._check(name)
        return self._paths[name]

    def drop(self, name: str) -> None:
        """Stop serving a collection and delete every file the engine wrote for it (after the
        writes in flight; searches in flight finish on what they hold)."""
        self._need_data_dir()
        with self._changing:
            if name not in self._paths:
                self._check(name)  # says why: a bad name, or an unknown one
            path = self._paths[name]
            with self._locks.get(name) or contextlib.nullcontext():
                try:
                    Collection.drop(path)
                finally:
                    if not (path / storage.MANIFEST).exists():
                        self._forget(name)

    def _need_data_dir(self) -> None:
        if self.data_dir is None:
            raise InvalidRequest("this server serves the directories it was started with; start it with "
                                 "--data-dir DIR to create and drop collections over the wire")

    def _forget(self, name: str) -> None:
        for table in (self._readers, self._writers, self._locks, self._broken, self._paths):
            table.pop(name, None)
        self._changed(name, None)

    def _changed(self, name: str, healthy: bool | None) -> None:
        if self.on_change is not None:
            self.on_change(name, healthy)

    def add_path(self, path: Path) -> None:
        try:
            collection = Collection.open(path)
        except CorruptIndex as e:
            if (path / storage.MANIFEST).exists():
                self._add_damaged(path, str(e))
            else:  # not a collection (or one that lost all trace of being one), yet
                self._leave_out(path, str(e))
                self._no_manifest.add(str(path))
            return
        except (RetrieverError, OSError) as e:
            self._leave_out(path, str(e))
            return
        name = collection.name
        if name in self._writers:
            self._leave_out(path, f"collection {name!r} is already served from another directory")
            return
        if name in self._broken:  # a healthy collection keeps its name from a damaged directory
            self._leave_out(self._paths.pop(name), f"damaged: {self._broken.pop(name)}")
        self._paths[name] = path
        collection.sync_writes = False  # `write` syncs the log after releasing the collection's lock
        self._writers[name] = collection
        self._readers[name] = collection.view()
        self._locks[name] = threading.Lock()
        self._changed(name, True)

    def _add_damaged(self, path: Path, reason: str) -> None:
        """Served under its directory's name as damaged (DATA_LOSS, NOT_SERVING) if that name is free."""
        try:
            name = check_name(path.name, "collection directory name")
        except InvalidConfig as e:
            self._leave_out(path, f"damaged ({reason}); {e}")
            return
        if name in self._writers or name in self._broken:
            self._leave_out(path, f"damaged ({reason}); collection {name!r} is served from another directory")
            return
        self._broken[name], self._paths[name] = reason, path
        self._changed(name, False)

    def _leave_out(self, path: Path, reason: str) -> None:
        self.not_served[str(path)] = reason
        log.warning("not serving %s: %s", path, reason)

    def names(self) -> list[str]:
        return sorted([*self._writers, *self._broken])

    def healthy(self, name: str) -> bool:
        return name in self._writers

    def reader(self, name: str) -> Collection:
        """The current pinned snapshot of a collection (searches never see a half-applied write)."""
        self._check(name)
        return self._readers[name]

    def write(self, name: str, change: Callable[[Collection], T]) -> tuple[T, Collection]:
        """Apply `change` to the collection's writer, then publish a new snapshot to readers.
        Returns the change's result and the snapshot that holds it."""
        self._check(name)
        writer, lock = self._writers.get(name), self._locks.get(name)
        if writer is None or lock is None:  # dropped since the check
            raise NotFound(f"unknown collection {name!r}")
        with lock:
            if self._writers.get(name) is not writer:  # dropped while this write waited for the lock
                raise NotFound(f"unknown collection {name!r}")
            try:
                result = change(writer)
            finally:  # a write that fails after its version was published still moves readers on
                snapshot = writer.view()
        try:
            snapshot.sync_log()  # outside the lock: writes logged meanwhile share the fsync (group commit)
        finally:
            with lock:
                if self._writers.get(name) is writer and _newer(snapshot, self._readers[name]):
                    self._readers[name] = snapshot  # (not once dropped meanwhile)
        if self._merger is not None:
            with self._wake:
                self._to_merge.add(name)
                self._wake.notify()
        return result, snapshot

    # ---- background merges -------------------------------------------------------------------

    def start_merging(self) -> None:
        """Flush write buffers and merge segments in a background thread instead of in the writes:
        a write returns once logged, and a flush or merge holds writers back only to pin what it
        takes and to publish."""
        for writer in self._writers.values():
            writer.merge_inline = False
        self._merger = threading.Thread(target=self._merge_loop, name="retriever-merger", daemon=True)
        self._merger.start()
        with self._wake:
            self._to_merge.update(self._writers)
            self._wake.notify()

    def stop_merging(self) -> None:
        if self._merger is None:
            return
        with self._wake:
            self._stopping = True
            self._wake.notify()
        self._merger.join()
        self._merger = None

    def merges_pending(self) -> bool:
        with self._wake:
            return bool(self._to_merge) or self._busy

    def _merge_loop(self) -> None:
        while True:
            with self._wake:
                while not self._to_merge and not self._stopping:
                    self._busy = False
                    self._wake.wait()
                if self._stopping:
                    return
                name = self._to_merge.pop()
                self._busy = True
            self._merge_collection(name)

    def _merge_collection(self, name: str) -> None:
        """Flush the collection's write buffer when full, then merge while the policy asks."""
        writer = self._writers.get(name)
        if writer is None:  # dropped since
            return
        flush = (lambda: writer.plan_flush() if writer.needs_flush() else None, writer.write_flush,
                 writer.finish_flush, writer.forget_flush, "flushing")
        merge = (writer.plan_merge, writer.write_merge, writer.finish_merge, writer.forget_merge, "merging")
        if self._in_background(name, *flush) is False:
            return
        while not self._stopping and self._in_background(name, *merge):
            pass

    def _in_background(self, name: str, plan, write, finish, forget, what: str) -> bool | None:
        """One flush or merge: planned and finished under the collection's lock, written without
        it (writes and searches go on meanwhile). None when there was nothing to do, False when
        it failed (logged: retried after the next write)."""
        with self._locks[name]:
            planned = plan()
        if planned is None:
            return None
        try:
            write(planned)
            with self._locks[name]:
                finish(planned)
                self._readers[name] = self._writers[name].view()
        except RetrieverError as e:
            forget(planned)
            log.warning("%s %s failed, retried after its next write: %s", what, name, e)
            return False
        return True

    def _check(self, name: str) -> None:
        try:
            check_name(name)
        except InvalidConfig as e:
            raise InvalidRequest(str(e)) from None
        if name in self._broken:
            raise CorruptIndex(f"collection {name!r} is damaged and not served: {self._broken[name]}")
        if name not in self._writers and name not in self._broken:
            self.rescan(every=RESCAN_SECONDS)  # made by another process since?
        if name in self._broken:
            raise CorruptIndex(f"collection {name!r} is damaged and not served: {self._broken[name]}")
        if name not in self._writers:
            raise NotFound(f"unknown collection {name!r}")  # never list the others: names can be private



def _newer(candidate: Collection, current: Collection) -> bool:
    """Whether `candidate` holds writes `current` lacks (snapshots may be published out of order)."""
    return (candidate.version, candidate.log_position) >= (current.version, current.log_position)
