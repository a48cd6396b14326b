"""Changes to nodes and instances: ``node_modify`` (offline/drained flags), ``modify`` (memory, vCPUs,
a disk added or removed) and ``grow_disk`` — each a journaled job, validated completely before anything changes, with a
``test=True`` dry run.
"""

import copy
import dataclasses

from saltext.vmcluster import disks, domxml, names
from saltext.vmcluster.ops.engine import OpError, new_job, step
from saltext.vmcluster.ops.health import RUNNING_STATES, n1_failing
from saltext.vmcluster.ops.instances import (add_drbd_resources, disk_steps, execute_or_plan, instance_locks,
                                             instance_nodes, instance_record, live_cluster)
from saltext.vmcluster.ops.steps import domains_on
from saltext.vmcluster.planner.checks import FAILURES, OK, Demand, NodeRoom
from saltext.vmcluster.planner.score import NodeLoads

MIB = 1024 * 1024


def _flag(value, field):
    if value is None or isinstance(value, bool):
        return value
    raise OpError(f"{field}: invalid value {value!r}: give True or False (or leave it out)")


# -- node flags ------------------------------------------------------------------


@step
def set_node_flags(ctx, node, **flags):
    """Store the node's offline/drained flags (given ones only)."""
    ctx.store.put_node_flags(node, {**ctx.store.node_flags(node), **flags})
    return ctx.store.node_flags(node)


def node_modify(ctx, node, offline=None, drained=None, online=None, force=False, test=False):
    """Mark ``node`` offline and/or drained, or ``online=True`` (clears both), like ``gnt-node modify -O/-D``.

    Neither an offline nor a drained node gets new instances. Setting a node offline that
    still runs instances is refused (evacuate it first) unless ``force=True``.
    """
    names.name(node, "node")
    if node not in ctx.cfg.nodes:
        raise OpError(f"node: {node!r} is not in the cluster; nodes: {', '.join(sorted(ctx.cfg.nodes))}")
    offline, drained, online = _flag(offline, "offline"), _flag(drained, "drained"), _flag(online, "online")
    if online is False:
        raise OpError("online: give online=True (clears offline and drained), or use offline=True / drained=True")
    if online and (offline or drained):
        raise OpError("online: online=True clears offline and drained; do not combine it with offline/drained=True")
    flags = {"offline": False, "drained": False} if online else {
        key: value for key, value in (("offline", offline), ("drained", drained)) if value is not None}
    if not flags:
        raise OpError("give offline=True|False, drained=True|False or online=True")
    if flags.get("offline") and not force:
        running = _running_on(ctx, node)
        if running:
            raise OpError(f"node {node} still runs {', '.join(running)}; move them first "
                          f"(salt-run cluster.evacuate {node}) or set it offline anyway with force=True")
    job = new_job("node_modify", node, [("set_node_flags", {"node": node, **flags})], [f"node/{node}"])
    return {**execute_or_plan(ctx, job, test), "flags": {**ctx.store.node_flags(node), **flags}}


def _running_on(ctx, node):
    """Domains running on ``node`` (none when it does not answer: a dead node runs nothing)."""
    domains = ctx.rpc.call([node], "cluster_vm.list_domains", timeout=10).get(node)
    return sorted(n for n, state in domains.items() if state in RUNNING_STATES) if isinstance(domains, dict) else []


# -- memory and vCPUs -------------------------------------------------------------


def _with_instance(cluster, name, memory, vcpus):
    """NodeLoads of ``cluster`` with instance ``name`` unplaced and changed to ``memory``/``vcpus``, running.

    Returns ``(loads, index, primary, secondary)``; the node figures stay those reported live.
    """
    cluster = copy.deepcopy(cluster)
    loads = NodeLoads(cluster)
    k = loads.inst_index[name]
    pri, sec = (int(n) for n in loads.placement[k])
    loads.unplace(k)
    changed = dataclasses.replace(cluster.instances[k], mem=memory, vcpus=vcpus, status="running")
    cluster.instances[k] = changed
    loads.pri_contrib[k], loads.sec_contrib[k] = loads.contributions(changed)
    loads.sec_mem[k] = changed.mem if changed.uses_secondary_memory else 0
    return loads, k, pri, sec


def room_failure(cluster, name, memory, vcpus):
    """Why the instance's nodes cannot hold it with ``memory`` MiB and ``vcpus`` ("" if they can).

    Checked as if it runs (it must be able to start): memory, vCPU ratio and N+1 reservation on
    the primary, the failover reservation on a DRBD secondary, and no node newly failing global N+1.
    """
    before = set(n1_failing(NodeLoads(copy.deepcopy(cluster))))
    loads, k, pri, sec = _with_instance(cluster, name, memory, vcpus)
    room = NodeRoom(loads)
    demand = Demand.of(loads.cluster, loads.cluster.instances[k])
    node_names = [n.name for n in loads.cluster.nodes]
    code = room.primary_failures([pri], demand)[0]
    if code != OK:
        return f"{FAILURES[code]} on primary {node_names[pri]} ({int(room.unallocated([pri])[0])} MiB unallocated)"
    if sec >= 0:
        code = room.secondary_failures([sec], pri, demand)[0]
        if code != OK:
            return f"{FAILURES[code]} on secondary {node_names[sec]}"
    loads.place(k, pri, sec)
    newly = sorted(set(n1_failing(loads)) - before)
    if newly:
        return f"FailN1: the failure of {', '.join(newly)} could no longer be absorbed"
    return ""


@step
def resize_domain(ctx, node, instance, memory=None, vcpus=None):
    """Set the memory/vCPUs of the instance's domain definition on ``node`` (if defined there)."""
    if instance not in domains_on(ctx, node):
        return "not defined: the next start defines it from the record"
    results = [ctx.rpc.call_one(node, "cluster_vm.set_memory", instance, f"{memory}M")] if memory else []
    results += [ctx.rpc.call_one(node, "cluster_vm.set_vcpus", instance, vcpus)] if vcpus else []
    return results


def modify(ctx, name, memory=None, vcpus=None, add_disk=None, remove_disk=None, test=False):
    """Change an instance's memory and/or vCPUs, or add or remove a disk: the record and its domain definition.

    Checked against the nodes' free memory and N+1 and the instance policy first. A running
    domain gets the new values at its next start (``salt-run cluster.reboot NAME``); the result
    says so. ``add_disk=SIZE`` creates a new last disk (drbd: mirrored and synced) now;
    ``remove_disk=N`` deletes the last disk, ``N`` (its data with it), of a stopped instance.
    """
    record = instance_record(ctx, name)
    changes = {}
    if memory is not None:
        changes["memory"] = names.size_mib(memory, "memory")
    if vcpus is not None:
        changes["vcpus"] = names.positive_int(vcpus, "vcpus", domxml.MAX_VCPUS)
    if not changes and add_disk is None and remove_disk is None:
        raise OpError("give memory=SIZE, vcpus=N, add_disk=SIZE or remove_disk=N, e.g. memory=1G vcpus=2")
    new = {**{k: record[k] for k in ("memory", "vcpus")}, **changes}
    growing = new["memory"] > record["memory"] or new["vcpus"] > record["vcpus"]
    why = growing and room_failure(live_cluster(ctx), name, new["memory"], new["vcpus"])
    if why:
        raise OpError(f"{name} cannot get {new['memory']} MiB and {new['vcpus']} vCPUs: {why}; nothing changed")
    running = domains_on(ctx, record["primary"]).get(name) in RUNNING_STATES
    before, after = [], []
    if add_disk is not None or remove_disk is not None:
        changes["disks"], before, after = _disk_change(ctx, record, add_disk, remove_disk, running)
        violation = ctx.cfg.policy_violation(new["memory"], new["vcpus"], sum(d["size"] for d in changes["disks"]) // MIB)
        if violation:
            raise OpError(violation)
        definition = [("define_domain", {"node": record["primary"], "instance": name})]
    else:
        definition = [("resize_domain", {"node": record["primary"], "instance": name, **changes})]
    job_steps = before + [("update_instance", {"name": name, **changes})] + definition + after
    result = execute_or_plan(ctx, new_job("modify", name, job_steps, instance_locks(record)), test)
    result["applies"] = (f"at the next start ({name} is running: salt-run cluster.reboot {name})"
                         if running else "at the next start")
    if "disks" in changes:
        changes["disks"] = [disk["size"] for disk in changes["disks"]]
    return {**result, **changes}


def _disk_change(ctx, record, add_disk, remove_disk, running):
    """``(disks after, steps before the record changes, steps after)`` for ``add_disk``/``remove_disk``."""
    name, count = record["name"], len(record["disks"])
    if add_disk is not None and remove_disk is not None:
        raise OpError("give add_disk=SIZE or remove_disk=N, not both in one modify")
    if add_disk is not None:
        grown = copy.deepcopy(record)
        grown["disks"].append({"size": names.size_bytes(add_disk, "add_disk")})
        if record["template"] == "drbd":
            add_drbd_resources(ctx, grown, first=count)
        return grown["disks"], disk_steps(grown, first=count), []
    index = names.positive_int(remove_disk, "remove_disk", minimum=0)
    if count == 1:
        raise OpError(f"remove_disk: disk 0 is the only disk of {name}; an instance keeps at least one")
    if index != count - 1:
        raise OpError(f"remove_disk: only the last disk of {name}, {count - 1}, can be removed (the others keep "
                      f"their numbers); give remove_disk={count - 1}")
    if running:
        raise OpError(f"remove_disk: {name} is running; stop it first: salt-run cluster.stop {name}")
    return record["disks"][:-1], [], [("remove_disk", {"node": node, "instance": name, "index": index,
                                                       "template": record["template"]})
                                      for node in instance_nodes(record)]


# -- disks ----------------------------------------------------------------------


@step
def grow_backing_disk(ctx, node, instance, index, template, size):
    """Grow the LV of a plain or drbd disk on ``node`` to ``size`` bytes (nothing if it has that size)."""
    return ctx.rpc.call_one(node, "cluster_disk.grow", instance, index, template, disks.exact_size(size))


@step
def resize_drbd(ctx, node, instance, index):
    """Let the DRBD device of a disk use its grown backing LVs (``drbdadm resize`` on the primary)."""
    return ctx.rpc.call_one(node, "drbd.resize", disks.disk_name(instance, index, "drbd"))


@step
def grow_domain_disk(ctx, node, instance, index, template, size):
    """Make the guest see ``size`` bytes: through libvirt when the domain runs on ``node``
    (QEMU grows the image of a file disk), else ``cluster_disk.grow`` for file disks."""
    if domains_on(ctx, node).get(instance) in RUNNING_STATES:
        path = ctx.rpc.call_one(node, "cluster_disk.path", instance, index, template)
        return ctx.rpc.call_one(node, "cluster_vm.block_resize", instance, path, disks.exact_size(size))
    if template in disks.FILE_TEMPLATES:
        return ctx.rpc.call_one(node, "cluster_disk.grow", instance, index, template, disks.exact_size(size))
    return "not running: the LVs grew already"


def _new_size(record, index, amount, size):
    old = record["disks"][index]["size"]
    if (amount is None) == (size is None):
        raise OpError("give either amount=SIZE (grow by) or size=SIZE (grow to), e.g. amount=10G")
    new = old + disks.size(amount, "amount") if amount is not None else disks.size(size, "size")
    if new <= old:
        raise OpError(f"size: disk {index} of {record['name']} has {old} bytes already; "
                      f"give a larger size (vmcluster never shrinks disks)")
    return new


def _check_space(ctx, record, nodes, grow_mib):
    """Refuse when a node's storage for the template has less than ``grow_mib`` MiB free."""
    replies = ctx.rpc.call(nodes, "cluster_node.resources", timeout=10)
    for node in nodes:
        reply = replies.get(node)
        if not isinstance(reply, dict):
            raise OpError(f"node {node} does not answer; its disk of {record['name']} cannot grow now")
        space = reply["storage"].get(record["template"], {})
        if space.get("free", 0) < grow_mib:
            raise OpError(f"size: {node} has {space.get('free', 0)} MiB free for {record['template']} disks, "
                          f"the disk needs {grow_mib} MiB more; nothing changed")


def grow_disk(ctx, name, index, amount=None, size=None, test=False):
    """Grow disk ``index`` of an instance by ``amount`` or to ``size`` (never shrinks).

    file/sharedfile: ``qemu-img resize``, or libvirt's block resize while the domain runs;
    plain: the LV, then the running guest; drbd: the LVs on both nodes, ``drbdadm resize``
    on the primary, then the running guest. The record changes last.
    """
    record = instance_record(ctx, name)
    index = disks.index(index, "index")
    if index >= len(record["disks"]):
        raise OpError(f"index: {name} has {len(record['disks'])} disk(s) (0..{len(record['disks']) - 1}); got {index}")
    new = _new_size(record, index, amount, size)
    _check_space(ctx, record, instance_nodes(record), -(-(new - record["disks"][index]["size"]) // MIB))
    result = execute_or_plan(ctx, new_job("grow_disk", name, grow_steps(record, index, new), instance_locks(record)), test)
    return {**result, "disk": index, "old": record["disks"][index]["size"], "new": new}


def grow_steps(record, index, new):
    """The steps that grow disk ``index`` of ``record`` to ``new`` bytes (LVs on both nodes in parallel)."""
    name, primary = record["name"], record["primary"]
    disk = {"instance": name, "index": index, "template": record["template"], "size": new}
    job_steps = [("grow_backing_disk", {"node": node, **disk}, 0)
                 for node in instance_nodes(record) if record["template"] in disks.LVM_TEMPLATES]
    if record["template"] == "drbd":
        job_steps.append(("resize_drbd", {"node": primary, "instance": name, "index": index}, 1))
    job_steps.append(("grow_domain_disk", {"node": primary, **disk}, 2))
    sizes = [dict(d, size=new) if i == index else d for i, d in enumerate(record["disks"])]
    return job_steps + [("update_instance", {"name": name, "disks": sizes}, 3)]
