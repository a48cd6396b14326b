"""Instance moves between nodes — live ``migrate``, cold ``failover``, ``move`` by copy — each a journaled job.

How nodes reach each other is a fact of each node, declared in its minion config
and read by the master when it plans a move::

    vmcluster:
      migration:
        uri: qemu+tcp://node2.example.org/system  # how other nodes reach this node's libvirtd
        address: 192.0.2.12                        # where QEMU's migration stream and disk copies go
        unsafe_shared_storage: false  # true: sharedfile storage is coherent although libvirt does not
                                      # recognise its file system as shared (migrations to this node)

Without ``uri`` a node is reached as ``qemu+tcp://<minion id>/system``; without
``address`` libvirt sends the migration stream to the target's host name, and
``move`` (which serves the disks from the source's ``address``) refuses.

Templates: ``file``/``plain`` migrate live with their disks copied (destination
disks of exactly the source's virtual size), and ``move`` copies them over NBD
while the instance is stopped; ``sharedfile`` migrates without copying and fails
over to any node; ``drbd`` migrates and fails over to its secondary only.

Never two running copies: ``failover`` starts an instance elsewhere only after
its old primary said that it does not run it, or after the operator confirmed
with ``ignore_consistency=True`` that the silent node is down.
"""

from saltext.vmcluster import disks, names
from saltext.vmcluster.ops.engine import OpError, Refused, new_job, step
from saltext.vmcluster.ops.instances import (MIB, check_bridges, execute_or_plan, instance_locks, instance_record,
                                             live_cluster)
from saltext.vmcluster.ops.steps import disk_paths, domains_on, node_facts
from saltext.vmcluster.rpc import NodeError
from saltext.vmcluster.planner.allocate import Allocator, InstanceSpec

MIGRATION_OPTION = "vmcluster:migration"
COPY_TEMPLATES = ("file", "plain")
LIVE_STATES = ("running", "paused")
PROBE_TIMEOUT = 3  # seconds a node gets to say which domains it runs
MIGRATE_TIMEOUT = 3600
COPY_TIMEOUT = 6 * 3600
DEFAULT_SHUTDOWN_TIMEOUT = 60


# --- planning helpers -------------------------------------------------------


def endpoint(ctx, node, facts=None):
    """How the other nodes reach ``node`` (its minion config, as its ``cluster_node`` grain — ``facts``,
    looked up if not given — reports it): ``{"uri": libvirt URI, "address": IP or None,
    "unsafe_shared_storage": bool}``."""
    facts = node_facts(ctx, node) if facts is None else facts
    settings = facts["migration"] if "migration" in facts else ctx.rpc.call_one(node, "config.get", MIGRATION_OPTION)
    settings = settings or {}
    where = f"{MIGRATION_OPTION} (minion config of {node})"
    if not isinstance(settings, dict):
        raise names.ValidationError(where, settings, "give a mapping with uri and address")
    address = settings.get("address")
    return {
        "uri": names.uri(settings.get("uri") or f"qemu+tcp://{node}/system", f"{where}:uri"),
        "address": names.ip_address(address, f"{where}:address") if address else None,
        "unsafe_shared_storage": _flag(settings.get("unsafe_shared_storage", False), f"{where}:unsafe_shared_storage"),
    }


def probe(ctx, node):
    """``{domain: state}`` on ``node``, or None when it does not answer (or cannot list) within PROBE_TIMEOUT."""
    reply = ctx.rpc.call([node], "cluster_vm.list_domains", timeout=PROBE_TIMEOUT).get(node)
    return reply if isinstance(reply, dict) else None


def _target_node(ctx, record, target):
    """The node to move ``record`` to (:func:`_chosen_target`), which has the bridges of the instance's NICs."""
    node = _chosen_target(ctx, record, target)
    check_bridges(ctx, record, node)
    return node


def _chosen_target(ctx, record, target):
    """The node to move ``record`` to: ``target`` checked, or the planner's best other node."""
    primary = record["primary"]
    if record["template"] == "drbd":
        if target not in (None, record["secondary"]):
            raise OpError(f"target: drbd instance {record['name']} can only move to its secondary "
                          f"{record['secondary']}; give that node, or change the secondary first (replace_disks)")
        return record["secondary"]
    if target is None:
        others = [node for node in ctx.cfg.nodes if node != primary]
        spec = InstanceSpec(mem=record["memory"], disk=sum(d["size"] for d in record["disks"]) // MIB,
                            vcpus=record["vcpus"], disk_template=record["template"], name=record["name"],
                            disks=[d["size"] // MIB for d in record["disks"]])
        result = Allocator(live_cluster(ctx)).allocate(spec, restrict=others, commit=False)
        if not result.ok:
            raise OpError(f"no other node can take {record['name']}: {result.info}; free a node or give target=")
        return result.placement.primary
    names.name(target, "target")
    if target not in ctx.cfg.nodes:
        raise OpError(f"target: node {target!r} is not in the cluster; nodes: {', '.join(sorted(ctx.cfg.nodes))}")
    if target == primary:
        raise OpError(f"target: {record['name']} already lives on {target}; give another node")
    if ctx.store.node_flags(target)["offline"]:
        raise OpError(f"target: node {target} is offline; give another node or bring it online first")
    return target


def _source_disk_steps(ctx, record, source, target):
    """Destination disks of exactly the source disks' virtual sizes (from the source node, now)."""
    name, template = record["name"], record["template"]
    sizes = [ctx.rpc.call_one(source, "cluster_disk.info", name, index, template)["size"]
             for index in range(len(record["disks"]))]
    return [("create_disk", {"node": target, "instance": name, "index": index, "size": size, "template": template,
                             "exact": True}, "create-target-disks")  # one job set: created in parallel
            for index, size in enumerate(sizes)]


def _remove_disk_steps(record, node):
    return [("remove_disk", {"node": node, "instance": record["name"], "index": index, "template": record["template"]},
             "remove-source-disks")
            for index in range(len(record["disks"]))]


def _locks(record, target):
    return instance_locks(record) + [f"node/{target}"]


def _flag(value, field):
    if isinstance(value, bool):
        return value
    if str(value).lower() in ("true", "false"):
        return str(value).lower() == "true"
    raise names.ValidationError(field, value, "give True or False")


# --- steps ------------------------------------------------------------------


def _states(ctx, instance, nodes):
    """``{node: state of instance there, or None}``; a node that does not answer raises OpError."""
    replies = ctx.rpc.call(list(nodes), "cluster_vm.list_domains", timeout=PROBE_TIMEOUT * 10)
    silent = [node for node in nodes if not isinstance(replies.get(node), dict)]
    if silent:
        raise OpError(f"nodes {silent} do not answer (cluster_vm.list_domains); bring them back, then resume")
    return {node: replies[node].get(instance) for node in nodes}


@step
def migrate_domain(ctx, source, target, instance, target_uri, target_disks, migrate_uri=None, copy_storage=False,
                   create_target_disks=False, unsafe=False):
    """Live-migrate the instance from ``source`` to ``target`` (one call to the source); done when it
    runs on the target only. Copied disks: image files are made on the target and removed from the
    source by that call; a repeated step (resumed job) that finds the instance moved removes what
    is left of them."""
    try:
        return ctx.rpc.call_one(
            source, "cluster_vm.migrate", instance, target_uri, copy_storage=copy_storage, migrate_uri=migrate_uri,
            remove_source_disks=True, target_disks=target_disks, create_target_disks=create_target_disks,
            unsafe=unsafe, rpc_timeout=MIGRATE_TIMEOUT,
        )
    except NodeError as exc:
        where = _states(ctx, instance, (source, target))
        if where[source] not in LIVE_STATES and where[target] != "running":  # changed nothing: refuse
            raise Refused(not_running(instance, source, where[source], target, copy_storage)) from exc
        if where[source] in LIVE_STATES:
            raise
    if copy_storage:
        record = ctx.store.instance(instance)
        for index in range(len(record["disks"])):
            ctx.rpc.call_one(source, "cluster_disk.remove", instance, index, record["template"])
    return "runs on the target"


def _drbd_resources(instance, count):
    return [disks.disk_name(instance, index, "drbd") for index in range(count)]


@step
def drbd_dual_primary(ctx, node, instance, count, enabled):
    """Allow (or forbid again) two primaries on the instance's DRBD resources on ``node``."""
    for resource in _drbd_resources(instance, count):
        ctx.rpc.call_one(node, "drbd.allow_two_primaries", resource, enabled)


@step
def drbd_role(ctx, node, instance, count, role, skip_if_silent=False):
    """Promote (``primary``) or demote (``secondary``) the instance's DRBD resources on ``node``;
    ``skip_if_silent``: a node the operator declared down is left as it is."""
    if skip_if_silent and probe(ctx, node) is None:
        return f"{node} does not answer; the operator confirmed that it is down"
    fun = names.choice(role, "role", ("primary", "secondary"))
    for resource in _drbd_resources(instance, count):
        ctx.rpc.call_one(node, f"drbd.{fun}", resource)
    return role


def not_running(instance, source, state, target, copy_storage):
    """The refusal to live-migrate an instance that does not run."""
    verb = "move" if copy_storage else "failover"
    return (f"{instance} is not running on {source} ({state or 'not defined'}) nor on {target}; live migration "
            f"needs a running instance: start it (salt-run cluster.start {instance}), or move it stopped: "
            f"salt-run cluster.{verb} {instance} target={target}")


def unconfirmed(node, instance):
    """The refusal to fail over away from a silent node."""
    return (f"node {node} does not answer, so {instance} may still run there; make sure {node} is down "
            f"(power it off), then confirm: salt-run cluster.failover {instance} ignore_consistency=True")


@step
def release_old_primary(ctx, node, instance, timeout=DEFAULT_SHUTDOWN_TIMEOUT, ignore_consistency=False):
    """Make sure the instance no longer runs on ``node`` and drop its definition there (one call).

    A silent node is passed over only with ``ignore_consistency`` (the operator
    confirmed that it is down); its stale definition is then left for
    ``cluster_vm.remove_stale`` when it returns.
    """
    try:  # Salt keeps waiting past PROBE_TIMEOUT while the node says that it still runs the call
        return ctx.rpc.call_one(node, "cluster_vm.release", instance, timeout=timeout, rpc_timeout=PROBE_TIMEOUT)
    except NodeError as exc:
        if not exc.silent:
            raise
    if ignore_consistency:
        return f"{node} does not answer; the operator confirmed that it is down (stale definition left there)"
    raise Refused(unconfirmed(node, instance))


@step
def copy_disk(ctx, source, target, instance, index, template, address):
    """Copy a stopped disk's data from ``source`` to the same-size disk on ``target`` (NBD from ``address``)."""
    served = ctx.rpc.call_one(source, "cluster_disk.export", instance, index, template, address)
    try:
        copied = ctx.rpc.call_one(target, "cluster_disk.import_from", instance, index, template, served["uri"],
                                  rpc_timeout=COPY_TIMEOUT)
    finally:
        ctx.rpc.call_one(source, "cluster_disk.unexport", instance, index, template)
    return {"size": copied["size"], "allocated": copied["allocated"]}


# --- operations -------------------------------------------------------------


def migrate_steps(ctx, record, target):
    """The steps of a live migration of ``record`` to ``target`` (for drbd: its secondary)."""
    name, source, template = record["name"], record["primary"], record["template"]
    facts = node_facts(ctx, target)
    dest = endpoint(ctx, target, facts)
    migrate_args = {"source": source, "target": target, "instance": name, "target_uri": dest["uri"],
                    "target_disks": disk_paths(facts, record),
                    "migrate_uri": f"tcp://{dest['address']}" if dest["address"] else None,
                    "copy_storage": template in COPY_TEMPLATES, "create_target_disks": template == "file"}
    if template == "sharedfile" and dest["unsafe_shared_storage"]:
        migrate_args["unsafe"] = True
    moved = {"name": name, "primary": target}
    if template == "plain":  # LVs: made on the target before, removed from the source after
        return [*_source_disk_steps(ctx, record, source, target), ("migrate_domain", migrate_args),
                ("update_instance", moved), *_remove_disk_steps(record, source)]
    if template != "drbd":
        return [("migrate_domain", migrate_args), ("update_instance", moved)]
    drbd = {"instance": name, "count": len(record["disks"])}
    return [
        *[("drbd_dual_primary", {"node": node, **drbd, "enabled": True}, "allow") for node in (source, target)],
        ("drbd_role", {"node": target, **drbd, "role": "primary"}),
        ("migrate_domain", migrate_args),
        ("drbd_role", {"node": source, **drbd, "role": "secondary"}),
        *[("drbd_dual_primary", {"node": node, **drbd, "enabled": False}, "forbid") for node in (source, target)],
        ("update_instance", {**moved, "secondary": source}),
    ]


def _restart_steps(record, target):
    """Start the instance on ``target`` again if its operator wants it up."""
    if record["admin_state"] != "up":
        return []
    return [("start_domain", {"node": target, "instance": record["name"]}),
            ("update_instance", {"name": record["name"], "admin_state": "up"})]


def failover_steps(record, target, ignore_consistency=False, timeout=DEFAULT_SHUTDOWN_TIMEOUT):
    """The steps of a cold failover of ``record`` (sharedfile, drbd) to ``target``: the old primary
    released, the record moved, then the domain defined (and started if the operator wants it
    up) on the target in one call."""
    name, primary = record["name"], record["primary"]
    job_steps = [("release_old_primary", {"node": primary, "instance": name, "timeout": timeout,
                                          "ignore_consistency": ignore_consistency})]
    moved = {"name": name, "primary": target}
    if record["template"] == "drbd":
        drbd = {"instance": name, "count": len(record["disks"])}
        job_steps += [("drbd_role", {"node": primary, **drbd, "role": "secondary", "skip_if_silent": ignore_consistency}),
                      ("drbd_role", {"node": target, **drbd, "role": "primary"})]
        moved["secondary"] = primary
    return job_steps + [("update_instance", moved),
                        ("define_domain", {"node": target, "instance": name, "start": record["admin_state"] == "up"})]


def move_steps(ctx, record, target, timeout=DEFAULT_SHUTDOWN_TIMEOUT):
    """The steps of a move of ``record`` (file, plain) to ``target`` by copying its disks while it is stopped."""
    name, source, template = record["name"], record["primary"], record["template"]
    address = endpoint(ctx, source)["address"]
    if not address:
        raise OpError(f"{MIGRATION_OPTION}:address is not set in the minion config of {source}; the target reads "
                      "the disks from that address: set it, then try again")
    return [("update_instance", {"name": name, "admin_state": "down"}),
            ("stop_domain", {"node": source, "instance": name, "timeout": timeout}),
            *_source_disk_steps(ctx, record, source, target),
            *[("copy_disk", {"source": source, "target": target, "instance": name, "index": index,
                             "template": template, "address": address}) for index in range(len(record["disks"]))],
            ("define_domain", {"node": target, "instance": name}),
            ("update_instance", {"name": name, "primary": target}),
            ("undefine_domain", {"node": source, "instance": name}),
            *_remove_disk_steps(record, source),
            *_restart_steps(record, target)]


def migrate(ctx, name, target=None, test=False):
    """Live-migrate a running instance to ``target`` (default: the planner's best other node, or the
    drbd secondary); ``file``/``plain`` disks are copied, the source disks removed afterwards."""
    record = instance_record(ctx, name)
    source, template = record["primary"], record["template"]
    target = _target_node(ctx, record, target)
    if template in ("plain", "drbd"):  # steps before the migration change things: check first (file and
        state = domains_on(ctx, source).get(name)  # sharedfile: their first step is the migration, which checks)
        if state not in LIVE_STATES:
            raise OpError(not_running(name, source, state, target, template == "plain"))
    job = new_job("migrate", name, migrate_steps(ctx, record, target), _locks(record, target))
    return execute_or_plan(ctx, job, test)


def failover(ctx, name, target=None, ignore_consistency=False, shutdown_timeout=DEFAULT_SHUTDOWN_TIMEOUT,
             test=False):
    """Cold failover: stop the instance on its primary (or pass over a primary the operator declared
    down with ``ignore_consistency=True``), then start it on the secondary (drbd) or on ``target``
    (sharedfile; default: the planner's best other node)."""
    record = instance_record(ctx, name)
    primary, template = record["primary"], record["template"]
    if template in COPY_TEMPLATES:
        raise OpError(f"template: {name} is a {template} instance whose disks exist on {primary} only, so it cannot "
                      f"fail over; move it while {primary} is up: salt-run cluster.move {name} target=NODE")
    ignore_consistency = _flag(ignore_consistency, "ignore_consistency")
    timeout = names.positive_int(shutdown_timeout, "shutdown_timeout", minimum=0)
    target = _target_node(ctx, record, target)  # a silent primary refuses in the job's first step
    job_steps = failover_steps(record, target, ignore_consistency, timeout)
    return execute_or_plan(ctx, new_job("failover", name, job_steps, _locks(record, target)), test)


def move(ctx, name, target=None, shutdown_timeout=DEFAULT_SHUTDOWN_TIMEOUT, test=False):
    """Move a ``file``/``plain`` instance to ``target`` by copying its disks while it is stopped:
    stop, copy each disk over NBD into an exact-size disk, define it on the target, remove it from
    the source, and start it again if it was up."""
    record = instance_record(ctx, name)
    template = record["template"]
    if template not in COPY_TEMPLATES:
        raise OpError(f"template: {name} is a {template} instance: its disks are reachable from other nodes, "
                      f"so it needs no copy; use salt-run cluster.migrate {name} (running) or cluster.failover {name}")
    timeout = names.positive_int(shutdown_timeout, "shutdown_timeout", minimum=0)
    target = _target_node(ctx, record, target)
    job = new_job("move", name, move_steps(ctx, record, target, timeout), _locks(record, target))
    return execute_or_plan(ctx, job, test)
