"""Instance moves on a lab of their own: ``cluster.failover`` end to end, ``cluster.migrate`` against bare virsh.

1. failover: ``salt-run cluster.failover fo1 target=<other> shutdown_timeout=0`` of
   one running ``sharedfile`` instance, timed end to end (CLI start-up included),
   back and forth ``--runs`` times; median (target <= 3 s).
2. migrate: one ``file`` instance (qcow2, 1 GiB virtual, 200 MiB written, running)
   moved back and forth, alternating ``cluster.migrate`` (the runner in-process:
   plan, exact-size disk on the target, migration with copy storage, record,
   source disk removed) and bare ``virsh migrate --live --copy-storage-all
   --persistent --undefinesource`` (with ``qemu-img create`` of the destination
   disk and removal of the source disk; its XML with the destination path is
   written before the clock starts), in the order ours, virsh, virsh, ours … so
   both go both ways equally often; median ratio (target <= 1.2x).

Usage: python bench/ops_bench.py [--runs 5] [--dir /tmp/vmc-bench-ops]
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import libvirt

from saltext.vmcluster import disks
from saltext.vmcluster.hypervisor import connection
from saltext.vmcluster.lab import Lab
from saltext.vmcluster.store import Store

NODES = ("node1", "node2")
FAILOVER_TARGET = 3.0
MIGRATE_RATIO_TARGET = 1.2
MIGRATE_URI = "tcp://127.0.0.1"


def checked(ret):
    if not isinstance(ret, dict) or ret.get("state") != "done":
        raise SystemExit(f"operation failed: {ret}")
    return ret


def running_on(lab, name):
    nodes = []
    for node in NODES:
        with connection(lab.node(node).libvirt_uri) as conn:
            if name in [d.name() for d in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_RUNNING)]:
                nodes.append(node)
    return nodes


def bench_failover(lab, runner, runs):
    checked(runner.cmd("cluster.add", ["fo1"], kwarg={"template": "sharedfile", "nodes": "node1", "memory": "64M",
                                                      "disks": "256M"}, print_event=False))
    salt_run = str(Path(sys.executable).parent / "salt-run")
    times = []
    for run in range(runs):
        target = NODES[(run + 1) % 2]
        started = time.monotonic()
        out = subprocess.run([salt_run, "-c", str(lab.dir), "cluster.failover", "fo1", f"target={target}",
                              "shutdown_timeout=0"], capture_output=True, text=True, check=False)
        seconds = time.monotonic() - started
        if out.returncode != 0 or running_on(lab, "fo1") != [target]:
            raise SystemExit(f"failover to {target} failed: {out.stdout}{out.stderr}")
        times.append(seconds)
        print(f"failover {run + 1:2} -> {target}: {seconds:6.3f} s", flush=True)
    checked(runner.cmd("cluster.remove", ["fo1"], print_event=False))
    return statistics.median(times)


class Migrations:
    """One file VM moved back and forth by cluster.migrate and by bare virsh."""

    NAME = "mig1"

    def __init__(self, lab, runner):
        self.lab, self.runner = lab, runner
        self.store = Store.from_opts(lab.master_opts())
        self.size = None

    def disk(self, node):
        return disks.file_path(self.lab.node(node).storage["file"], self.NAME, 0, "qcow2")

    def create(self):
        checked(self.runner.cmd("cluster.add", [self.NAME], kwarg={"template": "file", "nodes": "node1",
                                                                   "memory": "128M", "disks": "1G", "start": False},
                                print_event=False))
        subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 0 200M", self.disk("node1")], check=True,
                       capture_output=True)
        checked(self.runner.cmd("cluster.start", [self.NAME], print_event=False))
        self.size = self.store.instance(self.NAME)["disks"][0]["size"]

    def ours(self, src, dst, _xml_files):
        checked(self.runner.cmd("cluster.migrate", [self.NAME], kwarg={"target": dst}, print_event=False))

    def virsh_xml(self, src, dst, folder):
        files = []
        with connection(self.lab.node(src).libvirt_uri) as conn:
            dom = conn.lookupByName(self.NAME)
            for kind, flags in (("live", 0), ("persistent", libvirt.VIR_DOMAIN_XML_INACTIVE)):
                path = os.path.join(folder, f"{kind}.xml")
                xml = dom.XMLDesc(flags | libvirt.VIR_DOMAIN_XML_MIGRATABLE)
                Path(path).write_text(xml.replace(self.disk(src), self.disk(dst)), encoding="utf-8")
                files.append(path)
        return files

    def virsh(self, src, dst, xml_files):
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", self.disk(dst), str(self.size)], check=True)
        subprocess.run([
            "virsh", "-c", self.lab.node(src).libvirt_uri, "migrate", "--live", "--copy-storage-all", "--persistent",
            "--undefinesource", self.NAME, self.lab.node(dst).libvirt_uri, "--migrateuri", MIGRATE_URI,
            "--xml", xml_files[0], "--persistent-xml", xml_files[1],
        ], check=True, capture_output=True)  # fmt: skip
        os.remove(self.disk(src))

    def migrate(self, method, src, dst):
        with tempfile.TemporaryDirectory() as folder:
            xml_files = self.virsh_xml(src, dst, folder) if method == "virsh" else []
            os.makedirs(os.path.dirname(self.disk(dst)), exist_ok=True)
            started = time.monotonic()
            getattr(self, method)(src, dst, xml_files)
            seconds = time.monotonic() - started
        if running_on(self.lab, self.NAME) != [dst] or os.path.exists(self.disk(src)):
            raise SystemExit(f"{method} {src}->{dst}: the VM or its disk is not where it should be")
        if method == "virsh":  # the cluster's record follows what virsh did (not timed)
            self.store.put_instance({**self.store.instance(self.NAME), "primary": dst})
        return seconds


def bench_migrate(lab, runner, runs):
    bench = Migrations(lab, runner)
    bench.create()
    times = {"ours": [], "virsh": []}
    for number in range(4 * runs):
        method = "ours" if number % 4 in (0, 3) else "virsh"
        src, dst = NODES[number % 2], NODES[1 - number % 2]
        seconds = bench.migrate(method, src, dst)
        times[method].append(seconds)
        print(f"migrate {number + 1:2} {method:5} {src}->{dst}: {seconds:6.3f} s", flush=True)
    checked(runner.cmd("cluster.remove", [Migrations.NAME], print_event=False))
    return {method: statistics.median(values) for method, values in times.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="failovers; migrations each way with each method")
    parser.add_argument("--dir", default="/tmp/vmc-bench-ops")
    args = parser.parse_args()
    lab = Lab(args.dir)
    lab.up(len(NODES))
    runner = lab.runner()
    try:
        print(f"lab: {len(NODES)} nodes, {lab.accel.upper()}, load average {os.getloadavg()[0]:.1f} "
              f"on {os.cpu_count()} CPUs")
        failover = bench_failover(lab, runner, args.runs)
        migrate = bench_migrate(lab, runner, args.runs)
    finally:
        runner.destroy()
        lab.down()
    ratio = migrate["ours"] / migrate["virsh"]
    print(f"failover (salt-run, end to end) median: {failover:.3f} s "
          f"(target <= {FAILOVER_TARGET:.1f} s: {'met' if failover <= FAILOVER_TARGET else 'missed'})")
    print(f"migrate median: cluster.migrate {migrate['ours']:.3f} s, virsh {migrate['virsh']:.3f} s, "
          f"ratio {ratio:.3f} (target <= {MIGRATE_RATIO_TARGET:.1f}: "
          f"{'met' if ratio <= MIGRATE_RATIO_TARGET else 'missed'})")


if __name__ == "__main__":
    main()
