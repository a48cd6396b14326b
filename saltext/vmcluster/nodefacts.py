"""Node facts from the node's own sources: /proc, statvfs, libvirt, drbdadm (pure parsing).

Memory comes from /proc/meminfo, never from libvirt's nodeinfo, which may
report a single NUMA node only (LAB.md).
"""

import os
import re

MIB = 1024 * 1024


def parse_meminfo(text):
    """``/proc/meminfo`` -> ``{key: MiB}`` (values there are in KiB)."""
    values = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        fields = rest.split()
        if fields and fields[0].isdigit():
            values[key.strip()] = int(fields[0]) // 1024
    return values


def cpu_model(cpuinfo_text):
    """The first ``model name`` of ``/proc/cpuinfo`` (None when absent, e.g. on non-x86)."""
    match = re.search(r"^model name\s*:\s*(.+)$", cpuinfo_text, re.MULTILINE)
    return match.group(1).strip() if match else None


def libvirt_version(number):
    """libvirt's packed version number (1000000*major + 1000*minor + micro) as text."""
    return f"{number // 1000000}.{number // 1000 % 1000}.{number % 1000}"


def drbd_versions(drbdadm_version_output):
    """DRBD userspace and kernel module versions from ``drbdadm --version`` (None when absent)."""
    fields = dict(re.findall(r"^(\w+)=(.*)$", drbdadm_version_output or "", re.MULTILINE))
    userspace = fields.get("DRBDADM_VERSION")
    code = int(fields.get("DRBD_KERNEL_VERSION_CODE", "0"), 16)
    kernel = f"{code >> 16}.{(code >> 8) & 0xFF}.{code & 0xFF}" if code else None
    return {"userspace": userspace, "kernel": kernel}


def directory_space(path):
    """Total and free MiB of the filesystem holding ``path`` (free as seen by unprivileged users)."""
    stat = os.statvfs(path)
    return {"total": stat.f_blocks * stat.f_frsize // MIB, "free": stat.f_bavail * stat.f_frsize // MIB}


def volume_group_space(vgdisplay):
    """Total and free MiB of a volume group from Salt's ``lvm.vgdisplay`` entry."""
    extent_kib = int(vgdisplay["Physical Extent Size (kB)"])
    return {
        "total": int(vgdisplay["Total Physical Extents"]) * extent_kib // 1024,
        "free": int(vgdisplay["Free Physical Extents"]) * extent_kib // 1024,
    }


def memory_summary(meminfo, instance_memory, instance_rss):
    """Ganeti's node memory figures in MiB.

    ``total``: MemTotal. ``instances``: memory given to running domains.
    ``node``: what the node OS itself uses (used memory minus the guests' resident memory).
    ``free``: what new instances can be promised: total − node − instances.
    """
    total = meminfo["MemTotal"]
    used = total - meminfo.get("MemAvailable", meminfo.get("MemFree", 0))
    node = max(0, used - instance_rss)
    return {
        "total": total,
        "node": node,
        "instances": instance_memory,
        "free": max(0, total - node - instance_memory),
    }


def vm_rss_mib(status_text):
    """VmRSS of a ``/proc/PID/status`` text, in MiB (0 when absent)."""
    match = re.search(r"^VmRSS:\s+(\d+)\s+kB", status_text, re.MULTILINE)
    return int(match.group(1)) // 1024 if match else 0


def bridges(sys_class_net="/sys/class/net"):
    """Names of the Linux bridges of this node (the interfaces with a ``bridge`` folder in sysfs), sorted."""
    return sorted(name for name in os.listdir(sys_class_net)
                  if os.path.isdir(os.path.join(sys_class_net, name, "bridge")))
