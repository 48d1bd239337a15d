"""A toy field kind written against `retriever.fields.base` only: one number per document,
documents ranked by closeness to the query's number. Registering it is one line
(`KINDS["toy"] = TOY`); `tests/test_fields.py` checks the engine needs nothing else."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from retriever.errors import InvalidRequest
from retriever.fields.base import FieldConfig, depth, check_int, merge_top_k
from retriever.index import storage


@dataclass(frozen=True)
class ToyConfig(FieldConfig):
    scale: int = 1  # a key of its own

    def check(self) -> None:
        check_int(self.where, "scale", self.scale, low=1)


class ToyKind:
    name = "toy"
    config = ToyConfig
    request_params = {"toy_depth": depth(1)}
    vector_input = False
    collection_statistics = False
    query_inputs = ("vectors",)

    def has_encoder(self, config):
        return True

    def make_encoder(self, config):
        return len  # a document's number is its text's length

    def initial_size(self, config):
        return 1

    def create(self, path, config, size):
        return {}, {}

    def open(self, path, config, shared, files, segments, reuse):
        values = [
            reuse.get(s.name)
            if s.name in reuse
            else storage.open_npy_verified(path, s.entry["values"], files[s.entry["values"]])
            for s in segments
        ]
        return ToyField(config, values, [s.name for s in segments])


TOY = ToyKind()


@dataclass(frozen=True)
class ToyField:
    config: ToyConfig
    parts: list  # [rows] float32 per segment
    names: list  # each part's segment
    dim: int = 1

    def opened(self):
        return dict(zip(self.names, self.parts))

    @property
    def values(self) -> np.ndarray:
        return np.concatenate(self.parts) if self.parts else np.zeros(0, np.float32)

    def info(self):
        return {"kind": "toy", "documents": len(self.values), "segments": len(self.parts)}

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

    def prepare(self, values):
        return ToyPending(self, values)

    def merge(self, path, name, rows):
        entry, files = write_values(path, name, self.config, self.values[rows])
        return {}, entry, files

    def search(self, queries, k, params, allowed):
        found, starts, start = [], [], 0
        for values in self.parts:  # each segment on its own, then the best k over all
            scores = -np.abs(queries[:, None] - np.asarray(values)[None, :]) * self.config.scale  # [B, n]
            if allowed is not None:
                scores[:, ~allowed[start : start + len(values)]] = -np.inf
            order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
            found.append((np.take_along_axis(scores, order, axis=1), order))
            starts.append(start)
            start += len(values)
        return merge_top_k(found, starts, len(queries), k)

    def score(self, queries, rows):
        values = self.values[np.maximum(rows, 0)]
        return np.where(rows >= 0, -np.abs(queries[:, None] - values) * self.config.scale, -np.inf)

    def unmatchable(self, queries):
        return None

    def probe(self, rows, deleted, k, min_recall):
        return {"documents": len(self.values)}, [] if len(self.values) == len(deleted) else [
            "toy values lost"
        ]


@dataclass(frozen=True)
class ToyPending:
    field: ToyField
    values: np.ndarray

    def write(self, path, name):
        entry, files = write_values(path, name, self.field.config, self.values)
        stored = np.load(path / entry["values"], mmap_mode="r")
        field = self.field
        return {}, entry, files, lambda: ToyField(field.config, [*field.parts, stored], [*field.names, name])


def write_values(path, segment, config, values):
    name = f"{segment}.{config.name}.values.npy"
    return {"values": name}, {name: storage.write_new_file(path, name, storage.npy_bytes(values))}
