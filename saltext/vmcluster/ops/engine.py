"""Journaled operations.

An operation is a job: a list of steps written to the store before anything
runs and ticked off as each completes, under the locks of every instance and
node it touches. Steps are idempotent (each checks before it acts), so a job
cut short by a crash of the master or the runner is finished by running its
first unfinished step again: ``cluster.resume JOB``. A node goes on with its
call when its master dies, so a step cut short (or failed) is repeated only
once no node runs a call of its earlier run any more (each node call carries its step in its
Salt job metadata). Steps that share a ``set`` number touch disjoint instances
and nodes and run in parallel.
"""

import itertools
import os
import secrets
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from saltext.vmcluster.rpc import calls_of_step
from saltext.vmcluster.store import DEFAULT_LOCK_TIMEOUT

STEPS = {}
DEFAULT_MAX_PARALLEL = 8
NODE_CALLS_POLL = 1.0  # seconds between looks at the calls an interrupted step left on the nodes


class OpError(Exception):
    """An operation was refused or failed; the message says why and what to do next."""


class Refused(OpError):
    """A step found, before changing anything, that the operation must not go on (e.g. the node that
    may still run the instance is silent): raised from the first step of a job, the job is dropped
    from the journal, as if the operation had been refused before it was written."""


def step(func):
    """Register ``func(ctx, **args)`` as a step named after it."""
    STEPS[func.__name__] = func
    return func


@dataclass
class Context:
    """What steps work with: the store, the node RPC, the config and an event sink."""

    store: object
    rpc: object
    cfg: object
    fire: object = None  # fire(tag_suffix, data)
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT
    max_parallel: int = DEFAULT_MAX_PARALLEL  # steps of one set running at once
    extra: dict = field(default_factory=dict)

    def event(self, tag, data):
        if self.fire:
            self.fire(tag, data)


def new_job(operation, target, steps, locks):
    """A job record: ``steps`` is a list of ``(name, args)`` or ``(name, args, set)``."""
    job_id = time.strftime("%Y%m%d%H%M%S") + "-" + secrets.token_hex(3)
    return {
        "id": job_id,
        "operation": operation,
        "target": target,
        "locks": sorted(set(locks)),
        "state": "pending",
        "created": time.time(),
        "updated": time.time(),
        "owner": None,
        "error": None,
        "steps": [
            {"name": s[0], "args": s[1], "set": s[2] if len(s) > 2 else i, "state": "pending",
             "result": None, "error": None}
            for i, s in enumerate(steps)
        ],
    }


def _arg_text(value):
    if isinstance(value, dict):  # a whole record: its name is what the operator needs
        return value.get("name", "{...}")
    return str(value)


def describe(entry):
    """One step as the operator reads it: ``create_disk(index=0, instance=web1, node=node2 ...)``."""
    return f"{entry['name']}({', '.join(f'{k}={_arg_text(v)}' for k, v in sorted(entry['args'].items()))})"


def plan(job):
    """The job's steps as the operator reads them in a dry run."""
    return [describe(s) for s in job["steps"]]


class _Journal:
    """Persists a job after every change; steps running in parallel share it."""

    def __init__(self, ctx, job):
        self.ctx = ctx
        self.job = job
        self.lock = threading.Lock()

    def update(self, target, **changes):
        with self.lock:
            target.update(changes)
            self.job["updated"] = time.time()
            self.ctx.store.put_job(self.job)


def _await_node_calls(ctx, job, index, tag):
    """Wait until no node runs a call that the earlier run of step ``index`` made.

    A node carries out its call without its master (a migration, a disk copy):
    repeating the step beside it would start the same work twice.
    """
    nodes = sorted(node for node in ctx.cfg.nodes if not ctx.store.node_flags(node)["offline"])
    told = False
    while under_way := ctx.rpc.calls_under_way(nodes, tag, timeout=5):
        if not told:
            calls = ", ".join(f"{node} {' '.join(funs)}" for node, funs in sorted(under_way.items()))
            ctx.event(f"op/{job['operation']}/wait", {
                "job": job["id"], "step": index + 1,
                "message": f"{job['operation']} {job['target']}: step {index + 1} waits for the calls its "
                           f"earlier run left running: {calls}"})
            told = True
        time.sleep(NODE_CALLS_POLL)


def _run_step(journal, index):
    ctx, job = journal.ctx, journal.job
    entry = job["steps"][index]
    tag = f"{job['id']}/{index}"  # the step's node calls carry it
    if entry["state"] in ("running", "failed"):  # interrupted (a dead runner), or failed (e.g. its master died)
        _await_node_calls(ctx, job, index, tag)
    journal.update(entry, state="running", started=time.time())
    try:
        ctx.event(f"op/{job['operation']}/step", {
            "job": job["id"], "step": index + 1, "of": len(job["steps"]), "name": entry["name"],
            "message": f"{job['operation']} {job['target']}: step {index + 1}/{len(job['steps'])} {describe(entry)}",
        })
        with calls_of_step(tag):
            result = STEPS[entry["name"]](ctx, **entry["args"])
    except Exception as exc:  # pylint: disable=broad-except
        journal.update(entry, state="failed", error=str(exc))
        raise
    journal.update(entry, state="done", result=result, finished=time.time())


def execute_or_plan(journal):
    steps = journal.job["steps"]
    for _set, group in itertools.groupby(range(len(steps)), key=lambda i: steps[i]["set"]):
        todo = [i for i in group if steps[i]["state"] != "done"]
        if len(todo) == 1:
            _run_step(journal, todo[0])
        elif todo:
            with ThreadPoolExecutor(max_workers=min(journal.ctx.max_parallel, len(todo))) as pool:
                failures = [f.exception() for f in [pool.submit(_run_step, journal, i) for i in todo]]
            failures = [f for f in failures if f]
            if failures:
                raise failures[0]


def _failed(journal, exc):
    """Mark the job failed and raise the OpError that names the step and the resume command."""
    ctx, job = journal.ctx, journal.job
    failed = next((s["name"] for s in job["steps"] if s["state"] == "failed"), "(between steps)")
    message = (f"{job['operation']} {job['target']} failed at step {failed}: {exc}. "
               f"Fix the cause, then: salt-run cluster.resume {job['id']}")
    journal.update(job, state="failed", error=message)
    ctx.event(f"op/{job['operation']}/failed", {"job": job["id"], "error": message, "message": message})
    raise OpError(message) from exc


def run(ctx, job):
    """Run (or continue) ``job`` under its locks; return it done, or raise OpError naming the resume command."""
    journal = _Journal(ctx, job)
    journal.update(job, state="pending")
    holder = {"job": job["id"], "operation": job["operation"]}
    with ctx.store.locked(job["locks"], holder, timeout=ctx.lock_timeout):
        journal.update(job, state="running", owner={"pid": os.getpid(), "host": os.uname().nodename}, error=None)
        ctx.event(f"op/{job['operation']}/start", {
            "job": job["id"], "target": job["target"],
            "message": f"{job['operation']} {job['target']}: job {job['id']}, {len(job['steps'])} steps",
        })
        try:
            execute_or_plan(journal)
        except Refused as exc:
            if any(s["state"] == "done" for s in job["steps"]):
                _failed(journal, exc)
            ctx.store.delete_job(job["id"])  # nothing happened: no trace in the journal
            raise OpError(str(exc)) from exc
        except Exception as exc:  # pylint: disable=broad-except
            _failed(journal, exc)
        journal.update(job, state="done")
        ctx.event(f"op/{job['operation']}/done", {
            "job": job["id"], "message": f"{job['operation']} {job['target']}: done"})
    return job


def owner_alive(job):
    """True if the process that runs ``job`` is alive (and is not us)."""
    owner = job.get("owner") or {}
    if owner.get("host") != os.uname().nodename or not owner.get("pid"):
        return False
    try:
        os.kill(owner["pid"], 0)
    except ProcessLookupError:
        return False
    return owner["pid"] != os.getpid()


def resume(ctx, job_id):
    """Finish an interrupted or failed job from its first unfinished step."""
    job = ctx.store.job(job_id)
    if not job:
        raise OpError(f"job {job_id!r} not found; list jobs with: salt-run cluster.jobs")
    if job["state"] == "done":
        return job
    if job["state"] == "running" and owner_alive(job):
        raise OpError(f"job {job_id} is still running in pid {job['owner']['pid']}; wait for it")
    return run(ctx, job)
