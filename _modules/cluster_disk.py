"""
Instance disks of a vmcluster node, per disk template.

:depends: the ``saltext.vmcluster`` package; ``qemu-img`` for ``file`` and
    ``sharedfile``; Salt's ``lvm`` module (lvm2) for ``plain`` and ``drbd``;
    vmcluster's ``drbd`` module (drbd-utils) for ``drbd``
:configuration: where each template keeps its disks, in the minion config::

        vmcluster:
          storage:
            file: /srv/vmc/instances     # node-local directory
            sharedfile: /mnt/shared      # directory shared by all nodes
            plain: vg0                   # volume group
            drbd: vg0                    # volume group of the DRBD backing LVs

Disk names, paths and sizes follow :mod:`saltext.vmcluster.disks`. Every
function checks all of its input (and free space) before it changes anything.
"""

import contextlib
import dataclasses
import logging
import math
import os
import signal
import socket
import tempfile

import salt.utils.path
from salt.exceptions import CommandExecutionError, SaltInvocationError

MISSING = None
try:
    from saltext.vmcluster import disks, names, nodefacts
    from saltext.vmcluster.loader_helpers import valid as _valid
except ImportError as exc:
    MISSING = exc.name

log = logging.getLogger(__name__)

__virtualname__ = "cluster_disk"


def __virtual__():
    if MISSING:
        return False, f"cluster_disk needs the saltext.vmcluster package ({MISSING} is missing)"
    return __virtualname__



@dataclasses.dataclass(frozen=True)
class _Disk:
    """One validated disk: its template, the template's storage location and its names."""

    template: str
    location: str
    instance: str
    index: int
    name: str

    @property
    def lv(self):
        return disks.lv_name(self.name, self.template)

    @property
    def lv_path(self):
        return disks.lv_path(self.location, self.lv)

    def file_path(self, fmt):
        return disks.file_path(self.location, self.instance, self.index, fmt)


def _location(template):
    """The storage location configured for ``template``, validated."""
    storage = (__opts__.get("vmcluster") or {}).get("storage") or {}
    location = storage.get(template)
    field = f"vmcluster:storage:{template}"
    if not location:
        raise SaltInvocationError(
            f"template: {template!r} storage is not configured on this node; set {field} in the minion config"
        )
    if template in disks.FILE_TEMPLATES:
        _valid(names.path, location, field)
    else:
        _valid(names.name, location, field)
    return location


def _disk(instance, index, template):
    template = _valid(names.choice, template, "template", disks.TEMPLATES)
    name = _valid(disks.disk_name, instance, index, template)
    return _Disk(template, _location(template), instance, disks.index(index), name)


def _qemu_utils(argv):
    """Run a program of qemu-utils (qemu-img, qemu-nbd); its stdout, or an error with its stderr."""
    if not salt.utils.path.which(argv[0]):
        raise CommandExecutionError(f"cluster_disk: {argv[0]} not found (install qemu-utils)")
    result = __salt__["cmd.run_all"](argv, python_shell=False)
    if result["retcode"] != 0:
        raise CommandExecutionError(
            f"{' '.join(argv)} failed ({result['retcode']}): {(result['stderr'] or result['stdout']).strip()}"
        )
    return result["stdout"]


def _format(disk, fmt):
    """The format to create: qcow2 by default for files; LVs hold raw data only."""
    if disk.template in disks.LVM_TEMPLATES:
        if fmt not in (None, "raw"):
            raise SaltInvocationError(f"fmt: {fmt!r}: {disk.template} disks are raw LVs; leave fmt out or give raw")
        return "raw"
    return _valid(names.choice, fmt or "qcow2", "fmt", disks.FORMATS)


def _need_space(what, free_mib, needed_bytes):
    if needed_bytes > free_mib * names.MIB:
        raise CommandExecutionError(
            f"size: {needed_bytes} bytes do not fit in {what} ({free_mib} MiB free); "
            "give a smaller size or free space first"
        )


# --- file and sharedfile ---------------------------------------------------


def _find_file(disk):
    """``(path, fmt)`` of the existing disk file, or None."""
    for fmt in disks.FORMATS:
        path = disk.file_path(fmt)
        if os.path.exists(path):
            return path, fmt
    return None


def _file_info(path, fmt):
    return disks.parse_qemu_img_info(_qemu_utils(disks.qemu_img_info(path, fmt)))


def _directory_free(disk):
    if not os.path.isdir(disk.location):
        raise CommandExecutionError(
            f"vmcluster:storage:{disk.template}: directory {disk.location} does not exist; create it first"
        )
    return nodefacts.directory_space(disk.location)["free"]


def _create_file(disk, fmt, size, source=None):
    _need_space(disk.location, _directory_free(disk), size)
    path = disk.file_path(fmt)
    os.makedirs(os.path.dirname(path), mode=0o750, exist_ok=True)
    # qemu-img create overwrites; build aside and link: never clobbers a disk created meanwhile
    handle, temp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=f".disk{disk.index}.")
    os.close(handle)
    try:
        _qemu_utils(disks.qemu_img_create(temp, fmt, size))
        if source:
            _qemu_utils(disks.qemu_img_convert_into(source["path"], temp, fmt, source["format"]))
        os.link(temp, path)
    except FileExistsError:
        raise CommandExecutionError(f"disk {path} already exists") from None
    finally:
        os.unlink(temp)
        if not os.path.exists(path):
            with contextlib.suppress(OSError):  # the instance's own directory, if this made it
                os.rmdir(os.path.dirname(path))


def _remove_file(disk):
    found = _find_file(disk)
    if found:
        os.unlink(found[0])
        with contextlib.suppress(OSError):  # other disks of the instance remain
            os.rmdir(os.path.dirname(found[0]))
    return found is not None


def _image_info(image, field):
    """The OS image ``image`` on this node: ``{"path", "size", "format", "allocated"}`` (format from its name)."""
    path = _valid(disks.image, image, field)
    if not os.path.isfile(path):
        raise CommandExecutionError(f"{field}: image {path} does not exist on this node; put it at that path on "
                                    "every node")
    return {"path": path, **_file_info(path, disks.image_format(path))}


# --- plain and drbd (LVM through Salt's lvm module) -------------------------


def _lv_bytes(disk):
    """Size of the disk's LV in bytes, or None when there is none."""
    lv = __salt__["lvm.lvdisplay"](f"{disk.location}/{disk.lv}", quiet=True).get(disk.lv_path)
    return int(lv["Logical Volume Size"]) * disks.SECTOR if lv else None


def _extents(disk, size):
    """``size`` rounded up to whole extents of the disk's VG, after checking that it fits."""
    vg = __salt__["lvm.vgdisplay"](disk.location, quiet=True).get(disk.location)
    if vg is None:
        raise CommandExecutionError(
            f"vmcluster:storage:{disk.template}: volume group {disk.location} not found; create it first"
        )
    extent = int(vg["Physical Extent Size (kB)"]) * names.KIB
    needed = math.ceil(size / extent) * extent
    _need_space(f"volume group {disk.location}", nodefacts.volume_group_space(vg)["free"], needed)
    return needed


def _lv_size_for(disk, size):
    """Bytes the disk's LV needs to offer ``size`` bytes (DRBD adds its metadata)."""
    return disks.drbd_backing_bytes(size) if disk.template == "drbd" else size


def _lvm_failed(disk, verb, output):
    # Salt's lvm functions return lvm's stderr instead of raising: the LV's state tells.
    return CommandExecutionError(f"{verb} of LV {disk.location}/{disk.lv} failed: {output}")


def _create_lv(disk, size, source=None):
    out = __salt__["lvm.lvcreate"](disk.lv, disk.location, size=f"{_extents(disk, size)}b")
    if _lv_bytes(disk) is None:
        raise _lvm_failed(disk, "lvcreate", out.get("Output from lvcreate"))
    if source:  # drbd: onto the backing LV before DRBD's metadata, which lies behind the data
        try:
            _qemu_utils(disks.qemu_img_convert_into(source["path"], disk.lv_path, "raw", source["format"]))
        except CommandExecutionError:
            _remove_lv(disk)
            raise


def _resize_lv(disk, size):
    current = _lv_bytes(disk)
    _extents(disk, size - current)
    out = __salt__["lvm.lvresize"](size=f"{size}b", lvpath=disk.lv_path)
    if _lv_bytes(disk) < size:
        raise _lvm_failed(disk, "lvresize", out.get("Output from lvresize"))


def _remove_lv(disk):
    if _lv_bytes(disk) is None:
        return False
    out = __salt__["lvm.lvremove"](disk.lv, disk.location)
    if _lv_bytes(disk) is not None:
        raise _lvm_failed(disk, "lvremove", out)
    return True


def _drbd_nodes(disk, nodes):
    """``nodes`` with this node's backing LV as default ``disk``; one of them must be this node."""
    if not isinstance(nodes, (list, tuple)) or not all(isinstance(node, dict) for node in nodes):
        raise SaltInvocationError("nodes: give the two nodes of the resource as mappings with name and address")
    local = os.uname().nodename
    if local not in [node.get("name") for node in nodes]:
        raise SaltInvocationError(f"nodes: none is this node ({local}, as uname -n names it); add it")
    return [{"disk": disk.lv_path, **node} for node in nodes]


def _drbd_minor(disk):
    """The DRBD minor of the disk's resource on this node (from its resource file), or None."""
    return disks.drbd_local_minor(__salt__["drbd.read_config"](disk.name), os.uname().nodename)


def _remove_drbd(disk, strict=True):
    """Bring the resource down, remove its file and the LV; ``strict=False`` goes on after a failure."""
    steps = [lambda: _remove_lv(disk)]
    if __salt__["drbd.read_config"](disk.name) is not None:
        steps = [lambda: __salt__["drbd.down"](disk.name), lambda: __salt__["drbd.remove_config"](disk.name), *steps]
    removed = False
    for step in steps:
        try:
            removed = step() or removed
        except CommandExecutionError as exc:
            if strict:
                raise
            log.warning("cluster_disk: cleaning up %s: %s", disk.name, exc)
    return removed


# --- public functions -------------------------------------------------------


def _path(disk, fmt=None):
    if disk.template in disks.FILE_TEMPLATES:
        found = _find_file(disk)
        return found[0] if found else disk.file_path(_format(disk, fmt))
    if disk.template == "plain":
        return disk.lv_path
    minor = _drbd_minor(disk)
    return None if minor is None else disks.drbd_path(minor)


def _exists(disk):
    if disk.template in disks.FILE_TEMPLATES:
        return _find_file(disk) is not None
    return _lv_bytes(disk) is not None


def _info(disk):
    if disk.template in disks.FILE_TEMPLATES:
        found = _find_file(disk)
        details = found and {"path": found[0], **_file_info(*found)}
    else:
        lv_bytes = _lv_bytes(disk)
        details = lv_bytes and {"path": disk.lv_path, "size": lv_bytes, "format": "raw", "allocated": lv_bytes}
        if details and disk.template == "drbd":
            details.update(path=_path(disk), size=disks.drbd_usable_bytes(lv_bytes), backing=disk.lv_path)
    if not details:
        raise CommandExecutionError(f"disk {disk.index} of {disk.instance} ({disk.template}) does not exist")
    return {"instance": disk.instance, "index": disk.index, "template": disk.template, **details}


def size_bytes(size):
    """
    Return ``size`` in bytes as ``create`` and ``grow`` read it (``10G``, ``512M``, ``1073741824B``).

    CLI Example:

    .. code-block:: bash

        salt node1 cluster_disk.size_bytes 10G
    """
    return _valid(disks.size, size)


def path(instance, index, template, fmt=None):
    """
    Return the device path of a disk (where it is, or where ``create`` would put it).

    ``file``/``sharedfile``: the existing file, else the one for ``fmt``
    (default qcow2). ``plain``: ``/dev/<vg>/<instance>.disk<N>``. ``drbd``:
    ``/dev/drbd<minor>`` from the resource file (None when there is none).

    CLI Example:

    .. code-block:: bash

        salt node1 cluster_disk.path web1 0 file
    """
    return _path(_disk(instance, index, template), fmt)


def exists(instance, index, template):
    """
    Return True if the disk exists on this node.

    CLI Example:

    .. code-block:: bash

        salt node1 cluster_disk.exists web1 0 plain
    """
    return _exists(_disk(instance, index, template))


def info(instance, index, template):
    """
    Return a disk's ``path``, exact virtual ``size`` in bytes, ``format`` and ``allocated`` bytes.

    ``size`` is what the guest sees (for ``drbd``: what the DRBD device offers
    on the backing LV, named in ``backing``). Create a disk of exactly the same
    size elsewhere with ``size=<size>B``.

    CLI Example:

    .. code-block:: bash

        salt node1 cluster_disk.info web1 0 file
    """
    return _info(_disk(instance, index, template))


def image_info(image):
    """
    Return an OS image's ``path``, virtual ``size`` in bytes, ``format`` (from its
    name: ``*.qcow2``; ``*.raw``/``*.img`` raw) and ``allocated`` bytes; an error
    if it is not on this node.

    CLI Example:

    .. code-block:: bash

        salt node1 cluster_disk.image_info /var/lib/vmcluster/images/debian-12.qcow2
    """
    return _image_info(image, "image")


def create(
    instance,
    index,
    size,
    template,
    fmt=None,
    nodes=None,
    port=None,
    minor=None,
    secret=None,
    hmac_alg="sha256",
    drbd9=False,
    source=None,
):
    """
    Create disk ``index`` of ``instance``; return its :func:`info`.

    size
        ``10G``, ``512M``, ``1.5T`` (no unit: MiB), or an exact byte count such
        as ``1073741824B`` (the destination of a migration: the same virtual
        size as ``info`` reports). A whole number of 512-byte sectors; LVs
        round up to whole extents.
    template
        ``file``, ``sharedfile``, ``plain`` or ``drbd``.
    fmt
        ``qcow2`` (default) or ``raw`` for files; LVs are raw.
    nodes, port, minor, secret, hmac_alg, drbd9
        ``drbd`` only, from the master: the resource as for ``drbd.render``.
        A node without ``disk`` uses this node's backing LV path. The LV gets
        room for DRBD's internal metadata; then the resource file is written,
        metadata created and the resource brought up (Secondary).
    source
        An OS image on this node (``/var/lib/vmcluster/images/debian-12.qcow2``;
        ``*.qcow2``, or ``*.raw``/``*.img`` for raw: the name tells the format)
        whose guest data the new disk starts with; the disk keeps exactly
        ``size`` (an image larger than that is refused). ``drbd``: give it on
        the node that becomes the first primary; the initial sync copies it.

    CLI Example:

    .. code-block:: bash

        salt node1 cluster_disk.create web1 0 10G file
        salt node1 cluster_disk.create web1 0 1073741824B file fmt=raw
        salt node1 cluster_disk.create web1 1 20G plain
        salt node1 cluster_disk.create web1 0 10G file source=/var/lib/vmcluster/images/debian-12.qcow2
        salt node1 cluster_disk.create web1 0 10G drbd nodes='[{name: node1, address: 10.0.0.1}, {name: node2, address: 10.0.0.2}]' port=7789 minor=0 secret=s3cret
    """
    disk = _disk(instance, index, template)
    size = size_bytes(size)
    fmt = _format(disk, fmt)
    source = source and _image_info(source, "source")
    if source and source["size"] > size:
        raise SaltInvocationError(f"source: image {source['path']} ({source['size']} bytes) is larger than the disk "
                                  f"({size} bytes); give a disk of at least the image's size")
    drbd_args = None
    if disk.template == "drbd":
        drbd_args = (disk.name, _drbd_nodes(disk, nodes), port, minor, secret, hmac_alg, False, drbd9)
        __salt__["drbd.render"](*drbd_args)  # validates every resource argument, writes nothing
        if __salt__["drbd.read_config"](disk.name) is not None:
            raise CommandExecutionError(f"DRBD resource {disk.name} is already configured on this node")
    if _exists(disk):
        raise CommandExecutionError(f"disk {disk.index} of {disk.instance} ({disk.template}) already exists")
    if disk.template in disks.FILE_TEMPLATES:
        _create_file(disk, fmt, size, source)
    else:
        _create_lv(disk, _lv_size_for(disk, size), source)
    if drbd_args:
        try:
            __salt__["drbd.write_config"](*drbd_args)
            __salt__["drbd.create_md"](disk.name)
            __salt__["drbd.up"](disk.name)
        except CommandExecutionError:
            log.error("cluster_disk: creating DRBD disk %s failed; removing what was created", disk.name)
            _remove_drbd(disk, strict=False)
            raise
    return _info(disk)


def grow(instance, index, template, size):
    """
    Grow a disk to ``size`` (never shrinks); return ``{"old": bytes, "new": bytes}``.

    A disk that already has ``size`` stays as it is (``old == new``). Files of a
    running domain are locked by QEMU: grow those through libvirt. ``drbd``
    grows the backing LV; after both nodes grew it, run ``drbd.resize`` on the
    primary.

    CLI Example:

    .. code-block:: bash

        salt node1 cluster_disk.grow web1 0 20G file
    """
    disk = _disk(instance, index, template)
    size = size_bytes(size)
    old = _info(disk)
    if size < old["size"]:
        raise SaltInvocationError(
            f"size: {size} bytes is smaller than the disk ({old['size']} bytes); vmcluster never shrinks disks"
        )
    if size > old["size"]:
        if disk.template in disks.FILE_TEMPLATES:
            _need_space(disk.location, _directory_free(disk), size - old["size"])
            _qemu_utils(disks.qemu_img_resize(old["path"], old["format"], size))
        else:
            _resize_lv(disk, _lv_size_for(disk, size))
    return {"old": old["size"], "new": _info(disk)["size"]}


def remove(instance, index, template):
    """
    Remove a disk; return True if there was one.

    ``drbd``: brings the resource down, removes its file and the backing LV.

    CLI Example:

    .. code-block:: bash

        salt node1 cluster_disk.remove web1 0 file
    """
    disk = _disk(instance, index, template)
    if disk.template in disks.FILE_TEMPLATES:
        return _remove_file(disk)
    if disk.template == "plain":
        return _remove_lv(disk)
    return _remove_drbd(disk)


def _export_pidfile(disk):
    folder = os.path.join(__opts__["cachedir"], "cluster_disk", "exports")
    os.makedirs(folder, mode=0o700, exist_ok=True)
    return os.path.join(folder, f"{disk.name}.pid")


def _stop_export(pidfile):
    """Stop the qemu-nbd that wrote ``pidfile`` if it still serves; True if it did."""
    try:
        with open(pidfile, encoding="ascii") as handle:
            pid = int(handle.read().strip())
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            argv = handle.read().split(b"\0")
    except (OSError, ValueError):
        return False
    if os.path.basename(argv[0]) != disks.QEMU_NBD.encode() or pidfile.encode() not in argv:
        return False  # the server is gone and its pid reused
    os.kill(pid, signal.SIGTERM)
    return True


def _free_port(address):
    family, kind, _proto, _name, sockaddr = socket.getaddrinfo(address, 0, type=socket.SOCK_STREAM)[0]
    with socket.socket(family, kind) as sock:
        sock.bind(sockaddr)
        return sock.getsockname()[1]


def export(instance, index, template, address):
    """
    Serve a disk's guest data read-only over NBD on ``address`` (an IP address of
    this node the target node can reach) for one client: ``import_from`` on the
    target node. The server exits when that client disconnects; ``unexport``
    stops it earlier. A disk that a running domain holds cannot be exported.

    Returns ``{"uri": "nbd://<address>:<port>/<disk>", "size": virtual bytes}``.

    CLI Example:

    .. code-block:: bash

        salt node1 cluster_disk.export web1 0 file 10.0.0.1
    """
    disk = _disk(instance, index, template)
    address = _valid(names.ip_address, address, "address")
    details = _info(disk)
    pidfile = _export_pidfile(disk)
    _stop_export(pidfile)
    port = _free_port(address)
    _qemu_utils(disks.qemu_nbd_export(details["path"], details["format"], address, port, disk.name, pidfile))
    return {"uri": disks.nbd_uri(address, port, disk.name), "size": details["size"]}


def unexport(instance, index, template):
    """
    Stop serving a disk that ``export`` serves; return True if it was still served.

    CLI Example:

    .. code-block:: bash

        salt node1 cluster_disk.unexport web1 0 file
    """
    return _stop_export(_export_pidfile(_disk(instance, index, template)))


def import_from(instance, index, template, uri):
    """
    Copy the guest data that another node's ``export`` serves at ``uri`` into this
    node's existing disk (``create`` it first with the same exact size). Copying
    again overwrites the disk with the same data.

    Returns the disk's :func:`info`.

    CLI Example:

    .. code-block:: bash

        salt node1 cluster_disk.import_from web1 0 file nbd://10.0.0.2:10809/web1.disk0
    """
    disk = _disk(instance, index, template)
    _valid(names.uri, uri, "uri")
    if not uri.startswith("nbd://"):
        raise SaltInvocationError(f"uri: invalid value {uri!r}: give the nbd:// URI that cluster_disk.export returned")
    details = _info(disk)
    _qemu_utils(disks.qemu_img_convert_into(uri, details["path"], details["format"]))
    return _info(disk)


def _listed(template, location, instance):
    """``(instance, index, extra)`` of every disk of ``template`` at ``location``."""
    if template in disks.FILE_TEMPLATES:
        for owner in sorted(os.listdir(location)) if os.path.isdir(location) else ():
            if instance in (None, owner) and os.path.isdir(os.path.join(location, owner)):
                for file_name in sorted(os.listdir(os.path.join(location, owner))):
                    parsed = disks.parse_file_name(file_name)
                    if parsed:
                        yield owner, parsed[0], {"format": parsed[1]}
        return
    for lv in __salt__["lvm.lvdisplay"](quiet=True).values():
        parsed = disks.parse_lv_name(os.path.basename(lv["Logical Volume Name"]))
        if lv["Volume Group Name"] == location and parsed and parsed[2] == template:
            if instance in (None, parsed[0]):
                yield parsed[0], parsed[1], {"format": "raw"}


def list_disks(instance=None):
    """
    List the disks on this node (of every configured template, or of ``instance``).

    Each entry: ``instance``, ``index``, ``template``, ``path``, ``format``.

    CLI Example:

    .. code-block:: bash

        salt node1 cluster_disk.list_disks
        salt node1 cluster_disk.list_disks web1
    """
    if instance is not None:
        _valid(names.name, instance, "instance")
    storage = (__opts__.get("vmcluster") or {}).get("storage") or {}
    found = []
    for template in sorted(set(storage) & set(disks.TEMPLATES)):
        location = _location(template)
        for owner, number, extra in _listed(template, location, instance):
            disk = _Disk(template, location, owner, number, disks.base_name(owner, number))
            found.append({"instance": owner, "index": number, "template": template, "path": _path(disk), **extra})
    return sorted(found, key=lambda entry: (entry["instance"], entry["index"], entry["template"]))
