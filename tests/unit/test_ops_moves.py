"""Plans of migrate / failover / move, built against a real Store (on an in-memory cache) and a
node RPC that answers like the nodes. The drbd command sequence of a migration runs through the
real drbd Salt module down to a real ``drbdadm -d`` dry run (the host kernel has no DRBD module)."""

import os
import shutil
import subprocess

import pytest

import saltext.vmcluster.loaders.modules.drbd as drbd_mod
from saltext.vmcluster import config
from saltext.vmcluster.drbd.render import render_resource
from saltext.vmcluster.names import GIB, ValidationError
from saltext.vmcluster.ops import engine, moves
from saltext.vmcluster.rpc import NodeError
from saltext.vmcluster.store import Store

NODES = ("node1", "node2", "node3")
DISK = 10 * GIB + 512


class DictCache:
    """Salt's cache interface (store/fetch/list/flush) in memory."""

    def __init__(self):
        self.banks = {}

    def store(self, bank, key, data):
        self.banks.setdefault(bank, {})[key] = data

    def fetch(self, bank, key):
        return self.banks.get(bank, {}).get(key, {})

    def list(self, bank):
        return list(self.banks.get(bank, {}))

    def flush(self, bank, key):
        self.banks.get(bank, {}).pop(key, None)


def resources(free_mib):
    return {"memory": {"total": 8192, "node": 512, "free": free_mib}, "cpus": 4, "instances": {},
            "storage": {"file": {"location": "/srv", "total": 100000, "free": 90000}}}


class FakeNodes:
    """Answers node RPCs from a table; ``silent`` nodes answer nothing; every call is recorded."""

    def __init__(self, domains, silent=()):
        self.domains = domains  # node -> {name: state}
        self.silent = set(silent)
        self.calls = []
        self.handlers = {
            "cluster_vm.list_domains": lambda node: dict(self.domains.get(node, {})),
            "grains.get": lambda node, key: node_facts(node),
            "cluster_disk.info": lambda node, name, index, template: {"size": DISK, "path": f"/srv/{name}/disk{index}"},
            "cluster_node.resources": lambda node: resources({"node2": 1000, "node3": 6000}.get(node, 4000)),
        }

    def call(self, nodes, fun, args=(), kwargs=None, timeout=10):
        return {node: self.answer(node, fun, *args, **(kwargs or {})) for node in nodes if node not in self.silent}

    def call_one(self, node, fun, *args, rpc_timeout=60, **kwargs):
        if node in self.silent:
            raise NodeError(node, fun, f"no answer within {rpc_timeout}s", silent=True)
        return self.answer(node, fun, *args, **kwargs)

    def answer(self, node, fun, *args, **kwargs):
        self.calls.append((node, fun, args, kwargs))
        return self.handlers[fun](node, *args, **kwargs)


def node_facts(node, **migration):
    """A node's ``cluster_node`` grain; ``migration``: its ``vmcluster:migration`` settings (default:
    reached at ``qemu+tcp://<node>.example/system`` and ``192.0.2.<N>``)."""
    migration = migration or {"uri": f"qemu+tcp://{node}.example/system", "address": f"192.0.2.{node[-1]}"}
    return {"storage": {"file": f"/srv/{node}", "sharedfile": "/shared"}, "kvm_usable": True,
            "migration": migration}


def record(name, template, primary, secondary=None, admin_state="up", disks=1):
    disk = {"size": DISK, **({"drbd": {"minor": 4}} if template == "drbd" else {})}
    return {"name": name, "template": template, "memory": 512, "vcpus": 1, "disks": [disk] * disks,
            "nics": [], "tags": [], "admin_state": admin_state, "primary": primary, "secondary": secondary}


@pytest.fixture
def make_ctx(tmp_path):
    def make(records, domains, silent=()):
        store = Store(DictCache(), tmp_path / "locks")
        for rec in records:
            store.put_instance(rec)
        cfg = config.load({"cluster": {"nodes": list(NODES)}})
        return engine.Context(store=store, rpc=FakeNodes(domains, silent), cfg=cfg)

    return make


def plan_of(result):
    assert result["job"] is None
    return result["plan"]


def test_migrate_file_plan_is_one_node_call_to_the_planners_node(make_ctx):
    ctx = make_ctx([record("web1", "file", "node1", disks=2)], {"node1": {"web1": "running"}})
    plan = plan_of(moves.migrate(ctx, "web1", test=True))
    assert plan == [
        "migrate_domain(copy_storage=True, create_target_disks=True, instance=web1, migrate_uri=tcp://192.0.2.3, "
        "source=node1, target=node3, target_disks=['/srv/node3/web1/disk0.qcow2', '/srv/node3/web1/disk1.qcow2'], "
        "target_uri=qemu+tcp://node3.example/system)",
        "update_instance(name=web1, primary=node3)",
    ]  # node3 has the most free memory; the source node makes the target disks and removes its own
    assert ctx.store.jobs() == {}
    # the planner's figures and the target's grain (from the master's cache when it has it): the migration
    # step itself is the first question to the source
    assert {c[1] for c in ctx.rpc.calls} == {"cluster_node.resources", "grains.get"}


def test_migrate_plain_plan_makes_exact_size_lvs_first_and_removes_the_old_ones_after(make_ctx):
    ctx = make_ctx([record("web1", "plain", "node1")], {"node1": {"web1": "running"}})
    ctx.rpc.handlers["grains.get"] = lambda node, key: {"storage": {"plain": f"vg{node[-1]}"}, "migration": {}}
    plan = plan_of(moves.migrate(ctx, "web1", target="node2", test=True))
    assert plan == [
        f"create_disk(exact=True, index=0, instance=web1, node=node2, size={DISK}, template=plain)",
        "migrate_domain(copy_storage=True, create_target_disks=False, instance=web1, migrate_uri=None, "
        "source=node1, target=node2, target_disks=['/dev/vg2/web1.disk0'], target_uri=qemu+tcp://node2/system)",
        "update_instance(name=web1, primary=node2)",
        "remove_disk(index=0, instance=web1, node=node1, template=plain)",
    ]


def test_migrate_domain_is_one_call_and_a_repeat_finds_the_instance_moved(make_ctx):
    ctx = make_ctx([record("web1", "file", "node2")], {"node2": {"web1": "running"}})
    args = {"source": "node1", "target": "node2", "instance": "web1", "target_uri": "qemu+tcp://node2/system",
            "target_disks": ["/srv/node2/web1/disk0.qcow2"], "copy_storage": True, "create_target_disks": True}

    def migrate(node, name, uri, **kwargs):
        if ctx.rpc.domains.get(node, {}).get(name) != "running":
            raise NodeError(node, "cluster_vm.migrate", f"domain {name!r} is not running")
        return {"removed_disks": ["/srv/node1/web1/disk0.qcow2"]}

    ctx.rpc.handlers["cluster_vm.migrate"] = migrate
    ctx.rpc.handlers["cluster_disk.remove"] = lambda node, name, index, template: True
    assert moves.migrate_domain(ctx, **args) == "runs on the target"  # e.g. a resumed job
    assert [c[:2] for c in ctx.rpc.calls] == [("node1", "cluster_vm.migrate"), ("node1", "cluster_vm.list_domains"),
                                              ("node2", "cluster_vm.list_domains"), ("node1", "cluster_disk.remove")]
    ctx.rpc.domains, ctx.rpc.calls = {"node1": {"web1": "running"}}, []
    assert moves.migrate_domain(ctx, **args) == {"removed_disks": ["/srv/node1/web1/disk0.qcow2"]}
    assert [c[:2] for c in ctx.rpc.calls] == [("node1", "cluster_vm.migrate")]
    assert ctx.rpc.calls[0][3] == {"copy_storage": True, "migrate_uri": None, "remove_source_disks": True,
                                   "target_disks": ["/srv/node2/web1/disk0.qcow2"], "create_target_disks": True,
                                   "unsafe": False}
    ctx.rpc.domains = {"node1": {"web1": "shutoff"}}
    with pytest.raises(engine.Refused, match=r"^web1 is not running on node1 \(shutoff\) nor on node2; .*"
                                             r"salt-run cluster.move web1 target=node2$"):
        moves.migrate_domain(ctx, **args)


def test_migrate_sharedfile_to_a_given_node_copies_nothing(make_ctx):
    ctx = make_ctx([record("db1", "sharedfile", "node1")], {"node1": {"db1": "running"}})
    plan = plan_of(moves.migrate(ctx, "db1", target="node2", test=True))
    assert [line.split("(")[0] for line in plan] == ["migrate_domain", "update_instance"]
    assert "copy_storage=False" in plan[0] and "target=node2" in plan[0] and "unsafe" not in plan[0]
    ctx.rpc.handlers["grains.get"] = lambda node, key: node_facts(node, unsafe_shared_storage=True)
    assert "unsafe=True" in plan_of(moves.migrate(ctx, "db1", target="node2", test=True))[0]


def test_migrate_drbd_plan_is_the_dual_primary_protocol(make_ctx):
    ctx = make_ctx([record("db1", "drbd", "node1", "node2", disks=2)], {"node1": {"db1": "running"}})
    plan = plan_of(moves.migrate(ctx, "db1", test=True))
    assert plan == [
        "drbd_dual_primary(count=2, enabled=True, instance=db1, node=node1)",
        "drbd_dual_primary(count=2, enabled=True, instance=db1, node=node2)",
        "drbd_role(count=2, instance=db1, node=node2, role=primary)",
        "migrate_domain(copy_storage=False, create_target_disks=False, instance=db1, migrate_uri=tcp://192.0.2.2, "
        "source=node1, target=node2, target_disks=['/dev/drbd4', '/dev/drbd4'], "
        "target_uri=qemu+tcp://node2.example/system)",
        "drbd_role(count=2, instance=db1, node=node1, role=secondary)",
        "drbd_dual_primary(count=2, enabled=False, instance=db1, node=node1)",
        "drbd_dual_primary(count=2, enabled=False, instance=db1, node=node2)",
        "update_instance(name=db1, primary=node2, secondary=node1)",
    ]
    with pytest.raises(engine.OpError, match="^target: drbd instance db1 can only move to its secondary node2"):
        moves.migrate(ctx, "db1", target="node3", test=True)


@pytest.mark.parametrize(
    "name, kwargs, error",
    [
        ("web9", {}, "^instance 'web9' is not in the cluster; instances: web1"),
        ("web1", {"target": "node9"}, "^target: node 'node9' is not in the cluster; nodes: node1, node2, node3"),
        ("web1", {"target": "node1"}, "^target: web1 already lives on node1; give another node"),
        ("web1", {"target": "no de"}, "^target: invalid value 'no de'"),
    ],
)
def test_bad_arguments_change_nothing(make_ctx, name, kwargs, error):
    ctx = make_ctx([record("web1", "file", "node1")], {"node1": {"web1": "running"}})
    for operation in (moves.migrate, moves.move):
        with pytest.raises((engine.OpError, ValidationError), match=error):
            operation(ctx, name, **kwargs)
    assert ctx.store.jobs() == {} and ctx.store.instance("web1")["primary"] == "node1"


def not_running_here(node, name, *args, **kwargs):
    raise NodeError(node, "cluster_vm.migrate", f"domain {name!r} is not running; live migration needs a running domain")


@pytest.mark.parametrize("template, verb", [("file", "move"), ("plain", "move"), ("sharedfile", "failover")])
def test_migrate_refuses_a_stopped_instance_names_the_way_and_leaves_no_job(make_ctx, template, verb):
    ctx = make_ctx([record("web1", template, "node1", admin_state="down")], {"node1": {"web1": "shutoff"}})
    ctx.rpc.handlers["grains.get"] = lambda node, key: {"storage": {template: "vg0"}, "migration": {}}
    ctx.rpc.handlers["cluster_vm.migrate"] = not_running_here
    with pytest.raises(engine.OpError, match=rf"not running on node1 \(shutoff\).*salt-run cluster.{verb} web1 "
                                             "target=node2$"):
        moves.migrate(ctx, "web1", target="node2")
    assert ctx.store.jobs() == {}
    assert not [c for c in ctx.rpc.calls if c[1] == "cluster_disk.create"]  # plain: refused before making LVs


def test_offline_target_is_refused(make_ctx):
    ctx = make_ctx([record("web1", "file", "node1")], {"node1": {"web1": "running"}})
    ctx.store.put_node_flags("node2", {"offline": True})
    with pytest.raises(engine.OpError, match="^target: node node2 is offline"):
        moves.migrate(ctx, "web1", target="node2")


def test_failover_of_a_silent_primary_needs_the_operators_confirmation(make_ctx):
    ctx = make_ctx([record("db1", "sharedfile", "node1")], {}, silent=["node1"])
    with pytest.raises(engine.OpError, match=r"^node node1 does not answer, so db1 may still run there; .*"
                                             r"salt-run cluster.failover db1 ignore_consistency=True$"):
        moves.failover(ctx, "db1", target="node2")
    assert ctx.store.jobs() == {}
    plan = plan_of(moves.failover(ctx, "db1", target="node2", ignore_consistency="True", test=True))
    assert plan == [
        "release_old_primary(ignore_consistency=True, instance=db1, node=node1, timeout=60)",
        "update_instance(name=db1, primary=node2)",
        "define_domain(instance=db1, node=node2, start=True)",
    ]
    with pytest.raises(ValidationError, match="^ignore_consistency: invalid value 'perhaps'"):
        moves.failover(ctx, "db1", ignore_consistency="perhaps")


def test_release_old_primary_is_one_call_where_the_node_answers(make_ctx):
    ctx = make_ctx([], {"node1": {"db1": "running"}})
    ctx.rpc.handlers["cluster_vm.release"] = lambda node, name, timeout: {"state": "running", "forced": not timeout}
    assert moves.release_old_primary(ctx, "node1", "db1", timeout=0) == {"state": "running", "forced": True}
    assert moves.release_old_primary(ctx, "node1", "db1", timeout=5) == {"state": "running", "forced": False}
    assert [c[1:] for c in ctx.rpc.calls] == [("cluster_vm.release", ("db1",), {"timeout": 0}),
                                              ("cluster_vm.release", ("db1",), {"timeout": 5})]

    def fails(node, name, timeout):
        raise NodeError(node, "cluster_vm.release", "libvirt: connection refused")

    ctx.rpc.handlers["cluster_vm.release"] = fails
    with pytest.raises(NodeError, match="^node1: cluster_vm.release failed: libvirt: connection refused"):
        moves.release_old_primary(ctx, "node1", "db1", ignore_consistency=True)  # it answered: not down
    silent = make_ctx([], {}, silent=["node1"])
    with pytest.raises(engine.OpError, match="^node node1 does not answer"):
        moves.release_old_primary(silent, "node1", "db1")
    assert "confirmed" in moves.release_old_primary(silent, "node1", "db1", ignore_consistency=True)


def test_failover_drbd_and_refusals(make_ctx):
    ctx = make_ctx([record("db1", "drbd", "node1", "node2", admin_state="down"), record("web1", "file", "node1"),
                    record("vol1", "plain", "node3")], {"node1": {"db1": "shutoff"}})
    plan = plan_of(moves.failover(ctx, "db1", shutdown_timeout=0, test=True))
    assert plan == [
        "release_old_primary(ignore_consistency=False, instance=db1, node=node1, timeout=0)",
        "drbd_role(count=1, instance=db1, node=node1, role=secondary, skip_if_silent=False)",
        "drbd_role(count=1, instance=db1, node=node2, role=primary)",
        "update_instance(name=db1, primary=node2, secondary=node1)",
        "define_domain(instance=db1, node=node2, start=False)",
    ]  # admin-down: not started
    with pytest.raises(engine.OpError, match="^template: web1 is a file instance whose disks exist on node1 only"):
        moves.failover(ctx, "web1")
    with pytest.raises(engine.OpError, match="^template: vol1 is a plain instance whose disks exist on node3 only"):
        moves.failover(ctx, "vol1")
    with pytest.raises(ValidationError, match="^shutdown_timeout: "):
        moves.failover(ctx, "db1", shutdown_timeout=-1)


@pytest.mark.parametrize("template", ["file", "plain"])
def test_move_plan_stops_copies_and_restores_the_admin_state(make_ctx, template):
    ctx = make_ctx([record("web1", template, "node1", disks=2)], {"node1": {"web1": "running"}})
    plan = plan_of(moves.move(ctx, "web1", target="node2", shutdown_timeout=5, test=True))
    assert [line.split("(")[0] for line in plan] == [
        "update_instance", "stop_domain", "create_disk", "create_disk", "copy_disk", "copy_disk", "define_domain",
        "update_instance", "undefine_domain", "remove_disk", "remove_disk", "start_domain", "update_instance",
    ]
    assert plan[0] == "update_instance(admin_state=down, name=web1)" and plan[-1].endswith("(admin_state=up, name=web1)")
    assert plan[4] == ("copy_disk(address=192.0.2.1, index=0, instance=web1, source=node1, target=node2, "
                       f"template={template})")
    job = engine.new_job("move", "web1", [("create_disk", {}, "create-target-disks")] * 2 + [("copy_disk", {})], [])
    assert [s["set"] for s in job["steps"]] == ["create-target-disks", "create-target-disks", 2]


def test_move_needs_a_copy_template_and_the_source_address(make_ctx):
    ctx = make_ctx([record("db1", "sharedfile", "node1"), record("web1", "file", "node1"),
                    record("db2", "drbd", "node1", "node2")], {})
    with pytest.raises(engine.OpError, match="^template: db1 is a sharedfile instance"):
        moves.move(ctx, "db1", target="node2")
    with pytest.raises(engine.OpError, match="^template: db2 is a drbd instance: .* cluster.migrate db2"):
        moves.move(ctx, "db2", target="node3")
    ctx.rpc.handlers["grains.get"] = lambda node, key: {"migration": None}
    with pytest.raises(engine.OpError, match=r"^vmcluster:migration:address is not set in the minion config of node1"):
        moves.move(ctx, "web1", target="node2")
    assert moves.endpoint(ctx, "node2") == {"uri": "qemu+tcp://node2/system", "address": None,
                                            "unsafe_shared_storage": False}
    ctx.rpc.handlers["grains.get"] = lambda node, key: node_facts(node, uri="qemu+tcp://x/system; rm -rf /")
    with pytest.raises(ValidationError, match=r"^vmcluster:migration \(minion config of node2\):uri: "):
        moves.endpoint(ctx, "node2")


# --- drbd: the real Salt module down to drbdadm -d ---------------------------


def dry_run(argv, python_shell=True):
    """``cmd.run_all`` running drbdadm with ``-d``: it prints the drbdsetup calls instead of making them."""
    assert python_shell is False and argv[0] == "drbdadm"
    result = subprocess.run([argv[0], "-d", *argv[1:]], capture_output=True, text=True, check=False)
    return {"retcode": result.returncode, "stdout": result.stdout, "stderr": result.stderr}


@pytest.fixture
def configure_loader_modules(tmp_path):
    return {drbd_mod: {"__salt__": {"cmd.run_all": dry_run}, "__opts__": {"drbd.config_dir": str(tmp_path)}}}


@pytest.mark.skipif(shutil.which("drbdadm") is None, reason="drbd-utils is not installed")
def test_drbd_migration_runs_down_to_drbdadm_dry_runs(make_ctx, tmp_path):
    """Every drbd step of the migration job reaches a real ``drbdadm -d`` that accepts it; the live
    migration itself needs the DRBD kernel module (host has none: it runs in the system tier)."""
    peers = [{"name": os.uname().nodename, "address": "127.0.0.1", "disk": "/dev/vg0/db1.disk0_data"},
             {"name": "peer", "address": "127.0.0.2", "disk": "/dev/vg0/db1.disk0_data"}]
    (tmp_path / "db1.disk0.res").write_text(render_resource("db1.disk0", peers, 7790, 4, "s3cret"))
    ctx = make_ctx([record("db1", "drbd", "node1", "node2")], {"node1": {"db1": "running"}})
    printed = []

    def drbd_call(fun):
        def call(node, *args):
            printed.append(getattr(drbd_mod, fun)(*args))
            return True
        return call

    for fun in ("allow_two_primaries", "primary", "secondary"):
        ctx.rpc.handlers[f"drbd.{fun}"] = drbd_call(fun)
    migrated = []
    ctx.rpc.handlers["cluster_vm.migrate"] = lambda node, *args, **kwargs: migrated.append((node, args, kwargs))
    moves.migrate(ctx, "db1")
    assert printed == [True] * 6
    assert migrated == [("node1", ("db1", "qemu+tcp://node2.example/system"), {
        "copy_storage": False, "migrate_uri": "tcp://192.0.2.2", "remove_source_disks": True,
        "target_disks": ["/dev/drbd4"], "create_target_disks": False, "unsafe": False})]
    drbd_calls = [(node, fun, args) for node, fun, args, _ in ctx.rpc.calls if fun.startswith("drbd.")]
    assert drbd_calls == [
        ("node1", "drbd.allow_two_primaries", ("db1.disk0", True)),
        ("node2", "drbd.allow_two_primaries", ("db1.disk0", True)),
        ("node2", "drbd.primary", ("db1.disk0",)),
        ("node1", "drbd.secondary", ("db1.disk0",)),
        ("node1", "drbd.allow_two_primaries", ("db1.disk0", False)),
        ("node2", "drbd.allow_two_primaries", ("db1.disk0", False)),
    ]
    assert ctx.store.instance("db1")["primary"] == "node2" and ctx.store.instance("db1")["secondary"] == "node1"
