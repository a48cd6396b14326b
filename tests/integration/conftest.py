"""The integration tier: one real lab (salt-master, salt-minions, libvirtd + QEMU per node) per session."""

import contextlib
import os
import shutil
import threading
import time

import libvirt
import pytest

from saltext.vmcluster.lab import Lab, leftover_processes
from saltext.vmcluster.store import Store

LAB_NODES = 3


def lab_prerequisites_missing():
    """Why the lab cannot run here, or None."""
    if os.geteuid() != 0:
        return "the lab needs root (namespaces, mounts)"
    for tool in ("libvirtd", "unshare", "qemu-system-x86_64"):
        if not shutil.which(tool):
            return f"{tool} is not installed: run scripts/setup.sh"
    return None


def pytest_collection_modifyitems(items):
    reason = lab_prerequisites_missing()
    for item in items:
        if "tests/integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)
            if reason:
                item.add_marker(pytest.mark.skip(reason=reason))


class Sampler(threading.Thread):
    """Every 100 ms: which node runs which domain (state running), straight from each libvirtd."""

    def __init__(self, lab, interval=0.1):
        super().__init__(daemon=True)
        self.lab, self.interval = lab, interval
        self.stop = threading.Event()
        self.samples = 0
        self.doubles = []  # (time, domain, nodes)
        self.conns = {}

    def _running(self, node):
        try:
            conn = self.conns.get(node.name) or libvirt.open(node.libvirt_uri)
            self.conns[node.name] = conn
            return [d.name() for d in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_RUNNING)]
        except libvirt.libvirtError:  # a killed node: nothing runs there
            self.conns.pop(node.name, None)
            return []

    def run(self):
        while not self.stop.is_set():
            seen = {}
            for node in self.lab.nodes:
                for name in self._running(node):
                    seen.setdefault(name, []).append(node.name)
            # nodes are read one after another: a domain migrating between two reads shows on both.
            # It ran on two at once only if the nodes read before the last one still run it now.
            self.doubles += [(time.time(), name, nodes) for name, nodes in seen.items() if len(nodes) > 1
                             and all(name in self._running(self.lab.node(n)) for n in nodes[:-1])]
            self.samples += 1
            self.stop.wait(self.interval)


@pytest.fixture(scope="module")
def no_double_runs(lab):
    """For a whole test module: a Sampler that fails the module if an instance ran on two nodes at once."""
    thread = Sampler(lab)
    thread.start()
    yield thread
    thread.stop.set()
    thread.join()
    for conn in thread.conns.values():
        conn.close()
    assert thread.samples > 10
    assert thread.doubles == [], "an instance ran on two nodes at once"


@contextlib.contextmanager
def lab_running(name):
    """A lab of LAB_NODES nodes at ``/tmp/vmc-it-<pid><name>``, taken down without leftovers afterwards."""
    lab = Lab(f"/tmp/vmc-it-{os.getpid()}{name}")
    lab.up(nodes=LAB_NODES)
    yield lab
    lab_dir = lab.dir
    lab.down()
    assert not lab_dir.exists()
    assert leftover_processes(lab_dir) == []


@pytest.fixture(scope="session")
def lab():
    with lab_running("") as shared:
        yield shared


@pytest.fixture(scope="module")
def module_lab(request):
    """A lab of the module's own, for tests that crash its master (the shared one's clients would not survive)."""
    with lab_running("-" + request.module.__name__) as own:
        yield own


@pytest.fixture(scope="module")  # a module may use a lab of its own (module_lab)
def runner(lab):
    client = lab.runner()
    yield client
    client.destroy()


@pytest.fixture(scope="module")
def store(lab):
    """The cluster's store, as the lab master's runner sees it."""
    return Store.from_opts(lab.master_opts())


@pytest.fixture
def cleanup(runner, store):
    """Append instance names: each is removed (``cluster.remove``) after the test."""
    names = []
    yield names
    for name in names:
        if store.instance(name):
            assert runner.cmd("cluster.remove", [name], print_event=False).get("state") == "done"


@pytest.fixture(scope="module")
def salt_client(lab):
    """A LocalClient of this module's lab (one made before another lab's master restarted stops
    reaching its own master: Salt keeps per-process state across LocalClients)."""
    client = lab.client()
    yield client
    client.destroy()
