"""htools text I/O: round trips, defaults, and malformed input."""

import pytest

from saltext.vmcluster.planner import htools
from saltext.vmcluster.planner.score import ScoreState

from .ganeti_tools import CORPUS_FILES, run_hinfo

LOADABLE = [f for f in CORPUS_FILES if f.name != "invalid-node.data"]
GROUP = "default|g-uuid|preferred||"
NODE = "node1|1024|0|1024|95367|95367|4|N|g-uuid|1"


def data(groups=(GROUP,), nodes=(NODE,), instances=(), tags=(), policies=None):
    sections = [groups, nodes, instances, tags] + ([policies] if policies is not None else [])
    return "\n".join("".join(line + "\n" for line in s) for s in sections)


@pytest.mark.parametrize("path", LOADABLE, ids=lambda p: p.name)
def test_round_trip_is_lossless(path):
    cluster = htools.load(path)
    assert htools.loads(htools.dumps(cluster)) == cluster


@pytest.mark.parametrize("path", LOADABLE, ids=lambda p: p.name)
def test_written_file_loads_in_hinfo_with_same_score(path, tmp_path):
    out = tmp_path / "written.data"
    htools.dump(htools.load(path), str(out))
    original, _ = run_hinfo(path, tmp_path)
    written, error = run_hinfo(out, tmp_path)
    assert written is not None, error
    assert written[1] == pytest.approx(original[1], abs=1e-8)
    assert written[0] == pytest.approx(original[0], abs=1e-8)


def test_missing_trailing_fields_take_ganeti_defaults():
    cluster = htools.loads(data(
        groups=("default|g-uuid|preferred|",),
        instances=("i1|128|1024|1|running|Y|node1||plain|",)))
    node, inst = cluster.nodes[0], cluster.instances[0]
    assert cluster.groups[0].networks == []
    assert (node.tags, node.exclusive_storage, node.free_spindles, node.os_vcpus,
            node.cpu_speed) == ([], False, 0, 1, 1.0)
    assert (inst.secondary, inst.spindle_use, inst.disk_spindles, inst.forthcoming) == \
        (None, 1, None, False)
    assert cluster.ipolicies == {}


def test_ipolicy_per_owner_round_trips():
    policy = "|128,1,1024,1,1,1|128,1,512,1,1,1;1024,8,1048576,16,8,12|drbd,plain|4.0|32.0"
    text = data(policies=(policy, "default" + policy.replace("32.0", "8.5")))
    cluster = htools.loads(text)
    assert set(cluster.ipolicies) == {"", "default"}
    assert cluster.ipolicies["default"].spindle_ratio == 8.5
    assert cluster.group_ipolicy(cluster.groups[0]).min_max_specs[0][1].memory_size == 1024
    assert htools.loads(htools.dumps(cluster)) == cluster


def test_unknown_resources_node_is_offline_and_round_trips():
    cluster = htools.loads(data(nodes=(NODE, "node2|?|?|?|?|?|?|N|g-uuid")))
    assert cluster.nodes[1].offline and not cluster.nodes[1].resources_known
    assert htools.loads(htools.dumps(cluster)) == cluster


@pytest.mark.parametrize("text, line, field", [
    (data(nodes=("node1|1024|0|lots|95367|95367|4|N|g-uuid|1",)), 3, "free_mem"),
    (data(nodes=("node1|1024|0|1024",)), 3, "total_disk"),
    (data(nodes=("node1|1024|0|1024|95367|95367|4|N|nope|1",)), 3, "group_uuid"),
    (data(nodes=("node1|1024|0|1024|95367|95367|4|X|g-uuid|1",)), 3, "flag"),
    (data(groups=("default|g-uuid|sometimes|",)), 1, "alloc_policy"),
    (data(instances=("i1|128|1024|1|running|Y|node1||plain|",
                     "i2|128|1024|1|running|Y|ghost||plain|")), 6, "primary"),
    (data(instances=("i1|128|1024|1|running|Y|node1|node1|drbd|",)), 5, "secondary"),
    (data(instances=("i1|128|1024|1|asleep|Y|node1||plain|",)), 5, "status"),
    (data(instances=("i1|128|1024|1|running|Y|node1||floppy|",)), 5, "disk_template"),
    (data(instances=("i1|128|1024|1|running|Y|node1||plain||1|-|maybe",)), 5, "forthcoming"),
    (data(policies=("|128,1,1024|128,1,1024,1,1,1;1,1,1,1,1,1|drbd|4.0|32.0",)), 7, "std_spec"),
    (data(policies=("|128,1,1024,1,1,1|128,1,1024,1,1,1|drbd|4.0|32.0",)), 7, "min_max_specs"),
    (data(policies=("nogroup|128,1,1024,1,1,1||drbd|4.0|32.0",)), 7, "owner"),
    (data(nodes=(NODE, NODE)), 4, "name"),
    ("default|g-uuid|preferred||\n\nnode1\n", 3, "sections"),
])
def test_malformed_input_names_line_and_field(text, line, field):
    with pytest.raises(htools.HtoolsFormatError) as err:
        htools.loads(text)
    assert (err.value.line, err.value.field) == (line, field)
    assert f"line {line}" in str(err.value) and f"'{field}'" in str(err.value)
    assert "fix:" in str(err.value)


def test_hinfo_rejects_what_we_reject(tmp_path):
    bad = [f for f in CORPUS_FILES if f.name == "invalid-node.data"]
    for path in bad:
        with pytest.raises(htools.HtoolsFormatError):
            htools.load(path)
        assert run_hinfo(path, tmp_path)[0] is None


def test_relocate_keeps_score_of_written_file_equal(tmp_path):
    """A relocated cluster scores the same here and in hinfo once written."""
    cluster = htools.load(LOADABLE[0].parent / "hbal-excl-tags.data")
    inst = next(i for i in cluster.instances if i.secondary)
    cluster.relocate(inst, inst.secondary, inst.primary)
    out = tmp_path / "moved.data"
    htools.dump(cluster, str(out))
    ref, error = run_hinfo(out, tmp_path)
    assert ref is not None, error
    assert ScoreState.from_cluster(cluster).total == pytest.approx(ref[1], abs=1e-6)
