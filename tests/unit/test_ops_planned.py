"""Planner-driven operations: plans built from fake node replies and the real planner, store and engine."""

import os
import shutil
import subprocess

import pytest
import salt.cache

from saltext.vmcluster import config
from saltext.vmcluster.drbd.render import render_resource
from saltext.vmcluster.ops import engine, planned
from saltext.vmcluster.planner import balance as balancer
from saltext.vmcluster.planner import htools
from saltext.vmcluster.planner.capacity import capacity
from saltext.vmcluster.store import Store

GIB = 1024**3
HTOOLS = "/work/shared/data/ganeti-htools"
NODES = ("node1", "node2", "node3", "node4")


class FakeRPC:
    """Nodes answering with fixed resources; records every call_one."""

    def __init__(self, nodes, drbd_kernel="0x090200", down=()):
        self.nodes, self.down, self.drbd_kernel = nodes, set(down), drbd_kernel
        self.calls = []
        self.domains = {n: {} for n in nodes}

    def _resources(self, node):
        return {
            "memory": {"total": 16384, "node": 1024, "instances": 0, "free": 15360 - sum(
                d["memory"] for d in self.domains[node].values() if d["running"])},
            "cpus": 8,
            "storage": {"file": {"location": "/srv/f", "total": 200000, "free": 150000}},
            "instances": self.domains[node],
        }

    def call(self, nodes, fun, args=(), kwargs=None, timeout=10):
        answering = [n for n in nodes if n not in self.down]
        if fun == "cluster_node.resources":
            return {n: self._resources(n) for n in answering}
        assert fun == "test.ping"
        return {n: True for n in answering}

    def call_one(self, node, fun, *args, rpc_timeout=60, **kwargs):
        self.calls.append((node, fun, args, kwargs))
        if fun == "cmd.run_all":
            return {"stdout": f"DRBDADM_VERSION=9.22.0\nDRBD_KERNEL_VERSION_CODE={self.drbd_kernel}\n"
                              f"DRBD_KERNEL_VERSION=8.4.11\n", "retcode": 0}
        if fun == "config.get":
            return "vg0"
        if fun == "cluster_disk.exists":
            return False
        if fun == "drbd.wait_sync":
            return {"synced": True, "done": 100}
        return True


def instance_record(name, node, template="file", memory=512, up=True, secondary=None, **extra):
    record = {"name": name, "template": template, "memory": memory, "vcpus": 1,
              "disks": [{"size": GIB}], "nics": [], "tags": [], "admin_state": "up" if up else "down",
              "primary": node, "secondary": secondary, "created": 0}
    record.update(extra)
    return record


@pytest.fixture
def make_ctx(tmp_path):
    def make(records, nodes=NODES, **rpc_args):
        cache = salt.cache.factory({"cache": "localfs", "cachedir": str(tmp_path / "cache")})
        store = Store(cache, tmp_path / "locks")
        rpc = FakeRPC(nodes, **rpc_args)
        for record in records:
            store.put_instance(record)
            rpc.domains[record["primary"]][record["name"]] = {
                "memory": record["memory"], "vcpus": 1, "running": record["admin_state"] == "up"}
        pillar = {"cluster": {"nodes": {n: {"replication_address": f"10.0.0.{k + 1}"} for k, n in enumerate(nodes)}}}
        return engine.Context(store=store, rpc=rpc, cfg=config.load(pillar))
    return make


def _evacuation(n_file=4, n_shared=3):
    records = [instance_record(f"f{k}", "node1") for k in range(n_file)]
    records += [instance_record(f"s{k}", "node1", template="sharedfile") for k in range(n_shared)]
    records += [instance_record("idle", "node1", up=False), instance_record("other", "node2")]
    return records


def _assert_disjoint(moves, job_sets, shared=()):
    """Moves of a set touch disjoint nodes, apart from ``shared`` ones."""
    nodes = {m["instance"]: set(m["from"].split(":")) | set(m["to"].split(":")) for m in moves}
    for job_set in job_sets:
        seen = set()
        for name in job_set:
            assert not seen & nodes[name] - set(shared), f"{name} shares a node with another move of {job_set}"
            seen |= nodes[name]


def test_evacuate_plans_every_instance_off_the_node_in_disjoint_job_sets(make_ctx):
    ctx = make_ctx(_evacuation())
    ctx.rpc.domains["node1"]["stray"] = {"memory": 256, "vcpus": 1, "running": True}
    out = planned.evacuate(ctx, "node1", test=True)
    moved = {m["instance"]: m for m in out["moves"]}
    assert set(moved) == {"f0", "f1", "f2", "f3", "s0", "s1", "s2", "idle"}
    assert all(m["from"] == "node1" and m["to"] != "node1" for m in moved.values())
    assert "other" not in moved
    assert "not a cluster instance" in out["cannot_move"]["stray"]
    # moves off one node only add load elsewhere: one set, run in parallel
    assert out["job_sets"] == [[m["instance"] for m in out["moves"]]]
    # running instances migrate live (file: with their storage), the stopped one is moved cold
    verbs = {line.split(": ")[1]: line.split(": ")[2].split(" to ")[0] for line in out["plan"]}
    assert verbs == {**{n: "migrate" for n in moved if n != "idle"}, "idle": "move"}
    assert out["job"] is None and ctx.store.jobs() == {}  # a dry run writes nothing
    assert ctx.store.instance("f0")["primary"] == "node1"


def test_evacuate_steps_share_a_set_per_job_set(make_ctx):
    ctx = make_ctx(_evacuation())
    out = planned.evacuate(ctx, "node1", test=True)
    sets = {}
    for line in out["plan"]:
        number, name = line.split(": ")[:2]
        sets.setdefault(number, []).append(name)
    assert list(sets.values()) == out["job_sets"]


def test_evacuate_an_offline_node_fails_over_shared_instances_and_reports_local_ones(make_ctx):
    ctx = make_ctx(_evacuation(n_file=1, n_shared=2), down=["node1"])
    ctx.store.put_node_flags("node1", {"offline": True})
    out = planned.evacuate(ctx, "node1", test=True)
    assert {m["instance"] for m in out["moves"]} == {"s0", "s1"}
    assert all(": failover to node" in line for line in out["plan"])
    for name in ("f0", "idle"):
        assert "disks are on node1, which is down or offline" in out["cannot_move"][name]


def test_evacuate_refuses_a_silent_node_not_flagged_offline(make_ctx):
    ctx = make_ctx(_evacuation(n_file=1, n_shared=2), down=["node1"])
    with pytest.raises(engine.OpError, match="node node1 does not answer.*node_modify node1 offline=True"):
        planned.evacuate(ctx, "node1", test=True)


def test_evacuate_bad_input_changes_nothing(make_ctx):
    ctx = make_ctx(_evacuation())
    with pytest.raises(engine.OpError, match="node: node9 is not in the cluster"):
        planned.evacuate(ctx, "node9")
    with pytest.raises(Exception, match="mode"):
        planned.evacuate(ctx, "node1", mode="sideways")
    assert ctx.store.jobs() == {} and ctx.rpc.calls == []


def test_evacuate_secondaries_of_a_node_without_any_moves_nothing(make_ctx):
    ctx = make_ctx(_evacuation())
    out = planned.evacuate(ctx, "node1", mode="secondary", test=True)
    assert out["moves"] == [] and out["cannot_move"] == {} and "plan" not in out


def _skewed():
    return [instance_record(f"w{k}", "node1", template="sharedfile" if k % 2 else "file", memory=1024) for k in range(8)]


def test_balance_plan_moves_load_off_the_busy_node(make_ctx):
    ctx = make_ctx(_skewed())
    ctx.rpc.domains["node1"]["stray"] = {"memory": 1024, "vcpus": 1, "running": True}
    out = planned.balance(ctx)
    assert out["final_score"] < out["initial_score"] and out["moves"]
    assert all(m["from"] == "node1" for m in out["moves"])
    assert "stray" not in {m["instance"] for m in out["moves"]}  # not ours to move
    _assert_disjoint(out["moves"], out["job_sets"])
    assert out["commands"][0].startswith("# job set 1:")
    assert any("copy_storage=True" in c for c in out["commands"])  # file instances move with their disks
    assert ctx.store.jobs() == {}


def test_balance_execute_dry_run_plans_one_job_of_the_moves(make_ctx):
    ctx = make_ctx(_skewed())
    out = planned.balance(ctx, execute=True, test=True)
    assert len(out["plan"]) == len(out["moves"])
    assert [line.split(": ")[1] for line in out["plan"]] == [n for s in out["job_sets"] for n in s]
    assert all(line.split(": ")[2].startswith("migrate to node") for line in out["plan"])
    assert ctx.store.jobs() == {}


def test_balance_without_copy_storage_leaves_file_instances(make_ctx):
    ctx = make_ctx(_skewed())
    out = planned.balance(ctx, copy_storage=False)
    assert {m["instance"] for m in out["moves"]} <= {f"w{k}" for k in range(1, 8, 2)}


@pytest.mark.parametrize("name", ["hbal-split-insts.data", "hspace-existing.data"])
def test_balance_from_an_htools_file_is_the_planners_balance(make_ctx, name):
    path = os.path.join(HTOOLS, name)
    ctx = make_ctx([])
    out = planned.balance(ctx, file=path, copy_storage=False)
    ref = balancer.balance(htools.load(path))
    assert out["final_score"] == round(ref.final_score, 8)
    assert [m["instance"] for m in out["moves"]] == [m.instance for m in ref.moves]
    assert out["job_sets"] == [[m.instance for m in s] for s in ref.job_sets]
    assert out["source"] == path
    with pytest.raises(engine.OpError, match="execute: a plan computed from a data file cannot be executed"):
        planned.balance(ctx, file=path, execute=True)


def test_planner_verbs_name_a_bad_file(make_ctx, tmp_path):
    ctx = make_ctx([])
    bad = tmp_path / "bad.data"
    bad.write_text("group|uuid|preferred\n\nnode1|x\n")
    for path in (str(bad), str(tmp_path / "missing.data")):
        with pytest.raises(engine.OpError, match=f"file: cannot load {path}"):
            planned.capacity(ctx, file=path)


def test_capacity_from_file_and_live(make_ctx):
    path = os.path.join(HTOOLS, "hspace-existing.data")
    ctx = make_ctx(_evacuation())
    out = planned.capacity(ctx, file=path)
    assert out["count"] == capacity(htools.load(path)).count
    live = planned.capacity(ctx, spec="mem=1G,disk=1G,vcpus=1,template=sharedfile")
    # 4 nodes x 15 GiB free, N+1 keeps room to fail over the largest node's instances
    assert 30 <= live["count"] <= 60 and live["tiers"][0]["template"] == "sharedfile"
    tiered = planned.capacity(ctx, tiered=True, spec="mem=8G,disk=1G,vcpus=1,template=file")
    assert tiered["count"] >= 4 and len(tiered["tiers"]) >= 1


def test_allocate_dry_run_places_on_free_nodes_and_changes_nothing(make_ctx):
    ctx = make_ctx(_evacuation())
    out = planned.allocate(ctx, "mem=1G,disk=1G,vcpus=1,template=file,name=web", count=3)
    assert [p["instance"] for p in out["placements"]] == ["web-0", "web-1", "web-2"]
    assert "node1" not in {p["primary"] for p in out["placements"]}  # the busy node
    assert out["failed"] == {} and ctx.store.instance("web-0") is None
    too_big = planned.allocate(ctx, "mem=64G,disk=1G,vcpus=1,template=file")
    assert "FailMem" in too_big["failed"]["new"]
    with pytest.raises(engine.OpError, match="spec: give the instance"):
        planned.allocate(ctx, "")
    from_file = planned.allocate(ctx, "mem=128M,disk=1G,vcpus=1,template=drbd",
                                 file=os.path.join(HTOOLS, "common-suffix.data"))
    assert from_file["placements"][0]["secondary"] == "node2.example.com"


@pytest.mark.parametrize("old,new,running,down,expected", [
    (("n1", None), ("n2", None), True, False, [("migrate", "n2")]),
    (("n1", None), ("n2", None), False, False, [("move", "n2")]),
    (("n1", "n2"), ("n2", "n1"), True, False, [("migrate", "n2")]),
    (("n1", "n2"), ("n2", "n1"), True, True, [("failover", "n2")]),
    (("n1", "n2"), ("n1", "n3"), True, False, [("replace", "n3")]),
    (("n1", "n2"), ("n2", "n3"), True, False, [("migrate", "n2"), ("replace", "n3")]),
    (("n1", "n2"), ("n3", "n4"), True, False, [("replace", "n3"), ("migrate", "n3"), ("replace", "n4")]),
    (("n1", "n2"), ("n3", "n1"), False, False, [("replace", "n3"), ("failover", "n3")]),
])
def test_move_actions(old, new, running, down, expected):
    record = instance_record("x", old[0], template="drbd" if old[1] else "file", secondary=old[1], up=running)
    assert planned.move_actions(record, *new, down=down) == expected


def test_move_actions_refuse_local_disks_on_a_down_node():
    with pytest.raises(engine.OpError, match="x: its plain disks are on n1, which is down"):
        planned.move_actions(instance_record("x", "n1", template="plain"), "n2", None, down=True)


def _drbd(name="db1", primary="node1", secondary="node2", minor=0, count=2):
    """A drbd record as ``add`` writes it: one resource per disk over both nodes."""
    nodes = [{"name": n, "address": f"10.0.0.{n[-1]}"} for n in (primary, secondary)]
    disks = [{"size": GIB, "drbd": {"nodes": nodes, "port": 11000 + minor + k, "minor": minor + k, "secret": "s3cret"}}
             for k in range(count)]
    return instance_record(name, primary, template="drbd", secondary=secondary, disks=disks)


def test_evacuate_plans_drbd_and_plain_instances(make_ctx):
    ctx = make_ctx([_drbd(count=1), instance_record("pl1", "node1", template="plain"),
                    instance_record("pl2", "node1", template="plain", up=False)])
    out = planned.evacuate(ctx, "node1", test=True)
    actions = {line.split(": ")[1]: line.split(": ")[2] for line in out["plan"]}
    assert actions["pl1"].startswith("migrate to ") and actions["pl2"].startswith("move to ")  # LVs copied
    assert "migrate to " in actions["db1"]  # the drbd primary leaves live, its mirror rebuilt first
    assert all("node1" not in m["to"].split(":") for m in out["moves"])
    secondaries = planned.evacuate(ctx, "node2", mode="secondary", test=True)
    assert [m["to"].split(":")[0] for m in secondaries["moves"]] == ["node1"]  # the primary stays
    assert [line.split(": ", 1)[1].split(" to ")[0] for line in secondaries["plan"]] == ["db1: replace"]
    assert ctx.store.jobs() == {} and ctx.rpc.calls == []


def test_replace_disks_refuses_other_templates_and_bad_nodes(make_ctx):
    ctx = make_ctx([instance_record("web1", "node1"), _drbd()])
    with pytest.raises(engine.OpError, match="web1 has disk template file; replace_disks changes the DRBD"):
        planned.replace_disks(ctx, "web1", "node3")
    with pytest.raises(engine.OpError, match="new_secondary: node2 already holds db1"):
        planned.replace_disks(ctx, "db1", "node2")
    with pytest.raises(engine.OpError, match="new_secondary: node9 is not in the cluster"):
        planned.replace_disks(ctx, "db1", "node9")
    with pytest.raises(engine.OpError, match="instance 'nope' is not in the cluster"):
        planned.replace_disks(ctx, "nope")
    assert ctx.store.jobs() == {}


def test_replace_disks_plan_builds_the_new_mirror_before_dropping_the_old(make_ctx):
    ctx = make_ctx([_drbd(), _drbd("x", "node3", "node1", minor=5, count=1)])
    out = planned.replace_disks(ctx, "db1", test=True)  # the planner picks the new secondary
    names = [line.split("(")[0] for line in out["plan"]]
    assert names == ["update_instance", "drbd_add_peer", "drbd_wait_sync", "drbd_add_peer", "drbd_wait_sync",
                     "drbd_drop_peer", "drbd_drop_peer", "update_instance"]
    assert "new=node4" in out["plan"][1] and "old=['node1', 'node2']" in out["plan"][1]


@pytest.mark.parametrize("code,reason", [("0x000000", "the kernel has no DRBD module"),
                                         ("0x08040b", "DRBD 8.4.11 keeps one peer per resource")])
def test_replace_disks_needs_drbd9_and_changes_nothing_without_it(make_ctx, code, reason):
    ctx = make_ctx([_drbd()], drbd_kernel=code)
    with pytest.raises(engine.OpError, match=reason + ".*nothing changed"):
        planned.replace_disks(ctx, "db1", "node3")
    assert ctx.store.jobs() == {} and ctx.store.instance("db1")["secondary"] == "node2"


def test_replace_disks_with_drbd9_syncs_the_third_peer_before_dropping_the_old(make_ctx):
    ctx = make_ctx([_drbd(), _drbd("x", "node3", "node4", minor=0, count=1)])  # minor 0 is taken on node3
    out = planned.replace_disks(ctx, "db1", "node3")
    assert out["state"] == "done"
    calls = [(node, fun) for node, fun, _, _ in ctx.rpc.calls if fun not in ("config.get", "cmd.run_all")]
    at = lambda fun: [k for k, c in enumerate(calls) if c[1] == fun]  # noqa: E731
    assert [calls[k][0] for k in at("cluster_disk.create") + at("drbd.wait_sync")] == ["node3"] * 4
    assert [calls[k][0] for k in at("cluster_disk.remove")] == ["node2"] * 2
    assert max(at("drbd.wait_sync")) < min(at("cluster_disk.remove"))  # both disks synced before either goes
    three = [args[1] for _, fun, args, _ in ctx.rpc.calls if fun == "drbd.write_config" and len(args[1]) == 3]
    assert len(three) == 4 and {n["name"] for n in three[0]} == {"node1", "node2", "node3"}
    created = [kw for _, fun, _, kw in ctx.rpc.calls if fun == "cluster_disk.create"]
    assert all(kw["drbd9"] and len(kw["nodes"]) == 3 for kw in created)
    # node3's entry: a minor free there (0 is x's), node-id 2 kept after node2 (id 1) leaves
    record = ctx.store.instance("db1")
    assert record["secondary"] == "node3"
    assert [[(e["name"], e["node_id"], e.get("minor")) for e in d["drbd"]["nodes"]] for d in record["disks"]] == [
        [("node1", 0, None), ("node3", 2, 1)], [("node1", 0, None), ("node3", 2, 2)]]
    two = [args[1] for _, fun, args, _ in ctx.rpc.calls if fun == "drbd.write_config" and len(args[1]) == 2]
    assert [(n["name"], n["node_id"]) for n in two[0]] == [("node1", 0), ("node3", 2)]
    assert planned.replace_disks_steps(ctx, record, "node3") == []  # a repeat is a no-op


@pytest.mark.skipif(shutil.which("drbdadm") is None, reason="drbdadm (drbd-utils) is not installed")
def test_the_three_peer_resource_passes_the_real_drbdadm(tmp_path):
    here = os.uname().nodename
    nodes = [{"name": n, "address": f"10.0.0.{k + 1}", "disk": "/dev/vg0/db1.disk0_data"}
             for k, n in enumerate([here, "node2", "node3"])]
    path = tmp_path / "db1.disk0.res"
    path.write_text(render_resource("db1.disk0", nodes, 7790, 0, "s3cret", drbd9=True))
    dry = subprocess.run(["drbdadm", "-c", str(path), "-d", "up", "db1.disk0"], capture_output=True, text=True,
                         check=True).stdout
    assert "new-peer db1.disk0 1 --_name=node2" in dry and "new-peer db1.disk0 2 --_name=node3" in dry
    assert "connect db1.disk0 2" in dry
    with pytest.raises(Exception, match="three with drbd9"):
        render_resource("db1.disk0", nodes, 7790, 0, "s3cret")


def test_evacuation_sets_share_only_the_evacuated_node_and_pure_destinations():
    move = lambda name, old, new: balancer.Move(name, "evacuate", *old, *new, 0.0)  # noqa: E731
    moves = [move("a", ("n1", None), ("n2", None)), move("b", ("n1", None), ("n2", None)),
             move("c", ("n1", "n3"), ("n3", "n4")),  # n3 changes role: no other move of its set may touch it
             move("d", ("n1", None), ("n3", None)), move("e", ("n1", None), ("n4", None)),
             move("f", ("n5", "n1"), ("n5", "n2"))]
    sets = planned.evacuation_sets(moves, "n1")
    assert [[m.instance for m in s] for s in sets] == [["a", "b", "c"], ["d", "e", "f"]]
    for job_set in sets:
        for m in job_set:
            changed = {m.old_primary, m.old_secondary} - {None, "n1"}
            others = {n for o in job_set if o is not m for n in o.nodes}
            assert not changed & others
