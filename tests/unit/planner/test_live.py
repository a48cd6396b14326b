from saltext.vmcluster import config
from saltext.vmcluster.planner import htools, score
from saltext.vmcluster.planner.live import cluster_from_live

from .ganeti_tools import run_hinfo


def _reply(free, instances):
    return {
        "memory": {"total": 8192, "node": 1024, "instances": 0, "free": free},
        "cpus": 4,
        "storage": {"file": {"location": "/srv/f", "total": 100000, "free": 60000}},
        "domains": {"defined": sorted(instances), "running": []},
        "instances": instances,
    }


def _cluster():
    cfg = config.load({"cluster": {"nodes": {"node1": None, "node2": {"group": "rack2"}, "node3": None}}})
    replies = {
        "node1": _reply(5000, {"web1": {"memory": 1024, "vcpus": 2, "running": True},
                               "db1": {"memory": 2048, "vcpus": 1, "running": False}}),
        "node2": _reply(7000, {}),
        "node3": None,
    }
    return cluster_from_live(cfg, replies)


def test_nodes_groups_and_instances_come_from_live_data():
    cluster = _cluster()
    nodes = {n.name: n for n in cluster.nodes}
    assert nodes["node1"].free_mem == 5000 and nodes["node1"].total_disk == 100000 and not nodes["node1"].offline
    assert nodes["node3"].offline  # did not answer
    assert {g.name for g in cluster.groups} == {"default", "rack2"} and nodes["node2"].group == "rack2"
    insts = {i.name: i for i in cluster.instances}
    assert insts["web1"].status == "running" and insts["db1"].status == "ADMIN_down"
    assert insts["web1"].primary == "node1" and insts["web1"].secondary is None and insts["web1"].vcpus == 2


def test_live_model_scores_like_hinfo(tmp_path):
    cluster = _cluster()
    path = tmp_path / "live.data"
    htools.dump(cluster, str(path))
    ours = sum(m.weight * m.value for m in score.score(cluster))
    (_metrics, total), err = run_hinfo(path, tmp_path)
    assert not err
    assert abs(ours - total) < 1e-6


def test_store_records_and_flags_shape_the_model():
    cfg = config.load({"cluster": {"nodes": ["node1", "node2", "node3"]}})
    replies = {n: _reply(6000, {}) for n in ("node1", "node2", "node3")}
    replies["node2"]["instances"] = {"web1": {"memory": 512, "vcpus": 1, "running": True}}
    records = {"web1": {"name": "web1", "memory": 512, "vcpus": 1, "admin_state": "up", "template": "drbd",
                        "primary": "node2", "secondary": "node1", "disks": [{"size": 10 * 1024**3}]}}
    cluster = cluster_from_live(cfg, replies, records, flags={"node3": {"drained": True}})
    (web1,) = cluster.instances  # the domain the store knows is not counted twice
    assert (web1.disk_template, web1.primary, web1.secondary, web1.disk) == ("drbd", "node2", "node1", 10240)
    assert [n.name for n in cluster.nodes if n.offline] == ["node3"]


def test_the_pillar_policy_governs_allocation():
    from saltext.vmcluster.planner.allocate import Allocator, InstanceSpec

    small = InstanceSpec(mem=64, disk=256, vcpus=1, disk_template="file", name="tiny", disks=[256])
    replies = {n: _reply(6000, {}) for n in ("node1", "node2")}
    ganeti_default = config.load({"cluster": {"nodes": ["node1", "node2"]}})
    assert not Allocator(cluster_from_live(ganeti_default, replies)).allocate(small).ok  # min memory 128
    lab = config.load({"cluster": {"nodes": ["node1", "node2"],
                                   "ipolicy": {"min": {"memory": "32M", "disk": "16M"}}}})
    assert Allocator(cluster_from_live(lab, replies)).allocate(small).ok
