"""BM25 variants as pure functions. Each score splits into idf(term) x tf_part(tf, doc length),
so the tf part is computed once per posting and the idf once per term (Kamphuis et al., 2020,
"Which BM25 Do You Mean? A Large-Scale Reproducibility Study of Scoring Variants")."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np


def _length_norm(doc_len: np.ndarray, avg_len: float, b: float) -> np.ndarray:
    return 1.0 - b + b * doc_len / max(avg_len, 1e-9)


def idf_lucene(df: np.ndarray, n: int) -> np.ndarray:
    """log(1 + (N - df + 0.5) / (df + 0.5)): never negative (Lucene >= 8)."""
    return np.log1p((n - df + 0.5) / (df + 0.5))


def idf_robertson(df: np.ndarray, n: int) -> np.ndarray:
    """log((N - df + 0.5) / (df + 0.5)) (Robertson et al., 1994); negative for terms in over half the docs."""
    return np.log((n - df + 0.5) / (df + 0.5))


def idf_atire(df: np.ndarray, n: int) -> np.ndarray:
    """log(N / df) (Trotman et al., 2014)."""
    return np.log(n / np.maximum(df, 1))


def idf_bm25l(df: np.ndarray, n: int) -> np.ndarray:
    """log((N + 1) / (df + 0.5)) (Lv and Zhai, 2011a)."""
    return np.log((n + 1) / (df + 0.5))


def idf_bm25plus(df: np.ndarray, n: int) -> np.ndarray:
    """log((N + 1) / df) (Lv and Zhai, 2011b)."""
    return np.log((n + 1) / np.maximum(df, 1))


def tf_lucene(tf, doc_len, avg_len, k1, b, delta):
    """tf / (tf + k1 (1 - b + b L/avgL)): Lucene drops the constant (k1 + 1) factor."""
    return tf / (tf + k1 * _length_norm(doc_len, avg_len, b))


def tf_robertson(tf, doc_len, avg_len, k1, b, delta):
    """tf (k1 + 1) / (tf + k1 (1 - b + b L/avgL)); shared by Robertson and ATIRE."""
    return tf * (k1 + 1) / (tf + k1 * _length_norm(doc_len, avg_len, b))


def tf_bm25l(tf, doc_len, avg_len, k1, b, delta):
    """(k1 + 1)(c + delta) / (k1 + c + delta) with c = tf / (1 - b + b L/avgL)."""
    c = tf / _length_norm(doc_len, avg_len, b)
    return (k1 + 1) * (c + delta) / (k1 + c + delta)


def tf_bm25plus(tf, doc_len, avg_len, k1, b, delta):
    """tf (k1 + 1) / (tf + k1 (1 - b + b L/avgL)) + delta."""
    return tf_robertson(tf, doc_len, avg_len, k1, b, delta) + delta


@dataclass(frozen=True)
class Variant:
    idf: Callable[[np.ndarray, int], np.ndarray]
    tf: Callable[..., np.ndarray]
    delta: float  # default delta (BM25L / BM25+ only)


VARIANTS = {
    "lucene": Variant(idf_lucene, tf_lucene, 0.0),
    "robertson": Variant(idf_robertson, tf_robertson, 0.0),
    "atire": Variant(idf_atire, tf_robertson, 0.0),
    "bm25l": Variant(idf_bm25l, tf_bm25l, 0.5),
    "bm25+": Variant(idf_bm25plus, tf_bm25plus, 1.0),
}
