"""libvirt access shared by the node-side loader modules (needs libvirt-python)."""

import contextlib
import os
import xml.etree.ElementTree as ET

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
