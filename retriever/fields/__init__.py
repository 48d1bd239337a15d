"""Field kinds and their registry: the one place that dispatches on a kind's name.

A new kind is one module of this package (its config, its opened field, a `FieldKind`) plus one
line in `KINDS`; see `base.py` for the interface.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from retriever.errors import InvalidConfig

from .base import Field, FieldConfig, FieldKind, Param
from .binary import BINARY
from .bm25 import BM25
from .dense import DENSE
from .multivector import MULTIVECTOR
from .sparse import SPARSE

__all__ = ["KINDS", "Field", "FieldConfig", "FieldKind", "config_from_dict", "kind_of", "request_params"]

KINDS: dict[str, FieldKind] = {
    "dense": DENSE,
    "bm25": BM25,
    "sparse": SPARSE,
    "multivector": MULTIVECTOR,
    "binary": BINARY,
}


def kind_of(config: FieldConfig) -> FieldKind:
    return KINDS[config.kind]


def config_from_dict(raw: Mapping[str, Any], where: str) -> FieldConfig:
    """A field's config from plain data (a TOML table, a manifest entry), as its kind's dataclass."""
    kind = raw.get("kind", "dense")
    if kind not in KINDS:
        raise InvalidConfig(f"{where}: kind {kind!r} is not supported (supported: {', '.join(KINDS)})")
    config = KINDS[kind].config
    own = set(config.__dataclass_fields__)
    foreign = set(raw) - own
    if foreign:
        others = set().union(*(k.config.__dataclass_fields__ for k in KINDS.values()))
        if foreign - others:
            raise InvalidConfig(
                f"{where}: unknown key(s) {sorted(foreign - others)}; known keys: {sorted(own)}"
            )
        raise InvalidConfig(f"{where}: key(s) {sorted(foreign)} do not apply to a {kind!r} field")
    try:
        return config(**raw)
    except TypeError as e:  # missing `name`
        raise InvalidConfig(f"{where}: {e}") from None


def request_params(kinds: Iterable[FieldKind] | None = None) -> dict[str, Param]:
    """Every search parameter some kind (of `kinds`, by default the registry's) reads, and its range."""
    chosen = KINDS.values() if kinds is None else kinds
    return {key: param for kind in chosen for key, param in kind.request_params.items()}
