"""Gathering strings out of an Arrow string column's buffers in one compiled pass (numba): the ids
of a batch's hits, where Arrow's `take` allocates and copies through a generic kernel. The
oracle is `pyarrow`'s own `take` (tests/test_segments.py)."""

from __future__ import annotations

import functools

import numpy as np


def gather(offsets: np.ndarray, data: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """An Arrow string array's offsets [n + 1] (int32 or int64) and bytes [uint8], rows [R] int64
    -> (the strings' offsets [R + 1] int64, their bytes back to back): a large_string array's
    buffers, so `pa.LargeStringArray.from_buffers` makes the strings without copying again."""
    return _gather()(offsets, data, rows)


@functools.cache
def _gather():
    """Compile on first use, so importing this module does no work (numba caches to disk)."""
    import numba

    @numba.njit(cache=True, nogil=True)
    def gather_rows(offsets, data, rows):
        starts = np.empty(len(rows) + 1, np.int64)
        starts[0] = 0
        first = np.empty(len(rows), np.int64)
        for i in range(len(rows)):  # every row's offsets first: the cache misses overlap
            first[i] = offsets[rows[i]]
            starts[i + 1] = starts[i] + offsets[rows[i] + 1] - first[i]
        out = np.empty(starts[-1], np.uint8)
        for i in range(len(rows)):
            out[starts[i] : starts[i + 1]] = data[first[i] : first[i] + starts[i + 1] - starts[i]]
        return starts, out

    return gather_rows
