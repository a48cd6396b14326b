"""The master-side ``cluster`` state module over a real Store and a fake ``saltutil.runner``."""

import copy

import pytest
import salt.config

import saltext.vmcluster.loaders.states.cluster as cluster_state
from saltext.vmcluster.store import Store

GIB = 1024 ** 3


class FakeRunner:
    """``saltutil.runner`` for the verbs the state uses: records calls, applies them to the store."""

    def __init__(self, store):
        self.store, self.calls, self.fail = store, [], None

    def __call__(self, fun, arg=(), kwarg=None):
        kwarg = dict(kwarg or {})
        self.calls.append((fun, list(arg), dict(kwarg)))
        if self.fail:
            return {"error": self.fail, "retcode": 1}
        if kwarg.pop("test"):
            return {"job": None, "plan": [f"{fun}({arg[0]})"]}
        name, verb = arg[0], fun.split(".")[1]
        record = self.store.instance(name)
        if verb == "add":
            record = {"name": name, "template": kwarg.get("template", "file"), "primary": "node1",
                      "memory": int(kwarg["memory"][:-1]) * (1024 if kwarg["memory"].endswith("G") else 1),
                      "vcpus": kwarg["vcpus"], "disks": [{"size": GIB * int(d[:-1])} for d in kwarg["disks"]],
                      "admin_state": "up" if kwarg.get("start", True) else "down"}
        elif verb in ("start", "stop"):
            record["admin_state"] = "up" if verb == "start" else "down"
        elif verb == "modify":
            record["vcpus"] = kwarg.get("vcpus", record["vcpus"])
        if verb == "remove":
            self.store.delete_instance(name)
        else:
            self.store.put_instance(record)
        return {"job": "j1", "operation": verb, "target": name, "state": "done"}


@pytest.fixture
def opts(tmp_path):
    opts = copy.deepcopy(salt.config.DEFAULT_MASTER_OPTS)
    opts.update(cachedir=str(tmp_path), test=False)
    return opts


@pytest.fixture
def store(opts):
    return Store.from_opts(opts)


@pytest.fixture
def runner(store):
    return FakeRunner(store)


@pytest.fixture
def pillar():
    return {"cluster": {"nodes": ["node1", "node2"], "instances": {"web1": {"memory": "1G", "disks": "1G"}}}}


@pytest.fixture
def configure_loader_modules(opts, runner, pillar):
    def pillar_get(key, default=None, unmask=False):
        assert unmask  # the master's own use: plain values
        return pillar.get(key, default)

    return {cluster_state: {"__opts__": opts, "__salt__": {"saltutil.runner": runner, "pillar.get": pillar_get}}}


def test_present_adds_then_has_nothing_to_do(runner):
    ret = cluster_state.instance_present("web1", memory="1G", disks=["1G"], vcpus=2, nodes="node1", tags=["a"])
    assert ret["result"] is True
    assert runner.calls == [("cluster.add", ["web1"], {"memory": "1G", "vcpus": 2, "disks": ["1G"],
                                                       "nodes": "node1", "tags": ["a"], "test": False})]
    assert ret["changes"]["add"]["why"] == "declared but not created"
    again = cluster_state.instance_present("web1", memory="1G", disks=["1G"], vcpus=2, nodes="node1", tags=["a"])
    assert again == {"name": "web1", "result": True, "changes": {}, "comment": "web1 is as declared"}
    assert len(runner.calls) == 1


def test_dry_run_plans_and_changes_nothing(opts, runner, store):
    opts["test"] = True
    ret = cluster_state.instance_present("web1", memory="1G", disks="1G", admin_state="down")
    assert ret["result"] is None
    assert ret["changes"]["add"]["plan"] == ["cluster.add(web1)"]
    assert runner.calls[0][2]["test"] is True and runner.calls[0][2]["start"] is False
    assert store.instances() == {}


def test_differences_run_modify_grow_and_stop_in_order(runner, store):
    store.put_instance({"name": "web1", "template": "file", "primary": "node1", "memory": 1024, "vcpus": 1,
                        "disks": [{"size": GIB}], "admin_state": "up"})
    ret = cluster_state.instance_present("web1", memory="1G", disks="2G", vcpus=2, admin_state="down")
    assert [c[0] for c in runner.calls] == ["cluster.modify", "cluster.grow_disk", "cluster.stop"]
    assert runner.calls[1][1:] == (["web1", 0], {"test": False, "size": "2G"})
    assert ret["result"] is True and set(ret["changes"]) == {"modify", "grow_disk", "stop"}


def test_what_no_verb_changes_fails_and_changes_nothing(runner, store):
    store.put_instance({"name": "web1", "template": "file", "primary": "node1", "memory": 1024, "vcpus": 1,
                        "disks": [{"size": 2 * GIB}], "admin_state": "up"})
    ret = cluster_state.instance_present("web1", memory="2G", disks="1G", template="drbd")
    assert ret["result"] is False and runner.calls == []
    assert "does not change in place" in ret["comment"] and "never shrink" in ret["comment"]


def test_invalid_arguments_and_runner_errors_fail_clearly(runner):
    bad = cluster_state.instance_present("web1", memory="lots", disks="1G")
    assert bad["result"] is False and bad["comment"].startswith("invalid declaration, nothing changed: memory:")
    runner.fail = "no node can take web1: FailMem"
    ret = cluster_state.instance_present("web1", memory="1G", disks="1G")
    assert ret["result"] is False
    assert ret["comment"] == "declared but not created: salt-run cluster.add failed: no node can take web1: FailMem"


def test_absent_removes_once(runner, store):
    assert cluster_state.instance_absent("web1")["changes"] == {}
    store.put_instance({"name": "web1", "template": "file", "primary": "node1", "memory": 1024, "vcpus": 1,
                        "disks": [{"size": GIB}], "admin_state": "up"})
    ret = cluster_state.instance_absent("web1")
    assert ret["result"] is True and list(ret["changes"]) == ["remove"] and store.instances() == {}


def test_pillar_valid_names_the_key_path(pillar):
    assert cluster_state.pillar_valid("cluster")["comment"].endswith("2 node(s), 1 declared instance(s)")
    pillar["cluster"]["instances"]["web1"]["memroy"] = 1
    ret = cluster_state.pillar_valid("cluster")
    assert ret["result"] is False and "cluster:instances:web1:memroy" in ret["comment"]
    del pillar["cluster"]
    assert "declare the cluster in pillar" in cluster_state.pillar_valid("cluster")["comment"]
