"""Grain ``cluster_node``: static facts of a vmcluster node.

cpus, CPU model, memory total, hypervisor type and version, libvirt version,
whether KVM is usable, the storage configured for instances and how other nodes
reach this one for migrations (minion config ``vmcluster:storage`` and
``vmcluster:migration``), its Linux bridges (as at the last grains refresh) and the DRBD userspace and kernel versions (None when absent).
"""

import logging
import os
import shutil
import subprocess

try:
    import libvirt

    from saltext.vmcluster import hypervisor, nodefacts

    IMPORT_ERROR = None
except ImportError as exc:
    IMPORT_ERROR = exc

log = logging.getLogger(__name__)
__virtualname__ = "cluster_node"


def __virtual__():
    if IMPORT_ERROR:
        return False, f"cluster_node grain: install saltext-vmcluster[libvirt] on this minion ({IMPORT_ERROR})"
    if __opts__.get("__role") == "master":
        return False, "cluster_node grain: describes cluster nodes (minions), not the salt-master"
    return __virtualname__


def _read(path):
    try:
        with open(path) as handle:
            return handle.read()
    except OSError:
        return ""


def _drbd():
    if not shutil.which("drbdadm"):
        return {"userspace": None, "kernel": None}
    out = subprocess.run(["drbdadm", "--version"], capture_output=True, text=True, check=False).stdout
    return nodefacts.drbd_versions(out)


def _hypervisor():
    uri = hypervisor.uri_from_opts(__opts__)
    try:
        with hypervisor.connection(uri) as conn:
            return {"libvirt_uri": uri, **hypervisor.hypervisor_facts(conn)}
    except libvirt.libvirtError as exc:
        log.warning("cluster_node grain: libvirt at %s unreachable: %s", uri, exc)
        return {"libvirt_uri": uri, "hypervisor": None, "libvirt_error": str(exc)}


def cluster_node():
    """Return the ``cluster_node`` grain."""
    return {
        "cluster_node": {
            "cpus": os.cpu_count(),
            "cpu_model": nodefacts.cpu_model(_read("/proc/cpuinfo")),
            "memory_total": nodefacts.parse_meminfo(_read("/proc/meminfo")).get("MemTotal"),
            "storage": (__opts__.get("vmcluster") or {}).get("storage", {}),
            "migration": (__opts__.get("vmcluster") or {}).get("migration", {}),
            "bridges": nodefacts.bridges(),
            "drbd": _drbd(),
            **_hypervisor(),
        }
    }
