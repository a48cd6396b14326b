"""Benchmark of the planner's balancer against Ganeti's hbal.

For each case (Ganeti's .data files with instances, then generated skewed
clusters) runs ``balance`` and ``hbal -t FILE -S PREFIX`` (if installed,
under a time limit), scores both .balanced files with Ganeti's ``hinfo`` and
prints one row: scores, moves, seconds and the ratios ours/hbal (score,
moves) and hbal/ours (speed); for the generated clusters up to 100/1000 the
last column is the score of the exact search (every target scored, no
linear shortlist or estimates). Generated cases where hbal timed out (up to
200 nodes) are then run again with ``hbal -l N`` and ``max_steps=N``: the
equal-steps table compares the scores after the same number of moves and
the time per move. The default run (corpus, 20/80, 60/500) takes a few
minutes; ``--large`` adds 100/1000, 200/2000 and 1000/10000 and reports,
for 1000/10000, one allocation's time and the peak memory.

    python bench/planner_bench.py [--large] [--hbal-timeout 30] [--steps N] [--workdir DIR]
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
from typing import Optional

import numpy as np

from saltext.vmcluster.planner import htools
from saltext.vmcluster.planner.balance import adopt_placement, balance
from saltext.vmcluster.planner.model import Cluster, Group, Instance, Node

GANETI = Path("/usr/lib/ganeti/3.0/usr/bin")
CORPUS = Path("/work/shared/data/ganeti-htools")
SIZES = [(20, 80), (60, 500)]
LARGE = [(100, 1000), (200, 2000), (1000, 10000)]
EXACT_MAX_NODES = 100  # the exact search's score is shown up to this size
EQUAL_STEPS_MAX_NODES = 200  # beyond, hbal needs minutes per move
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


def cpu_seconds(children: bool) -> float:
    """CPU time (user + system) of this process, or of its waited-for children."""
    if not children:
        return time.process_time()
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_hbal(path: Path, prefix: Path, timeout: Optional[float], steps: int = -1):
    """(score, moves, (wall, cpu) seconds) of hbal (at most ``steps`` moves if >= 0);
    score None on timeout (None: no limit) or failure. Multi-group files are
    balanced one group after the other (hbal -G).
    """
    start, cpu = time.perf_counter(), cpu_seconds(True)
    groups = [g.name for g in htools.load(path).groups] if len(htools.load(path).groups) > 1 else [None]
    moves, current = 0, path
    for k, group in enumerate(groups):
        out_prefix = Path(f"{prefix}.g{k}") if group else prefix
        args = [str(GANETI / "hbal"), "-t", str(current), "-S", str(out_prefix)]
        args += ["-G", group] if group else []
        args += ["-l", str(steps)] if steps >= 0 else []
        try:
            left = None if timeout is None else max(1.0, timeout - (time.perf_counter() - start))
            out = subprocess.run(args, capture_output=True, text=True, env=_env(), timeout=left)
        except subprocess.TimeoutExpired as exc:
            done = len(MOVE_LINE.findall((exc.stdout or b"").decode()))
            return None, moves + done, (time.perf_counter() - start, cpu_seconds(True) - cpu)
        moves += len(MOVE_LINE.findall(out.stdout))
        balanced = Path(f"{out_prefix}.balanced")
        if balanced.exists() and balanced.stat().st_size:  # empty when hbal aborts
            current = balanced
    seconds = (time.perf_counter() - start, cpu_seconds(True) - cpu)
    # hbal's file keeps the loaded free memory: score its placement re-accounted
    replayed = Path(f"{prefix}.replayed")
    try:
        htools.dump(adopt_placement(htools.load(path), htools.load(current)), replayed)
    except KeyError:  # hbal saved other instance names: score its file as is
        replayed = current
    return hinfo_score(replayed), moves, seconds


def run_ours(path: Path, prefix: Path, steps: int = -1):
    """(score by hinfo, moves, (wall, cpu) seconds, result) of our balancer."""
    cluster = htools.load(path)
    start, cpu = time.perf_counter(), cpu_seconds(False)
    result = balance(cluster, max_steps=steps)
    seconds = (time.perf_counter() - start, cpu_seconds(False) - cpu)
    out = Path(f"{prefix}.balanced")
    htools.dump(result.cluster, out)
    return hinfo_score(out), len(result.moves), seconds, result


def exact_score(path: Path) -> float:
    """Final score of the search without the large-cluster approximations."""
    cluster = htools.load(path)
    return balance(cluster, shortlist=len(cluster.nodes), estimate_budget=sys.maxsize).final_score


def cases(workdir: Path, large: bool):
    """(name, path, generated nodes or 0) of every case; generated files go to ``workdir``."""
    for path in sorted(CORPUS.glob("*.data")):
        try:
            if htools.load(path).instances:
                yield path.stem, path, 0
        except htools.HtoolsFormatError:
            continue
    for n_nodes, n_inst in SIZES + (LARGE if large else []):
        path = workdir / f"skewed-{n_nodes}-{n_inst}.data"
        htools.dump(skewed_cluster(n_nodes, n_inst), path)
        yield f"skewed {n_nodes}/{n_inst}", path, n_nodes


def fmt(value, spec):
    return "-" if value is None else format(value, spec)


def ratio(ours, ref) -> str:
    """ours / ref, "-" without a reference."""
    if ours is None or ref is None:
        return "-"
    return f"{ours / ref:.4f}" if ref else ("1.0000" if ours == 0 else "inf")


def table(title: str, columns) -> None:
    """Print a table's title and header; ``columns`` are (name, width), < 0: left-aligned."""
    header = " ".join(f"{name:<{-width}}" if width < 0 else f"{name:>{width}}" for name, width in columns)
    print(f"\n{title}\n{header}\n{'-' * len(header)}", flush=True)


MAIN = [("case", -34), ("hbal score", 12), ("mv", 5), ("s", 7), ("cpu s", 7), ("ours score", 12),
        ("mv", 5), ("s", 7), ("cpu s", 7), ("score ratio", 11), ("moves ratio", 11),
        ("speed (cpu)", 11), ("exact score", 12)]
STEPS = [("case", -18), ("steps", 5), ("hbal score", 12), ("mv", 4), ("s", 8), ("cpu s", 8),
         ("ours score", 12), ("mv", 4), ("s", 7), ("cpu s", 7), ("ours - hbal", 11),
         ("cpu s/move hbal", 15), ("ours", 8), ("speed (cpu)", 11)]


def times(seconds) -> str:
    """Wall and CPU seconds as two columns of width 7."""
    return "      -       -" if seconds is None else f"{seconds[0]:7.2f} {seconds[1]:7.2f}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--large", action="store_true", help="add 100/1000, 200/2000 and 1000/10000")
    parser.add_argument("--hbal-timeout", type=float, default=30.0,
                        help="seconds a full hbal run may take per case (default 30)")
    parser.add_argument("--steps", type=int,
                        help="moves of the equal-steps runs (default 5, 20 with --large)")
    parser.add_argument("--workdir", type=Path, help="where to write data files (default: temp)")
    args = parser.parse_args(argv)
    steps = args.steps or (20 if args.large else 5)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="planner-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    have_hbal = (GANETI / "hbal").exists()
    print("load average at start: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    table("Full balance (scores by hinfo; ratios ours/hbal, speed hbal/ours on CPU time)", MAIN)
    unfinished, large = [], None
    for name, path, n_nodes in cases(workdir, args.large):
        prefix = workdir / re.sub(r"\W", "_", name)
        ours, our_moves, our_s, result = run_ours(path, Path(f"{prefix}.ours"))
        ref, ref_moves, ref_s = (run_hbal(path, Path(f"{prefix}.hbal"), args.hbal_timeout)
                                 if have_hbal else (None, None, None))
        if n_nodes == LARGE[-1][0]:
            large = (our_s, result)
        if ref_s is not None and ref is None and 0 < n_nodes <= EQUAL_STEPS_MAX_NODES:
            unfinished.append((name, path, prefix))
        speed = ("-" if ref_s is None
                 else ("> " if ref is None else "") + f"{ref_s[1] / max(our_s[1], 1e-6):.1f}x")
        hbal_score = "timeout" if have_hbal and ref is None else fmt(ref, ".6f")
        exact = exact_score(path) if 0 < n_nodes <= EXACT_MAX_NODES else None
        print(f"{name:34} {hbal_score:>12} {fmt(ref_moves, 'd'):>5} {times(ref_s)} "
              f"{ours:12.6f} {our_moves:5d} {times(our_s)} {ratio(ours, ref):>11} "
              f"{ratio(our_moves, ref_moves if ref is not None else None):>11} {speed:>11} "
              f"{fmt(exact, '.6f'):>12}", flush=True)
    if unfinished:
        table(f"Equal steps where hbal timed out (hbal -l {steps}, ours max_steps={steps})", STEPS)
        for name, path, prefix in unfinished:
            equal_steps(name, path, prefix, steps)
    if large:
        report_large(*large)
    print("load average at end: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    return 0


def equal_steps(name: str, path: Path, prefix: Path, steps: int) -> None:
    """One row: hbal and ours after the same number of moves, CPU time per move."""
    ours, our_moves, our_s, _ = run_ours(path, Path(f"{prefix}.ours{steps}"), steps)
    ref, ref_moves, ref_s = run_hbal(path, Path(f"{prefix}.hbal{steps}"), None, steps)
    per_ref, per_ours = ref_s[1] / max(ref_moves, 1), our_s[1] / max(our_moves, 1)
    diff = None if ref is None else ours - ref
    print(f"{name:18} {steps:5d} {fmt(ref, '12.6f'):>12} {ref_moves:4d} {ref_s[0]:8.2f} {ref_s[1]:8.2f} "
          f"{ours:12.6f} {our_moves:4d} {times(our_s)} {fmt(diff, '+.2e'):>11} {per_ref:15.4f} "
          f"{per_ours:8.4f} {per_ref / max(per_ours, 1e-9):10.1f}x", flush=True)


def report_large(seconds, result) -> None:
    """The 1000/10000 balance, one allocation on its result, and the peak memory."""
    print(f"\n1000/10000: full balance {seconds[0]:.1f} s ({seconds[1]:.1f} s CPU), {len(result.moves)} moves, "
          f"score {result.initial_score:.4f} -> {result.final_score:.4f}")
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
