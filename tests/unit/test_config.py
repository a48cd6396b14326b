from pathlib import Path

import pytest
import yaml

from saltext.vmcluster import config
from saltext.vmcluster.names import ValidationError


def test_nodes_as_list_or_mapping():
    listed = config.load({"cluster": {"nodes": ["node1", "node2"]}})
    mapped = config.load({"cluster": {"name": "prod", "nodes": {"node1": None, "node2": {"group": "rack2"}}}})
    assert sorted(listed.nodes) == ["node1", "node2"]
    assert listed.name == "cluster" and mapped.name == "prod"
    assert mapped.nodes["node2"].group == "rack2" and mapped.nodes["node1"].group == "default"


@pytest.mark.parametrize(
    "pillar, path",
    [
        ({}, "cluster"),
        ({"cluster": ["node1"]}, "cluster"),
        ({"cluster": {}}, "cluster:nodes"),
        ({"cluster": {"nodes": []}}, "cluster:nodes"),
        ({"cluster": {"nodes": "node1"}}, "cluster:nodes"),
        ({"cluster": {"nodes": ["bad;name"]}}, "cluster:nodes:bad;name"),
        ({"cluster": {"nodes": {"node1": {"grup": "x"}}}}, "cluster:nodes:node1:grup"),
        ({"cluster": {"nodes": {"node1": {"replication_address": "300.1.1.1"}}}}, "cluster:nodes:node1:replication_address"),
        ({"cluster": {"nodes": {"node1": ["x"]}}}, "cluster:nodes:node1"),
        ({"cluster": {"name": "a/b", "nodes": ["n1"]}}, "cluster:name"),
    ],
)
def test_errors_name_the_key_path(pillar, path):
    with pytest.raises(ValidationError) as err:
        config.load(pillar)
    assert err.value.field == path
    assert str(err.value).startswith(f"{path}:")


def test_unknown_key_lists_the_known_ones():
    with pytest.raises(ValidationError, match="known keys: group"):
        config.load({"cluster": {"nodes": {"node1": {"grup": "x"}}}})


def test_the_example_pillar_is_valid():
    example = yaml.safe_load((Path(__file__).resolve().parents[2] / "pillar" / "cluster.sls").read_text())
    cfg = config.load(example)
    assert sorted(cfg.nodes) == ["node1", "node2", "node3"]
    assert cfg.nodes["node3"].group == "rack2"
