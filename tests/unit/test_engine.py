"""The journaled engine with steps of its own (the node RPC only where a step calls nodes: Salt's client faked)."""

import os
import threading
import time
from types import SimpleNamespace

import pytest
import salt.cache

from saltext.vmcluster.ops import engine
from saltext.vmcluster.rpc import NodeRPC
from saltext.vmcluster.store import Store

CALLS = []


@engine.step
def _t_record(ctx, value):
    CALLS.append(("record", value))
    return value * 2


@engine.step
def _t_fail_once(ctx, key):
    CALLS.append(("fail_once", key))
    if not ctx.extra.get(key):
        ctx.extra[key] = True
        raise RuntimeError("node2: cluster_vm.start failed: boom")
    return "ok"


@engine.step
def _t_refuse(ctx, why):
    CALLS.append(("refuse", why))
    raise engine.Refused(why)


@engine.step
def _t_slow(ctx, name):
    CALLS.append(("slow", name, threading.current_thread().name))
    time.sleep(0.3)


class NodesClient:
    """Salt's LocalClient.cmd as nodes answer it; ``saltutil.running`` answers come from ``running``, one a look."""

    def __init__(self, running):
        self.running = running
        self.published = []  # (function, metadata)

    def cmd(self, tgt, fun, arg=(), kwarg=None, tgt_type="glob", timeout=None, full_return=False,
            gather_job_timeout=None, metadata=None):
        self.published.append((fun, metadata))
        if fun == "saltutil.running":
            return {node: self.running.pop(0) if self.running else [] for node in tgt}
        return {node: {"ret": "migrated", "retcode": 0} if full_return else "migrated" for node in tgt}


class FakeClientRPC(NodeRPC):
    def __init__(self, client):
        super().__init__({})
        self.fake = client

    @property
    def client(self):
        return self.fake


@pytest.fixture
def ctx(tmp_path):
    CALLS.clear()
    cache = salt.cache.factory({"cache": "localfs", "cachedir": str(tmp_path / "cache")})
    events = []
    return engine.Context(store=Store(cache, tmp_path / "locks"), rpc=FakeClientRPC(NodesClient(running=[])),
                          cfg=SimpleNamespace(nodes={"node1": None}), fire=lambda tag, data: events.append((tag, data)),
                          extra={"events": events})


def test_a_job_is_journaled_and_run_in_order(ctx):
    job = engine.new_job("add", "web1", [("_t_record", {"value": 1}), ("_t_record", {"value": 2})], ["instance/web1"])
    assert engine.plan(job) == ["_t_record(value=1)", "_t_record(value=2)"]
    engine.run(ctx, job)
    stored = ctx.store.job(job["id"])
    assert stored["state"] == "done"
    assert [s["result"] for s in stored["steps"]] == [2, 4]
    assert CALLS == [("record", 1), ("record", 2)]
    tags = [tag for tag, _ in ctx.extra["events"]]
    assert tags == ["op/add/start", "op/add/step", "op/add/step", "op/add/done"]


def test_a_failed_job_names_the_resume_command_and_resumes_from_the_failed_step(ctx):
    job = engine.new_job("start", "web1", [("_t_record", {"value": 1}), ("_t_fail_once", {"key": "k"}),
                                           ("_t_record", {"value": 3})], ["instance/web1"])
    with pytest.raises(engine.OpError, match=rf"salt-run cluster.resume {job['id']}") as err:
        engine.run(ctx, job)
    assert "at step _t_fail_once: node2: cluster_vm.start failed: boom" in str(err.value)
    stored = ctx.store.job(job["id"])
    assert stored["state"] == "failed" and [s["state"] for s in stored["steps"]] == ["done", "failed", "pending"]
    engine.resume(ctx, job["id"])
    assert ctx.store.job(job["id"])["state"] == "done"
    # the done step was not repeated; the failed one was
    assert CALLS == [("record", 1), ("fail_once", "k"), ("fail_once", "k"), ("record", 3)]
    assert ctx.rpc.client.published == [("saltutil.running", None)]  # calls of the failed run still under way?


def test_resume_of_an_interrupted_job_skips_done_steps(ctx):
    job = engine.new_job("add", "web1", [("_t_record", {"value": 1}), ("_t_record", {"value": 5})], [])
    job["state"] = "running"
    job["owner"] = {"pid": 999999999, "host": "elsewhere"}
    job["steps"][0]["state"] = "done"
    ctx.store.put_job(job)
    engine.resume(ctx, job["id"])
    assert CALLS == [("record", 5)]


def test_resume_refuses_unknown_and_live_jobs(ctx):
    with pytest.raises(engine.OpError, match="job 'nope' not found; list jobs with: salt-run cluster.jobs"):
        engine.resume(ctx, "nope")
    job = engine.new_job("add", "web1", [("_t_record", {"value": 1})], [])
    job["state"] = "running"
    job["owner"] = {"pid": os.getppid(), "host": os.uname().nodename}  # a live process that is not us
    ctx.store.put_job(job)
    with pytest.raises(engine.OpError, match=f"still running in pid {os.getppid()}"):
        engine.resume(ctx, job["id"])
    assert CALLS == []


def test_steps_of_one_set_run_in_parallel(ctx):
    steps = [("_t_slow", {"name": f"vm{i}"}, 0) for i in range(4)] + [("_t_record", {"value": 0}, 1)]
    job = engine.new_job("evacuate", "node1", steps, [])
    started = time.monotonic()
    engine.run(ctx, job)
    assert time.monotonic() - started < 1.0  # 4 × 0.3 s in sequence would be 1.2 s
    assert len({c[2] for c in CALLS if c[0] == "slow"}) > 1
    assert CALLS[-1] == ("record", 0)  # the next set waited for the whole first set


def test_a_failing_event_sink_fails_the_step_not_the_journal(ctx):
    def broken(tag, data):
        if tag.endswith("/step"):
            raise RuntimeError("event bus gone")

    ctx.fire = broken
    job = engine.new_job("add", "web1", [("_t_record", {"value": 1})], [])
    with pytest.raises(engine.OpError, match="failed at step _t_record: event bus gone"):
        engine.run(ctx, job)
    assert ctx.store.job(job["id"])["steps"][0]["state"] == "failed"


def test_parallelism_is_bounded_by_the_context(ctx):
    ctx.max_parallel = 1
    job = engine.new_job("evacuate", "node1", [("_t_slow", {"name": f"vm{i}"}, 0) for i in range(3)], [])
    started = time.monotonic()
    engine.run(ctx, job)
    assert time.monotonic() - started >= 0.9  # one at a time


@engine.step
def _t_migrate(ctx, node):
    return ctx.rpc.call_one(node, "cluster_vm.migrate", "web1")


def test_an_interrupted_step_waits_for_the_calls_it_left_on_the_nodes(ctx, monkeypatch):
    monkeypatch.setattr(engine, "NODE_CALLS_POLL", 0.01)
    job = engine.new_job("migrate", "web1", [("_t_migrate", {"node": "node1"})], [])
    tag = f"{job['id']}/0"
    ours = {"fun": "cluster_vm.migrate", "metadata": {"vmcluster_step": tag}}
    other = {"fun": "cluster_vm.migrate", "metadata": {"vmcluster_step": "another-job/0"}}
    client = ctx.rpc.client
    client.running += [[ours, other], [ours], [other, {"fun": "test.ping"}]]
    job["state"], job["owner"] = "running", {"pid": 999999999, "host": "elsewhere"}
    job["steps"][0]["state"] = "running"  # the runner died while node1 migrated
    ctx.store.put_job(job)
    engine.resume(ctx, job["id"])
    # asked until node1 no longer ran the step's call; the repeated call carries the step's tag again
    assert client.published == [("saltutil.running", None)] * 3 + [("cluster_vm.migrate", {"vmcluster_step": tag})]
    assert ctx.store.job(job["id"])["steps"][0]["result"] == "migrated"
    waits = [data["message"] for name, data in ctx.extra["events"] if name == "op/migrate/wait"]
    assert waits == ["migrate web1: step 1 waits for the calls its earlier run left running: node1 cluster_vm.migrate"]


def test_a_first_run_asks_no_node_about_earlier_calls(ctx):
    job = engine.run(ctx, engine.new_job("migrate", "web1", [("_t_migrate", {"node": "node1"})], []))
    assert ctx.rpc.client.published == [("cluster_vm.migrate", {"vmcluster_step": f"{job['id']}/0"})]


def test_a_refusal_in_the_first_step_leaves_no_job_and_a_later_one_fails_it(ctx):
    job = engine.new_job("failover", "db1", [("_t_refuse", {"why": "node1 is silent"}), ("_t_record", {"value": 1})],
                         ["instance/db1"])
    with pytest.raises(engine.OpError, match="^node1 is silent$"):
        engine.run(ctx, job)
    assert ctx.store.jobs() == {} and ("record", 1) not in CALLS
    job = engine.new_job("failover", "db2", [("_t_record", {"value": 1}), ("_t_refuse", {"why": "node2 is silent"})],
                         ["instance/db2"])
    with pytest.raises(engine.OpError, match=f"failed at step _t_refuse: node2 is silent. .*resume {job['id']}$"):
        engine.run(ctx, job)
    assert ctx.store.job(job["id"])["state"] == "failed"  # a step was done: the journal keeps it
