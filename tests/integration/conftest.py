"""The integration tier: one real lab (salt-master, salt-minions, libvirtd + QEMU per node) per session."""

import os
import shutil

import pytest

from saltext.vmcluster.lab import Lab, leftover_processes

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


@pytest.fixture(scope="session")
def lab(tmp_path_factory):
    lab = Lab(f"/tmp/vmc-it-{os.getpid()}")
    lab.up(nodes=LAB_NODES)
    yield lab
    lab_dir = lab.dir
    lab.down()
    assert not lab_dir.exists()
    assert leftover_processes(lab_dir) == []


@pytest.fixture(scope="session")
def runner(lab):
    client = lab.runner()
    yield client
    client.destroy()


@pytest.fixture(scope="session")
def salt_client(lab):
    client = lab.client()
    yield client
    client.destroy()
