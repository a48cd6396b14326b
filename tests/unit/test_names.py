"""Tests of the shared validators in saltext.vmcluster.names."""

import pytest

from saltext.vmcluster import names
from saltext.vmcluster.names import ValidationError


@pytest.mark.parametrize("value", ["web1", "a", "db-2_x.prod", "9lives", "x" * 63])
def test_name_good(value):
    assert names.name(value) == value


@pytest.mark.parametrize(
    "value",
    ["", "-web", ".web", "_web", "a..b", "a/b", "../etc", "web 1", "web;rm", "$(x)", "x" * 64, None, 5],
)
def test_name_bad(value):
    with pytest.raises(ValidationError) as err:
        names.name(value, field="instance")
    assert str(err.value).startswith("instance: invalid value")
    assert "letters, digits" in str(err.value)
    assert err.value.field == "instance"


@pytest.mark.parametrize(
    "value, mib",
    [
        ("10G", 10240),
        ("10GiB", 10240),
        ("10gb", 10240),
        ("512M", 512),
        ("1T", 1024 * 1024),
        ("2048", 2048),
        (2048, 2048),
        ("1.5G", 1536),
        ("1048576K", 1024),
    ],
)
def test_size_good(value, mib):
    assert names.size_mib(value) == mib
    assert names.size_bytes(value) == mib * names.MIB


@pytest.mark.parametrize("value", ["", "0", "-1G", "10X", "G", "1.5", "10 Gi", None, True, "1e3M"])
def test_size_bad(value):
    with pytest.raises(ValidationError, match=r"^disk\.size: .*binary unit"):
        names.size_mib(value, field="disk.size")


def test_size_mib_needs_whole_mib():
    assert names.size_bytes("1K") == 1024
    with pytest.raises(ValidationError, match="whole number of MiB"):
        names.size_mib("1K", field="memory")


def test_mac():
    assert names.mac("52-54-00-AA-bb-0C") == "52:54:00:aa:bb:0c"
    for bad in ("01:00:5e:00:00:01", "52:54:00:aa:bb", "zz:54:00:aa:bb:cc", "", None):
        with pytest.raises(ValidationError, match="^nic.mac: .*unicast"):
            names.mac(bad, field="nic.mac")


def test_bridge():
    assert names.bridge("br0") == "br0"
    assert names.bridge("xenbr0.100") == "xenbr0.100"
    for bad in ("br 0", "br/0", "a" * 16, "", "-br"):
        with pytest.raises(ValidationError, match="^bridge: .*interface name"):
            names.bridge(bad)


def test_path():
    assert names.path("/srv/vm/web1.qcow2") == "/srv/vm/web1.qcow2"
    for bad in ("relative/x", "/srv/../etc", "/srv//x", "/srv/x\n", "/srv/a'b", ""):
        with pytest.raises(ValidationError, match="^disk.path: .*absolute"):
            names.path(bad, field="disk.path")


def test_small_validators():
    assert names.positive_int("4", "vcpus") == 4
    assert names.positive_int(0, "timeout", minimum=0) == 0
    assert names.choice("raw", "format", ("qcow2", "raw")) == "raw"
    assert names.ip_address(" ::1 ") == "::1"
    assert names.port("5901") == 5901
    assert names.uuid("3E3FCE45-4F53-4FA7-BB32-11F34168B82B") == "3e3fce45-4f53-4fa7-bb32-11f34168b82b"
    assert names.uri("qemu+tcp://node2/system") == "qemu+tcp://node2/system"
    cases = [
        (names.positive_int, (0, "vcpus"), "at least 1"),
        (names.positive_int, (True, "vcpus"), "whole number"),
        (names.positive_int, (70000, "port", 65535), "at most 65535"),
        (names.choice, ("vmdk", "format", ("qcow2", "raw")), "one of: qcow2, raw"),
        (names.ip_address, ("localhost", "listen"), "IP address"),
        (names.uuid, ("nope", "uuid"), "UUID"),
        (names.uri, ("qemu://h/system; rm -rf /", "target_uri"), "URI"),
        (names.uri, ("node2", "target_uri"), "URI"),
    ]
    for func, args, fix in cases:
        with pytest.raises(ValidationError, match=f"^{args[1]}: .*{fix}"):
            func(*args)
