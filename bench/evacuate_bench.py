"""Evacuating a node: 1 instance against 20, end to end through ``salt-run cluster.evacuate``.

Brings up its own 3-node lab (its policy's vCPU ratio raised so that 20 VMs fit on
two nodes of a small host), adds small running VMs (64 MiB, one 256 MiB disk;
alternately ``sharedfile`` and ``file``) on node1 and times ``cluster.evacuate
node1`` (plan, one job, moves in parallel job sets; ``file`` disks copied by live
migration). Each size runs ``runs`` times; after each run the instances are
removed, so every run starts from the same placement. Target: 20 instances in at most 3x the time of one.

The peer on the same input, in the same run: before each evacuation the same VMs
move node1 -> node2 by libvirt alone (``migrate3`` of all of them at once from
threads, with the flags ``cluster_vm.migrate`` uses; ``file`` disks created with
``qemu-img`` before the clock and the source disks removed inside it) and back
(not timed): the floor that this host's libvirt and QEMU set for moving 20 VMs
at once. The lab is torn down at the end.

Usage: python bench/evacuate_bench.py [--runs 3] [--dir /tmp/vmc-bench-evac]
"""

import argparse
import os
import shutil
import statistics
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import libvirt
import yaml

from saltext.vmcluster import disks
from saltext.vmcluster.hypervisor import connection
from saltext.vmcluster.lab import Lab

TARGET_RATIO = 3.0
SMALL = {"memory": "64M", "disks": "256M"}
DISK_BYTES = 256 << 20
MIGRATE_URI = "tcp://127.0.0.1"
LIVE_FLAGS = libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_PERSIST_DEST | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE


def op(runner, fun, *args, **kwargs):
    ret = runner.cmd(f"cluster.{fun}", list(args), kwarg=kwargs, print_event=False)
    if not isinstance(ret, dict) or ret.get("retcode"):
        raise SystemExit(f"cluster.{fun} {args} {kwargs} failed: {ret}")
    return ret


def template_of(number):
    return "sharedfile" if number % 2 == 0 else "file"


def bare_migration(lab, name, template, src, dst):
    """libvirt alone: ``name`` from ``src`` to ``dst`` (a file disk: copied into the image made before)."""
    params, flags = {libvirt.VIR_MIGRATE_PARAM_URI: MIGRATE_URI}, LIVE_FLAGS
    with connection(lab.node(src).libvirt_uri) as conn, connection(lab.node(dst).libvirt_uri) as dconn:
        dom = conn.lookupByName(name)
        if template == "file":
            old, new = (disks.file_path(lab.node(n).storage["file"], name, 0, "qcow2") for n in (src, dst))
            live = libvirt.VIR_DOMAIN_XML_MIGRATABLE
            params[libvirt.VIR_MIGRATE_PARAM_DEST_XML] = dom.XMLDesc(live).replace(old, new)
            params[libvirt.VIR_MIGRATE_PARAM_PERSIST_XML] = dom.XMLDesc(
                live | libvirt.VIR_DOMAIN_XML_INACTIVE).replace(old, new)
            flags |= libvirt.VIR_MIGRATE_NON_SHARED_DISK
        else:  # the lab's shared directory is coherent, but not a file system libvirt knows as shared
            flags |= libvirt.VIR_MIGRATE_UNSAFE
        dom.migrate3(dconn, params, flags)
    if template == "file":
        shutil.rmtree(os.path.dirname(old))


def bare_seconds(lab, names, src, dst):
    """Seconds libvirt alone takes to move ``names`` from ``src`` to ``dst``, all at once."""
    for number, name in enumerate(names):
        if template_of(number) == "file":
            path = disks.file_path(lab.node(dst).storage["file"], name, 0, "qcow2")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", path, str(DISK_BYTES)], check=True)
    began = time.monotonic()
    with ThreadPoolExecutor(max_workers=len(names)) as pool:
        list(pool.map(lambda item: bare_migration(lab, item[1], template_of(item[0]), src, dst), enumerate(names)))
    return time.monotonic() - began


def evacuation_seconds(lab, runner, count):
    """Add ``count`` instances on node1; time moving them to node2 and back by libvirt alone, then
    evacuating node1; remove them. Returns ``(ours, bare, job sets)``."""
    names = [f"ev{count}-{k}" for k in range(count)]
    for k, name in enumerate(names):
        op(runner, "add", name, template=template_of(k), nodes="node1", **SMALL)
    bare = bare_seconds(lab, names, "node1", "node2")
    bare_seconds(lab, names, "node2", "node1")
    began = time.monotonic()
    ret = op(runner, "evacuate", "node1")
    seconds = time.monotonic() - began
    if ret.get("state") != "done" or ret.get("cannot_move"):
        raise SystemExit(f"evacuation failed: {ret}")
    for name in names:
        op(runner, "remove", name)
    return seconds, bare, len(ret["job_sets"])


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
        results, floor = {}, {}
        print(f"lab: 3 nodes, {lab.accel.upper()}, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
        for count in (1, 20):
            runs = [evacuation_seconds(lab, runner, count) for _ in range(args.runs)]
            results[count] = statistics.median(r[0] for r in runs)
            floor[count] = statistics.median(r[1] for r in runs)
            print(f"evacuate node1 holding {count:2d} instances: median {results[count]:.2f} s "
                  f"(runs {', '.join(f'{r[0]:.2f}' for r in runs)}; {runs[0][2]} job set(s)); "
                  f"libvirt alone, all at once: median {floor[count]:.2f} s", flush=True)
        ratio, bare_ratio = results[20] / results[1], floor[20] / floor[1]
        print(f"20 / 1 = {ratio:.2f}x (target <= {TARGET_RATIO:.0f}x): {'ok' if ratio <= TARGET_RATIO else 'MISSED'}; "
              f"libvirt alone 20 / 1 = {bare_ratio:.2f}x; cluster.evacuate / libvirt alone: "
              f"{results[1] / floor[1]:.2f}x (1), {results[20] / floor[20]:.2f}x (20)")
    finally:
        runner.destroy()
        lab.down()


if __name__ == "__main__":
    main()
