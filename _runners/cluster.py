"""
The ``cluster`` runner: operator commands for a vmcluster, run on the salt-master.

The cluster is declared in pillar under ``cluster:`` (see ``pillar/cluster.sls``);
live figures come from each node's ``cluster_node.resources``.
"""

import functools
import logging
import threading

try:
    from saltext.vmcluster import config, views
    from saltext.vmcluster.names import ValidationError
    from saltext.vmcluster.ops import engine
    from saltext.vmcluster.ops import changes as change_ops
    from saltext.vmcluster.ops import health as health_ops
    from saltext.vmcluster.ops import instances as instance_ops
    from saltext.vmcluster.ops import moves as move_ops
    from saltext.vmcluster.ops import planned as planned_ops
    from saltext.vmcluster.rpc import NodeError, NodeRPC
    from saltext.vmcluster.store import DEFAULT_LOCK_TIMEOUT, LockTimeout, Store

    IMPORT_ERROR = None
except ImportError as exc:
    IMPORT_ERROR = exc

log = logging.getLogger(__name__)

__virtualname__ = "cluster"
DEFAULT_TIMEOUT = 5


def __virtual__():
    if IMPORT_ERROR:
        return False, f"cluster runner: install saltext-vmcluster on the master ({IMPORT_ERROR})"
    return __virtualname__


class _Refused(Exception):
    """Bad input or configuration: reported to the operator, nothing changed."""


def _fail(message):
    """The operator's error: a message, a non-zero exit code of salt-run, nothing changed."""
    __context__["retcode"] = 1
    return {"error": str(message), "retcode": 1}


def _config():
    try:
        return config.load(__salt__["pillar.show_pillar"]())
    except ValidationError as exc:
        raise _Refused(f"invalid cluster pillar: {exc}") from exc


def _fire(send, tag, data):
    """Progress for the operator (salt-run prints it) and an event on the master bus (``send``: event.send).

    Salt's loader dunders and the runner's own event channel belong to the runner's
    thread: steps running in parallel threads only send to the bus, through
    ``send`` looked up in that thread.
    """
    jid_event = globals().get("__jid_event__")
    if jid_event is not None and threading.current_thread() is threading.main_thread():
        jid_event.fire_event({"message": data.get("message", tag), "outputter": "cluster_progress"}, "progress")
    send(f"cluster/{tag}", data)


def _context():
    return engine.Context(store=Store.from_opts(__opts__), rpc=NodeRPC(__opts__), cfg=_config(),
                          fire=functools.partial(_fire, __salt__["event.send"]),
                          lock_timeout=float(__opts__.get("vmcluster_lock_timeout", DEFAULT_LOCK_TIMEOUT)),
                          max_parallel=int(__opts__.get("vmcluster_max_parallel", engine.DEFAULT_MAX_PARALLEL)))


def _operate(func, *args, **kwargs):
    """Run an operation; the operator's mistakes and failures come back as clear errors."""
    try:
        return func(_context(), *args, **kwargs)
    except (_Refused, ValidationError, engine.OpError, LockTimeout, NodeError) as exc:
        return _fail(exc)


def _selected_nodes(cfg, patterns):
    chosen = views.match_names(cfg.nodes, patterns)
    if not chosen:
        raise _Refused(f"no node matches {patterns!r}; nodes: {', '.join(sorted(cfg.nodes))}")
    return chosen


def _live_rows(nodes, timeout):
    replies = NodeRPC(__opts__).call(nodes, "cluster_node.resources", timeout=timeout)
    return [views.node_row(name, replies.get(name)) for name in nodes], replies


def nodes(match="*", timeout=DEFAULT_TIMEOUT):
    """
    List the cluster's nodes with live figures, like ``gnt-node list``.

    Columns: Node, DTotal/DFree (node-local disk), MTotal/MNode/MFree (memory:
    total, used by the node OS, free for instances), Pinst/Sinst (primary and
    secondary instances), State (``down`` when the node did not answer within
    ``timeout`` seconds). ``match`` takes names, comma lists and wildcards.

    CLI Example:

    .. code-block:: bash

        salt-run cluster.nodes
        salt-run cluster.nodes 'node[12]'
        salt-run cluster.nodes --out=json
    """
    try:
        rows, _ = _live_rows(_selected_nodes(_config(), match), timeout)
    except _Refused as exc:
        return _fail(exc)
    return {"outputter": "cluster_table", "data": rows}


def info(timeout=DEFAULT_TIMEOUT):
    """
    Summarise the cluster: nodes up and down, memory and disk totals and free, instances.

    CLI Example:

    .. code-block:: bash

        salt-run cluster.info
    """
    try:
        cfg = _config()
    except _Refused as exc:
        return _fail(exc)
    rows, replies = _live_rows(sorted(cfg.nodes), timeout)
    return views.cluster_summary(cfg.name, rows, replies)


def instances(match="*"):
    """
    List instances like ``gnt-instance list``: name, template, primary and
    secondary node, admin state, memory, vCPUs and disk. ``match`` takes names,
    comma lists and wildcards.

    CLI Example:

    .. code-block:: bash

        salt-run cluster.instances
        salt-run cluster.instances 'web*' --out=json
    """
    try:
        records = Store.from_opts(__opts__).instances()
    except Exception as exc:  # pylint: disable=broad-except
        return _fail(exc)
    rows = [views.instance_row(records[name]) for name in views.match_names(records, match)]
    return {"outputter": "cluster_table", "data": rows}


def add(name, memory="512M", vcpus=1, disks="10G", template=None, nodes=None, start=True, tags=None, nics=None,
        image=None, test=False):
    """
    Add an instance: the planner chooses its node unless ``nodes`` is given
    (``node1``; ``node1:node2`` for drbd), then disks are created, the domain is
    defined and started (``start=False``: left admin-down). ``disks`` is a size
    or a list of sizes; ``tags`` a list or comma list of names.

    ``nics``: without it, one NIC on the primary's bridge (pillar
    ``cluster:nodes:NODE:bridge``, else ``cluster:defaults:bridge``; no NIC when
    neither is set); ``nics=none``: no NIC; ``nics=br0`` or ``nics=br0,br1``: NICs
    on these bridges; or a list of ``{bridge, mac, model}`` (quote MACs in YAML).
    MACs not given are generated (52:54:00:xx:xx:xx, unique in the cluster). Every
    node that runs the instance must have its bridges: add, migrate, failover and
    move check it.

    ``image``: the OS image (``*.qcow2``, ``*.raw``/``*.img``, the same path on
    every node) that disk 0 starts with; default ``cluster:defaults:image``,
    ``image=none`` for blank disks. Disk 0 keeps its size; a larger image is refused.

    ``test=True`` prints the plan and changes nothing.

    CLI Example:

    .. code-block:: bash

        salt-run cluster.add web1 memory=1G vcpus=2 disks=20G template=file
        salt-run cluster.add db1 memory=4G disks='[20G, 100G]' template=sharedfile nodes=node2 tags=db,prod
        salt-run cluster.add web2 memory=1G test=True
        salt-run cluster.add web3 memory=1G disks=20G image=/var/lib/vmcluster/images/debian-12.qcow2 nics=br0,br1
        salt-run cluster.add web4 memory=1G nics='[{bridge: br0, mac: "52:54:00:12:34:56"}]' image=none
    """
    return _operate(instance_ops.add, name, memory, vcpus=vcpus, disks=disks, template=template, nodes=nodes,
                    start=start, tags=tags.split(",") if isinstance(tags, str) else tags or (), nics=nics,
                    image=image, test=test)


def remove(name, test=False):
    """
    Remove an instance: power it off, undefine it, delete its disks on every node.

    CLI Example:

    .. code-block:: bash

        salt-run cluster.remove web1
        salt-run cluster.remove 'test*'
    """
    return _each(instance_ops.remove, name, test=test)


def start(name, test=False):
    """
    Start an instance on its primary node and mark it admin-up.

    CLI Example:

    .. code-block:: bash

        salt-run cluster.start web1
        salt-run cluster.start 'web*,db1'
    """
    return _each(instance_ops.start, name, test=test)


def stop(name, timeout=60, force=False, test=False):
    """
    Mark an instance admin-down and shut it down (ACPI, power off after
    ``timeout`` seconds; ``force=True`` powers off at once). The watcher never
    restarts an instance stopped this way.

    CLI Example:

    .. code-block:: bash

        salt-run cluster.stop web1
        salt-run cluster.stop web1 force=True
        salt-run cluster.stop 'web*'
    """
    return _each(instance_ops.stop, name, timeout=timeout, force=force, test=test)


def reboot(name, timeout=60, test=False):
    """
    Reboot an instance: shut it down (power off after ``timeout``) and start it again.

    CLI Example:

    .. code-block:: bash

        salt-run cluster.reboot web1
        salt-run cluster.reboot 'web[12]'
    """
    return _each(instance_ops.reboot, name, timeout=timeout, test=test)


def jobs(state=None):
    """
    List the operations journal: job id, operation, target, state, steps done.
    A job whose runner died shows as ``interrupted``: finish it with ``cluster.resume``.

    CLI Example:

    .. code-block:: bash

        salt-run cluster.jobs
        salt-run cluster.jobs state=failed
    """
    rows = [views.job_row(job, engine.owner_alive) for job in Store.from_opts(__opts__).jobs().values()]
    rows = [row for row in rows if state in (None, row["state"])]
    return {"outputter": "cluster_table", "data": sorted(rows, key=lambda r: r["job"])}


def resume(job):
    """
    Finish an interrupted or failed job from its first unfinished step.

    CLI Example:

    .. code-block:: bash

        salt-run cluster.resume 20261121063000-a1b2c3
    """
    return _operate(lambda ctx: instance_ops.summary(engine.resume(ctx, job)))


def node_modify(node, offline=None, drained=None, online=None, force=False, test=False):
    """
    Set a node's flags, like ``gnt-node modify -O/-D``: ``offline=True`` (the
    cluster leaves it alone; refused while it still runs instances unless
    ``force=True``: evacuate it first), ``drained=True`` (no new instances), or
    ``online=True`` (clears both). Neither offline nor drained nodes are ever
    chosen for new instances.

    CLI Example:

    .. code-block:: bash

        salt-run cluster.node_modify node3 drained=True
        salt-run cluster.node_modify node3 offline=True
        salt-run cluster.node_modify node3 online=True
        salt-run cluster.node_modify node3 offline=True test=True
    """
    return _operate(change_ops.node_modify, node, offline=offline, drained=drained, online=online, force=force,
                    test=test)


def verify():
    """
    Compare pillar, store and nodes, like ``gnt-cluster verify``: nodes down,
    missing domains (admin-up but not running on the primary), stale and
    unknown domains, orphan disks, DRBD not connected or not in sync (skipped
    where the kernel has no DRBD module), N+1 failures, pending memory/vCPU
    changes, declared instances (pillar ``cluster:instances``) missing or
    different in the store, and — once any is declared — undeclared ones.
    Every finding has a severity and the command that fixes it; exit code 1
    when there are errors.

    CLI Example:

    .. code-block:: bash

        salt-run cluster.verify
        salt-run cluster.verify --out=json
    """
    rows = _operate(health_ops.verify)
    if isinstance(rows, dict):  # the operator's error
        return rows
    retcode = 1 if any(row["severity"] == "error" for row in rows) else 0
    __context__["retcode"] = retcode
    return {"outputter": "cluster_table", "data": rows, "retcode": retcode}


def watcher(lock_timeout=1, test=False):
    """
    Repair what is safe, like ``ganeti-watcher``: restart admin-up instances
    that do not run on their primary (journaled), undefine stopped stale copies,
    reconnect StandAlone DRBD resources. Never starts an instance its operator
    stopped, never acts for an instance whose primary is down or offline
    (that is failover's job), and reports "busy" for instances a running job
    holds longer than ``lock_timeout`` seconds. ``test=True`` prints the plan.

    CLI Example:

    .. code-block:: bash

        salt-run cluster.watcher
        salt-run cluster.watcher test=True
    """
    rows = _operate(health_ops.watcher, lock_timeout=float(lock_timeout), test=test)
    return rows if isinstance(rows, dict) else {"outputter": "cluster_table", "data": rows}


def modify(name, memory=None, vcpus=None, add_disk=None, remove_disk=None, test=False):
    """
    Change an instance's memory and/or vCPUs (record and domain definition),
    checked first against its nodes' free memory and N+1, or add a disk
    (``add_disk=SIZE``: a new last disk, created now; drbd: mirrored and synced)
    or remove one (``remove_disk=N``: the last disk of a stopped instance, its
    data deleted), like ``gnt-instance modify --disk add:size=…/N:remove``.
    A running instance gets the changes at its next start (``cluster.reboot``).

    CLI Example:

    .. code-block:: bash

        salt-run cluster.modify web1 memory=2G
        salt-run cluster.modify web1 memory=1G vcpus=2 test=True
        salt-run cluster.modify web1 add_disk=20G
        salt-run cluster.modify web1 remove_disk=1
    """
    return _operate(change_ops.modify, name, memory=memory, vcpus=vcpus, add_disk=add_disk, remove_disk=remove_disk,
                    test=test)


def grow_disk(name, disk, amount=None, size=None, test=False):
    """
    Grow disk number ``disk`` of an instance by ``amount`` or to ``size``
    (never shrinks), also while it runs; drbd disks grow on both nodes.

    CLI Example:

    .. code-block:: bash

        salt-run cluster.grow_disk web1 0 amount=10G
        salt-run cluster.grow_disk web1 1 size=100G test=True
    """
    return _operate(change_ops.grow_disk, name, disk, amount=amount, size=size, test=test)


def _each(func, match, **kwargs):
    """Run ``func`` on every instance ``match`` names (names, comma lists, wildcards), one job each."""
    if not any(char in str(match) for char in "*?[,"):
        return _operate(func, match, **kwargs)
    chosen = views.match_names(Store.from_opts(__opts__).instances(), match)
    if not chosen:
        return _fail(f"no instance matches {match!r}; list them with: salt-run cluster.instances")
    return {name: _operate(func, name, **kwargs) for name in chosen}


def migrate(name, target=None, test=False):
    """
    Live-migrate running instances (names, comma lists, wildcards; one job each)
    to ``target`` — by default the planner's best other node, for drbd the
    secondary. ``file``/``plain`` disks are copied to disks of exactly the same
    size on the target and removed from the source; ``sharedfile`` disks stay;
    drbd goes through dual-primary. The instance keeps running throughout.
    ``test=True`` prints the plan and changes nothing.

    CLI Example:

    .. code-block:: bash

        salt-run cluster.migrate web1
        salt-run cluster.migrate web1 target=node3
        salt-run cluster.migrate 'web*' test=True
    """
    return _each(move_ops.migrate, name, target=target, test=test)


def failover(name, target=None, ignore_consistency=False, shutdown_timeout=60, test=False):
    """
    Fail instances over (cold): stop them on their primary (power off after
    ``shutdown_timeout`` seconds), then start them on the secondary (drbd) or on
    ``target`` (sharedfile; default: the planner's best other node). A primary
    that does not answer may still run the instance: the failover is refused
    until you have made sure that node is down and say so with
    ``ignore_consistency=True``. ``file``/``plain`` instances cannot fail over
    (their data is on the primary): use ``cluster.move``.

    CLI Example:

    .. code-block:: bash

        salt-run cluster.failover db1
        salt-run cluster.failover db1 target=node3 shutdown_timeout=0
        salt-run cluster.failover 'db*' ignore_consistency=True   # after powering the dead node off
    """
    return _each(move_ops.failover, name, target=target, ignore_consistency=ignore_consistency,
                 shutdown_timeout=shutdown_timeout, test=test)


def move(name, target=None, shutdown_timeout=60, test=False):
    """
    Move ``file``/``plain`` instances to ``target`` (default: the planner's best
    other node) by copying their disks while they are stopped (shut down, power
    off after ``shutdown_timeout`` seconds); an instance that was up is started
    again on the target. Use ``cluster.migrate`` to move one without stopping it.

    CLI Example:

    .. code-block:: bash

        salt-run cluster.move web1 target=node2
        salt-run cluster.move 'web*' target=node3 test=True
    """
    return _each(move_ops.move, name, target=target, shutdown_timeout=shutdown_timeout, test=test)


def balance(file=None, max_steps=-1, min_gain=0.01, copy_storage=True, execute=False, test=False):
    """
    Balance the cluster like ``hbal``: print the planner's moves, the initial and
    final cluster score, the job sets (moves on disjoint nodes, run in parallel)
    and the ``salt-run`` commands they stand for (like ``hbal -C``). Nothing
    changes unless ``execute=True``: then the moves run as one job, a job set at
    a time (``test=True`` with it prints that job's plan).

    file
        Plan for a Ganeti htools data file instead of the live cluster (plan only).
    max_steps
        At most this many moves (``-1``: no limit).
    min_gain
        Stop when a move gains less than this (hbal's ``--min-gain``).
    copy_storage
        Also move ``file``/``plain`` instances (live migration copying their disks).

    CLI Example:

    .. code-block:: bash

        salt-run cluster.balance
        salt-run cluster.balance max_steps=5 copy_storage=False
        salt-run cluster.balance file=/srv/ganeti/cluster.data
        salt-run cluster.balance execute=True test=True
        salt-run cluster.balance execute=True
    """
    return _operate(planned_ops.balance, file=file, max_steps=max_steps, min_gain=min_gain,
                    copy_storage=copy_storage, execute=execute, test=test)


def capacity(spec=None, tiered=False, file=None):
    """
    How many more instances of ``spec`` fit, like ``hspace`` (default spec: the
    instance policy's standard one), and the resource that runs out first.
    ``tiered=True`` shrinks the spec as resources run out and counts each tier.
    ``file``: a Ganeti htools data file instead of the live cluster. Changes nothing.

    CLI Example:

    .. code-block:: bash

        salt-run cluster.capacity
        salt-run cluster.capacity spec=mem=1G,disk=10G,vcpus=1,template=file
        salt-run cluster.capacity tiered=True file=/srv/ganeti/cluster.data
    """
    return _operate(planned_ops.capacity, spec=spec, tiered=tiered, file=file)


def allocate(spec, count=1, file=None):
    """
    Dry run of an allocation, like ``hail``: where ``count`` instances of ``spec``
    would go (each seeing the previous ones), or why they do not fit.
    ``spec``: ``mem=SIZE,disk=SIZE,vcpus=N[,template=T][,tags=a+b][,name=N]``.
    ``file``: a Ganeti htools data file instead of the live cluster. Changes nothing.

    CLI Example:

    .. code-block:: bash

        salt-run cluster.allocate spec=mem=1G,disk=10G,vcpus=1,template=file
        salt-run cluster.allocate spec=mem=4G,disk=50G,vcpus=2,template=drbd count=3
        salt-run cluster.allocate spec=mem=1G,disk=10G,vcpus=1 file=/srv/ganeti/cluster.data
    """
    return _operate(planned_ops.allocate, spec, count=count, file=file)


def evacuate(node, mode="all", test=False):
    """
    Move every instance off ``node`` (``gnt-node evacuate``), as the planner
    decides, in one job whose moves run in parallel job sets: primaries migrate
    live (``file``/``plain`` copy their disks), or fail over when the node is down
    or offline (``sharedfile``, ``drbd``); drbd secondaries get a new node.
    ``mode``: ``all``, ``primary`` or ``secondary``. Instances that cannot move are
    listed with the reason; the others move. ``test=True`` prints the plan.

    CLI Example:

    .. code-block:: bash

        salt-run cluster.evacuate node2 test=True
        salt-run cluster.evacuate node2
        salt-run cluster.evacuate node3 mode=secondary
    """
    return _operate(planned_ops.evacuate, node, mode=mode, test=test)


def replace_disks(name, new_secondary=None, test=False):
    """
    Give drbd instances a new secondary (``gnt-instance replace-disks -n``):
    the new mirror is built and synced before the old one is dropped, so
    redundancy never drops (needs DRBD 9 on the nodes: a third peer while it
    syncs). ``new_secondary`` defaults to the planner's choice. ``name`` takes
    names, comma lists and wildcards; ``test=True`` prints the plan.

    CLI Example:

    .. code-block:: bash

        salt-run cluster.replace_disks db1 new_secondary=node3
        salt-run cluster.replace_disks 'db*' test=True
    """
    return _each(planned_ops.replace_disks, name, new_secondary=new_secondary, test=test)
