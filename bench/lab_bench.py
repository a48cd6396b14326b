"""Lab bring-up and tear-down time, and `salt-run cluster.nodes` latency (median of several).

Usage: python bench/lab_bench.py [--nodes 3] [--runs 7] [--dir /tmp/vmc-bench-lab]
"""

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

from saltext.vmcluster.lab import Lab


def timed(func, *args, **kwargs):
    started = time.monotonic()
    result = func(*args, **kwargs)
    return time.monotonic() - started, result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--dir", default="/tmp/vmc-bench-lab")
    args = parser.parse_args()
    salt_run = [str(Path(sys.executable).parent / "salt-run"), "-c", args.dir, "cluster.nodes"]

    lab = Lab(args.dir)
    up_s, _ = timed(lab.up, nodes=args.nodes)
    try:
        cli = [timed(subprocess.run, salt_run, capture_output=True, check=True)[0] for _ in range(args.runs)]
        runner = lab.runner()
        in_process = [timed(runner.cmd, "cluster.nodes", [], print_event=False)[0] for _ in range(args.runs)]
        runner.destroy()
    finally:
        down_s, _ = timed(lab.down)

    print(f"lab: {args.nodes} nodes, {lab.accel.upper()}")
    print(f"{'measure':40} {'seconds':>8}")
    print(f"{'bring-up (master + nodes answering)':40} {up_s:8.2f}")
    print(f"{'tear-down (everything removed)':40} {down_s:8.2f}")
    print(f"{'salt-run cluster.nodes, median':40} {statistics.median(cli):8.3f}   (runs: {args.runs})")
    print(f"{'RunnerClient cluster.nodes, median':40} {statistics.median(in_process):8.3f}   (in-process)")


if __name__ == "__main__":
    main()
