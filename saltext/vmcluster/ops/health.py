"""Cluster health: ``verify`` (pillar vs store vs nodes) and the ``watcher`` (repairs what is safe).

The comparisons are pure functions of plain data — the configured nodes, the
store's records and node flags, the nodes' ``cluster_node.resources`` and
``cluster_disk.list_disks`` replies and DRBD states — so they are tested
without a cluster; :func:`verify` and :func:`watcher` gather that data and
act on it.

The watcher restarts admin-up instances that do not run on their primary
(as a journaled job), undefines stopped stale copies and reconnects DRBD. It
never starts an instance its operator stopped (admin-down), never touches an
instance whose primary is down or offline (recovery is failover's job), and
never waits for an instance that a running job holds: it reports it "busy".
"""

import dataclasses

import numpy as np

from saltext.vmcluster import declared as declared_instances
from saltext.vmcluster import disks as disk_names
from saltext.vmcluster import views
from saltext.vmcluster.drbd import status as drbd_status
from saltext.vmcluster.ops import steps
from saltext.vmcluster.ops.engine import OpError, new_job, run, step
from saltext.vmcluster.planner.checks import NodeRoom, Redundancy
from saltext.vmcluster.planner.live import cluster_from_live
from saltext.vmcluster.planner.score import NodeLoads
from saltext.vmcluster.store import LockTimeout

ERROR, WARNING, INFO = "error", "warning", "info"
SEVERITY_ORDER = (ERROR, WARNING, INFO)
RUNNING_STATES = ("running", "paused", "blocked")
NO_DRBD_MODULE = "host kernel has no DRBD module; DRBD state not checked (runs in the system tier)"
WATCHER_LOCK_TIMEOUT = 1.0
RPC_TIMEOUT = 10


def finding(severity, check, detail, fix, node=None, instance=None):
    """One row of ``verify``: what is wrong, where, and the command that repairs it."""
    return {"severity": severity, "check": check, "node": node or "-", "instance": instance or "-",
            "detail": detail, "fix": fix}


def _stale_fix(node, name, running):
    remove = f"salt {node} cluster_vm.remove_stale '[{name}]'"
    return f"salt {node} cluster_vm.destroy {name}; {remove}" if running else remove


def _primaries(records, node):
    return sorted(name for name, rec in records.items() if rec["primary"] == node)


def node_findings(nodes, records, flags, replies):
    """Nodes that are down, and offline nodes that still hold instances."""
    for node in sorted(nodes):
        held = _primaries(records, node)
        evacuate = f"salt-run cluster.evacuate {node}"
        if flags.get(node, {}).get("offline"):
            if held:
                yield finding(WARNING, "offline-node", f"offline but primary of {', '.join(held)}", evacuate, node)
        elif not isinstance(replies.get(node), dict):
            detail = "did not answer" + (f"; primary of {', '.join(held)}" if held else "")
            yield finding(ERROR, "node-down", detail,
                          evacuate if held else f"salt-run cluster.node_modify {node} offline=True", node)


def placement_findings(nodes, records):
    """Instances placed on nodes the pillar does not declare."""
    for name, rec in sorted(records.items()):
        for role in ("primary", "secondary"):
            if rec.get(role) and rec[role] not in nodes:
                yield finding(ERROR, "unknown-node", f"{role} {rec[role]} is not in pillar cluster:nodes",
                              f"declare {rec[role]} under cluster:nodes, or salt-run cluster.remove {name}",
                              rec[role], name)


def _domain_row(node, name, facts, rec):
    """The finding (or None) for domain ``name`` defined on answering ``node``."""
    running = facts["running"]
    if rec is None:
        state = "running" if running else "shut off"
        return finding(WARNING, "unknown-domain", f"{state} domain unknown to the cluster",
                       _stale_fix(node, name, running), node, name)
    if rec["primary"] != node:
        if running:
            return finding(ERROR, "stale-domain", f"runs here but its primary is {rec['primary']}",
                           _stale_fix(node, name, True), node, name)
        return finding(WARNING, "stale-domain", f"stopped copy; its primary is {rec['primary']}",
                       _stale_fix(node, name, False), node, name)
    if running and rec["admin_state"] != "up":
        return finding(WARNING, "admin-down-running", "runs but is marked admin-down",
                       f"salt-run cluster.stop {name}", node, name)
    if running and (facts["memory"], facts["vcpus"]) != (rec["memory"], rec["vcpus"]):
        return finding(INFO, "pending-change",
                       f"runs with {facts['memory']} MiB/{facts['vcpus']} vCPUs, record says "
                       f"{rec['memory']} MiB/{rec['vcpus']} vCPUs (applies at next start)",
                       f"salt-run cluster.reboot {name}", node, name)
    return None


def domain_findings(records, replies):
    """Missing domains (admin-up, not running on the primary) and stale or unknown domains."""
    for node, reply in sorted(replies.items()):
        if not isinstance(reply, dict):
            continue
        domains = reply.get("instances", {})
        for name, facts in sorted(domains.items()):
            row = _domain_row(node, name, facts, records.get(name))
            if row:
                yield row
        for name in _primaries(records, node):
            if records[name]["admin_state"] == "up" and not domains.get(name, {}).get("running"):
                state = "defined but not running" if name in domains else "not defined"
                yield finding(ERROR, "missing-domain", f"admin-up but {state} on its primary",
                              f"salt-run cluster.start {name}", node, name)


def disk_findings(records, disks):
    """Disks no instance owns (``disks``: ``{node: cluster_disk.list_disks reply}``)."""
    seen = set()
    for node, entries in sorted(disks.items()):
        for entry in entries if isinstance(entries, list) else ():
            if entry["path"] in seen:  # a sharedfile disk is listed by every node
                continue
            seen.add(entry["path"])
            rec = records.get(entry["instance"])
            owned = (
                rec is not None and rec["template"] == entry["template"] and entry["index"] < len(rec["disks"])
                and (entry["template"] in views.SHARED_TEMPLATES or node in (rec["primary"], rec.get("secondary")))
            )
            if not owned:
                yield finding(WARNING, "orphan-disk", f"disk {entry['index']} ({entry['template']}) {entry['path']}",
                              f"salt {node} cluster_disk.remove {entry['instance']} {entry['index']} {entry['template']}",
                              node, entry["instance"])


def drbd_findings(records, drbd):
    """DRBD resources that are not up, not connected or not in sync.

    ``drbd``: ``{node: drbd.status reply}``, or ``{node: reason}`` (a string) where the state
    could not be read; nodes absent from ``drbd`` are down and reported as such elsewhere.
    """
    skipped = set()
    for name, rec in sorted(records.items()):
        if rec["template"] != "drbd":
            continue
        for node in (rec["primary"], rec.get("secondary")):
            state = drbd.get(node)
            if isinstance(state, str):
                if node not in skipped:
                    skipped.add(node)
                    yield finding(INFO, "drbd", state, f"salt {node} drbd.status", node)
                continue
            for index in range(len(rec["disks"]) if state is not None else 0):
                resource = disk_names.disk_name(name, index, "drbd")
                row = _drbd_row(node, name, resource, state.get(resource))
                if row:
                    yield row


def _drbd_row(node, name, resource, state):
    adjust = f"salt {node} drbd.adjust {resource}"
    if state is None:
        return finding(ERROR, "drbd", f"{resource} is not up", adjust, node, name)
    unconnected = [p.get("name", "?") for p in state["peers"] if p["connection"] != "Connected"]
    if unconnected or not state["peers"]:
        return finding(ERROR, "drbd", f"{resource} not connected to {', '.join(unconnected) or 'its peer'}",
                       adjust, node, name)
    if drbd_status.is_synced(state):
        return None
    done = drbd_status.sync_progress(state)
    if done is not None:
        return finding(WARNING, "drbd", f"{resource} resyncing, {done}% done",
                       f"salt {node} drbd.wait_sync {resource}", node, name)
    return finding(ERROR, "drbd", f"{resource} not in sync", adjust, node, name)


DECLARED_CHECKS = {"add": "declared-missing", "start": "declared-admin-state", "stop": "declared-admin-state"}


def declared_findings(declared, records):
    """Differences between the declared instances (pillar ``cluster:instances``) and the store.

    Declared but not created is an error; spec and admin state differences are warnings, each
    with the runner command that converges it. Once anything is declared, instances nobody
    declared are listed as ``undeclared`` (a warning: they are left alone, never removed).
    """
    for name, decl in sorted(declared.items()):
        record = records.get(name)
        for action in declared_instances.actions(decl, record):
            yield finding(ERROR if action.verb == "add" else WARNING, DECLARED_CHECKS.get(action.verb, "declared-spec"),
                          action.detail, action.command(name), record and record["primary"], name)
    for name in sorted(set(records) - set(declared) if declared else ()):
        yield finding(WARNING, "undeclared", "in the cluster but not declared in pillar cluster:instances",
                      f"declare it under cluster:instances, or salt-run cluster.remove {name}",
                      records[name]["primary"], name)


def n1_failing(loads):
    """Online nodes whose failure the others could not absorb (global N+1, DRBD reservations)."""
    room = NodeRoom(loads)
    bad = set(Redundancy(room).bad) | {int(k) for k in np.flatnonzero(room.fail_n1)}
    return sorted(loads.cluster.nodes[k].name for k in bad if not loads.offline[k])


def n1_findings(failing):
    for node in failing:
        yield finding(ERROR, "n+1", "if this node fails, the other nodes cannot take over its instances",
                      "salt-run cluster.balance (or add memory/disk, or remove instances)", node)


def sort_findings(rows):
    return sorted(rows, key=lambda r: (SEVERITY_ORDER.index(r["severity"]), r["check"], r["node"], r["instance"]))


def findings(nodes, records, flags, replies, disks, drbd, failing, declared=None):
    """Every finding, errors first. Arguments as the ``*_findings`` functions take them."""
    return sort_findings([
        *declared_findings(declared or {}, records),
        *node_findings(nodes, records, flags, replies),
        *placement_findings(nodes, records),
        *domain_findings(records, replies),
        *disk_findings(records, disks),
        *drbd_findings(records, drbd),
        *n1_findings(failing),
    ])


# -- gathering -----------------------------------------------------------------


def _live(ctx):
    """``(records, flags, replies)``: the store and every answering node's resources."""
    replies = ctx.rpc.call(sorted(ctx.cfg.nodes), "cluster_node.resources", timeout=RPC_TIMEOUT)
    flags = {name: ctx.store.node_flags(name) for name in ctx.cfg.nodes}
    return ctx.store.instances(), flags, {n: r for n, r in replies.items() if isinstance(r, dict)}


def _drbd_nodes(records, replies):
    return sorted({n for rec in records.values() if rec["template"] == "drbd"
                   for n in (rec["primary"], rec.get("secondary")) if n in replies})


def drbd_states(ctx, nodes):
    """``{node: drbd.status}``, or ``{node: reason}`` where it cannot be read (no kernel module)."""
    if not nodes:
        return {}
    kernels = ctx.rpc.call(nodes, "grains.get", ["cluster_node:drbd:kernel"], timeout=RPC_TIMEOUT)
    with_module = [n for n in nodes if kernels.get(n)]
    states = ctx.rpc.call(with_module, "drbd.status", timeout=RPC_TIMEOUT)
    return {n: states.get(n, "drbd.status did not answer") if n in with_module else NO_DRBD_MODULE
            for n in nodes}


def verify(ctx):
    """Compare pillar, store and nodes; return the findings (see :func:`findings`)."""
    records, flags, replies = _live(ctx)
    disks = ctx.rpc.call(sorted(replies), "cluster_disk.list_disks", timeout=RPC_TIMEOUT)
    drbd = drbd_states(ctx, _drbd_nodes(records, replies))
    failing = n1_failing(NodeLoads(cluster_from_live(ctx.cfg, replies, records, flags)))
    return findings(ctx.cfg.nodes, records, flags, replies, disks, drbd, failing, ctx.cfg.instances)


# -- watcher -------------------------------------------------------------------


def _running_on(replies, name):
    return sorted(n for n, r in replies.items() if r.get("instances", {}).get(name, {}).get("running"))


def watch_plan(records, flags, replies):
    """What the watcher should do: rows ``{instance, node, action, reason}``.

    ``action`` is ``restart`` (admin-up, not running on its answering primary nor anywhere else),
    ``remove_stale`` (a stopped copy on a node that is not its primary) or ``skip`` (with the reason).
    Admin-down instances are never restarted and not listed.
    """
    plan = []
    for name, rec in sorted(records.items()):
        primary = rec["primary"]
        for node in sorted(replies):
            facts = replies[node].get("instances", {}).get(name)
            if node != primary and facts and not facts["running"]:
                plan.append({"instance": name, "node": node, "action": "remove_stale", "reason": "stopped copy"})
        if rec["admin_state"] != "up":
            continue
        running = _running_on(replies, name)
        if flags.get(primary, {}).get("offline"):
            plan.append({"instance": name, "node": primary, "action": "skip",
                         "reason": f"primary {primary} is offline; recovery is failover's job"})
        elif primary not in replies:
            plan.append({"instance": name, "node": primary, "action": "skip",
                         "reason": f"primary {primary} is down; recovery is failover's job"})
        elif running and running != [primary]:
            plan.append({"instance": name, "node": primary, "action": "skip",
                         "reason": f"runs on {', '.join(running)}, not only its primary: see salt-run cluster.verify"})
        elif not running:
            plan.append({"instance": name, "node": primary, "action": "restart", "reason": "admin-up, not running"})
    return plan


def drbd_to_reconnect(states):
    """Resources of a ``drbd.status`` reply that are StandAlone or waiting for their peer."""
    return sorted(name for name, state in states.items()
                  if not state["peers"] or any(p["connection"] in ("StandAlone", "Connecting") for p in state["peers"]))


@step
def watcher_start(ctx, node, instance):
    """Start an instance the watcher found down, if it is still admin-up on ``node`` and runs nowhere."""
    record = ctx.store.instance(instance)
    if not record or record["admin_state"] != "up" or record["primary"] != node:
        return "no longer needed"
    others = sorted(set(ctx.cfg.nodes) - {node})
    elsewhere = sorted(n for n, doms in ctx.rpc.call(others, "cluster_vm.list_domains", timeout=RPC_TIMEOUT).items()
                       if isinstance(doms, dict) and doms.get(instance) in RUNNING_STATES)
    if elsewhere:
        raise OpError(f"{instance} runs on {', '.join(elsewhere)}; not started on {node}")
    return "started" if steps.define_domain(ctx, node, instance, start=True)["started"] else "was running"


@step
def watcher_remove_stale(ctx, node, instance):
    """Undefine the stopped copy of ``instance`` on ``node`` unless ``node`` is its primary (never starts it)."""
    record = ctx.store.instance(instance)
    if record and record["primary"] == node:
        return "is its primary now"
    return ctx.rpc.call_one(node, "cluster_vm.remove_stale", [instance])


def _watch_job(ctx, operation, row, step_name):
    """Run one watcher action as a job (``ctx.lock_timeout``: how long to wait); its outcome for the operator."""
    job = new_job(operation, row["instance"], [(step_name, {"node": row["node"], "instance": row["instance"]})],
                  [f"instance/{row['instance']}"])
    try:
        done = run(ctx, job)
    except LockTimeout as exc:
        job.update(state="cancelled", error=f"busy: {exc}")  # nothing ran; a later watcher run retries
        ctx.store.put_job(job)
        return f"busy: {exc}"
    except OpError as exc:
        return f"failed: {exc}"
    return f"done (job {done['id']}): {done['steps'][0]['result']}"


def _reconnect_drbd(ctx, records, replies):
    """Adjust the StandAlone/Connecting DRBD resources of drbd instances; skip nodes without the module."""
    rows = []
    owners = {disk_names.disk_name(name, i, "drbd"): name for name, rec in records.items()
              if rec["template"] == "drbd" for i in range(len(rec["disks"]))}
    for node, state in sorted(drbd_states(ctx, _drbd_nodes(records, replies)).items()):
        if isinstance(state, str):
            rows.append({"instance": "-", "node": node, "action": "drbd", "result": f"skipped: {state}"})
            continue
        for resource in drbd_to_reconnect({r: s for r, s in state.items() if r in owners}):
            try:
                with ctx.store.locked([f"instance/{owners[resource]}"], {"operation": "watcher"},
                                      timeout=ctx.lock_timeout):
                    ctx.rpc.call_one(node, "drbd.adjust", resource)
                result = f"reconnected {resource}"
            except LockTimeout as exc:
                result = f"busy: {exc}"
            rows.append({"instance": owners[resource], "node": node, "action": "drbd", "result": result})
    return rows


def watcher(ctx, lock_timeout=WATCHER_LOCK_TIMEOUT, test=False):
    """Repair what is safe to repair now; rows ``{instance, node, action, result}`` of what it did or skipped.

    An instance locked by a running job for longer than ``lock_timeout`` seconds is reported busy.
    ``test=True``: the plan (DRBD left out), nothing done.
    """
    ctx = dataclasses.replace(ctx, lock_timeout=lock_timeout)
    records, flags, replies = _live(ctx)
    rows = []
    for row in watch_plan(records, flags, replies):
        if test:
            result = f"plan: {row['reason']}"
        elif row["action"] == "restart":
            result = _watch_job(ctx, "watcher-restart", row, "watcher_start")
        elif row["action"] == "remove_stale":
            result = _watch_job(ctx, "watcher-remove-stale", row, "watcher_remove_stale")
        else:
            result = f"skipped: {row['reason']}"
        rows.append({"instance": row["instance"], "node": row["node"], "action": row["action"], "result": result})
    return rows if test else rows + _reconnect_drbd(ctx, records, replies)
