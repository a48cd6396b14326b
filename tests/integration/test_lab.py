"""The lab itself: real daemons per node, separate libvirtds, crash and restart, clean tear-down."""

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import libvirt

from saltext.vmcluster.lab import Lab, kvm_usable, leftover_processes, process_alive

BIN = Path(sys.executable).parent


def _host_uuid(uri):
    conn = libvirt.open(uri)
    try:
        return ET.fromstring(conn.getCapabilities()).findtext("host/uuid")
    finally:
        conn.close()


def test_status_shows_master_and_nodes(lab):
    status = lab.status()
    assert status["master"]["running"]
    assert set(status["nodes"]) == {"node1", "node2", "node3"}
    assert all(node["running"] for node in status["nodes"].values())
    assert status["accel"] == ("kvm" if kvm_usable() else "tcg")


def test_each_node_has_its_own_libvirtd(lab):
    uuids = {_host_uuid(node.libvirt_uri) for node in lab.nodes}
    assert len(uuids) == len(lab.nodes)


def test_minions_run_inside_their_node(salt_client):
    replies = salt_client.cmd("*", "cmd.run", ["hostname; ls /run/libvirt"], timeout=30)
    for name, out in replies.items():
        hostname, *rest = out.split()
        assert hostname == name
        assert "libvirt-sock" in rest


def test_salt_cli_works_with_the_lab_dir(lab):
    out = subprocess.run(
        [str(BIN / "salt"), "-c", str(lab.dir), "--out=json", "--static", "*", "test.ping"],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout
    assert all(name in out for name in ("node1", "node2", "node3"))


def test_cli_status_and_down_remove_everything(tmp_path):
    lab_dir = f"/tmp/vmc-down-{os.getpid()}"
    cli = [str(BIN / "vmcluster-lab"), "--dir", lab_dir]
    subprocess.run([*cli, "up", "--nodes", "1"], check=True, capture_output=True, timeout=120)
    lab = Lab(lab_dir)
    pids = [lab.state["master"], lab.node("node1").pid]
    assert subprocess.run([*cli, "status"], capture_output=True, text=True, check=True).stdout.count('"running": true') == 2
    subprocess.run([*cli, "down"], check=True, capture_output=True, timeout=60)
    assert not Path(lab_dir).exists()
    assert leftover_processes(lab_dir) == []
    assert not any(process_alive(pid) for pid in pids)
    assert subprocess.run([*cli, "status"], capture_output=True).returncode == 1
