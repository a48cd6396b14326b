"""Benchmark of the planner's balancer against Ganeti's hbal.

For each case (Ganeti's .data files with instances, then generated skewed
clusters) runs ``hbal -t FILE -S PREFIX`` (if installed, under a time limit)
and ``balance``, scores both .balanced files with Ganeti's ``hinfo`` and
prints one table row; for the generated clusters up to 100/1000 the last
column, for comparison, is the score of the exact search (every target
scored, no linear shortlist or estimates). With ``--large`` it adds 200/2000
and 1000/10000 and reports, for 1000/10000, the balance time, one
allocation's time (if the allocate module exists) and the peak memory.

    python bench/planner_bench.py [--large] [--hbal-timeout 120] [--workdir DIR]
"""

import argparse
import importlib
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from saltext.vmcluster.planner import htools
from saltext.vmcluster.planner.balance import adopt_placement, balance
from saltext.vmcluster.planner.model import Cluster, Group, Instance, Node

GANETI = Path("/usr/lib/ganeti/3.0/usr/bin")
CORPUS = Path("/work/shared/data/ganeti-htools")
SIZES = [(20, 80), (60, 500), (100, 1000)]
LARGE = [(200, 2000), (1000, 10000)]
EXACT_CASES = {f"skewed {n}/{i}" for n, i in SIZES}
MOVE_LINE = re.compile(r"^\s+\d+\. ", re.M)


def skewed_cluster(n_nodes: int, n_instances: int, seed: int = 1) -> Cluster:
    """One group; 70 % of the primaries on the first fifth of the nodes; mostly DRBD."""
    rng = np.random.default_rng(seed)
    nodes = [Node(f"node{k:04d}", total_mem=262144.0, node_mem=2048, free_mem=260096,
                  total_disk=4.0e6, free_disk=4000000, total_cpus=64.0, group="g")
             for k in range(n_nodes)]
    cluster = Cluster(groups=[Group("default", "g")], nodes=nodes)
    hot = max(2, n_nodes // 5)
    for k in range(n_instances):
        pri = int(rng.integers(hot)) if rng.random() < 0.7 else int(rng.integers(n_nodes))
        sec = int(rng.choice([n for n in range(n_nodes) if n != pri][:hot * 2]))
        template = str(rng.choice(["drbd"] * 17 + ["plain"] * 2 + ["rbd"]))
        inst = Instance(f"inst{k:05d}", mem=int(rng.choice([512, 1024, 2048])),
                        disk=int(rng.choice([5120, 10240, 20480])), vcpus=int(rng.integers(1, 5)),
                        status="running", auto_balance=True, primary=nodes[pri].name,
                        secondary=nodes[sec].name if template == "drbd" else None,
                        disk_template=template)
        cluster.instances.append(inst)
        cluster.relocate(inst, inst.primary, inst.secondary)
    return cluster


def hinfo_score(path: Path) -> float:
    """Ganeti's score of a data file."""
    out = subprocess.run([str(GANETI / "hinfo"), "-t", str(path)], capture_output=True,
                         text=True, check=True, env=_env()).stdout
    return float(re.search(r"^Cluster score: (\S+)", out, re.M)[1])


def _env():
    return {k: v for k, v in os.environ.items() if k != "HTOOLS"}


def run_hbal(path: Path, prefix: Path, timeout: float):
    """(score, moves, seconds) of hbal; score None on timeout or failure.

    Multi-group files are balanced one group after the other (hbal -G).
    """
    start = time.perf_counter()
    groups = [g.name for g in htools.load(path).groups] if len(htools.load(path).groups) > 1 else [None]
    moves, current = 0, path
    for k, group in enumerate(groups):
        out_prefix = Path(f"{prefix}.g{k}") if group else prefix
        args = [str(GANETI / "hbal"), "-t", str(current), "-S", str(out_prefix)]
        args += ["-G", group] if group else []
        try:
            out = subprocess.run(args, capture_output=True, text=True, env=_env(),
                                 timeout=max(1.0, timeout - (time.perf_counter() - start)))
        except subprocess.TimeoutExpired as exc:
            done = len(MOVE_LINE.findall((exc.stdout or b"").decode()))
            return None, moves + done, time.perf_counter() - start
        moves += len(MOVE_LINE.findall(out.stdout))
        balanced = Path(f"{out_prefix}.balanced")
        if balanced.exists() and balanced.stat().st_size:  # empty when hbal aborts
            current = balanced
    seconds = time.perf_counter() - start
    # hbal's file keeps the loaded free memory: score its placement re-accounted
    replayed = Path(f"{prefix}.replayed")
    try:
        htools.dump(adopt_placement(htools.load(path), htools.load(current)), replayed)
    except KeyError:  # hbal saved other instance names: score its file as is
        replayed = current
    return hinfo_score(replayed), moves, seconds


def run_ours(path: Path, prefix: Path):
    """(score by hinfo, moves, seconds) of our balancer."""
    cluster = htools.load(path)
    start = time.perf_counter()
    result = balance(cluster)
    seconds = time.perf_counter() - start
    out = Path(f"{prefix}.balanced")
    htools.dump(result.cluster, out)
    return hinfo_score(out), len(result.moves), seconds


def exact_score(path: Path) -> float:
    """Final score of the search without the large-cluster approximations."""
    cluster = htools.load(path)
    return balance(cluster, shortlist=len(cluster.nodes), estimate_budget=sys.maxsize).final_score


def cases(workdir: Path, large: bool):
    """(name, path) of every benchmark case, generated files written to ``workdir``."""
    for path in sorted(CORPUS.glob("*.data")):
        try:
            if htools.load(path).instances:
                yield path.stem, path
        except htools.HtoolsFormatError:
            continue
    for n_nodes, n_inst in SIZES + (LARGE if large else []):
        path = workdir / f"skewed-{n_nodes}-{n_inst}.data"
        htools.dump(skewed_cluster(n_nodes, n_inst), path)
        yield f"skewed {n_nodes}/{n_inst}", path


def fmt(value, spec):
    return "-" if value is None else format(value, spec)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--large", action="store_true", help="add 200/2000 and 1000/10000")
    parser.add_argument("--hbal-timeout", type=float, default=120.0,
                        help="seconds hbal may take per case (default 120)")
    parser.add_argument("--workdir", type=Path, help="where to write data files (default: temp)")
    args = parser.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="planner-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    have_hbal = (GANETI / "hbal").exists()
    header = (f"{'case':34} {'hbal score':>12} {'mv':>5} {'s':>8}  {'ours score':>12} {'mv':>5} "
              f"{'s':>8}  {'score ratio':>11} {'speed ratio':>11} {'exact score':>12}")
    print(header)
    print("-" * len(header))
    for name, path in cases(workdir, args.large):
        prefix = workdir / re.sub(r"\W", "_", name)
        ours, our_moves, our_s = run_ours(path, Path(f"{prefix}.ours"))
        if have_hbal:
            ref, ref_moves, ref_s = run_hbal(path, Path(f"{prefix}.hbal"), args.hbal_timeout)
        else:
            ref, ref_moves, ref_s = None, None, None
        ratio = "-" if ref is None else (f"{ours / ref:.4f}" if ref else ("1.0000" if ours == 0 else "inf"))
        if ref_s is None:
            speed = "-"
        else:
            speed = ("> " if ref is None else "") + f"{ref_s / max(our_s, 1e-6):.1f}x"
        hbal_score = "timeout" if have_hbal and ref is None else fmt(ref, ".6f")
        exact = exact_score(path) if name in EXACT_CASES else None
        print(f"{name:34} {hbal_score:>12} {fmt(ref_moves, 'd'):>5} {fmt(ref_s, '.2f'):>8}  "
              f"{ours:12.6f} {our_moves:5d} {our_s:8.2f}  {ratio:>11} {speed:>11} {fmt(exact, '.6f'):>12}",
              flush=True)
    if args.large:
        report_large(workdir)
    return 0


def report_large(workdir: Path) -> None:
    """Balance and one allocation on 1000/10000, and the peak memory."""
    cluster = htools.load(workdir / "skewed-1000-10000.data")
    start = time.perf_counter()
    result = balance(cluster)
    print(f"\n1000/10000: full balance {time.perf_counter() - start:.1f} s, "
          f"{len(result.moves)} moves, score {result.initial_score:.4f} -> {result.final_score:.4f}")
    try:
        allocate = importlib.import_module("saltext.vmcluster.planner.allocate")
    except ImportError:
        print("1000/10000: one allocation: skipped (planner.allocate not present)")
    else:
        allocator = allocate.Allocator(result.cluster)
        spec = allocate.parse_spec("mem=1024,disk=10240,vcpus=2,template=drbd,name=bench-new")
        start = time.perf_counter()
        outcome = allocator.allocate(spec)
        print(f"1000/10000: one allocation {time.perf_counter() - start:.3f} s "
              f"({'placed' if outcome.ok else 'not placed'})")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak memory (this process): {peak:.0f} MB")


if __name__ == "__main__":
    sys.exit(main())
