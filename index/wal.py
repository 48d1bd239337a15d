"""The write-ahead log: a small write is acknowledged once its record is fsynced here, and becomes
part of a segment at the next flush.

A record is a header (magic, body length, sequence number, crc32 of the sequence number and the
body) followed by the body. Sequence numbers grow by one per record and keep growing across
flushes; the manifest's `log_applied` names the last record folded into segments, and a reader
skips records at or below it (a flush empties the log after publishing, so few are left).

A record cut short by a crash, or one whose checksum fails, ends the log: readers ignore it and
everything after it, and the next writer cuts it off before appending (`Log.cut_torn_tail`).
Appends happen under the collection's writer lock; `sync` may run outside it, and concurrent
callers share one fsync (group commit).
"""

from __future__ import annotations

import struct
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path

from . import disk

LOG = "write-ahead.log"
MAGIC = b"RWAL"
_HEADER = struct.Struct("<4sIQI")  # magic, body length, sequence number, crc32
MAX_BODY = 1 << 31  # a length past this is a torn or foreign header, not a record


@dataclass(frozen=True)
class Record:
    seq: int
    body: bytes
    end: int  # byte offset just past this record


def read(directory: Path, offset: int = 0) -> tuple[list[Record], int, int]:
    """The whole records from byte `offset` on -> (records, the offset just past the last good one,
    the file's size). A size past the good end means a torn or damaged tail."""
    try:
        with open(Path(directory) / LOG, "rb") as handle:
            handle.seek(offset)
            data = handle.read()
    except FileNotFoundError:
        return [], 0, 0
    records, at = [], 0
    while at + _HEADER.size <= len(data):
        magic, length, seq, crc = _HEADER.unpack_from(data, at)
        start, end = at + _HEADER.size, at + _HEADER.size + length
        if magic != MAGIC or length > MAX_BODY or end > len(data):
            break
        body = data[start:end]
        if zlib.crc32(body, zlib.crc32(struct.pack("<Q", seq))) != crc:
            break
        at = end
        records.append(Record(seq, body, offset + at))
    return records, offset + at, offset + len(data)


def encode(seq: int, body: bytes) -> bytes:
    crc = zlib.crc32(body, zlib.crc32(struct.pack("<Q", seq)))
    return _HEADER.pack(MAGIC, len(body), seq, crc) + body


class Log:
    """The log file of one collection directory, as one process writes it."""

    def __init__(self, directory: Path) -> None:
        self.path = Path(directory) / LOG
        self._synced = 0  # bytes known durable
        self._sync_lock = threading.Lock()

    def append(self, seq: int, body: bytes, at: int) -> int:
        """Add record `seq` at byte `at` (the current end) -> the new end. Not yet durable: see
        `sync`. On failure the file is cut back to `at` where it can be (else the next writer's
        `cut_torn_tail` does it)."""
        data = encode(seq, body)
        try:
            disk.append(self.path, data)
        except OSError:
            try:
                disk.truncate(self.path, at)
            except OSError:
                pass
            raise
        return at + len(data)

    def sync(self, upto: int) -> None:
        """Make the log durable up to byte `upto`; callers waiting meanwhile share this fsync."""
        with self._sync_lock:
            if self._synced >= upto:
                return
            size = self.path.stat().st_size
            disk.fsync_file(self.path)
            self._synced = max(self._synced, size)

    def cut(self, size: int) -> None:
        """Cut the log to `size` bytes: 0 after a flush, or the good end before a torn tail."""
        disk.truncate(self.path, size)
        with self._sync_lock:
            self._synced = min(self._synced, size)

    def cut_torn_tail(self, good_end: int, size: int) -> None:
        if size > good_end:
            self.cut(good_end)
