"""Live facts of a vmcluster node: memory, vCPUs, disk per storage, domains.

Static facts are in the ``cluster_node`` grain.
"""

try:
    from saltext.vmcluster import hypervisor, nodefacts

    IMPORT_ERROR = None
except ImportError as exc:
    IMPORT_ERROR = exc

__virtualname__ = "cluster_node"

FILE_TEMPLATES = ("file", "sharedfile")
LVM_TEMPLATES = ("plain", "drbd")


def __virtual__():
    if IMPORT_ERROR:
        return False, f"cluster_node: install saltext-vmcluster[libvirt] on this minion ({IMPORT_ERROR})"
    return __virtualname__


def _storage_space(template, location):
    if template in FILE_TEMPLATES:
        try:
            return {"location": location, **nodefacts.directory_space(location)}
        except OSError as exc:
            return {"location": location, "error": f"{exc.strerror}: {location}"}
    if template in LVM_TEMPLATES:
        vg = __salt__["lvm.vgdisplay"](location, quiet=True)
        if location not in vg:
            return {"location": location, "error": f"volume group {location} not found"}
        return {"location": location, **nodefacts.volume_group_space(vg[location])}
    return {"location": location, "error": f"unknown disk template {template!r}"}


def resources():
    """
    Live resources of this node, memory and disk in MiB.

    ``memory``: total, node (used by the node OS), instances (given to running
    domains), free (left for new instances). ``vcpus_used``: vCPUs of running
    domains. ``storage``: total/free per configured template.
    ``domains``: defined and running domain names; ``instances``: memory MiB,
    vCPUs and state of every defined domain.

    CLI Example:

    .. code-block:: bash

        salt '*' cluster_node.resources
    """
    with open("/proc/meminfo") as meminfo:
        mem = nodefacts.parse_meminfo(meminfo.read())
    with hypervisor.connection(hypervisor.uri_from_opts(__opts__)) as conn:
        doms = hypervisor.domains(conn)
    running = [d for d in doms if d["running"]]
    storage = (__opts__.get("vmcluster") or {}).get("storage", {})
    return {
        "memory": nodefacts.memory_summary(
            mem, sum(d["memory"] for d in running), sum(d["rss"] for d in running)
        ),
        "cpus": __grains__.get("num_cpus"),
        "vcpus_used": sum(d["vcpus"] for d in running),
        "storage": {template: _storage_space(template, loc) for template, loc in sorted(storage.items())},
        "domains": {"defined": sorted(d["name"] for d in doms), "running": sorted(d["name"] for d in running)},
        "instances": {d["name"]: {"memory": d["memory"], "vcpus": d["vcpus"], "running": d["running"]} for d in doms},
    }


def bridges():
    """
    Names of the Linux bridges on this node: the bridges an instance's NICs can use here.

    (Salt's ``bridge.list`` needs brctl, which current distributions no longer ship;
    sysfs has the answer.)

    CLI Example:

    .. code-block:: bash

        salt '*' cluster_node.bridges
    """
    return nodefacts.bridges()
