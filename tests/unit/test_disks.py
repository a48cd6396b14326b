"""The pure disk helpers: names, paths, sizes, DRBD metadata, qemu-img argument lists."""

import shutil
import subprocess

import pytest

from saltext.vmcluster import disks
from saltext.vmcluster.drbd.render import render_resource
from saltext.vmcluster.names import GIB, KIB, MIB, ValidationError


@pytest.mark.parametrize(
    ("value", "expected"),
    [("10G", 10 * GIB), ("512M", 512 * MIB), ("1.5K", 1536), ("1073741824B", GIB), (" 512 b ", 512), (2048, 2 * GIB)],
)
def test_size(value, expected):
    assert disks.size(value) == expected


@pytest.mark.parametrize("value", ["1000B", "0B", "0", "-1G", "10X", "", None, True, "1.1K"])
def test_bad_size_names_the_field(value):
    with pytest.raises(ValidationError, match="^size: ") as err:
        disks.size(value)
    assert "512M" in err.value.fix


def test_exact_size_round_trip():
    assert disks.size(disks.exact_size(5 * GIB + 512)) == 5 * GIB + 512


@pytest.mark.parametrize(
    ("template", "expected"),
    [("file", "web1.disk0"), ("sharedfile", "web1.disk0"), ("plain", "web1.disk0"), ("drbd", "web1.disk0")],
)
def test_disk_name(template, expected):
    assert disks.disk_name("web1", "0", template) == expected
    assert disks.lv_name(expected, template) == expected + ("_data" if template == "drbd" else "")


@pytest.mark.parametrize(
    ("instance", "number", "template", "field"),
    [
        ("../etc", 0, "file", "instance"),
        ("web 1", 0, "file", "instance"),
        ("-rf", 0, "plain", "instance"),
        ("web1", 64, "file", "index"),
        ("web1", -1, "plain", "index"),
        ("web1", "one", "plain", "index"),
        ("web_tdata", 0, "plain", "instance"),
        ("snapshot1", 0, "drbd", "instance"),
        ("a" * 60, 0, "drbd", "instance"),
    ],
)
def test_bad_disk_names(instance, number, template, field):
    with pytest.raises(ValidationError, match=f"^{field}: "):
        disks.disk_name(instance, number, template)


def test_long_names_only_limit_drbd():
    assert disks.disk_name("a" * 60, 0, "plain") == "a" * 60 + ".disk0"


def test_paths():
    assert disks.file_path("/srv/vmc", "web1", 2, "raw") == "/srv/vmc/web1/disk2.raw"
    assert disks.lv_path("vg0", "web1.disk0") == "/dev/vg0/web1.disk0"
    assert disks.drbd_path(7) == "/dev/drbd7"
    with pytest.raises(ValidationError, match="^fmt: "):
        disks.file_path("/srv/vmc", "web1", 0, "vmdk")


def test_parse_names_round_trip():
    assert disks.parse_file_name("disk3.qcow2") == (3, "qcow2")
    assert disks.parse_file_name(".disk3.abcd") is None
    assert disks.parse_file_name("disk3.qcow2.bak") is None
    for template in disks.LVM_TEMPLATES:
        lv = disks.lv_name(disks.disk_name("db.eu-1", 12, template), template)
        assert disks.parse_lv_name(lv) == ("db.eu-1", 12, template)
    assert disks.parse_lv_name("root") is None


def test_drbd_metadata():
    # 4 KiB superblock + 32 KiB activity log + 1 bit per 4 KiB (32 KiB for 1 GiB)
    assert disks.drbd_meta_bytes(GIB) == 68 * KIB
    assert disks.drbd_meta_bytes(GIB, peers=2) == 100 * KIB
    assert disks.drbd_meta_bytes(MIB) == 40 * KIB


@pytest.mark.parametrize("data", [MIB, 512 * MIB, GIB, 10 * GIB + 4096, 128 * MIB * 1000 - 512])
def test_drbd_backing_is_the_smallest_that_fits(data):
    backing = disks.drbd_backing_bytes(data)
    assert backing % MIB == 0
    assert disks.drbd_usable_bytes(backing) >= data > disks.drbd_usable_bytes(backing - MIB)


def test_drbd_local_minor():
    nodes = [
        {"name": "n1", "address": "10.0.0.1", "disk": "/dev/vg0/r0_data", "minor": 3},
        {"name": "n2", "address": "10.0.0.2", "disk": "/dev/vg0/r0_data"},
    ]
    text = render_resource("web1.disk0", nodes, 7789, 5, "s3cret")
    assert disks.drbd_local_minor(text, "n1") == 3
    assert disks.drbd_local_minor(text, "n2") == 5
    assert disks.drbd_local_minor(text, "n3") is None
    assert disks.drbd_local_minor(None, "n1") is None


def test_qemu_img_argument_lists():
    assert disks.qemu_img_create("/d/disk0.qcow2", "qcow2", GIB) == [
        "qemu-img", "create", "-q", "-f", "qcow2", "/d/disk0.qcow2", str(GIB)
    ]
    assert disks.qemu_img_info("/d/x", "raw") == ["qemu-img", "info", "--output=json", "-U", "-f", "raw", "/d/x"]
    assert disks.qemu_img_resize("/d/x", "raw", 1024)[-3:] == ["raw", "/d/x", "1024"]
    with pytest.raises(ValidationError, match="^fmt: "):
        disks.qemu_img_info("/d/x", "qcow2 -o backing_file=/etc/shadow")


@pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-img is not installed")
@pytest.mark.parametrize("fmt", disks.FORMATS)
def test_parse_real_qemu_img_info(tmp_path, fmt):
    path = str(tmp_path / f"disk0.{fmt}")
    subprocess.run(disks.qemu_img_create(path, fmt, GIB + 512), check=True)
    out = subprocess.run(disks.qemu_img_info(path, fmt), check=True, capture_output=True, text=True).stdout
    parsed = disks.parse_qemu_img_info(out)
    assert parsed["size"] == GIB + 512 and parsed["format"] == fmt and parsed["allocated"] > 0


def test_nbd_copy_argument_lists():
    assert disks.nbd_uri("10.0.0.1", 10809, "web1.disk0") == "nbd://10.0.0.1:10809/web1.disk0"
    assert disks.nbd_uri("fd00::1", 10809, "web1.disk0") == "nbd://[fd00::1]:10809/web1.disk0"
    served = disks.qemu_nbd_export("/d/disk0.qcow2", "qcow2", "10.0.0.1", 10809, "web1.disk0", "/run/x.pid")
    assert served[0] == "qemu-nbd" and "--read-only" in served and served[-1] == "/d/disk0.qcow2"
    assert served[served.index("--bind") + 1] == "10.0.0.1" and served[served.index("--port") + 1] == "10809"
    assert disks.qemu_img_convert_into("nbd://h:1/e", "/d/x", "raw") == [
        "qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", "nbd://h:1/e", "/d/x"
    ]
    with pytest.raises(ValidationError, match="^fmt: "):
        disks.qemu_nbd_export("/d/x", "vmdk", "10.0.0.1", 1, "e", "/p")
