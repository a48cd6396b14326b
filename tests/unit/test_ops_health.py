"""verify's comparisons and the watcher's decisions, on plain dicts; N+1 and modify's room check on planner models."""

from saltext.vmcluster.config import ClusterConfig, NodeConfig
from saltext.vmcluster.ops import changes, health
from saltext.vmcluster.ops.engine import new_job, plan
from saltext.vmcluster.planner.live import cluster_from_live
from saltext.vmcluster.planner.score import NodeLoads

NODES = ("node1", "node2", "node3")
GIB = 1024 ** 3


def rec(name, primary, admin="up", template="file", memory=128, vcpus=1, secondary=None, disks=1):
    return {"name": name, "template": template, "memory": memory, "vcpus": vcpus, "admin_state": admin,
            "primary": primary, "secondary": secondary, "disks": [{"size": GIB}] * disks, "nics": [], "tags": []}


def reply(free=20000, **domains):
    """A cluster_node.resources reply; domains: name=(running, memory, vcpus)."""
    return {
        "memory": {"total": 24000, "node": 1000, "instances": 0, "free": free}, "cpus": 2,
        "storage": {"file": {"location": "/srv", "total": 100000, "free": 90000}},
        "instances": {n: {"running": r, "memory": m, "vcpus": v} for n, (r, m, v) in domains.items()},
    }


def checks(rows):
    return {(r["check"], r["node"], r["instance"]): r for r in rows}


def test_missing_stale_unknown_and_admin_down_running_domains():
    records = {"web1": rec("web1", "node1"), "web2": rec("web2", "node2"), "db1": rec("db1", "node3", admin="down")}
    replies = {
        "node1": reply(web2=(False, 128, 1), ghost=(True, 64, 1)),  # web1 missing; web2 stale; ghost unknown
        "node2": reply(web2=(True, 128, 1)),
        "node3": reply(db1=(True, 128, 1)),  # admin-down but running
    }
    found = checks(health.domain_findings(records, replies))
    assert set(found) == {("missing-domain", "node1", "web1"), ("stale-domain", "node1", "web2"),
                          ("unknown-domain", "node1", "ghost"), ("admin-down-running", "node3", "db1")}
    assert found[("missing-domain", "node1", "web1")]["severity"] == "error"
    assert found[("missing-domain", "node1", "web1")]["fix"] == "salt-run cluster.start web1"
    assert found[("stale-domain", "node1", "web2")]["fix"] == "salt node1 cluster_vm.remove_stale '[web2]'"
    assert found[("stale-domain", "node1", "web2")]["severity"] == "warning"
    assert found[("unknown-domain", "node1", "ghost")]["fix"].startswith("salt node1 cluster_vm.destroy ghost; ")
    assert found[("admin-down-running", "node3", "db1")]["fix"] == "salt-run cluster.stop db1"


def test_a_running_copy_off_its_primary_is_an_error_and_pending_changes_are_noted():
    records = {"web1": rec("web1", "node1", memory=256)}
    replies = {"node1": reply(web1=(True, 128, 1)), "node2": reply(web1=(True, 128, 1))}
    found = checks(health.domain_findings(records, replies))
    assert found[("stale-domain", "node2", "web1")]["severity"] == "error"
    assert found[("pending-change", "node1", "web1")]["fix"] == "salt-run cluster.reboot web1"
    assert "applies at next start" in found[("pending-change", "node1", "web1")]["detail"]


def test_healthy_cluster_has_no_findings():
    records = {"web1": rec("web1", "node1"), "web2": rec("web2", "node2", admin="down")}
    replies = {"node1": reply(web1=(True, 128, 1)), "node2": reply(web2=(False, 128, 1)), "node3": reply()}
    disks = {"node1": [{"instance": "web1", "index": 0, "template": "file", "path": "/a/web1/disk0.qcow2"}],
             "node2": [{"instance": "web2", "index": 0, "template": "file", "path": "/b/web2/disk0.qcow2"}]}
    loads = NodeLoads(cluster_from_live(_cfg(), replies, records, {}))
    assert health.findings(NODES, records, {}, replies, disks, {}, health.n1_failing(loads)) == []


def test_nodes_down_and_offline_nodes_holding_instances():
    records = {"web1": rec("web1", "node2"), "web2": rec("web2", "node3")}
    flags = {"node3": {"offline": True, "drained": False}}
    found = checks(health.node_findings(NODES, records, flags, {"node1": reply()}))
    assert set(found) == {("node-down", "node2", "-"), ("offline-node", "node3", "-")}
    assert found[("node-down", "node2", "-")]["fix"] == "salt-run cluster.evacuate node2"
    assert "primary of web1" in found[("node-down", "node2", "-")]["detail"]
    empty = checks(health.node_findings(NODES, {}, {}, {"node1": reply(), "node3": reply()}))
    assert empty[("node-down", "node2", "-")]["fix"] == "salt-run cluster.node_modify node2 offline=True"


def test_orphan_disks_are_reported_once_per_path():
    records = {"web1": rec("web1", "node1"), "sh1": rec("sh1", "node2", template="sharedfile")}
    shared = {"instance": "sh1", "index": 0, "template": "sharedfile", "path": "/shared/sh1/disk0.qcow2"}
    gone = {"instance": "old", "index": 0, "template": "sharedfile", "path": "/shared/old/disk0.qcow2"}
    disks = {
        "node1": [{"instance": "web1", "index": 0, "template": "file", "path": "/n1/web1/disk0.qcow2"},
                  {"instance": "web1", "index": 1, "template": "file", "path": "/n1/web1/disk1.qcow2"}, shared, gone],
        "node2": [{"instance": "web1", "index": 0, "template": "file", "path": "/n2/web1/disk0.qcow2"}, shared, gone],
        "node3": "Minion did not return",
    }
    found = list(health.disk_findings(records, disks))
    assert [(r["node"], r["detail"].split()[-1]) for r in found] == [
        ("node1", "/n1/web1/disk1.qcow2"), ("node1", "/shared/old/disk0.qcow2"), ("node2", "/n2/web1/disk0.qcow2")]
    assert found[0]["fix"] == "salt node1 cluster_disk.remove web1 1 file"


def _drbd_state(connection="Connected", disk="UpToDate", peer_disk="UpToDate", replication="Established", done=None):
    return {"role": "Primary", "volumes": [{"volume": 0, "disk": disk}],
            "peers": [{"name": "node2", "connection": connection, "volumes": [
                {"replication": replication, "peer_disk": peer_disk, "done": done}]}]}


def test_drbd_not_up_not_connected_resyncing_or_without_module():
    records = {"db1": rec("db1", "node1", template="drbd", secondary="node2", disks=2)}
    drbd = {"node1": {"db1.disk0": _drbd_state("StandAlone"),
                      "db1.disk1": _drbd_state(peer_disk="Inconsistent", replication="SyncSource", done=40.5)},
            "node2": health.NO_DRBD_MODULE}
    found = [(r["severity"], r["node"], r["detail"], r["fix"]) for r in health.drbd_findings(records, drbd)]
    assert found == [
        ("error", "node1", "db1.disk0 not connected to node2", "salt node1 drbd.adjust db1.disk0"),
        ("warning", "node1", "db1.disk1 resyncing, 40.5% done", "salt node1 drbd.wait_sync db1.disk1"),
        ("info", "node2", health.NO_DRBD_MODULE, "salt node2 drbd.status"),
    ]
    assert [r["detail"] for r in health.drbd_findings(records, {"node1": {}})] == [
        "db1.disk0 is not up", "db1.disk1 is not up"]
    assert list(health.drbd_findings(records, {"node1": {"db1.disk0": _drbd_state(),
                                                         "db1.disk1": _drbd_state()}})) == []
    assert health.drbd_to_reconnect({"a": _drbd_state("StandAlone"), "b": _drbd_state(),
                                     "c": _drbd_state("Connecting"), "d": {"peers": []}}) == ["a", "c", "d"]


def test_unknown_nodes_and_severity_order():
    records = {"web1": rec("web1", "node9")}
    rows = health.findings(NODES, records, {}, {"node1": reply(), "node2": reply(), "node3": reply()}, {}, {},
                           ["node2"])
    assert [(r["severity"], r["check"]) for r in rows] == [("error", "n+1"), ("error", "unknown-node")]
    assert rows[0]["fix"].startswith("salt-run cluster.balance")


def _cfg():
    return ClusterConfig(name="c", nodes={n: NodeConfig(name=n) for n in NODES}, groups={"default": "preferred"})


def test_n1_names_the_node_whose_instances_would_not_fit_elsewhere():
    records = {"big": rec("big", "node1", memory=15000, template="sharedfile")}
    replies = {"node1": reply(free=5000, big=(True, 15000, 1)), "node2": reply(free=10000), "node3": reply(free=10000)}
    assert health.n1_failing(NodeLoads(cluster_from_live(_cfg(), replies, records, {}))) == ["node1"]
    replies["node3"] = reply(free=20000)
    assert health.n1_failing(NodeLoads(cluster_from_live(_cfg(), replies, records, {}))) == []


def test_room_failure_checks_the_primary_and_n1():
    records = {"web1": rec("web1", "node1", memory=1000, template="sharedfile")}
    replies = {"node1": reply(free=5000, web1=(True, 1000, 1)), "node2": reply(free=20000), "node3": reply(free=3000)}
    cluster = cluster_from_live(_cfg(), replies, records, {})
    assert changes.room_failure(cluster, "web1", 4000, 1) == ""
    assert changes.room_failure(cluster, "web1", 7000, 1).startswith("FailMem on primary node1")
    assert changes.room_failure(cluster, "web1", 1000, 64).startswith("FailCPU on primary node1")
    replies["node2"] = reply(free=3000)  # nobody could take a 5000 MiB web1 if node1 failed
    assert changes.room_failure(cluster_from_live(_cfg(), replies, records, {}), "web1", 5000, 1) == (
        "FailN1: the failure of node1 could no longer be absorbed")


def test_room_failure_of_a_drbd_instance_checks_its_secondary_too():
    records = {"db1": rec("db1", "node1", memory=1000, template="drbd", secondary="node3")}
    replies = {"node1": reply(free=20000, db1=(True, 1000, 1)), "node2": reply(free=20000), "node3": reply(free=3000)}
    cluster = cluster_from_live(_cfg(), replies, records, {})
    assert changes.room_failure(cluster, "db1", 2000, 1) == ""
    assert changes.room_failure(cluster, "db1", 5000, 1) == "FailMem on secondary node3"  # could not fail over


def test_watcher_plan_restarts_only_admin_up_instances_on_answering_primaries():
    records = {
        "up1": rec("up1", "node1"),  # destroyed behind our back: restart
        "down1": rec("down1", "node1", admin="down"),  # operator stopped it: leave it
        "lost": rec("lost", "node2"),  # primary down: failover's job
        "off": rec("off", "node3"),  # primary offline
        "moved": rec("moved", "node1"),  # runs elsewhere: never a second copy
        "ok": rec("ok", "node1"),
    }
    flags = {"node3": {"offline": True}}
    replies = {"node1": reply(up1=(False, 128, 1), down1=(False, 128, 1), ok=(True, 128, 1), lost=(False, 128, 1)),
               "node3": reply(moved=(True, 128, 1))}
    plan = {(p["instance"], p["action"]): p for p in health.watch_plan(records, flags, replies)}
    assert set(plan) == {("up1", "restart"), ("lost", "remove_stale"), ("lost", "skip"), ("off", "skip"),
                         ("moved", "skip")}
    assert plan[("lost", "skip")]["reason"] == "primary node2 is down; recovery is failover's job"
    assert plan[("lost", "remove_stale")]["node"] == "node1"
    assert plan[("off", "skip")]["reason"].startswith("primary node3 is offline")
    assert plan[("moved", "skip")]["reason"].startswith("runs on node3")


def test_grow_steps_of_a_drbd_disk_grow_both_lvs_then_drbd_then_the_guest():
    job = new_job("grow_disk", "db1", changes.grow_steps(
        rec("db1", "node1", template="drbd", secondary="node2", disks=2), 1, 2 * GIB), [])
    assert plan(job) == [
        f"grow_backing_disk(index=1, instance=db1, node=node1, size={2 * GIB}, template=drbd)",
        f"grow_backing_disk(index=1, instance=db1, node=node2, size={2 * GIB}, template=drbd)",
        "resize_drbd(index=1, instance=db1, node=node1)",
        f"grow_domain_disk(index=1, instance=db1, node=node1, size={2 * GIB}, template=drbd)",
        f"update_instance(disks=[{{'size': {GIB}}}, {{'size': {2 * GIB}}}], name=db1)",
    ]
    assert [s["set"] for s in job["steps"]] == [0, 0, 1, 2, 3]  # both LVs grow in parallel
    file_steps = changes.grow_steps(rec("web1", "node1"), 0, 2 * GIB)
    assert [s[0] for s in file_steps] == ["grow_domain_disk", "update_instance"]
    plain_steps = changes.grow_steps(rec("vol1", "node1", template="plain"), 0, 2 * GIB)
    assert [(s[0], s[1].get("node")) for s in plain_steps] == [
        ("grow_backing_disk", "node1"), ("grow_domain_disk", "node1"), ("update_instance", None)]
