"""Plans and runs of instance operations with a fake node RPC (the lab tests run the real thing)."""

import pytest
import salt.cache

from saltext.vmcluster import config
from saltext.vmcluster.ops import engine, instances
from saltext.vmcluster.store import Store

GIB = 1024**3


class FakeNodes:
    """Answers like the nodes would for a new drbd instance; records every call."""

    def __init__(self, synced=True):
        self.calls = []
        self.synced = synced

    def call_one(self, node, fun, *args, **kwargs):
        kwargs.pop("rpc_timeout", None)
        self.calls.append((node, fun, args, kwargs))
        answers = {
            "drbd.status": {args[0]: {"role": "Secondary", "volumes": [{"disk": "Inconsistent"}]}} if args else {},
            "drbd.wait_sync": {"synced": self.synced, "done": 100.0 if self.synced else 42.0},
            "grains.get": {"storage": {"drbd": "vg0"}, "kvm_usable": True},
        }
        return answers.get(fun, True)

    def funs(self, fun):
        return [c for c in self.calls if c[1] == fun]


@pytest.fixture
def ctx(tmp_path):
    cfg = config.load({"cluster": {"nodes": {
        "node1": {"replication_address": "192.0.2.1"}, "node2": {"replication_address": "192.0.2.2"},
        "node3": None}}})
    cache = salt.cache.factory({"cache": "localfs", "cachedir": str(tmp_path / "cache")})
    return engine.Context(store=Store(cache, tmp_path / "locks"), rpc=FakeNodes(), cfg=cfg)


def test_drbd_add_plan_creates_both_sides_then_promotes_and_syncs(ctx):
    plan = instances.add(ctx, "db1", "1G", disks=["10G", "20G"], template="drbd", nodes="node1:node2", test=True)
    steps = [line.split("(")[0] for line in plan["plan"]]
    assert steps == ["record_instance",
                     "create_disk", "create_disk", "drbd_initial_primary", "drbd_wait_sync",
                     "create_disk", "create_disk", "drbd_initial_primary", "drbd_wait_sync",
                     "define_domain", "start_domain", "update_instance"]
    assert ctx.rpc.calls == [] and ctx.store.instances() == {}


def test_drbd_add_runs_with_distinct_minors_ports_and_one_forced_promotion_per_disk(ctx):
    instances.add(ctx, "db1", "1G", disks=["10G", "20G"], template="drbd", nodes="node1:node2")
    record = ctx.store.instance("db1")
    assert (record["primary"], record["secondary"], record["admin_state"]) == ("node1", "node2", "up")
    resources = [d["drbd"] for d in record["disks"]]
    assert len({r["minor"] for r in resources}) == 2 and len({r["port"] for r in resources}) == 2
    assert resources[0]["nodes"] == [{"name": "node1", "address": "192.0.2.1"},
                                     {"name": "node2", "address": "192.0.2.2"}]
    creates = ctx.rpc.funs("cluster_disk.create")
    assert sorted((c[0], c[2][1]) for c in creates) == [("node1", 0), ("node1", 1), ("node2", 0), ("node2", 1)]
    assert all(c[2][2] == f"{10 * GIB if c[2][1] == 0 else 20 * GIB}B" and c[2][3] == "drbd" for c in creates)
    assert all(c[3]["secret"] == resources[c[2][1]]["secret"] for c in creates)
    promotions = ctx.rpc.funs("drbd.primary")
    assert [(c[0], c[2][0], c[3]) for c in promotions] == [
        ("node1", "db1.disk0", {"force": True}), ("node1", "db1.disk1", {"force": True})]
    # a second drbd instance on an overlapping pair gets other minors and ports
    instances.add(ctx, "db2", "1G", disks="5G", template="drbd", nodes="node2:node1")
    other = ctx.store.instance("db2")["disks"][0]["drbd"]
    assert other["minor"] not in {r["minor"] for r in resources}
    assert other["port"] not in {r["port"] for r in resources}


def test_drbd_add_stops_when_the_sync_does_not_finish(ctx):
    ctx.rpc.synced = False
    with pytest.raises(engine.OpError, match=r"drbd_wait_sync: db1.disk0 not in sync after 3600s \(42.0% done\)"):
        instances.add(ctx, "db1", "1G", disks="10G", template="drbd", nodes="node1:node2")
    assert ctx.rpc.funs("cluster_vm.define") == [] and ctx.store.instance("db1")["admin_state"] == "down"


def test_the_domain_uses_each_disk_s_drbd_device_and_the_node_s_acceleration(ctx):
    instances.add(ctx, "db1", "1G", disks=["10G", "20G"], template="drbd", nodes="node1:node2")
    minors = [d["drbd"]["minor"] for d in ctx.store.instance("db1")["disks"]]
    (define,) = ctx.rpc.funs("cluster_vm.define")
    assert define[0] == "node1" and define[2] == ("db1", "1024M")
    assert define[3]["disks"] == [f"/dev/drbd{m}" for m in minors] and define[3]["type"] == "kvm"


@pytest.mark.parametrize(
    "nodes, message",
    [
        ("node1:node3", "cluster:nodes:node3:replication_address: drbd needs the node's replication address"),
        ("node1", "nodes: template drbd needs 2 node(s) (primary:secondary)"),
    ],
)
def test_drbd_add_refuses_what_it_cannot_build(ctx, nodes, message):
    with pytest.raises(engine.OpError, match=message.replace("(", r"\(").replace(")", r"\)")):
        instances.add(ctx, "db1", "1G", disks="10G", template="drbd", nodes=nodes)
    assert ctx.rpc.calls == [] and ctx.store.instances() == {} and ctx.store.jobs() == {}
