"""PID 1 of a lab node: private libvirt paths, then libvirtd and salt-minion.

Started by the lab inside fresh mount, UTS and PID namespaces::

    unshare --mount --uts --pid --fork --mount-proc --propagation private \\
        python -m saltext.vmcluster.lab.nodeinit NODE_DIR HOSTNAME

It reaps orphans (exited qemu processes would stay zombies otherwise), stops
its children on SIGTERM, and dies with the whole namespace on SIGKILL: a
faithful node crash.
"""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

# Path -> folder under NODE_DIR/libvirt that replaces it inside the node.
PRIVATE_DIRS = {
    "/run/libvirt": "run",
    "/etc/libvirt": "etc",
    "/var/lib/libvirt": "lib",
    "/var/log/libvirt": "log",
    "/var/cache/libvirt": "cache",
}
STOP_GRACE_SECONDS = 5


def _mount(*args):
    subprocess.run(["mount", *args], check=True)


def make_private_paths(node_dir):
    """Give the node its own /run and libvirt folders (inside this mount namespace only)."""
    _mount("-t", "tmpfs", "-o", "mode=755", "tmpfs", "/run")
    os.makedirs("/run/libvirt")
    for target, name in PRIVATE_DIRS.items():
        _mount("--bind", str(node_dir / "libvirt" / name), target)


def start_daemons(node_dir):
    """Start libvirtd, wait for its socket, then start the salt-minion."""
    bindir = Path(sys.executable).parent
    logs = node_dir / "log"
    libvirtd = subprocess.Popen(
        ["libvirtd", "--config", "/etc/libvirt/libvirtd.conf"],
        stdout=open(logs / "libvirtd.out", "ab"),
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 30
    while not os.path.exists("/run/libvirt/libvirt-sock"):
        if libvirtd.poll() is not None or time.monotonic() > deadline:
            sys.exit(f"libvirtd did not start; see {logs / 'libvirtd.out'}")
        time.sleep(0.02)
    minion = subprocess.Popen(
        [str(bindir / "salt-minion"), "-c", str(node_dir / "etc"), "--log-level", "quiet"],
        stdout=open(logs / "minion.out", "ab"),
        stderr=subprocess.STDOUT,
    )
    return [minion, libvirtd]


def reap_forever(children):
    """Reap every child (orphans included); on SIGTERM stop the daemons and exit."""

    def stop(_signum, _frame):
        for child in children:
            if child.poll() is None:
                child.terminate()
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        while any(child.poll() is None for child in children) and time.monotonic() < deadline:
            time.sleep(0.05)
        sys.exit(0)  # the kernel kills whatever is left in the namespace

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while True:
        try:
            os.wait()
        except ChildProcessError:
            time.sleep(1)


def main(argv=None):
    node_dir, hostname = argv or sys.argv[1:]
    node_dir = Path(node_dir)
    socket.sethostname(hostname)
    make_private_paths(node_dir)
    reap_forever(start_daemons(node_dir))


if __name__ == "__main__":
    main()
