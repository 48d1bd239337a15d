"""Token vectors of a multi-vector field: one contiguous array per segment with per-document
offsets, stored as float16 or int8 with one scale per vector, opened with mmap."""

from __future__ import annotations

import numpy as np

DTYPES = ("float16", "int8")


def compress(tokens: np.ndarray, dtype: str) -> tuple[np.ndarray, np.ndarray | None]:
    """[T, D] float32 -> (codes [T, D], scales [T] float32 for int8, else None).
    int8: each vector scaled so its largest magnitude maps to 127."""
    if dtype == "float16":
        return tokens.astype(np.float16), None
    scales = np.abs(tokens).max(axis=1) / 127.0
    scales = np.where(scales > 0, scales, 1.0).astype(np.float32)
    return np.rint(tokens / scales[:, None]).astype(np.int8), scales


def decompress(codes: np.ndarray, scales: np.ndarray | None) -> np.ndarray:
    """codes [T, D] (float16 or int8 with scales [T]) -> float32 [T, D]. float16 converts through
    torch, which uses the CPU's conversion instructions (numpy's astype is ~2x slower); torch takes
    the array in place only when it is writable (a copy-on-write map is), so others are copied."""
    if scales is not None:
        return np.asarray(codes, dtype=np.float32) * np.asarray(scales, dtype=np.float32)[:, None]
    import torch

    array = np.asarray(codes)
    return torch.from_numpy(array if array.flags.writeable else array.copy()).float().numpy()


class TokenStore:
    """Documents' tokens across append-only segments; document `row` is global.

    segments: [(codes [T_s, D], scales [T_s] or None, offsets [n_s + 1] int64)] in row order.
    """

    def __init__(self, segments: list[tuple[np.ndarray, np.ndarray | None, np.ndarray]], dim: int) -> None:
        self.segments = segments
        self.dim = dim
        sizes = [len(offsets) - 1 for _, _, offsets in segments]
        self.starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)  # [S + 1] first row of each segment

    def __len__(self) -> int:
        return int(self.starts[-1])

    @property
    def nbytes(self) -> int:
        return sum(c.nbytes + (s.nbytes if s is not None else 0) + o.nbytes for c, s, o in self.segments)

    def _locate(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """rows [C] -> (segment [C], first token [C] and token count [C] within that segment)."""
        rows = np.asarray(rows, dtype=np.int64)
        segment = np.searchsorted(self.starts, rows, side="right") - 1
        first, count = np.zeros(len(rows), np.int64), np.zeros(len(rows), np.int64)
        for s, (_, _, offsets) in enumerate(self.segments):
            mine = segment == s
            local = rows[mine] - self.starts[s]
            first[mine] = offsets[local]
            count[mine] = offsets[local + 1] - offsets[local]
        return segment, first, count

    def lengths(self, rows: np.ndarray) -> np.ndarray:
        """[C] token counts of these documents."""
        return self._locate(rows)[2]

    def tiles(self, max_tokens: int):
        """Every document in row order, in runs of whole documents of at most `max_tokens` tokens (a
        longer document alone) -> (first row, tokens [t, D] float32 torch tensor, offsets [n + 1]).
        Each run is read from the stored array as it lies (no gather) and decompressed once."""
        import torch

        for (codes, scales, offsets), base in zip(self.segments, self.starts.tolist()):
            first, count = 0, len(offsets) - 1
            while first < count:
                end = int(np.searchsorted(offsets, offsets[first] + max_tokens, side="right")) - 1
                end = min(count, max(end, first + 1))
                lo, hi = int(offsets[first]), int(offsets[end])
                tile = decompress(codes[lo:hi], scales[lo:hi] if scales is not None else None)
                yield base + first, torch.from_numpy(tile), np.asarray(offsets[first : end + 1]) - lo
                first = end

    def gather(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """rows [C] -> (tokens [T, D] float32 of those documents in order, offsets [C + 1])."""
        segment, first, lengths = self._locate(rows)
        out_offsets = np.concatenate([[0], np.cumsum(lengths)])
        tokens = np.empty((int(out_offsets[-1]), self.dim), dtype=np.float32)
        for s, (codes, scales, _) in enumerate(self.segments):
            mine = np.flatnonzero(segment == s)
            if not len(mine):
                continue
            n = lengths[mine]
            within = np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n)  # position inside each document
            source = np.repeat(first[mine], n) + within
            target = np.repeat(out_offsets[mine], n) + within
            tokens[target] = decompress(codes[source], scales[source] if scales is not None else None)
        return tokens, out_offsets
