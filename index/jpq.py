"""Ranking-trained product quantization, after JPQ ("Jointly Optimizing Query Encoder and Product
Quantization to Improve Retrieval Performance", Zhan et al. 2021): PQ centroids that start as
faiss's k-means ones and are then trained so that labelled queries rank their relevant documents
first, scoring every document through its own codes (documents keep their codes, as JPQ's do).
k-means minimizes reconstruction error, which spends the codebooks' few bits evenly; the ranking
loss spends them where they tell relevant documents from the ones that crowd them out.

The trained centroids go back into the faiss index, so search is unchanged. Training holds out a
fifth of the queries; the epoch kept is the one whose held-out queries rank their relevant
documents best (mean reciprocal rank among the index's top candidates, searched as each epoch
leaves the index), k-means's own unless an epoch beats them. What "held out" means is the
RankingSet's `hold_out`: "documents" (the default) trains on no query that shares a relevant
document with the held-out ones, so the kept centroids must help queries about documents never
judged; "queries" holds out queries alone, rewarding what a small labelled set invites: codes of
the judged documents pulled toward queries, which lifts those documents, right where the same
documents are asked about again (a fixed corpus with recurring questions), wrong elsewhere.
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass

import faiss
import numpy as np

from retriever.errors import InvalidRequest

NEGATIVES = 100  # a query's hardest negatives: the index's top candidates that are not relevant
SCALE = 20.0  # inner products of unit vectors are small: sharpen them for the softmax
HELD_OUT = 0.2  # the queries that judge whether training helped
ENCODE_BLOCK = 16_384  # vectors assigned at once: [block, ksub] distances per sub-space
HOLD_OUTS = ("documents", "queries")


@dataclass(frozen=True)
class RankingSet:
    """Labelled queries as vectors: queries [Q, D], the relevant documents' vectors positives [P, D]
    and the query each belongs to, owner [P] (documents are kept as vectors, not rows, so every
    segment the field builds later can train on them, wherever the documents went)."""

    queries: np.ndarray
    positives: np.ndarray
    owner: np.ndarray
    hold_out: str = "documents"  # one of HOLD_OUTS: what the held-out queries keep from training

    def __post_init__(self) -> None:
        if self.hold_out not in HOLD_OUTS:
            raise InvalidRequest(f"hold_out must be one of {HOLD_OUTS}, got {self.hold_out!r}")

    def to_bytes(self) -> bytes:
        out = io.BytesIO()
        np.savez(out, queries=self.queries, positives=self.positives, owner=self.owner,
                 hold_out=np.array(self.hold_out))
        return out.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> "RankingSet":
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            return cls(z["queries"].astype(np.float32), z["positives"].astype(np.float32),
                       z["owner"].astype(np.int64), str(z["hold_out"]))


@dataclass(frozen=True)
class Report:
    """What one training did: the held-out queries' mean reciprocal rank with k-means's centroids
    and with the kept ones, after each epoch, the training loss of each epoch, the epoch kept
    (0: k-means's centroids) and the seconds it took."""

    mrr_before: float
    mrr_after: float
    held_out_mrr: list[float]
    losses: list[float]
    epoch: int
    seconds: float


def supports(index: faiss.Index) -> bool:
    """Whether `index` has PQ centroids this module can train."""
    try:
        product_quantizer(index)
    except InvalidRequest:
        return False
    return True


def product_quantizer(index: faiss.Index):
    """(the IVF index or None, the ProductQuantizer) of a PQ-family index; InvalidRequest otherwise."""
    top = faiss.downcast_index(index)
    if isinstance(top, faiss.IndexPreTransform):
        raise InvalidRequest("ranking-trained PQ does not support pre-transformed indexes (OPQ, PCA)")
    ivf = faiss.try_extract_index_ivf(index)
    owner = faiss.downcast_index(ivf) if ivf is not None else top
    pq = getattr(owner, "pq", None)
    if pq is None:
        raise InvalidRequest(f"ranking-trained PQ needs a PQ index (PQ, IVF..,PQ.., ..x4fs), not a "
                             f"{type(owner).__name__}")
    return (owner if ivf is not None else None), pq


class PqScorer:
    """Documents' scores through their PQ codes: <q, coarse centroid> (IVF with residuals) plus
    the sum over sub-spaces of <q_m, centroid of the code>, for trainable centroids."""

    def __init__(self, index: faiss.Index) -> None:
        import torch

        self.ivf, self.pq = product_quantizer(index)
        pq = self.pq
        self.M, self.ksub, self.dsub = int(pq.M), int(pq.ksub), int(pq.dsub)
        centroids = faiss.vector_to_array(pq.centroids).reshape(self.M, self.ksub, self.dsub)
        self.centroids = torch.nn.Parameter(torch.from_numpy(centroids.copy()))
        residual = self.ivf is not None and bool(self.ivf.by_residual)
        # IVF with residuals adds <q, the list's centroid> (a few thousand rows: kept whole)
        self.coarse = (
            torch.from_numpy(self.ivf.quantizer.reconstruct_n(0, self.ivf.nlist)) if residual else None
        )

    def encode(self, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """vectors [N, D] -> (codes [N, M] (uint8 for 8-bit codes), IVF list [N] int64 or zeros),
        as the index encoded them when they were added (nearest centroid per sub-space, in L2, of
        the residual)."""
        codes = np.empty((len(vectors), self.M), np.uint8 if self.ksub <= 256 else np.int32)
        lists = np.zeros(len(vectors), np.int64)
        centroids = self.centroids.detach().numpy()
        squares = (centroids**2).sum(-1)  # [M, ksub]
        for lo in range(0, len(vectors), ENCODE_BLOCK):
            x = np.ascontiguousarray(vectors[lo : lo + ENCODE_BLOCK], dtype=np.float32)
            if self.coarse is not None:
                _, found = self.ivf.quantizer.search(x, 1)
                lists[lo : lo + len(x)] = found.ravel()
                x = x - self.coarse.numpy()[found.ravel()]
            parts = x.reshape(len(x), self.M, self.dsub)
            for m in range(self.M):  # |x - c|^2 = |x|^2 - 2 x.c + |c|^2: |x|^2 picks no centroid
                codes[lo : lo + len(x), m] = (squares[m] - 2 * parts[:, m] @ centroids[m].T).argmin(1)
        return codes, lists

    def scores(self, queries, codes, lists):
        """queries [B, D], codes [B, C, M] and IVF lists [B, C] (torch) -> scores [B, C]."""
        import torch

        q = queries.reshape(len(queries), self.M, self.dsub)
        tables = torch.einsum("bmd,mkd->bmk", q, self.centroids)  # [B, M, ksub]
        picked = torch.gather(tables, 2, codes.long().permute(0, 2, 1))  # [B, M, C]
        if self.coarse is None:
            return picked.sum(1)
        return picked.sum(1) + torch.einsum("bd,bcd->bc", queries, self.coarse[lists])

    def write_back(self) -> None:
        """The trained centroids into the faiss index (its searches read them from here on)."""
        faiss.copy_array_to_vector(self.centroids.detach().numpy().ravel().astype(np.float32),
                                   self.pq.centroids)
        if self.pq.transposed_centroids.size():  # a copy faiss keeps for its fast paths
            self.pq.sync_transposed_centroids()


def train(index, vectors: np.ndarray, ranking: RankingSet, epochs: int = 20, lr: float = 5e-4,
          seed: int = 0) -> Report:
    """Train the PQ centroids of `index` (a FaissIndex over `vectors` [N, D], added in order) on
    `ranking`; the index takes the centroids of the epoch that ranks the held-out queries best,
    k-means's unless one beats them."""
    import torch

    start = time.perf_counter()
    shuffle = np.random.default_rng(seed)  # its own: a merge thread must not reseed torch's global one
    scorer = PqScorer(index.cpu_index)
    doc_codes, doc_lists = scorer.encode(vectors)
    pos_codes, pos_lists = scorer.encode(ranking.positives)
    held, trained = _split(ranking, seed)
    negatives, ranks = _searched(index, vectors, ranking)  # [Q, NEGATIVES] rows, [Q] reciprocal ranks
    held_out = [float(ranks[held].mean())]
    best = scorer.centroids.detach().clone()
    optimizer = torch.optim.Adam([scorer.centroids], lr=lr)
    losses = []
    for _ in range(epochs):
        batch = (doc_codes, doc_lists, pos_codes, pos_lists, negatives)
        losses.append(_epoch(scorer, optimizer, ranking, trained, shuffle, *batch))
        scorer.write_back()  # the index searches with this epoch's centroids: what it ranks first
        negatives, ranks = _searched(index, vectors, ranking)  # ... is the next epoch's negatives
        held_out.append(float(ranks[held].mean()))
        if held_out[-1] > max(held_out[:-1]):
            best = scorer.centroids.detach().clone()
    epoch = int(np.argmax(held_out))  # the first of equals: k-means's when nothing beats it
    scorer.centroids.data.copy_(best)
    scorer.write_back()
    return Report(round(held_out[0], 4), round(held_out[epoch], 4), [round(x, 4) for x in held_out],
                  [round(x, 4) for x in losses], epoch, round(time.perf_counter() - start, 2))


def _split(ranking: RankingSet, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(held-out queries, training queries): a fifth held out at random; the rest train, less
    (hold_out "documents") those sharing a relevant document (found by its vector) with them."""
    order = np.random.default_rng(seed).permutation(len(ranking.queries))
    held = order[: max(1, int(round(HELD_OUT * len(order))))]
    if ranking.hold_out == "queries":
        return held, order[len(held) :]
    document = np.unique(ranking.positives, axis=0, return_inverse=True)[1].ravel()  # [P]
    taken = np.isin(document, document[np.isin(ranking.owner, held)])
    trained = np.setdiff1d(order[len(held) :], ranking.owner[taken])
    if not len(trained):
        raise InvalidRequest(
            f"ranking-trained PQ needs judged queries whose relevant documents differ: of "
            f"{len(order)}, none is left to train on once {len(held)} are held out with their documents"
        )
    return held, trained


def _searched(index, vectors: np.ndarray, ranking: RankingSet) -> tuple[np.ndarray, np.ndarray]:
    """Every query searched in the index as it stands -> (its top NEGATIVES candidates that are
    none of its relevant documents [Q, NEGATIVES], -1 padded; 1 / the rank of its first relevant
    document among them [Q], 0 past them). A relevant document is found by its vector, so the
    documents the training pushes up for every query come back as negatives, and as a worse rank
    for the held-out queries they crowd."""
    depth = min(index.ntotal, NEGATIVES + int(np.bincount(ranking.owner).max()))
    _, rows = index.search(ranking.queries, depth, {"nprobe": _all_lists(index)}, None)
    out = np.full((len(rows), NEGATIVES), -1, np.int64)
    reciprocal = np.zeros(len(rows))
    for q, found in enumerate(rows):
        found = found[found >= 0]
        mine = ranking.positives[ranking.owner == q]
        same = (vectors[found][:, None, :] == mine[None]).all(-1).any(-1)
        first = np.flatnonzero(same)
        if len(first) and first[0] < NEGATIVES:
            reciprocal[q] = 1.0 / (first[0] + 1)
        keep = found[~same][:NEGATIVES]
        out[q, : len(keep)] = keep
    return out, reciprocal


def _all_lists(index) -> int:
    return int(index.ivf.nlist) if index.ivf is not None else 1


def _pairs(ranking: RankingSet, queries: np.ndarray) -> np.ndarray:
    """Positives (rows of ranking.positives) whose query is among `queries`."""
    return np.flatnonzero(np.isin(ranking.owner, queries))


def _scored(scorer, ranking, pairs, doc_codes, doc_lists, pos_codes, pos_lists, negatives):
    """For each (query, relevant document) pair: scores [P, 1 + NEGATIVES], the relevant one
    first, and which negatives are real [P, NEGATIVES]."""
    import torch

    owner = ranking.owner[pairs]
    rows = negatives[owner]  # [P, NEGATIVES]
    real = torch.from_numpy(rows >= 0)
    safe = np.maximum(rows, 0)
    codes = np.concatenate([pos_codes[pairs][:, None], doc_codes[safe]], axis=1)  # [P, 1 + n, M]
    lists = np.concatenate([pos_lists[pairs][:, None], doc_lists[safe]], axis=1)
    queries = torch.from_numpy(ranking.queries[owner])
    scores = scorer.scores(queries, torch.from_numpy(codes), torch.from_numpy(lists))
    return scores, real


def _epoch(scorer, optimizer, ranking, queries, shuffle, *batch, size: int = 64) -> float:
    """One pass over the training queries' pairs in batches shuffled by `shuffle` (a numpy
    Generator) -> the mean loss: softmax cross-entropy of the relevant document against the
    query's hard negatives."""
    import torch

    pairs = _pairs(ranking, queries)
    pairs = pairs[shuffle.permutation(len(pairs))]
    total = 0.0
    for lo in range(0, len(pairs), size):
        scores, real = _scored(scorer, ranking, pairs[lo : lo + size], *batch)
        logits = SCALE * scores.masked_fill(
            torch.cat([torch.ones(len(real), 1, dtype=torch.bool), real], 1).logical_not(), float("-inf"))
        loss = torch.nn.functional.cross_entropy(logits, torch.zeros(len(logits), dtype=torch.long))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        total += float(loss.detach()) * len(scores)
    return total / max(1, len(pairs))
