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


def test_groups_defaults_and_fencing():
    cfg = config.load({"cluster": {
        "nodes": {"n1": {"group": "a", "fence": ["fence_ipmilan", "--ip", "192.0.2.1"]}, "n2": None},
        "groups": {"a": {"alloc_policy": "last_resort"}},
        "defaults": {"template": "sharedfile"},
    }})
    assert cfg.groups == {"a": "last_resort", "default": "preferred"}
    assert cfg.defaults == {"template": "sharedfile"}
    assert cfg.nodes["n1"].fence == ("fence_ipmilan", "--ip", "192.0.2.1")


@pytest.mark.parametrize(
    "cluster, path",
    [
        ({"nodes": ["n1"], "groups": {"g": {"alloc_policy": "often"}}}, "cluster:groups:g:alloc_policy"),
        ({"nodes": ["n1"], "defaults": {"template": "nfs"}}, "cluster:defaults:template"),
        ({"nodes": ["n1"], "defaults": {"os": "x"}}, "cluster:defaults:os"),
        ({"nodes": {"n1": {"fence": "fence_ipmilan -ip x"}}}, "cluster:nodes:n1:fence"),
    ],
)
def test_more_errors_name_the_key_path(cluster, path):
    with pytest.raises(ValidationError) as err:
        config.load({"cluster": cluster})
    assert err.value.field == path


def test_instance_policy_defaults_to_ganetis_and_can_be_changed():
    default = config.load({"cluster": {"nodes": ["n1"]}})
    assert default.ipolicy["min"] == {"memory": 128, "vcpus": 1, "disk": 1024}
    assert "memory: 64 is outside the instance policy (128 to 32768 MiB)" in default.policy_violation(64, 1, 2048)
    assert default.policy_violation(512, 2, 2048) is None
    lab = config.load({"cluster": {"nodes": ["n1"], "ipolicy": {"min": {"memory": "32M", "disk": "16M"},
                                                                  "max": {"vcpus": 4}, "vcpu_ratio": 2}}})
    assert lab.policy_violation(64, 1, 256) is None
    assert lab.policy_violation(64, 6, 256).startswith("vcpus: 6 is outside")
    assert lab.ipolicy["vcpu_ratio"] == 2.0


@pytest.mark.parametrize(
    "ipolicy, path",
    [
        ({"min": {"memory": "x"}}, "cluster:ipolicy:min:memory"),
        ({"min": {"cpus": 1}}, "cluster:ipolicy:min:cpus"),
        ({"minimum": {}}, "cluster:ipolicy:minimum"),
        ({"std": {"memory": "64G"}}, "cluster:ipolicy:std:memory"),
    ],
)
def test_instance_policy_errors_name_the_key_path(ipolicy, path):
    with pytest.raises(ValidationError) as err:
        config.load({"cluster": {"nodes": ["n1"], "ipolicy": ipolicy}})
    assert err.value.field == path


def test_bridges_per_node_with_a_cluster_default_and_the_os_image():
    cfg = config.load({"cluster": {
        "nodes": {"n1": {"bridge": "br-vm"}, "n2": None},
        "defaults": {"bridge": "br0", "image": "/var/lib/vmcluster/images/debian-12.qcow2"},
    }})
    assert (cfg.bridge_of("n1"), cfg.bridge_of("n2")) == ("br-vm", "br0")
    assert cfg.defaults["image"] == "/var/lib/vmcluster/images/debian-12.qcow2"
    assert config.load({"cluster": {"nodes": ["n1"]}}).bridge_of("n1") is None


@pytest.mark.parametrize(
    "cluster, path, fix",
    [
        ({"nodes": {"n1": {"bridge": "br0;reboot"}}}, "cluster:nodes:n1:bridge", "a Linux interface name such as br0"),
        ({"nodes": {"n1": {"bridge": "a-very-long-bridge"}}}, "cluster:nodes:n1:bridge", "use 1-15 letters"),
        ({"nodes": ["n1"], "defaults": {"bridge": ""}}, "cluster:defaults:bridge", "use 1-15 letters"),
        ({"nodes": ["n1"], "defaults": {"image": "images/debian.qcow2"}}, "cluster:defaults:image", "absolute"),
        ({"nodes": ["n1"], "defaults": {"image": "/img/$(reboot).qcow2"}}, "cluster:defaults:image",
         "no spaces or shell metacharacters"),
        ({"nodes": ["n1"], "defaults": {"image": "/img/a b.qcow2"}}, "cluster:defaults:image", "shell metacharacters"),
        ({"nodes": ["n1"], "defaults": {"image": "/img/../etc/shadow.raw"}}, "cluster:defaults:image", "no '..'"),
        ({"nodes": ["n1"], "defaults": {"image": "/img/debian.iso"}}, "cluster:defaults:image", "*.qcow2 (qcow2)"),
        ({"nodes": ["n1"], "defaults": {"template": "lvm"}}, "cluster:defaults:template", "use one of: file"),
        ({"nodes": ["n1"], "defaults": {"nic": "br0"}}, "cluster:defaults:nic", "known keys: template, image, bridge"),
    ],
)
def test_bridge_and_image_errors_name_the_key_path_and_the_fix(cluster, path, fix):
    with pytest.raises(ValidationError) as err:
        config.load({"cluster": cluster})
    assert err.value.field == path and fix in err.value.fix
