"""The events2 parser against every captured DRBD 8.4 state."""

import re

import pytest

from saltext.vmcluster.drbd import status
from drbd_testlib import FIXTURES

STATES = sorted(p.name[: -len(".events2.txt")] for p in FIXTURES.glob("[0-9]*.events2.txt"))
# drbd-utils 9 names -> the 8.4 names of /proc/drbd and role_cstate_dstate.txt
LEGACY_CSTATE = {"Connecting": "WFConnection", "Connected": "Connected", "StandAlone": "StandAlone"}


def _fixture(state, kind):
    return (FIXTURES / f"{state}.{kind}.txt").read_text()


def _legacy(res):
    """Render a summary the way role_cstate_dstate.txt (8.4 drbdadm role/cstate/dstate) reads."""
    peer = res["peers"][0]
    vol = peer["volumes"][0]
    cstate = LEGACY_CSTATE[peer["connection"]]
    if peer["connection"] == "Connected" and vol["replication"] != "Established":
        cstate = vol["replication"]
    disk = res["volumes"][0]["disk"]
    return f"role={res['role']}/{peer['role']} cstate={cstate} dstate={disk}/{vol['peer_disk']}"


def test_every_state_is_covered():
    assert len(STATES) == 24
    assert {s.split(".")[0][:2] for s in STATES} == {f"{i:02d}" for i in range(1, 15)}


@pytest.mark.parametrize("state", STATES)
def test_events2_matches_role_cstate_dstate(state):
    resources = status.parse_events2(_fixture(state, "events2"))
    assert list(resources) == ["r0"]
    assert _legacy(resources["r0"]) == _fixture(state, "role_cstate_dstate").strip()


@pytest.mark.parametrize("state", STATES)
def test_events2_matches_proc_drbd(state):
    res = status.parse_events2(_fixture(state, "events2"))["r0"]
    proc = _fixture(state, "proc_drbd")
    roles = re.search(r" ro:(\w+)/(\w+) ", proc).groups()
    assert (res["role"], res["peers"][0]["role"]) == roles
    assert res["volumes"][0]["minor"] == int(re.search(r"^ *(\d+): cs:", proc, re.M).group(1))
    # out-of-sync moves during a resync; outside one it is the same number
    vol = res["peers"][0]["volumes"][0]
    if vol["done"] is None:
        assert vol["out_of_sync_kib"] == int(re.search(r" oos:(\d+)", proc).group(1))


@pytest.mark.parametrize("state", STATES)
def test_done_follows_drbdsetup_status(state):
    """Our done % from out-of-sync/size equals the done: that drbdsetup status printed."""
    text = _fixture(state, "status")
    printed = re.search(r" done:([\d.]+)", text)
    if not printed:
        assert status.sync_progress(status.parse_events2(_fixture(state, "events2"))["r0"]) is None
        return
    fields = dict(re.findall(r"([\w-]+):(\S+)", text))
    as_events2 = (
        f"exists resource name:r0 role:{fields['role']}\n"
        f"exists device name:r0 volume:0 minor:0 disk:{fields['disk']} size:{fields['size']}\n"
        f"exists connection name:r0 peer-node-id:0 conn-name:peer connection:{fields['connection']}\n"
        f"exists peer-device name:r0 peer-node-id:0 conn-name:peer volume:0 "
        f"replication:{fields['replication']} peer-disk:{fields['peer-disk']} out-of-sync:{fields['out-of-sync']}\n"
    )
    res = status.parse_events2(as_events2)["r0"]
    assert status.sync_progress(res) == float(printed.group(1))


@pytest.mark.parametrize(
    ("state", "synced", "progress"),
    [
        ("01_connected_inconsistent_secondary.n1", False, None),
        ("02_initial_sync_in_progress.n1", False, 18.36),
        ("02_initial_sync_in_progress.n2", False, 33.6),
        ("03_synced_primary_secondary.n1", True, None),
        ("07_disconnected_primary_has_out_of_sync.n1", False, None),
        ("08_resync_after_reconnect_in_progress.n2", False, 89.16),
        ("13_rejoined_synced.n2", True, None),
        ("14_survivor_standalone_primary.n1", False, None),
    ],
)
def test_sync_helpers(state, synced, progress):
    res = status.parse_events2(_fixture(state, "events2"))["r0"]
    assert status.is_synced(res) is synced
    assert status.sync_progress(res) == progress


def test_standalone_peer_has_no_conn_name():
    res = status.parse_events2(_fixture("14_survivor_standalone_primary.n1", "events2"))["r0"]
    assert res["peers"] == [
        {
            "node_id": 0,
            "name": None,
            "connection": "StandAlone",
            "role": "Unknown",
            "volumes": [
                {"volume": 0, "replication": "Off", "peer_disk": "DUnknown", "out_of_sync_kib": 32, "done": None}
            ],
        }
    ]


def test_crash_and_promote_stream():
    """Peer crashes (NetworkFailure -> Connecting), then the survivor is promoted."""
    state = status.Events2State()
    seen = []
    for line in (FIXTURES / "events2_stream_crash_and_promote.n2.txt").read_text().splitlines():
        event = state.feed(line)
        res = state.resources()["r0"]
        if event and res["peers"]:
            seen.append((event[1], res["role"], res["peers"][0]["connection"]))
    assert seen[0] == ("exists", "Secondary", "Connected")
    assert ("change", "Secondary", "NetworkFailure") in seen
    assert seen[-2] == ("change", "Secondary", "Connecting")
    assert seen[-1] == ("change", "Primary", "Connecting")
    assert state.last_timestamp == "2026-11-21T05:49:43.162899+00:00"
    res = state.resources()["r0"]
    assert res["peers"][0]["volumes"][0]["peer_disk"] == "DUnknown"
    assert res["volumes"][0]["disk"] == "UpToDate"


def test_destroy_and_drbd9_fields():
    text = (
        "exists resource name:r1 role:Secondary suspended:no may_promote:no\n"
        "exists connection name:r1 peer-node-id:1 conn-name:n2 connection:Connected role:Secondary\n"
        "exists device name:r1 volume:0 minor:3 backing_dev:/dev/vg0/r1 disk:UpToDate client:no size:1024\n"
        "exists peer-device name:r1 peer-node-id:1 conn-name:n2 volume:0 replication:SyncSource "
        "peer-disk:Inconsistent out-of-sync:512 done:50.00\n"
        "exists path name:r1 peer-node-id:1 conn-name:n2 local:ipv4:10.0.0.1:7790 peer:ipv4:10.0.0.2:7790\n"
        "exists -\n"
    )
    state = status.Events2State().feed_text(text)
    res = state.resources()["r1"]
    assert res["volumes"] == [{"volume": 0, "minor": 3, "disk": "UpToDate", "size_kib": 1024}]
    assert res["peers"][0]["name"] == "n2"
    assert status.sync_progress(res) == 50.0
    state.feed("destroy peer-device name:r1 peer-node-id:1 conn-name:n2 volume:0")
    state.feed("destroy connection name:r1 peer-node-id:1 conn-name:n2")
    assert state.resources()["r1"]["peers"] == []
    state.feed("destroy resource name:r1")
    assert state.resources() == {}


def test_blank_and_end_marker_lines():
    assert status.parse_line("") is None
    assert status.parse_line("exists -") is None
    assert status.parse_line("2026-11-21T05:49:39.237898+00:00 exists -") is None
    assert status.parse_events2("") == {}
