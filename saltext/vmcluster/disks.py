"""Instance disks without Salt: names, device paths, sizes, ``qemu-img`` argument lists.

Naming scheme (disk ``N`` of instance ``web1``):

=============  ====================================  ==========================
template       storage                               device path
=============  ====================================  ==========================
file           ``<dir>/web1/diskN.<qcow2|raw>``      the file
sharedfile     the same in the shared directory      the file
plain          LV ``web1.diskN`` in the VG           ``/dev/<vg>/web1.diskN``
drbd           LV ``web1.diskN_data`` in the VG,     ``/dev/drbd<minor>``
               resource ``web1.diskN``
=============  ====================================  ==========================

A file's format is part of its name, so it is never probed from the content
(a guest could write a qcow2 header into its raw disk).
"""

import json
import math
import os
import re

from saltext.vmcluster import names

TEMPLATES = ("file", "sharedfile", "plain", "drbd")
FILE_TEMPLATES = ("file", "sharedfile")
LVM_TEMPLATES = ("plain", "drbd")
FORMATS = ("qcow2", "raw")
IMAGE_SUFFIXES = {".qcow2": "qcow2", ".raw": "raw", ".img": "raw"}  # OS image name -> format
MAX_INDEX = 63
SECTOR = 512
QEMU_IMG = "qemu-img"
DRBD_DATA_SUFFIX = "_data"
DRBD_NAME_MAX = 64  # saltext.vmcluster.drbd.check_name

# LVM refuses LV names holding these (its own sub-LVs) or starting with these.
_LVM_RESERVED = (
    "_cdata", "_cmeta", "_corig", "_cpool", "_cvol", "_iorig", "_mimage", "_mlog",
    "_pmspare", "_rimage", "_rmeta", "_tdata", "_tmeta", "_vdata", "_vorigin", "_wcorig",
)
_LVM_RESERVED_PREFIXES = ("snapshot", "pvmove")
_FILE_RE = re.compile(r"disk(?P<index>\d+)\.(?P<fmt>qcow2|raw)")
_LV_RE = re.compile(r"(?P<instance>.+)\.disk(?P<index>\d+)(?P<drbd>_data)?")
_EXACT_BYTES_RE = re.compile(r"\s*(?P<num>\d+)\s*[bB]\s*")
_IMAGE_RE = re.compile(r"/[A-Za-z0-9._+@=,/-]+")

# DRBD internal metadata: 4 KiB superblock, 32 KiB activity log and, per peer,
# a bitmap of one bit per 4 KiB of the backing disk, rounded up to 4 KiB.
_MD_FIXED = 36 * names.KIB
_BITMAP_GRANULE = 4 * names.KIB


def size(value, field="size"):
    """Bytes of ``value``: ``10G``, ``512M`` (see :func:`names.size_bytes`) or exact ``1073741824B``.

    The size must be a whole number of 512-byte sectors, so that every template
    can hold exactly that size.
    """
    # names.size_bytes reads a bare number as MiB and has no byte unit; an exact
    # byte count (a migration's destination disk) needs one.
    exact = _EXACT_BYTES_RE.fullmatch(value) if isinstance(value, str) else None
    amount = int(exact.group("num")) if exact else names.size_bytes(value, field)
    if amount <= 0 or amount % SECTOR:
        raise names.ValidationError(field, value, "give a whole number of 512-byte sectors: " + names.SIZE_FIX)
    return amount


def exact_size(amount):
    """The size string that :func:`size` reads back as exactly ``amount`` bytes."""
    return f"{int(amount)}B"


def index(value, field="index"):
    """Return the disk index as an int (0..MAX_INDEX)."""
    return names.positive_int(value, field, maximum=MAX_INDEX, minimum=0)


def disk_name(instance, number, template):
    """The name of disk ``number`` of ``instance``: LV name (plain), DRBD resource (drbd), else base name."""
    names.name(instance, "instance")
    base = base_name(instance, index(number))
    if template in LVM_TEMPLATES:
        lv = lv_name(base, template)
        fix = "use a name LVM accepts: without " + ", ".join(_LVM_RESERVED) + "; not starting with snapshot or pvmove"
        if any(word in lv for word in _LVM_RESERVED) or lv.startswith(_LVM_RESERVED_PREFIXES):
            raise names.ValidationError("instance", instance, fix)
    if template == "drbd" and len(base) > DRBD_NAME_MAX:
        fix = f"use a name of at most {DRBD_NAME_MAX - len(base) + len(instance)} characters for drbd disks"
        raise names.ValidationError("instance", instance, fix)
    return base


def base_name(instance, number):
    """``<instance>.disk<N>`` (unchecked; :func:`disk_name` checks)."""
    return f"{instance}.disk{number}"


def lv_name(base, template):
    """The LV of a disk named ``base`` (see :func:`disk_name`)."""
    return base + DRBD_DATA_SUFFIX if template == "drbd" else base


def file_path(directory, instance, number, fmt):
    """``<directory>/<instance>/disk<N>.<fmt>``."""
    names.choice(fmt, "fmt", FORMATS)
    return os.path.join(directory, instance, f"disk{index(number)}.{fmt}")


def lv_path(vg, lv):
    """``/dev/<vg>/<lv>``."""
    return f"/dev/{vg}/{lv}"


def drbd_path(minor):
    """``/dev/drbd<minor>``."""
    return f"/dev/drbd{minor}"


def device_path(template, location, instance, number, fmt="qcow2", minor=None):
    """Where disk ``number`` of ``instance`` is on a node whose storage for ``template`` is ``location``
    (a directory or a VG); drbd disks are their resource's device, ``/dev/drbd<minor>``."""
    if template in FILE_TEMPLATES:
        return file_path(location, instance, number, fmt)
    if template == "plain":
        return lv_path(location, lv_name(disk_name(instance, number, template), template))
    return drbd_path(minor)


def parse_file_name(file_name):
    """``(index, fmt)`` of a disk file name such as ``disk0.qcow2``; None for other files."""
    match = _FILE_RE.fullmatch(file_name)
    return (int(match.group("index")), match.group("fmt")) if match else None


def parse_lv_name(lv):
    """``(instance, index, template)`` of a disk LV name; None for other LVs."""
    match = _LV_RE.fullmatch(lv)
    if not match:
        return None
    return match.group("instance"), int(match.group("index")), "drbd" if match.group("drbd") else "plain"


def drbd_meta_bytes(backing_bytes, peers=1):
    """Bytes of DRBD internal metadata on a backing disk of ``backing_bytes``."""
    bitmap = math.ceil(backing_bytes / (_BITMAP_GRANULE * 8))
    return _MD_FIXED + peers * math.ceil(bitmap / _BITMAP_GRANULE) * _BITMAP_GRANULE


def drbd_usable_bytes(backing_bytes, peers=1):
    """Bytes the DRBD device offers on a backing disk of ``backing_bytes`` (internal metadata)."""
    return backing_bytes - drbd_meta_bytes(backing_bytes, peers)


def drbd_backing_bytes(data_bytes, peers=1):
    """The smallest whole-MiB backing disk whose DRBD device holds ``data_bytes``."""
    backing = math.ceil((data_bytes + drbd_meta_bytes(data_bytes, peers)) / names.MIB) * names.MIB
    while drbd_usable_bytes(backing, peers) < data_bytes:
        backing += names.MIB
    return backing


def drbd_local_minor(config_text, nodename):
    """The minor of ``nodename``'s ``on`` section in a resource file (None if absent)."""
    section = re.search(rf'on "{re.escape(nodename)}" {{(?P<body>[^}}]*)}}', config_text or "")
    minor = section and re.search(r"device minor (\d+);", section.group("body"))
    return int(minor.group(1)) if minor else None


def qemu_img_create(path, fmt, size_bytes):
    """``qemu-img create`` of a new image of exactly ``size_bytes``."""
    return [QEMU_IMG, "create", "-q", "-f", names.choice(fmt, "fmt", FORMATS), path, str(size_bytes)]


def qemu_img_info(path, fmt):
    """``qemu-img info`` as JSON; ``-U`` reads images that a running domain holds."""
    return [QEMU_IMG, "info", "--output=json", "-U", "-f", names.choice(fmt, "fmt", FORMATS), path]


def qemu_img_resize(path, fmt, size_bytes):
    """``qemu-img resize`` to ``size_bytes``; without ``--shrink`` qemu-img refuses to shrink."""
    return [QEMU_IMG, "resize", "-q", "-f", names.choice(fmt, "fmt", FORMATS), path, str(size_bytes)]


QEMU_NBD = "qemu-nbd"


def nbd_uri(address, port, export):
    """``nbd://<address>:<port>/<export>`` (IPv6 addresses in brackets)."""
    host = f"[{address}]" if ":" in address else address
    return f"nbd://{host}:{port}/{export}"


def qemu_nbd_export(path, fmt, address, port, export, pidfile):
    """``qemu-nbd`` serving the guest data of one image read-only to one client on ``address:port``.

    ``--fork`` returns once the socket listens; the server exits when its client disconnects.
    """
    return [
        QEMU_NBD, "--read-only", "--fork", "--shared=1", "--pid-file", pidfile, "--bind", address,
        "--port", str(port), "--format", names.choice(fmt, "fmt", FORMATS), "--export-name", export, path,
    ]  # fmt: skip


def qemu_img_convert_into(source, path, fmt, source_fmt="raw"):
    """``qemu-img convert`` of the guest data at ``source`` (an image file or URI) into the existing image or
    block device ``path`` (``-n``: the target keeps its size; zeroes are written, so an LV's old data is gone)."""
    return [QEMU_IMG, "convert", "-n", "-f", names.choice(source_fmt, "source_fmt", FORMATS),
            "-O", names.choice(fmt, "fmt", FORMATS), source, path]


def image_format(path, field="image"):
    """The format of the OS image ``path``, read from its name (``.qcow2``; ``.raw`` or ``.img``: raw), never
    probed from its content."""
    fmt = IMAGE_SUFFIXES.get(os.path.splitext(path)[1])
    if fmt is None:
        raise names.ValidationError(field, path, "name the image file *.qcow2 (qcow2), *.raw or *.img (raw): "
                                                 "vmcluster reads an image's format from its name")
    return fmt


def image(value, field="image"):
    """Return ``value`` if it names an OS image vmcluster accepts: an absolute, normalised path without
    spaces or shell metacharacters, whose name tells its format (:func:`image_format`)."""
    names.path(value, field)
    if not _IMAGE_RE.fullmatch(value):
        raise names.ValidationError(field, value, "use letters, digits and . _ - + @ = , / only in the image path "
                                                  "(no spaces or shell metacharacters)")
    image_format(value, field)
    return value


def parse_qemu_img_info(text):
    """``{"size": virtual bytes, "format": ..., "allocated": bytes on disk}`` of ``qemu-img info --output=json``."""
    data = json.loads(text)
    return {"size": data["virtual-size"], "format": data["format"], "allocated": data.get("actual-size")}
