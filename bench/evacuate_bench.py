"""Evacuating a node: 1 instance against 20, end to end through ``salt-run cluster.evacuate``.

Brings up its own 3-node lab (its policy's vCPU ratio raised so that 20 VMs fit on
two nodes of a small host), adds small running VMs (64 MiB, one 256 MiB disk;
alternately ``sharedfile`` and ``file``) on node1 and times ``cluster.evacuate
node1`` (plan, one job, moves in parallel job sets; ``file`` disks copied by live
migration). Each size runs ``runs`` times; after each run the instances are
removed, so every run starts from the same placement. Target: 20 instances in at most 3x the time of one. The lab is torn down at the end.

Usage: python bench/evacuate_bench.py [--runs 3] [--dir /tmp/vmc-bench-evac]
"""

import argparse
import statistics
import time

import yaml

from saltext.vmcluster.lab import Lab

TARGET_RATIO = 3.0
SMALL = {"memory": "64M", "disks": "256M"}


def op(runner, fun, *args, **kwargs):
    ret = runner.cmd(f"cluster.{fun}", list(args), kwarg=kwargs, print_event=False)
    if not isinstance(ret, dict) or ret.get("retcode"):
        raise SystemExit(f"cluster.{fun} {args} {kwargs} failed: {ret}")
    return ret


def evacuation_seconds(runner, count):
    """Add ``count`` instances on node1, time evacuating it, remove them."""
    names = [f"ev{count}-{k}" for k in range(count)]
    for k, name in enumerate(names):
        op(runner, "add", name, template="sharedfile" if k % 2 == 0 else "file", nodes="node1", **SMALL)
    began = time.monotonic()
    ret = op(runner, "evacuate", "node1")
    seconds = time.monotonic() - began
    if ret.get("state") != "done" or ret.get("cannot_move"):
        raise SystemExit(f"evacuation failed: {ret}")
    for name in names:
        op(runner, "remove", name)
    return seconds, len(ret["job_sets"])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dir", default="/tmp/vmc-bench-evac")
    args = parser.parse_args()
    lab = Lab(args.dir)
    lab.up(3)
    # 20 one-vCPU VMs on two nodes of this host's CPUs: admit them (the policy's vCPU ratio)
    pillar_file = lab.dir / "pillar" / "cluster.sls"
    pillar = yaml.safe_load(pillar_file.read_text())
    pillar["cluster"]["ipolicy"]["vcpu_ratio"] = 64
    pillar_file.write_text(yaml.safe_dump(pillar))
    runner = lab.runner()
    try:
        results = {}
        for count in (1, 20):
            runs = [evacuation_seconds(runner, count) for _ in range(args.runs)]
            results[count] = statistics.median(s for s, _ in runs)
            print(f"evacuate node1 holding {count:2d} instances: median {results[count]:.2f} s "
                  f"(runs {', '.join(f'{s:.2f}' for s, _ in runs)}; {runs[0][1]} job set(s))", flush=True)
        ratio = results[20] / results[1]
        print(f"20 / 1 = {ratio:.2f}x (target <= {TARGET_RATIO:.0f}x): {'ok' if ratio <= TARGET_RATIO else 'MISSED'}")
    finally:
        runner.destroy()
        lab.down()


if __name__ == "__main__":
    main()
