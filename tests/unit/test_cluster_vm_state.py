"""Tests of the cluster_vm state module, driving the real execution module on test:///default."""

import pytest

import saltext.vmcluster.loaders.modules.cluster_vm as cluster_vm_mod
import saltext.vmcluster.loaders.states.cluster_vm as cluster_vm

# Shared fixtures: an open test:///default connection (it forgets its domains when the
# last connection closes) and a fresh domain name that is cleaned up afterwards.
from libvirt_fixtures import URI

libvirt = pytest.importorskip("libvirt")

SPEC = {"memory": "128M", "vcpus": 2, "disks": ["/srv/vm/disk.qcow2"], "nics": ["br0"]}

EXEC_FUNCTIONS = ("list_domains", "build_xml", "define", "start", "shutdown", "undefine")


@pytest.fixture
def opts():
    return {"cluster_vm.uri": URI, "test": False}


@pytest.fixture
def configure_loader_modules(opts):
    dunder_salt = {f"cluster_vm.{fun}": getattr(cluster_vm_mod, fun) for fun in EXEC_FUNCTIONS}
    return {
        cluster_vm_mod: {"__opts__": opts, "__salt__": {}},
        cluster_vm: {"__opts__": opts, "__salt__": dunder_salt},
    }


def domains():
    return cluster_vm_mod.list_domains()


def test_virtual():
    assert cluster_vm.__virtual__() == "cluster_vm"


def test_running_defines_and_starts_then_is_idempotent(name):
    ret = cluster_vm.running(name, spec=SPEC)
    assert ret == {
        "name": name,
        "result": True,
        "comment": f"{name} started",
        "changes": {"defined": {"old": False, "new": True}, "state": {"old": None, "new": "running"}},
    }
    assert domains()[name] == "running"
    again = cluster_vm.running(name, spec=SPEC)
    assert (again["result"], again["changes"]) == (True, {})


def test_running_starts_defined_domain(name):
    cluster_vm_mod.define(name, "64M")
    ret = cluster_vm.running(name)
    assert ret["changes"] == {"state": {"old": "shutoff", "new": "running"}}
    assert domains()[name] == "running"


def test_running_without_spec_fails(name):
    ret = cluster_vm.running(name)
    assert ret["result"] is False and "give spec" in ret["comment"]
    assert name not in domains()


def test_running_bad_spec_fails_clearly(name, opts):
    for test_mode in (True, False):
        opts["test"] = test_mode
        ret = cluster_vm.running(name, spec=dict(SPEC, memory="lots"))
        assert ret["result"] is False and ret["comment"].startswith("memory: invalid value")
        assert ret["changes"] == {}
        assert name not in domains()


def test_running_test_mode_changes_nothing(name, opts):
    opts["test"] = True
    ret = cluster_vm.running(name, spec=SPEC)
    assert ret["result"] is None and ret["changes"]["defined"] == {"old": False, "new": True}
    assert name not in domains()
    opts["test"] = False
    cluster_vm_mod.define(name, "64M")
    opts["test"] = True
    ret = cluster_vm.running(name)
    assert (ret["result"], ret["changes"]) == (None, {"state": {"old": "shutoff", "new": "running"}})
    assert domains()[name] == "shutoff"


def test_running_paused_fails(conn, name):
    cluster_vm_mod.define(name, "64M")
    cluster_vm_mod.start(name)
    conn.lookupByName(name).suspend()
    ret = cluster_vm.running(name)
    assert ret["result"] is False and "paused" in ret["comment"]


def test_stopped(name, opts):
    assert cluster_vm.stopped(name)["result"] is True
    cluster_vm.running(name, spec=SPEC)
    opts["test"] = True
    ret = cluster_vm.stopped(name)
    assert (ret["result"], ret["changes"]) == (None, {"state": {"old": "running", "new": "shutoff"}})
    assert domains()[name] == "running"
    opts["test"] = False
    ret = cluster_vm.stopped(name, timeout=5)
    assert ret["result"] is True and ret["changes"] == {"state": {"old": "running", "new": "shutoff"}}
    assert domains()[name] == "shutoff"
    again = cluster_vm.stopped(name)
    assert (again["result"], again["changes"]) == (True, {})


def test_absent(name, opts):
    cluster_vm.running(name, spec=SPEC)
    opts["test"] = True
    ret = cluster_vm.absent(name)
    assert ret["result"] is None
    assert ret["changes"] == {
        "defined": {"old": True, "new": False},
        "state": {"old": "running", "new": "shutoff"},
    }
    assert domains()[name] == "running"
    opts["test"] = False
    ret = cluster_vm.absent(name, timeout=5)
    assert ret["result"] is True and ret["comment"] == f"{name} shut down and undefined"
    assert ret["changes"]["defined"] == {"old": True, "new": False}
    assert name not in domains()
    again = cluster_vm.absent(name)
    assert (again["result"], again["changes"]) == (True, {})


def test_absent_of_stopped_domain(name):
    cluster_vm_mod.define(name, "64M")
    ret = cluster_vm.absent(name)
    assert ret["changes"] == {"defined": {"old": True, "new": False}}
    assert ret["comment"] == f"{name} undefined"


def test_execution_error_fails_state_with_partial_changes(name, monkeypatch):
    def refuse(self, *args):
        raise libvirt.libvirtError("no resources")

    monkeypatch.setattr(libvirt.virDomain, "create", refuse)
    ret = cluster_vm.running(name, spec=SPEC)
    assert ret["result"] is False and "no resources" in ret["comment"]
    assert ret["changes"] == {"defined": {"old": False, "new": True}}
    assert domains()[name] == "shutoff"
