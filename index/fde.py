"""MUVERA fixed dimensional encodings (Dhulipala et al., 2024): a point cloud -> one vector whose
inner products approximate Chamfer (MaxSim) similarity, so any dense index can find candidates.

Per repetition r: SimHash with `simhash_bits` Gaussian hyperplanes puts each token in one of
2^bits partitions (Gray-code order, as in the reference C++); tokens are projected to
`projection_dim` with a random +-1 matrix (AMS sketch; 0 keeps the full dimension); a query sums
the projected tokens of each partition, a document averages them, and a document's empty
partitions take the projected token nearest in Hamming distance (`fill_empty_partitions`).
Repetitions are concatenated; an optional Count-Sketch maps the result to `final_dim`.
All randomness derives from `seed`, so encodings are deterministic and reproducible.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class FdeConfig:
    repetitions: int = 20
    simhash_bits: int = 5
    projection_dim: int = 16  # 0: no projection (the token dimension)
    fill_empty_partitions: bool = True  # documents only
    final_dim: int = 0  # 0: no final Count-Sketch projection
    seed: int = 42

    def __post_init__(self) -> None:
        for key, low, high in (("repetitions", 1, 1024), ("simhash_bits", 0, 16), ("projection_dim", 0, 65536), ("final_dim", 0, 1 << 24)):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ValueError(f"fde {key} must be an integer from {low} to {high}, got {value!r}")

    def dimension(self, token_dim: int) -> int:
        """Length of the encoding for tokens of `token_dim` dimensions."""
        if self.final_dim:
            return self.final_dim
        return self.repetitions * (2 ** self.simhash_bits) * (self.projection_dim or token_dim)

    def to_dict(self) -> dict:
        return asdict(self)


class FdeEncoder:
    """Encodes batches of point clouds given as tokens [T, D] float32 with offsets [N + 1]."""

    def __init__(self, config: FdeConfig, token_dim: int) -> None:
        self.config = config
        self.token_dim = token_dim
        self.partitions = 2 ** config.simhash_bits
        self.width = config.projection_dim or token_dim
        self._hyperplanes, self._projections = [], []
        for r in range(config.repetitions):
            rng = np.random.default_rng([config.seed, r])
            self._hyperplanes.append(rng.standard_normal((token_dim, config.simhash_bits)).astype(np.float32))  # [D, bits]
            if config.projection_dim:
                signs = rng.choice(np.array([-1.0, 1.0], np.float32), size=(token_dim, config.projection_dim))
                self._projections.append(signs / np.float32(np.sqrt(config.projection_dim)))  # [D, d]
            else:
                self._projections.append(None)
        self._sketch = _count_sketch(config, config.repetitions * self.partitions * self.width) if config.final_dim else None
        # the bit pattern each partition stands for: Gray-code index -> the signs that produce it
        index = np.arange(self.partitions)
        self._partition_bits = (index ^ (index >> 1)).astype(np.int64)  # [P]

    @property
    def dim(self) -> int:
        return self.config.dimension(self.token_dim)

    def encode_queries(self, tokens: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """[T, D], offsets [N + 1] -> [N, dim]: per partition, the sum of projected tokens."""
        return self._encode(tokens, offsets, document=False)

    def encode_documents(self, tokens: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """[T, D], offsets [N + 1] -> [N, dim]: per partition, the mean of projected tokens."""
        return self._encode(tokens, offsets, document=True)

    def _encode(self, tokens: np.ndarray, offsets: np.ndarray, document: bool) -> np.ndarray:
        tokens = np.ascontiguousarray(tokens, dtype=np.float32)
        count = len(offsets) - 1
        lengths = np.diff(offsets)
        owner = np.repeat(np.arange(count), lengths)  # [T] which cloud each token belongs to
        parts = []
        for hyperplanes, projection in zip(self._hyperplanes, self._projections):
            codes = _codes(tokens @ hyperplanes)  # [T] bit patterns, first hyperplane most significant
            partition = _gray_index(codes, self.config.simhash_bits)  # [T]
            projected = tokens @ projection if projection is not None else tokens  # [T, d]
            keys = owner * self.partitions + partition
            sums = _sum_rows(keys, projected, count * self.partitions)
            if document:
                sizes = np.bincount(keys, minlength=count * self.partitions).astype(np.float32)
                sums /= np.maximum(sizes, 1)[:, None]
                if self.config.fill_empty_partitions and self.config.simhash_bits:
                    self._fill(sums, sizes, codes, projected, offsets)
            parts.append(sums.reshape(count, self.partitions * self.width))
        out = np.concatenate(parts, axis=1)  # [N, R * P * d]
        return np.asarray(out @ self._sketch, dtype=np.float32) if self._sketch is not None else out

    def _fill(self, sums, sizes, codes, projected, offsets) -> None:
        """Empty partitions of each cloud take its projected token nearest in Hamming distance
        (the first such token on ties)."""
        empty = (sizes == 0).reshape(-1, self.partitions)  # [N, P]
        for n in np.flatnonzero(empty.any(axis=1) & (np.diff(offsets) > 0)):
            lo, hi = offsets[n], offsets[n + 1]
            missing = np.flatnonzero(empty[n])  # [m]
            distance = _popcount(codes[lo:hi, None] ^ self._partition_bits[None, missing])  # [t, m]
            sums[n * self.partitions + missing] = projected[lo + np.argmin(distance, axis=0)]


def _sum_rows(keys: np.ndarray, rows: np.ndarray, size: int) -> np.ndarray:
    """[size, d] with out[i] = sum of rows whose key is i, as one sparse x dense product."""
    import scipy.sparse

    selector = scipy.sparse.csr_matrix((np.ones(len(keys), np.float32), (keys, np.arange(len(keys)))), shape=(size, len(keys)))
    return np.asarray(selector @ rows, dtype=np.float32)


def _codes(sketch: np.ndarray) -> np.ndarray:
    """[T, bits] projections -> [T] int64 with bit (bits-1-i) set when projection i is positive."""
    bits = sketch.shape[1]
    weights = (1 << np.arange(bits - 1, -1, -1)).astype(np.int64)
    return (sketch > 0).astype(np.int64) @ weights if bits else np.zeros(len(sketch), np.int64)


def _gray_index(codes: np.ndarray, bits: int) -> np.ndarray:
    """Partition index built bit by bit as the reference does: index = 2 index + (bit xor (index & 1))."""
    index = np.zeros_like(codes)
    for i in range(bits - 1, -1, -1):
        bit = (codes >> i) & 1
        index = (index << 1) + (bit ^ (index & 1))
    return index


def _popcount(x: np.ndarray) -> np.ndarray:
    return np.bitwise_count(x.astype(np.uint64)).astype(np.int64)


def _count_sketch(config: FdeConfig, in_dim: int):
    """Count-Sketch [in_dim, final_dim]: coordinate i adds sign(i) x value into bucket(i)."""
    import scipy.sparse

    rng = np.random.default_rng([config.seed, 1 << 20])
    buckets = rng.integers(0, config.final_dim, size=in_dim)
    signs = rng.choice(np.array([-1.0, 1.0], np.float32), size=in_dim)
    return scipy.sparse.csr_matrix((signs, (np.arange(in_dim), buckets)), shape=(in_dim, config.final_dim))
