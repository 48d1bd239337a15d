"""SPANN's optional compressed mode: a PQ code per posting record kept in memory, beside the
posting file. A query scores the records of its chosen lists by their codes (asymmetric distance,
no disk read), then reads only the best `rescore` records from disk and scores them exactly.
The codes are aligned with the posting file (code i belongs to record i), so the posting file's
format does not change and replicas share a code."""

from __future__ import annotations

import faiss
import numpy as np

from retriever.errors import InvalidConfig

from .diskio import PositionalReader

ENCODE_BLOCK = 65_536  # posting records read and encoded at a time


def train_pq(sample: np.ndarray, parts: int, seed: int) -> np.ndarray:
    """-> PQ centroids [parts, 256, dim / parts] float32, trained on `sample` [S, D]."""
    dim = sample.shape[1]
    if parts < 1 or dim % parts:
        raise InvalidConfig(f"SPANN PQ{parts}: the dimension {dim} must split into {parts} equal parts")
    pq = faiss.ProductQuantizer(dim, parts, 8)
    pq.cp.seed = seed
    pq.train(np.ascontiguousarray(sample, dtype=np.float32))
    return faiss.vector_to_array(pq.centroids).reshape(parts, 256, dim // parts)


def _quantizer(centroids: np.ndarray) -> faiss.ProductQuantizer:
    parts, _, sub = centroids.shape
    pq = faiss.ProductQuantizer(parts * sub, parts, 8)
    faiss.copy_array_to_vector(np.ascontiguousarray(centroids, dtype=np.float32).ravel(), pq.centroids)
    return pq


def encode_postings(reader: PositionalReader, records: int, dtype: np.dtype, centroids: np.ndarray) -> np.ndarray:
    """Codes [records, parts] uint8 of every posting record, read from the posting file in blocks."""
    pq = _quantizer(centroids)
    codes = np.empty((records, centroids.shape[0]), dtype=np.uint8)
    for first in range(0, records, ENCODE_BLOCK):
        count = min(ENCODE_BLOCK, records - first)
        block = np.frombuffer(reader.read(first * dtype.itemsize, count * dtype.itemsize), dtype=dtype)
        codes[first : first + count] = pq.compute_codes(np.ascontiguousarray(block["vector"]))
    return codes


def lookup_table(query: np.ndarray, centroids: np.ndarray, metric: str) -> np.ndarray:
    """query [D] -> [parts, 256]: each part's score for each code value (higher is better):
    the inner product, or the negated squared distance to the sub-centroid."""
    parts, _, sub = centroids.shape
    pieces = query.reshape(parts, 1, sub)
    dots = np.einsum("pkd,pd->pk", centroids, pieces[:, 0])
    if metric == "ip":
        return dots
    return 2 * dots - (centroids**2).sum(-1) - (pieces**2).sum(-1)
