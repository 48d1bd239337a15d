"""The one place on-disk indexes read through: positioned reads (pread) that count bytes and
reads, so benchmarks can report I/O per query, and a page-cache drop for cold-cache runs."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from retriever.errors import ReadFailed

class PositionalReader:
    """Reads byte ranges of one file with `os.pread` (thread-safe: no shared file position)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._fd = os.open(self.path, os.O_RDONLY)
        self.size = os.fstat(self._fd).st_size
        self._lock = threading.Lock()
        self.bytes_read = 0
        self.reads = 0

    def read(self, offset: int, length: int) -> bytearray:
        """`length` bytes at `offset`, as `read_into` reads them."""
        data = bytearray(length)
        self.read_into([(offset, length)], memoryview(data))
        return data

    def read_into(self, ranges: list[tuple[int, int]], buffer: memoryview) -> None:
        """Byte ranges [(offset, length)] read one after another into `buffer` (as long as they
        are together): no intermediate bytes objects, the counters updated once."""
        position = 0
        for offset, length in ranges:
            try:
                got = os.preadv(self._fd, [buffer[position : position + length]], offset)
            except OSError as e:
                raise ReadFailed(
                    f"reading {length} bytes at {offset} of {self.path.name} failed: {e.strerror}"
                ) from None
            if got != length:
                raise ReadFailed(
                    f"reading {length} bytes at {offset} of {self.path.name} returned {got}: "
                    "the file is truncated"
                )
            position += length
        with self._lock:
            self.bytes_read += position
            self.reads += len(ranges)

    def counters(self) -> dict[str, int]:
        return {"bytes_read": self.bytes_read, "reads": self.reads}

    def reset_counters(self) -> None:
        with self._lock:
            self.bytes_read = self.reads = 0

    def drop_cache(self) -> None:
        """Ask the kernel to evict this file's pages (cold-cache measurements)."""
        os.posix_fadvise(self._fd, 0, 0, os.POSIX_FADV_DONTNEED)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __del__(self) -> None:
        self.close()
