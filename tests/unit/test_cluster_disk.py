"""The cluster_disk execution module with Salt's real ``cmd`` and ``lvm`` modules.

file/sharedfile run the real qemu-img in a temporary directory. plain and drbd
run the real LVM userspace on a loop device in a volume group of their own,
with a private LVM_SYSTEM_DIR whose lvm.conf switches activation off where
the kernel has no device-mapper (see LAB.md). DRBD commands go to a recorder;
the written resource file is checked with a real ``drbdadm -d`` dry run.
"""

import os
import re
import shutil
import subprocess
import time
import uuid
from unittest.mock import patch

import pytest
import salt.config
import salt.loader
from salt.exceptions import CommandExecutionError, SaltInvocationError

import saltext.vmcluster.loaders.modules.cluster_disk as cluster_disk
import saltext.vmcluster.loaders.modules.drbd as drbd_mod
from saltext.vmcluster import disks
from saltext.vmcluster.names import GIB, MIB

NODE = os.uname().nodename
HAS_DM = os.path.exists("/dev/mapper/control")
NO_DM = "host kernel has no device-mapper; runs in the system tier"
needs_qemu_img = pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-img is not installed")
LVM_CONF = """\
global {{
    activation = {activation}
}}
devices {{
    obtain_device_list_from_udev = 0
    filter = [ "a|^{device}$|", "r|.*|" ]
}}
"""


@pytest.fixture(scope="session")
def salt_mods(tmp_path_factory):
    """Salt's real execution modules (``cmd.*``, ``lvm.*``) as a minion loads them."""
    opts = salt.config.DEFAULT_MINION_OPTS.copy()
    opts.update(
        cachedir=str(tmp_path_factory.mktemp("cache")),
        file_client="local",
        grains={"kernel": "Linux", "os": "Debian", "os_family": "Debian", "osfinger": "Debian-12"},
    )
    return salt.loader.minion_mods(opts, whitelist=["cmdmod", "linux_lvm"])


def _sh(*argv):
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture(scope="session")
def volume_group(tmp_path_factory):
    """A fresh VG on a loop device, seen through a private LVM_SYSTEM_DIR; all removed afterwards."""
    if os.geteuid() != 0 or shutil.which("losetup") is None or shutil.which("lvm") is None:
        pytest.skip("needs root, losetup and lvm2 for a loop-device volume group")
    root = tmp_path_factory.mktemp("lvm")
    image = root / "pv.img"
    with open(image, "wb") as handle:
        handle.truncate(256 * MIB)
    try:
        device = _sh("losetup", "-f", "--show", str(image))
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"loop devices are unavailable: {exc.stderr.strip()}")
    (root / "etc").mkdir()
    (root / "etc" / "lvm.conf").write_text(LVM_CONF.format(device=device, activation=int(HAS_DM)))
    saved = os.environ.get("LVM_SYSTEM_DIR")
    os.environ["LVM_SYSTEM_DIR"] = str(root / "etc")
    vg = f"vmct{uuid.uuid4().hex[:10]}"
    try:
        _sh("pvcreate", "-q", device)
        _sh("vgcreate", "-q", vg, device)
        yield vg
    finally:
        subprocess.run(["vgremove", "-q", "-y", vg], check=False, capture_output=True)
        subprocess.run(["pvremove", "-q", "-y", device], check=False, capture_output=True)
        subprocess.run(["losetup", "-d", device], check=False)
        if saved is None:
            del os.environ["LVM_SYSTEM_DIR"]
        else:
            os.environ["LVM_SYSTEM_DIR"] = saved


def lvs(vg):
    """``{lv: bytes}`` of the VG, read with the LVM tools themselves."""
    out = _sh("lvs", "--noheadings", "--units", "b", "--nosuffix", "-o", "lv_name,lv_size", vg)
    return {name: int(size) for name, size in (line.split() for line in out.splitlines())}


class FakeCmd:
    """``cmd.run_all`` of the drbd module: records the argument lists, fails on ``fail``."""

    def __init__(self):
        self.calls = []
        self.fail = None

    def __call__(self, argv, python_shell=True):
        assert isinstance(argv, list) and python_shell is False
        self.calls.append(argv)
        if self.fail in argv:
            return {"retcode": 10, "stdout": "", "stderr": f"{self.fail}: failed"}
        return {"retcode": 0, "stdout": "", "stderr": ""}


@pytest.fixture
def drbd_cmd():
    return FakeCmd()


@pytest.fixture
def storage(tmp_path):
    (tmp_path / "local").mkdir()
    (tmp_path / "shared").mkdir()
    return {"file": str(tmp_path / "local"), "sharedfile": str(tmp_path / "shared")}


def loader_globals(salt_mods, storage, drbd_cmd, tmp_path):
    """Globals of cluster_disk (real ``cmd``/``lvm``, the drbd module) and of drbd (recorded commands)."""
    real = {name: salt_mods[name] for name in salt_mods if name.startswith("lvm.") or name == "cmd.run_all"}
    drbd_fns = {
        f"drbd.{name}": getattr(drbd_mod, name)
        for name in ("render", "write_config", "read_config", "remove_config", "create_md", "up", "down")
    }
    return {
        cluster_disk: {"__opts__": {"vmcluster": {"storage": storage}}, "__salt__": {**real, **drbd_fns}},
        drbd_mod: {"__salt__": {"cmd.run_all": drbd_cmd}, "__opts__": {"drbd.config_dir": str(tmp_path / "drbd.d")}},
    }


@pytest.fixture
def configure_loader_modules(salt_mods, storage, drbd_cmd, tmp_path):
    return loader_globals(salt_mods, storage, drbd_cmd, tmp_path)


@pytest.fixture
def lvm_storage(storage, volume_group):
    storage.update(plain=volume_group, drbd=volume_group)
    yield volume_group
    left = lvs(volume_group)
    for lv in left:
        _sh("lvremove", "-q", "-y", f"{volume_group}/{lv}")
    assert left == {}, "the test left LVs behind"


def tree(path):
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def test_virtual(monkeypatch):
    assert cluster_disk.__virtual__() == "cluster_disk"
    monkeypatch.setattr(cluster_disk, "MISSING", "saltext")
    assert cluster_disk.__virtual__() == (False, "cluster_disk needs the saltext.vmcluster package (saltext is missing)")


def test_every_function_has_a_cli_example():
    public = [
        f for n, f in vars(cluster_disk).items()
        if callable(f) and not n.startswith("_") and getattr(f, "__module__", None) == cluster_disk.__name__
    ]
    assert len(public) == 12
    for func in public:
        assert f"salt node1 cluster_disk.{func.__name__}" in func.__doc__, func.__name__


# --- file and sharedfile: real qemu-img -------------------------------------


@needs_qemu_img
@pytest.mark.parametrize("template", ["file", "sharedfile"])
@pytest.mark.parametrize("fmt", ["qcow2", "raw"])
def test_file_life_cycle(storage, template, fmt):
    where = storage[template]
    path = f"{where}/web1/disk0.{fmt}"
    assert cluster_disk.exists("web1", 0, template) is False
    assert cluster_disk.path("web1", 0, template, fmt) == path
    created = cluster_disk.create("web1", 0, "64M", template, fmt=fmt)
    assert created == {
        "instance": "web1", "index": 0, "template": template, "path": path,
        "size": 64 * MIB, "format": fmt, "allocated": created["allocated"],
    }
    assert cluster_disk.exists("web1", 0, template) is True
    assert cluster_disk.path("web1", 0, template) == path  # found, whatever fmt says
    assert cluster_disk.grow("web1", 0, template, "128M") == {"old": 64 * MIB, "new": 128 * MIB}
    assert cluster_disk.grow("web1", 0, template, "128M") == {"old": 128 * MIB, "new": 128 * MIB}
    assert cluster_disk.info("web1", 0, template)["size"] == 128 * MIB
    assert sorted(os.listdir(where)) == ["web1"] and os.listdir(f"{where}/web1") == [f"disk0.{fmt}"]
    assert cluster_disk.remove("web1", 0, template) is True
    assert cluster_disk.remove("web1", 0, template) is False
    assert os.listdir(where) == []
    with pytest.raises(CommandExecutionError, match=f"^disk 0 of web1 \\({template}\\) does not exist$"):
        cluster_disk.info("web1", 0, template)


def _cmdline(pid):
    """The command line of process ``pid``; empty once it exited (a zombie has none)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read()
    except OSError:
        return b""


@needs_qemu_img
def test_export_and_import_copy_the_guest_data(storage, tmp_path, monkeypatch):
    """qemu-nbd serves a qcow2 disk read-only, qemu-img writes it into a raw disk of the same size."""
    monkeypatch.setitem(cluster_disk.__opts__, "cachedir", str(tmp_path / "cache"))
    source = cluster_disk.create("web1", 0, "64M", "file")
    _sh("qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 1M 3M", source["path"])
    target = cluster_disk.create("web1", 0, disks.exact_size(source["size"]), "sharedfile", fmt="raw")
    served = cluster_disk.export("web1", 0, "file", "127.0.0.1")
    assert served["uri"].startswith("nbd://127.0.0.1:") and served["uri"].endswith("/web1.disk0")
    assert cluster_disk.import_from("web1", 0, "sharedfile", served["uri"])["size"] == 64 * MIB
    _sh("qemu-img", "compare", "-f", "qcow2", "-F", "raw", source["path"], target["path"])
    pid = int((tmp_path / "cache" / "cluster_disk" / "exports" / "web1.disk0.pid").read_text())
    deadline = time.monotonic() + 30  # the server leaves with its client, a moment after it (a loaded host)
    while _cmdline(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert cluster_disk.unexport("web1", 0, "file") is False  # the server left with its client
    again = cluster_disk.export("web1", 0, "file", "127.0.0.1")
    assert cluster_disk.unexport("web1", 0, "file") is True
    with pytest.raises(CommandExecutionError, match="qemu-img convert"):
        cluster_disk.import_from("web1", 0, "sharedfile", again["uri"])
    with pytest.raises(SaltInvocationError, match="^uri: invalid value 'tcp://x'"):
        cluster_disk.import_from("web1", 0, "sharedfile", "tcp://x")
    with pytest.raises(SaltInvocationError, match="address"):
        cluster_disk.export("web1", 0, "file", "not an address")


@needs_qemu_img
def test_exact_size_destination_matches_qemu_img(storage):
    source = cluster_disk.create("web1", 0, "1G", "file")
    odd = GIB + 7 * 512
    cluster_disk.grow("web1", 0, "file", f"{odd}B")
    size = cluster_disk.info("web1", 0, "file")["size"]
    assert size == odd
    dest = cluster_disk.create("web1", 1, f"{size}B", "sharedfile", fmt="raw")
    real = _sh("qemu-img", "info", "--output=json", "-f", "raw", dest["path"])
    assert f'"virtual-size": {odd},' in real and source["path"] != dest["path"]
    assert cluster_disk.size_bytes(f"{size}B") == odd


@needs_qemu_img
def test_list_disks(storage):
    cluster_disk.create("web1", 0, "16M", "file")
    cluster_disk.create("web1", 1, "16M", "file", fmt="raw")
    cluster_disk.create("db1", 0, "16M", "sharedfile")
    open(storage["file"] + "/web1/notes.txt", "w").close()
    assert cluster_disk.list_disks() == [
        {"instance": "db1", "index": 0, "template": "sharedfile", "path": f"{storage['sharedfile']}/db1/disk0.qcow2", "format": "qcow2"},
        {"instance": "web1", "index": 0, "template": "file", "path": f"{storage['file']}/web1/disk0.qcow2", "format": "qcow2"},
        {"instance": "web1", "index": 1, "template": "file", "path": f"{storage['file']}/web1/disk1.raw", "format": "raw"},
    ]
    assert [d["index"] for d in cluster_disk.list_disks("web1")] == [0, 1]
    assert cluster_disk.list_disks("nobody") == []


@needs_qemu_img
def test_create_refuses_an_existing_disk(storage):
    cluster_disk.create("web1", 0, "16M", "file")
    with pytest.raises(CommandExecutionError, match="already exists"):
        cluster_disk.create("web1", 0, "32M", "file", fmt="raw")
    assert cluster_disk.info("web1", 0, "file")["size"] == 16 * MIB


@needs_qemu_img
def test_grow_never_shrinks(storage):
    cluster_disk.create("web1", 0, "32M", "file")
    with pytest.raises(SaltInvocationError, match="^size: .*never shrinks"):
        cluster_disk.grow("web1", 0, "file", "16M")
    assert cluster_disk.info("web1", 0, "file")["size"] == 32 * MIB


@needs_qemu_img
def test_qemu_img_failure_leaves_nothing(storage, tmp_path):
    def failing(argv, python_shell=True):
        return {"retcode": 1, "stdout": "", "stderr": "qemu-img: disk full\n"}

    before = tree(tmp_path)
    with patch.dict(cluster_disk.__salt__, {"cmd.run_all": failing}):
        with pytest.raises(CommandExecutionError, match="^qemu-img create .* failed \\(1\\): qemu-img: disk full$"):
            cluster_disk.create("web1", 0, "16M", "file")
    assert tree(tmp_path) == before


@needs_qemu_img
def test_broken_image_is_reported(storage):
    os.mkdir(f"{storage['file']}/web1")
    with open(f"{storage['file']}/web1/disk0.qcow2", "w") as handle:
        handle.write("not an image")
    with pytest.raises(CommandExecutionError, match="^qemu-img info .* failed"):
        cluster_disk.grow("web1", 0, "file", "1G")


# --- from an OS image: real qemu-img and qemu-io ------------------------------


def os_image(folder, fmt, size="16M", name="os"):
    """A small OS image with known data: 0x5a from 1 MiB to 3 MiB, 0xa5 in its last MiB."""
    path = str(folder / f"{name}.{'img' if fmt == 'raw' else fmt}")
    _sh("qemu-img", "create", "-q", "-f", fmt, path, size)
    last = disks.size(size) - MIB
    _sh("qemu-io", "-f", fmt, "-c", "write -P 0x5a 1M 2M", "-c", f"write -P 0xa5 {last} 1M", path)
    return path


def assert_image_data(path, fmt, size):
    """The data :func:`os_image` wrote (an image of ``size``) is at the start of ``path``."""
    last = disks.size(size) - MIB
    out = _sh("qemu-io", "-r", "-f", fmt, "-c", "read -P 0 0 1M", "-c", "read -P 0x5a 1M 2M",
              "-c", f"read -P 0xa5 {last} 1M", path)
    assert "Pattern verification failed" not in out and out.count("read ") == 3, out


@needs_qemu_img
@pytest.mark.parametrize("template", ["file", "sharedfile"])
@pytest.mark.parametrize(("image_fmt", "fmt"), [("qcow2", "qcow2"), ("raw", "qcow2"), ("qcow2", "raw")])
def test_a_disk_from_an_image_has_its_data_and_exactly_the_asked_size(storage, tmp_path, template, image_fmt, fmt):
    image = os_image(tmp_path, image_fmt)
    assert cluster_disk.image_info(image) == {"path": image, "size": 16 * MIB, "format": image_fmt,
                                              "allocated": cluster_disk.image_info(image)["allocated"]}
    created = cluster_disk.create("web1", 0, "64M", template, fmt=fmt, source=image)
    assert created["size"] == 64 * MIB and created["format"] == fmt
    assert_image_data(created["path"], fmt, "16M")
    _sh("qemu-img", "compare", "-f", image_fmt, "-F", fmt, image, created["path"])  # the rest is zeroes
    assert os.listdir(storage[template] + "/web1") == [f"disk0.{fmt}"]  # no temporary file left


@needs_qemu_img
def test_an_image_as_large_as_the_disk_fits_a_larger_one_is_refused(storage, tmp_path):
    image = os_image(tmp_path, "qcow2", size="32M")
    before = tree(tmp_path)
    with pytest.raises(SaltInvocationError, match=r"^source: image .*/os.qcow2 \(33554432 bytes\) is larger than "
                                                  r"the disk \(16777216 bytes\); give a disk of at least"):
        cluster_disk.create("web1", 0, "16M", "file", source=image)
    assert tree(tmp_path) == before
    assert cluster_disk.create("web1", 0, "32M", "file", source=image)["size"] == 32 * MIB


@needs_qemu_img
@pytest.mark.parametrize(
    ("source", "error", "message"),
    [
        ("images/os.qcow2", SaltInvocationError, "absolute"),
        ("/images/os;reboot.qcow2", SaltInvocationError, "no spaces or shell metacharacters"),
        ("/images/os.iso", SaltInvocationError, "name the image file"),
        ("/nonexistent/os.qcow2", CommandExecutionError, "does not exist on this node; put it at that path"),
    ],
)
def test_a_bad_or_missing_image_changes_nothing(storage, tmp_path, source, error, message):
    before = tree(tmp_path)
    with pytest.raises(error, match=f"^source: .*{re.escape(message)}"):
        cluster_disk.create("web1", 0, "16M", "file", source=source)
    with pytest.raises(error, match=f"^image: .*{re.escape(message)}"):
        cluster_disk.image_info(source)
    assert tree(tmp_path) == before


@needs_qemu_img
def test_a_raw_named_image_is_read_as_raw_whatever_it_holds(storage, tmp_path):
    """The name tells the format: a qcow2 file named .img is copied byte for byte, never interpreted."""
    image = tmp_path / "os.img"
    shutil.copy(os_image(tmp_path, "qcow2"), image)
    created = cluster_disk.create("web1", 0, "8M", "file", fmt="raw", source=str(image))
    with open(created["path"], "rb") as copied, open(image, "rb") as original:
        assert copied.read(4) == original.read(4) == b"QFI\xfb"


# --- bad input: an error naming the field, nothing changed ------------------


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "field"),
    [
        (("web1", 0, "10G", "nfs"), {}, SaltInvocationError, "template"),
        (("web1", 0, "10G", "plain"), {}, SaltInvocationError, "template"),  # no VG configured
        (("web1", 0, "ten", "file"), {}, SaltInvocationError, "size"),
        (("web1", 0, "1000B", "file"), {}, SaltInvocationError, "size"),
        (("../x", 0, "10G", "file"), {}, SaltInvocationError, "instance"),
        (("web1;reboot", 0, "10G", "file"), {}, SaltInvocationError, "instance"),
        (("web1", 99, "10G", "file"), {}, SaltInvocationError, "index"),
        (("web1", 0, "10G", "file"), {"fmt": "vmdk"}, SaltInvocationError, "fmt"),
        (("web1", 0, "100P", "file"), {}, CommandExecutionError, "size"),  # no room
    ],
)
def test_bad_input_changes_nothing(tmp_path, args, kwargs, error, field):
    before = tree(tmp_path)
    with pytest.raises(error, match=f"^{field}: ") as err:
        cluster_disk.create(*args, **kwargs)
    assert "give" in str(err.value) or "set" in str(err.value) or "use" in str(err.value)
    assert tree(tmp_path) == before


def test_unconfigured_storage_names_the_setting():
    with pytest.raises(SaltInvocationError, match="set vmcluster:storage:drbd in the minion config"):
        cluster_disk.exists("web1", 0, "drbd")


def test_bad_storage_setting(storage):
    storage["file"] = "relative/dir"
    with pytest.raises(SaltInvocationError, match="^vmcluster:storage:file: "):
        cluster_disk.exists("web1", 0, "file")


@needs_qemu_img
def test_missing_directory(storage, tmp_path):
    storage["file"] = str(tmp_path / "gone")
    with pytest.raises(CommandExecutionError, match="directory .*/gone does not exist; create it first"):
        cluster_disk.create("web1", 0, "10M", "file")
    assert not (tmp_path / "gone").exists()


# --- plain: real LVM on a loop device ---------------------------------------


def test_plain_life_cycle(lvm_storage):
    vg = lvm_storage
    assert cluster_disk.exists("web1", 0, "plain") is False
    created = cluster_disk.create("web1", 0, "8M", "plain")
    assert created == {
        "instance": "web1", "index": 0, "template": "plain", "path": f"/dev/{vg}/web1.disk0",
        "size": 8 * MIB, "format": "raw", "allocated": 8 * MIB,
    }
    assert lvs(vg) == {"web1.disk0": 8 * MIB}
    assert cluster_disk.path("web1", 0, "plain") == f"/dev/{vg}/web1.disk0"
    assert cluster_disk.grow("web1", 0, "plain", "16M") == {"old": 8 * MIB, "new": 16 * MIB}
    assert lvs(vg) == {"web1.disk0": 16 * MIB}
    assert cluster_disk.list_disks("web1") == [
        {"instance": "web1", "index": 0, "template": "plain", "path": f"/dev/{vg}/web1.disk0", "format": "raw"}
    ]
    assert cluster_disk.remove("web1", 0, "plain") is True
    assert cluster_disk.remove("web1", 0, "plain") is False
    assert lvs(vg) == {}
    with pytest.raises(CommandExecutionError, match="^disk 0 of web1 \\(plain\\) does not exist$"):
        cluster_disk.grow("web1", 0, "plain", "32M")


def test_plain_exact_size_rounds_up_to_extents(lvm_storage):
    created = cluster_disk.create("web1", 0, f"{5 * MIB + 512}B", "plain")
    assert created["size"] == 8 * MIB  # 4 MiB extents
    again = cluster_disk.create("web1", 1, f"{created['size']}B", "plain")
    assert again["size"] == created["size"]
    for index in (0, 1):
        cluster_disk.remove("web1", index, "plain")


def test_plain_without_room_changes_nothing(lvm_storage):
    with pytest.raises(CommandExecutionError, match=f"^size: .* volume group {lvm_storage} .* MiB free"):
        cluster_disk.create("web1", 0, "1G", "plain")
    cluster_disk.create("web1", 0, "8M", "plain")
    with pytest.raises(CommandExecutionError, match="^size: "):
        cluster_disk.grow("web1", 0, "plain", "1G")
    assert lvs(lvm_storage) == {"web1.disk0": 8 * MIB}
    cluster_disk.remove("web1", 0, "plain")


@pytest.mark.parametrize(
    ("instance", "size", "fmt", "field"),
    [("web_tdata", "8M", None, "instance"), ("web1", "8X", None, "size"), ("web1", "8M", "qcow2", "fmt")],
)
def test_plain_bad_input_changes_nothing(lvm_storage, instance, size, fmt, field):
    with pytest.raises(SaltInvocationError, match=f"^{field}: "):
        cluster_disk.create(instance, 0, size, "plain", fmt=fmt)


def test_plain_missing_volume_group(storage):
    storage["plain"] = "vmct-no-such-vg"
    with pytest.raises(CommandExecutionError, match="volume group vmct-no-such-vg not found; create it first"):
        cluster_disk.create("web1", 0, "8M", "plain")


@pytest.mark.skipif(not HAS_DM, reason=NO_DM)
def test_plain_device_node_appears(lvm_storage):
    """Needs activation: the LV's device node under /dev."""
    created = cluster_disk.create("web1", 0, "8M", "plain")
    try:
        assert os.path.exists(created["path"])
    finally:
        cluster_disk.remove("web1", 0, "plain")


class ConvertRecorder:
    """cluster_disk's ``cmd.run_all``: real, except ``qemu-img convert``, recorded and answered with ``retcode``
    (an LV has no device node to write to where the kernel has no device-mapper)."""

    def __init__(self, real, retcode=0):
        self.real, self.retcode, self.calls = real, retcode, []

    def __call__(self, argv, python_shell=True):
        if argv[:2] != ["qemu-img", "convert"]:
            return self.real(argv, python_shell=python_shell)
        self.calls.append(argv)
        return {"retcode": self.retcode, "stdout": "", "stderr": "qemu-img: Could not open the target" * self.retcode}


@pytest.mark.parametrize(("template", "lv"), [("plain", "web1.disk0"), ("drbd", "web1.disk0_data")])
def test_an_lv_from_an_image_gets_the_image_converted_onto_it(lvm_storage, drbd_cmd, tmp_path, template, lv):
    image = os_image(tmp_path, "qcow2")
    recorder = ConvertRecorder(cluster_disk.__salt__["cmd.run_all"])
    extra = drbd_args() if template == "drbd" else {}
    with patch.dict(cluster_disk.__salt__, {"cmd.run_all": recorder}):
        cluster_disk.create("web1", 0, "16M", template, source=image, **extra)
    # drbd: onto the backing LV, before DRBD writes its metadata behind the data
    assert recorder.calls == [["qemu-img", "convert", "-n", "-f", "qcow2", "-O", "raw", image, f"/dev/{lvm_storage}/{lv}"]]
    assert [c[3] for c in drbd_cmd.calls] == (["create-md", "up"] if template == "drbd" else [])
    assert list(lvs(lvm_storage)) == [lv]
    cluster_disk.remove("web1", 0, template)


def test_an_lv_whose_image_copy_fails_is_removed(lvm_storage, tmp_path):
    recorder = ConvertRecorder(cluster_disk.__salt__["cmd.run_all"], retcode=1)
    with patch.dict(cluster_disk.__salt__, {"cmd.run_all": recorder}):
        with pytest.raises(CommandExecutionError, match="^qemu-img convert .* failed \\(1\\): qemu-img: Could not open"):
            cluster_disk.create("web1", 0, "16M", "plain", source=os_image(tmp_path, "qcow2"))
    assert len(recorder.calls) == 1 and lvs(lvm_storage) == {}


@pytest.mark.skipif(not HAS_DM, reason=NO_DM)
def test_an_lv_from_an_image_holds_its_data(lvm_storage, tmp_path):
    created = cluster_disk.create("web1", 0, "16M", "plain", source=os_image(tmp_path, "raw", size="8M"))
    try:
        assert_image_data(created["path"], "raw", "8M")
    finally:
        cluster_disk.remove("web1", 0, "plain")


# --- drbd: real LVM, drbdadm through the drbd module ------------------------


def drbd_args(**extra):
    nodes = [{"name": NODE, "address": "127.0.0.1"}, {"name": "peer-node", "address": "127.0.0.2"}]
    return {"nodes": nodes, "port": 7790, "minor": 4, "secret": "s3cret", **extra}


def test_drbd_create_and_remove(lvm_storage, drbd_cmd, tmp_path):
    vg = lvm_storage
    created = cluster_disk.create("web1", 0, "64M", "drbd", **drbd_args())
    res = str(tmp_path / "drbd.d" / "web1.disk0.res")
    assert drbd_cmd.calls == [
        ["drbdadm", "-c", res, "create-md", "web1.disk0"],
        ["drbdadm", "-c", res, "up", "web1.disk0"],
    ]
    assert lvs(vg) == {"web1.disk0_data": 68 * MIB}  # 64 MiB + metadata, in 4 MiB extents
    assert created["size"] == 68 * MIB - 40 * 1024
    assert created["path"] == "/dev/drbd4" and created["backing"] == f"/dev/{vg}/web1.disk0_data"
    text = open(res).read()
    assert f'disk "/dev/{vg}/web1.disk0_data";' in text and "device minor 4;" in text
    assert cluster_disk.list_disks() == [
        {"instance": "web1", "index": 0, "template": "drbd", "path": "/dev/drbd4", "format": "raw"}
    ]
    drbd_cmd.calls.clear()
    assert cluster_disk.remove("web1", 0, "drbd") is True
    assert drbd_cmd.calls == [["drbdadm", "-c", res, "down", "web1.disk0"]]
    assert not os.path.exists(res) and lvs(vg) == {}


@pytest.mark.skipif(shutil.which("drbdadm") is None, reason="drbdadm (drbd-utils) is not installed")
def test_drbd_resource_file_passes_a_real_dry_run(lvm_storage, tmp_path):
    cluster_disk.create("web1", 0, "8M", "drbd", **drbd_args())
    res = str(tmp_path / "drbd.d" / "web1.disk0.res")
    try:
        dry = subprocess.run(["drbdadm", "-c", res, "-d", "up", "web1.disk0"], capture_output=True, text=True)
        assert dry.returncode == 0, dry.stderr
        lv = f"/dev/{lvm_storage}/web1.disk0_data"
        assert "drbdsetup new-minor web1.disk0 4 0" in dry.stdout
        assert f"drbdsetup attach 4 {lv} {lv} internal" in dry.stdout
    finally:
        cluster_disk.remove("web1", 0, "drbd")


def test_drbd_grow_grows_the_backing_lv(lvm_storage, drbd_cmd):
    cluster_disk.create("web1", 0, "16M", "drbd", **drbd_args())
    grown = cluster_disk.grow("web1", 0, "drbd", "32M")
    assert grown["new"] >= 32 * MIB > grown["old"] >= 16 * MIB
    assert lvs(lvm_storage) == {"web1.disk0_data": 36 * MIB}
    assert [c[3] for c in drbd_cmd.calls] == ["create-md", "up"]  # drbd.resize is the primary's, later
    cluster_disk.remove("web1", 0, "drbd")


def test_drbd_failure_rolls_back(lvm_storage, drbd_cmd, tmp_path):
    drbd_cmd.fail = "up"
    with pytest.raises(CommandExecutionError, match="up: failed"):
        cluster_disk.create("web1", 0, "8M", "drbd", **drbd_args())
    assert [c[3] for c in drbd_cmd.calls] == ["create-md", "up", "down"]
    assert lvs(lvm_storage) == {} and os.listdir(tmp_path / "drbd.d") == []


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"port": 70000}, "port"),
        ({"secret": "with space"}, "secret"),
        ({"minor": -1}, "nodes\\[0\\].minor"),
        ({"nodes": [{"name": "a", "address": "10.0.0.1"}, {"name": "b", "address": "10.0.0.2"}]}, "nodes"),
        ({"nodes": "node1,node2"}, "nodes"),
    ],
)
def test_drbd_bad_input_changes_nothing(lvm_storage, drbd_cmd, tmp_path, kwargs, field):
    with pytest.raises(SaltInvocationError, match=f"^{field}: "):
        cluster_disk.create("web1", 0, "8M", "drbd", **drbd_args(**kwargs))
    assert drbd_cmd.calls == [] and lvs(lvm_storage) == {} and not (tmp_path / "drbd.d").exists()


def test_drbd_refuses_a_configured_resource(lvm_storage, drbd_cmd, tmp_path):
    drbd_mod.write_config("web1.disk0", [{**n, "disk": "/dev/x/y"} for n in drbd_args()["nodes"]], 7790, 4, "s3cret")
    with pytest.raises(CommandExecutionError, match="web1.disk0 is already configured"):
        cluster_disk.create("web1", 0, "8M", "drbd", **drbd_args())
    assert drbd_cmd.calls == [] and lvs(lvm_storage) == {}
    drbd_mod.remove_config("web1.disk0")
