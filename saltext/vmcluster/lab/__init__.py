"""A local lab: a salt-master and N nodes (salt-minion + libvirtd + QEMU) on this machine.

Each node runs in its own mount, UTS and PID namespaces (see ``nodeinit``), so
each has a private libvirtd reachable as ``qemu:///system`` from its minion,
exactly as on a real node. The lab directory doubles as the Salt config dir:
``salt-run -c LAB_DIR cluster.nodes`` and ``salt -c LAB_DIR '*' test.ping``.
"""

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from saltext.vmcluster.lab import config

DEFAULT_DIR = Path("/tmp/vmc-lab")
STATE_FILE = "lab.json"
LIBVIRT_DIRS = ("etc", "lib", "log", "cache", "run")
NAMESPACE_MOUNTPOINTS = ("/var/lib/libvirt", "/var/log/libvirt", "/var/cache/libvirt")


class LabError(Exception):
    """The lab cannot do what was asked; the message says why and what to do."""


def states_dir():
    """The SLS folder served as file_roots: the checkout's ``states/`` (editable install, or cwd)."""
    for root in (Path(__file__).resolve().parents[3], Path.cwd()):
        if (root / "states").is_dir() and (root / "setup.cfg").is_file():
            return root / "states"
    return None


def kvm_usable():
    """True when /dev/kvm can be opened for read and write."""
    try:
        os.close(os.open("/dev/kvm", os.O_RDWR))
    except OSError:
        return False
    return True


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def process_alive(pid):
    """True if ``pid`` runs (a zombie does not count: it only waits to be reaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _spawn(argv, log_path):
    """Start a long-running process detached from us (own session), output to a log."""
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        ).pid


def bridge_name(lab_dir):
    """The lab's bridge: ``vmc`` and a hash of the lab dir, so that labs side by side have their own."""
    return "vmc" + hashlib.sha256(str(lab_dir).encode()).hexdigest()[:8]


def _ip(*args):
    try:
        subprocess.run(["ip", *args], check=True, capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        raise LabError(f"ip {' '.join(args)} failed ({getattr(exc, 'stderr', '') or exc}); the lab needs root "
                       "and iproute2") from exc


def add_bridge(name):
    """Create the lab's bridge for instance NICs. The nodes share the host's network namespace, so each
    has it, as each real node has its br0. It stays down, with no address and no uplink: no frame
    leaves the lab through it."""
    if not os.path.isdir(f"/sys/class/net/{name}"):
        _ip("link", "add", name, "type", "bridge")


def remove_bridge(name):
    """Delete the lab's bridge (the taps of its instances went with their QEMUs)."""
    if name and os.path.isdir(f"/sys/class/net/{name}"):
        _ip("link", "del", name)


class NamespaceNode:
    """One lab node: a salt-minion and a libvirtd inside private namespaces."""

    def __init__(self, lab, name, index):
        self.lab = lab
        self.name = name
        self.index = index
        self.dir = lab.dir / "nodes" / name

    @property
    def pid(self):
        return self.lab.state["nodes"].get(self.name)

    @property
    def libvirt_uri(self):
        """URI to reach this node's libvirtd from outside the node."""
        return config.libvirt_uri(self.dir)

    @property
    def storage(self):
        return {"file": str(self.dir / "instances"), "sharedfile": str(self.lab.dir / "shared")}

    def write_config(self):
        for name in LIBVIRT_DIRS:
            (self.dir / "libvirt" / name).mkdir(parents=True, exist_ok=True)
        (self.dir / "log").mkdir(exist_ok=True)
        (self.dir / "instances").mkdir(exist_ok=True)
        etc = self.dir / "libvirt" / "etc"
        _write(etc / "libvirtd.conf", config.render_libvirt_conf(config.libvirtd_conf(self.dir)))
        _write(etc / "qemu.conf", config.render_libvirt_conf(config.qemu_conf(self.index)))
        _write(etc / "libvirt.conf", "# written by vmcluster-lab\n")
        minion = config.minion_config(self.lab.dir, self.dir, self.name, self.lab.state["ret_port"], self.storage)
        _write(self.dir / "etc" / "minion", config.render_yaml(minion))

    def start(self):
        """Boot the node: its namespaces, libvirtd and salt-minion."""
        if self.pid and process_alive(self.pid):
            raise LabError(f"node {self.name} already runs (pid {self.pid})")
        # A boot starts with an empty /run, as on a real machine: libvirt must not find the status
        # files of domains that died with the node and list them as running while it reconnects.
        run_dir = self.dir / "libvirt" / "run"
        shutil.rmtree(run_dir, ignore_errors=True)
        run_dir.mkdir()
        argv = [
            "unshare", "--mount", "--uts", "--pid", "--fork", "--mount-proc", "--propagation", "private",
            sys.executable, "-m", "saltext.vmcluster.lab.nodeinit", str(self.dir), self.name,
        ]  # fmt: skip
        unshare_pid = _spawn(argv, self.dir / "log" / "node.out")
        self.lab.state["nodes"][self.name] = self._namespace_init(unshare_pid)
        self.lab.save()

    @staticmethod
    def _namespace_init(unshare_pid):
        """The host PID of the namespace's PID 1 (the child that unshare forks)."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                children = Path(f"/proc/{unshare_pid}/task/{unshare_pid}/children").read_text().split()
            except OSError:
                children = []
            if children:
                return int(children[0])
            time.sleep(0.01)
        raise LabError(f"unshare (pid {unshare_pid}) forked no node init")

    def kill(self):
        """Crash the node: SIGKILL to its PID 1 takes every process of the namespace with it."""
        if self.pid and process_alive(self.pid):
            os.kill(self.pid, signal.SIGKILL)
            _wait_gone([self.pid])

    def stop(self):
        """Shut the node down cleanly (minion and libvirtd get SIGTERM)."""
        if self.pid and process_alive(self.pid):
            os.kill(self.pid, signal.SIGTERM)
            if not _wait_gone([self.pid], timeout=10):
                self.kill()

    def running(self):
        return bool(self.pid) and process_alive(self.pid)


def _wait_gone(pids, timeout=10.0):
    deadline = time.monotonic() + timeout
    while any(process_alive(pid) for pid in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


class Lab:
    """The lab rooted at ``lab_dir`` (also its Salt config dir)."""

    def __init__(self, lab_dir=DEFAULT_DIR):
        self.dir = Path(lab_dir).resolve()
        state_path = self.dir / STATE_FILE
        self.state = json.loads(state_path.read_text()) if state_path.exists() else {}

    @property
    def nodes(self):
        names = sorted(self.state.get("nodes", {}), key=lambda n: (len(n), n))
        return [NamespaceNode(self, name, index) for index, name in enumerate(names)]

    def node(self, name):
        for node in self.nodes:
            if node.name == name:
                return node
        raise LabError(f"no node named {name!r} in the lab at {self.dir}; nodes: {[n.name for n in self.nodes]}")

    def save(self):
        _write(self.dir / STATE_FILE, json.dumps(self.state, indent=2, sort_keys=True))

    @property
    def accel(self):
        return self.state.get("accel", "kvm" if kvm_usable() else "tcg")

    # -- bring-up ---------------------------------------------------------------

    def up(self, nodes=3, timeout=60):
        """Start the master and ``nodes`` nodes; return when every minion answers."""
        if self.state:
            raise LabError(f"a lab already exists at {self.dir}; run `vmcluster-lab down --dir {self.dir}` first")
        if not 1 <= nodes <= 64:
            raise LabError(f"nodes: {nodes} is out of range; give 1 to 64")
        for path in NAMESPACE_MOUNTPOINTS:
            if not os.path.isdir(path):
                raise LabError(f"{path} is missing: run scripts/setup.sh (it creates libvirt's folders)")
        names = [f"node{i}" for i in range(1, nodes + 1)]
        self.dir.mkdir(parents=True, exist_ok=True)
        self.state = {
            "publish_port": _free_port(),
            "ret_port": _free_port(),
            "accel": "kvm" if kvm_usable() else "tcg",
            "master": None,
            "nodes": {name: None for name in names},
            "bridge": bridge_name(self.dir),
        }
        self.save()
        try:
            self._write_master_config(names)
            self._spawn_master()
            add_bridge(self.state["bridge"])
            for node in self.nodes:
                node.write_config()
                node.start()
            self.wait_ready(names, timeout)
        except BaseException:
            self.down()
            raise

    def _write_master_config(self, names):
        (self.dir / "log").mkdir(exist_ok=True)
        (self.dir / "shared").mkdir(exist_ok=True)
        sls_dir = states_dir() or self.dir / "states"
        sls_dir.mkdir(exist_ok=True)
        master = config.master_config(self.dir, self.state["publish_port"], self.state["ret_port"], sls_dir)
        _write(self.dir / "master", config.render_yaml(master))
        _write(self.dir / "pillar" / "top.sls", config.render_yaml(config.PILLAR_TOP))
        pillar = config.cluster_pillar(names, self.state["bridge"])
        _write(self.dir / "pillar" / "cluster.sls", config.render_yaml(pillar))

    def _spawn_master(self):
        self.state["master"] = _spawn(
            [str(Path(sys.executable).parent / "salt-master"), "-c", str(self.dir), "--log-level", "quiet"],
            self.dir / "log" / "master.out",
        )
        self.save()

    def kill_master(self):
        """Crash the master: SIGKILL to its process group takes its workers with it (the nodes keep running)."""
        master = self.state.get("master")
        if master and process_alive(master):
            os.killpg(master, signal.SIGKILL)
            _wait_gone([master])

    def restart_master(self, timeout=60):
        """Start the master again (after :meth:`kill_master`); return when every running node answers it."""
        master = self.state.get("master")
        if master and process_alive(master):
            raise LabError(f"the master already runs (pid {master}); kill_master() first")
        self._spawn_master()
        self.wait_ready([node.name for node in self.nodes if node.running()], timeout)

    def client(self):
        """A LocalClient talking to this lab's master."""
        import salt.client  # pylint: disable=import-outside-toplevel

        return salt.client.LocalClient(c_path=str(self.dir / "master"))

    def master_opts(self):
        """This lab's salt-master configuration."""
        import salt.config  # pylint: disable=import-outside-toplevel

        return salt.config.master_config(str(self.dir / "master"))

    def runner(self, **overrides):
        """A RunnerClient of this lab's master (``overrides``: master options to change)."""
        import salt.runner  # pylint: disable=import-outside-toplevel

        return salt.runner.RunnerClient({**self.master_opts(), **overrides})

    def wait_ready(self, names, timeout=60):
        """Wait until every named minion answers test.ping."""
        from salt.exceptions import (  # pylint: disable=import-outside-toplevel
            AuthenticationError,
            SaltClientError,
        )

        client = None
        deadline = time.monotonic() + timeout
        missing = set(names)
        while missing:
            if time.monotonic() > deadline:
                raise LabError(f"nodes {sorted(missing)} did not answer within {timeout}s; logs in {self.dir}")
            dead = [n for n in missing if not self.node(n).running()]
            if dead:
                raise LabError(f"nodes {dead} died during start; see {self.dir}/nodes/<node>/log")
            try:
                client = client or self.client()
                replies = client.cmd(sorted(missing), "test.ping", tgt_type="list", timeout=2)
            except (SaltClientError, AuthenticationError):  # the master is still starting (no key, no socket yet)
                client = None
                time.sleep(0.2)
                continue
            missing -= {name for name, ok in replies.items() if ok is True}

    # -- status and tear-down ---------------------------------------------------

    def status(self):
        """What runs: the master and each node, with PIDs and the acceleration used."""
        master = self.state.get("master")
        return {
            "dir": str(self.dir),
            "accel": self.accel,
            "bridge": self.state.get("bridge"),
            "master": {"pid": master, "running": bool(master) and process_alive(master)},
            "nodes": {
                n.name: {"pid": n.pid, "running": n.running(), "libvirt_uri": n.libvirt_uri} for n in self.nodes
            },
        }

    def down(self):
        """Stop everything the lab started and remove everything it made."""
        for node in self.nodes:
            node.kill()  # the lab goes away: no need for the minions' graceful stop
        master = self.state.get("master")
        pids = [master] if master and process_alive(master) else []
        for pid in pids:
            os.kill(pid, signal.SIGTERM)  # the master stops its workers
        if not _wait_gone(pids, timeout=10):
            for pid in pids:
                if process_alive(pid):
                    os.kill(pid, signal.SIGKILL)
        self._kill_leftovers()
        remove_bridge(self.state.get("bridge"))
        shutil.rmtree(self.dir, ignore_errors=True)
        self.state = {}

    def _kill_leftovers(self):
        """Kill any process still running from the lab dir (e.g. master workers)."""
        pids = leftover_processes(self.dir)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        _wait_gone(pids, timeout=5)


def _ancestors():
    """Our PID and those of every process above us."""
    pids, pid = set(), os.getpid()
    while pid > 1 and pid not in pids:
        pids.add(pid)
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return pids


def leftover_processes(lab_dir):
    """PIDs of live processes with an argument in ``lab_dir`` (should be none after down).

    An argument counts when it is the dir or a path below it: ``/tmp/lab`` must not
    match the processes of a neighbour lab at ``/tmp/lab2``.
    """
    root = str(Path(lab_dir).resolve())
    ours = _ancestors()  # e.g. `timeout 600 vmcluster-lab --dir LAB demo` runs us; it is no leftover
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in ours:
            continue
        try:
            args = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if any(a == root or a.startswith(root + "/") for a in args) and process_alive(int(entry.name)):
            found.append(int(entry.name))
    return found
