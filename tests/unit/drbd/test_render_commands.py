"""Resource files and command lines, checked with the real drbdadm (dump and dry runs)."""

import os
import shlex
import subprocess
import xml.etree.ElementTree as ET

import pytest
from drbd_testlib import DRBDADM_84, FIXTURES, THIS_HOST, needs_drbdadm, needs_kernel_drbd, two_nodes

from saltext.vmcluster.drbd import DrbdValueError, check_name, commands, status
from saltext.vmcluster.drbd.render import render_resource

SECRET = "Zq8#x!p;{w}"
PARSERS = ["drbdadm"] + ([DRBDADM_84] if os.access(DRBDADM_84, os.X_OK) else [])


def _write(tmp_path, name="r0", **kwargs):
    options = {"nodes": two_nodes(), "port": 7790, "minor": 5, "secret": SECRET, **kwargs}
    path = tmp_path / f"{name}.res"
    path.write_text(render_resource(name, **options))
    return path


def _run(argv):
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _dry(argv, parser="drbdadm"):
    """Run a drbdadm argument list as a dry run (-d): return the low-level calls it would make."""
    assert argv[0] == commands.DRBDADM
    return _run([parser, "-d", *argv[1:]]).splitlines()


@needs_drbdadm
def test_dump_xml_round_trips_values(tmp_path):
    path = _write(tmp_path, allow_two_primaries=True)
    xml = ET.fromstring(_run(["drbdadm", "-c", str(path), "dump-xml"]))
    res = xml.find("resource")
    assert res.get("name") == "r0"
    hosts = {h.get("name"): h for h in res.findall("host")}
    assert list(hosts) == [THIS_HOST, "peer-node"]
    for node in two_nodes():
        host = hosts[node["name"]]
        assert host.find("volume/device").get("minor") == "5"
        assert host.find("volume/disk").text == node["disk"]
        assert host.find("volume/meta-disk").text == "internal"
        assert (host.find("address").text, host.find("address").get("port")) == (node["address"], "7790")
    net = {o.get("name"): o.get("value") for o in res.findall("section[@name='net']/option")}
    assert net == {
        "protocol": "C",
        "cram-hmac-alg": "sha256",
        "shared-secret": SECRET,
        "allow-two-primaries": "yes",
    }


def test_matches_the_lab_resource():
    """The resource the lab ran (drbdadm_dump_xml.n1.txt) renders with the same hosts and volumes."""
    lab = ET.fromstring((FIXTURES / "drbdadm_dump_xml.n1.txt").read_text())
    nodes = [
        {"name": h.get("name"), "address": h.find("address").text, "disk": h.find("volume/disk").text}
        for h in lab.findall("host")
    ]
    text = render_resource("r0", nodes, 7789, 0, "x")
    for node in nodes:
        assert f'on "{node["name"]}" {{' in text
        assert f"address ipv4 {node['address']}:7789;" in text
        assert f'disk "{node["disk"]}";' in text
    assert "protocol C;" in text


@needs_drbdadm
@pytest.mark.parametrize("parser", PARSERS)
@pytest.mark.parametrize("drbd9", [False, True])
def test_dump_parses(tmp_path, parser, drbd9):
    path = _write(tmp_path, drbd9=drbd9, hmac_alg="sha1")
    proc = subprocess.run([parser, "-c", str(path), "dump", "r0"], capture_output=True, text=True, check=False)
    if parser == DRBDADM_84 and drbd9:
        # the 8.4 parser rejects node-id: drbd9=True is for the DRBD 9 module only
        assert proc.returncode != 0 and "node-id" in proc.stderr
        return
    assert proc.returncode == 0, proc.stderr
    assert "cram-hmac-alg    sha1;" in proc.stdout
    assert ("node-id 1;" in proc.stdout) is (drbd9 or parser == "drbdadm")


@needs_drbdadm
def test_ipv6_addresses(tmp_path):
    nodes = [{**n, "address": a} for n, a in zip(two_nodes(), ["::1", "fd00::2"])]
    path = _write(tmp_path, nodes=nodes)
    assert "address          ipv6 [fd00::2]:7790;" in _run(["drbdadm", "-c", str(path), "dump", "r0"])


@needs_drbdadm
@pytest.mark.parametrize("parser", PARSERS)
def test_dry_run_sequence(tmp_path, parser):
    """create-md, up, primary --force (initial sync), secondary, down: what drbdadm would run."""
    cfg = _write(tmp_path)
    calls = {
        "create_md": _dry(commands.create_md("r0", cfg), parser),
        "up": _dry(commands.up("r0", cfg), parser),
        "primary": _dry(commands.primary("r0", cfg), parser),
        "initial": _dry(commands.primary("r0", cfg, force_initial_sync=True), parser),
        "secondary": _dry(commands.secondary("r0", cfg), parser),
        "down": _dry(commands.down("r0", cfg), parser),
    }
    assert "/dev/vg0/r0 internal create-md" in calls["create_md"][0]
    assert any(c.endswith("attach 5 /dev/vg0/r0 /dev/vg0/r0 internal") for c in calls["up"])
    connect = " ".join(calls["up"])
    assert "ipv4:127.0.0.1:7790 ipv4:127.0.0.2:7790" in connect
    words = shlex.split(connect)  # the dry run prints shell-quoted words
    assert f"--shared-secret={SECRET}" in words and "--protocol=C" in words
    assert not calls["primary"][0].endswith("--force")
    assert calls["initial"][0].endswith("--force")
    assert calls["secondary"][0].split()[-2:][0] == "secondary"
    assert calls["down"][0].endswith("down r0")


@needs_drbdadm
@pytest.mark.parametrize("parser", PARSERS)
def test_dry_run_other_commands(tmp_path, parser):
    cfg = _write(tmp_path)
    assert _dry(commands.adjust("r0", cfg), parser)
    assert _dry(commands.resize("r0", cfg), parser)[0].endswith("resize 5")
    assert "--allow-two-primaries=yes" in _dry(commands.allow_two_primaries("r0", True, cfg), parser)[0]
    assert "--allow-two-primaries=no" in _dry(commands.allow_two_primaries("r0", False, cfg), parser)[0]
    # 9 names the peer by node-id (drbdadm numbers hosts itself without node-id), 8.4 by addresses
    assert "connect" in _dry(commands.connect("r0", cfg), parser)[0].split()
    assert "disconnect" in _dry(commands.disconnect("r0", cfg), parser)[0].split()


@needs_drbdadm
def test_force_create_md(tmp_path):
    cfg = _write(tmp_path)
    assert commands.create_md("r0", cfg, force=True)[-2:] == ["--force", "r0"]
    assert _dry(commands.create_md("r0", cfg, force=True))[0].endswith("--force")


def test_command_lists():
    assert commands.up("r0") == ["drbdadm", "up", "r0"]
    assert commands.down("r0", "/tmp/x/r0.res") == ["drbdadm", "-c", "/tmp/x/r0.res", "down", "r0"]
    assert commands.primary("r0", force_initial_sync=True) == ["drbdadm", "primary", "--force", "r0"]
    assert commands.events2() == ["drbdsetup", "events2", "--now", "--statistics", "all"]
    assert commands.events2("vm-1.disk0") == ["drbdsetup", "events2", "--now", "--statistics", "vm-1.disk0"]
    # --json fails on the 8.4 module (show_json_on_84.txt); status must never rely on it
    assert "unrecognized option '--json'" in (FIXTURES / "status_json_on_84.txt").read_text()
    assert "--json" not in commands.events2()


BAD_NAMES = ["", "all", "-r0", ".r0", "../r0", "r0/x", "r0;reboot", "r0 r1", "r0$(id)", "r\n0", "x" * 65, None, 7]


@pytest.mark.parametrize("bad", BAD_NAMES)
def test_bad_resource_names(bad):
    with pytest.raises(DrbdValueError, match="^resource: "):
        commands.up(bad)
    with pytest.raises(DrbdValueError, match="^resource: "):
        render_resource(bad, two_nodes(), 7789, 0, "s")


def test_good_names():
    for good in ["r0", "vm-1.disk_0", "A" * 64]:
        assert check_name(good) == good


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"port": 0}, "port"),
        ({"port": "7789"}, "port"),
        ({"minor": -1}, "nodes\\[0\\].minor"),
        ({"minor": True}, "nodes\\[0\\].minor"),
        ({"secret": 'a"b'}, "secret"),
        ({"secret": "x" * 65}, "secret"),
        ({"secret": ""}, "secret"),
        ({"hmac_alg": "md5"}, "hmac_alg"),
        ({"nodes": two_nodes()[:1]}, "nodes"),
        ({"nodes": two_nodes(local="peer-node")}, "nodes"),
        ({"nodes": [two_nodes()[0], {"name": "n2", "address": "10.0.0.2"}]}, "nodes\\[1\\]: missing disk"),
        ({"nodes": [two_nodes()[0], "n2"]}, "nodes\\[1\\]"),
        ({"nodes": two_nodes(address="10.0.0.300")}, "nodes\\[0\\].address"),
        ({"nodes": two_nodes(disk="dev/vg0/r0")}, "nodes\\[0\\].disk"),
        ({"nodes": two_nodes(disk="/dev/vg0/../sda")}, "nodes\\[0\\].disk"),
        ({"nodes": two_nodes(disk='/dev/x"; }')}, "nodes\\[0\\].disk"),
        ({"nodes": [two_nodes()[0], {**two_nodes()[1], "name": "n2;x"}]}, "nodes\\[1\\].name"),
    ],
)
def test_bad_render_values(change, field):
    options = {"nodes": two_nodes(), "port": 7789, "minor": 0, "secret": "s", **change}
    with pytest.raises(DrbdValueError, match=f"^{field}"):
        render_resource("r0", **options)


def test_per_node_minor():
    nodes = [{**two_nodes()[0], "minor": 3}, two_nodes()[1]]
    text = render_resource("r0", nodes, 7789, 9, "s")
    assert text.count("device minor 3;") == 1 and text.count("device minor 9;") == 1


@pytest.mark.system
@needs_kernel_drbd
def test_events2_on_the_running_kernel():
    """drbdsetup events2 of the real module parses (without it drbdsetup exits 20)."""
    resources = status.parse_events2(_run(commands.events2()))
    assert all(res["role"] in ("Primary", "Secondary") for res in resources.values())
