"""Cluster balancing: hbal's greedy one-step-ahead search (Ganeti's
src/Ganeti/HTools/Cluster.hs tryBalance/checkMove, Cluster/Moves.hs, Node.hs).

Each step picks, over every movable auto-balanced instance and every online
target node of its group, the move that lowers the htools score most and
passes Ganeti's hard checks; it stops when no move gains enough (min gain
0.01 once the score is below the min-gain limit 0.1) or after ``max_steps``.

Differences from hbal, all for speed or reach:

* candidate moves of many instances are scored together, vectorised over
  instances, targets and kinds (:meth:`Balancer.score`), against running
  per-metric sums (:class:`ScoreState`), instead of recomputing the full
  score for every candidate;
* each instance's best move is cached with the changes it makes to the
  running sums; a step re-scores the cached moves (exact, O(instances)),
  re-evaluates the instances on the nodes the last move touched, scores
  every other instance's moves to those nodes, and re-evaluates an instance
  only when a bound on the drift of its other moves' gains (the sums moved
  under them) says one could now beat the cached move and that could beat
  the step's best. This gives the moves of the plain search (every instance
  every step, ``exact_budget`` above movable instances x nodes), which the
  tests check. Ties: lowest score, then lowest instance index, then hbal's
  trying order (failover, then per target node in node order its kinds);
* in groups of more than ``shortlist`` online nodes an instance's moves only
  cover the targets that score best for its new role on the target alone
  (plus the nodes the last move touched), and a full re-evaluation confirms
  the end of the search;
* all node groups are balanced in one search (moves never leave a group),
  against the score of the whole cluster; hbal balances one group a run;
* with ``allow_copy_storage`` plain and file instances move by live
  migration with storage copy (not in Ganeti).
"""

from copy import deepcopy
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from saltext.vmcluster.planner.model import (
    MIGRATION_TAG_PREFIX,
    Cluster,
    Instance,
    _suffixes,
)
from saltext.vmcluster.planner.score import AGG, COLUMNS, METRICS, NodeLoads, ScoreState

# Mirror types (Types.templateMirrorType) restricted to Ganeti's movable templates.
INTERNAL_MIRROR = frozenset(("drbd",))
EXTERNAL_MIRROR = frozenset(("sharedfile", "blockdev", "rbd", "ext", "gluster"))
COPY_STORAGE = frozenset(("plain", "file"))
ALLOW_MIGRATION_PREFIX = "htools:allowmigration:"

# Move kinds with hbal's notation; "copy" is this planner's copy-storage move.
FAILOVER, REPLACE_SECONDARY, REPLACE_AND_FAILOVER = "failover", "replace_secondary", "replace_and_failover"
REPLACE_PRIMARY, FAILOVER_AND_REPLACE = "replace_primary", "failover_and_replace"
FAILOVER_TO_ANY, COPY = "failover_to_any", "copy_storage"
KINDS = (FAILOVER, REPLACE_SECONDARY, REPLACE_AND_FAILOVER, REPLACE_PRIMARY,
         FAILOVER_AND_REPLACE, FAILOVER_TO_ANY, COPY)
DRBD_TARGET_KINDS = (REPLACE_SECONDARY, REPLACE_AND_FAILOVER, REPLACE_PRIMARY, FAILOVER_AND_REPLACE)
KIND_CODE = {kind: k for k, kind in enumerate(KINDS)}

DEFAULT_MIN_GAIN, DEFAULT_MIN_GAIN_LIMIT, DEFAULT_MIN_SCORE = 0.01, 0.1, 1e-9
DEFAULT_SHORTLIST = 48
DEFAULT_EXACT_BUDGET = 0
RESERVED_MEM_RTOTAL = next(m.weight for m in METRICS if m.name == "reserved_mem_rtotal")


@dataclass
class Move:
    """One balancing step: ``score`` is the cluster score after it."""

    instance: str
    kind: str
    old_primary: str
    old_secondary: Optional[str]
    new_primary: str
    new_secondary: Optional[str]
    score: float
    running: bool = True

    @property
    def nodes(self) -> List[str]:
        """Nodes the move touches (hbal's involvedNodes)."""
        names = (self.new_primary, self.new_secondary, self.old_primary, self.old_secondary)
        return list(dict.fromkeys(n for n in names if n))

    @property
    def code(self) -> str:
        """hbal's short notation: f, r:NODE, f r:NODE f, r:NODE f, f r:NODE, fa:NODE."""
        pri, sec = self.new_primary, self.new_secondary
        return {
            FAILOVER: "f", REPLACE_SECONDARY: f"r:{sec}", REPLACE_PRIMARY: f"f r:{pri} f",
            REPLACE_AND_FAILOVER: f"r:{pri} f", FAILOVER_AND_REPLACE: f"f r:{sec}",
            FAILOVER_TO_ANY: f"fa:{pri}", COPY: f"cs:{pri}",
        }[self.kind]

    def commands(self) -> List[str]:
        """``salt-run`` commands carrying out the move (hbal's computeMoves)."""
        run = "salt-run cluster."
        mig = f"{run}{'migrate' if self.running else 'failover'} {self.instance}"
        rep = lambda node: f"{run}replace_disks {self.instance} new_secondary={node}"  # noqa: E731
        pri, sec = self.new_primary, self.new_secondary
        return {
            FAILOVER: [mig], REPLACE_SECONDARY: [rep(sec)], REPLACE_PRIMARY: [mig, rep(pri), mig],
            REPLACE_AND_FAILOVER: [rep(pri), mig], FAILOVER_AND_REPLACE: [mig, rep(sec)],
            FAILOVER_TO_ANY: [f"{mig} target={pri}"],
            COPY: [f"{run}migrate {self.instance} target={pri} copy_storage=True"],
        }[self.kind]


@dataclass
class BalanceResult:
    """Outcome of :func:`balance`; ``cluster`` is the balanced copy."""

    cluster: Cluster
    moves: List[Move]
    initial_score: float
    final_score: float

    @property
    def job_sets(self) -> List[List[Move]]:
        """The moves grouped like hbal's job sets (see :func:`job_sets`)."""
        return job_sets(self.moves)


def job_sets(moves: Sequence[Move]) -> List[List[Move]]:
    """Split moves, in order, into sets of consecutive moves on disjoint nodes.

    Like hbal's splitJobs: a move joins the current set if it touches none of
    its nodes, else starts the next set; the moves of a set can run in parallel.
    """
    sets: List[List[Move]] = []
    busy: set = set()
    for move in moves:
        if sets and busy.isdisjoint(move.nodes):
            sets[-1].append(move)
            busy.update(move.nodes)
        else:
            sets.append([move])
            busy = set(move.nodes)
    return sets


def optimal_score(loads: NodeLoads) -> float:
    """Best score reachable given N+1 reservations (Metrics.optimalCVScore)."""
    if len(loads.t_mem) < 2:
        return 0.0
    total = loads.t_mem.sum()
    less_one = total - loads.t_mem.max()
    if less_one <= 0:
        return 0.0
    drbd_mem = loads.peers.sum()
    return RESERVED_MEM_RTOTAL * (drbd_mem / less_one - drbd_mem / total)


def _mirror(inst: Instance, allow_copy_storage: bool) -> Optional[str]:
    """How an instance can move: "internal", "external", "copy" or not (None)."""
    if inst.disk_template in INTERNAL_MIRROR:
        return "internal"
    if inst.disk_template in EXTERNAL_MIRROR:
        return "external"
    if allow_copy_storage and inst.disk_template in COPY_STORAGE:
        return "copy"
    return None


def _migration_matrix(cluster: Cluster) -> Optional[np.ndarray]:
    """ok[src, dst]: migration allowed (Node.checkMigration); None if unrestricted."""
    prefixes = _suffixes(MIGRATION_TAG_PREFIX, cluster.tags)
    if not prefixes:
        return None
    allowed = [t[len(ALLOW_MIGRATION_PREFIX):].split("::", 1) for t in cluster.tags
               if t.startswith(ALLOW_MIGRATION_PREFIX) and "::" in t]
    mig = [{t for t in n.tags for p in prefixes if t.startswith(p + ":")} for n in cluster.nodes]
    recv = [tags | {src for src, dst in allowed if dst in tags} for tags in mig]
    return np.array([[src <= dst for dst in recv] for src in mig], dtype=bool)


MIRROR_CODES = {None: 0, "internal": 1, "external": 2, "copy": 3}
_INTERNAL, _EXTERNAL, _COPY = 1, 2, 3
LOC = AGG["loc_score"]
CHUNK = 40000  # candidates scored per batch (bounds the temporary arrays)
SLACK = 1e-9  # float slack of the drift bound
NOISE = 1e-12  # relative float noise of a score


class _Candidates:
    """Candidate moves of several instances, one row each.

    ``row`` is the position of the candidate's instance in the evaluated batch,
    ``inst`` the instance; within an instance ``order`` is hbal's trying order
    (failover first, then each target with its kinds), the tie-breaker.
    """

    def __init__(self, row, inst, kinds, pri, sec, slots, pad, order):
        self.row, self.inst, self.kinds, self.pri, self.sec = row, inst, kinds, pri, sec
        self.slots, self.pad, self.order = slots, pad, order

    def take(self, sel) -> "_Candidates":
        return _Candidates(*(a[sel] for a in (self.row, self.inst, self.kinds, self.pri,
                                                 self.sec, self.slots, self.pad, self.order)))


class Balancer:
    """Incremental state of one balancing run over a (copied) cluster."""

    def __init__(self, cluster: Cluster, allow_copy_storage: bool = False,
                 shortlist: int = DEFAULT_SHORTLIST):
        self.cluster = cluster
        self.shortlist = shortlist
        self.loads = loads = NodeLoads(cluster)
        self.state = ScoreState.from_loads(loads)
        nodes, insts = cluster.nodes, cluster.instances
        self.online = ~loads.offline
        self.rmax = loads.peers.max(axis=1) if nodes else np.zeros(0)
        self.fail_n1 = (loads.mem_world - loads.agg[:, AGG["i_mem"]]) < self.rmax
        self.raw_cpu = np.array([n.total_cpus for n in nodes], dtype=float)
        groups = {g.uuid: g for g in cluster.groups}
        self.vcpu_ratio = np.array([cluster.group_ipolicy(groups[n.group]).vcpu_ratio
                                    for n in nodes], dtype=float)
        self.migration = _migration_matrix(cluster)
        # Exclusion tags: instance x tag incidence and node x tag primary counts.
        tag_ids: Dict[str, int] = {}
        for tags in loads.excl_tags:
            for tag in tags:
                tag_ids.setdefault(tag, len(tag_ids))
        self.tag_inc = np.zeros((len(insts), len(tag_ids)))
        for i, tags in enumerate(loads.excl_tags):
            self.tag_inc[i, [tag_ids[t] for t in tags]] = 1
        self.tag_count = np.zeros((len(nodes), len(tag_ids)))
        np.add.at(self.tag_count, loads.placement[:, 0], self.tag_inc)
        self.conflicts = np.maximum(self.tag_count - 1, 0).sum(axis=1)
        # Location tags (node) and desired locations (instance) as boolean matrices.
        vocab: Dict[str, int] = {}
        for tags in loads.locations + loads.desired:
            for tag in sorted(tags):
                vocab.setdefault(tag, len(vocab))
        self.has_locations = bool(vocab)
        as_row = lambda tags: np.isin(np.arange(len(vocab)), [vocab[t] for t in tags])  # noqa: E731
        self.node_loc = np.array([as_row(t) for t in loads.locations]).reshape(len(nodes), -1)
        self.inst_loc = np.array([as_row(t) for t in loads.desired]).reshape(len(insts), -1)
        # Per-instance properties the vectorised checks read.
        self.forth = np.array([i.forthcoming for i in insts], dtype=bool)
        self.local = np.array([i.uses_local_storage for i in insts], dtype=bool)
        self.no_spindles = np.array([i.disk_spindles is None for i in insts], dtype=bool)
        self.map_inst = self.has_locations & ~self.forth & np.array([bool(t) for t in loads.excl_tags],
                                                                     dtype=bool)
        # Targets: the online nodes of each group; movable instances.
        group_of = np.array([n.group for n in nodes])
        self.targets = {g: np.flatnonzero((group_of == g) & self.online) for g in groups}
        self.node_group = group_of
        mirror = [_mirror(inst, allow_copy_storage) for inst in insts]
        self.mirror = np.array([MIRROR_CODES[m] for m in mirror], dtype=int)
        place = loads.placement
        self.movable = np.array([
            i for i, inst in enumerate(insts)
            if mirror[i] and inst.auto_balance
            and (mirror[i] != "internal" or place[i, 1] >= 0)
            and (place[i, 1] < 0 or group_of[place[i, 1]] == group_of[place[i, 0]])
        ], dtype=int)

    def unalloc(self, sel, agg: np.ndarray) -> np.ndarray:
        """Unallocated memory of nodes ``sel`` with aggregates ``agg`` (Node.unallocatedMem)."""
        return self.loads.mem_base[sel] - agg[..., AGG["i_mem"]]

    # -- candidate generation -------------------------------------------------

    def candidates(self, insts: np.ndarray, targets: np.ndarray,
                   failover: bool = True) -> _Candidates:
        """Candidates of ``insts`` (n) to the nodes in the rows of ``targets`` (n x m, -1: none).

        Their own nodes are skipped; DRBD instances with an online secondary
        also get the failover (if ``failover``).
        """
        loads = self.loads
        p, s = loads.placement[insts, 0], loads.placement[insts, 1]
        mirror = self.mirror[insts]
        internal = mirror == _INTERNAL
        use_sec = internal & self.online[np.maximum(s, 0)] & (s >= 0)
        table = np.full((len(insts), len(DRBD_TARGET_KINDS)), -1)
        table[internal] = [KIND_CODE[k] for k in DRBD_TARGET_KINDS]
        table[internal & ~use_sec, 2:] = -1
        table[mirror == _EXTERNAL, 0] = KIND_CODE[FAILOVER_TO_ANY]
        table[mirror == _COPY, 0] = KIND_CODE[COPY]
        ok = (targets >= 0) & (targets != p[:, None]) & (targets != s[:, None])
        r, j, q = np.nonzero(ok[:, :, None] & (table[:, None, :] >= 0))
        tgt, codes, pi, si = targets[r, j], table[r, q], p[r], s[r]
        drbd = internal[r]
        new_pri = np.select([codes == KIND_CODE[REPLACE_SECONDARY],
                             codes == KIND_CODE[FAILOVER_AND_REPLACE]], [pi, si], tgt)
        new_sec = np.select([codes == KIND_CODE[REPLACE_SECONDARY],
                             codes == KIND_CODE[REPLACE_AND_FAILOVER],
                             codes == KIND_CODE[REPLACE_PRIMARY], drbd], [tgt, pi, si, tgt], -1)
        slots = np.where(drbd[:, None], np.stack([pi, si, tgt], axis=1),
                         np.stack([pi, tgt, pi], axis=1))
        pad = np.zeros(slots.shape, bool)
        pad[:, 2] = ~drbd
        cand = _Candidates(r, insts[r], codes, new_pri, new_sec, slots, pad, 1 + j * 4 + q)
        fo = np.flatnonzero(use_sec) if failover else np.zeros(0, int)
        if not len(fo):
            return cand
        k = len(fo)
        fo_cand = _Candidates(fo, insts[fo], np.full(k, KIND_CODE[FAILOVER]), s[fo], p[fo],
                              np.stack([p[fo], s[fo], p[fo]], axis=1),
                              np.tile([False, False, True], (k, 1)), np.zeros(k, int))
        return _Candidates(*(np.concatenate([a, b]) for a, b in zip(
            (fo_cand.row, fo_cand.inst, fo_cand.kinds, fo_cand.pri, fo_cand.sec, fo_cand.slots,
             fo_cand.pad, fo_cand.order),
            (cand.row, cand.inst, cand.kinds, cand.pri, cand.sec, cand.slots, cand.pad,
             cand.order))))

    # -- evaluation ---------------------------------------------------------------

    def _sec_rmax(self, ci: np.ndarray) -> np.ndarray:
        """Reserved memory of each instance's secondary without the instance (-inf if none)."""
        loads = self.loads
        pri, sec = loads.placement[ci, 0], loads.placement[ci, 1]
        out = np.full(len(ci), -np.inf)
        has = sec >= 0
        out[has] = self.rmax[sec[has]]
        # only where the instance's primary holds the maximum can it drop
        top = np.flatnonzero(has & (loads.peers[np.maximum(sec, 0), pri] >= out))
        if len(top):
            peers = loads.peers[sec[top]].copy()
            peers[np.arange(len(top)), pri[top]] -= loads.sec_mem[ci[top]]
            out[top] = peers.max(axis=1)
        return out

    def _slot_state(self, cand: _Candidates):
        """Roles, aggregates, reserved memory and conflicts of every candidate slot."""
        loads, ci = self.loads, cand.inst
        pri, sec = loads.placement[ci, 0], loads.placement[ci, 1]
        slots, live = cand.slots, ~cand.pad
        old_pri = (slots == pri[:, None]) & live
        old_sec = (slots == sec[:, None]) & live & (sec >= 0)[:, None]
        new_pri = (slots == cand.pri[:, None]) & live
        new_sec = (slots == cand.sec[:, None]) & live
        p_c, s_c = loads.pri_contrib[ci][:, None, :], loads.sec_contrib[ci][:, None, :]
        agg_rem = loads.agg[slots] - old_pri[..., None] * p_c - old_sec[..., None] * s_c
        agg_rem[..., LOC] -= old_pri * loads.loc_of[ci][:, None]
        agg_new = agg_rem + new_pri[..., None] * p_c + new_sec[..., None] * s_c
        agg_new[..., LOC] += new_pri * self._loc_scores(cand)[:, None]
        mem = loads.sec_mem[ci][:, None]
        base = self.rmax[slots]
        at = loads.peers[slots, cand.pri[:, None]]
        on_sec = (slots == sec[:, None]) & (sec >= 0)[:, None]
        if on_sec.any():
            base = np.where(on_sec, self._sec_rmax(ci)[:, None], base)
            at_sec = loads.peers[np.maximum(sec, 0), cand.pri] - np.where(cand.pri == pri, mem[:, 0], 0)
            at = np.where(on_sec, at_sec[:, None], at)
        r_new = np.where(new_sec, np.maximum(base, at + mem), base)
        conflicts = self.conflicts[slots]
        hit = np.zeros(slots.shape, bool)
        used = np.flatnonzero(self.tag_inc[ci].any(axis=0)) if self.tag_inc.shape[1] else []
        if len(used):
            inc = self.tag_inc[ci][:, None, used]
            count = self.tag_count[slots][..., used] - old_pri[..., None] * inc
            after = np.maximum(count + new_pri[..., None] * inc - 1, 0)
            before = np.maximum(count + old_pri[..., None] * inc - 1, 0)
            conflicts = conflicts + ((after - before) * inc).sum(-1)
            hit = ((count >= 1) & (inc > 0)).any(-1)
        return old_pri, old_sec, new_pri, new_sec, agg_rem, agg_new, base, r_new, conflicts, hit

    def _loc_scores(self, cand: _Candidates) -> np.ndarray:
        """Location score of the instance at each candidate's new nodes."""
        if not self.has_locations:
            return np.zeros(len(cand.pri))
        here = self.node_loc[cand.pri]
        shared = np.where(cand.sec >= 0, (here & self.node_loc[cand.sec]).sum(-1), 0)
        return np.where(self.forth[cand.inst], 0, shared + (self.inst_loc[cand.inst] & ~here).sum(-1))

    def _map_deltas(self, cand: _Candidates) -> np.ndarray:
        """Change of the location-exclusion metric for each candidate."""
        loads, totals = self.loads, self.state.map_totals
        out = np.zeros(len(cand.pri))
        for i in np.unique(cand.inst[self.map_inst[cand.inst]]):
            tags = loads.excl_tags[i]
            pri = loads.placement[i][0]
            pairs = lambda node: [(loc, t) for loc in loads.locations[node] for t in tags]  # noqa: E731,B023
            counts = dict(totals)
            base = 0.0
            if self.online[pri]:
                for pair in pairs(pri):
                    base -= counts.get(pair, 0) >= 2
                    counts[pair] = counts.get(pair, 0) - 1
            for k in np.flatnonzero(cand.inst == i):
                node = cand.pri[k]
                if node != pri:
                    out[k] = base + sum(counts.get(pair, 0) >= 1 for pair in pairs(node))
        return out * next(m.weight for m in METRICS if m.kind == "map")

    def _illegal(self, cand: _Candidates, state) -> np.ndarray:
        """Ganeti's hard checks (Node.addPriEx/addSecExEx, checkMigration) per candidate."""
        loads, ci = self.loads, cand.inst
        old_pri, old_sec, new_pri, new_sec, agg_rem, agg_new, r_rem, r_new, _, hit = state
        pri, sec = loads.placement[ci, 0], loads.placement[ci, 1]
        slots, kinds = cand.slots, cand.kinds
        col = lambda agg, name: agg[..., AGG[name]]  # noqa: E731
        off_p, off_s = loads.offline[pri], (sec >= 0) & loads.offline[np.maximum(sec, 0)]
        # re-adding the instance to its own primary (replace-secondary) is forced
        force_pri = np.where(kinds == KIND_CODE[REPLACE_AND_FAILOVER], False, off_p)[:, None] | old_pri
        force_sec = np.isin(kinds, [KIND_CODE[REPLACE_SECONDARY], KIND_CODE[REPLACE_AND_FAILOVER]])
        force_sec = np.where(force_sec, off_s, off_p)[:, None]
        ignore_disks = ((kinds == KIND_CODE[FAILOVER]) & off_p)[:, None]
        local, forth = self.local[ci][:, None], self.forth[ci][:, None]
        excl, hi_sp = loads.excl[slots], loads.hi_sp[slots]
        unalloc_rem, unalloc_new = self.unalloc(slots, agg_rem), self.unalloc(slots, agg_new)
        f_dsk = loads.dsk_world[slots] - col(agg_new, "used_dsk")
        f_dsk_forth = f_dsk - col(agg_new, "used_dsk_forth")
        mem_forth = lambda agg: loads.mem_world[slots] - col(agg, "i_mem") - col(agg, "nonmem_mem")  # noqa: E731
        spindles_out = excl & ((loads.sp_world[slots] - col(agg_new, "used_sp") < 0)
                               | self.no_spindles[ci][:, None])
        over_sp = ~excl & ((col(agg_new, "inst_sp") > hi_sp) | (col(agg_new, "inst_sp_forth") > hi_sp))
        cpu = lambda name: (col(agg_new, name) + loads.os_cpu[slots]) / self.raw_cpu[slots]  # noqa: E731
        ratio = self.vcpu_ratio[slots]
        was_failing = np.where(old_pri | old_sec, unalloc_rem <= r_rem, self.fail_n1[slots])
        sec_mem = loads.sec_mem[ci][:, None]
        # Forthcoming limits: all a forthcoming instance is checked against.
        pri_forth = ((mem_forth(agg_new) <= 0) | (local & ((f_dsk_forth <= 0) | over_sp))
                     | ((ratio >= 0) & (ratio < cpu("u_cpu_forth"))))
        sec_forth = (f_dsk_forth <= 0) | over_sp | (sec_mem >= mem_forth(agg_rem))
        pri_bad = np.where(forth, ~force_pri & pri_forth, (unalloc_new <= 0) | (
            local & ((f_dsk <= 0) | spindles_out)) | (~force_pri & (
                (local & over_sp) | ((unalloc_new <= r_rem) & ~was_failing)
                | ((ratio >= 0) & (ratio < cpu("u_cpu"))) | hit | pri_forth)))
        sec_bad = np.where(forth, ~force_sec & sec_forth, (~ignore_disks & (f_dsk <= 0)) | spindles_out | (
            ~force_sec & (over_sp | (sec_mem >= unalloc_rem) | ((unalloc_rem <= r_new) & ~was_failing)
                          | sec_forth)))
        bad = ((new_pri & pri_bad) | (new_sec & sec_bad)).any(axis=1)
        # replace-primary first fails the instance over to its secondary
        fo = np.flatnonzero(kinds == KIND_CODE[FAILOVER])
        if len(fo):
            fo_bad = np.zeros(len(self.mirror), bool)
            fo_bad[ci[fo]] = (new_pri & pri_bad)[fo].any(axis=1)
            bad |= fo_bad[ci] & (kinds == KIND_CODE[REPLACE_PRIMARY])
        if self.migration is not None:
            ok = self.migration
            s0 = np.maximum(sec, 0)
            via_sec = np.isin(kinds, [KIND_CODE[k] for k in (FAILOVER, REPLACE_PRIMARY, FAILOVER_AND_REPLACE)])
            direct = np.isin(kinds, [KIND_CODE[k] for k in (REPLACE_AND_FAILOVER, FAILOVER_TO_ANY, COPY)])
            bad |= via_sec & ~ok[pri, s0]
            bad |= direct & ~ok[pri, cand.pri]
            bad |= (kinds == KIND_CODE[REPLACE_PRIMARY]) & ~ok[s0, cand.pri]
        return bad

    def score(self, cand: _Candidates) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(totals, d1, d2, map deltas) per candidate: the cluster score after it (inf
        where illegal), the changes of the running sums and of the map metric."""
        out = [], [], [], []
        for start in range(0, len(cand.kinds), CHUNK):
            part = cand.take(slice(start, start + CHUNK))
            state = self._slot_state(part)
            agg_new, r_new, conflicts = state[5], state[7], state[8]
            slots = part.slots
            rows = self.loads.rows_of(slots.ravel(), agg_new.reshape(-1, len(AGG)), r_new.ravel(),
                                      conflicts.ravel()).reshape(*slots.shape, len(COLUMNS))
            rows[part.pad] = self.state.rows[slots[part.pad]]
            d1, d2 = self.state.slot_sums(slots, rows)
            maps = self._map_deltas(part)
            totals = self.state.totals_after(d1, d2) + maps
            totals[self._illegal(part, state)] = np.inf
            for acc, value in zip(out, (totals, d1, d2, maps)):
                acc.append(value)
        width = (0,), (0, len(COLUMNS)), (0, len(COLUMNS)), (0,)
        return tuple(np.concatenate(acc) if acc else np.zeros(w) for acc, w in zip(out, width))

    def target_matrix(self, insts: np.ndarray) -> np.ndarray:
        """Targets of each instance (rows, -1 padded): the online nodes of its group, or in
        groups of more than ``shortlist`` nodes those scoring best for its new role alone."""
        groups = self.node_group[self.loads.placement[insts, 0]]
        width = max((len(self.targets[g]) for g in set(groups)), default=0)
        out = np.full((len(insts), width), -1)
        for g in set(groups):
            rows = np.flatnonzero(groups == g)
            targets = self.targets[g]
            out[rows, :len(targets)] = targets
            if len(targets) > self.shortlist:
                out[rows] = -1
                short = self._shortlist(insts[rows], targets)
                out[rows, :short.shape[1]] = short
        return out

    def _shortlist(self, insts: np.ndarray, targets: np.ndarray) -> np.ndarray:
        """Per instance, the ``shortlist`` best targets for each new role alone, in node order."""
        loads = self.loads
        n, k = len(insts), len(targets)
        keep = np.zeros((n, k), bool)
        pri = loads.placement[insts, 0]
        roles = {_INTERNAL: (REPLACE_SECONDARY, REPLACE_AND_FAILOVER),
                 _EXTERNAL: (FAILOVER_TO_ANY,), _COPY: (COPY,)}
        for kind in (REPLACE_SECONDARY, REPLACE_AND_FAILOVER, FAILOVER_TO_ANY, COPY):
            rows = np.flatnonzero([kind in roles[m] for m in self.mirror[insts]])
            if not len(rows):
                continue
            r = np.repeat(rows, k)
            tgt = np.tile(targets, len(rows))
            as_pri = kind != REPLACE_SECONDARY
            cand = _Candidates(r, insts[r], np.full(len(r), KIND_CODE[kind]),
                               tgt if as_pri else pri[r], np.full(len(r), -1) if as_pri else tgt,
                               np.stack([tgt, pri[r], pri[r]], axis=1),
                               np.tile([False, True, True], (len(r), 1)), np.zeros(len(r), int))
            scores = self.score(cand)[0].reshape(len(rows), k)
            best = np.argsort(scores, axis=1, kind="stable")[:, :self.shortlist]
            keep[rows[:, None], best] = True
        width = keep.sum(axis=1).max(initial=0)
        out = np.full((n, width), -1)
        r, j = np.nonzero(keep)
        out[r, np.arange(len(r)) - np.searchsorted(r, r)] = targets[j]
        return out

    # -- applying moves -------------------------------------------------------------

    def apply(self, i: int, pri: int, sec: int) -> List[int]:
        """Carry out a move in the score state and the cluster; the touched nodes."""
        loads = self.loads
        old_pri = loads.placement[i][0]
        touched = loads.move(i, pri, sec)
        self.state.apply(loads.changes(touched))
        self.tag_count[old_pri] -= self.tag_inc[i]
        self.tag_count[pri] += self.tag_inc[i]
        self.conflicts[touched] = np.maximum(self.tag_count[touched] - 1, 0).sum(axis=1)
        self.rmax[touched] = loads.peers[touched].max(axis=1)
        self.fail_n1[touched] = self.unalloc(touched, loads.agg[touched]) <= self.rmax[touched]
        names = self.cluster.nodes
        self.cluster.relocate(self.cluster.instances[i], names[pri].name,
                              names[sec].name if sec >= 0 else None)
        return touched


def balance(cluster: Cluster, max_steps: int = -1, min_gain: float = DEFAULT_MIN_GAIN,
            min_gain_limit: float = DEFAULT_MIN_GAIN_LIMIT, allow_copy_storage: bool = False,
            min_score: float = DEFAULT_MIN_SCORE, shortlist: int = DEFAULT_SHORTLIST,
            exact_budget: int = DEFAULT_EXACT_BUDGET,
            progress: Optional[Callable[[int, float], None]] = None) -> BalanceResult:
    """Balance a cluster like hbal; the input is not modified.

    ``max_steps`` < 0 means no limit; ``progress(step, score)`` is called
    after every move. Up to ``exact_budget`` (movable instances x nodes)
    every step re-evaluates every instance; above it cached best moves are
    used (same moves, see the module doc).
    """
    work = deepcopy(cluster)
    bal = Balancer(work, allow_copy_storage=allow_copy_storage, shortlist=shortlist)
    initial = bal.state.total
    moves: List[Move] = []
    optimum = optimal_score(bal.loads)
    if initial - optimum < min_score:  # hbal: "Cluster is already well balanced"
        return BalanceResult(work, moves, initial, initial)
    stop_at = optimum + min_score
    search = _Search(bal, cached=len(bal.movable) * len(work.nodes) > exact_budget)
    while (max_steps < 0 or len(moves) < max_steps) and bal.state.total > stop_at:
        current = bal.state.total
        # a gain within float noise of the running sums is no gain (no ping-pong)
        accept = lambda total: total < current - NOISE * max(1.0, current) and (  # noqa: E731
            current > min_gain_limit or current - total >= min_gain)
        found = search.next_move(accept)
        if found is None:
            break
        i, kind, pri, sec = found
        inst = work.instances[i]
        old = (inst.primary, inst.secondary)
        map_changed = bool(bal.map_inst[i]) and pri != bal.loads.placement[i][0]
        touched = bal.apply(i, pri, sec)
        moves.append(Move(inst.name, KINDS[kind], old[0], old[1], inst.primary, inst.secondary,
                          bal.state.total, running=inst.uses_memory))
        search.moved(touched, map_changed)
        if progress:
            progress(len(moves), bal.state.total)
    return BalanceResult(work, moves, initial, bal.state.total)


def _per_row(ufunc, values: np.ndarray, rows: np.ndarray, n: int, fill: float) -> np.ndarray:
    """``ufunc`` reduction of ``values`` grouped by ``rows`` (0..n-1); ``fill`` where none."""
    out = np.full((n,) + values.shape[1:], fill)
    if len(rows):
        perm = np.argsort(rows, kind="stable")
        r = rows[perm]
        starts = np.flatnonzero(np.r_[True, r[1:] != r[:-1]])
        out[r[starts]] = ufunc.reduceat(values[perm], starts, axis=0)
    return out


class _Search:
    """Greedy search over per-instance best moves, cached when ``cached`` (module doc)."""

    def __init__(self, bal: Balancer, cached: bool):
        self.bal, self.cached = bal, cached
        self.insts = bal.movable
        n, c = len(self.insts), len(COLUMNS)
        self.total = np.full(n, np.inf)  # score after the cached best move, now
        self.move = np.full((n, 3), -1)  # its kind, new primary, new secondary
        self.d1, self.d2, self.map = np.zeros((n, c)), np.zeros((n, c)), np.zeros(n)
        self.other = np.full(n, np.inf)  # lower bound of the other moves' gain, now
        self.e_max, self.d_max = np.zeros((n, c)), np.zeros((n, c))  # drift statistics
        self.approx = any(len(t) > bal.shortlist for t in bal.targets.values())
        self.confirmed = False
        self.refresh(np.arange(n))
        self.prev = bal.state.variances(), bal.state.s1.copy()

    def _spread(self, d1: np.ndarray, d2: np.ndarray) -> np.ndarray:
        """Change of each column's variance, times its count (cv columns only)."""
        st = self.bal.state
        with np.errstate(invalid="ignore", divide="ignore"):
            e = (d2 - (2 * st.s1 * d1 + d1 * d1) / st.count) / st.count
        return np.where(st.is_cv & (st.count > 0), e, 0.0)

    def _stats(self, d1, d2, totals, r, n) -> Tuple[np.ndarray, np.ndarray]:
        """Per row, the largest |spread| and |d1| of its legal moves (drift statistics)."""
        legal = np.isfinite(totals)
        spread = np.abs(self._spread(d1[legal], d2[legal]))
        return (_per_row(np.maximum, spread, r[legal], n, 0.0),
                _per_row(np.maximum, np.abs(d1[legal]), r[legal], n, 0.0))

    def refresh(self, rows: np.ndarray) -> None:
        """Evaluate every move of the instances at ``rows`` exactly, now."""
        bal = self.bal
        insts = self.insts[rows]
        cand = bal.candidates(insts, bal.target_matrix(insts))
        totals, d1, d2, maps = bal.score(cand)
        n, r = len(rows), cand.row
        perm = np.lexsort((cand.order, totals, r))
        first = np.ones(len(perm), bool)
        first[1:] = r[perm][1:] != r[perm][:-1]
        b = perm[first]
        has = r[b]
        best_t, best_1, best_2, best_m = (np.full(n, np.inf), np.zeros((n, d1.shape[1])),
                                          np.zeros((n, d1.shape[1])), np.zeros(n))
        best_t[has], best_1[has], best_2[has], best_m[has] = totals[b], d1[b], d2[b], maps[b]
        moves = np.full((n, 3), -1)
        moves[has] = np.stack([cand.kinds, cand.pri, cand.sec], axis=1)[b]
        # moves equal to the best (same changes) stay tied behind it whatever the state
        same = ((totals == best_t[r]) & (maps == best_m[r]) & (d1 == best_1[r]).all(1)
                & (d2 == best_2[r]).all(1))
        other = _per_row(np.minimum, np.where(same, np.inf, totals), r, n, np.inf)
        e_max, d_max = self._stats(d1, d2, totals, r, n)
        self.total[rows], self.move[rows] = best_t, moves
        self.d1[rows], self.d2[rows], self.map[rows] = best_1, best_2, best_m
        self.other[rows] = other - bal.state.total
        self.e_max[rows], self.d_max[rows] = e_max, d_max

    def _drift(self, rows: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """Bound on the change of any move's gain since the last step, and of its spread.

        A cv column's gain is h(u, e) = sqrt(u + e) - sqrt(u) with u the
        variance and e the move's spread; a step changes u and, through the
        mean, e (by at most ``de``); mean-value bounds of dh/du and dh/de on
        the box the moves span (their |e| below ``e_max``) bound the change.
        """
        st = self.bal.state
        u0, s0 = self.prev
        u, cv = st.variances(), st.is_cv & (st.count > 0)
        with np.errstate(invalid="ignore", divide="ignore"):
            de = 2 * np.abs(st.s1 - s0) * self.d_max[rows] / st.count ** 2
            e = self.e_max[rows] + de
            low = np.minimum(u, u0) - e
            term = e * np.abs(u - u0) / (4 * low ** 1.5) + de / (2 * np.sqrt(low))
        term = np.where(cv & (e > 0), np.where(low > 0, term, np.inf), 0.0)
        return (term * st.weights).sum(axis=1) + SLACK, np.where(cv, de, 0.0)

    def moved(self, touched: Sequence[int], map_changed: bool) -> None:
        """After a move: re-evaluate what it changed (everything if not cached)."""
        bal = self.bal
        self.confirmed = False
        if not self.cached:
            self.refresh(np.arange(len(self.insts)))
            return
        place = bal.loads.placement[self.insts]
        dirty = np.isin(place, touched).any(axis=1)
        if map_changed:
            dirty |= bal.map_inst[self.insts]
        clean = np.flatnonzero(~dirty)
        eps, de = self._drift(clean)
        # no other legal move (inf) stays so; the rest loses the drift bound
        with np.errstate(invalid="ignore"):
            self.other[clean] = np.where(np.isposinf(self.other[clean]), np.inf,
                                         self.other[clean] - eps)
        self.e_max[clean] += de
        # a cached move to a touched node is stale: scored again below
        stale = clean[np.isin(self.move[clean, 1:], touched).any(axis=1)]
        self.total[stale], self.move[stale] = np.inf, -1
        self._touched_targets(clean, np.asarray(touched))
        ok = self.move[:, 0] >= 0
        self.total[ok] = bal.state.totals_after(self.d1[ok], self.d2[ok]) + self.map[ok]
        self.refresh(np.flatnonzero(dirty))
        self.prev = bal.state.variances(), bal.state.s1.copy()

    def _touched_targets(self, rows: np.ndarray, touched: np.ndarray) -> None:
        """Score the moves of the instances at ``rows`` to the touched nodes (now new)."""
        bal = self.bal
        touched = touched[bal.online[touched]]
        groups = bal.node_group[bal.loads.placement[self.insts[rows], 0]]
        mat = np.where(bal.node_group[touched][None, :] == groups[:, None], touched[None, :], -1)
        rows = rows[(mat >= 0).any(axis=1)]
        mat = mat[(mat >= 0).any(axis=1)]
        if not len(rows):
            return
        cand = bal.candidates(self.insts[rows], mat)
        totals, d1, d2, _ = bal.score(cand)
        keep = cand.kinds != KIND_CODE[FAILOVER]  # scored for replace-primary's check only
        r, totals, d1, d2 = cand.row[keep], totals[keep], d1[keep], d2[keep]
        other = _per_row(np.minimum, totals - bal.state.total, r, len(rows), np.inf)
        self.other[rows] = np.minimum(self.other[rows], other)
        e_max, d_max = self._stats(d1, d2, totals, r, len(rows))
        self.e_max[rows] = np.maximum(self.e_max[rows], e_max)
        self.d_max[rows] = np.maximum(self.d_max[rows], d_max)

    def next_move(self, accept: Callable[[float], bool]):
        """(instance, kind, primary, secondary) of the best move if ``accept``-ed, else None."""
        current = self.bal.state.total
        while True:
            gain = self.total - current
            valid = (self.other > gain) | np.isposinf(self.other)
            best = self.total[valid].min(initial=np.inf)
            need = ~valid & (current + np.minimum(gain, self.other) <= best)
            if not need.any():
                break
            self.refresh(np.flatnonzero(need))
        k = int(np.argmin(self.total)) if len(self.total) else -1
        if k < 0 or not accept(self.total[k]):
            if self.approx and not self.confirmed:  # shortlists may miss: confirm in full
                self.confirmed = True
                self.refresh(np.arange(len(self.insts)))
                return self.next_move(accept)
            return None
        kind, pri, sec = (int(x) for x in self.move[k])
        return int(self.insts[k]), kind, pri, sec


def format_moves(result: BalanceResult) -> str:
    """hbal-style table of the moves with the initial and final scores."""
    lines = [f"Initial score: {result.initial_score:.8f}"]
    width = max((len(m.instance) for m in result.moves), default=0)
    for n, move in enumerate(result.moves, start=1):
        old = ":".join(filter(None, (move.old_primary, move.old_secondary)))
        new = ":".join(filter(None, (move.new_primary, move.new_secondary)))
        lines.append(f"  {n:3d}. {move.instance:<{width}} {old} => {new} {move.score:12.8f} "
                     f"a={move.code}")
    lines.append(f"Final score: {result.final_score:.8f} ({len(result.moves)} moves, "
                 f"{len(result.job_sets)} job sets)")
    return "\n".join(lines)


def format_commands(result: BalanceResult) -> str:
    """The moves as ``salt-run`` commands, one block per job set."""
    lines = []
    for n, jobs in enumerate(result.job_sets, start=1):
        lines.append(f"# job set {n}: {len(jobs)} jobs, run in parallel")
        lines.extend(cmd for move in jobs for cmd in move.commands())
    return "\n".join(lines)


def adopt_placement(cluster: Cluster, placed: Cluster) -> Cluster:
    """A copy of ``cluster`` with its instances moved to their nodes in ``placed``.

    Node resources are re-accounted by :meth:`Cluster.relocate`; used to score
    hbal's result, whose ``.balanced`` file keeps the nodes' free memory as loaded.
    """
    out = deepcopy(cluster)
    where = {i.name: (i.primary, i.secondary) for i in placed.instances}
    for inst in out.instances:
        out.relocate(inst, *where[inst.name])
    return out
