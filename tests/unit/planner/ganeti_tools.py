"""Helpers of the planner tests: Ganeti's corpus and real htools."""

import os
import re
import subprocess
from pathlib import Path

import pytest

CORPUS = Path("/work/shared/data/ganeti-htools")
HINFO = Path("/usr/lib/ganeti/3.0/usr/bin/hinfo")
CORPUS_FILES = sorted(CORPUS.glob("*.data"))


def run_hinfo(path, cwd):
    """Run Ganeti's hinfo on a file: (metric -> value, total), or None if it fails."""
    if not HINFO.exists():
        pytest.skip(f"Ganeti's hinfo is not installed at {HINFO}")
    env = {k: v for k, v in os.environ.items() if k != "HTOOLS"}
    out = subprocess.run([str(HINFO), "-t", str(path)], capture_output=True, text=True,
                         cwd=cwd, env=env, check=False)
    total = re.search(r"^Cluster score: (\S+)", out.stdout, re.M)
    if not total:
        return None, out.stdout + out.stderr
    metrics = {m[1]: float(m[2]) for m in re.finditer(r"^\s+(\w+)\s+(-?[\d.]+|NaN)\s+x", out.stdout, re.M)}
    return (metrics, float(total[1])), ""


def random_cluster(rng, n_nodes, n_instances):
    """A random one-group cluster with DRBD/plain/shared instances and tags."""
    from saltext.vmcluster.planner.model import Cluster, Group, Instance, Node

    nodes = [
        Node(f"node{i}", total_mem=65536.0, node_mem=1024, free_mem=64512 - int(rng.integers(0, 200)),
             total_disk=2.0e6, free_disk=2000000, total_cpus=float(rng.choice([16, 32])), group="g",
             offline=bool(rng.random() < 0.05), tags=[f"rack:r{i % 4}"],
             cpu_speed=float(rng.choice([1.0, 1.5])))
        for i in range(n_nodes)
    ]
    cluster = Cluster(groups=[Group("default", "g")], nodes=nodes,
                      tags=["htools:iextags:svc", "htools:nlocation:rack",
                            "htools:desiredlocation:rack"])
    for i in range(n_instances):
        pri, sec = rng.choice(n_nodes, size=2, replace=False)
        template = str(rng.choice(["drbd", "drbd", "plain", "rbd"]))
        tags = [f"svc:{rng.integers(0, 5)}"] if rng.random() < 0.3 else []
        if rng.random() < 0.1:
            tags.append(f"rack:r{rng.integers(0, 4)}")
        inst = Instance(
            f"inst{i}", mem=int(rng.choice([128, 512, 1024])), disk=int(rng.choice([1024, 10240])),
            vcpus=int(rng.integers(1, 4)), status=str(rng.choice(["running", "ADMIN_down",
                                                                   "ADMIN_offline"])),
            auto_balance=bool(rng.random() < 0.9), primary=nodes[pri].name,
            secondary=nodes[sec].name if template == "drbd" else None, disk_template=template,
            tags=tags, forthcoming=bool(rng.random() < 0.05))
        cluster.instances.append(inst)
        cluster.relocate(inst, inst.primary, inst.secondary)  # take its resources
    return cluster
