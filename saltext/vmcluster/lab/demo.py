"""The README demo: the cluster at work on the lab, through the operator's own commands.

Adds instances of two templates, lists them, live-migrates one (its disk is
copied), fails one over after crashing its node, lets verify and the watcher
clean up after the node returns, evacuates a node, printing the tables between
the steps.
"""

import subprocess
import sys
import time
from pathlib import Path

TINY = ["memory=64M", "disks=256M"]


def _cli(lab, tool, *args, check=True):
    """Run a Salt CLI (``salt`` or ``salt-run``) on the lab as an operator would, echoing it."""
    argv = [str(Path(sys.executable).parent / tool), "-c", str(lab.dir), *args]
    print(f"\n$ {tool} {' '.join(args)}", flush=True)
    started = time.monotonic()
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    print("\n".join(line for line in result.stdout.rstrip().splitlines() if "unclosed" not in line))
    print(f"({time.monotonic() - started:.2f}s)", flush=True)
    if check and result.returncode:
        raise SystemExit(f"{tool} {' '.join(args)} failed:\n{result.stderr}")


def _say(text):
    print(f"\n### {text}", flush=True)


def _show_cluster_at_work(lab):
    _say("The cluster, as the nodes report it")
    _cli(lab, "salt-run", "cluster.info")
    _cli(lab, "salt-run", "cluster.nodes")

    _say("Add instances: two with node-local disks (file), two on shared storage (sharedfile)")
    _cli(lab, "salt-run", "cluster.add", "web1", "template=file", "nodes=node1", *TINY)
    _cli(lab, "salt-run", "cluster.add", "web2", "template=file", *TINY)
    _cli(lab, "salt-run", "cluster.add", "db1", "template=sharedfile", "nodes=node1", *TINY)
    _cli(lab, "salt-run", "cluster.add", "db2", "template=sharedfile", "nodes=node3", *TINY)
    _cli(lab, "salt-run", "cluster.instances")
    _cli(lab, "salt-run", "cluster.nodes")

    _say("Live-migrate web1 off node1: its disk is copied while it runs (no shared storage needed)")
    _cli(lab, "salt-run", "cluster.migrate", "web1", "target=node2")
    _cli(lab, "salt-run", "cluster.instances")

    _say("Crash node1 (SIGKILL to its whole namespace: minion, libvirtd, QEMU)")
    lab.node("node1").kill()
    _cli(lab, "salt-run", "cluster.nodes")
    _say("Fail db1 over to node3: refused while node1's death is unconfirmed, done once the operator confirms")
    _cli(lab, "salt-run", "cluster.failover", "db1", "target=node3", check=False)
    _cli(lab, "salt-run", "cluster.failover", "db1", "target=node3", "ignore_consistency=True")
    _cli(lab, "salt-run", "cluster.instances")

    _say("node1 comes back holding a stale copy of db1: verify reports it, the watcher removes it (never starts it)")
    lab.node("node1").start()
    lab.wait_ready(["node1"])
    _cli(lab, "salt-run", "cluster.verify", check=False)
    _cli(lab, "salt-run", "cluster.watcher")

    _say("Evacuate node3: the planner moves its instances away in parallel job sets")
    _cli(lab, "salt-run", "cluster.evacuate", "node3")
    _cli(lab, "salt-run", "cluster.instances")
    _cli(lab, "salt-run", "cluster.nodes")
    _cli(lab, "salt-run", "cluster.jobs")


def run(lab, nodes=3, keep=False):
    """Bring the lab up (unless it runs), show the cluster at work, then take it down unless ``keep``."""
    if not lab.state:
        started = time.monotonic()
        print(f"Bringing up a lab at {lab.dir}: a salt-master and {nodes} nodes "
              "(salt-minion + libvirtd + QEMU each)...", flush=True)
        lab.up(nodes=nodes)
        print(f"Lab up in {time.monotonic() - started:.1f}s with {lab.accel.upper()} acceleration.")
    if nodes < 3:
        raise SystemExit("the demo needs 3 nodes")
    try:
        _show_cluster_at_work(lab)
    finally:
        if keep:
            print(f"\nThe lab keeps running: salt-run -c {lab.dir} cluster.instances; "
                  f"vmcluster-lab --dir {lab.dir} down")
        else:
            lab.down()
            print(f"\nLab at {lab.dir} removed.")
    return 0
