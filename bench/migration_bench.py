"""Live migration with copy storage: vmcluster through Salt against plain virsh, on one VM and disk.

Brings up its own 2-node lab, creates one VM with a qcow2 disk (1 GiB virtual,
200 MiB written), and migrates it back and forth: ``runs`` times each way with
each method, in the order ours, virsh, virsh, ours … so that both methods go
both ways equally often. The lab is torn down at the end.

- ours: measured on the master, end to end: one Salt call, ``salt SRC
  cluster_vm.migrate … copy_storage=True create_target_disks=True``, which makes
  the destination disk (exact size) through the destination's libvirt, migrates
  and deletes the source disk.
- virsh: ``qemu-img create`` of the destination disk, ``virsh -c SRC migrate --live
  --copy-storage-all --persistent --undefinesource DOM DST --migrateuri
  tcp://127.0.0.1 --xml … --persistent-xml …`` and removal of the source disk
  that libvirt leaves. The lab's nodes keep their disks in different
  directories, so libvirt needs the domain XML with the destination's disk path;
  it is written before the clock starts.

Usage: python bench/migration_bench.py [--runs 5] [--dir /tmp/vmc-bench-mig]
"""

import argparse
import os
import statistics
import subprocess
import tempfile
import time

import libvirt

from saltext.vmcluster import disks
from saltext.vmcluster.lab import Lab

VM = "benchvm"
DISK_SIZE = "1G"
WRITTEN_MIB = 200
WRITTEN = f"{WRITTEN_MIB}M"
MEMORY = "128M"
MIGRATE_URI = "tcp://127.0.0.1"
TARGET_RATIO = 1.10


def salt(client, node, fun, *args, **kwargs):
    reply = client.cmd(node, fun, list(args), kwarg=kwargs, timeout=300, full_return=True)[node]
    if reply["retcode"] != 0:
        raise SystemExit(f"{fun} on {node} failed: {reply['ret']}")
    return reply["ret"]


def run(argv):
    subprocess.run(argv, check=True, capture_output=True, text=True)


class Bench:
    def __init__(self, lab, client):
        self.lab = lab
        self.client = client
        self.size = None
        self.written = WRITTEN_MIB << 20  # the destination file holds at least the data written

    def disk_path(self, node):
        return disks.file_path(self.lab.node(node).storage["file"], VM, 0, "qcow2")

    def create_vm(self, node):
        """The VM on ``node``: a 1 GiB qcow2 disk with 200 MiB written, running."""
        disk = salt(self.client, node, "cluster_disk.create", VM, 0, DISK_SIZE, "file")
        self.size = disk["size"]
        run(["qemu-io", "-f", "qcow2", "-c", f"write -P 0x5a 0 {WRITTEN}", disk["path"]])
        domain_type = "kvm" if self.lab.accel == "kvm" else "qemu"
        salt(self.client, node, "cluster_vm.define", VM, MEMORY, type=domain_type, disks=[disk["path"]])
        salt(self.client, node, "cluster_vm.start", VM)

    def ours(self, src, dst):
        """One Salt call: cluster_vm.migrate from the source, making the destination disk on the way.

        Returns the seconds of the disk creation and libvirt's migration proper, as cluster_vm.migrate
        measured them.
        """
        return salt(
            self.client, src, "cluster_vm.migrate", VM, self.lab.node(dst).libvirt_uri, copy_storage=True,
            migrate_uri=MIGRATE_URI, target_disks=[self.disk_path(dst)], create_target_disks=True,
        )["seconds"]  # fmt: skip

    def virsh_xml(self, src, dst, folder):
        """Files of the domain XML (live and persistent) with the destination's disk path."""
        files = []
        conn = libvirt.open(self.lab.node(src).libvirt_uri)
        try:
            dom = conn.lookupByName(VM)
            for kind, flags in (("live", 0), ("persistent", libvirt.VIR_DOMAIN_XML_INACTIVE)):
                xml = dom.XMLDesc(flags | libvirt.VIR_DOMAIN_XML_MIGRATABLE)
                path = os.path.join(folder, f"{kind}.xml")
                with open(path, "w", encoding="utf-8") as handle:
                    handle.write(xml.replace(self.disk_path(src), self.disk_path(dst)))
                files.append(path)
        finally:
            conn.close()
        return files

    def virsh(self, src, dst, live_xml, persistent_xml):
        """qemu-img create of the destination disk, virsh migrate, removal of the source disk.

        Returns the seconds of the virsh migrate command.
        """
        run(["qemu-img", "create", "-q", "-f", "qcow2", self.disk_path(dst), str(self.size)])
        started = time.monotonic()
        run([
            "virsh", "-c", self.lab.node(src).libvirt_uri, "migrate", "--live", "--copy-storage-all",
            "--persistent", "--undefinesource", VM, self.lab.node(dst).libvirt_uri,
            "--migrateuri", MIGRATE_URI, "--xml", live_xml, "--persistent-xml", persistent_xml,
        ])  # fmt: skip
        seconds = time.monotonic() - started
        os.remove(self.disk_path(src))
        os.rmdir(os.path.dirname(self.disk_path(src)))  # as cluster_vm.migrate does
        return seconds

    def migrate(self, method, src, dst):
        """Seconds one migration took, end to end and of the migration proper; checks the result."""
        with tempfile.TemporaryDirectory() as folder:
            xml_files = self.virsh_xml(src, dst, folder) if method == "virsh" else []
            if method == "virsh":
                os.makedirs(os.path.dirname(self.disk_path(dst)), exist_ok=True)
            started = time.monotonic()
            proper = getattr(self, method)(src, dst, *xml_files)
            seconds = time.monotonic() - started
        domains = {node: salt(self.client, node, "cluster_vm.list_domains") for node in (src, dst)}
        if VM in domains[src] or domains[dst].get(VM) != "running" or os.path.exists(self.disk_path(src)) \
                or os.path.getsize(self.disk_path(dst)) < self.written:
            raise SystemExit(f"{method} {src}->{dst}: unexpected result: {domains}")
        return seconds, proper


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="migrations each way with each method")
    parser.add_argument("--dir", default="/tmp/vmc-bench-mig")
    args = parser.parse_args()

    lab = Lab(args.dir)
    lab.up(2)
    client = lab.client()
    times = {"ours": [], "virsh": []}
    proper = {"ours": [], "virsh": []}
    try:
        bench = Bench(lab, client)
        bench.create_vm("node1")
        print(f"lab: 2 nodes, {lab.accel.upper()}; VM {VM}: {MEMORY} memory, qcow2 disk {DISK_SIZE} virtual, "
              f"{WRITTEN} written")  # fmt: skip
        print(f"{'run':>3}  {'method':6} {'direction':14} {'seconds':>8} {'migration proper':>17}")
        nodes = ("node1", "node2")
        for step in range(4 * args.runs):
            method = "ours" if step % 4 in (0, 3) else "virsh"
            src, dst = nodes[step % 2], nodes[1 - step % 2]
            seconds, migration = bench.migrate(method, src, dst)
            times[method].append(seconds)
            proper[method].append(migration)
            print(f"{step + 1:3}  {method:6} {src + '->' + dst:14} {seconds:8.3f} {migration:17.3f}", flush=True)
    finally:
        client.destroy()
        lab.down()

    medians = {method: statistics.median(values) for method, values in times.items()}
    ratio = medians["ours"] / medians["virsh"]
    inner = {method: statistics.median(values) for method, values in proper.items()}
    print(f"median ours  (salt cluster_vm.migrate create_target_disks=True): {medians['ours']:.3f} s"
          f"   (disk creation + libvirt migrate3 inside: {inner['ours']:.3f} s)")  # fmt: skip
    print(f"median virsh (qemu-img create + virsh migrate + rm):             {medians['virsh']:.3f} s"
          f"   (virsh migrate alone:                     {inner['virsh']:.3f} s)")  # fmt: skip
    verdict = "met" if ratio <= TARGET_RATIO else "missed"
    print(f"median ratio ours/virsh: {ratio:.3f} (target <= {TARGET_RATIO:.2f}: {verdict})")


if __name__ == "__main__":
    main()
