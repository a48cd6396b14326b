"""libvirt domain XML for cluster instances: build it from an :class:`InstanceSpec`, read it back.

Pure (``xml.etree`` only). Every value passes a validator of :mod:`.names` before it
reaches the XML, and the XML is assembled as elements, never as pasted strings.

What the builder always does, for cluster use:

* no ``<cpu>`` element (host-model/passthrough break on some hosts; see LAB.md),
* ``<memballoon model='none'/>`` for KVM/QEMU,
* ACPI enabled (so that ``shutdown`` works) and no autostart (libvirt keeps
  autostart outside the XML; the execution module keeps it off).

Domain types: ``kvm``, ``qemu`` (TCG, no hardware acceleration) and ``xen``. For
``xen`` the spec builds an HVM guest (``machine='xenfv'``, os type ``hvm``), or a
paravirtualised guest when ``bootloader`` is given (``machine='xenpv'``, os type
``linux``, ``<bootloader>`` such as pygrub, console on the Xen PV console, no boot
devices); disks may then use bus ``xen`` (``xvda`` …).
"""

import dataclasses
import xml.etree.ElementTree as ET
from typing import Optional

from . import names

DOMAIN_TYPES = ("kvm", "qemu", "xen")
DISK_BUSES = ("virtio", "scsi", "sata", "ide", "xen")
DISK_FORMATS = ("qcow2", "raw")
DISK_DEVICES = ("disk", "cdrom")
DISK_CACHES = ("none", "writethrough", "writeback", "directsync", "unsafe")
NIC_MODELS = ("virtio", "e1000", "e1000e", "rtl8139", "netfront")
BOOT_DEVICES = ("hd", "cdrom", "network")
PTY = "pty"
VNC_PORT_MIN = 5900
MAX_VCPUS = 4096

# Target device prefix per bus; SCSI and SATA disks share the "sd" namespace.
_TARGET_PREFIX = {"virtio": "vd", "scsi": "sd", "sata": "sd", "ide": "hd", "xen": "xvd"}


def _set(obj, field, value):
    object.__setattr__(obj, field, value)


def _from_mapping(cls, value, field):
    """Build dataclass ``cls`` from a mapping, naming unknown keys in the error."""
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(value) - set(known))
    if unknown:
        fix = "known keys: " + ", ".join(known)
        raise names.ValidationError(f"{field}.{unknown[0]}", value[unknown[0]], fix)
    return cls(**value)


@dataclasses.dataclass(frozen=True)
class Disk:
    """One disk: a file (qcow2/raw) or, for a path under ``/dev/``, a block device."""

    path: str
    bus: str = "virtio"
    format: str = "qcow2"
    device: str = "disk"
    cache: Optional[str] = None

    def __post_init__(self):
        names.path(self.path, "disk.path")
        names.choice(self.bus, "disk.bus", DISK_BUSES)
        names.choice(self.format, "disk.format", DISK_FORMATS)
        names.choice(self.device, "disk.device", DISK_DEVICES)
        if self.cache is not None:
            names.choice(self.cache, "disk.cache", DISK_CACHES)
        if self.device == "cdrom" and self.bus in ("virtio", "xen"):
            fix = "put a cdrom on bus ide, sata or scsi"
            raise names.ValidationError("disk.bus", self.bus, fix)

    @property
    def is_block(self):
        """True for a block device (LV, DRBD), False for an image file."""
        return self.path.startswith("/dev/")


@dataclasses.dataclass(frozen=True)
class Nic:
    """One network interface on a host bridge; no MAC means libvirt picks one."""

    bridge: str
    mac: Optional[str] = None
    model: str = "virtio"

    def __post_init__(self):
        names.bridge(self.bridge, "nic.bridge")
        if self.mac is not None:
            _set(self, "mac", names.mac(self.mac, "nic.mac"))
        names.choice(self.model, "nic.model", NIC_MODELS)


@dataclasses.dataclass(frozen=True)
class Vnc:
    """A VNC display; ``port=None`` lets libvirt choose one (autoport)."""

    listen: str = "127.0.0.1"
    port: Optional[int] = None

    def __post_init__(self):
        _set(self, "listen", names.ip_address(self.listen, "vnc.listen"))
        if self.port is not None:
            _set(self, "port", names.port(self.port, "vnc.port"))
            if self.port < VNC_PORT_MIN:
                fix = f"use a port from {VNC_PORT_MIN} up"
                raise names.ValidationError("vnc.port", self.port, fix)


@dataclasses.dataclass(frozen=True)
class InstanceSpec:
    """What a cluster instance looks like to libvirt; values are validated on creation.

    ``memory`` is MiB (a size string such as ``"512M"`` is accepted), ``serial`` is
    ``"pty"`` or the absolute path of a log file, ``vnc`` a :class:`Vnc` or None.
    """

    name: str
    memory: int
    vcpus: int = 1
    disks: tuple = ()
    nics: tuple = ()
    serial: str = PTY
    vnc: Optional[Vnc] = None
    boot: tuple = ("hd",)
    type: str = "kvm"
    emulator: Optional[str] = None
    machine: Optional[str] = None
    arch: str = "x86_64"
    uuid: Optional[str] = None
    bootloader: Optional[str] = None

    def __post_init__(self):
        names.name(self.name)
        _set(self, "memory", names.size_mib(self.memory, "memory"))
        _set(self, "vcpus", names.positive_int(self.vcpus, "vcpus", MAX_VCPUS))
        _set(self, "disks", tuple(_coerce(Disk, d, "disk", "path") for d in _seq(self.disks)))
        _set(self, "nics", tuple(_coerce(Nic, n, "nic", "bridge") for n in _seq(self.nics)))
        if self.serial != PTY:
            names.path(self.serial, "serial")
        if self.vnc in (None, False):
            _set(self, "vnc", None)
        else:
            _set(self, "vnc", _coerce(Vnc, {} if self.vnc is True else self.vnc, "vnc", "listen"))
        _set(self, "boot", tuple(names.choice(b, "boot", BOOT_DEVICES) for b in _seq(self.boot)))
        names.choice(self.type, "type", DOMAIN_TYPES)
        for field in ("emulator", "bootloader"):
            if getattr(self, field) is not None:
                names.path(getattr(self, field), field)
        if self.machine is not None:
            names.name(self.machine, "machine")
        names.name(self.arch, "arch")
        if self.uuid is not None:
            _set(self, "uuid", names.uuid(self.uuid))
        if self.bootloader is not None and self.type != "xen":
            fix = "a bootloader needs type xen; leave it out"
            raise names.ValidationError("bootloader", self.bootloader, fix)
        for disk in self.disks:
            if disk.bus == "xen" and self.type != "xen":
                fix = "bus xen needs type xen; use virtio"
                raise names.ValidationError("disk.bus", disk.bus, fix)

    @property
    def xen_pv(self):
        """True for a paravirtualised Xen guest."""
        return self.type == "xen" and self.bootloader is not None

    @classmethod
    def from_dict(cls, data):
        """Build a spec from plain data (Salt arguments, pillar, :func:`parse` output)."""
        if not isinstance(data, dict):
            raise names.ValidationError("spec", data, "give a mapping of spec fields")
        return _from_mapping(cls, data, "spec")

    def to_dict(self):
        """Plain data that :meth:`from_dict` turns back into an equal spec."""
        data = dataclasses.asdict(self)
        for field in ("disks", "nics", "boot"):
            data[field] = list(data[field])
        return data


def _seq(value):
    """A list field given as one item (a string or mapping) is a list of that item."""
    return (value,) if isinstance(value, (str, dict)) else tuple(value or ())


def _coerce(cls, value, field, first):
    """Accept ``cls``, a mapping of its fields, or a bare string for its first field."""
    if isinstance(value, cls):
        return value
    if isinstance(value, str):
        return cls(**{first: value})
    if isinstance(value, dict):
        return _from_mapping(cls, value, field)
    fix = f"give a mapping with {first} and options, or just the {first}"
    raise names.ValidationError(field, value, fix)


def _sub(parent, tag, text=None, **attrs):
    elem = ET.SubElement(parent, tag, {k: str(v) for k, v in attrs.items() if v is not None})
    if text is not None:
        elem.text = str(text)
    return elem


def _target_names(disks):
    counters = {}
    for disk in disks:
        prefix = _TARGET_PREFIX[disk.bus]
        index = counters.get(prefix, 0)
        counters[prefix] = index + 1
        yield prefix + _drive_letters(index)


def _drive_letters(index):
    """0 -> a, 25 -> z, 26 -> aa, as libvirt names drives."""
    letters = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        letters = chr(ord("a") + rest) + letters
    return letters


def build(spec):
    """Return the libvirt domain XML (a string) for an :class:`InstanceSpec`."""
    domain = ET.Element("domain", type=spec.type)
    _sub(domain, "name", spec.name)
    if spec.uuid:
        _sub(domain, "uuid", spec.uuid)
    _sub(domain, "memory", spec.memory, unit="MiB")
    _sub(domain, "currentMemory", spec.memory, unit="MiB")
    _sub(domain, "vcpu", spec.vcpus, placement="static")
    if spec.xen_pv:
        _sub(domain, "bootloader", spec.bootloader)
    _build_os(domain, spec)
    if not spec.xen_pv:
        features = _sub(domain, "features")
        _sub(features, "acpi")
        _sub(features, "apic")
    _sub(domain, "clock", offset="utc")
    _sub(domain, "on_poweroff", "destroy")
    _sub(domain, "on_reboot", "restart")
    _sub(domain, "on_crash", "destroy")
    devices = _sub(domain, "devices")
    if spec.emulator:
        _sub(devices, "emulator", spec.emulator)
    for disk, target in zip(spec.disks, _target_names(spec.disks)):
        _build_disk(devices, disk, target)
    for nic in spec.nics:
        _build_nic(devices, nic)
    _build_serial(devices, spec)
    if spec.vnc:
        _build_vnc(devices, spec.vnc)
    if spec.type != "xen":
        _sub(devices, "memballoon", model="none")
    ET.indent(domain)
    return ET.tostring(domain, encoding="unicode")


def _build_os(domain, spec):
    os_elem = _sub(domain, "os")
    if spec.type == "xen":
        os_type, machine = ("linux", "xenpv") if spec.xen_pv else ("hvm", "xenfv")
    else:
        os_type, machine = "hvm", spec.machine
    _sub(os_elem, "type", os_type, arch=spec.arch, machine=spec.machine or machine)
    if not spec.xen_pv:
        for dev in spec.boot:
            _sub(os_elem, "boot", dev=dev)


def _build_disk(devices, disk, target):
    elem = _sub(devices, "disk", type="block" if disk.is_block else "file", device=disk.device)
    _sub(elem, "driver", name="qemu", type=disk.format, cache=disk.cache)
    _sub(elem, "source", **{"dev" if disk.is_block else "file": disk.path})
    _sub(elem, "target", dev=target, bus=disk.bus)
    if disk.device == "cdrom":
        _sub(elem, "readonly")


def _build_nic(devices, nic):
    elem = _sub(devices, "interface", type="bridge")
    if nic.mac:
        _sub(elem, "mac", address=nic.mac)
    _sub(elem, "source", bridge=nic.bridge)
    _sub(elem, "model", type=nic.model)


def _build_serial(devices, spec):
    kind = "pty" if spec.serial == PTY else "file"
    # A Xen PV guest has no emulated UART: its console is the PV console.
    elem = _sub(devices, "console" if spec.xen_pv else "serial", type=kind)
    if kind == "file":
        _sub(elem, "source", path=spec.serial)
    _sub(elem, "target", type="xen" if spec.xen_pv else None, port=0)


def _build_vnc(devices, vnc):
    elem = _sub(
        devices,
        "graphics",
        type="vnc",
        port=vnc.port or -1,
        autoport="no" if vnc.port else "yes",
        listen=vnc.listen,
    )
    _sub(elem, "listen", type="address", address=vnc.listen)


def _attr(root, xpath, attr):
    elem = root.find(xpath)
    return None if elem is None else elem.get(attr)


def _text_of(root, xpath):
    elem = root.find(xpath)
    return None if elem is None or elem.text is None else elem.text.strip()


def _mib(root, xpath):
    """A memory element in MiB, whatever unit libvirt wrote (KiB by default)."""
    elem = root.find(xpath)
    if elem is None:
        return None
    amount, unit = elem.text.strip(), elem.get("unit", "KiB")
    if unit in ("b", "bytes"):
        return int(amount) // names.MIB
    return names.size_bytes(amount + unit, xpath) // names.MIB


def _char_device(root):
    """The first serial port (or console): ``(type, path)``."""
    for xpath in ("devices/serial", "devices/console"):
        elem = root.find(xpath)
        if elem is not None:
            return elem.get("type"), _attr(elem, "source", "path")
    return None, None


def parse(xml):
    """Read the essential fields back from domain XML, as :meth:`InstanceSpec.to_dict` data.

    Values are read, not validated: a foreign domain may hold what a spec would refuse.
    """
    root = ET.fromstring(xml)
    vnc = root.find("devices/graphics[@type='vnc']")
    serial_type, serial_path = _char_device(root)
    vcpu = root.find("vcpu")
    return {
        "name": _text_of(root, "name"),
        "memory": _mib(root, "memory"),
        "vcpus": int(vcpu.get("current", vcpu.text)) if vcpu is not None else None,
        "disks": [_parse_disk(elem) for elem in root.findall("devices/disk")],
        "nics": [_parse_nic(elem) for elem in root.findall("devices/interface")],
        "serial": serial_path if serial_type == "file" else (serial_type and PTY),
        "vnc": None if vnc is None else _parse_vnc(vnc),
        "boot": [elem.get("dev") for elem in root.findall("os/boot")],
        "type": root.get("type"),
        "emulator": _text_of(root, "devices/emulator"),
        "machine": _attr(root, "os/type", "machine"),
        "arch": _attr(root, "os/type", "arch"),
        "uuid": _text_of(root, "uuid"),
        "bootloader": _text_of(root, "bootloader"),
    }


def _parse_disk(elem):
    source = elem.find("source")
    return {
        "path": None if source is None else source.get("file") or source.get("dev"),
        "bus": _attr(elem, "target", "bus"),
        "format": _attr(elem, "driver", "type"),
        "device": elem.get("device", "disk"),
        "cache": _attr(elem, "driver", "cache"),
    }


def _parse_nic(elem):
    return {
        "bridge": _attr(elem, "source", "bridge"),
        "mac": _attr(elem, "mac", "address"),
        "model": _attr(elem, "model", "type"),
    }


def _parse_vnc(elem):
    autoport = elem.get("autoport") == "yes"
    return {"listen": _vnc_listen(elem), "port": None if autoport else int(elem.get("port"))}


def _vnc_listen(elem):
    return _attr(elem, "listen", "address") or elem.get("listen")


def disk_targets(xml):
    """``[{"target", "path", "format", "device"}]`` for each disk of the domain XML."""
    root = ET.fromstring(xml)
    return [
        dict(_parse_disk(elem), target=_attr(elem, "target", "dev"))
        for elem in root.findall("devices/disk")
    ]


def console_details(xml):
    """How to reach a domain's consoles, from its live XML.

    Returns ``{"serial": {"type", "path"} or None, "vnc": {"listen", "port"} or None}``;
    a pty's path and an autoport VNC port are only known while the domain runs.
    """
    root = ET.fromstring(xml)
    serial_type, serial_path = _char_device(root)
    vnc = root.find("devices/graphics[@type='vnc']")
    details = {"serial": serial_type and {"type": serial_type, "path": serial_path}, "vnc": None}
    if vnc is not None:
        port = int(vnc.get("port", "-1"))
        details["vnc"] = {"listen": _vnc_listen(vnc), "port": port if port > 0 else None}
    return details
