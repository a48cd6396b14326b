"""The README demo: bring up the lab and show the cluster through the operator's own commands."""

import subprocess
import sys
import time
from pathlib import Path


def _salt_run(lab, *args):
    """Run ``salt-run -c LAB_DIR ARGS`` as an operator would, echoing the command and its output."""
    argv = [str(Path(sys.executable).parent / "salt-run"), "-c", str(lab.dir), *args]
    print(f"\n$ salt-run -c {lab.dir} {' '.join(args)}", flush=True)
    started = time.monotonic()
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    print(result.stdout.rstrip())
    print(f"({time.monotonic() - started:.2f}s)")
    if result.returncode:
        raise SystemExit(f"salt-run {' '.join(args)} failed:\n{result.stderr}")


def run(lab, nodes=3, keep=False):
    """Bring the lab up (unless it runs), show the cluster, then take the lab down unless ``keep``."""
    if not lab.state:
        started = time.monotonic()
        print(f"Bringing up a lab at {lab.dir}: a salt-master and {nodes} nodes "
              "(salt-minion + libvirtd + QEMU each)...", flush=True)
        lab.up(nodes=nodes)
        print(f"Lab up in {time.monotonic() - started:.1f}s with {lab.accel.upper()} acceleration.")
    try:
        _salt_run(lab, "cluster.info")
        _salt_run(lab, "cluster.nodes")
    finally:
        if keep:
            print(f"\nThe lab keeps running: salt-run -c {lab.dir} cluster.nodes; "
                  f"vmcluster-lab --dir {lab.dir} down")
        else:
            lab.down()
            print(f"\nLab at {lab.dir} removed.")
    return 0
