"""Collection configuration: a frozen dataclass read from TOML and validated on construction.
Each field's config is its kind's dataclass (`retriever/fields/`), chosen by its `kind` key."""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from .errors import InvalidConfig, InvalidRequest, NotFound, RetrieverError
from .fields import config_from_dict, kind_of
from .fields.base import NAME, FieldConfig, check_int
from .pipeline import HYBRID, Pipeline, hybrid

__all__ = ["CollectionConfig", "FieldConfig", "check_name"]


def check_name(name: object, what: str = "collection name") -> str:
    """`name` if it is a safe identifier (no path separators, dots, NUL or control characters)."""
    if not isinstance(name, str) or not NAME.match(name):
        raise InvalidConfig(f"{what} {name!r} must start with a letter and use only letters, digits, _ or - (at most 64)")
    return name


@dataclass(frozen=True)
class CollectionConfig:
    """A collection: its name, its fields, which document keys are encoded, and request limits."""

    name: str
    fields: tuple[FieldConfig, ...]
    text_keys: tuple[str, ...] = ("title", "text")
    max_k: int = 1000
    max_batch: int = 1024
    # queries x the largest of k and the depth parameters (rescore, candidates, rerank, nprobe,
    # efSearch) one request may ask for: what bounds a request's memory and time
    max_candidates: int = 100_000
    # named query pipelines ({name: {"prefetch": [...], "fuse": {...}, "rerank": [...]}}), and the
    # one a search that names no fields runs
    pipelines: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    default_pipeline: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not NAME.match(self.name):
            raise InvalidConfig(f"collection name {self.name!r} must start with a letter and use letters, digits, _ or -")
        if not self.fields:
            raise InvalidConfig(f"collection {self.name!r} has no fields; add at least one [[fields]] table")
        names = [f.name for f in self.fields]
        if len(set(names)) != len(names):
            raise InvalidConfig(f"collection {self.name!r} has duplicate field names: {names}")
        by_name = {f.name: f for f in self.fields}
        for f in self.fields:
            f.check_among(by_name, self.name)
        check_int("collection", "max_k", self.max_k, low=1)
        check_int("collection", "max_batch", self.max_batch, low=1)
        check_int("collection", "max_candidates", self.max_candidates, low=1)
        self._check_pipelines(by_name)
        object.__setattr__(self, "fields", tuple(self.fields))
        object.__setattr__(self, "text_keys", tuple(self.text_keys))

    def _check_pipelines(self, fields: Mapping[str, FieldConfig]) -> None:
        if not isinstance(self.pipelines, Mapping):
            raise InvalidConfig("pipelines must be a table of named pipelines")
        for name, data in self.pipelines.items():
            check_name(name, "pipeline name")
            try:
                pipeline = Pipeline.from_dict(data)
                pipeline.fusion_spec()  # its fuse stage, checked now rather than at the first search
            except RetrieverError as e:
                raise InvalidConfig(f"pipeline {name!r}: {e}") from None
            unknown = sorted(set(pipeline.fields) - set(fields))
            if unknown:
                known = list(fields)
                raise InvalidConfig(f"pipeline {name!r} names unknown field(s) {unknown}; fields: {known}")
        known = self._pipeline_names()
        if self.default_pipeline is not None and self.default_pipeline not in known:
            raise InvalidConfig(
                f"default_pipeline {self.default_pipeline!r} is not one of the pipelines {known}")

    def _pipeline_names(self, built_in: str = HYBRID) -> list[str]:
        """The named pipelines, then the built-in one (as `built_in` says) unless a named one took
        its name."""
        return [*self.pipelines, *([] if HYBRID in self.pipelines else [built_in])]

    def pipeline(self, name: str) -> Pipeline:
        """The named pipeline, or the built-in `hybrid` over every field that encodes texts
        (NotFound names those there are)."""
        if name in self.pipelines:
            return Pipeline.from_dict(self.pipelines[name])
        if name != HYBRID:
            known = self._pipeline_names(f"{HYBRID} (built in)")
            raise NotFound(f"unknown pipeline {name!r} in collection {self.name!r}; pipelines: {known}")
        texts = [f.name for f in self.fields if self.encodes_texts(f.name)]
        if not texts:
            raise InvalidRequest("the hybrid pipeline searches the fields that encode texts; this "
                                 "collection has none (its vectors were brought in)")
        return hybrid(texts)

    def encodes_texts(self, name: str) -> bool:
        """Whether texts can be encoded for the field (it has a model, or needs none; a field with a
        source, through its source)."""
        field = self.field(name)
        if field.source is not None:
            return self.encodes_texts(field.source)
        return kind_of(field).has_encoder(field)

    def field(self, name: str | None = None) -> FieldConfig:
        """The named field, or the first one when `name` is None."""
        if name is None:
            return self.fields[0]
        for f in self.fields:
            if f.name == name:
                return f
        raise NotFound(f"unknown field {name!r} in collection {self.name!r}; fields: {[f.name for f in self.fields]}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "CollectionConfig":
        data = dict(data)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InvalidConfig(f"collection: unknown key(s) {unknown}; known keys: {sorted(known)}")
        fields = data.pop("fields", None)
        if not isinstance(fields, list):
            raise InvalidConfig("collection config needs a list of [[fields]] tables")
        parsed = []
        for i, raw in enumerate(fields):
            if not isinstance(raw, Mapping):
                raise InvalidConfig(f"fields[{i}] must be a table")
            parsed.append(config_from_dict(raw, f"fields[{i}] ({raw.get('name', '?')})"))
        try:
            return cls(fields=tuple(parsed), **data)
        except TypeError as e:
            raise InvalidConfig(f"collection config: {e}") from None

    @classmethod
    def from_toml(cls, path: str | Path) -> "CollectionConfig":
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise InvalidConfig(f"config file {str(path)!r} does not exist") from None
        except tomllib.TOMLDecodeError as e:
            raise InvalidConfig(f"config file {str(path)!r} is not valid TOML: {e}") from None
        return cls.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        """Plain data for the manifest; `from_dict(to_dict())` gives an equal config."""
        return {
            "name": self.name,
            "fields": [f.to_dict() for f in self.fields],
            "text_keys": list(self.text_keys),
            "max_k": self.max_k,
            "max_batch": self.max_batch,
            "max_candidates": self.max_candidates,
            "pipelines": {name: dict(data) for name, data in self.pipelines.items()},
            "default_pipeline": self.default_pipeline,
        }
