"""Shared helpers for the DRBD tests."""

import os
import pathlib
import shutil

import pytest

# Real outputs of a two-node DRBD 8.4.11 pair driven by drbd-utils 9.22
# (copied from shared/data/drbd84-fixtures; see LAB.md, "Real LVM + DRBD").
FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "drbd84"
THIS_HOST = os.uname().nodename
# drbdadm 9 delegates to this parser and command builder when the kernel has DRBD 8.4.
DRBDADM_84 = "/lib/drbd/drbdadm-84"

needs_drbdadm = pytest.mark.skipif(shutil.which("drbdadm") is None, reason="drbdadm (drbd-utils) is not installed")
needs_kernel_drbd = pytest.mark.skipif(
    not os.path.exists("/proc/drbd"), reason="host kernel has no DRBD module; runs in the system tier"
)


def two_nodes(local=THIS_HOST, **extra):
    """The two nodes of a test resource; the first is this host (drbdadm only acts on its own node)."""
    return [
        {"name": local, "address": "127.0.0.1", "disk": "/dev/vg0/r0", **extra},
        {"name": "peer-node", "address": "127.0.0.2", "disk": "/dev/vg1/r0-data", **extra},
    ]
