"""The README demo: bring up the lab and show the cluster through the operator's own commands."""

import json
import subprocess
import sys
import time
from pathlib import Path

DEMO_VM = "demo1"


def _cli(lab, tool, *args, parse_json=False):
    """Run a Salt CLI (``salt`` or ``salt-run``) on the lab as an operator would, echoing it."""
    argv = [str(Path(sys.executable).parent / tool), "-c", str(lab.dir), *args]
    print(f"\n$ {tool} -c {lab.dir} {' '.join(args)}", flush=True)
    started = time.monotonic()
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    print(result.stdout.rstrip())
    print(f"({time.monotonic() - started:.2f}s)")
    if result.returncode:
        raise SystemExit(f"{tool} {' '.join(args)} failed:\n{result.stderr}")
    return json.loads(result.stdout) if parse_json else result.stdout


def _vm_on_node1(lab):
    """Create a disk, define and start a VM on node1 through Salt, show the figures, clean up."""
    domain_type = "kvm" if lab.accel == "kvm" else "qemu"
    disk = _cli(lab, "salt", "--out=json", "--static", "node1", "cluster_disk.create", DEMO_VM, "0", "1G", "file",
                parse_json=True)["node1"]
    try:
        _cli(lab, "salt", "node1", "cluster_vm.define", DEMO_VM, "128M", "vcpus=1", f"type={domain_type}",
             f"disks=[{disk['path']}]")
        _cli(lab, "salt", "node1", "cluster_vm.start", DEMO_VM)
        _cli(lab, "salt", "node1", "cluster_vm.list_domains")
        _cli(lab, "salt-run", "cluster.nodes")
    finally:
        _cli(lab, "salt", "node1", "cluster_vm.destroy", DEMO_VM)
        _cli(lab, "salt", "node1", "cluster_vm.undefine", DEMO_VM)
        _cli(lab, "salt", "node1", "cluster_disk.remove", DEMO_VM, "0", "file")


def run(lab, nodes=3, keep=False):
    """Bring the lab up (unless it runs), show the cluster, then take the lab down unless ``keep``."""
    if not lab.state:
        started = time.monotonic()
        print(f"Bringing up a lab at {lab.dir}: a salt-master and {nodes} nodes "
              "(salt-minion + libvirtd + QEMU each)...", flush=True)
        lab.up(nodes=nodes)
        print(f"Lab up in {time.monotonic() - started:.1f}s with {lab.accel.upper()} acceleration.")
    try:
        _cli(lab, "salt-run", "cluster.info")
        _cli(lab, "salt-run", "cluster.nodes")
        _vm_on_node1(lab)
    finally:
        if keep:
            print(f"\nThe lab keeps running: salt-run -c {lab.dir} cluster.nodes; "
                  f"vmcluster-lab --dir {lab.dir} down")
        else:
            lab.down()
            print(f"\nLab at {lab.dir} removed.")
    return 0
