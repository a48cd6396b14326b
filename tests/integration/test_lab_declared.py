"""Declared cluster on the lab: ext_pillar ``cluster`` on the nodes, pillar ``cluster:instances``
converged by ``salt-run state.orchestrate cluster.converge``, and ``cluster.verify`` comparing them."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

BIN = Path(sys.executable).parent
SMALL = {"memory": "64M", "disks": "64M"}
DECLARED = {
    "decl1": {**SMALL, "template": "file", "nodes": "node1", "tags": ["web"]},
    "decl2": {**SMALL, "disks": ["64M", "32M"], "template": "sharedfile", "vcpus": 2},
}


def op(runner, fun, *args, **kwargs):
    return runner.cmd(f"cluster.{fun}", list(args), kwarg=kwargs, print_event=False)


def node_pillar(salt_client, node):
    """``vmcluster:`` as ``node`` sees it after a pillar refresh."""
    assert salt_client.cmd(node, "saltutil.refresh_pillar", kwarg={"wait": True}, timeout=30)[node] is True
    return salt_client.cmd(node, "pillar.get", ["vmcluster"], kwarg={"unmask": True}, timeout=30)[node]


def test_ext_pillar_gives_each_node_its_own_instances(runner, store, salt_client, cleanup):
    cleanup.append("pil1")
    assert op(runner, "add", "pil1", template="file", nodes="node1", **SMALL)["state"] == "done"
    mine = node_pillar(salt_client, "node1")["instances"]
    assert mine["pil1"]["role"] == "primary"
    assert (mine["pil1"]["memory"], mine["pil1"]["admin_state"]) == (64, "up")
    assert mine["pil1"]["disks"] == [{"index": 0, "size": 64 * 1024 * 1024}]
    assert "pil1" not in node_pillar(salt_client, "node2").get("instances", {})

    assert op(runner, "remove", "pil1")["state"] == "done"
    assert "pil1" not in node_pillar(salt_client, "node1").get("instances", {})


@pytest.fixture
def declare(lab):
    """``declare(instances)`` writes them into the lab's pillar under cluster:instances; restored afterwards
    (request ``cleanup`` first: instances are removed after the pillar is valid again)."""
    path = lab.dir / "pillar" / "cluster.sls"
    original = path.read_text()

    def write(instances):
        data = yaml.safe_load(original)
        data["cluster"]["instances"] = instances
        path.write_text(yaml.safe_dump(data))

    yield write
    path.write_text(original)


def orchestrate(lab, test=False):
    """``salt-run state.orchestrate cluster.converge`` as the operator runs it (the CLI: runner verbs
    called from the orchestrate's states reach the nodes as the CLI's user): ``{state id: state return}``."""
    out = subprocess.run([str(BIN / "salt-run"), "-c", str(lab.dir), "state.orchestrate", "cluster.converge",
                          f"test={test}", "--out=json"], capture_output=True, text=True, timeout=600, check=False)
    (states,) = json.loads(out.stdout)["data"].values()
    assert isinstance(states, dict), states
    return {entry["__id__"]: entry for entry in states.values()}


def findings(runner):
    return {(row["check"], row["instance"]): row for row in op(runner, "verify")["data"]}


def test_orchestrate_converges_declared_instances(lab, runner, store, salt_client, cleanup, declare):
    cleanup += list(DECLARED)
    declare(DECLARED)
    missing = findings(runner)
    assert missing[("declared-missing", "decl1")]["fix"] == (
        "salt-run cluster.add decl1 memory=64M vcpus=1 disks=64M template=file nodes=node1 tags=web")
    assert ("declared-missing", "decl2") in missing

    dry = orchestrate(lab, test=True)
    assert dry["cluster-instance-decl1"]["result"] is None, dry["cluster-instance-decl1"]["comment"]
    assert dry["cluster-instance-decl1"]["changes"]["add"]["plan"][0].startswith("record_instance")
    assert store.instance("decl1") is None and store.instance("decl2") is None  # the dry run changed nothing

    first = orchestrate(lab)
    assert all(state["result"] is True for state in first.values()), first
    assert set(first["cluster-instance-decl2"]["changes"]) == {"add"}
    decl1, decl2 = store.instance("decl1"), store.instance("decl2")
    assert (decl1["primary"], decl1["template"], decl1["tags"], decl1["admin_state"]) == ("node1", "file", ["web"], "up")
    assert (decl2["template"], decl2["vcpus"], len(decl2["disks"]), decl2["admin_state"]) == ("sharedfile", 2, 2, "up")
    for name, record in (("decl1", decl1), ("decl2", decl2)):
        domains = salt_client.cmd(record["primary"], "cluster_vm.list_domains", timeout=30)[record["primary"]]
        assert domains[name] == "running"
    assert node_pillar(salt_client, "node1")["instances"]["decl1"]["role"] == "primary"

    again = orchestrate(lab)
    assert all(state["result"] is True and not state["changes"] for state in again.values()), again
    assert not [key for key in findings(runner) if key[0].startswith("declared") or key[0] == "undeclared"]

    declare({**DECLARED, "decl1": {**DECLARED["decl1"], "admin_state": "down", "memory": "96M"}})
    plan = orchestrate(lab, test=True)["cluster-instance-decl1"]
    assert plan["result"] is None and list(plan["changes"]) == ["modify", "stop"]
    assert store.instance("decl1")["admin_state"] == "up" and store.instance("decl1")["memory"] == 64
    assert {("declared-spec", "decl1"), ("declared-admin-state", "decl1")} <= set(findings(runner))

    changed = orchestrate(lab)["cluster-instance-decl1"]
    assert changed["result"] is True and list(changed["changes"]) == ["modify", "stop"]
    assert (store.instance("decl1")["admin_state"], store.instance("decl1")["memory"]) == ("down", 96)


def test_undeclared_instances_and_invalid_pillar(lab, runner, store, cleanup, declare):
    cleanup.append("loose1")
    assert op(runner, "add", "loose1", template="file", **SMALL)["state"] == "done"
    assert not [key for key in findings(runner) if key[0] == "undeclared"]  # nothing declared: nothing to say
    declare({"decl3": {**SMALL, "template": "file", "admin_state": "down"}})
    cleanup.append("decl3")
    assert findings(runner)[("undeclared", "loose1")]["severity"] == "warning"

    declare({"decl3": {**SMALL, "memroy": "1G"}})
    refused = orchestrate(lab)
    assert refused["cluster-pillar"]["result"] is False
    assert "cluster:instances:decl3:memroy" in refused["cluster-pillar"]["comment"]
    assert refused["cluster-instance-decl3"]["result"] is False  # its requisite failed: not run
    assert store.instance("decl3") is None
