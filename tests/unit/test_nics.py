"""The operator's nics= argument, default bridges and cluster-unique MACs (pure)."""

import os

import pytest

from saltext.vmcluster import domxml, nics, nodefacts
from saltext.vmcluster.names import ValidationError

VIRTIO = "virtio"


@pytest.mark.parametrize(
    ("value", "parsed"),
    [
        (None, None),
        ("none", []),
        ("", []),
        ([], []),
        ("br0", [{"bridge": "br0", "mac": None, "model": VIRTIO}]),
        ("br0,br1", [{"bridge": "br0", "mac": None, "model": VIRTIO}, {"bridge": "br1", "mac": None, "model": VIRTIO}]),
        ({"mac": "52-54-00-AB-CD-EF"}, [{"bridge": None, "mac": "52:54:00:ab:cd:ef", "model": VIRTIO}]),
        ([{"bridge": "br1", "model": "e1000"}, "br0"],
         [{"bridge": "br1", "mac": None, "model": "e1000"}, {"bridge": "br0", "mac": None, "model": VIRTIO}]),
    ],
)
def test_parse_takes_a_bridge_a_comma_list_or_mappings(value, parsed):
    assert nics.parse(value) == parsed


@pytest.mark.parametrize(
    ("value", "field", "fix"),
    [
        (3, "nics", "give a bridge (nics=br0)"),
        ([["br0"]], "nics[0]", "give a bridge"),
        ("br0;reboot", "nics[0].bridge", "a Linux interface name"),
        ([{"bridge": "br0", "ip": "10.0.0.2"}], "nics[0].ip", "known keys: bridge, mac, model"),
        ([{"mac": "01:00:5e:00:00:01"}], "nics[0].mac", "unicast"),
        ([{"mac": 41135085296}], "nics[0].mac", 'quote the MAC: mac: "52:54:00:12:34:56"'),
        ([{"bridge": "br0", "model": "ne2k"}], "nics[0].model", "use one of: virtio"),
    ],
)
def test_parse_errors_name_the_field_and_the_fix(value, field, fix):
    with pytest.raises(ValidationError) as err:
        nics.parse(value)
    assert err.value.field == field and fix in err.value.fix


def test_default_is_one_nic_on_the_node_s_bridge_or_none():
    assert nics.default("br0") == [{"bridge": "br0", "mac": None, "model": VIRTIO}]
    assert nics.default(None) == []


def test_generated_macs_are_deterministic_kvm_prefixed_and_skip_used_ones():
    first = nics.generate_mac("lab/web1/0", {})
    assert first == nics.generate_mac("lab/web1/0", {}) and first.startswith("52:54:00:")
    assert nics.generate_mac("lab/web1/1", {}) != first
    assert nics.generate_mac("other/web1/0", {}) != first  # another cluster: other MACs
    second = nics.generate_mac("lab/web1/0", {first: "web2 nic 0"})
    assert second != first and second.startswith("52:54:00:")
    domxml.Nic(bridge="br0", mac=second)  # libvirt's builder takes it


def test_complete_fills_bridges_and_macs_unique_in_the_cluster():
    records = {"web2": {"nics": [{"bridge": "br0", "mac": "52:54:00:00:00:01", "model": VIRTIO}]}, "db1": {}}
    used = nics.macs_in_use(records)
    assert used == {"52:54:00:00:00:01": "web2 nic 0"}
    done = nics.complete(nics.parse([{}, "br1", {"mac": "52:54:00:00:00:02"}]), "lab/web1", "br0", "node1", used)
    assert [n["bridge"] for n in done] == ["br0", "br1", "br0"]
    assert done[2]["mac"] == "52:54:00:00:00:02"
    assert len({n["mac"] for n in done} | set(used)) == 4
    assert done == nics.complete(nics.parse([{}, "br1", {"mac": "52:54:00:00:00:02"}]), "lab/web1", "br0", "node1", used)


@pytest.mark.parametrize(
    ("value", "bridge", "field", "fix"),
    [
        ([{"mac": "52:54:00:00:00:01"}], "br0", "nics[0].mac", "the MAC is taken by web2 nic 0"),
        ([{"mac": "52:54:00:00:00:09"}, {"mac": "52:54:00:00:00:09"}], "br0", "nics[1].mac",
         "taken by this instance's nics[0]"),
        ([{}], None, "nics[0].bridge",
         "node node1 has no default bridge: give the bridge (nics=br0), or declare cluster:nodes:node1:bridge"),
    ],
)
def test_complete_refuses_taken_macs_and_nics_without_a_bridge(value, bridge, field, fix):
    used = {"52:54:00:00:00:01": "web2 nic 0"}
    with pytest.raises(ValidationError) as err:
        nics.complete(nics.parse(value), "lab/web1", bridge, "node1", used)
    assert err.value.field == field and fix in err.value.fix


def test_node_bridges_are_the_interfaces_with_a_bridge_folder(tmp_path):
    for name, is_bridge in (("eth0", False), ("br0", True), ("vmclab1", True), ("lo", False)):
        os.makedirs(tmp_path / name / ("bridge" if is_bridge else "statistics"))
    assert nodefacts.bridges(str(tmp_path)) == ["br0", "vmclab1"]
