"""Checking and normalizing float vectors in one compiled pass (numba): every query and every
written vector goes through it, where numpy would take five passes (and five calls, a few
microseconds each at batch 1). Its oracle is numpy (tests/test_kernels.py)."""

from __future__ import annotations

import functools

import numpy as np


def checked_rows(array: np.ndarray, normalize: bool) -> np.ndarray | None:
    """array [N, D] float32 C-contiguous -> the rows (divided by their L2 norms when `normalize`,
    a new array), or None when some row holds NaN or inf or (when `normalize`) is all zeros."""
    out = np.empty_like(array) if normalize else np.empty((0, 0), np.float32)  # `array` may be read-only
    if not _check()(array, out, normalize):
        return None
    return out if normalize else array


@functools.cache
def _check():
    """Compile on first use, so importing this module does no work (numba caches to disk)."""
    import numba

    # reassociated sums run on SIMD lanes; no other fast-math flag (NaN and inf must be seen)
    @numba.njit(cache=True, nogil=True, fastmath={"reassoc", "contract"})
    def check(array, out, normalize):
        for i in range(array.shape[0]):
            squared = 0.0  # float64: no float32 row overflows it
            for j in range(array.shape[1]):
                value = np.float64(array[i, j])
                squared += value * value
            if not squared < np.inf or (normalize and not squared > 0):  # NaN fails both
                return False
            if normalize:
                norm = np.sqrt(squared)  # float64 division, rounded once to float32
                for j in range(array.shape[1]):
                    out[i, j] = array[i, j] / norm
        return True

    return check
