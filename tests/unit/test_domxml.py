"""Tests of the domain XML builder and parser (saltext.vmcluster.domxml)."""

import xml.etree.ElementTree as ET

import pytest

from saltext.vmcluster import domxml
from saltext.vmcluster.names import ValidationError

libvirt = pytest.importorskip("libvirt")


def full_spec(**overrides):
    fields = {
        "name": "web1",
        "memory": "128M",
        "vcpus": 2,
        "disks": [
            "/srv/vm/web1.qcow2",
            {"path": "/dev/vg0/web1-data", "format": "raw", "bus": "scsi", "cache": "none"},
            {"path": "/srv/iso/boot.iso", "device": "cdrom", "bus": "sata", "format": "raw"},
        ],
        "nics": [{"bridge": "br0", "mac": "52:54:00:AA:BB:CC"}, "br1"],
        "serial": "/var/log/vm/web1.log",
        "vnc": {"listen": "127.0.0.1", "port": 5901},
        "boot": ["cdrom", "hd"],
        "type": "qemu",
        "uuid": "3e3fce45-4f53-4fa7-bb32-11f34168b82b",
    }
    fields.update(overrides)
    return domxml.InstanceSpec.from_dict(fields)


def test_build_structure():
    root = ET.fromstring(domxml.build(full_spec()))
    assert root.get("type") == "qemu"
    assert root.findtext("name") == "web1"
    assert root.find("memory").attrib == {"unit": "MiB"} and root.findtext("memory") == "128"
    assert root.findtext("vcpu") == "2"
    assert root.find("cpu") is None
    assert root.find("features/acpi") is not None
    assert [b.get("dev") for b in root.findall("os/boot")] == ["cdrom", "hd"]
    disks = root.findall("devices/disk")
    assert [(d.get("type"), d.find("target").get("dev")) for d in disks] == [
        ("file", "vda"),
        ("block", "sda"),
        ("file", "sdb"),
    ]
    assert disks[1].find("source").get("dev") == "/dev/vg0/web1-data"
    assert disks[1].find("driver").attrib == {"name": "qemu", "type": "raw", "cache": "none"}
    assert disks[2].find("readonly") is not None
    nics = root.findall("devices/interface")
    assert nics[0].find("mac").get("address") == "52:54:00:aa:bb:cc"
    assert nics[1].find("mac") is None and nics[1].find("source").get("bridge") == "br1"
    assert root.find("devices/serial").get("type") == "file"
    assert root.find("devices/serial/source").get("path") == "/var/log/vm/web1.log"
    vnc = root.find("devices/graphics")
    assert (vnc.get("port"), vnc.get("autoport")) == ("5901", "no")
    assert root.find("devices/memballoon").get("model") == "none"
    assert "autostart" not in domxml.build(full_spec())


def test_defaults_minimal():
    root = ET.fromstring(domxml.build(domxml.InstanceSpec(name="tiny", memory=64)))
    assert root.get("type") == "kvm"
    assert root.find("devices/serial").get("type") == "pty"
    assert root.find("devices/graphics") is None
    assert root.find("os/type").get("machine") is None


def test_parse_round_trip():
    spec = full_spec(emulator="/usr/bin/qemu-system-x86_64", machine="pc-q35-8.0")
    assert domxml.InstanceSpec.from_dict(domxml.parse(domxml.build(spec))) == spec
    assert domxml.InstanceSpec.from_dict(spec.to_dict()) == spec


def test_values_are_escaped_not_pasted():
    # A quote in a path is refused; an ampersand (legal in a path) is escaped by the XML writer.
    with pytest.raises(ValidationError, match="^disk.path:"):
        full_spec(disks=["/srv/x'/><evil/>"])
    spec = full_spec(disks=["/srv/a&b.qcow2"])
    assert ET.fromstring(domxml.build(spec)).find("devices/disk/source").get("file") == "/srv/a&b.qcow2"


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"name": "../web"}, "name"),
        ({"memory": "lots"}, "memory"),
        ({"vcpus": 0}, "vcpus"),
        ({"disks": [{"path": "/x", "bus": "floppy"}]}, "disk.bus"),
        ({"disks": [{"path": "/x", "device": "cdrom"}]}, "disk.bus"),
        ({"disks": [{"path": "/x", "size": "1G"}]}, "disk.size"),
        ({"disks": [42]}, "disk"),
        ({"nics": [{"bridge": "br0", "mac": "ff:ff:ff:ff:ff:ff"}]}, "nic.mac"),
        ({"nics": ["br;0"]}, "nic.bridge"),
        ({"serial": "console.log"}, "serial"),
        ({"vnc": {"port": 22}}, "vnc.port"),
        ({"vnc": {"listen": "anywhere"}}, "vnc.listen"),
        ({"boot": ["floppy"]}, "boot"),
        ({"type": "lxc"}, "type"),
        ({"bootloader": "/usr/bin/pygrub"}, "bootloader"),
        ({"disks": [{"path": "/x", "bus": "xen"}]}, "disk.bus"),
        ({"autostart": True}, "spec.autostart"),
    ],
)
def test_bad_spec_names_field(overrides, field):
    with pytest.raises(ValidationError) as err:
        full_spec(**overrides)
    assert err.value.field == field
    assert str(err.value).startswith(f"{field}: invalid value")


def test_xen_variants():
    hvm = ET.fromstring(domxml.build(domxml.InstanceSpec(name="x1", memory=256, type="xen")))
    assert hvm.find("os/type").text == "hvm" and hvm.find("os/type").get("machine") == "xenfv"
    assert hvm.find("devices/memballoon") is None
    spec = domxml.InstanceSpec(
        name="x2",
        memory=256,
        type="xen",
        bootloader="/usr/lib/xen/bin/pygrub",
        disks=[{"path": "/dev/vg0/x2", "bus": "xen", "format": "raw"}],
    )
    assert spec.xen_pv
    pv = ET.fromstring(domxml.build(spec))
    assert pv.findtext("bootloader") == "/usr/lib/xen/bin/pygrub"
    assert (pv.find("os/type").text, pv.find("os/type").get("machine")) == ("linux", "xenpv")
    assert pv.find("os/boot") is None and pv.find("features") is None
    assert pv.find("devices/disk/target").get("dev") == "xvda"
    assert pv.find("devices/console/target").get("type") == "xen"


def test_drive_letters_beyond_z():
    spec = domxml.InstanceSpec(name="many", memory=64, disks=[f"/d/{i}" for i in range(28)])
    targets = [d["target"] for d in domxml.disk_targets(domxml.build(spec))]
    assert targets[0] == "vda" and targets[25] == "vdz" and targets[26:] == ["vdaa", "vdab"]


def test_console_details():
    live = """<domain type='kvm'><name>w</name><devices>
      <serial type='pty'><source path='/dev/pts/7'/><target port='0'/></serial>
      <graphics type='vnc' port='5903' autoport='yes' listen='0.0.0.0'>
        <listen type='address' address='0.0.0.0'/></graphics></devices></domain>"""
    assert domxml.console_details(live) == {
        "serial": {"type": "pty", "path": "/dev/pts/7"},
        "vnc": {"listen": "0.0.0.0", "port": 5903},
    }
    stopped = domxml.build(domxml.InstanceSpec(name="w", memory=64, vnc=True))
    assert domxml.console_details(stopped) == {
        "serial": {"type": "pty", "path": None},
        "vnc": {"listen": "127.0.0.1", "port": None},
    }


@pytest.mark.parametrize("domain_type", ["kvm", "qemu", "xen"])
def test_libvirt_accepts_xml(domain_type):
    name = f"domxml-{domain_type}"
    spec = full_spec(name=name, type=domain_type, uuid=None)
    conn = libvirt.open("test:///default")
    try:
        dom = conn.defineXML(domxml.build(spec))
        try:
            back = domxml.parse(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
            assert back["name"] == name and back["type"] == domain_type
            assert back["memory"] == 128 and back["vcpus"] == 2
            assert [d["path"] for d in back["disks"]] == [d.path for d in spec.disks]
            assert [n["bridge"] for n in back["nics"]] == ["br0", "br1"]
            assert back["nics"][0]["mac"] == "52:54:00:aa:bb:cc"
            assert back["serial"] == "/var/log/vm/web1.log"
            assert back["vnc"] == {"listen": "127.0.0.1", "port": 5901}
            assert dom.autostart() == 0
        finally:
            dom.undefine()
    finally:
        conn.close()
