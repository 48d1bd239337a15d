"""Binarizers: float vectors -> packed multi-bit codes, and the lookup tables that score codes.

Every method shares one code layout and one decoder form, so one scan kernel scores them all.
A code is `bits` steps of `code_dim` sign bits (1 = +1, 0 = -1; eight dimensions a byte, little
bit order, step after step). Step i binarizes what the earlier steps left unexplained:

    r_0 = map(x - input_mean)     b_i = sign(phi_i(r_i))     r_{i+1} = r_i - D_i b_i

and a code decodes to  output_mean + sum_i D_i b_i  (D_i [dim, code_dim]). The score of a float
query q against a code is <q, output_mean> + sum_i <D_i^T q, b_i>: per code byte, a table of 256
partial sums (`lookup_tables`). Symmetric distance calculation (SDC, BEBR) scores the decoded
query code the same way; 1-bit codes can also be compared by Hamming distance.

- `sign`: phi is the identity on centered vectors, or a seeded Gaussian projection when
  `code_dim` differs from the dimension; D_i is a fitted scale times the projection's pseudo-inverse.
- `itq`: phi is PCA to `code_dim` then the ITQ rotation (Gong & Lazebnik 2011); D_i as above.
- `recurrent` (BEBR, Gan et al. 2023): phi_i(r) = A_i r + W2_i relu(W1_i A_i r + c_i), a residual
  MLP block per step, with learned decoders; initialized from `itq` and trained
  embedding-to-embedding on the collection's own vectors (no labels): reconstructions must be
  close to their vectors and keep each vector's neighbour ranking (in-batch KL against the float
  similarities, on batches of anchors with their nearest neighbours), through straight-through signs.
  `compatible()` trains a binarizer for a new embedding model into an old binarizer's code space.
"""

from __future__ import annotations

import functools
import io
import json
from dataclasses import dataclass, replace

import numpy as np

METHODS = ("sign", "itq", "recurrent")
MAX_BITS = 4
ENCODE_BLOCK = 16_384  # vectors binarized per step, bounding temporary memory
TRAIN_ITERATIONS = 300
ANCHORS, NEIGHBOURS = 32, 16  # a training batch: anchors and their nearest neighbours (512 vectors)
TEMPERATURE = 0.05
LEARNING_RATE = 1e-4  # larger steps undo the itq start on SciFact / GloVe (1e-3 collapses)
RANKING_WEIGHT = 0.1  # of the neighbour-ranking terms next to the reconstruction error


def min_training_vectors(method: str, code_dim: int) -> int:
    """Vectors a method needs to fit: a mean for sign, a code_dim-wide PCA for itq, neighbour batches for recurrent."""
    return {"sign": 2, "itq": code_dim, "recurrent": max(code_dim, ANCHORS * NEIGHBOURS)}[method]


@dataclass(frozen=True)
class Binarizer:
    method: str
    bits: int
    code_dim: int
    input_mean: np.ndarray  # [dim_in]
    output_mean: np.ndarray  # [dim]
    input_map: np.ndarray | None  # [dim, dim_in]: a compatible binarizer's map into the old space; None = identity
    projections: np.ndarray  # [bits, code_dim, dim] A_i
    hidden_in: np.ndarray | None  # [bits, hidden, code_dim] W1_i (recurrent only)
    hidden_bias: np.ndarray | None  # [bits, hidden] c_i
    hidden_out: np.ndarray | None  # [bits, code_dim, hidden] W2_i
    decoders: np.ndarray  # [bits, dim, code_dim] D_i

    @property
    def dim(self) -> int:
        return int(self.decoders.shape[1])

    @property
    def input_dim(self) -> int:
        return int(self.input_mean.shape[0])

    @property
    def code_bytes(self) -> int:
        return self.bits * self.code_dim // 8

    # ---- codes -------------------------------------------------------------------------------

    def encode(self, vectors: np.ndarray) -> np.ndarray:
        """[N, dim_in] float -> [N, code_bytes] uint8."""
        out = np.empty((len(vectors), self.code_bytes), dtype=np.uint8)
        step_bytes = self.code_dim // 8
        for start in range(0, len(vectors), ENCODE_BLOCK):
            residual = self._mapped(vectors[start : start + ENCODE_BLOCK])
            for i in range(self.bits):
                positive = self._phi(i, residual) >= 0
                out[start : start + len(residual), i * step_bytes : (i + 1) * step_bytes] = np.packbits(positive, axis=1, bitorder="little")
                residual -= np.where(positive, np.float32(1), np.float32(-1)) @ self.decoders[i].T
        return out

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """[N, code_bytes] uint8 -> [N, dim] float32 reconstructions."""
        signs = unpack_signs(codes, self.bits, self.code_dim)  # [N, bits, code_dim]
        return self.output_mean + np.einsum("nbm,bdm->nd", signs, self.decoders, dtype=np.float32)

    def query_side(self, queries: np.ndarray) -> np.ndarray:
        """Float queries in the space codes decode to (a compatible binarizer maps a new model's queries)."""
        if self.input_map is None:
            return np.asarray(queries, dtype=np.float32)
        return self._mapped(queries) + self.output_mean

    def lookup_tables(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Decoded-space queries [B, dim] -> (tables [B, code_bytes, 256] float32, offsets [B]):
        score(q, code) = offsets[q] + sum_p tables[q, p, code[p]]."""
        q = np.asarray(queries, dtype=np.float32)
        per_bit = self.bit_weights(q)
        tables = per_bit.reshape(len(q), self.code_bytes, 8) @ _byte_signs().T  # [B, code_bytes, 256]
        return np.ascontiguousarray(tables, dtype=np.float32), (q @ self.output_mean).astype(np.float32)

    def bit_weights(self, queries: np.ndarray) -> np.ndarray:
        """Decoded-space queries [B, dim] -> [B, code bits] float32, w with score(q, code) = constant
        + sum_t w_t s_t (s_t = +1 / -1, bit t of the code): what the bit-plane scan ranks by."""
        q = np.asarray(queries, dtype=np.float32)
        return np.einsum("bd,sdm->bsm", q, self.decoders, dtype=np.float32).reshape(len(q), -1)

    def _mapped(self, vectors: np.ndarray) -> np.ndarray:
        centered = np.asarray(vectors, dtype=np.float32) - self.input_mean
        return centered if self.input_map is None else centered @ self.input_map.T

    def _phi(self, step: int, residual: np.ndarray) -> np.ndarray:
        z = residual @ self.projections[step].T
        if self.hidden_in is not None:
            z = z + np.maximum(z @ self.hidden_in[step].T + self.hidden_bias[step], 0) @ self.hidden_out[step].T
        return z

    # ---- storage -------------------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        arrays = {k: v for k, v in self.__dict__.items() if isinstance(v, np.ndarray)}
        meta = json.dumps({"method": self.method, "bits": self.bits, "code_dim": self.code_dim})
        buf = io.BytesIO()
        np.savez(buf, meta=np.frombuffer(meta.encode(), dtype=np.uint8), **arrays)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> "Binarizer":
        with np.load(io.BytesIO(data), allow_pickle=False) as stored:
            meta = json.loads(stored["meta"].tobytes())
            arrays = {k: stored[k] for k in stored.files if k != "meta"}
        optional = {k: arrays.get(k) for k in ("input_map", "hidden_in", "hidden_bias", "hidden_out")}
        return cls(meta["method"], meta["bits"], meta["code_dim"], arrays["input_mean"], arrays["output_mean"],
                   projections=arrays["projections"], decoders=arrays["decoders"], **optional)


@functools.cache
def _byte_signs() -> np.ndarray:
    """[256, 8]: the +1 / -1 each bit of a byte value stands for."""
    return np.where((np.arange(256)[:, None] >> np.arange(8)) & 1, 1.0, -1.0).astype(np.float32)


def unpack_signs(codes: np.ndarray, bits: int, code_dim: int) -> np.ndarray:
    """[N, bits * code_dim / 8] uint8 -> [N, bits, code_dim] float32 of +1 / -1."""
    unpacked = np.unpackbits(np.asarray(codes, dtype=np.uint8), axis=1, bitorder="little").reshape(len(codes), bits, code_dim)
    return np.where(unpacked, np.float32(1), np.float32(-1))


# ---- fitting -------------------------------------------------------------------------------------


def fit(vectors: np.ndarray, method: str, bits: int, code_dim: int, *, seed: int = 0, iterations: int = TRAIN_ITERATIONS) -> Binarizer:
    """A binarizer fitted to float vectors [N, dim] (a training sample of the collection)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    mean = vectors.mean(axis=0)
    centered = vectors - mean
    rng = np.random.default_rng(seed)
    if method == "sign":
        projection = np.eye(code_dim, dtype=np.float32) if code_dim == vectors.shape[1] else _random_projection(rng, code_dim, vectors.shape[1])
    elif method == "itq" or code_dim <= vectors.shape[1]:
        projection = _itq_projection(centered, code_dim, rng)
    else:  # recurrent codes wider than the vectors start from a random projection
        projection = _random_projection(rng, code_dim, vectors.shape[1])
    if method == "itq" and code_dim > vectors.shape[1]:
        raise ValueError(f"itq codes have at most as many dimensions as the vectors ({vectors.shape[1]}), got code_dim {code_dim}")
    linear = _fit_linear_steps(method, centered, mean, projection, bits)
    if method != "recurrent":
        return linear
    return _train_recurrent(linear, centered, vectors, rng, iterations)


def compatible(old: Binarizer, new_vectors: np.ndarray, old_vectors: np.ndarray, *, seed: int = 0, iterations: int = TRAIN_ITERATIONS) -> Binarizer:
    """A binarizer for a new embedding model whose codes live in `old`'s code space (BEBR's
    compatible training): paired vectors of the same items from both models [N, dim_new] and
    [N, dim_old]. The new model's vectors are mapped into the old space (least squares, then
    trained), binarized by steps initialized from `old`, and decoded by `old`'s frozen decoders,
    so new codes and queries compare with codes already stored."""
    new_vectors = np.asarray(new_vectors, dtype=np.float32)
    old_vectors = np.asarray(old_vectors, dtype=np.float32)
    if len(new_vectors) != len(old_vectors):
        raise ValueError(f"compatible training needs paired vectors; got {len(new_vectors)} new and {len(old_vectors)} old")
    new_mean = new_vectors.mean(axis=0)
    mapping, *_ = np.linalg.lstsq(new_vectors - new_mean, old_vectors - old.input_mean, rcond=None)  # [dim_in, dim]
    start = replace(old, method="recurrent", input_mean=new_mean, input_map=np.ascontiguousarray(mapping.T, dtype=np.float32))
    start = _with_hidden(start, np.random.default_rng(seed))
    return _train_recurrent(start, new_vectors - new_mean, old_vectors, np.random.default_rng(seed), iterations,
                            partner_codes=old.encode(old_vectors), partner=old)


def _random_projection(rng: np.random.Generator, code_dim: int, dim: int) -> np.ndarray:
    """[code_dim, dim]: orthonormal rows of a random rotation, or Gaussian rows when code_dim > dim."""
    if code_dim > dim:
        return (rng.standard_normal((code_dim, dim)) / np.sqrt(dim)).astype(np.float32)
    rotation, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    return rotation[:code_dim].astype(np.float32)


def _itq_projection(centered: np.ndarray, code_dim: int, rng: np.random.Generator, iterations: int = 50) -> np.ndarray:
    """PCA to code_dim dimensions, then the rotation that makes their signs lose the least. -> [code_dim, dim]."""
    covariance = centered.T.astype(np.float64) @ centered.astype(np.float64)
    _, eigenvectors = np.linalg.eigh(covariance)
    pca = eigenvectors[:, ::-1][:, :code_dim]  # [dim, code_dim], strongest first
    projected = centered.astype(np.float64) @ pca  # [N, code_dim]
    rotation, _ = np.linalg.qr(rng.standard_normal((code_dim, code_dim)))
    for _ in range(iterations):
        signs = np.where(projected @ rotation >= 0, 1.0, -1.0)
        u, _, vt = np.linalg.svd(signs.T @ projected)  # orthogonal Procrustes: min ||B - V R||
        rotation = vt.T @ u.T
    return (pca @ rotation).T.astype(np.float32)


def _fit_linear_steps(method: str, centered: np.ndarray, mean: np.ndarray, projection: np.ndarray, bits: int) -> Binarizer:
    """Residual binarization through one projection: each step's decoder is the projection's
    pseudo-inverse times the least-squares scale of what is left."""
    direction = np.linalg.pinv(projection.astype(np.float64)).astype(np.float32)  # [dim, code_dim]
    residual = centered.copy()
    decoders = []
    for _ in range(bits):
        signs = np.where(residual @ projection.T >= 0, np.float32(1), np.float32(-1))
        step = signs @ direction.T  # [N, dim]
        scale = float((residual * step).sum() / max(float((step * step).sum()), 1e-30))
        decoders.append(scale * direction)
        residual -= scale * step
    code_dim = projection.shape[0]
    return Binarizer(method, bits, code_dim, mean, mean, None, np.stack([projection] * bits), None, None, None, np.stack(decoders))


def _with_hidden(binarizer: Binarizer, rng: np.random.Generator) -> Binarizer:
    """Residual MLP blocks that start as the identity (zero output weights)."""
    bits, m = binarizer.bits, binarizer.code_dim
    hidden_in = (rng.standard_normal((bits, m, m)) / np.sqrt(m)).astype(np.float32)
    return replace(binarizer, hidden_in=hidden_in, hidden_bias=np.zeros((bits, m), np.float32), hidden_out=np.zeros((bits, m, m), np.float32))


def _train_recurrent(start: Binarizer, inputs: np.ndarray, targets: np.ndarray, rng: np.random.Generator, iterations: int,
                     partner_codes: np.ndarray | None = None, partner: Binarizer | None = None) -> Binarizer:
    """Fine-tune the steps (and, unless `partner` fixes the code space, the decoders) with
    straight-through signs. inputs: centered input vectors [N, dim_in]; targets: float vectors in
    the decoded space [N, dim]. With a partner, reconstructions are also ranked against the
    partner's decoded codes of the same items (cross-version)."""
    import torch

    if start.hidden_in is None:
        start = _with_hidden(start, rng)
    neighbours = _nearest_neighbours(targets, NEIGHBOURS)
    with torch.random.fork_rng():
        torch.manual_seed(int(rng.integers(2**31)))
        model = _module_class()(start, train_decoders=partner is None)
        optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=LEARNING_RATE)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, iterations)
        inputs_t, targets_t = torch.from_numpy(inputs), torch.from_numpy(targets)
        partners_t = None if partner is None else torch.from_numpy(partner.decode(partner_codes))
        mean_t = torch.from_numpy(start.output_mean)
        for _ in range(iterations):
            anchors = rng.choice(len(neighbours), size=ANCHORS, replace=False)
            batch = torch.from_numpy(neighbours[anchors].reshape(-1))
            decoded = model(inputs_t[batch]) + mean_t
            loss = _loss(decoded, targets_t[batch], None if partners_t is None else partners_t[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
        return model.export(start)


def _loss(decoded, targets, partners):
    """Embedding-to-embedding loss: the reconstruction error, plus the KL divergence from the
    float neighbour distribution in the batch to the ones the codes give (asymmetric: float query
    vs decoded; symmetric: decoded vs decoded, or vs the partner's codes of the same items)."""
    import torch
    import torch.nn.functional as F

    eye = torch.eye(len(targets), dtype=torch.bool)
    teacher = F.softmax((targets @ targets.T / TEMPERATURE).masked_fill(eye, -torch.inf), dim=1)

    def kl(scores):
        student = F.log_softmax((scores / TEMPERATURE).masked_fill(eye, -torch.inf), dim=1).masked_fill(eye, 0)
        return F.kl_div(student, teacher, reduction="batchmean")

    symmetric = decoded @ (decoded if partners is None else partners).T
    reconstruction = ((decoded - targets) ** 2).sum(dim=1).mean()
    return reconstruction + RANKING_WEIGHT * (kl(targets @ decoded.T) + kl(symmetric))


def _nearest_neighbours(vectors: np.ndarray, count: int, anchors: int = 8192) -> np.ndarray:
    """[A, count] rows: each anchor (a seeded sample) followed by its count - 1 nearest others by inner product."""
    import faiss

    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(np.ascontiguousarray(vectors))
    sample = np.random.default_rng(0).choice(len(vectors), size=min(anchors, len(vectors)), replace=False)
    _, rows = index.search(np.ascontiguousarray(vectors[sample]), count + 1)
    out = np.empty((len(sample), count), dtype=np.int64)
    for a, (anchor, found) in enumerate(zip(sample, rows)):
        others = found[(found != anchor) & (found >= 0)][: count - 1]
        out[a, 0], out[a, 1 : 1 + len(others)] = anchor, others
        out[a, 1 + len(others) :] = anchor  # fewer vectors than neighbours asked for
    return out


@functools.cache
def _module_class():
    import torch

    class RecurrentSteps(torch.nn.Module):
        def __init__(self, start: Binarizer, train_decoders: bool) -> None:
            super().__init__()
            tensor = lambda a, grad=True: torch.nn.Parameter(torch.from_numpy(np.array(a, dtype=np.float32)), requires_grad=grad)  # noqa: E731
            self.input_map = None if start.input_map is None else tensor(start.input_map)
            self.projections = tensor(start.projections)
            self.hidden_in, self.hidden_bias, self.hidden_out = tensor(start.hidden_in), tensor(start.hidden_bias), tensor(start.hidden_out)
            self.decoders = tensor(start.decoders, grad=train_decoders)

        def forward(self, inputs):
            residual = inputs if self.input_map is None else inputs @ self.input_map.T
            decoded = torch.zeros(len(inputs), self.decoders.shape[1])
            for i in range(len(self.decoders)):
                z = residual @ self.projections[i].T
                z = z + torch.relu(z @ self.hidden_in[i].T + self.hidden_bias[i]) @ self.hidden_out[i].T
                signs = z + (torch.where(z >= 0, 1.0, -1.0) - z).detach()  # straight-through sign
                step = signs @ self.decoders[i].T
                decoded = decoded + step
                residual = residual - step
            return decoded

        def export(self, start: Binarizer) -> Binarizer:
            get = lambda p: None if p is None else p.detach().numpy().astype(np.float32)  # noqa: E731
            return replace(start, method="recurrent", input_map=get(self.input_map), projections=get(self.projections),
                           hidden_in=get(self.hidden_in), hidden_bias=get(self.hidden_bias), hidden_out=get(self.hidden_out),
                           decoders=get(self.decoders))

    return RecurrentSteps

