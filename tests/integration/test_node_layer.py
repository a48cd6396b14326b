"""The node layer through Salt, as a master drives it: cluster_vm, cluster_disk and drbd on real nodes.

Real salt-master, minions, libvirtd and QEMU (see LAB.md); every call goes through
the master's LocalClient. Each test removes the domains and disks it made and
leaves every node running.
"""

import contextlib
import os

import pytest

NODES = ["node1", "node2", "node3"]
MEMORY = "64M"
DISK_SIZE = "64M"
PATTERN = "0xab"
NO_DRBD_REASON = "host kernel has no DRBD module; runs in the system tier"
TIMEOUT = 120


def _call(salt_client, node, fun, *args, **kwargs):
    """``(return, retcode)`` of ``fun`` run on ``node`` through the master."""
    replies = salt_client.cmd(node, fun, list(args), kwarg=kwargs, timeout=TIMEOUT, full_return=True)
    assert node in replies, f"{node} did not answer {fun}"
    return replies[node]["ret"], replies[node]["retcode"]


def _ok(salt_client, node, fun, *args, **kwargs):
    ret, retcode = _call(salt_client, node, fun, *args, **kwargs)
    assert retcode == 0, f"{fun} on {node}: {ret}"
    return ret


def _fails(salt_client, node, fun, *args, **kwargs):
    """The error text of a call that must fail."""
    ret, retcode = _call(salt_client, node, fun, *args, **kwargs)
    assert retcode != 0, f"{fun} on {node} succeeded: {ret}"
    return ret


def _state(salt_client, node, state, name, test=False, **kwargs):
    """The result of one state run with ``state.single`` on ``node``."""
    ret, _retcode = _call(salt_client, node, "state.single", state, name, test=test, **kwargs)
    assert isinstance(ret, dict), f"{state} on {node}: {ret}"
    (result,) = ret.values()
    return result


def _domains(salt_client, node):
    return _ok(salt_client, node, "cluster_vm.list_domains")


def _spec(lab, *disk_paths):
    return {"type": "kvm" if lab.accel == "kvm" else "qemu", "disks": list(disk_paths)}


def _qemu_io(salt_client, node, path, command):
    """Run one qemu-io command on ``path`` on ``node`` (the image must not be in use); it must succeed.

    qemu-io exits non-zero when a ``read -P`` finds other bytes than the pattern.
    """
    argv = ["qemu-io", "-f", "qcow2", "-c", command, path]
    result = _ok(salt_client, node, "cmd.run_all", argv, python_shell=False)
    assert result["retcode"] == 0, result


def _disk_sizes(salt_client, node, instance):
    """``{index: virtual size}`` of the disks of ``instance`` on ``node``."""
    found = _ok(salt_client, node, "cluster_disk.list_disks", instance)
    return {
        disk["index"]: _ok(salt_client, node, "cluster_disk.info", instance, disk["index"], disk["template"])["size"]
        for disk in found
    }


@pytest.fixture
def instance(salt_client):
    """``instance(name, template)`` returns ``name``; afterwards its domain and disk 0 go from every node."""
    made = []
    yield lambda name, template: made.append((name, template)) or name
    results = [_state(salt_client, node, "cluster_vm.absent", name, timeout=0) for name, _ in made for node in NODES]
    results += [
        _state(salt_client, node, "cluster_disk.absent", f"{name}-disk0", instance=name, index=0, template=template)
        for name, template in made
        for node in NODES
    ]  # domains first: a shared disk goes only when no node runs it
    assert all(result["result"] is True for result in results), results


def test_file_instance_live_migrates_with_its_data(lab, salt_client, instance):
    name = instance("nl-mig", "file")
    source = _ok(salt_client, "node1", "cluster_disk.create", name, 0, DISK_SIZE, "file")
    _qemu_io(salt_client, "node1", source["path"], f"write -P {PATTERN} 0 1M")
    _ok(salt_client, "node1", "cluster_vm.define", name, MEMORY, **_spec(lab, source["path"]))
    assert _ok(salt_client, "node1", "cluster_vm.start", name) is True

    (disk,) = _ok(salt_client, "node1", "cluster_vm.disk_info", name)
    target = _ok(salt_client, "node2", "cluster_disk.create", name, 0, f"{disk['virtual_size']}B", "file")
    assert target["size"] == disk["virtual_size"] == source["size"]
    assert target["path"] != source["path"]  # each lab node has its own storage directory
    moved = _ok(
        salt_client, "node1", "cluster_vm.migrate", name, lab.node("node2").libvirt_uri,
        copy_storage=True, migrate_uri="tcp://127.0.0.1", target_disks={disk["target"]: target["path"]},
    )  # fmt: skip

    assert moved["removed_disks"] == [source["path"]] and moved["left_disks"] == []
    assert _domains(salt_client, "node2")[name] == "running"
    assert name not in _domains(salt_client, "node1")
    info = _ok(salt_client, "node2", "cluster_vm.info", name)
    assert info["autostart"] is False and info["persistent"] is True
    assert [d["path"] for d in info["disks"]] == [target["path"]]
    assert _ok(salt_client, "node1", "cluster_disk.exists", name, 0, "file") is False
    assert not os.path.exists(source["path"]) and not os.path.exists(os.path.dirname(source["path"]))

    # a migration that fails (the target cannot listen on that address) leaves no disk behind there
    failed = _fails(
        salt_client, "node2", "cluster_vm.migrate", name, lab.node("node1").libvirt_uri, copy_storage=True,
        migrate_uri="tcp://192.0.2.1", target_disks=[source["path"]], create_target_disks=True,
    )  # fmt: skip
    assert "libvirt" in failed and _domains(salt_client, "node2")[name] == "running"
    assert not os.path.exists(source["path"])

    # and back in one call: the source node makes the target's image through the target's libvirt
    back = _ok(
        salt_client, "node2", "cluster_vm.migrate", name, lab.node("node1").libvirt_uri, copy_storage=True,
        migrate_uri="tcp://127.0.0.1", target_disks=[source["path"]], create_target_disks=True,
    )  # fmt: skip
    assert back["created_disks"] == [source["path"]] and back["removed_disks"] == [target["path"]]
    assert _domains(salt_client, "node1")[name] == "running" and name not in _domains(salt_client, "node2")
    assert _disk_sizes(salt_client, "node1", name) == {0: source["size"]}
    assert not os.path.exists(os.path.dirname(target["path"]))  # the instance's folder went with its disk

    _ok(salt_client, "node1", "cluster_vm.destroy", name)
    _qemu_io(salt_client, "node1", source["path"], f"read -P {PATTERN} 0 1M")
    _qemu_io(salt_client, "node1", source["path"], "read -P 0 1M 1M")  # and nothing else was written


def test_sharedfile_instance_restarts_elsewhere_and_the_stale_copy_is_removed(lab, salt_client, instance):
    name = instance("nl-shared", "sharedfile")
    disk = _ok(salt_client, "node1", "cluster_disk.create", name, 0, DISK_SIZE, "sharedfile")
    spec = _spec(lab, disk["path"])
    _ok(salt_client, "node1", "cluster_vm.define", name, MEMORY, **spec)
    _ok(salt_client, "node1", "cluster_vm.start", name)

    node1 = lab.node("node1")
    node1.kill()
    try:
        _ok(salt_client, "node2", "cluster_vm.define", name, MEMORY, **spec)
        assert _ok(salt_client, "node2", "cluster_vm.start", name) is True
    finally:
        node1.start()
        lab.wait_ready(["node1"])

    assert _domains(salt_client, "node1")[name] == "shutoff"  # the crashed node's stale copy
    assert _ok(salt_client, "node1", "cluster_vm.info", name)["autostart"] is False
    error = _fails(salt_client, "node1", "cluster_vm.start", name)
    assert 'Failed to get "write" lock' in error  # QEMU refuses a second writer of the image
    assert _domains(salt_client, "node1")[name] == "shutoff"

    report = _ok(salt_client, "node1", "cluster_vm.remove_stale", [name])
    assert report == {"removed": [name], "running": [], "absent": []}
    assert name not in _domains(salt_client, "node1")
    assert _domains(salt_client, "node2")[name] == "running"


def _converges(salt_client, node, state, name, observe, **kwargs):
    """test=True plans the change and changes nothing; the first run changes; the next ones do not."""
    before = observe()
    planned = _state(salt_client, node, state, name, test=True, **kwargs)
    assert planned["result"] is None and planned["changes"], planned
    assert observe() == before, f"{state} with test=True changed the node"
    first = _state(salt_client, node, state, name, **kwargs)
    assert first["result"] is True and first["changes"], first
    after = observe()
    assert after != before
    for test in (False, True):
        again = _state(salt_client, node, state, name, test=test, **kwargs)
        assert again["result"] is True and again["changes"] == {}, again
    assert observe() == after
    return first


def test_vm_and_disk_states_change_once_and_test_mode_changes_nothing(lab, salt_client, instance):
    name = instance("nl-states", "file")
    path = _ok(salt_client, "node1", "cluster_disk.path", name, 0, "file")
    disk = {"instance": name, "index": 0, "template": "file"}

    def sizes():
        return _disk_sizes(salt_client, "node1", name)

    def domain():
        return _domains(salt_client, "node1").get(name)

    created = _converges(salt_client, "node1", "cluster_disk.present", f"{name}-disk0", sizes, size=DISK_SIZE, **disk)
    assert created["changes"]["created"]["path"] == path and sizes() == {0: 64 << 20}
    _converges(salt_client, "node1", "cluster_disk.present", f"{name}-disk0", sizes, size="128M", **disk)
    assert sizes() == {0: 128 << 20}

    _converges(salt_client, "node1", "cluster_vm.running", name, domain, spec={"memory": MEMORY, **_spec(lab, path)})
    assert domain() == "running"
    stopped = _converges(salt_client, "node1", "cluster_vm.stopped", name, domain, timeout=0)
    assert stopped["changes"]["forced"] is True and domain() == "shutoff"  # no guest OS answers ACPI
    _converges(salt_client, "node1", "cluster_vm.running", name, domain)
    _converges(salt_client, "node1", "cluster_vm.absent", name, domain, timeout=0)
    assert domain() is None

    _converges(salt_client, "node1", "cluster_disk.absent", f"{name}-disk0", sizes, **disk)
    assert sizes() == {}


def _drbd_resource(name):
    return {
        "nodes": [
            {"name": "node1", "address": "127.0.0.1", "disk": f"/dev/vmc-nl/{name}"},
            {"name": "node2", "address": "127.0.0.2", "disk": f"/dev/vmc-nl/{name}"},
        ],
        "port": 7789,
        "minor": 0,
        "secret": "nl-s3cret",
    }


def test_drbd_resource_file_changes_once_and_test_mode_changes_nothing(salt_client):
    """resource_present with up=False needs no kernel module: it only writes the resource file."""
    name = "nl-r0"
    resource = _drbd_resource(name)

    def config():
        return _ok(salt_client, "node1", "drbd.read_config", name)

    try:
        written = _converges(salt_client, "node1", "drbd.resource_present", name, config, up=False, **resource)
        assert written["changes"] == {"config": "written"}
        assert config() == _ok(salt_client, "node1", "drbd.render", name, **resource)
        assert _ok(salt_client, "node2", "drbd.read_config", name) is None  # each node has its own files
        moved = dict(resource, port=7790)
        rewritten = _converges(salt_client, "node1", "drbd.resource_present", name, config, up=False, **moved)
        assert rewritten["changes"] == {"config": "written"} and "7790" in config()
    finally:
        _ok(salt_client, "node1", "drbd.remove_config", name)


@pytest.mark.system
def test_drbd_resource_up_and_absent(salt_client):
    kernel = _ok(salt_client, "node1", "grains.get", "cluster_node:drbd:kernel")
    if not kernel:
        pytest.skip(NO_DRBD_REASON)
    name = "nl-r1"
    backing = _ok(salt_client, "node1", "cmd.run", ["mktemp", "/tmp/nl-r1.XXXXXX"], python_shell=False)
    _ok(salt_client, "node1", "cmd.run", ["truncate", "-s", DISK_SIZE, backing], python_shell=False)
    loop = _ok(salt_client, "node1", "cmd.run", ["losetup", "--find", "--show", backing], python_shell=False)
    resource = _drbd_resource(name)
    resource["nodes"][0]["disk"] = loop

    def status():
        return name in _ok(salt_client, "node1", "drbd.status"), _ok(salt_client, "node1", "drbd.read_config", name)

    try:
        _ok(salt_client, "node1", "drbd.write_config", name, **resource)
        _ok(salt_client, "node1", "drbd.create_md", name)
        up = _converges(salt_client, "node1", "drbd.resource_present", name, status, **resource)
        assert up["changes"] == {"up": True}
        down = _converges(salt_client, "node1", "drbd.resource_absent", name, status)
        assert down["changes"] == {"down": True, "config": "removed"} and status() == (False, None)
    finally:
        _state(salt_client, "node1", "drbd.resource_absent", name)
        _ok(salt_client, "node1", "cmd.run", ["losetup", "-d", loop], python_shell=False)
        _ok(salt_client, "node1", "file.remove", backing)


def _storage_listing(lab, node):
    """Every file and folder in ``node``'s storage directories (file and sharedfile)."""
    return sorted(
        os.path.join(root, entry)
        for top in lab.node(node).storage.values()
        for root, dirs, files in os.walk(top)
        for entry in dirs + files
    )


@contextlib.contextmanager
def _nothing_created(lab, salt_client, node="node1"):
    """The block leaves ``node``'s domains and storage directories as they were."""
    before = _domains(salt_client, node), _storage_listing(lab, node)
    yield
    assert (_domains(salt_client, node), _storage_listing(lab, node)) == before


BAD_CALLS = {
    "instance-semicolon": ("cluster_disk.create", ["nl;x", 0, DISK_SIZE, "file"], {}, "instance: invalid value 'nl;x'"),
    "instance-slash": ("cluster_disk.create", ["nl/x", 0, DISK_SIZE, "sharedfile"], {}, "instance: invalid value"),
    "unknown-template": ("cluster_disk.create", ["nl-x", 0, DISK_SIZE, "zfs"], {}, "template: invalid value 'zfs'"),
    "size-unit": ("cluster_disk.create", ["nl-x", 0, "64Q", "file"], {}, "size: invalid value '64Q'"),
    "size-sectors": ("cluster_disk.create", ["nl-x", 0, "1000B", "file"], {}, "size: invalid value '1000B'"),
    "size-negative": ("cluster_disk.create", ["nl-x", 0, "-5G", "file"], {}, "size: invalid value '-5G'"),
    "name-semicolon": ("cluster_vm.define", ["nl;reboot", MEMORY], {}, "name: invalid value 'nl;reboot'"),
    "name-slash": ("cluster_vm.define", ["../nl", MEMORY], {}, "name: invalid value '../nl'"),
    "memory": ("cluster_vm.define", ["nl-x", "lots"], {}, "memory: invalid value 'lots'"),
    "disk-path": ("cluster_vm.define", ["nl-x", MEMORY], {"disks": ["/srv/../etc/x"]}, "disk.path: invalid value"),
    "target-uri": ("cluster_vm.migrate", ["nl-x", "node2; rm -rf /"], {}, "target_uri: invalid value"),
}


@pytest.mark.parametrize("fun, args, kwargs, message", BAD_CALLS.values(), ids=BAD_CALLS)
def test_bad_input_is_refused_naming_the_field_and_creates_nothing(lab, salt_client, fun, args, kwargs, message):
    with _nothing_created(lab, salt_client):
        assert message in _fails(salt_client, "node1", fun, *args, **kwargs)


BAD_DISK = {"instance": "nl-x", "index": 0, "size": "1G", "template": "file"}
BAD_STATES = {
    "disk-template": ("cluster_disk.present", "nl-x-disk0", dict(BAD_DISK, template="zfs"), "template:"),
    "disk-size": ("cluster_disk.present", "nl-x-disk0", dict(BAD_DISK, size="big"), "size:"),
    "vm-name": ("cluster_vm.running", "nl;x", {"spec": {"memory": MEMORY}}, "name:"),
    "vm-memory": ("cluster_vm.running", "nl-x", {"spec": {"memory": "0M"}}, "memory:"),
}


@pytest.mark.parametrize("state, name, kwargs, message", BAD_STATES.values(), ids=BAD_STATES)
@pytest.mark.parametrize("test", [False, True], ids=["run", "test"])
def test_bad_state_input_fails_naming_the_field_and_creates_nothing(
    lab, salt_client, state, name, kwargs, message, test
):
    with _nothing_created(lab, salt_client):
        result = _state(salt_client, "node1", state, name, test=test, **kwargs)
    assert result["result"] is False and message in result["comment"] and result["changes"] == {}
