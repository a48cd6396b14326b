"""libvirt access shared by the node-side loader modules (needs libvirt-python)."""

import contextlib
import os
import xml.etree.ElementTree as ET
from xml.sax.saxutils import escape

import libvirt

from saltext.vmcluster import nodefacts

DEFAULT_URI = "qemu:///system"
URI_OPTION = "cluster_vm.uri"

# libvirt prints every error on stderr by default; we raise them as exceptions instead.
libvirt.registerErrorHandler(lambda _ctx, _err: None, None)


def uri_from_opts(opts):
    """The libvirt URI of this node: minion config ``cluster_vm.uri``, default ``qemu:///system``."""
    return opts.get(URI_OPTION) or DEFAULT_URI


@contextlib.contextmanager
def connection(uri):
    """An open libvirt connection, closed on exit."""
    conn = libvirt.open(uri)
    try:
        yield conn
    finally:
        conn.close()


def kvm_usable(capabilities_xml):
    """True when libvirt offers KVM domains and /dev/kvm is usable by us."""
    caps = ET.fromstring(capabilities_xml)
    offers_kvm = any(d.get("type") == "kvm" for d in caps.iter("domain"))
    return offers_kvm and os.access("/dev/kvm", os.R_OK | os.W_OK)


def hypervisor_facts(conn):
    """Static facts: hypervisor type and version, libvirt version, KVM usability."""
    return {
        "hypervisor": conn.getType().lower(),
        "hypervisor_version": nodefacts.libvirt_version(conn.getVersion()),
        "libvirt_version": nodefacts.libvirt_version(conn.getLibVersion()),
        "kvm_usable": kvm_usable(conn.getCapabilities()),
    }


def _qemu_rss_mib(name):
    try:
        with open(f"/run/libvirt/qemu/{name}.pid") as pidfile:
            pid = int(pidfile.read().strip())
        with open(f"/proc/{pid}/status") as status:
            return nodefacts.vm_rss_mib(status.read())
    except (OSError, ValueError):
        return 0


def domains(conn):
    """Every defined domain: name, running, memory MiB, vcpus, and resident MiB when running."""
    result = []
    for dom in conn.listAllDomains():
        state, max_kib, _cur_kib, vcpus, _cpu_time = dom.info()
        running = state in (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_BLOCKED)
        result.append(
            {
                "name": dom.name(),
                "running": running,
                "memory": max_kib // 1024,
                "vcpus": vcpus,
                "rss": _qemu_rss_mib(dom.name()) if running else 0,
            }
        )
    return result


def _pool_xml(name, directory):
    return (f"<pool type='dir'><name>{escape(name)}</name><target><path>{escape(directory)}</path>"
            "<permissions><mode>0750</mode></permissions></target></pool>")


def _volume_xml(file_name, fmt, capacity):
    return (f"<volume><name>{escape(file_name)}</name><capacity unit='bytes'>{int(capacity)}</capacity>"
            f"<allocation>0</allocation><target><format type='{escape(fmt)}'/></target></volume>")


@contextlib.contextmanager
def _dir_pool(conn, name, directory):
    """A transient libvirt directory pool on ``directory`` (made if missing), gone on exit."""
    with contextlib.suppress(libvirt.libvirtError):  # left by an interrupted call
        conn.storagePoolLookupByName(name).destroy()
    pool = conn.storagePoolCreateXML(_pool_xml(name, directory), libvirt.VIR_STORAGE_POOL_CREATE_WITH_BUILD)
    try:
        yield pool
    finally:
        pool.destroy()


def _by_folder(paths):
    folders = {}
    for path in paths:
        folders.setdefault(os.path.dirname(path), []).append(path)
    return sorted(folders.items())


@contextlib.contextmanager
def new_image_files(conn, images, pool_name):
    """Create image files ``[{"path", "format", "size"}]`` (exact virtual sizes in bytes) through the
    libvirt at ``conn`` — a node reached only through its libvirtd — and yield the paths created;
    existing files are left as they are. If the block fails, the files created are deleted again.

    libvirt sizes new qcow2 images in KiB, so a size must be a multiple of 1024.
    """
    formats = {image["path"]: image for image in images}
    created = []
    for number, (folder, paths) in enumerate(_by_folder(formats)):
        with _dir_pool(conn, f"{pool_name}-{number}", folder) as pool:
            present = set(pool.listVolumes())
            for path in paths:
                if os.path.basename(path) not in present:
                    pool.createXML(_volume_xml(os.path.basename(path), formats[path]["format"],
                                               formats[path]["size"]), 0)
                    created.append(path)
    try:
        yield created
    except BaseException:
        for number, (folder, paths) in enumerate(_by_folder(created)):
            with _dir_pool(conn, f"{pool_name}-{number}", folder) as pool:
                for path in paths:
                    pool.storageVolLookupByName(os.path.basename(path)).delete(0)
        raise
