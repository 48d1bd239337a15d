"""The chunk-cache store: tiers (device memory, CPU memory, disk) with byte capacities, eviction
that weighs recency, frequency and recompute cost (Cache-Craft), promotion on hit, and on disk
compressed, checksummed entries (a corrupt entry is a miss, never a crash)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .kv import ChunkKV, QuantizedKV

RECENCY_SCALE = 64  # accesses after which an untouched entry's value has halved


@dataclass(frozen=True)
class Tier:
    """One level of the store. `bits` 16 keeps float16; 8 or 4 quantizes (CacheGen-style).
    `device` is "cuda", "cpu" or "disk" (then `path` holds one file per entry)."""

    name: str
    capacity_bytes: int
    device: str = "cpu"
    bits: int = 16
    path: Path | None = None

    def __post_init__(self) -> None:
        if self.capacity_bytes < 0:
            raise ValueError(f"tier {self.name!r}: capacity_bytes must be >= 0")
        if self.bits not in (16, 8, 4):
            raise ValueError(f"tier {self.name!r}: bits must be 16, 8 or 4, got {self.bits}")
        if self.device == "disk" and self.path is None:
            raise ValueError(f"tier {self.name!r}: a disk tier needs a path")


@dataclass
class _Entry:
    nbytes: int
    cost: float  # seconds (or any unit) to recompute the chunk's KV
    hits: int = 0
    last_access: int = 0
    payload: object = None  # ChunkKV / QuantizedKV in memory; None on disk


@dataclass
class TierStats:
    hits: int = 0
    misses: int = 0
    bytes: int = 0
    entries: int = 0
    evictions: int = 0


@dataclass
class ChunkCacheStore:
    """get(key) searches the tiers fastest first and promotes a hit to the first tier; put(key,
    kv, cost) stores into the first tier. A tier over capacity moves its least valuable entries
    down one tier (or drops them from the last)."""

    tiers: list[Tier]
    _entries: list[dict[str, _Entry]] = field(init=False)
    stats: dict[str, TierStats] = field(init=False)

    def __post_init__(self) -> None:
        self._entries = [{} for _ in self.tiers]
        self.stats = {t.name: TierStats() for t in self.tiers}
        self._clock = 0
        self._lock = threading.Lock()
        for level, tier in enumerate(self.tiers):
            if tier.path is not None:
                tier.path.mkdir(parents=True, exist_ok=True)
                self._adopt(level)

    def _adopt(self, level: int) -> None:
        """Entries an earlier process left on disk (keys are content addressed, so they still
        hold): indexed with unknown cost, then trimmed to the capacity."""
        tier = self.tiers[level]
        for path in sorted(tier.path.glob("*.kv")):
            entry = _Entry(path.stat().st_size, cost=1.0)
            self._entries[level][path.stem] = entry
            self._account(level, entry.nbytes, +1)
        self._evict_over_capacity(level, keep="")

    def get(self, key: str, dtype=torch.float16) -> ChunkKV | None:
        with self._lock:
            self._clock += 1
            for level, tier in enumerate(self.tiers):
                entry = self._entries[level].get(key)
                if entry is None:
                    self.stats[tier.name].misses += 1
                    continue
                kv = self._load(level, key, entry)
                if kv is None:  # corrupt or vanished on disk: a miss
                    self._drop(level, key)
                    self.stats[tier.name].misses += 1
                    continue
                self.stats[tier.name].hits += 1
                entry.hits += 1
                entry.last_access = self._clock
                if level > 0:
                    self._drop(level, key)
                    self._insert(0, key, kv, entry)
                return kv.to(device=_torch_device(self.tiers[0]), dtype=dtype)
            return None

    def put(self, key: str, kv: ChunkKV, cost: float) -> None:
        with self._lock:
            self._clock += 1
            for level in range(len(self.tiers)):
                self._drop(level, key)
            self._insert(0, key, kv, _Entry(0, cost, last_access=self._clock))

    def __contains__(self, key: str) -> bool:
        return any(key in entries for entries in self._entries)

    def summary(self) -> dict[str, dict[str, int]]:
        return {name: vars(s).copy() for name, s in self.stats.items()}

    # ---- tiers -----------------------------------------------------------------------------------

    def _insert(self, level: int, key: str, kv: ChunkKV, entry: _Entry) -> None:
        tier = self.tiers[level]
        stored = kv.to(device=_torch_device(tier), dtype=torch.float16) if tier.bits == 16 else QuantizedKV.of(kv, tier.bits)
        entry.nbytes = stored.nbytes
        if entry.nbytes > tier.capacity_bytes:  # never fits here: try the next tier down
            if level + 1 < len(self.tiers):
                self._insert(level + 1, key, kv, entry)
            return
        if tier.device == "disk":
            entry.payload = None
            _write_entry(tier.path, key, stored)
        else:
            entry.payload = stored
        self._entries[level][key] = entry
        self._account(level, entry.nbytes, +1)
        self._evict_over_capacity(level, keep=key)

    def _evict_over_capacity(self, level: int, keep: str) -> None:
        tier = self.tiers[level]
        while self.stats[tier.name].bytes > tier.capacity_bytes:
            victims = [k for k in self._entries[level] if k != keep]
            if not victims:
                return
            victim = min(victims, key=lambda k: self._value(self._entries[level][k]))
            entry = self._entries[level][victim]
            kv = self._load(level, victim, entry)
            self._drop(level, victim)
            self.stats[tier.name].evictions += 1
            if kv is not None and level + 1 < len(self.tiers):
                self._insert(level + 1, victim, kv, entry)

    def _value(self, entry: _Entry) -> float:
        """What keeping an entry is worth per byte: recompute cost x (hits + 1), halving every
        RECENCY_SCALE accesses without a touch."""
        age = self._clock - entry.last_access
        return entry.cost * (entry.hits + 1) * 0.5 ** (age / RECENCY_SCALE) / max(entry.nbytes, 1)

    def _load(self, level: int, key: str, entry: _Entry) -> ChunkKV | None:
        tier = self.tiers[level]
        stored = _read_entry(tier.path, key) if tier.device == "disk" else entry.payload
        if stored is None:
            return None
        return stored.restore() if isinstance(stored, QuantizedKV) else stored

    def _drop(self, level: int, key: str) -> None:
        entry = self._entries[level].pop(key, None)
        if entry is None:
            return
        self._account(level, -entry.nbytes, -1)
        tier = self.tiers[level]
        if tier.device == "disk":
            (tier.path / f"{key}.kv").unlink(missing_ok=True)

    def _account(self, level: int, nbytes: int, entries: int) -> None:
        stats = self.stats[self.tiers[level].name]
        stats.bytes += nbytes
        stats.entries += entries


def _torch_device(tier: Tier) -> str:
    return tier.device if tier.device in ("cpu", "cuda") else "cpu"


def _write_entry(path: Path, key: str, stored) -> None:
    """One file: sha256 of the payload, a newline, then the payload (torch.save of the tensors)."""
    buf = io.BytesIO()
    if isinstance(stored, QuantizedKV):
        meta = {"bits": stored.bits, "shape": list(stored.shape), "start": stored.start}
        torch.save({"meta": json.dumps(meta), **stored.tensors()}, buf)
    else:
        torch.save({"meta": json.dumps({"bits": 16, "start": stored.start}), "keys": stored.keys.cpu(), "values": stored.values.cpu()}, buf)
    payload = buf.getvalue()
    tmp = path / f"{key}.kv.tmp"
    with open(tmp, "wb") as f:
        f.write(hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload)
    os.replace(tmp, path / f"{key}.kv")


def _read_entry(path: Path, key: str):
    try:
        data = (path / f"{key}.kv").read_bytes()
        digest, payload = data[:64], data[65:]
        if hashlib.sha256(payload).hexdigest().encode() != digest:
            return None
        stored = torch.load(io.BytesIO(payload), weights_only=True)
        meta = json.loads(stored.pop("meta"))
        if meta["bits"] == 16:
            return ChunkKV(stored["keys"], stored["values"], meta["start"])
        return QuantizedKV(meta["bits"], tuple(meta["shape"]), meta["start"], **stored)
    except (OSError, ValueError, KeyError, RuntimeError, EOFError):
        return None
