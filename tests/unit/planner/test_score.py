"""htools score: agreement with Ganeti's hinfo, and incremental == full."""

import time

import numpy as np
import pytest

from saltext.vmcluster.planner import htools
from saltext.vmcluster.planner.score import COLUMNS, NodeLoads, ScoreState

from .ganeti_tools import CORPUS_FILES, random_cluster, run_hinfo

# Corpus files this planner cannot load (and neither can Ganeti's hinfo).
UNLOADABLE = {
    "invalid-node.data": "instance new-0 names the unknown node 'no-such-node' "
                         "(hinfo also refuses it: deliberately invalid test data)",
}


@pytest.mark.parametrize("path", CORPUS_FILES, ids=lambda p: p.name)
def test_score_matches_hinfo(path, tmp_path):
    if path.name in UNLOADABLE:
        pytest.skip(UNLOADABLE[path.name])
    ref, error = run_hinfo(path, tmp_path)
    assert ref is not None, error
    state = ScoreState.from_cluster(htools.load(path))
    mine = {m.name: m.value for m in state.breakdown()}
    assert mine.keys() == ref[0].keys()
    for name, value in ref[0].items():
        assert mine[name] == pytest.approx(value, abs=1e-6), name
    assert state.total == pytest.approx(ref[1], abs=1e-6)


def test_unloadable_corpus_files_raise_format_errors():
    for name in UNLOADABLE:
        with pytest.raises(htools.HtoolsFormatError):
            htools.load(CORPUS_FILES[0].parent / name)


def random_move(rng, cluster):
    """Pick an instance and new nodes for it; returns (index, primary, secondary)."""
    i = int(rng.integers(len(cluster.instances)))
    pri, sec = (int(x) for x in rng.choice(len(cluster.nodes), size=2, replace=False))
    return i, pri, sec if cluster.instances[i].disk_template == "drbd" else -1


@pytest.mark.parametrize("seed", range(5))
def test_incremental_equals_full_recompute(seed):
    rng = np.random.default_rng(seed)
    cluster = random_cluster(rng, 30, 200)
    loads = NodeLoads(cluster)
    state = ScoreState.from_loads(loads)
    for _ in range(100):
        i, pri, sec = random_move(rng, cluster)
        before = state.total
        changes = loads.changes(loads.move(i, pri, sec))
        delta = state.delta(changes)
        state.apply(changes)
        full = ScoreState.from_loads(loads)
        assert state.total == pytest.approx(full.total, abs=1e-9)
        assert before + delta == pytest.approx(full.total, abs=1e-9)
        for mine, ref in zip(state.breakdown(), full.breakdown()):
            assert mine.value == pytest.approx(ref.value, abs=1e-9), mine.name


@pytest.mark.parametrize("seed", range(3))
def test_moves_match_a_fresh_load_of_the_moved_cluster(seed):
    """Aggregate bookkeeping equals rebuilding from the relocated model."""
    rng = np.random.default_rng(seed)
    cluster = random_cluster(rng, 20, 120)
    loads = NodeLoads(cluster)
    for _ in range(50):
        i, pri, sec = random_move(rng, cluster)
        loads.move(i, pri, sec)
        cluster.relocate(cluster.instances[i], cluster.nodes[pri].name,
                         cluster.nodes[sec].name if sec >= 0 else None)
    np.testing.assert_allclose(loads.rows(), NodeLoads(cluster).rows(), atol=1e-12)
    assert ScoreState.from_loads(loads).total == pytest.approx(
        ScoreState.from_cluster(cluster).total, abs=1e-9)


def test_candidate_totals_equal_individual_deltas():
    """Moving a single-node instance: the old node is fixed, targets vary."""
    rng = np.random.default_rng(7)
    cluster = random_cluster(rng, 25, 150)
    loads = NodeLoads(cluster)
    state = ScoreState.from_loads(loads)
    i = next(k for k, inst in enumerate(cluster.instances)
             if not inst.secondary and not inst.forthcoming and inst.tags)
    old_pri = int(loads.placement[i][0])
    candidates = [n for n in range(len(cluster.nodes)) if n != old_pri]
    expected, rows, maps = [], [], []
    for cand in candidates:
        changes = loads.changes(loads.move(i, cand, -1))
        expected.append(state.total + state.delta(changes))
        rows.append(changes[cand][0])
        maps.append(changes[cand][1].copy())
        loads.move(i, old_pri, -1)
    loads.unplace(i)
    fixed = loads.changes([old_pri])
    got = state.candidate_totals(candidates, np.array(rows), fixed=fixed, maps=maps)
    np.testing.assert_allclose(got, expected, atol=1e-9)


def test_offline_nodes_count_only_in_offline_metrics():
    cluster = random_cluster(np.random.default_rng(3), 10, 60)
    cluster.nodes[0].offline = True
    state = ScoreState.from_cluster(cluster)
    on_node0 = [i for i in cluster.instances if not i.forthcoming
                and cluster.nodes[0].name in (i.primary, i.secondary)]
    values = {m.name: m.value for m in state.breakdown()}
    assert values["offline_all_cnt"] == len(on_node0)
    assert values["offline_pri_cnt"] == sum(i.primary == "node0" for i in on_node0)


def test_full_score_of_large_cluster_is_fast():
    cluster = random_cluster(np.random.default_rng(1), 1000, 10000)
    start = time.perf_counter()
    state = ScoreState.from_cluster(cluster)
    elapsed = time.perf_counter() - start
    assert len(state.breakdown()) == len(COLUMNS) + 1
    assert elapsed < 10, f"full score took {elapsed:.2f}s"
