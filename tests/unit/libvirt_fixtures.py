"""Fixtures on libvirt's test:///default driver, shared by the cluster_vm tests."""

import itertools

import pytest

libvirt = pytest.importorskip("libvirt")

URI = "test:///default"
_counter = itertools.count()


@pytest.fixture
def conn():
    """Held open for the test: test:///default forgets its domains when its last connection closes."""
    connection = libvirt.open(URI)
    yield connection
    connection.close()


@pytest.fixture
def name(conn):
    """A fresh domain name; whatever the test left behind is removed."""
    vm = f"vm{next(_counter)}"
    yield vm
    try:
        dom = conn.lookupByName(vm)
    except libvirt.libvirtError:
        return
    if dom.isActive():
        dom.destroy()
    dom.undefine()
