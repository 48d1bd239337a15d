"""The field-kind interface: a new kind is one module plus one registry line."""

import numpy as np
import pytest

import retriever
from retriever import fields
from retriever.check import check
from toy_kind import TOY


@pytest.fixture
def toy_registered(monkeypatch):
    monkeypatch.setitem(fields.KINDS, "toy", TOY)  # the one registry line


def test_a_toy_kind_needs_one_module_and_one_registry_line(toy_registered, tmp_path):
    config = {
        "name": "t",
        "fields": [{"name": "near", "kind": "toy", "scale": 2}, {"name": "words", "kind": "bm25"}],
    }
    c = retriever.Collection.create(tmp_path / "t", config)
    c.add([{"id": "a", "text": "xx"}, {"id": "b", "text": "xxxxx"}, {"id": "c", "text": "x"}])
    c.add([{"id": "d", "text": "four"}], vectors={"near": [4.0]})
    [h] = c.search("xxx", k=2, fields="near")
    assert h.ids == ["a", "d"] and list(h.scores) == [-2.0, -2.0]
    assert c.search(np.array([5.0]), k=1, fields="near")[0].ids == ["b"]
    [fused] = c.search("xxxxx", k=4, fields=["near", "words"], params={"toy_depth": 3})
    assert fused.ids[0] == "b"
    with pytest.raises(retriever.InvalidRequest, match="'toy_depth' must be an integer >= 1"):
        c.search("x", fields="near", params={"toy_depth": 0})  # the kind's own request parameter, checked
    assert c.delete(["b"]) == 1
    again = retriever.Collection.open(c.path)
    assert again.config == c.config and again.config.field("near").scale == 2
    assert again.search(np.array([5.0]), k=1, fields="near")[0].ids == ["d"]
    rows = again.counts["rows"]  # 4, or 3 once the delete's segment was compacted
    assert check(c.path)["ok"] and check(c.path)["fields"]["near"] == {"documents": rows}
    assert again.info()["fields"]["near"] == {
        "kind": "toy",
        "documents": rows,
        "segments": len(again.segments),
    }


def test_a_kind_is_refused_until_registered_and_its_keys_are_its_own(toy_registered):
    with pytest.raises(retriever.InvalidConfig, match="scale must be"):
        retriever.CollectionConfig.from_dict(
            {"name": "t", "fields": [{"name": "n", "kind": "toy", "scale": 0}]}
        )
    with pytest.raises(retriever.InvalidConfig, match=r"\['scale'\] do not apply to a 'dense' field"):
        retriever.CollectionConfig.from_dict({"name": "t", "fields": [{"name": "n", "dim": 4, "scale": 2}]})


def test_unregistered_kind_is_a_config_error():
    with pytest.raises(retriever.InvalidConfig, match="kind 'toy' is not supported"):
        retriever.CollectionConfig.from_dict({"name": "t", "fields": [{"name": "n", "kind": "toy"}]})
