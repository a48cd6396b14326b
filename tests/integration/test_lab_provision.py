"""Provisioning on the lab: instances with NICs on the lab's bridge, disk 0 from an OS image.

The lab's nodes share the host's network namespace, where the lab made one bridge
(down, no address, no uplink) that the pillar names as every node's bridge; a path
under the lab dir is on every node, as an image in /var/lib/vmcluster/images is on
every real node.
"""

import subprocess
from pathlib import Path

import libvirt
import pytest

from saltext.vmcluster import domxml

MIB = 1024 * 1024
IMAGE_SIZE = 24 * MIB
DISK = "32M"


def op(runner, fun, *args, **kwargs):
    return runner.cmd(f"cluster.{fun}", list(args), kwarg=kwargs, print_event=False)


@pytest.fixture(scope="module")
def image(lab):
    """A small qcow2 OS image with known data: 0x5a from 1 MiB to 3 MiB, 0xa5 in its last MiB."""
    path = lab.dir / "images" / "os.qcow2"
    path.parent.mkdir(exist_ok=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), str(IMAGE_SIZE)], check=True)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 1M 2M", "-c", f"write -P 0xa5 {IMAGE_SIZE - MIB} 1M",
                    str(path)], check=True, capture_output=True)
    return str(path)


def assert_image_data(disk):
    """The image's data is in ``disk`` (read while QEMU holds it: -U), zeroes behind it."""
    reads = ["read -P 0 0 1M", "read -P 0x5a 1M 2M", f"read -P 0xa5 {IMAGE_SIZE - MIB} 1M", f"read -P 0 {IMAGE_SIZE} 1M"]
    out = subprocess.run(["qemu-io", "-r", "-U", "-f", "qcow2", *[a for r in reads for a in ("-c", r)], str(disk)],
                         check=True, capture_output=True, text=True).stdout
    assert "Pattern verification failed" not in out and out.count("read ") == len(reads), out


def domain_nics(lab, node, name):
    """The NICs of the running domain ``name`` on ``node``, from its live XML."""
    conn = libvirt.open(lab.node(node).libvirt_uri)
    try:
        dom = conn.lookupByName(name)
        assert dom.isActive()
        return domxml.parse(dom.XMLDesc())["nics"]
    finally:
        conn.close()


def bridge_ports(lab):
    """The interfaces on the lab's bridge (QEMU's taps)."""
    return sorted(p.name for p in (Path("/sys/class/net") / lab.state["bridge"] / "brif").iterdir())


def disk_path(lab, record):
    where = lab.node(record["primary"]).storage[record["template"]]
    return f"{where}/{record['name']}/disk0.qcow2"


@pytest.mark.parametrize("template", ["file", "sharedfile"])
def test_an_instance_from_an_image_with_a_nic_on_the_node_s_bridge(lab, runner, store, cleanup, image, template):
    name = f"prov-{template}"
    cleanup.append(name)
    plan = op(runner, "add", name, memory="64M", disks=DISK, template=template, image=image, test=True)
    assert any(line.startswith("create_disk") and f"source={image}" in line for line in plan["plan"]), plan
    assert store.instance(name) is None

    done = op(runner, "add", name, memory="64M", disks=DISK, template=template, image=image)
    assert done["state"] == "done", done
    record = store.instance(name)
    (nic,) = record["nics"]  # no nics=: one NIC on the node's bridge, a generated MAC
    assert nic["bridge"] == lab.state["bridge"] and nic["mac"].startswith("52:54:00:") and record["image"] == image
    assert domain_nics(lab, record["primary"], name) == [nic]
    assert bridge_ports(lab)  # QEMU's tap is on the lab's bridge
    size = subprocess.run(["qemu-img", "info", "-U", "--output=json", "-f", "qcow2", disk_path(lab, record)],
                          check=True, capture_output=True, text=True).stdout
    assert f'"virtual-size": {32 * MIB},' in size  # exactly the asked size, not the image's
    assert_image_data(disk_path(lab, record))


def test_nics_given_by_bridge_and_mac_and_a_live_migration_keeps_them(lab, runner, store, cleanup):
    cleanup.append("prov-mig")
    bridge = lab.state["bridge"]
    nics = [{"bridge": bridge, "mac": "52:54:00:0a:0b:0c"}, {"bridge": bridge, "model": "e1000"}]
    done = op(runner, "add", "prov-mig", memory="64M", disks=DISK, template="sharedfile", nics=nics, image="none")
    assert done["state"] == "done", done
    record = store.instance("prov-mig")
    assert [(n["mac"], n["model"]) for n in record["nics"]][0] == ("52:54:00:0a:0b:0c", "virtio")
    assert record["nics"][1]["model"] == "e1000" and record["nics"][1]["mac"].startswith("52:54:00:")
    target = next(node.name for node in lab.nodes if node.name != record["primary"])
    moved = op(runner, "migrate", "prov-mig", target=target)
    assert moved["state"] == "done", moved
    assert domain_nics(lab, target, "prov-mig") == record["nics"]

    taken = op(runner, "add", "prov-dup", memory="64M", disks=DISK, nics=[{"mac": "52:54:00:0a:0b:0c"}])
    assert taken["retcode"] == 1 and "nics[0].mac: " in taken["error"] and "taken by prov-mig nic 0" in taken["error"]
    assert store.instance("prov-dup") is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"nics": "nosuchbr0"}, "nics: bridge nosuchbr0 of prov-bad does not exist on node "),
        ({"image": "/nonexistent/os.qcow2"}, "image /nonexistent/os.qcow2 does not exist on this node"),
        ({"image": "/tmp/os.iso"}, "image: invalid value '/tmp/os.iso': name the image file *.qcow2"),
        ({"disks": "16M"}, "is larger than disk 0 (16777216 bytes); give a first disk of at least 24M (disks=)"),
    ],
)
def test_missing_bridges_and_images_are_refused_before_anything_changes(lab, runner, store, image, kwargs, message):
    ret = op(runner, "add", "prov-bad", memory="64M", **{"disks": DISK, "image": image, **kwargs})
    assert ret["retcode"] == 1 and message in ret["error"], ret
    assert store.instance("prov-bad") is None
    assert not any("prov-bad" in d for node in lab.nodes for d in Path(node.storage["file"]).iterdir())
