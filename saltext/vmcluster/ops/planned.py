"""Planner-driven operations: balance, capacity, allocate (dry run), evacuate, replace_disks.

The planner (:mod:`saltext.vmcluster.planner`) decides; this module turns its
decisions into journaled jobs. A whole evacuation or balancing run is ONE job:
every instance move is one step (:func:`move_instance`, which runs the move's
own steps from :mod:`ops.moves` in order), and the moves of one planner job
set touch disjoint nodes, so their steps share a ``set`` number and run in
parallel.

The plan-only verbs take the cluster either live (config + node resources +
store records + node flags) or from a Ganeti htools data file (``file=``).
"""

import dataclasses

from saltext.vmcluster import disks, names
from saltext.vmcluster.ops import moves
from saltext.vmcluster.ops.engine import OpError, new_job, run, step
from saltext.vmcluster.ops.steps import create_disk
from saltext.vmcluster.ops.instances import execute_or_plan, instance_record, instance_locks, live_cluster
from saltext.vmcluster.planner import balance as balancer
from saltext.vmcluster.planner import htools
from saltext.vmcluster.planner.allocate import EVAC_MODES, Allocator, parse_spec
from saltext.vmcluster.planner.capacity import capacity as fill_capacity
from saltext.vmcluster.planner.capacity import tiered_capacity

FAILOVER_TEMPLATES = ("sharedfile", "drbd")  # can start elsewhere when the primary is gone
DRBD9 = 0x090000


# -- the planner's view ---------------------------------------------------------


def planner_cluster(ctx, file=None):
    """The planner's model: of the live cluster, or of an htools data file (``file``)."""
    if file is not None:
        try:
            return htools.load(names.path(file, "file"))
        except (OSError, htools.HtoolsFormatError) as exc:
            raise OpError(f"file: cannot load {file}: {exc}; give a Ganeti htools text data file "
                          "(hscan or gnt-cluster output)") from exc
    cluster = live_cluster(ctx)
    records = ctx.store.instances()
    for inst in cluster.instances:
        # a domain the store does not know is not ours to move
        inst.auto_balance = inst.auto_balance and inst.name in records
    return cluster


def _spec(spec):
    if not spec:
        raise OpError("spec: give the instance, e.g. spec=mem=1G,disk=10G,vcpus=1,template=file")
    return parse_spec(spec) if isinstance(spec, str) else spec


def capacity(ctx, spec=None, tiered=False, file=None):
    """How many more instances of ``spec`` fit (default: the policy's standard spec); hspace."""
    cluster = planner_cluster(ctx, file)
    result = (tiered_capacity if tiered else fill_capacity)(cluster, _spec(spec) if spec else None)
    return {
        "count": result.count,
        "limited_by": result.reason or "nothing",
        "tiers": [{"count": count, "mem": tier.mem, "disk": tier.disk, "vcpus": tier.vcpus,
                   "template": tier.disk_template} for tier, count in result.tiers],
        "source": file or "live",
    }


def allocate(ctx, spec, count=1, file=None):
    """Where ``count`` instances of ``spec`` would go, each seeing the previous ones; changes nothing."""
    spec = _spec(spec)
    count = names.positive_int(count, "count")
    alloc = Allocator(planner_cluster(ctx, file))
    placements, failed = [], {}
    for k in range(count):
        one = dataclasses.replace(spec, name=f"{spec.name}-{k}") if count > 1 else spec
        result = alloc.allocate(one)
        if not result.ok:
            failed[one.name] = result.info
            continue
        place = result.placement
        placements.append({"instance": place.instance, "primary": place.primary, "secondary": place.secondary,
                           "group": place.group, "score": round(place.score, 8)})
    return {"placements": placements, "failed": failed, "source": file or "live"}


# -- moving instances -------------------------------------------------------------


def _node_offline(ctx, node):
    """True if the operator flagged ``node`` offline; OpError if it is silent without that flag."""
    if ctx.store.node_flags(node).get("offline"):
        return True
    if node not in ctx.rpc.call([node], "test.ping", timeout=5):
        raise OpError(f"node {node} does not answer, so its instances may still run there; make sure it is down "
                      f"(power it off), flag it: salt-run cluster.node_modify {node} offline=True, "
                      "then evacuate again")
    return False


def move_actions(record, new_primary, new_secondary, down=False, running=None):
    """The moves carrying ``record`` to ``new_primary``/``new_secondary``: ``[(verb, node)]``.

    Verbs: ``migrate`` (live; copies the storage of file/plain), ``move`` (cold copy
    of a stopped instance), ``failover`` (start on the new node, the old one being
    down), ``replace`` (new DRBD secondary). ``down``: the primary is down or offline.
    Raises OpError when the template cannot get there.
    """
    name, template = record["name"], record["template"]
    primary, secondary = record["primary"], record.get("secondary")
    running = record.get("admin_state") == "up" if running is None else running
    if template != "drbd":
        if new_primary == primary:
            return []
        if down and template not in FAILOVER_TEMPLATES:
            raise OpError(f"{name}: its {template} disks are on {primary}, which is down or offline; "
                          "bring the node back and evacuate again")
        return [("failover" if down else "migrate" if running else "move", new_primary)]
    actions = []
    if new_primary != primary:
        if new_primary != secondary:  # mirror to the new primary first, then switch over
            actions.append(("replace", new_primary))
        actions.append(("failover" if down or not running else "migrate", new_primary))
        primary, secondary = new_primary, primary
    if new_secondary != secondary:
        actions.append(("replace", new_secondary))
    return actions


ACTION_STEPS = {
    "migrate": moves.migrate_steps,
    "move": moves.move_steps,
    # only off a node the operator flagged offline (see evacuate): it is down
    "failover": lambda ctx, record, node: moves.failover_steps(record, node, ignore_consistency=True),
    "replace": lambda ctx, record, node: replace_disks_steps(ctx, record, node),
}


@step
def move_instance(ctx, instance, actions, journal):
    """Carry out one instance's moves in order; each move is a journaled sub-job ``<journal>.<n>``.

    A move's steps are built from the record when the move starts and journaled at
    once, so a resumed job repeats only the unfinished steps of the unfinished move.
    The sub-jobs run under the locks of the job that runs this step.
    """
    results = []
    for number, (verb, node) in enumerate(actions):
        sub = ctx.store.job(f"{journal}.{number}")
        if sub is None:
            sub_steps = ACTION_STEPS[verb](ctx, ctx.store.instance(instance), node)
            sub = {**new_job(verb, instance, sub_steps, []), "id": f"{journal}.{number}"}
            ctx.store.put_job(sub)
        if sub["state"] != "done":
            run(ctx, sub)
        results.append(f"{verb} to {node}: job {sub['id']}")
    return results


def _move_job(ctx, operation, target, planned, test):
    """One job of ``planned`` = ``[(set, record, new_primary, new_secondary, actions)]``."""
    job_steps, locks = [], set()
    for number, record, new_primary, new_secondary, actions in planned:
        job_steps.append(("move_instance", {"instance": record["name"], "actions": actions}, number))
        locks.update(instance_locks(record))
        locks.update(f"node/{n}" for n in (new_primary, new_secondary) if n)
    job = new_job(operation, target, job_steps, sorted(locks))
    for entry in job["steps"]:
        entry["args"]["journal"] = f"{job['id']}.{entry['args']['instance']}"
    result = execute_or_plan(ctx, job, test)
    if test:
        result["plan"] = [
            f"job set {entry['set'] + 1}: {entry['args']['instance']}: "
            + ", then ".join(f"{verb} to {node}" for verb, node in entry["args"]["actions"])
            for entry in job["steps"]
        ]
    return result


def _move_row(move):
    return {"instance": move.instance, "from": ":".join(filter(None, (move.old_primary, move.old_secondary))),
            "to": ":".join(filter(None, (move.new_primary, move.new_secondary))), "kind": move.kind,
            "score": round(move.score, 8)}


def evacuate(ctx, node, mode="all", test=False):
    """Move every instance off ``node`` as the planner decides, in one job of parallel job sets.

    ``mode``: ``primary`` (its primaries), ``secondary`` (its DRBD secondaries) or
    ``all``. Primaries migrate live (copying the storage of file/plain), or fail
    over when the node is flagged offline (it is down: the operator says so) and the
    template allows; a node that is silent without the flag is refused. Secondaries are
    re-mirrored. Instances that cannot move are reported with the planner's reason;
    the others still move.
    """
    node = names.name(node, "node")
    if node not in ctx.cfg.nodes:
        raise OpError(f"node: {node} is not in the cluster; nodes: {', '.join(sorted(ctx.cfg.nodes))}")
    mode = names.choice(mode, "mode", EVAC_MODES)
    cluster = planner_cluster(ctx)
    records = ctx.store.instances()
    failed = {inst.name: f"not a cluster instance (a domain on {node} the store does not know); "
                         "remove it by hand or add it to the cluster"
              for inst in cluster.instances if inst.primary == node and inst.name not in records}
    down = _node_offline(ctx, node)
    chosen = []
    for record in sorted(records.values(), key=lambda r: r["name"]):
        on_node = (mode != "secondary" and record["primary"] == node) or (
            mode != "primary" and record.get("secondary") == node)
        if not on_node:
            continue
        if down and record["primary"] == node and record["template"] not in FAILOVER_TEMPLATES:
            failed[record["name"]] = (f"its {record['template']} disks are on {node}, which is down or "
                                      "offline; bring the node back and evacuate again")
        else:
            chosen.append(record["name"])
    result = Allocator(cluster, allow_copy_storage=True).evacuate(chosen, mode)
    failed.update(result.failed)
    planned_moves = [
        balancer.Move(m.instance, "evacuate", m.old[0], m.old[1], m.new[0], m.new[1], m.score,
                      running=records[m.instance].get("admin_state") == "up")
        for m in result.moves
    ]
    out = _run_moves(ctx, "evacuate", node, evacuation_sets(planned_moves, node), records, down, test)
    out.update(node=node, mode=mode, cannot_move=failed)
    return out


def evacuation_sets(moves, node):
    """Split evacuation moves, in order, into job sets whose moves can run together.

    Unlike balancing moves, evacuation moves all leave ``node`` and mostly only add
    load elsewhere: a node that only receives instances passes every load between
    its load now and its planned final load whatever order the moves of a set end
    in, so moves into one node share a set (and all of them share ``node``). A node
    whose load falls or changes role (the old secondary of a drbd instance) belongs
    to one move of a set and is touched by no other move of it.
    """
    sets, filled, changed = [], set(), set()
    for move in moves:
        old = {move.old_primary, move.old_secondary} - {None, node}
        gains = {move.new_primary, move.new_secondary} - {None, node} - old
        if sets and not old & (filled | changed) and not gains & changed:
            sets[-1].append(move)
        else:
            sets.append([move])
            filled, changed = set(), set()
        filled |= gains
        changed |= old
    return sets


def _run_moves(ctx, operation, target, job_sets, records, down, test):
    """Carry out (or, with ``test``, plan) the moves of ``job_sets`` as one job."""
    planned = [
        (number, records[move.instance], move.new_primary, move.new_secondary,
         move_actions(records[move.instance], move.new_primary, move.new_secondary, down=down, running=move.running))
        for number, job_set in enumerate(job_sets) for move in job_set
    ]
    out = {"moves": [_move_row(m) for s in job_sets for m in s], "job_sets": [[m.instance for m in s] for s in job_sets]}
    if planned:
        out.update(_move_job(ctx, operation, target, planned, test))
    return out


def balance(ctx, file=None, max_steps=-1, min_gain=balancer.DEFAULT_MIN_GAIN, copy_storage=True,
            execute=False, test=False):
    """Balance like hbal: the moves, initial/final score, job sets and the commands they mean.

    ``execute=True`` runs the moves (live data only) as one job of parallel job sets.
    """
    if execute and file is not None:
        raise OpError("execute: a plan computed from a data file cannot be executed; drop file= "
                      "to balance the live cluster")
    max_steps = int(max_steps)
    result = balancer.balance(planner_cluster(ctx, file), max_steps=max_steps, min_gain=float(min_gain),
                              allow_copy_storage=bool(copy_storage))
    out = {"source": file or "live", "initial_score": round(result.initial_score, 8),
           "final_score": round(result.final_score, 8),
           "commands": balancer.format_commands(result).splitlines()}
    if not execute:
        out.update(moves=[_move_row(m) for m in result.moves],
                   job_sets=[[m.instance for m in s] for s in result.job_sets])
        return out
    out.update(_run_moves(ctx, "balance", "cluster", result.job_sets, ctx.store.instances(), False, test))
    return out


# -- replace_disks (DRBD: new secondary) --------------------------------------------


def drbd_kernel_problem(ctx, nodes):
    """Why these nodes cannot hold a third DRBD peer (None if they all run DRBD 9)."""
    for node in nodes:
        out = ctx.rpc.call_one(node, "cmd.run_all", ["drbdadm", "--version"], python_shell=False)
        fields = dict(line.split("=", 1) for line in out.get("stdout", "").splitlines() if "=" in line)
        code = int(fields.get("DRBD_KERNEL_VERSION_CODE", "0"), 16)
        if not code:
            return f"{node}: the kernel has no DRBD module (runs in the system tier)"
        if code < DRBD9:
            return (f"{node}: DRBD {fields.get('DRBD_KERNEL_VERSION', hex(code))} keeps one peer per resource, "
                    "so a new secondary could only be synced after dropping the old one (redundancy would drop); "
                    "load the DRBD 9 module")
    return None


def _resource_on(ctx, node, instance, index, peers):
    """Write disk ``index``'s resource over ``peers`` (names) on ``node`` and apply it (``drbd.adjust``).

    Every peer's backing LV is named as on ``node`` (its ``vmcluster:storage:drbd``
    volume group), as ``cluster_disk.create`` names them.
    """
    drbd = ctx.store.instance(instance)["disks"][index]["drbd"]
    resource = disks.disk_name(instance, index, "drbd")
    vg = ctx.rpc.call_one(node, "config.get", "vmcluster:storage:drbd")
    backing = disks.lv_path(vg, disks.lv_name(resource, "drbd"))
    nodes = [{"disk": backing, "node_id": k, **entry} for k, entry in enumerate(drbd["nodes"]) if entry["name"] in peers]
    ctx.rpc.call_one(node, "drbd.write_config", resource, nodes, drbd["port"], drbd["minor"], drbd["secret"],
                     drbd9=True)
    return ctx.rpc.call_one(node, "drbd.adjust", resource)


def _minors_on(ctx, node):
    """DRBD minors the instances use on ``node``."""
    return {entry.get("minor", disk["drbd"]["minor"])
            for record in ctx.store.instances().values() for disk in record["disks"] if "drbd" in disk
            for entry in disk["drbd"]["nodes"] if entry["name"] == node}


def replace_disks_steps(ctx, record, new_secondary):
    """Steps giving drbd ``record`` the secondary ``new_secondary`` (none if it has it).

    The record first lists all three peers of each disk (the new one with a minor
    free on its node; an interrupted run keeps what it chose), each disk gets the
    new peer and waits for its sync, then the old peer is dropped and the record
    names the new secondary.
    """
    name, primary, old = record["name"], record["primary"], record.get("secondary")
    if new_secondary == old:
        return []
    used = _minors_on(ctx, new_secondary)
    wide = []
    for disk in record["disks"]:
        drbd = disk["drbd"]
        if new_secondary not in [entry["name"] for entry in drbd["nodes"]]:
            ids = {e.get("node_id", k) for k, e in enumerate(drbd["nodes"])}
            entry = {"name": new_secondary, "address": ctx.cfg.nodes[new_secondary].replication_address,
                     "node_id": min(set(range(3)) - ids)}
            if drbd["minor"] in used:
                entry["minor"] = min(set(range(len(used) + 1)) - used)
            used.add(entry.get("minor", drbd["minor"]))
            drbd = {**drbd, "nodes": [*drbd["nodes"], entry]}
        wide.append({**disk, "drbd": drbd})
    final = [{**disk, "drbd": {**disk["drbd"], "nodes": [
        {"node_id": k, **entry} for k, entry in enumerate(disk["drbd"]["nodes"]) if entry["name"] != old]}}
        for disk in wide]  # every peer keeps its DRBD 9 node-id
    resources = [disks.disk_name(name, index, "drbd") for index in range(len(wide))]
    steps = [("update_instance", {"name": name, "disks": wide})]
    for index, resource in enumerate(resources):
        steps += [("drbd_add_peer", {"instance": name, "index": index, "old": [primary, old], "new": new_secondary}),
                  ("drbd_wait_sync", {"node": new_secondary, "resource": resource})]
    steps += [("drbd_drop_peer", {"instance": name, "index": index, "keep": [primary, new_secondary], "drop": old})
              for index in range(len(wide))]
    steps.append(("update_instance", {"name": name, "secondary": new_secondary, "disks": final}))
    return steps


@step
def drbd_add_peer(ctx, instance, index, old, new):
    """Mirror disk ``index`` to ``new`` as well: three-peer resource on the ``old`` nodes, the disk on ``new``."""
    for node in old:
        _resource_on(ctx, node, instance, index, [*old, new])
    disk = ctx.store.instance(instance)["disks"][index]
    return create_disk(ctx, new, instance, index, disk["size"], "drbd", exact=True,
                       drbd={**disk["drbd"], "drbd9": True})


@step
def drbd_drop_peer(ctx, instance, index, keep, drop):
    """Back to two peers: the resource over ``keep`` on both, then the disk on ``drop`` removed."""
    for node in keep:
        _resource_on(ctx, node, instance, index, keep)
    return ctx.rpc.call_one(drop, "cluster_disk.remove", instance, index, "drbd")


def replace_disks(ctx, name, new_secondary=None, test=False):
    """Give a drbd instance a new secondary (``gnt-instance replace-disks -n``).

    The new mirror is built and synced before the old one is dropped (DRBD 9: a
    third peer for the time of the sync), so redundancy never drops. Without
    ``new_secondary`` the planner chooses it.
    """
    record = instance_record(ctx, names.name(name, "name"))
    if record["template"] != "drbd":
        raise OpError(f"name: {name} has disk template {record['template']}; replace_disks changes the DRBD "
                      f"secondary of drbd instances only (move a {record['template']} instance with "
                      "cluster.migrate or cluster.move)")
    if new_secondary is None:
        move, reason = Allocator(planner_cluster(ctx)).relocate(name)
        if move is None:
            raise OpError(f"new_secondary: the planner found no node for {name}: {reason}")
        new_secondary = move.new[1]
    new_secondary = names.name(new_secondary, "new_secondary")
    if new_secondary not in ctx.cfg.nodes:
        raise OpError(f"new_secondary: {new_secondary} is not in the cluster; nodes: "
                      f"{', '.join(sorted(ctx.cfg.nodes))}")
    if new_secondary in (record["primary"], record.get("secondary")):
        raise OpError(f"new_secondary: {new_secondary} already holds {name} "
                      f"({record['primary']}:{record.get('secondary')}); name another node")
    if not test:
        problem = drbd_kernel_problem(ctx, [record["primary"], record["secondary"], new_secondary])
        if problem:
            raise OpError(f"replace_disks {name}: {problem}; nothing changed")
    job = new_job("replace_disks", name, replace_disks_steps(ctx, record, new_secondary),
                  instance_locks(record) + [f"node/{new_secondary}"])
    return execute_or_plan(ctx, job, test)
