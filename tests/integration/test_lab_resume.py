"""Crashes in the middle of `cluster.evacuate`, then `cluster.resume`: no instance lost, none runs twice.

The module has a lab of its own (its master is killed); the ``no_double_runs``
sampler polls every node's libvirtd every 100 ms for the whole module.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_lab_moves import domains, op, qemu_io, where

from saltext.vmcluster import disks
from saltext.vmcluster.lab import LabError

BIN = Path(sys.executable).parent

pytestmark = pytest.mark.usefixtures("no_double_runs")


@pytest.fixture(scope="module")
def lab(module_lab):
    """This module's lab: the runner, store and sampler fixtures work on it."""
    return module_lab


def add(runner, node, instances, start=True):
    """``instances``: ``{name: (template, disk size)}``, added small on ``node``."""
    for name, (template, size) in instances.items():
        ret = op(runner, "add", name, template=template, nodes=node, memory="64M", disks=size, start=start)
        assert ret.get("state") == "done", ret


def disk_path(lab, node, name, template):
    return Path(disks.file_path(lab.node(node).storage[template], name, 0, "qcow2"))


def start_evacuate(lab, node):
    """``salt-run cluster.evacuate node`` as the operator runs it, in a session of its own."""
    return subprocess.Popen([str(BIN / "salt-run"), "-c", str(lab.dir), "cluster.evacuate", node],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)


def wait_for_job(store, proc, before, ready, timeout=180):
    """The evacuate job (not in ``before``) once ``ready(job, store)``; fails if the runner ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = next((j for i, j in store.jobs().items() if i not in before and j["operation"] == "evacuate"), None)
        if job and ready(job, store):
            return job
        if proc.poll() is not None:
            pytest.fail(f"evacuate ended before the moment to crash: {proc.stdout.read().decode()}")
        time.sleep(0.05)
    pytest.fail(f"no evacuate job reached the moment to crash within {timeout}s")


def kill_runner(proc):
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def assert_resumed(lab, runner, store, job_id, names, evacuated):
    """Resume ``job_id``; each instance then runs once, off ``evacuated``, with its disks where the store says."""
    ret = op(runner, "resume", job_id)
    assert ret.get("state") == "done", ret
    job = store.job(job_id)
    assert job["state"] == "done" and all(s["state"] == "done" for s in job["steps"])
    assert domains(lab, evacuated) == {}
    for name in names:
        record = store.instance(name)
        primary, template = record["primary"], record["template"]
        assert primary != evacuated and where(lab, name) == ([primary], [primary]), (name, record)
        assert disk_path(lab, primary, name, template).is_file()
        if template == "file":
            assert [n.name for n in lab.nodes if disk_path(lab, n.name, name, template).exists()] == [primary]
    running = {}
    for node in lab.nodes:
        for name, up in domains(lab, node.name).items():
            running.setdefault(name, []).extend([node.name] if up else [])
    assert running == {name: [r["primary"]] for name, r in store.instances().items() if r["admin_state"] == "up"}
    assert [r for r in op(runner, "jobs")["data"] if r["state"] != "done"] == []


def test_master_killed_mid_evacuate_is_resumed(lab, runner, store, cleanup, no_double_runs):
    instances = {"rs-f1": ("file", "64M"), "rs-f2": ("file", "256M"),
                 "rs-s1": ("sharedfile", "128M"), "rs-s2": ("sharedfile", "64M")}
    cleanup += list(instances)
    add(runner, "node1", instances)
    before = set(store.jobs())
    proc = start_evacuate(lab, "node1")

    def one_move_done(job, _store):
        states = {s["state"] for s in job["steps"]}
        return "done" in states and states - {"done"}

    job = wait_for_job(store, proc, before, one_move_done)
    kill_runner(proc)  # the master host dies: the runner with it
    lab.kill_master()
    assert not lab.status()["master"]["running"]
    job = store.job(job["id"])
    assert job["state"] == "running" and any(s["state"] != "done" for s in job["steps"]), job

    lab.restart_master()
    with pytest.raises(LabError, match="the master already runs"):
        lab.restart_master()
    rows = {r["job"]: r for r in op(runner, "jobs")["data"]}
    assert rows[job["id"]]["state"] == "interrupted"
    assert_resumed(lab, runner, store, job["id"], instances, "node1")
    assert no_double_runs.doubles == []


def test_runner_killed_while_a_node_migrates_is_resumed(lab, runner, store, cleanup, no_double_runs):
    """The runner dies while a node carries out its migration: resume waits for it, or finds it done."""
    instances = {"rk-f1": ("file", "256M"), "rk-s1": ("sharedfile", "64M")}
    cleanup += list(instances)
    add(runner, "node3", instances, start=False)
    qemu_io(disk_path(lab, "node3", "rk-f1", "file"), "write -P 0x5a 0 200M")  # data to copy: a longer migration
    for name in instances:
        assert op(runner, "start", name)["state"] == "done"
    before = set(store.jobs())
    proc = start_evacuate(lab, "node3")

    def migrating(job, store):
        sub = store.job(f"{job['id']}.rk-f1.0") or {"steps": []}
        running = [s["name"] for s in sub["steps"] if s["state"] == "running"]
        return running == ["migrate_domain"] and len(where(lab, "rk-f1")[1]) == 2  # the target has it too

    job = wait_for_job(store, proc, before, migrating)
    kill_runner(proc)
    client = lab.client()
    try:  # the node goes on migrating without the runner: resume must not migrate beside it
        assert "cluster_vm.migrate" in [j["fun"] for j in client.cmd("node3", "saltutil.running")["node3"]]
    finally:
        client.destroy()
    assert_resumed(lab, runner, store, job["id"], instances, "node3")
    assert no_double_runs.doubles == []
