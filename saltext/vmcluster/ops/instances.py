"""Instance life cycle: add, remove, start, stop, reboot — each a journaled job.

Every function validates all of its input before it builds a job (bad input
changes nothing), and with ``test=True`` returns the plan without running it.
"""

import secrets
import time

from saltext.vmcluster import disks as disk_names
from saltext.vmcluster import names
from saltext.vmcluster import nics as nic_specs
from saltext.vmcluster.ops import steps
from saltext.vmcluster.ops.engine import OpError, new_job, plan, run
from saltext.vmcluster.planner.allocate import Allocator, InstanceSpec
from saltext.vmcluster.planner.live import cluster_from_live

TEMPLATES = ("file", "sharedfile", "plain", "drbd")
MIB = 1024 * 1024
DRBD_PORT_BASE = 11000
DRBD_SYNC_TIMEOUT = 3600


def instance_nodes(record):
    """The nodes that hold the instance: its primary, and its secondary if it has one."""
    return [record["primary"]] + ([record["secondary"]] if record.get("secondary") else [])


def instance_locks(record):
    """The locks of an operation on one instance: the instance and its nodes."""
    return [f"instance/{record['name']}"] + [f"node/{n}" for n in instance_nodes(record)]


def summary(job):
    """What the operator sees of a finished job."""
    return {"job": job["id"], "operation": job["operation"], "target": job["target"], "state": job["state"]}


def execute_or_plan(ctx, job, test):
    """The plan (dry run) or the finished job."""
    if test:
        return {"job": None, "operation": job["operation"], "target": job["target"], "plan": plan(job)}
    return summary(run(ctx, job))


def live_cluster(ctx):
    """The planner's model of the cluster now: config, live node data, store records and flags."""
    replies = ctx.rpc.call(sorted(ctx.cfg.nodes), "cluster_node.resources", timeout=10)
    flags = {name: ctx.store.node_flags(name) for name in ctx.cfg.nodes}
    return cluster_from_live(ctx.cfg, replies, ctx.store.instances(), flags)


def _parse_nodes(nodes):
    if nodes is None:
        return []
    if isinstance(nodes, str):
        nodes = nodes.replace(":", ",").split(",")
    return [names.name(n, "nodes") for n in nodes]


def _choose_nodes(ctx, record, nodes):
    wanted = 2 if record["template"] == "drbd" else 1
    if nodes:
        if len(nodes) != wanted:
            raise OpError(f"nodes: template {record['template']} needs {wanted} node(s) "
                          f"({'primary:secondary' if wanted == 2 else 'one primary'}), got {nodes}")
        unknown = [n for n in nodes if n not in ctx.cfg.nodes]
        if unknown:
            raise OpError(f"nodes: {unknown} not in the cluster; nodes: {', '.join(sorted(ctx.cfg.nodes))}")
        return nodes[0], (nodes[1] if wanted == 2 else None)
    spec = InstanceSpec(mem=record["memory"], disk=sum(d["size"] for d in record["disks"]) // MIB,
                        vcpus=record["vcpus"], disk_template=record["template"], name=record["name"],
                        disks=[d["size"] // MIB for d in record["disks"]])
    result = Allocator(live_cluster(ctx)).allocate(spec)
    if not result.ok:
        raise OpError(f"no node can take {record['name']}: {result.info}")
    return result.placement.primary, result.placement.secondary


def add(ctx, name, memory, vcpus=1, disks=("10G",), template=None, nodes=None, start=True, tags=(), nics=None,
        image=None, test=False):
    """Create an instance: choose nodes (planner) → disks (disk 0 from the OS image) → define → start.

    ``nics``: by default one NIC on the primary's bridge (``cluster:nodes:NODE:bridge``, else
    ``cluster:defaults:bridge``) as ``gnt-instance add`` gives one NIC on the cluster's default link,
    and none when there is no such bridge; ``none`` (or ``[]``): no NIC; else a bridge, a comma list
    of bridges, or mappings ``{bridge, mac, model}`` (a NIC without bridge goes on the default one).
    MACs not given are generated, unique in the cluster. The bridge names are the instance's: every
    node it runs on must have them (checked here, and before every move).
    ``image``: the OS image disk 0 starts with, on every node (default ``cluster:defaults:image``;
    ``none``: blank disks); it must fit in disk 0, which keeps its size.
    """
    names.name(name, "name")
    template = names.choice(template or ctx.cfg.defaults.get("template", "file"), "template", TEMPLATES)
    wanted_nics = nic_specs.parse(nics)
    image = ctx.cfg.defaults.get("image") if image is None else image
    if isinstance(disks, (str, int)):
        disks = [disks]
    record = {
        "name": name,
        "template": template,
        "memory": names.size_mib(memory, "memory"),
        "vcpus": names.positive_int(vcpus, "vcpus"),
        "disks": [{"size": names.size_bytes(size, f"disks[{i}]")} for i, size in enumerate(disks)],
        "nics": [],
        "image": None if image in (None, "", "none") else disk_names.image(image, "image"),
        "tags": [names.name(t, "tags") for t in tags],
        "admin_state": "down",
        "created": time.time(),
    }
    if not record["disks"]:
        raise OpError("disks: give at least one disk size, e.g. disks=10G")
    violation = ctx.cfg.policy_violation(record["memory"], record["vcpus"],
                                         sum(d["size"] for d in record["disks"]) // MIB)
    if violation:
        raise OpError(violation)
    if ctx.store.instance(name):
        raise OpError(f"name: instance {name} already exists; pick another name or remove it first")
    primary, secondary = _choose_nodes(ctx, record, _parse_nodes(nodes))
    record.update(primary=primary, secondary=secondary)
    bridge = ctx.cfg.bridge_of(primary)
    record["nics"] = nic_specs.complete(nic_specs.default(bridge) if wanted_nics is None else wanted_nics,
                                        f"{ctx.cfg.name}/{name}", bridge, primary,
                                        nic_specs.macs_in_use(ctx.store.instances()))
    for node in instance_nodes(record):
        check_bridges(ctx, record, node)
    if record["image"]:
        _check_image(ctx, record)
    if template == "drbd":
        add_drbd_resources(ctx, record)
    job_steps = [("record_instance", {"record": record})] + disk_steps(record)
    job_steps.append(("define_domain", {"node": primary, "instance": name}))
    if start:
        job_steps += [("start_domain", {"node": primary, "instance": name}),
                      ("update_instance", {"name": name, "admin_state": "up"})]
    return execute_or_plan(ctx, new_job("add", name, job_steps, instance_locks(record)), test)


def check_bridges(ctx, record, node):
    """OpError unless ``node`` has every bridge the instance's NICs use (a NIC's bridge is the instance's:
    each node that runs it must provide a bridge of that name). Its cached grain answers; only a bridge
    missing there is asked of the node itself (it may be new)."""
    wanted = {nic["bridge"] for nic in record.get("nics") or []}
    if not wanted or wanted <= set(steps.node_facts(ctx, node).get("bridges") or ()):  # as the master cached it
        return
    missing = sorted(wanted - set(ctx.rpc.call_one(node, "cluster_node.bridges")))
    if missing:
        raise OpError(f"nics: bridge {', '.join(missing)} of {record['name']} does not exist on node {node}; "
                      "create it there or choose another node")


def _check_image(ctx, record):
    """OpError unless the OS image is on the primary and fits in disk 0."""
    size = ctx.rpc.call_one(record["primary"], "cluster_disk.image_info", record["image"])["size"]
    disk = record["disks"][0]["size"]
    if size > disk:
        raise OpError(f"image: {record['image']} ({size} bytes) is larger than disk 0 ({disk} bytes); give a "
                      f"first disk of at least {-(-size // MIB)}M (disks=)")


def _replication_address(ctx, node):
    address = ctx.cfg.nodes[node].replication_address
    if not address:
        raise OpError(f"cluster:nodes:{node}:replication_address: drbd needs the node's replication address; "
                      "declare it in pillar")
    return address


def add_drbd_resources(ctx, record, first=0):
    """Give each disk from number ``first`` on its DRBD resource: a minor free on both nodes, a free port
    and a secret."""
    pair = (record["primary"], record["secondary"])
    addresses = [_replication_address(ctx, node) for node in pair]
    used_minors, used_ports = set(), set()
    for other in ctx.store.instances().values():
        for disk in other["disks"]:
            if "drbd" in disk:
                used_ports.add(disk["drbd"]["port"])
                if {other["primary"], other.get("secondary")} & set(pair):
                    used_minors.add(disk["drbd"]["minor"])
    for index, disk in enumerate(record["disks"]):
        if index < first:
            continue
        disk_names.disk_name(record["name"], index, "drbd")  # the resource name must be valid
        minor = min(set(range(len(used_minors) + 1)) - used_minors)
        port = min(set(range(DRBD_PORT_BASE, DRBD_PORT_BASE + len(used_ports) + 1)) - used_ports)
        used_minors.add(minor)
        used_ports.add(port)
        disk["drbd"] = {"nodes": [{"name": n, "address": a} for n, a in zip(pair, addresses)],
                        "port": port, "minor": minor, "secret": secrets.token_hex(16)}


def disk_steps(record, first=0):
    """Create every disk from number ``first`` on; drbd: on both nodes (in parallel), promote the primary,
    wait for the sync."""
    name, template = record["name"], record["template"]
    nodes = instance_nodes(record)
    result = []
    for index, disk in enumerate(record["disks"]):
        if index < first:
            continue
        args = {"instance": name, "index": index, "size": disk["size"], "template": template, "exact": True}
        if "drbd" in disk:
            args["drbd"] = disk["drbd"]
        result += [("create_disk", {"node": node, **args, **_source(record, node, index)}, f"disk{index}")
                   for node in nodes]
        if template == "drbd":
            resource = disk_names.disk_name(name, index, "drbd")
            result += [("drbd_initial_primary", {"node": record["primary"], "resource": resource}),
                       ("drbd_wait_sync", {"node": record["primary"], "resource": resource,
                                           "timeout": DRBD_SYNC_TIMEOUT})]
    return result


def _source(record, node, index):
    """``{"source": OS image}`` for disk 0 on the primary (drbd's initial sync copies it to the secondary)."""
    return {"source": record["image"]} if record["image"] and index == 0 and node == record["primary"] else {}


def instance_record(ctx, name):
    """The store record of instance ``name``; OpError listing the known instances if there is none."""
    record = ctx.store.instance(name)
    if not record:
        known = ", ".join(sorted(ctx.store.instances())) or "none"
        raise OpError(f"instance {name!r} is not in the cluster; instances: {known}")
    return record


def remove(ctx, name, test=False):
    """Power the instance off, remove its domain and disks everywhere, forget it."""
    record = instance_record(ctx, name)
    job_steps = [("update_instance", {"name": name, "admin_state": "down"}),
                 ("stop_domain", {"node": record["primary"], "instance": name, "force": True}),
                 ("undefine_domain", {"node": record["primary"], "instance": name})]
    job_steps += [
        ("remove_disk", {"node": node, "instance": name, "index": i, "template": record["template"]})
        for node in instance_nodes(record) for i in range(len(record["disks"]))
    ]
    job_steps.append(("forget_instance", {"name": name}))
    return execute_or_plan(ctx, new_job("remove", name, job_steps, instance_locks(record)), test)


def start(ctx, name, test=False):
    """Start the instance on its primary and mark it admin-up."""
    record = instance_record(ctx, name)
    job_steps = [("define_domain", {"node": record["primary"], "instance": name}),
                 ("start_domain", {"node": record["primary"], "instance": name}),
                 ("update_instance", {"name": name, "admin_state": "up"})]
    return execute_or_plan(ctx, new_job("start", name, job_steps, [f"instance/{name}"]), test)


def stop(ctx, name, timeout=60, force=False, test=False):
    """Mark the instance admin-down (the watcher leaves it alone), then shut it down."""
    record = instance_record(ctx, name)
    job_steps = [("update_instance", {"name": name, "admin_state": "down"}),
                 ("stop_domain", {"node": record["primary"], "instance": name, "timeout": timeout, "force": force})]
    return execute_or_plan(ctx, new_job("stop", name, job_steps, [f"instance/{name}"]), test)


def reboot(ctx, name, timeout=60, test=False):
    """Restart the instance: shut down (power off after ``timeout``) and start again."""
    record = instance_record(ctx, name)
    job_steps = [("stop_domain", {"node": record["primary"], "instance": name, "timeout": timeout}),
                 ("start_domain", {"node": record["primary"], "instance": name}),
                 ("update_instance", {"name": name, "admin_state": "up"})]
    return execute_or_plan(ctx, new_job("reboot", name, job_steps, [f"instance/{name}"]), test)
