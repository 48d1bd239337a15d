"""Fields' write payloads (what `prepare` takes) as plain arrays and back, for the write-ahead log.

Every kind's payload is an array, or a dataclass of arrays, lists of strings and such dataclasses,
so one codec serves them all: `to_arrays` flattens it into named arrays plus a JSON-able spec,
`from_arrays` rebuilds it. Nothing is pickled: only dataclasses of the engine's own modules are
rebuilt, from arrays loaded without pickle.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any

import numpy as np

from retriever.errors import CorruptIndex

_OWN_MODULES = ("retriever.",)


def to_arrays(payload: Any, prefix: str) -> tuple[Any, dict[str, np.ndarray]]:
    """-> (spec, {name: array}) with names under `prefix`."""
    if payload is None:
        return None, {}
    if isinstance(payload, np.ndarray):
        return "array", {prefix: payload}
    if isinstance(payload, list) and all(isinstance(item, str) for item in payload):
        return "strings", {prefix: np.array(payload, dtype=str) if payload else np.zeros(0, "U1")}
    if dataclasses.is_dataclass(payload) and type(payload).__module__.startswith(_OWN_MODULES):
        spec: dict[str, Any] = {"class": f"{type(payload).__module__}:{type(payload).__qualname__}"}
        arrays: dict[str, np.ndarray] = {}
        for f in dataclasses.fields(payload):
            spec[f.name], inner = to_arrays(getattr(payload, f.name), f"{prefix}.{f.name}")
            arrays.update(inner)
        return spec, arrays
    raise TypeError(f"a write payload cannot hold {type(payload).__name__}")  # a kind's bug, not input


def from_arrays(spec: Any, arrays: dict[str, np.ndarray], prefix: str) -> Any:
    if spec is None:
        return None
    if spec == "array":
        return arrays[prefix]
    if spec == "strings":
        return arrays[prefix].tolist()
    module, _, name = str(spec.get("class", "")).partition(":")
    if not module.startswith(_OWN_MODULES):
        raise CorruptIndex(f"a write-ahead log record names an unknown payload type {spec.get('class')!r}")
    cls = getattr(importlib.import_module(module), name)
    fields = {key: inner for key, inner in spec.items() if key != "class"}
    return cls(**{key: from_arrays(inner, arrays, f"{prefix}.{key}") for key, inner in fields.items()})
