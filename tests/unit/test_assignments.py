"""Each node's own assignments (ext_pillar ``cluster``), from store records."""

from saltext.vmcluster.assignments import node_assignments, role

GIB = 1024 ** 3


def drbd(port, minor, *nodes):
    return {"nodes": [{"name": n, "address": f"10.0.0.{n[-1]}"} for n in nodes], "port": port, "minor": minor,
            "secret": f"s{port}"}


RECORDS = {
    "web1": {"name": "web1", "template": "file", "memory": 128, "vcpus": 1, "admin_state": "up", "nics": [],
             "tags": ["web"], "primary": "node1", "secondary": None, "disks": [{"size": GIB}], "created": 1.0},
    "db1": {"name": "db1", "template": "drbd", "memory": 512, "vcpus": 2, "admin_state": "down", "nics": [],
            "tags": [], "primary": "node2", "secondary": "node1", "created": 2.0,
            "disks": [{"size": GIB, "drbd": drbd(11000, 0, "node2", "node1")},
                      {"size": 2 * GIB, "drbd": drbd(11001, 1, "node2", "node1")}]},
    "db2": {"name": "db2", "template": "drbd", "memory": 512, "vcpus": 1, "admin_state": "up", "nics": [],
            "tags": [], "primary": "node2", "secondary": "node3", "created": 3.0,
            "disks": [{"size": GIB, "drbd": drbd(11002, 1, "node2", "node3", "node4")}]},  # replace-disks to node4
}


def test_a_node_gets_its_primaries_and_secondaries_with_role_spec_disks_and_admin_state():
    mine = node_assignments("node1", RECORDS)["instances"]
    assert sorted(mine) == ["db1", "web1"]
    assert mine["web1"] == {"role": "primary", "template": "file", "memory": 128, "vcpus": 1, "nics": [],
                            "tags": ["web"], "admin_state": "up", "primary": "node1", "secondary": None,
                            "disks": [{"index": 0, "size": GIB}]}
    assert mine["db1"]["role"] == "secondary"
    assert mine["db1"]["admin_state"] == "down"
    assert [d["drbd"]["minor"] for d in mine["db1"]["disks"]] == [0, 1]
    assert mine["db1"]["disks"][1] == {"index": 1, "size": 2 * GIB, "drbd": drbd(11001, 1, "node2", "node1")}


def test_no_other_nodes_instances_or_secrets():
    node3 = node_assignments("node3", RECORDS)["instances"]
    assert list(node3) == ["db2"]
    assert "s11000" not in repr(node3) and "s11001" not in repr(node3)
    assert "created" not in node3["db2"]
    assert node_assignments("node9", RECORDS) == {"instances": {}}


def test_a_drbd_peer_being_built_gets_the_resource():
    assert role("node4", RECORDS["db2"]) == "drbd-peer"
    assert node_assignments("node4", RECORDS)["instances"]["db2"]["disks"][0]["drbd"]["secret"] == "s11002"
    assert role("node4", RECORDS["web1"]) is None
