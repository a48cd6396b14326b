"""The drbd execution and state modules with Salt's loader mocked (salt-factories)."""

import stat
from unittest.mock import patch

import pytest
from drbd_testlib import FIXTURES, two_nodes
from salt.exceptions import CommandExecutionError, SaltInvocationError

import saltext.vmcluster.loaders.modules.drbd as drbd_mod
import saltext.vmcluster.loaders.states.drbd as drbd_state

SYNCED = (FIXTURES / "03_synced_primary_secondary.n1.events2.txt").read_text()
SYNCING = (FIXTURES / "02_initial_sync_in_progress.n1.events2.txt").read_text()
ARGS = {"nodes": two_nodes(), "port": 7790, "minor": 5, "secret": "s3cret"}


class FakeCmd:
    """``cmd.run_all``: records argument lists; events2 answers with the queued snapshots."""

    def __init__(self):
        self.calls = []
        self.events2 = [""]
        self.fail = None

    def __call__(self, argv, python_shell=True):
        assert isinstance(argv, list) and python_shell is False
        self.calls.append(argv)
        if self.fail and self.fail in argv:
            return {"retcode": 10, "stdout": "", "stderr": f"{self.fail}: failed\n"}
        out = ""
        if argv[0] == "drbdsetup":  # the last snapshot stays
            out = self.events2.pop(0) if len(self.events2) > 1 else self.events2[0]
        return {"retcode": 0, "stdout": out, "stderr": ""}

    def drbdadm(self):
        return [c[3:] for c in self.calls if c[0] == "drbdadm"]


@pytest.fixture
def cmd():
    return FakeCmd()


@pytest.fixture
def configure_loader_modules(tmp_path, cmd):
    salt_fns = {"cmd.run_all": cmd}
    mod_funcs = {
        f"drbd.{name}": getattr(drbd_mod, name)
        for name in ("render", "write_config", "read_config", "remove_config", "status", "up", "down", "adjust")
    }
    return {
        drbd_mod: {"__salt__": salt_fns, "__opts__": {"drbd.config_dir": str(tmp_path / "drbd.d")}},
        drbd_state: {"__salt__": mod_funcs, "__opts__": {"test": False}},
    }


def _res(tmp_path):
    return str(tmp_path / "drbd.d" / "r0.res")


def test_virtual_reasons():
    with patch("salt.utils.path.which", return_value=None):
        assert drbd_mod.__virtual__() == (False, "drbd: drbdadm not found (install drbd-utils)")
    with patch("salt.utils.path.which", return_value="/usr/sbin/drbdadm"):
        assert drbd_mod.__virtual__() == "drbd"
    with patch.object(drbd_mod, "HAS_LIB", False):
        assert "saltext.vmcluster package is not installed" in drbd_mod.__virtual__()[1]


def test_every_function_has_a_cli_example():
    public = [f for n, f in vars(drbd_mod).items() if callable(f) and not n.startswith("_") and f.__module__ == drbd_mod.__name__]
    assert len(public) == 16
    for func in public:
        assert f"salt '*' drbd.{func.__name__}" in func.__doc__, func.__name__


def test_write_config_is_private_and_idempotent(tmp_path):
    assert drbd_mod.write_config("r0", **ARGS) is True
    path = tmp_path / "drbd.d" / "r0.res"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert drbd_mod.read_config("r0") == drbd_mod.render("r0", **ARGS)
    assert drbd_mod.write_config("r0", **ARGS) is False
    assert drbd_mod.write_config("r0", **{**ARGS, "allow_two_primaries": True}) is True
    assert sorted(p.name for p in path.parent.iterdir()) == ["r0.res"]  # no temp file left
    assert drbd_mod.remove_config("r0") is True
    assert drbd_mod.remove_config("r0") is False


@pytest.mark.parametrize(
    ("func", "kwargs", "tail"),
    [
        ("create_md", {}, ["create-md", "r0"]),
        ("create_md", {"force": True}, ["create-md", "--force", "r0"]),
        ("up", {}, ["up", "r0"]),
        ("down", {}, ["down", "r0"]),
        ("primary", {}, ["primary", "r0"]),
        ("primary", {"force": True}, ["primary", "--force", "r0"]),
        ("primary", {"force": "yes"}, ["primary", "r0"]),  # only an explicit True forces
        ("secondary", {}, ["secondary", "r0"]),
        ("connect", {}, ["connect", "r0"]),
        ("disconnect", {}, ["disconnect", "r0"]),
        ("resize", {}, ["resize", "r0"]),
        ("adjust", {}, ["adjust", "r0"]),
        ("allow_two_primaries", {"enabled": True}, ["net-options", "--allow-two-primaries=yes", "r0"]),
        ("allow_two_primaries", {"enabled": False}, ["net-options", "--allow-two-primaries=no", "r0"]),
    ],
)
def test_commands_use_the_resource_file(tmp_path, cmd, func, kwargs, tail):
    assert getattr(drbd_mod, func)("r0", **kwargs) is True
    assert cmd.calls == [["drbdadm", "-c", _res(tmp_path), *tail]]


@pytest.mark.parametrize("bad", ["all", "../etc/passwd", "r0;reboot", "-d"])
@pytest.mark.parametrize("func", ["up", "down", "primary", "create_md", "status", "read_config", "wait_sync"])
def test_bad_names_run_nothing(cmd, bad, func):
    with pytest.raises(SaltInvocationError, match="^resource: "):
        getattr(drbd_mod, func)(bad)
    assert cmd.calls == []


def test_failure_is_reported(cmd):
    cmd.fail = "up"
    with pytest.raises(CommandExecutionError, match="failed \\(10\\): up: failed"):
        drbd_mod.up("r0")


def test_status(cmd):
    cmd.events2 = [SYNCED]
    assert drbd_mod.status("r0")["r0"]["peers"][0]["volumes"][0]["peer_disk"] == "UpToDate"
    assert list(drbd_mod.status()) == ["r0"]
    assert drbd_mod.status("r9") == {}
    assert cmd.calls[0] == ["drbdsetup", "events2", "--now", "--statistics", "all"]


def test_wait_sync_polls_until_synced(cmd):
    cmd.events2 = [SYNCING, SYNCING, SYNCED]
    with patch("time.sleep") as sleep:
        result = drbd_mod.wait_sync("r0", interval=1)
    assert result["synced"] is True and result["done"] is None
    assert sleep.call_count == 2


def test_wait_sync_times_out(cmd):
    cmd.events2 = [SYNCING]
    result = drbd_mod.wait_sync("r0", timeout=0)
    assert result == {"synced": False, "done": 18.36, "elapsed": result["elapsed"]}


def test_wait_sync_resource_down(cmd):
    with pytest.raises(CommandExecutionError, match="r0 is not up"):
        drbd_mod.wait_sync("r0")


def test_present_writes_and_brings_up(tmp_path, cmd):
    ret = drbd_state.resource_present("r0", **ARGS)
    assert ret == {
        "name": "r0",
        "result": True,
        "changes": {"config": "written", "up": True},
        "comment": "DRBD resource r0 updated",
    }
    assert cmd.drbdadm() == [["up", "r0"]]
    cmd.events2 = [SYNCED]  # now it runs
    ret = drbd_state.resource_present("r0", **ARGS)
    assert (ret["result"], ret["changes"], ret["comment"]) == (True, {}, "DRBD resource r0 is as declared")
    ret = drbd_state.resource_present("r0", **{**ARGS, "port": 7791})
    assert ret["changes"] == {"config": "written", "adjusted": True}
    assert cmd.drbdadm()[-1] == ["adjust", "r0"]


def test_present_test_mode_changes_nothing(tmp_path, cmd):
    with patch.dict(drbd_state.__opts__, {"test": True}):
        ret = drbd_state.resource_present("r0", **ARGS)
    assert ret["result"] is None and ret["changes"] == {"config": "written", "up": True}
    assert not (tmp_path / "drbd.d").exists() and cmd.drbdadm() == []


def test_present_config_only(cmd):
    ret = drbd_state.resource_present("r0", up=False, **ARGS)
    assert ret["changes"] == {"config": "written"} and cmd.calls == []


def test_present_partial_failure_is_honest(cmd):
    cmd.fail = "up"
    ret = drbd_state.resource_present("r0", **ARGS)
    assert ret["result"] is False and ret["changes"] == {"config": "written"}
    assert "up: failed" in ret["comment"]


def test_present_bad_value(cmd):
    ret = drbd_state.resource_present("r0", **{**ARGS, "port": 70000})
    assert ret["result"] is False and ret["comment"].startswith("port: ") and ret["changes"] == {}
    assert cmd.calls == []


def test_absent(tmp_path, cmd):
    drbd_mod.write_config("r0", **ARGS)
    cmd.events2 = [SYNCED]
    with patch.dict(drbd_state.__opts__, {"test": True}):
        ret = drbd_state.resource_absent("r0")
    assert ret["result"] is None and ret["changes"] == {"down": True, "config": "removed"}
    assert cmd.drbdadm() == [] and (tmp_path / "drbd.d" / "r0.res").exists()
    ret = drbd_state.resource_absent("r0")
    assert ret["changes"] == {"down": True, "config": "removed"} and cmd.drbdadm() == [["down", "r0"]]
    assert not (tmp_path / "drbd.d" / "r0.res").exists()
    cmd.events2 = [""]
    assert drbd_state.resource_absent("r0")["changes"] == {}


def test_state_virtual():
    assert drbd_state.__virtual__() == "drbd"
    with patch.dict(drbd_state.__salt__, clear=True):
        assert drbd_state.__virtual__()[0] is False
