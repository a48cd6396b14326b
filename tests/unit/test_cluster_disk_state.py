"""The cluster_disk states over the real execution module (qemu-img; LVM on a loop device)."""

from unittest.mock import patch

import pytest
from test_cluster_disk import drbd_cmd, lvm_storage, salt_mods, storage, volume_group  # noqa: F401 (fixtures)
from test_cluster_disk import loader_globals, lvs, needs_qemu_img, tree

import saltext.vmcluster.loaders.modules.cluster_disk as cluster_disk
import saltext.vmcluster.loaders.states.cluster_disk as cluster_disk_state
from saltext.vmcluster.names import MIB

FUNCTIONS = ("size_bytes", "exists", "path", "info", "create", "grow", "remove")


@pytest.fixture
def configure_loader_modules(salt_mods, storage, drbd_cmd, tmp_path):
    mods = loader_globals(salt_mods, storage, drbd_cmd, tmp_path)
    fns = {f"cluster_disk.{name}": getattr(cluster_disk, name) for name in FUNCTIONS}
    return {**mods, cluster_disk_state: {"__salt__": fns, "__opts__": {"test": False}}}


def present(size="32M", template="file", **kwargs):
    return cluster_disk_state.present("web1-disk0", "web1", 0, size, template, **kwargs)


def absent(template="file"):
    return cluster_disk_state.absent("web1-disk0", "web1", 0, template)


def test_virtual():
    assert cluster_disk_state.__virtual__() == "cluster_disk"
    with patch.dict(cluster_disk_state.__salt__, clear=True):
        assert cluster_disk_state.__virtual__()[0] is False


@needs_qemu_img
def test_present_creates_grows_and_never_shrinks(storage):
    path = f"{storage['file']}/web1/disk0.qcow2"
    assert present() == {
        "name": "web1-disk0",
        "result": True,
        "changes": {"created": {"path": path, "size": 32 * MIB}},
        "comment": "disk 0 of web1 (file) created",
    }
    second = present()
    assert (second["result"], second["changes"]) == (True, {})
    assert second["comment"] == f"disk 0 of web1 (file) has {32 * MIB} bytes"
    grown = present("64M")
    assert grown["changes"] == {"size": {"old": 32 * MIB, "new": 64 * MIB}} and grown["result"] is True
    smaller = present("16M")
    assert (smaller["result"], smaller["changes"]) == (True, {})
    assert "larger than the declared 16777216; disks are never shrunk" in smaller["comment"]
    assert cluster_disk.info("web1", 0, "file")["size"] == 64 * MIB


@needs_qemu_img
def test_test_mode_changes_nothing(tmp_path, storage):
    before = tree(tmp_path)
    with patch.dict(cluster_disk_state.__opts__, {"test": True}):
        ret = present(fmt="raw")
    assert ret["result"] is None and ret["comment"] == "disk 0 of web1 (file) would be created"
    assert ret["changes"] == {"created": {"path": f"{storage['file']}/web1/disk0.raw", "size": 32 * MIB}}
    assert tree(tmp_path) == before
    present(fmt="raw")
    with patch.dict(cluster_disk_state.__opts__, {"test": True}):
        assert present("64M")["changes"] == {"size": {"old": 32 * MIB, "new": 64 * MIB}}
        assert absent()["changes"] == {"removed": f"{storage['file']}/web1/disk0.raw"}
    assert cluster_disk.info("web1", 0, "file")["size"] == 32 * MIB


@needs_qemu_img
def test_other_format_is_not_converted(storage):
    present(fmt="raw")
    ret = present(fmt="qcow2")
    assert ret["result"] is False and ret["changes"] == {}
    assert ret["comment"] == "disk 0 of web1 (file) is raw, declared qcow2; it is not converted"


@needs_qemu_img
def test_absent(storage):
    present()
    ret = absent()
    assert ret["changes"] == {"removed": f"{storage['file']}/web1/disk0.qcow2"} and ret["result"] is True
    again = absent()
    assert (again["result"], again["changes"], again["comment"]) == (True, {}, "disk 0 of web1 (file) is absent")


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"size": "lots"}, "size"), ({"template": "nfs"}, "template"), ({"template": "plain"}, "template")],
)
def test_bad_input_fails_without_changes(tmp_path, kwargs, field):
    before = tree(tmp_path)
    ret = present(**kwargs)
    assert ret["result"] is False and ret["changes"] == {} and ret["comment"].startswith(f"{field}: ")
    assert tree(tmp_path) == before


def test_failed_creation_reports_no_changes(storage):
    ret = present("100P")
    assert ret["result"] is False and ret["changes"] == {} and ret["comment"].startswith("size: ")


def test_plain_present_is_idempotent(lvm_storage):
    first = present("8M", "plain")
    assert first["changes"] == {"created": {"path": f"/dev/{lvm_storage}/web1.disk0", "size": 8 * MIB}}
    assert present("8M", "plain")["changes"] == {}
    assert present("6M", "plain")["changes"] == {}  # 8M after rounding to extents: nothing to grow
    assert present("12M", "plain")["changes"] == {"size": {"old": 8 * MIB, "new": 12 * MIB}}
    assert lvs(lvm_storage) == {"web1.disk0": 12 * MIB}
    assert absent("plain")["changes"] == {"removed": f"/dev/{lvm_storage}/web1.disk0"}
    assert absent("plain")["changes"] == {} and lvs(lvm_storage) == {}
