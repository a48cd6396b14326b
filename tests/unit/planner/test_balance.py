"""Balancer: move types, Ganeti's hard checks, groups, job sets, and hbal parity."""

import math
import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from saltext.vmcluster.planner import cli, htools
from saltext.vmcluster.planner.balance import (
    COPY,
    FAILOVER,
    FAILOVER_AND_REPLACE,
    FAILOVER_TO_ANY,
    KIND_CODE,
    KINDS,
    REPLACE_AND_FAILOVER,
    REPLACE_PRIMARY,
    REPLACE_SECONDARY,
    Balancer,
    adopt_placement,
    balance,
    job_sets,
)
from saltext.vmcluster.planner.score import ScoreState

from .ganeti_tools import CORPUS_FILES, random_cluster, run_hinfo

HBAL = Path("/usr/lib/ganeti/3.0/usr/bin/hbal")
GROUPS = "default|g|preferred||\n"


def cluster_text(nodes, instances, tags="", policy=""):
    """htools text with default 2-group-free layout; nodes/instances are line lists."""
    return "\n".join([GROUPS, "\n".join(nodes) + "\n", "\n".join(instances) + "\n", tags + "\n", policy])


def node(name, mem=8192, free=8192, disk=100000, cpus=8, flag="N", tags=""):
    return f"{name}|{mem}|0|{free}|{disk}|{disk}|{cpus}|{flag}|g|1|{tags}"


def inst(name, pri, sec="", template="rbd", mem=1024, disk=1000, vcpus=1, tags=""):
    return f"{name}|{mem}|{disk}|{vcpus}|running|Y|{pri}|{sec}|{template}|{tags}"


def loaded(nodes, instances, **kwargs):
    cluster = htools.loads(cluster_text(nodes, instances, **kwargs))
    for i in cluster.instances:  # instances take their resources on the nodes
        i_pri, i_sec = i.primary, i.secondary
        cluster.relocate(i, i_pri, i_sec)
    return cluster


def moved_to(result, node_name):
    return [m for m in result.moves if node_name in (m.new_primary, m.new_secondary)
            and node_name not in (m.old_primary, m.old_secondary)]


# -- every move type is scored exactly ---------------------------------------------


@pytest.mark.parametrize("seed", range(3))
def test_vectorised_scores_equal_full_recompute_for_every_kind(seed):
    cluster = random_cluster(np.random.default_rng(seed), 12, 60)
    bal = Balancer(cluster, allow_copy_storage=True)
    seen = set()
    for i in bal.movable[:25]:
        pri, sec = (int(x) for x in bal.loads.placement[i])
        targets = bal.targets["g"]
        one = np.array([i])
        cand = bal._candidates(one, bal._target_masks(one, "g"), targets)
        scores = bal._score(cand)
        for k in range(0, len(cand.kinds), 3):
            seen.add(KINDS[cand.kinds[k]])
            bal.loads.move(i, int(cand.pri[k]), int(cand.sec[k]))
            full = ScoreState.from_loads(bal.loads).total
            bal.loads.move(i, pri, sec)
            if np.isfinite(scores[k]):
                assert scores[k] == pytest.approx(full, abs=1e-9), KINDS[cand.kinds[k]]
    assert {FAILOVER, REPLACE_SECONDARY, REPLACE_AND_FAILOVER, REPLACE_PRIMARY,
            FAILOVER_AND_REPLACE, FAILOVER_TO_ANY, COPY} <= seen


@pytest.mark.parametrize("seed", range(4))
def test_gradient_shortlist_gives_the_exact_moves_on_small_clusters(seed):
    # shortlist=0 forces the large-group path: 4 targets per role out of 10
    cluster = random_cluster(np.random.default_rng(seed), 12, 60)
    exact, fast = balance(cluster), balance(cluster, shortlist=0, shortlist_size=4)
    assert fast.moves == exact.moves
    assert fast.final_score == exact.final_score


def test_linear_estimates_are_optimistic_and_order_the_lazy_search():
    rng = np.random.default_rng(9)
    nodes = [node(f"n{k}", mem=65536, free=65536, disk=1000000) for k in range(12)]
    instances = [inst(f"i{k}", f"n{rng.integers(3)}", f"n{3 + rng.integers(9)}", template="drbd",
                      mem=int(rng.choice([512, 2048])), disk=int(rng.choice([5000, 20000])))
                 for k in range(60)]
    cluster = loaded(nodes, instances)
    bal = Balancer(cluster, shortlist=0)
    current = bal.state.total
    exact = np.array([best[0] for best in bal.best_moves(bal.movable)]) - current
    estimates = bal.estimates(bal.movable, chunk=7)
    assert np.all(estimates <= exact + 1e-9)  # first order: optimistic
    assert np.corrcoef(estimates, exact)[0, 1] > 0.9
    ordered = balance(cluster, exact_budget=0, estimate_budget=0)
    assert ordered.moves and ordered.final_score < ordered.initial_score / 10


def test_corpus_runs_use_every_drbd_and_shared_move_type():
    kinds = set()
    for path in CORPUS_FILES:
        if path.name.startswith(("hbal-", "shared-", "hspace-groups-one")):
            kinds.update(m.kind for m in balance(htools.load(path)).moves)
    assert {REPLACE_SECONDARY, REPLACE_AND_FAILOVER, REPLACE_PRIMARY, FAILOVER_AND_REPLACE,
            FAILOVER_TO_ANY} <= kinds


def test_failover_chosen_when_it_balances():
    nodes = [node("n1"), node("n2")]
    instances = [inst(f"i{k}", "n1", "n2", template="drbd") for k in range(4)]
    result = balance(loaded(nodes, instances))
    assert {m.kind for m in result.moves} == {FAILOVER}
    assert result.moves[0].commands() == [f"salt-run cluster.migrate {result.moves[0].instance}"]


def test_plain_instances_move_only_with_copy_storage():
    nodes = [node("n1"), node("n2")]
    instances = [inst(f"i{k}", "n1", template="plain") for k in range(4)]
    assert balance(loaded(nodes, instances)).moves == []
    moves = balance(loaded(nodes, instances), allow_copy_storage=True).moves
    assert moves and {m.kind for m in moves} == {COPY}
    assert "copy_storage=True" in moves[0].commands()[0]


# -- hard checks: the best move is illegal and not taken ------------------------------

BASE_NODES = [node("n1"), node("n2")]
BASE_INSTS = [inst(f"i{k}", "n1", tags="svc:a") for k in range(3)]


def test_base_case_moves_to_n2():
    assert moved_to(balance(loaded(BASE_NODES, BASE_INSTS)), "n2")


@pytest.mark.parametrize("case", ["memory", "vcpu_ratio", "exclusion_tags", "migration_tags",
                                  "offline", "disk"])
def test_hard_check_blocks_best_move(case):
    nodes, insts, tags, policy = list(BASE_NODES), list(BASE_INSTS), "", ""
    if case == "memory":
        nodes[1] = node("n2", free=1000)
    elif case == "vcpu_ratio":
        insts = [inst(f"i{k}", "n1", vcpus=4) for k in range(3)]
        nodes = [node("n1", cpus=16), node("n2", cpus=1)]
    elif case == "exclusion_tags":
        tags = "htools:iextags:svc"
        insts = insts + [inst("fixed", "n2", template="plain", tags="svc:a")]
    elif case == "migration_tags":
        tags = "htools:migration:zone"
        nodes = [node("n1", tags="zone:a"), node("n2", tags="zone:b")]
    elif case == "offline":
        nodes[1] = node("n2", flag="Y")
    elif case == "disk":
        insts = [inst(f"i{k}", "n1", template="plain", disk=30000) for k in range(3)]
        nodes[1] = node("n2", disk=20000)
    result = balance(loaded(nodes, insts, tags=tags, policy=policy), allow_copy_storage=True)
    assert not moved_to(result, "n2"), result.moves


def test_no_new_n1_failure():
    nodes = [node("n1"), node("n2"), node("n3", mem=2000, free=2000)]
    insts = [inst(f"i{k}", "n1", "n2", template="drbd", mem=1500) for k in range(3)]
    result = balance(loaded(nodes, insts))
    assert not [m for m in moved_to(result, "n3") if m.new_secondary == "n3"]


def test_location_tags_keep_primary_and_secondary_apart():
    tags = "htools:nlocation:rack"
    nodes = [node("n1", tags="rack:a"), node("n2", tags="rack:a"), node("n3", tags="rack:b"),
             node("n4", tags="rack:b")]
    insts = [inst(f"i{k}", "n1", "n2", template="drbd") for k in range(2)]
    result = balance(loaded(nodes, insts, tags=tags))
    final = {i.name: (i.primary, i.secondary) for i in result.cluster.instances}
    rack = {n.name: n.tags[0] for n in result.cluster.nodes}
    assert all(rack[p] != rack[s] for p, s in final.values())


# -- groups, job sets, determinism ------------------------------------------------------


def two_group_cluster(seed):
    cluster = random_cluster(np.random.default_rng(seed), 16, 80)
    text = htools.dumps(cluster).replace("default|g|preferred||", "default|g|preferred||\nother|h|preferred||")
    lines = text.split("\n")
    for k, line in enumerate(lines):
        if line.startswith(("node1|", "node3|", "node5|", "node7|")):
            lines[k] = line.replace("|g|", "|h|")
    return htools.loads("\n".join(lines))


def test_moves_stay_in_their_group():
    cluster = two_group_cluster(1)
    group = {n.name: n.group for n in cluster.nodes}
    result = balance(cluster)
    assert result.moves
    for move in result.moves:
        assert len({group[n] for n in move.nodes}) == 1, move


def test_job_sets_touch_disjoint_nodes_and_keep_order():
    result = balance(random_cluster(np.random.default_rng(4), 20, 120))
    sets = job_sets(result.moves)
    assert [m for s in sets for m in s] == result.moves
    for jobs in sets:
        nodes = [n for m in jobs for n in m.nodes]
        assert len(nodes) == len(set(nodes))
    assert len(sets) < len(result.moves)


def test_deterministic():
    runs = [balance(random_cluster(np.random.default_rng(5), 20, 100)) for _ in range(2)]
    assert runs[0].moves == runs[1].moves


def test_max_steps_and_min_gain():
    cluster = random_cluster(np.random.default_rng(6), 20, 100)
    assert len(balance(cluster, max_steps=3).moves) == 3
    scores = [m.score for m in balance(cluster, min_gain=0.5, min_gain_limit=1e9).moves]
    previous = balance(cluster, max_steps=0).initial_score
    for score in scores:
        assert previous - score >= 0.5
        previous = score


def test_input_cluster_is_not_modified():
    cluster = random_cluster(np.random.default_rng(7), 10, 40)
    before = htools.dumps(cluster)
    balance(cluster)
    assert htools.dumps(cluster) == before


# -- CLI and Ganeti -----------------------------------------------------------------------


def test_cli_saved_file_scores_as_claimed_in_hinfo(tmp_path, capsys):
    data = tmp_path / "c.data"
    htools.dump(random_cluster(np.random.default_rng(8), 15, 70), data)
    assert cli.main(["balance", "-t", str(data), "-S", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    claimed = float(re.search(r"Final score: (\S+)", out)[1])
    ref, error = run_hinfo(tmp_path / "out.balanced", tmp_path)
    assert ref is not None, error
    assert ref[1] == pytest.approx(claimed, abs=1e-6)
    assert cli.main(["balance", "-t", str(data), "-C", "-l", "5"]) == 0
    commands = capsys.readouterr().out
    assert "# job set 1" in commands and "salt-run cluster." in commands


def _hbal(path, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "HTOOLS"}
    out = subprocess.run([str(HBAL), "-t", str(path), "-S", str(tmp_path / "hbal")],
                         capture_output=True, text=True, cwd=tmp_path, env=env, check=False)
    return out, tmp_path / "hbal.balanced"


@pytest.mark.parametrize("path", [p for p in CORPUS_FILES if p.name != "invalid-node.data"],
                         ids=lambda p: p.name)
def test_corpus_not_worse_than_hbal(path, tmp_path):
    if not HBAL.exists():
        pytest.skip(f"Ganeti's hbal is not installed at {HBAL}")
    cluster = htools.load(path)
    if not cluster.instances:
        pytest.skip("no instances")
    out, hbal_file = _hbal(path, tmp_path)
    if "Found multiple node groups" in out.stderr:
        pytest.skip("hbal balances one node group per run and refuses this file")
    hbal_moves = len(re.findall(r"^\s+\d+\. ", out.stdout, re.M))
    if hbal_file.exists():  # hbal's placement, node resources re-accounted
        htools.dump(adopt_placement(cluster, htools.load(hbal_file)), tmp_path / "hbal.replayed")
    hbal_score = run_hinfo(tmp_path / "hbal.replayed" if hbal_file.exists() else path, tmp_path)[0][1]
    result = balance(cluster)
    htools.dump(result.cluster, tmp_path / "ours.balanced")
    ours = run_hinfo(tmp_path / "ours.balanced", tmp_path)[0][1]
    assert ours <= hbal_score + 1e-6
    assert ours == pytest.approx(result.final_score, abs=1e-6)
    assert len(result.moves) <= math.floor(1.1 * hbal_moves)


def test_kind_codes_cover_all_kinds():
    assert sorted(KIND_CODE.values()) == list(range(len(KINDS)))
