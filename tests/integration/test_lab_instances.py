"""Instance life cycle through `salt-run cluster.*` on the lab: real master, minions, libvirtd, QEMU."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import libvirt
import pytest


BIN = Path(sys.executable).parent
SMALL = {"memory": "64M", "disks": "256M"}


def running_on(lab):
    """``{domain: [nodes where it runs]}`` straight from every node's libvirtd."""
    seen = {}
    for node in lab.nodes:
        if not node.running():
            continue
        conn = libvirt.open(node.libvirt_uri)
        try:
            for dom in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE):
                seen.setdefault(dom.name(), []).append(node.name)
        finally:
            conn.close()
    return seen


def defined_on(lab, name):
    nodes = []
    for node in lab.nodes:
        conn = libvirt.open(node.libvirt_uri)
        try:
            if name in [d.name() for d in conn.listAllDomains()]:
                nodes.append(node.name)
        finally:
            conn.close()
    return nodes


def op(runner, fun, *args, **kwargs):
    return runner.cmd(f"cluster.{fun}", list(args), kwarg=kwargs, print_event=False)


def defined_count(runner, node):
    """The ``pinst`` column (instances defined there) of ``node`` in the ``cluster.nodes`` table."""
    return op(runner, "nodes", node)["data"][0]["pinst"]


@pytest.mark.parametrize("template", ["file", "sharedfile"])
def test_life_cycle(lab, runner, store, cleanup, template):
    name = f"life-{template}"
    cleanup.append(name)
    plan = op(runner, "add", name, template=template, test=True, **SMALL)
    assert plan["job"] is None and plan["plan"][0].startswith("record_instance")
    assert store.instance(name) is None and defined_on(lab, name) == []  # the dry run changed nothing

    done = op(runner, "add", name, template=template, **SMALL)
    assert done["state"] == "done", done
    record = store.instance(name)
    primary = record["primary"]
    assert record["admin_state"] == "up" and running_on(lab)[name] == [primary]
    disk = Path(lab.node(primary).storage[template]) / name / "disk0.qcow2"
    assert disk.is_file()

    rows = op(runner, "instances", "life-*")["data"]
    assert [(r["instance"], r["primary"], r["state"], r["template"]) for r in rows] == [
        (name, primary, "up", template)]
    pinst = defined_count(runner, primary)

    stopped = op(runner, "stop", "life-*", timeout=2)  # a wildcard: one job per matching instance
    assert list(stopped) == [name] and stopped[name]["state"] == "done"
    assert store.instance(name)["admin_state"] == "down" and name not in running_on(lab)
    assert op(runner, "start", name)["state"] == "done"
    assert running_on(lab)[name] == [primary]
    assert op(runner, "reboot", name, timeout=1)["state"] == "done"
    assert running_on(lab)[name] == [primary]

    assert op(runner, "remove", name)["state"] == "done"
    assert store.instance(name) is None and defined_on(lab, name) == [] and not disk.exists()
    assert defined_count(runner, primary) == pinst - 1
    jobs = {(r["operation"], r["target"], r["state"]) for r in op(runner, "jobs")["data"]}
    assert {("add", name, "done"), ("stop", name, "done"), ("reboot", name, "done"), ("remove", name, "done")} <= jobs


def test_sharedfile_instance_on_the_node_asked_for(lab, runner, store, cleanup):
    cleanup.append("shared1")
    assert op(runner, "add", "shared1", template="sharedfile", nodes="node2", **SMALL)["state"] == "done"
    assert store.instance("shared1")["primary"] == "node2"
    assert running_on(lab)["shared1"] == ["node2"]
    assert (lab.dir / "shared" / "shared1" / "disk0.qcow2").is_file()


@pytest.mark.parametrize(
    "args, kwargs, message",
    [
        (["bad;name"], {}, "name: invalid value 'bad;name'"),
        (["ok1"], {"memory": "lots"}, "memory: invalid value 'lots'"),
        (["ok1"], {"template": "nfs"}, "template: invalid value 'nfs'"),
        (["ok1"], {"disks": "-1G"}, "disks[0]: invalid value '-1G'"),
        (["ok1"], {"nodes": "node9"}, "nodes: ['node9'] not in the cluster"),
        (["ok1"], {"nodes": "node1:node2", "template": "file"}, "nodes: template file needs 1 node(s)"),
    ],
)
def test_bad_arguments_change_nothing(lab, runner, store, args, kwargs, message):
    before = set(store.jobs())
    ret = op(runner, "add", *args, **{**SMALL, **kwargs})
    assert ret["retcode"] == 1 and message in ret["error"], ret
    assert store.instance("ok1") is None and defined_on(lab, "ok1") == []
    assert set(store.jobs()) == before


def test_unknown_instance_and_duplicate_name(runner, store, cleanup):
    ret = op(runner, "start", "ghost")
    assert ret["retcode"] == 1 and "instance 'ghost' is not in the cluster" in ret["error"]
    cleanup.append("dup1")
    assert op(runner, "add", "dup1", template="sharedfile", **SMALL)["state"] == "done"
    ret = op(runner, "add", "dup1", template="file", **SMALL)
    assert ret["retcode"] == 1 and "name: instance dup1 already exists" in ret["error"]
    assert store.instance("dup1")["template"] == "sharedfile"


IMPATIENT_RUNNER = """
import json, sys
from saltext.vmcluster.lab import Lab
runner = Lab(sys.argv[1]).runner(vmcluster_lock_timeout=0.5)
print(json.dumps(runner.cmd(sys.argv[2], sys.argv[3:], print_event=False)))
"""


def test_a_locked_instance_waits_or_is_refused_naming_the_holder(lab, runner, store, cleanup):
    cleanup.append("lock1")
    assert op(runner, "add", "lock1", template="sharedfile", **SMALL)["state"] == "done"
    with store.locked(["instance/lock1"], {"job": "TESTJOB", "operation": "migrate"}):
        proc = subprocess.run([sys.executable, "-c", IMPATIENT_RUNNER, str(lab.dir), "cluster.stop", "lock1"],
                              capture_output=True, text=True, check=False, timeout=60)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ret = json.loads(proc.stdout.strip().splitlines()[-1])
    assert ret["retcode"] == 1
    assert "instance/lock1 is locked by job TESTJOB (migrate, pid" in ret["error"]
    assert store.instance("lock1")["admin_state"] == "up"  # nothing changed

    def hold():
        with store.locked(["instance/lock1"], {"job": "TESTJOB2", "operation": "migrate"}):
            time.sleep(1.5)

    holder = threading.Thread(target=hold)
    holder.start()
    time.sleep(0.2)
    started = time.monotonic()
    ret = op(runner, "stop", "lock1", force=True)
    assert ret.get("state") == "done", ret  # it waited for the holder
    assert time.monotonic() - started >= 1.0
    holder.join()
    assert store.instance("lock1")["admin_state"] == "down"


def test_runner_killed_mid_job_is_resumed_to_one_running_copy(lab, runner, store, cleanup):
    cleanup.append("crash1")
    proc = subprocess.Popen(
        [str(BIN / "salt-run"), "-c", str(lab.dir), "cluster.add", "crash1", "template=file", "memory=64M",
         "disks=256M", "nodes=node3"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 60
    job = None
    while time.monotonic() < deadline:
        job = next((j for j in store.jobs().values() if j["target"] == "crash1"), None)
        if job and job["steps"][2]["state"] != "pending":  # the disk exists; the domain is being defined
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    job = store.job(job["id"])
    assert job["state"] == "running" and job["steps"][-1]["state"] == "pending"
    rows = {r["job"]: r for r in op(runner, "jobs")["data"]}
    assert rows[job["id"]]["state"] == "interrupted"

    assert op(runner, "resume", job["id"])["state"] == "done"
    assert store.job(job["id"])["state"] == "done"
    assert running_on(lab)["crash1"] == ["node3"]
    assert store.instance("crash1")["admin_state"] == "up"
