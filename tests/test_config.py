import pytest

from retriever import CollectionConfig, InvalidConfig, NotFound


def test_toml_round_trip(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(
        'name = "docs"\nmax_k = 50\n[[fields]]\nname = "dense"\nkind = "dense"\n'
        'model = "sentence-transformers/all-MiniLM-L6-v2"\nindex = "IVF16,PQ8"\nrescore = 40\nsearch = { nprobe = 4 }\n'
    )
    config = CollectionConfig.from_toml(path)
    assert config.field("dense").index == "IVF16,PQ8"
    assert config.field("dense").search == {"nprobe": 4}
    assert CollectionConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize(
    "data, message",
    [
        ({"name": "x", "fields": [{"name": "d", "dim": 4}], "colour": "red"}, "unknown key"),
        ({"name": "x", "fields": [{"name": "d", "dim": 4, "indx": "Flat"}]}, "unknown key"),
        ({"name": "x", "fields": [{"name": "d"}]}, "bring your own vectors"),
        ({"name": "x", "fields": [{"name": "d", "dim": 0}]}, "dim must be"),
        ({"name": "x", "fields": [{"name": "d", "dim": 4, "kind": "graph"}]}, "kind 'graph'"),
        ({"name": "x", "fields": [{"name": "d", "dim": 4, "metric": "cos"}]}, "metric"),
        ({"name": "x", "fields": [{"name": "d", "dim": 4, "search": {"nprob": 3}}]}, "unknown search parameter"),
        ({"name": "x", "fields": [{"name": "d", "dim": 4}, {"name": "d", "dim": 4}]}, "duplicate field"),
        ({"name": "x", "fields": []}, "no fields"),
        ({"name": "1bad", "fields": [{"name": "d", "dim": 4}]}, "collection name"),
        ({"name": "x", "fields": [{"name": "d", "dim": 4}], "max_k": -1}, "max_k"),
    ],
)
def test_bad_configs_are_refused_with_a_reason(data, message):
    with pytest.raises(InvalidConfig, match=message):
        CollectionConfig.from_dict(data)


def test_bad_toml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("name = ")
    with pytest.raises(InvalidConfig, match="not valid TOML"):
        CollectionConfig.from_toml(bad)
    with pytest.raises(InvalidConfig, match="does not exist"):
        CollectionConfig.from_toml(tmp_path / "nope.toml")


def test_unknown_field_lookup():
    config = CollectionConfig.from_dict({"name": "x", "fields": [{"name": "d", "dim": 4}]})
    with pytest.raises(NotFound, match="unknown field 'e'"):
        config.field("e")


def test_field_config_builds_the_kind_s_own_dataclass():
    from retriever import FieldConfig
    from retriever.fields.bm25 import Bm25Config
    from retriever.fields.dense import DenseConfig

    dense = FieldConfig(name="d", dim=4, index="HNSW32")
    assert type(dense) is DenseConfig and isinstance(dense, FieldConfig) and dense.rescore == 0
    assert type(FieldConfig(name="b", kind="bm25", k1=0.9)) is Bm25Config
    with pytest.raises(TypeError):
        FieldConfig(name="b", kind="bm25", dim=4)  # not a bm25 key
    with pytest.raises(InvalidConfig, match="kind 'graph'"):
        FieldConfig(name="g", kind="graph")

