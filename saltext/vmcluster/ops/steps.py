"""The steps operations are made of: each idempotent (checks, then acts) so a resumed job can repeat it."""

from saltext.vmcluster import disks
from saltext.vmcluster.ops.engine import OpError, step
from saltext.vmcluster.rpc import NodeError

ALREADY_EXISTS = "already exists"


@step
def record_instance(ctx, record):
    """Write the instance's record to the store (what the cluster has decided)."""
    ctx.store.put_instance(record)


@step
def update_instance(ctx, name, **fields):
    """Change fields of the instance's record (admin state, primary, secondary ...)."""
    record = ctx.store.instance(name)
    record.update(fields)
    ctx.store.put_instance(record)


@step
def forget_instance(ctx, name):
    """Remove the instance's record from the store."""
    ctx.store.delete_instance(name)


@step
def create_disk(ctx, node, instance, index, size, template, exact=False, drbd=None, source=None):
    """Create disk ``index`` on ``node`` unless it exists; ``exact`` sizes are bytes; ``drbd``: the
    resource (nodes, port, minor, secret) for the drbd template; ``source``: the OS image it starts with."""
    try:
        return ctx.rpc.call_one(node, "cluster_disk.create", instance, index, f"{size}B" if exact else size,
                                template, **(drbd or {}), **({"source": source} if source else {}))
    except NodeError as exc:  # a resumed job finds the disk it made before the interruption
        if ALREADY_EXISTS in str(exc) and ctx.rpc.call_one(node, "cluster_disk.exists", instance, index, template):
            return "exists"
        raise


@step
def drbd_initial_primary(ctx, node, resource):
    """Make ``node`` Primary of a new resource whose data nobody has yet (the one forced promotion)."""
    state = ctx.rpc.call_one(node, "drbd.status", resource).get(resource, {})
    if state.get("role") == "Primary":
        return "already primary"
    if any(v.get("disk") == "UpToDate" for v in state.get("volumes", [])):
        return ctx.rpc.call_one(node, "drbd.primary", resource)
    return ctx.rpc.call_one(node, "drbd.primary", resource, force=True)


@step
def drbd_wait_sync(ctx, node, resource, timeout=3600):
    """Wait for the resource to be UpToDate on both nodes (fails after ``timeout`` seconds)."""
    result = ctx.rpc.call_one(node, "drbd.wait_sync", resource, timeout=timeout, rpc_timeout=timeout + 60)
    if not result.get("synced"):
        raise RuntimeError(f"{resource} not in sync after {timeout}s ({result.get('done')}% done)")
    return result


@step
def remove_disk(ctx, node, instance, index, template):
    """Remove disk ``index`` from ``node`` (nothing to do if it is gone)."""
    return ctx.rpc.call_one(node, "cluster_disk.remove", instance, index, template)


def node_facts(ctx, node):
    """The node's ``cluster_node`` grain: from the master's grains cache, else asked of the node."""
    facts = ctx.store.node_grains(node).get("cluster_node")
    return facts or ctx.rpc.call_one(node, "grains.get", "cluster_node")


def disk_paths(facts, record):
    """Where the record's disks are on a node with the given facts."""
    location = facts.get("storage", {}).get(record["template"])
    if location is None and record["template"] != "drbd":
        raise OpError(f"vmcluster:storage:{record['template']} is not set on this node; declare it in its minion config")
    return [disks.device_path(record["template"], location, record["name"], index, minor=disk.get("drbd", {}).get("minor"))
            for index, disk in enumerate(record["disks"])]


@step
def define_domain(ctx, node, instance, start=False):
    """Define the instance's domain on ``node`` from its record (redefining is harmless); ``start``:
    start it too, in the same call, unless it runs."""
    record = ctx.store.instance(instance)
    facts = node_facts(ctx, node)
    return ctx.rpc.call_one(
        node, "cluster_vm.define", instance, f"{record['memory']}M", vcpus=record["vcpus"],
        disks=disk_paths(facts, record), nics=record.get("nics", []),
        type="kvm" if facts.get("kvm_usable") else "qemu", start=start,
    )


def domains_on(ctx, node):
    """``{name: state}`` of the domains defined on ``node``."""
    return ctx.rpc.call_one(node, "cluster_vm.list_domains")


@step
def start_domain(ctx, node, instance):
    """Start the instance on ``node`` (nothing to do if it runs)."""
    return ctx.rpc.call_one(node, "cluster_vm.start", instance)


@step
def stop_domain(ctx, node, instance, timeout=60, force=False):
    """Stop the instance on ``node``: ACPI shutdown with a timeout, then power off; ``force``: at once."""
    if domains_on(ctx, node).get(instance, "shutoff") == "shutoff":
        return "not running"
    if force:
        return ctx.rpc.call_one(node, "cluster_vm.destroy", instance)
    return ctx.rpc.call_one(node, "cluster_vm.shutdown", instance, timeout=timeout, rpc_timeout=timeout + 30)


@step
def undefine_domain(ctx, node, instance):
    """Remove the instance's (stopped) domain definition from ``node``."""
    if instance not in domains_on(ctx, node):
        return "absent"
    return ctx.rpc.call_one(node, "cluster_vm.undefine", instance)
