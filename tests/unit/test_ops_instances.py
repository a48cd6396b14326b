"""Plans and runs of instance operations with a fake node RPC (the lab tests run the real thing)."""

import pytest
import salt.cache

from saltext.vmcluster import config
from saltext.vmcluster.ops import changes, engine, instances, moves
from saltext.vmcluster.names import ValidationError
from saltext.vmcluster.store import Store

GIB = 1024**3


class FakeNodes:
    """Answers like the nodes would for a new drbd instance; records every call."""

    def __init__(self, synced=True):
        self.calls = []
        self.synced = synced
        self.bridges = {}  # node -> its bridges
        self.grain_bridges = {}  # node -> its bridges as its grain, cached on the master, says (default: the same)
        self.image_size = 2 * GIB
        self.domains = {}  # node -> {name: state}

    def call_one(self, node, fun, *args, **kwargs):
        kwargs.pop("rpc_timeout", None)
        self.calls.append((node, fun, args, kwargs))
        answers = {
            "drbd.status": {args[0]: {"role": "Secondary", "volumes": [{"disk": "Inconsistent"}]}} if args else {},
            "drbd.wait_sync": {"synced": self.synced, "done": 100.0 if self.synced else 42.0},
            "grains.get": {"storage": {"drbd": "vg0", "plain": "vg0", "file": "/srv/vmc", "sharedfile": "/mnt/vmc"},
                           "kvm_usable": True,
                           "bridges": self.grain_bridges.get(node, self.bridges.get(node, []))},
            "cluster_node.bridges": self.bridges.get(node, []),
            "cluster_disk.image_info": {"size": self.image_size, "format": "qcow2"},
            "cluster_vm.list_domains": self.domains.get(node, {}),
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


def test_plain_add_plan_makes_exact_size_lvs_on_its_one_node(ctx):
    plan = instances.add(ctx, "pl1", "1G", disks=["10G", "20G"], template="plain", nodes="node1", test=True)["plan"]
    assert [line.split("(")[0] for line in plan] == [
        "record_instance", "create_disk", "create_disk", "define_domain", "start_domain", "update_instance"]
    assert plan[1:3] == [f"create_disk(exact=True, index={i}, instance=pl1, node=node1, size={size * GIB}, "
                         "template=plain)" for i, size in ((0, 10), (1, 20))]


def test_drbd_remove_plan_removes_every_disk_on_both_nodes(ctx):
    instances.add(ctx, "db1", "1G", disks=["10G", "20G"], template="drbd", nodes="node1:node2")
    plan = instances.remove(ctx, "db1", test=True)["plan"]
    assert [line for line in plan if line.startswith("remove_disk")] == [
        f"remove_disk(index={i}, instance=db1, node={node}, template=drbd)"
        for node in ("node1", "node2") for i in (0, 1)]
    assert plan[-1] == "forget_instance(name=db1)" and ctx.store.instance("db1")


@pytest.mark.parametrize("template, nodes", [("plain", "node1"), ("drbd", "node1:node2")])
def test_start_stop_and_reboot_act_on_the_primary_only(ctx, template, nodes):
    instances.add(ctx, "v1", "1G", disks="10G", template=template, nodes=nodes, start=False)
    plans = {verb: getattr(instances, verb)(ctx, "v1", test=True)["plan"] for verb in ("start", "stop", "reboot")}
    assert plans == {
        "start": ["define_domain(instance=v1, node=node1)", "start_domain(instance=v1, node=node1)",
                  "update_instance(admin_state=up, name=v1)"],
        "stop": ["update_instance(admin_state=down, name=v1)",
                 "stop_domain(force=False, instance=v1, node=node1, timeout=60)"],
        "reboot": ["stop_domain(instance=v1, node=node1, timeout=60)", "start_domain(instance=v1, node=node1)",
                   "update_instance(admin_state=up, name=v1)"],
    }


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


# --- NICs and the OS image ---------------------------------------------------

IMAGE = "/var/lib/vmcluster/images/debian-12.qcow2"
READS = ("grains.get", "cluster_node.bridges", "cluster_disk.image_info")


@pytest.fixture
def net_ctx(ctx):
    """node1 has bridge br0 of its own, node2 and node3 none; new instances start from IMAGE."""
    ctx.cfg = config.load({"cluster": {"nodes": {"node1": {"bridge": "br0"}, "node2": None, "node3": None},
                                       "defaults": {"image": IMAGE}}})
    ctx.rpc.bridges = {"node1": ["br0", "br1"], "node2": ["br1"]}
    return ctx


def test_add_plans_one_nic_on_the_node_s_bridge_and_disk_0_from_the_default_image(net_ctx):
    plan = instances.add(net_ctx, "web1", "512M", disks=["10G", "1G"], nodes="node1", test=True)
    creates = [line for line in plan["plan"] if line.startswith("create_disk")]
    assert len(creates) == 2 and f"source={IMAGE}" in creates[0] and "source" not in creates[1]
    assert {c[1] for c in net_ctx.rpc.calls} <= set(READS)  # the dry run only reads
    assert net_ctx.store.instances() == {} and net_ctx.store.jobs() == {}


def test_add_defines_the_domain_with_its_nics_and_creates_disk_0_from_the_image(net_ctx):
    instances.add(net_ctx, "web0", "512M", disks="10G", nodes="node1")
    assert [(n["bridge"], n["mac"][:9]) for n in net_ctx.store.instance("web0")["nics"]] == [("br0", "52:54:00:")]
    instances.add(net_ctx, "web1", "512M", disks=["10G", "1G"], template="sharedfile", nodes="node1", nics="br1,br0")
    record = net_ctx.store.instance("web1")
    assert [n["bridge"] for n in record["nics"]] == ["br1", "br0"] and record["image"] == IMAGE
    define = net_ctx.rpc.funs("cluster_vm.define")[-1]
    assert define[2][0] == "web1" and define[3]["nics"] == record["nics"]
    assert [c[3] for c in net_ctx.rpc.funs("cluster_disk.create")][1:] == [{"source": IMAGE}, {}]
    # the next instance gets other MACs; one that asks for a taken MAC is refused, nothing changed
    instances.add(net_ctx, "web2", "512M", disks="10G", template="sharedfile", nodes="node1", image="none")
    other = net_ctx.store.instance("web2")
    assert len(other["nics"]) == 1 and other["nics"][0]["mac"] not in {n["mac"] for n in record["nics"]}
    assert other["image"] is None and "source" not in net_ctx.rpc.funs("cluster_disk.create")[-1][3]
    with pytest.raises(ValidationError, match=r"^nics\[0\].mac: .* the MAC is taken by web1 nic 1"):
        instances.add(net_ctx, "web3", "512M", disks="10G", nodes="node1", nics={"mac": record["nics"][1]["mac"]})
    assert sorted(net_ctx.store.instances()) == ["web0", "web1", "web2"]


def test_a_node_without_a_bridge_gives_no_nic_unless_one_is_asked_for(net_ctx):
    instances.add(net_ctx, "web1", "512M", disks="10G", nodes="node2", image="none")
    assert net_ctx.store.instance("web1")["nics"] == []
    with pytest.raises(ValidationError, match=r"^nics\[0\].bridge: .*node node2 has no default bridge"):
        instances.add(net_ctx, "web2", "512M", disks="10G", nodes="node2", nics={"model": "e1000"})
    instances.add(net_ctx, "web3", "512M", disks="10G", nodes="node1", nics="none")
    assert net_ctx.store.instance("web3")["nics"] == []


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"nodes": "node2", "nics": "br0"}, engine.OpError,
         "nics: bridge br0 of web1 does not exist on node node2; create it there or choose another node"),
        ({"nodes": "node3"}, engine.OpError, "nics: bridge br0 of web1 does not exist on node node3"),
        ({"nodes": "node1", "disks": "1G"}, engine.OpError,
         f"image: {IMAGE} (2147483648 bytes) is larger than disk 0 (1073741824 bytes); give a first disk of at "
         "least 2048M (disks=)"),
        ({"nodes": "node1", "image": "debian.qcow2"}, ValidationError, "image: invalid value 'debian.qcow2'"),
        ({"nodes": "node1", "nics": "br0 br1"}, ValidationError, "nics[0].bridge: invalid value 'br0 br1'"),
    ],
)
def test_add_refuses_missing_bridges_and_images_that_do_not_fit(net_ctx, kwargs, error, message):
    if kwargs["nodes"] == "node3":  # a cluster-wide default bridge that node3 lacks
        net_ctx.cfg = config.load({"cluster": {"nodes": ["node1", "node2", "node3"], "defaults": {"bridge": "br0"}}})
    with pytest.raises(error) as err:
        instances.add(net_ctx, "web1", "512M", **{"disks": "10G", **kwargs})
    assert str(err.value).startswith(message)
    assert {c[1] for c in net_ctx.rpc.calls} <= set(READS) and net_ctx.store.instances() == {}


def test_drbd_gets_the_image_on_the_primary_only_and_needs_the_bridge_on_both_nodes(net_ctx):
    net_ctx.cfg = config.load({"cluster": {"nodes": {
        "node1": {"replication_address": "192.0.2.1", "bridge": "br1"},
        "node2": {"replication_address": "192.0.2.2"}}, "defaults": {"image": IMAGE}}})
    instances.add(net_ctx, "db1", "1G", disks="10G", template="drbd", nodes="node1:node2")
    creates = sorted((c[0], "source" in c[3]) for c in net_ctx.rpc.funs("cluster_disk.create"))
    assert creates == [("node1", True), ("node2", False)]
    net_ctx.rpc.bridges["node2"] = []
    with pytest.raises(engine.OpError, match="^nics: bridge br1 of db2 does not exist on node node2"):
        instances.add(net_ctx, "db2", "1G", disks="10G", template="drbd", nodes="node1:node2")


@pytest.mark.parametrize(("operation", "template"), [("migrate", "sharedfile"), ("failover", "sharedfile"),
                                                      ("move", "file")])
def test_moves_refuse_a_target_without_the_instance_s_bridges(net_ctx, operation, template):
    instances.add(net_ctx, "web1", "512M", disks="10G", template=template, nodes="node1", nics="br0,br1")
    net_ctx.rpc.calls.clear()
    kwargs = {"ignore_consistency": True} if operation == "failover" else {}
    with pytest.raises(engine.OpError, match="^nics: bridge br0 of web1 does not exist on node node2; create it"):
        getattr(moves, operation)(net_ctx, "web1", target="node2", **kwargs)
    assert ("node2", "cluster_node.bridges", (), {}) in net_ctx.rpc.calls  # missing in the grain: asked live
    assert net_ctx.store.instance("web1")["primary"] == "node1" and len(net_ctx.store.jobs()) == 1


def test_bridges_come_from_the_cached_grain_and_a_new_one_is_asked_of_the_node(net_ctx):
    instances.add(net_ctx, "web1", "512M", disks="10G", template="sharedfile", nodes="node1", nics="br1")
    net_ctx.rpc.calls.clear()
    moves.failover(net_ctx, "web1", target="node2", ignore_consistency=True, test=True)
    assert not net_ctx.rpc.funs("cluster_node.bridges")  # the grain has br1: no question to node2
    net_ctx.rpc.grain_bridges["node2"] = []  # made after the grain was read
    moves.failover(net_ctx, "web1", target="node2", ignore_consistency=True, test=True)
    assert [c[0] for c in net_ctx.rpc.funs("cluster_node.bridges")] == ["node2"]


# --- modify: a disk added or removed ------------------------------------------


def test_modify_adds_a_last_disk_then_redefines(ctx):
    instances.add(ctx, "web1", "1G", disks="10G", template="file", nodes="node1")
    plan = changes.modify(ctx, "web1", add_disk="5G", test=True)["plan"]
    assert plan == [f"create_disk(exact=True, index=1, instance=web1, node=node1, size={5 * GIB}, template=file)",
                    f"update_instance(disks=[{{'size': {10 * GIB}}}, {{'size': {5 * GIB}}}], name=web1)",
                    "define_domain(instance=web1, node=node1)"]
    assert len(ctx.store.instance("web1")["disks"]) == 1  # the dry run changed nothing
    assert changes.modify(ctx, "web1", add_disk="5G")["disks"] == [10 * GIB, 5 * GIB]
    assert [d["size"] for d in ctx.store.instance("web1")["disks"]] == [10 * GIB, 5 * GIB]


def test_modify_adds_a_drbd_disk_with_its_own_minor_port_and_sync(ctx):
    instances.add(ctx, "db1", "1G", disks="10G", template="drbd", nodes="node1:node2")
    ctx.rpc.calls.clear()
    changes.modify(ctx, "db1", add_disk="1G")
    first, second = (d["drbd"] for d in ctx.store.instance("db1")["disks"])
    assert first["minor"] != second["minor"] and first["port"] != second["port"] and second["secret"]
    assert sorted(c[0] for c in ctx.rpc.funs("cluster_disk.create")) == ["node1", "node2"]
    assert [c[2] for c in ctx.rpc.funs("drbd.wait_sync")] == [("db1.disk1",)]


@pytest.mark.parametrize("kwargs, running, error", [
    ({"remove_disk": 0}, False, "^remove_disk: only the last disk of web1, 1, can be removed .*give remove_disk=1"),
    ({"remove_disk": 1}, True, "^remove_disk: web1 is running; stop it first: salt-run cluster.stop web1"),
    ({"remove_disk": "x"}, False, "^remove_disk: invalid value 'x'"),
    ({"add_disk": "1G", "remove_disk": 1}, False, "^give add_disk=SIZE or remove_disk=N, not both"),
    ({"add_disk": "2T"}, False, "^disk: .* is outside the instance policy"),
])
def test_modify_disk_refusals_change_nothing(ctx, kwargs, running, error):
    instances.add(ctx, "web1", "1G", disks=["10G", "1G"], template="file", nodes="node1")
    ctx.rpc.domains = {"node1": {"web1": "running" if running else "shutoff"}}
    with pytest.raises((engine.OpError, ValidationError), match=error):
        changes.modify(ctx, "web1", **kwargs)
    assert len(ctx.store.instance("web1")["disks"]) == 2 and len(ctx.store.jobs()) == 1  # the add's job only


def test_modify_removes_the_last_disk_of_a_stopped_instance_everywhere(ctx):
    instances.add(ctx, "db1", "1G", disks=["10G", "1G"], template="drbd", nodes="node1:node2")
    instances.add(ctx, "db2", "1G", disks="1G", template="file", nodes="node3")
    with pytest.raises(engine.OpError, match="^remove_disk: disk 0 is the only disk of db2"):
        changes.modify(ctx, "db2", remove_disk=0)
    plan = changes.modify(ctx, "db1", remove_disk=1, test=True)["plan"]
    assert [line.split("(")[0] for line in plan] == ["update_instance", "define_domain", "remove_disk", "remove_disk"]
    assert plan[2:] == ["remove_disk(index=1, instance=db1, node=node1, template=drbd)",
                        "remove_disk(index=1, instance=db1, node=node2, template=drbd)"]
