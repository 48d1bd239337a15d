"""A toy field kind written against `retriever.fields.base` only: one number per document,
documents ranked by closeness to the query's number. Registering it is one line
(`KINDS["toy"] = TOY`); `tests/test_fields.py` checks the engine needs nothing else."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from retriever.errors import InvalidRequest
from retriever.fields.base import FieldConfig, check_int
from retriever.index import storage
from retriever.kernels import cpu


@dataclass(frozen=True)
class ToyConfig(FieldConfig):
    scale: int = 1  # a key of its own

    def check(self) -> None:
        check_int(self.where, "scale", self.scale, low=1)


class ToyKind:
    name = "toy"
    config = ToyConfig
    request_params = {"toy_depth": 1}
    vector_input = False

    def has_encoder(self, config):
        return True

    def make_encoder(self, config):
        return len  # a document's number is its text's length

    def initial_size(self, config):
        return 1

    def create(self, path, config, size):
        return {"values": []}, {}

    def open(self, path, config, entry, files, num_rows):
        values = [storage.open_npy_verified(path, name, files[name]) for name in entry["values"]]
        return ToyField(config, entry, np.concatenate(values) if values else np.zeros(0, np.float32))


TOY = ToyKind()


@dataclass(frozen=True)
class ToyField:
    config: ToyConfig
    entry: dict
    values: np.ndarray  # [rows] float32
    dim: int = 1

    def info(self):
        return {"kind": "toy", "documents": len(self.values)}

    def documents_from_texts(self, encoder, texts, progress=False):
        return np.array([encoder(t) for t in texts], np.float32)

    def check_documents(self, given, count):
        values = np.asarray(given, np.float32).reshape(-1)
        if len(values) != count:
            raise InvalidRequest(f"{count} documents but {len(values)} toy values")
        return values

    def queries_from_texts(self, encoder, texts, params):
        return np.array([encoder(t) for t in texts], np.float32)

    def check_queries(self, given):
        return np.asarray(given, np.float32).reshape(-1)

    def prepare(self, values, first_row, deleted):
        return ToyPending(self, values)

    def search(self, queries, k, params, allowed):
        scores = -np.abs(queries[:, None] - self.values[None, :]) * self.config.scale  # [B, N]
        if allowed is not None:
            scores[:, ~allowed] = -np.inf
        rows = np.broadcast_to(np.arange(len(self.values)), scores.shape)
        scores, rows = cpu.top_k_rows(scores, rows, min(k, len(self.values)))
        rows = np.where(np.isfinite(scores), rows, -1)
        pad = k - rows.shape[1]
        return np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf), np.pad(rows, ((0, 0), (0, pad)), constant_values=-1)

    def unmatchable(self, queries):
        return None

    def probe(self, rows, deleted, k, min_recall):
        return {"documents": len(self.values)}, [] if len(self.values) == len(deleted) else ["toy values lost"]


@dataclass(frozen=True)
class ToyPending:
    field: ToyField
    values: np.ndarray

    def write(self, path, version, num_rows):
        name = f"{self.field.config.name}.values-{version:06d}.npy"
        files = {name: storage.write_new_file(path, name, storage.npy_bytes(self.values))}
        entry = {"values": [*self.field.entry["values"], name]}
        values = np.concatenate([self.field.values, self.values])
        return entry, files, functools.partial(ToyField, self.field.config, entry, values)
