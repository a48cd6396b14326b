"""Declared instances (pillar cluster:instances): validation with key paths, actions, verify's findings."""

import pytest

from saltext.vmcluster import config, declared
from saltext.vmcluster.names import ValidationError
from saltext.vmcluster.ops import health

GIB = 1024 ** 3


def pillar(**instances):
    return {"cluster": {"nodes": ["node1", "node2"], "instances": instances}}


def rec(name, memory=512, vcpus=1, disks=(GIB,), template="file", admin="up", primary="node1"):
    return {"name": name, "template": template, "memory": memory, "vcpus": vcpus, "admin_state": admin,
            "primary": primary, "secondary": None, "disks": [{"size": s} for s in disks], "nics": [], "tags": []}


def test_declarations_are_validated_with_defaults():
    cfg = config.load(pillar(web1={"memory": "512M", "disks": "1G"},
                             db1={"memory": 1024, "disks": ["1G", "2G"], "vcpus": 2, "template": "sharedfile",
                                  "nodes": "node2", "admin_state": "down", "tags": ["db", "prod"]}))
    assert cfg.instances["web1"] == declared.Declared("web1", memory=512, disks=(1024,))
    assert cfg.instances["db1"] == declared.Declared("db1", 1024, (1024, 2048), 2, "sharedfile", ("node2",),
                                                     "down", ("db", "prod"))
    assert config.load({"cluster": {"nodes": ["node1"]}}).instances == {}


@pytest.mark.parametrize("settings, field, fix", [
    ({"memory": "lots", "disks": "1G"}, "cluster:instances:web1:memory", "binary unit"),
    ({"disks": "1G"}, "cluster:instances:web1:memory", "declare the memory size"),
    ({"memory": "512M"}, "cluster:instances:web1:disks", "declare the disk sizes"),
    ({"memory": "512M", "disks": ["1G", "x"]}, "cluster:instances:web1:disks[1]", "binary unit"),
    ({"memory": "512M", "disks": "1G", "memroy": 1}, "cluster:instances:web1:memroy", "known keys: memory"),
    ({"memory": "512M", "disks": "1G", "template": "zfs"}, "cluster:instances:web1:template", "file, sharedfile"),
    ({"memory": "512M", "disks": "1G", "admin_state": "on"}, "cluster:instances:web1:admin_state", "up, down"),
    ({"memory": "512M", "disks": "1G", "nodes": "node7"}, "cluster:instances:web1:nodes", "not in cluster:nodes"),
    ({"memory": "512M", "disks": "1G", "template": "drbd", "nodes": "node1"}, "cluster:instances:web1:nodes",
     "primary:secondary"),
    ({"memory": "512M", "disks": "1G", "vcpus": 0}, "cluster:instances:web1:vcpus", "at least 1"),
    ("512M", "cluster:instances:web1", "as a mapping"),
])
def test_invalid_declarations_name_the_key_path_and_the_fix(settings, field, fix):
    with pytest.raises(ValidationError) as err:
        config.load(pillar(web1=settings))
    assert err.value.field == field
    assert fix in err.value.fix


def test_a_missing_instance_is_added_with_the_declared_spec():
    decl = declared.instance("db1", {"memory": "1G", "disks": ["10G", "1536M"], "template": "drbd",
                                     "nodes": "node1:node2", "admin_state": "down", "tags": ["db"]})
    (action,) = declared.actions(decl, None)
    assert action.verb == "add"
    assert action.kwargs == {"memory": "1G", "vcpus": 1, "disks": ["10G", "1536M"], "template": "drbd",
                             "nodes": "node1:node2", "tags": ["db"], "start": False}
    assert action.command("db1") == ("salt-run cluster.add db1 memory=1G vcpus=1 disks='[10G, 1536M]' "
                                     "template=drbd nodes=node1:node2 tags=db start=False")


def test_differences_become_modify_grow_start_stop_or_a_manual_fix():
    decl = declared.instance("web1", {"memory": "1G", "vcpus": 2, "disks": ["2G"]})
    verbs = [(a.verb, a.args, a.kwargs) for a in declared.actions(decl, rec("web1", admin="down"))]
    assert verbs == [("modify", (), {"memory": "1G", "vcpus": 2}), ("grow_disk", (0,), {"size": "2G"}),
                     ("start", (), None)]
    assert declared.actions(declared.instance("web1", {"memory": 512, "disks": "1G"}), rec("web1")) == []
    stop = declared.actions(declared.instance("web1", {"memory": 512, "disks": "1G", "admin_state": "down"}),
                            rec("web1"))
    assert [a.command("web1") for a in stop] == ["salt-run cluster.stop web1"]
    manual = declared.actions(declared.instance("web1", {"memory": 512, "disks": ["512M"], "template": "plain"}),
                              rec("web1"))
    assert [a.verb for a in manual] == [None, None]
    assert "does not change in place" in manual[0].detail and "never shrink" in manual[1].detail
    assert manual[0].command("web1").startswith("change the declaration of web1, or recreate")
    more = declared.actions(declared.instance("web1", {"memory": 512, "disks": ["1G", "2G"]}), rec("web1"))
    assert [a.command("web1") for a in more] == ["salt-run cluster.modify web1 add_disk=2G"]
    fewer = declared.actions(declared.instance("web1", {"memory": 512, "disks": "1G"}), rec("web1", disks=(GIB, GIB)))
    assert [a.verb for a in fewer] == [None] and "cluster.modify web1 remove_disk=1" in fewer[0].detail


def test_nodes_and_tags_only_place_and_label_at_creation():
    decl = declared.instance("web1", {"memory": 512, "disks": "1G", "nodes": "node2", "tags": ["x"]})
    assert declared.actions(decl, rec("web1", primary="node1")) == []


def test_verify_reports_declared_differences_and_undeclared_instances():
    cfg = config.load(pillar(web1={"memory": "512M", "disks": "1G"}, web2={"memory": "1G", "disks": "1G"},
                             web3={"memory": "512M", "disks": "1G", "admin_state": "down"}))
    records = {"web2": rec("web2"), "web3": rec("web3"), "old1": rec("old1", primary="node2")}
    rows = {(r["check"], r["instance"]): r for r in health.declared_findings(cfg.instances, records)}
    assert set(rows) == {("declared-missing", "web1"), ("declared-spec", "web2"), ("declared-admin-state", "web3"),
                         ("undeclared", "old1")}
    assert rows[("declared-missing", "web1")]["severity"] == "error"
    assert rows[("declared-missing", "web1")]["fix"] == "salt-run cluster.add web1 memory=512M vcpus=1 disks=1G"
    assert rows[("declared-spec", "web2")]["fix"] == "salt-run cluster.modify web2 memory=1G"
    assert rows[("declared-spec", "web2")]["node"] == "node1"
    assert rows[("declared-admin-state", "web3")]["fix"] == "salt-run cluster.stop web3"
    assert rows[("undeclared", "old1")]["severity"] == "warning"
    assert list(health.declared_findings({}, records)) == []  # nothing declared: nothing to compare
