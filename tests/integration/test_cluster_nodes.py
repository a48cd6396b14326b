"""cluster.nodes / cluster.info and the node facts, against the real lab."""

import subprocess
import sys
import time
from pathlib import Path

import libvirt

BIN = Path(sys.executable).parent

DOMAIN_XML = """<domain type='qemu'>
  <name>{name}</name><memory unit='MiB'>64</memory><vcpu>2</vcpu>
  <os><type arch='x86_64'>hvm</type></os>
  <devices><memballoon model='none'/></devices>
</domain>"""


def _nodes(runner, *args):
    ret = runner.cmd("cluster.nodes", list(args), print_event=False)
    assert ret["outputter"] == "cluster_table"
    return {row["node"]: row for row in ret["data"]}


def test_grain_reports_static_facts(salt_client):
    grains = salt_client.cmd("*", "grains.get", ["cluster_node"], timeout=30)
    assert set(grains) == {"node1", "node2", "node3"}
    for facts in grains.values():
        assert facts["cpus"] >= 1 and facts["memory_total"] > 0
        assert facts["hypervisor"] == "qemu" and facts["libvirt_version"].count(".") == 2
        assert facts["storage"]["file"].endswith("/instances")
        assert facts["drbd"]["userspace"]  # drbd-utils is installed; the kernel module is not
        assert facts["drbd"]["kernel"] is None


def test_nodes_table_has_live_figures_for_every_node(runner):
    rows = _nodes(runner)
    assert set(rows) == {"node1", "node2", "node3"}
    meminfo_total = int(Path("/proc/meminfo").read_text().split()[1]) // 1024
    for row in rows.values():
        assert row["state"] == "up"
        assert row["mtotal"] == meminfo_total  # /proc/meminfo, not libvirt's one-NUMA-node figure
        assert 0 < row["mfree"] < row["mtotal"]
        assert 0 < row["dfree"] <= row["dtotal"]


def test_a_running_domain_shows_in_its_node_only(lab, runner):
    before = _nodes(runner)
    conn = libvirt.open(lab.node("node2").libvirt_uri)
    dom = conn.defineXML(DOMAIN_XML.format(name="probe1"))
    dom.create()
    try:
        after = _nodes(runner)
        assert after["node2"]["pinst"] == before["node2"]["pinst"] + 1
        assert after["node1"]["pinst"] == before["node1"]["pinst"]
        resources = lab.client().cmd("node2", "cluster_node.resources", timeout=30)["node2"]
        assert resources["domains"]["running"] == ["probe1"] and resources["vcpus_used"] == 2
        # the domain's 64 MiB are promised to it: free = total - node OS - instances
        memory = resources["memory"]
        assert memory["instances"] == 64
        assert memory["free"] == memory["total"] - memory["node"] - 64
    finally:
        dom.destroy()
        dom.undefine()
        conn.close()


def test_wildcards_select_nodes(runner):
    assert set(_nodes(runner, "node[13]")) == {"node1", "node3"}
    assert set(_nodes(runner, "node2,node3")) == {"node2", "node3"}


def test_unknown_node_pattern_is_a_clear_error(lab):
    result = subprocess.run(
        [str(BIN / "salt-run"), "-c", str(lab.dir), "cluster.nodes", "web*"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1
    assert "no node matches 'web*'; nodes: node1, node2, node3" in result.stdout


def test_invalid_pillar_is_refused_naming_the_key(lab, runner):
    pillar = lab.dir / "pillar" / "cluster.sls"
    good = pillar.read_text()
    pillar.write_text("cluster:\n  nodes:\n    node1:\n      grup: x\n")
    try:
        ret = runner.cmd("cluster.nodes", [], print_event=False)
    finally:
        pillar.write_text(good)
    assert ret["retcode"] == 1
    assert "cluster:nodes:node1:grup" in ret["error"]


def test_cli_prints_the_table(lab):
    started = time.monotonic()
    out = subprocess.run(
        [str(BIN / "salt-run"), "-c", str(lab.dir), "cluster.nodes"], capture_output=True, text=True, check=True,
        timeout=60,
    ).stdout
    assert time.monotonic() - started < 30
    lines = out.splitlines()
    assert lines[0].split() == ["Node", "Dtotal", "Dfree", "Mtotal", "Mnode", "Mfree", "Pinst", "Sinst", "State"]
    assert [line.split()[0] for line in lines[1:]] == ["node1", "node2", "node3"]


def test_info_summarises(runner):
    info = runner.cmd("cluster.info", [], print_event=False)
    assert info["cluster"] == "lab"
    assert info["nodes"] == {"total": 3, "up": 3, "down": []}
    assert info["memory"]["free"] > 0 and len(info["disk"]["shared"]) == 1


def test_dead_node_shows_as_down_not_as_an_error(lab, runner):
    node = lab.node("node3")
    node.kill()
    try:
        rows = _nodes(runner, "*")
        assert rows["node3"]["state"] == "down" and rows["node3"]["mfree"] is None
        assert rows["node1"]["state"] == "up"
        info = runner.cmd("cluster.info", [], print_event=False)
        assert info["nodes"]["down"] == ["node3"]
    finally:
        node.start()
        lab.wait_ready(["node3"])
    assert _nodes(runner, "node3")["node3"]["state"] == "up"
