"""Slow, obviously correct numpy oracles. Tests compare every fast path against these."""

from __future__ import annotations

import numpy as np


def pairwise_scores(queries: np.ndarray, vectors: np.ndarray, metric: str) -> np.ndarray:
    """[B, D] x [N, D] -> [B, N]; inner product, or negated squared L2 distance (higher is better)."""
    q = queries.astype(np.float64)
    v = vectors.astype(np.float64)
    if metric == "ip":
        return q @ v.T
    return -(((q[:, None, :] - v[None, :, :]) ** 2).sum(-1))


def exact_search(
    queries: np.ndarray, vectors: np.ndarray, k: int, metric: str = "ip", allowed: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force top-k: ([B, k] scores, [B, k] row ids), -1 / -inf padded when fewer rows qualify."""
    scores = pairwise_scores(queries, vectors, metric)
    if allowed is not None:
        scores[:, ~allowed] = -np.inf
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    top = np.take_along_axis(scores, order, axis=1)
    order = np.where(np.isfinite(top), order, -1)
    out_scores = np.full((len(queries), k), -np.inf)
    out_ids = np.full((len(queries), k), -1, dtype=np.int64)
    out_scores[:, : top.shape[1]] = top
    out_ids[:, : order.shape[1]] = order
    return out_scores, out_ids


def rescore(queries: np.ndarray, vectors: np.ndarray, ids: np.ndarray, metric: str) -> np.ndarray:
    """Exact score of each candidate row, one at a time: [B, C] (-inf where the id is -1)."""
    out = np.full(ids.shape, -np.inf)
    for b in range(ids.shape[0]):
        for c in range(ids.shape[1]):
            row = ids[b, c]
            if row >= 0:
                out[b, c] = pairwise_scores(queries[b : b + 1], vectors[row : row + 1], metric)[0, 0]
    return out


def sparse_scores(documents: list[dict[int, float]], query: dict[int, float]) -> np.ndarray:
    """[N] dot product of a sparse query with each sparse document, one document at a time."""
    return np.array([sum(w * doc.get(t, 0.0) for t, w in query.items()) for doc in documents], dtype=np.float64)


def bm25_scores(documents: list[list[str]], query: list[str], variant: str, k1: float, b: float, delta: float) -> np.ndarray:
    """[N] BM25 of each tokenized document for a tokenized query, straight from the textbook formulas
    (Kamphuis et al., 2020), summed over the query's terms with repeats."""
    import math

    n = len(documents)
    avg_len = sum(len(d) for d in documents) / n
    out = np.zeros(n)
    for i, doc in enumerate(documents):
        norm = 1 - b + b * len(doc) / avg_len
        for term in query:
            tf = doc.count(term)
            if tf == 0:
                continue
            df = sum(term in d for d in documents)
            if variant == "lucene":
                score = math.log(1 + (n - df + 0.5) / (df + 0.5)) * tf / (tf + k1 * norm)
            elif variant == "robertson":
                score = math.log((n - df + 0.5) / (df + 0.5)) * tf * (k1 + 1) / (tf + k1 * norm)
            elif variant == "atire":
                score = math.log(n / df) * tf * (k1 + 1) / (tf + k1 * norm)
            elif variant == "bm25l":
                c = tf / norm
                score = math.log((n + 1) / (df + 0.5)) * (k1 + 1) * (c + delta) / (k1 + c + delta)
            elif variant == "bm25+":
                score = math.log((n + 1) / df) * ((k1 + 1) * tf / (k1 * norm + tf) + delta)
            else:
                raise ValueError(variant)
            out[i] += score
    return out


def maxsim_scores(query: np.ndarray, documents: list[np.ndarray]) -> np.ndarray:
    """[N] Chamfer similarity of one query [q, D] with each document [t, D]: the sum over query
    tokens of the best inner product with any document token (0 for a document with no tokens)."""
    return np.array([float((query.astype(np.float64) @ d.astype(np.float64).T).max(axis=1).sum()) if len(d) else 0.0
                     for d in documents])


def xtr_scores(similarities: np.ndarray, rows: np.ndarray) -> dict[int, float]:
    """XTR's score of every document retrieved for one query, one pair at a time: for each query
    token, the best similarity among the retrieved tokens of that document, else the smallest
    similarity the query token retrieved (nothing if it retrieved none); summed over query tokens."""
    documents = sorted({int(r) for r in rows.ravel() if r >= 0})
    out = {}
    for d in documents:
        total = 0.0
        for sims, owners in zip(similarities.tolist(), rows.tolist()):
            retrieved = [s for s, r in zip(sims, owners) if r >= 0]
            mine = [s for s, r in zip(sims, owners) if r == d]
            total += max(mine) if mine else (min(retrieved) if retrieved else 0.0)
        out[d] = total
    return out


def fde_reference(points: np.ndarray, hyperplanes: list[np.ndarray], projections: list, document: bool,
                  fill_empty: bool, sketch=None) -> np.ndarray:
    """One point cloud [n, D] -> its fixed dimensional encoding, token by token as in the MUVERA
    reference C++ (graph-mining sketching/point_cloud/fixed_dimensional_encoding.cc)."""
    parts = []
    for planes, projection in zip(hyperplanes, projections):
        bits = planes.shape[1]
        partitions = 2 ** bits
        width = projection.shape[1] if projection is not None else points.shape[1]
        sums = np.zeros((partitions, width))
        counts = np.zeros(partitions)
        signs = [[float(x) > 0 for x in p @ planes] for p in points]
        projected = [p @ projection if projection is not None else p for p in points]
        for point_signs, vector in zip(signs, projected):
            index = 0
            for bit in point_signs:  # AppendToGrayCode
                index = (index << 1) + (int(bit) ^ (index & 1))
            sums[index] += vector
            counts[index] += 1
        if document:
            for i in range(partitions):
                if counts[i]:
                    sums[i] /= counts[i]
                elif fill_empty and bits and len(points):
                    best, best_distance = 0, None
                    for j, point_signs in enumerate(signs):  # DistanceToSimHashPartition
                        pattern, distance = i ^ (i >> 1), 0
                        for bit in reversed(point_signs):
                            distance += int(bit) != (pattern & 1)
                            pattern >>= 1
                        if best_distance is None or distance < best_distance:
                            best, best_distance = j, distance
                    sums[i] = projected[best]
        parts.append(sums.reshape(-1))
    out = np.concatenate(parts)
    if sketch is not None:
        final = np.zeros(sketch.shape[1])
        coo = sketch.tocoo()
        for i, bucket, sign in zip(coo.row, coo.col, coo.data):
            final[bucket] += sign * out[i]
        out = final
    return out


def code_scores(queries: np.ndarray, codes: np.ndarray, decoders: np.ndarray, output_mean: np.ndarray) -> np.ndarray:
    """Inner products of float queries [B, dim] with decoded codes, one bit at a time: a code is
    `bits` steps of sign bits (bit set = +1), decoded as output_mean + sum_i decoders[i] @ b_i.
    codes [N, bits * code_dim / 8] uint8, decoders [bits, dim, code_dim] -> [B, N] float64."""
    bits, dim, code_dim = decoders.shape
    out = np.zeros((len(queries), len(codes)))
    for n, code in enumerate(codes):
        decoded = output_mean.astype(np.float64).copy()
        for i in range(bits):
            for j in range(code_dim):
                byte = int(code[(i * code_dim + j) // 8])
                sign = 1.0 if (byte >> (j % 8)) & 1 else -1.0
                decoded += sign * decoders[i, :, j]
        out[:, n] = queries.astype(np.float64) @ decoded
    return out


def hamming_distances(queries: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Bits that differ between packed codes: [B, P] x [N, P] uint8 -> [B, N] int."""
    return np.array([[sum(bin(int(a) ^ int(b)).count("1") for a, b in zip(q, c)) for c in codes] for q in queries])


def bitplane_scores(weights: np.ndarray, codes: np.ndarray, planes: int) -> np.ndarray:
    """What the bit-plane scan ranks by, bit by bit: each weight's magnitude rounded to `planes`
    bits of the query's largest, summed over the code's bits that agree with the weight's sign
    (a 1 for a positive weight, a 0 for a negative one). [B, L] x [N, L / 8] -> [B, N] int."""
    out = np.zeros((len(weights), len(codes)), dtype=np.int64)
    for b, w in enumerate(np.asarray(weights, dtype=np.float32)):
        top = np.abs(w).max()
        levels = np.rint(np.abs(w) / top * np.float32(2**planes - 1)) if top > 0 else np.zeros_like(w)
        for n, code in enumerate(codes):
            for t, weight in enumerate(w.tolist()):
                bit = (int(code[t // 8]) >> (t % 8)) & 1
                if bit == (weight >= 0):
                    out[b, n] += int(levels[t])
    return out
