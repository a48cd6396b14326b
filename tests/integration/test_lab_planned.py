"""evacuate, balance, capacity, allocate and replace_disks through the `cluster` runner on the lab.

A sampler polls every node's libvirtd every 100 ms for the whole module and fails
it if one instance ever runs on two nodes at once.
"""

import os

import pytest
from test_lab_moves import NO_DRBD, add, domains, file_disk, has_pattern, op, where, write_pattern

HTOOLS = "/work/shared/data/ganeti-htools"

pytestmark = pytest.mark.usefixtures("no_double_runs")


def test_evacuate_a_node_of_file_and_sharedfile_instances(lab, runner, store, cleanup):
    for k in range(3):  # file instances with a known pattern on their disks
        cleanup.append(f"ev{k}")
        add(runner, f"ev{k}", "node2", "file", start=False)
        write_pattern(file_disk(lab, "node2", f"ev{k}"))
        if k < 2:
            assert op(runner, "start", f"ev{k}")["state"] == "done"
    for k in (3, 4):
        cleanup.append(f"ev{k}")
        add(runner, f"ev{k}", "node2", "sharedfile")

    plan = op(runner, "evacuate", "node2", test=True)
    assert plan["job"] is None and sorted(m["instance"] for m in plan["moves"]) == [f"ev{k}" for k in range(5)]
    assert plan["job_sets"] == [[m["instance"] for m in plan["moves"]]]  # all leave node2 in parallel
    assert plan["cannot_move"] == {}
    assert all(where(lab, f"ev{k}")[1] == ["node2"] for k in range(5))  # the dry run changed nothing

    ret = op(runner, "evacuate", "node2")
    assert isinstance(ret, dict) and ret.get("state") == "done", ret
    assert domains(lab, "node2") == {}
    for k in range(5):
        record = store.instance(f"ev{k}")
        assert record["primary"] != "node2"
        running, defined = where(lab, f"ev{k}")
        assert defined == [record["primary"]] and running == ([record["primary"]] if k != 2 else [])
    for k in range(3):
        assert not file_disk(lab, "node2", f"ev{k}").exists()
        op(runner, "stop", f"ev{k}", force=True)
        assert has_pattern(file_disk(lab, store.instance(f"ev{k}")["primary"], f"ev{k}"))
    job = store.job(ret["job"])
    assert {s["set"] for s in job["steps"]} == {0} and all(s["state"] == "done" for s in job["steps"])


def test_evacuate_bad_input_changes_nothing(runner, store):
    jobs = set(store.jobs())
    ret = op(runner, "evacuate", "node9")
    assert ret["retcode"] == 1 and "node: node9 is not in the cluster" in ret["error"]
    ret = op(runner, "evacuate", "node1", mode="sideways")
    assert ret["retcode"] == 1 and "mode" in ret["error"]
    assert set(store.jobs()) == jobs


def test_balance_plans_and_executes_on_a_skewed_cluster(lab, runner, store, cleanup):
    for k in range(6):
        cleanup.append(f"bal{k}")
        add(runner, f"bal{k}", "node1", "sharedfile" if k % 2 else "file")
    plan = op(runner, "balance")
    assert plan["final_score"] < plan["initial_score"] and plan["moves"], plan
    assert all(m["from"] == "node1" for m in plan["moves"])
    assert plan["commands"][0].startswith("# job set 1:")
    dry = op(runner, "balance", execute=True, test=True)
    assert dry["job"] is None and len(dry["plan"]) == len(dry["moves"])
    assert all(store.instance(f"bal{k}")["primary"] == "node1" for k in range(6))

    ret = op(runner, "balance", execute=True)
    assert isinstance(ret, dict) and ret.get("state") == "done", ret
    for move in ret["moves"]:
        assert store.instance(move["instance"])["primary"] == move["to"]
        assert where(lab, move["instance"]) == ([move["to"]], [move["to"]])
    placed = [store.instance(f"bal{k}")["primary"] for k in range(6)]
    assert len(set(placed)) == 3  # spread over the three nodes


def test_capacity_and_allocate_on_live_data(runner, store):
    cap = op(runner, "capacity", spec="mem=64M,disk=256M,vcpus=1,template=sharedfile")
    assert cap["count"] > 0 and cap["source"] == "live" and cap["limited_by"] != "nothing"
    tiered = op(runner, "capacity", tiered=True, spec="mem=1G,disk=256M,vcpus=1,template=sharedfile")
    assert tiered["count"] >= 1
    alloc = op(runner, "allocate", spec="mem=64M,disk=256M,vcpus=1,template=file,name=probe", count=2)
    assert [p["instance"] for p in alloc["placements"]] == ["probe-0", "probe-1"]
    assert store.instance("probe-0") is None
    bad = op(runner, "allocate", spec="mem=lots,disk=1G,vcpus=1")
    assert bad["retcode"] == 1 and "mem" in bad["error"]


def test_planner_verbs_on_a_ganeti_data_file(runner):
    path = os.path.join(HTOOLS, "hbal-desiredlocation-1.data")
    plan = op(runner, "balance", file=path, copy_storage=False)
    assert plan["source"] == path and plan["final_score"] < plan["initial_score"]
    assert op(runner, "capacity", file=os.path.join(HTOOLS, "hspace-existing.data"))["count"] >= 0
    alloc = op(runner, "allocate", spec="mem=128M,disk=1G,vcpus=1,template=drbd",
               file=os.path.join(HTOOLS, "common-suffix.data"))
    assert alloc["placements"][0]["secondary"]
    ret = op(runner, "balance", file=path, execute=True)
    assert ret["retcode"] == 1 and "cannot be executed" in ret["error"]
    ret = op(runner, "capacity", file="/nonexistent/cluster.data")
    assert ret["retcode"] == 1 and "file: cannot load /nonexistent/cluster.data" in ret["error"]


@pytest.mark.parametrize("template", ["file", "sharedfile"])
def test_replace_disks_is_refused_for_templates_without_a_mirror(runner, store, cleanup, template):
    name = f"rd-{template}"
    cleanup.append(name)
    add(runner, name, "node1", template, start=False)
    jobs = set(store.jobs())
    ret = op(runner, "replace_disks", name, new_secondary="node2")
    assert ret["retcode"] == 1 and f"{name} has disk template {template}" in ret["error"]
    assert set(store.jobs()) == jobs and store.instance(name)["secondary"] is None


def test_replace_disks_of_a_drbd_instance_plans_then_stops_at_the_kernel(runner, store):
    # a drbd record as add writes it (add cannot create DRBD disks on this kernel)
    nodes = [{"name": n, "address": f"127.0.0.{k + 1}"} for k, n in enumerate(("node1", "node2"))]
    store.put_instance({"name": "rdd", "template": "drbd", "memory": 64, "vcpus": 1, "nics": [], "tags": [],
                        "disks": [{"size": 256 * 1024**2, "drbd": {"nodes": nodes, "port": 11000, "minor": 0,
                                                                    "secret": "s3cret"}}],
                        "admin_state": "down", "primary": "node1", "secondary": "node2", "cleanup": 0})
    try:
        plan = op(runner, "replace_disks", "rdd", new_secondary="node3", test=True)
        assert [p.split("(")[0] for p in plan["plan"]] == [
            "update_instance", "drbd_add_peer", "drbd_wait_sync", "drbd_drop_peer", "update_instance"]
        jobs = set(store.jobs())
        ret = op(runner, "replace_disks", "rdd", new_secondary="node3")
        assert ret["retcode"] == 1, ret
        assert "the kernel has no DRBD module" in ret["error"] or "keeps one peer" in ret["error"]
        assert set(store.jobs()) == jobs and store.instance("rdd")["secondary"] == "node2"
    finally:
        store.delete_instance("rdd")
    if not os.path.exists("/proc/drbd"):
        pytest.skip(NO_DRBD + " (DRBD 9 needed for the third peer)")
