"""Tests of the cluster_vm execution module against libvirt's test:///default driver."""

import pytest
from salt.exceptions import CommandExecutionError, SaltInvocationError

import saltext.vmcluster.loaders.modules.cluster_vm as cluster_vm

libvirt = pytest.importorskip("libvirt")

from libvirt_fixtures import URI  # noqa: E402


@pytest.fixture
def configure_loader_modules():
    return {cluster_vm: {"__opts__": {"cluster_vm.uri": URI}, "__salt__": {"test.true": lambda: True}}}


def names_on(conn):
    return sorted(dom.name() for dom in conn.listAllDomains())


def define(name, **spec):
    spec.setdefault("disks", ["/srv/vm/disk.qcow2"])
    return cluster_vm.define(name, "128M", **spec)


def test_virtual():
    assert cluster_vm.__virtual__() == "cluster_vm"


@pytest.mark.parametrize(
    "missing, reason", [("libvirt", "libvirt-python"), ("saltext", "saltext.vmcluster package")]
)
def test_virtual_reports_missing(monkeypatch, missing, reason):
    monkeypatch.setattr(cluster_vm, "MISSING", missing)
    loaded, message = cluster_vm.__virtual__()
    assert loaded is False and reason in message


def test_define_start_shutdown_undefine(conn, name):
    created = define(name, vcpus=2, nics=["br0"], serial="/tmp/x.log")
    assert created["created"] is True and created["name"] == name
    assert cluster_vm.list_domains()[name] == "shutoff"
    assert cluster_vm.start(name) is True
    assert cluster_vm.start(name) is False
    assert cluster_vm.list_domains()[name] == "running"
    assert cluster_vm.info(name)["id"] is not None
    assert cluster_vm.reboot(name) is True
    assert cluster_vm.shutdown(name, timeout=5) == {"stopped": True, "forced": False}
    assert cluster_vm.shutdown(name) == {"stopped": False, "forced": False}
    assert cluster_vm.undefine(name) is True
    assert name not in names_on(conn)


def test_redefine_keeps_uuid(conn, name):
    first = define(name)
    second = define(name, vcpus=3)
    assert second == dict(first, created=False)
    assert cluster_vm.info(name)["vcpus"] == 3


def test_define_switches_autostart_off(conn, name):
    define(name)
    conn.lookupByName(name).setAutostart(1)
    cluster_vm.start(name)
    assert conn.lookupByName(name).autostart() == 0
    assert cluster_vm.info(name)["autostart"] is False


def test_shutdown_forces_after_timeout(conn, name, monkeypatch):
    define(name)
    cluster_vm.start(name)
    # A guest that ignores ACPI: the shutdown request does nothing.
    monkeypatch.setattr(libvirt.virDomain, "shutdown", lambda self, *args: 0)
    assert cluster_vm.shutdown(name, timeout=0) == {"stopped": True, "forced": True}
    assert cluster_vm.list_domains()[name] == "shutoff"


def test_destroy(name):
    define(name)
    assert cluster_vm.destroy(name) is False
    cluster_vm.start(name)
    assert cluster_vm.destroy(name) is True
    assert cluster_vm.list_domains()[name] == "shutoff"


def test_info(name):
    define(name, vcpus=2, nics=[{"bridge": "br0", "mac": "52:54:00:00:00:01"}], type="qemu")
    details = cluster_vm.info(name)
    assert details["state"] == "shutoff"
    assert (details["memory"], details["vcpus"], details["type"]) == (128, 2, "qemu")
    assert details["disks"][0]["path"] == "/srv/vm/disk.qcow2"
    assert details["nics"][0]["mac"] == "52:54:00:00:00:01"
    assert details["persistent"] is True and details["id"] is None


def test_console(name):
    define(name, vnc={"listen": "0.0.0.0", "port": 5905})
    details = cluster_vm.console(name)
    assert details["serial"] == {"type": "pty", "path": None}
    assert details["vnc"]["port"] == 5905 and details["vnc"]["host"]
    assert details["state"] == "shutoff"


def test_set_memory_and_vcpus(name):
    define(name, vcpus=2)
    assert cluster_vm.set_memory(name, "256M") == {"memory": 256, "applies": "now"}
    assert cluster_vm.set_memory(name, 64) == {"memory": 64, "applies": "now"}
    assert cluster_vm.set_vcpus(name, 4) == {"vcpus": 4, "applies": "now"}
    assert cluster_vm.set_vcpus(name, 1) == {"vcpus": 1, "applies": "now"}
    details = cluster_vm.info(name)
    assert (details["memory"], details["vcpus"]) == (64, 1)
    cluster_vm.start(name)
    assert cluster_vm.set_memory(name, "128M")["applies"] == "at next start"


def test_disk_info(name):
    define(name, disks=["/srv/vm/a.qcow2", {"path": "/dev/vg0/b", "format": "raw"}])
    disks = cluster_vm.disk_info(name)
    assert [(d["target"], d["path"], d["format"]) for d in disks] == [
        ("vda", "/srv/vm/a.qcow2", "qcow2"),
        ("vdb", "/dev/vg0/b", "raw"),
    ]
    # The test driver reports a fixed fake capacity; the real size is checked in integration.
    assert all(isinstance(d["virtual_size"], int) and d["virtual_size"] > 0 for d in disks)


def test_build_xml_touches_nothing(conn, name):
    before = names_on(conn)
    assert f"<name>{name}</name>" in cluster_vm.build_xml(name, "64M")
    assert names_on(conn) == before


def test_remove_stale(conn, name):
    running, stopped = f"{name}r", f"{name}s"
    define(running)
    define(stopped)
    cluster_vm.start(running)
    conn.lookupByName(stopped).setAutostart(1)
    try:
        report = cluster_vm.remove_stale(f"{running},{stopped},{name}")
        assert report == {"removed": [stopped], "running": [running], "absent": [name]}
        assert stopped not in names_on(conn)
        assert cluster_vm.list_domains()[running] == "running"
    finally:
        cluster_vm.destroy(running)
        cluster_vm.undefine(running)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda n: cluster_vm.define("../etc", "128M"), "name: invalid value"),
        (lambda n: cluster_vm.define(n, "lots"), "memory: invalid value"),
        (lambda n: cluster_vm.define(n, "64M", disks=["rel/path"]), "disk.path: invalid value"),
        (lambda n: cluster_vm.define(n, "64M", autostart=True), "spec.autostart: invalid value"),
        (lambda n: cluster_vm.shutdown(n, timeout=-1), "timeout: invalid value"),
        (lambda n: cluster_vm.set_memory(n, "1X"), "memory: invalid value"),
        (lambda n: cluster_vm.set_vcpus(n, 0), "vcpus: invalid value"),
        (lambda n: cluster_vm.remove_stale([n, "a;b"]), "domains: invalid value"),
        (lambda n: cluster_vm.migrate(n, "node2"), "target_uri: invalid value"),
        (lambda n: cluster_vm.migrate(n, "qemu+tcp://node2/system", pre_migrate="no.such"), "pre_migrate"),
        (lambda n: cluster_vm.migrate(n, "qemu+tcp://node2/system", bandwidth=0), "bandwidth"),
    ],
)
def test_bad_input_changes_nothing(conn, name, call, message):
    define(name)
    before = cluster_vm.info(name), names_on(conn)
    with pytest.raises(SaltInvocationError, match=message):
        call(name)
    assert (cluster_vm.info(name), names_on(conn)) == before


@pytest.mark.parametrize(
    "call",
    [cluster_vm.start, cluster_vm.info, cluster_vm.undefine, cluster_vm.console, cluster_vm.disk_info],
)
def test_missing_domain(call):
    with pytest.raises(CommandExecutionError, match="'nosuchvm' is not defined on test:///default"):
        call("nosuchvm")


def test_refusals(conn, name):
    define(name)
    with pytest.raises(CommandExecutionError, match="not running"):
        cluster_vm.reboot(name)
    with pytest.raises(CommandExecutionError, match="not running; live migration"):
        cluster_vm.migrate(name, "test:///default", pre_migrate="test.true")
    cluster_vm.start(name)
    with pytest.raises(CommandExecutionError, match="is running; stop it first"):
        cluster_vm.undefine(name)
    assert cluster_vm.list_domains()[name] == "running"


def test_migrate_failure_is_reported(name):
    """The test driver cannot migrate: the libvirt error comes back, the domain stays."""
    define(name)
    cluster_vm.start(name)
    with pytest.raises(CommandExecutionError, match="libvirt"):
        cluster_vm.migrate(name, "test:///default", copy_storage=True, pre_migrate=["test.true"])
    assert cluster_vm.list_domains()[name] == "running"


def test_define_and_start_in_one_call_then_release(conn, name):
    assert define(name, start=True) == {"name": name, "uuid": conn.lookupByName(name).UUIDString(),
                                        "created": True, "started": True}
    assert define(name, start=True)["started"] is False  # it runs already
    assert cluster_vm.list_domains()[name] == "running"
    assert cluster_vm.release(name, timeout=0) == {"state": "running", "forced": True}
    assert name not in names_on(conn)
    assert cluster_vm.release(name) == {"state": None, "forced": False}
    define(name)
    assert cluster_vm.release(name, timeout=5) == {"state": "shutoff", "forced": False}
    assert name not in names_on(conn)


def test_migrate_target_disks_by_order_must_name_every_disk(conn, name):
    define(name, disks=["/srv/vm/disk0.qcow2", "/srv/vm/disk1.qcow2"])
    cluster_vm.start(name)
    with pytest.raises(SaltInvocationError, match="target_disks: invalid value .* a list of 2 paths"):
        cluster_vm.migrate(name, "test:///default", copy_storage=True, target_disks=["/x/disk0.qcow2"])
    assert cluster_vm.list_domains()[name] == "running"
