"""Cluster balancing: hbal's greedy one-step-ahead search (Ganeti's
src/Ganeti/HTools/Cluster.hs tryBalance/checkMove, Cluster/Moves.hs, Node.hs).

Each step picks, over every movable auto-balanced instance and every online
target node of its group, the move that lowers the htools score most and
passes Ganeti's hard checks; it stops when no move gains enough (min gain
0.01 once the score is below the min-gain limit 0.1; gains under
``NOISE_GAIN``, float noise of the running sums, never count) or after
``max_steps``.

Differences from hbal, all for speed or reach:

* candidate moves of a batch of instances of one group are scored
  together, vectorised over instances and targets, against running
  per-metric sums (:class:`ScoreState`), instead of recomputing the full
  score for every candidate;
* up to ``exact_budget`` (movable instances x nodes) the search is hbal's:
  every step scores every instance against every target, and so takes
  the same moves as hbal;
* above ``exact_budget``, lazy greedy:
  each instance's best move is cached with its gain; a step re-evaluates
  instances in order of cached gain (the stale ones at the top of the heap
  ``POP_BATCH`` at a time) until the best one is current, and a
  full re-evaluation confirms the end of the search;
* above ``estimate_budget`` as well, the first search order comes from a
  linear estimate of every instance's best gain (one matrix product of the
  instances' contributions against the gradient of the score w.r.t. each
  node's aggregates) instead of a first exact pass: instances are scored
  exactly when they reach the top, so the moves taken may differ from the
  exact search's on near-ties; the pass confirming the end of the search
  only re-evaluates the instances on, or with a cached move to, a node
  moved since it was last evaluated (the others' cached gains have only
  drifted with the cluster's means);
* above ``exact_budget``, in groups of more than ``shortlist`` online nodes, the evaluation of
  an instance only covers ``shortlist_size`` targets per new role (primary,
  secondary): those the same linear estimate ranks best among the targets
  where the instance fits in memory (N+1 included) and disk. The estimate
  leaves out the N+1 count, exclusion tags and locations, so a better
  target outside the shortlist can be missed (on small clusters the moves
  match the exact search's, tested);
* all node groups are balanced in one search (moves never leave a group),
  against the score of the whole cluster; hbal balances one group a run;
* with ``allow_copy_storage`` plain and file instances move by live
  migration with storage copy (not in Ganeti).
"""

import heapq
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
from saltext.vmcluster.planner.score import AGG, COLUMN, COLUMNS, METRICS, NodeLoads, ScoreState

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
DEFAULT_SHORTLIST_SIZE = 8
# Gains below this are float noise of the running sums (moves between like nodes).
NOISE_GAIN = 1e-9
# Up to this many movable instances x nodes (e.g. 500 x 60), hbal's own search: the same moves as hbal
# (60/500: ~130 s of CPU against hbal's ~1500 s); above it, the lazy search (60/500: ~1 s, 0.1 % higher score).
DEFAULT_EXACT_BUDGET = 30_000
DEFAULT_ESTIMATE_BUDGET = 1_000_000
# Stale cached moves re-evaluated together when the lazy search reaches them.
POP_BATCH = 8
# Instances scored in one batch: at most BATCH_MAX, and about BATCH_CELLS instance x
# target pairs, small enough that OpenBLAS stays single-threaded (threads only cost).
BATCH_MAX, BATCH_CELLS = 64, 24_000
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


class _Candidates:
    """Candidate moves, one row each (target-major per instance); ``seg`` is the row's
    index into ``insts``, whose rows are contiguous. A batch of several instances
    holds only instances without exclusion tags; an instance may have no rows."""

    def __init__(self, kinds: np.ndarray, pri: np.ndarray, sec: np.ndarray, slots: np.ndarray,
                 pad: np.ndarray, insts: np.ndarray, seg: np.ndarray):
        self.kinds, self.pri, self.sec, self.slots, self.pad = kinds, pri, sec, slots, pad
        self.insts, self.seg = insts, seg
        self.owner = insts[seg]


class Balancer:
    """Incremental state of one balancing run over a (copied) cluster."""

    def __init__(self, cluster: Cluster, allow_copy_storage: bool = False,
                 shortlist: int = DEFAULT_SHORTLIST, shortlist_size: int = DEFAULT_SHORTLIST_SIZE):
        self.cluster = cluster
        self.shortlist, self.shortlist_size = shortlist, shortlist_size
        self.loads = loads = NodeLoads(cluster)
        self.state = ScoreState.from_loads(loads)
        self._sens: Optional[np.ndarray] = None
        self._reserved_sens, self._free = np.zeros(0), (np.zeros(0), np.zeros(0))
        self._views: Dict[str, tuple] = {}
        nodes, insts = cluster.nodes, cluster.instances
        self.online = ~loads.offline
        self.rmax = loads.peers.max(axis=1) if nodes else np.zeros(0)
        self.fail_n1 = (loads.mem_world - loads.agg[:, AGG["i_mem"]]) < self.rmax
        self.raw_cpu = np.array([n.total_cpus for n in nodes], dtype=float)
        groups = {g.uuid: g for g in cluster.groups}
        self.vcpu_ratio = np.array([cluster.group_ipolicy(groups[n.group]).vcpu_ratio
                                    for n in nodes], dtype=float)
        self.migration = _migration_matrix(cluster)
        # Exclusion tags as a node x tag count matrix.
        tag_ids: Dict[str, int] = {}
        self.inst_tags = [np.array([tag_ids.setdefault(t, len(tag_ids)) for t in tags], dtype=int)
                          for tags in loads.excl_tags]
        self.tag_count = np.zeros((len(nodes), len(tag_ids)))
        for i, tags in enumerate(self.inst_tags):
            self.tag_count[loads.placement[i][0], tags] += 1
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
        # Targets: the online nodes of each group; movable instances.
        group_of = np.array([n.group for n in nodes])
        self.group_id = np.unique(group_of, return_inverse=True)[1]
        self.targets = {g: np.flatnonzero((group_of == g) & self.online) for g in groups}
        self.mirror = [_mirror(inst, allow_copy_storage) for inst in insts]
        self.move_kind = np.array([KIND_CODE[FAILOVER_TO_ANY] if m == "external" else KIND_CODE[COPY]
                                   for m in self.mirror], dtype=int)
        self.internal = np.array([m == "internal" for m in self.mirror], dtype=bool)
        self.forthcoming = np.array([inst.forthcoming for inst in insts], dtype=bool)
        self.local = np.array([inst.uses_local_storage for inst in insts], dtype=bool)
        self.no_spindles = np.array([inst.disk_spindles is None for inst in insts], dtype=bool)
        self.movable = [
            i for i, inst in enumerate(insts)
            if self.mirror[i] and inst.auto_balance
            and (inst.secondary is None or nodes[loads.index[inst.secondary]].group
                 == nodes[loads.index[inst.primary]].group)
        ]
        self._jacobian = self._row_jacobian()

    def _row_jacobian(self):
        """d row / d aggregate per node, as (columns, aggregates, nodes x entries) of its
        entries nonzero on some node, ordered by aggregate; rows are affine in the
        aggregates except the N+1 count, whose (step) column is left at 0."""
        loads = self.loads
        n = len(loads.t_mem)
        sel, r_mem, conflicts = np.arange(n), self.rmax, self.conflicts
        base = loads.rows_of(sel, loads.agg, r_mem, conflicts)
        jac = np.empty((n, len(COLUMNS), len(AGG)))
        for a in range(len(AGG)):
            agg = loads.agg.copy()
            agg[:, a] += 1.0
            jac[:, :, a] = loads.rows_of(sel, agg, r_mem, conflicts) - base
        jac[:, COLUMN["n1_cnt"], :] = 0.0
        flat = np.nan_to_num(jac, nan=0.0, posinf=0.0, neginf=0.0).reshape(n, -1)
        cols, aggs = np.divmod(np.flatnonzero((flat != 0).any(axis=0)), len(AGG))
        order = np.lexsort((cols, aggs))
        return cols[order], aggs[order], flat[:, cols[order] * len(AGG) + aggs[order]]

    def unalloc(self, sel, agg: np.ndarray) -> np.ndarray:
        """Unallocated memory of nodes ``sel`` with aggregates ``agg`` (Node.unallocatedMem)."""
        return self.loads.mem_base[sel] - agg[..., AGG["i_mem"]]

    # -- candidate generation -------------------------------------------------

    def _candidates(self, insts: np.ndarray, keep: np.ndarray, targets: np.ndarray) -> _Candidates:
        """The moves of instances ``insts`` to their ``keep`` (a row each) of ``targets``, in
        hbal's trying order per instance: failover, then per target node its kinds."""
        pri, sec = self.loads.placement[insts].T
        internal = self.internal[insts]
        use_sec = internal & self.online[sec]
        pair_seg, tgt = np.nonzero(keep)
        reps = np.where(internal, np.where(use_sec, 4, 2), 1)[pair_seg]
        seg, tgt = np.repeat(pair_seg, reps), np.repeat(targets[tgt], reps)
        # per target T, in DRBD_TARGET_KINDS order: r:T, r:T f, f r:T f, f r:T
        j = np.arange(len(seg)) - np.repeat(np.cumsum(reps) - reps, reps)
        p, s, drbd = pri[seg], sec[seg], internal[seg]
        rows = np.arange(len(seg))
        kinds = np.where(drbd, np.array([KIND_CODE[k] for k in DRBD_TARGET_KINDS])[j],
                         self.move_kind[insts][seg])
        new_pri = np.where(drbd, np.stack((p, tgt, tgt, s))[j, rows], tgt)
        new_sec = np.where(drbd, np.stack((tgt, p, s, tgt))[j, rows], -1)
        slots = np.where(drbd[:, None], np.stack((p, s, tgt), axis=1), np.stack((p, tgt, p), axis=1))
        # failover first, as hbal tries it before the target nodes
        fo = np.flatnonzero(use_sec)
        order = np.argsort(np.concatenate((2 * fo, 2 * seg + 1)), kind="stable")
        join = lambda first, rest: np.concatenate((first, rest))[order]  # noqa: E731
        pad = join(np.ones(len(fo), bool), ~drbd)[:, None] & (np.arange(3) == 2)
        return _Candidates(join(np.full(len(fo), KIND_CODE[FAILOVER]), kinds), join(sec[fo], new_pri),
                           join(pri[fo], new_sec),
                           join(np.stack((pri[fo], sec[fo], pri[fo]), axis=1).reshape(-1, 3), slots),
                           pad, insts, join(fo, seg))

    # -- evaluation ---------------------------------------------------------------

    def _slot_state(self, cand: _Candidates):
        """Roles, aggregates, reserved memory and conflicts of every candidate slot."""
        loads, own = self.loads, cand.owner
        pri, sec = (x[:, None] for x in loads.placement[own].T)
        slots, live = cand.slots, ~cand.pad
        old_pri, old_sec = (slots == pri) & live, (slots == sec) & live & (sec >= 0)
        new_pri = (slots == cand.pri[:, None]) & live
        new_sec = (slots == cand.sec[:, None]) & live
        pri_c, sec_c = loads.pri_contrib[own][:, None], loads.sec_contrib[own][:, None]
        agg_rem = loads.agg[slots] - old_pri[..., None] * pri_c - old_sec[..., None] * sec_c
        agg_rem[..., AGG["loc_score"]] -= old_pri * loads.loc_of[own][:, None]
        agg_new = agg_rem + new_pri[..., None] * pri_c + new_sec[..., None] * sec_c
        agg_new[..., AGG["loc_score"]] += new_pri * self._loc_scores(cand)[:, None]
        mem = loads.sec_mem[own][:, None]
        base = self.rmax[slots]
        at = loads.peers[slots, cand.pri[:, None]]
        # the old secondary without the instance's reservation for the old primary
        on_sec = (slots == sec) & (sec >= 0)
        if on_sec.any():
            b_pri, b_sec = loads.placement[cand.insts].T
            peers_s = loads.peers[b_sec]
            peers_s[np.arange(len(b_sec)), b_pri] -= loads.sec_mem[cand.insts]
            base = np.where(on_sec, peers_s.max(axis=1)[cand.seg][:, None], base)
            at_sec = loads.peers[sec[:, 0], cand.pri] - mem[:, 0] * (cand.pri == pri[:, 0])
            at = np.where(on_sec, at_sec[:, None], at)
        r_new = np.where(new_sec, np.maximum(base, at + mem), base)
        conflicts = self.conflicts[slots]
        tags = self.inst_tags[cand.insts[0]]  # only single-instance batches have tags
        count = self.tag_count[slots][..., tags] - old_pri[..., None]
        if len(tags):
            after = count + new_pri[..., None]
            conflicts = conflicts + (np.maximum(after - 1, 0) - np.maximum(count + old_pri[..., None] - 1, 0)).sum(-1)
        return old_pri, old_sec, new_pri, new_sec, agg_rem, agg_new, base, r_new, conflicts, count

    def _loc_scores(self, cand: _Candidates) -> np.ndarray:
        """Location score of the instance at each candidate's new nodes."""
        if not self.has_locations:
            return np.zeros(len(cand.pri))
        here = self.node_loc[cand.pri]
        shared = np.where(cand.sec >= 0, (here & self.node_loc[cand.sec]).sum(-1), 0)
        out = shared + (self.inst_loc[cand.owner] & ~here).sum(-1)
        return np.where(self.forthcoming[cand.owner], 0, out)

    def _map_deltas(self, cand: _Candidates) -> np.ndarray:
        """Change of the location-exclusion metric for each candidate."""
        loads, totals = self.loads, self.state.map_totals
        i = cand.insts[0]  # only single-instance batches have exclusion tags
        tags = loads.excl_tags[i]
        out = np.zeros(len(cand.pri))
        if not tags or not self.has_locations or self.forthcoming[i]:
            return out
        pri = loads.placement[i][0]
        pairs = lambda node: [(loc, t) for loc in loads.locations[node] for t in tags]  # noqa: E731
        counts = dict(totals)
        base = 0.0
        if self.online[pri]:
            for pair in pairs(pri):
                base -= counts.get(pair, 0) >= 2
                counts[pair] = counts.get(pair, 0) - 1
        for k, node in enumerate(cand.pri):
            if node != pri:
                out[k] = base + sum(counts.get(pair, 0) >= 1 for pair in pairs(node))
        return out * next(m.weight for m in METRICS if m.kind == "map")

    def _illegal(self, cand: _Candidates, state) -> np.ndarray:
        """Ganeti's hard checks (Node.addPriEx/addSecExEx, checkMigration) per candidate."""
        loads, own, kinds = self.loads, cand.owner, cand.kinds
        old_pri, old_sec, new_pri, new_sec, agg_rem, agg_new, r_rem, r_new, _, count = state
        pri, sec = loads.placement[own].T
        slots = cand.slots
        col = lambda agg, name: agg[..., AGG[name]]  # noqa: E731
        off_p, off_s = loads.offline[pri], (sec >= 0) & loads.offline[sec]
        # re-adding the instance to its own primary (replace-secondary) is forced
        force_pri = np.where(kinds == KIND_CODE[REPLACE_AND_FAILOVER], False, off_p)[:, None] | old_pri
        force_sec = (kinds == KIND_CODE[REPLACE_SECONDARY]) | (kinds == KIND_CODE[REPLACE_AND_FAILOVER])
        force_sec = np.where(force_sec, off_s, off_p)[:, None]
        ignore_disks = ((kinds == KIND_CODE[FAILOVER]) & off_p)[:, None]
        local, forth = self.local[own][:, None], self.forthcoming[own][:, None]
        excl, hi_sp = loads.excl[slots], loads.hi_sp[slots]
        unalloc_rem, unalloc_new = self.unalloc(slots, agg_rem), self.unalloc(slots, agg_new)
        f_dsk = loads.dsk_world[slots] - col(agg_new, "used_dsk")
        f_dsk_forth = f_dsk - col(agg_new, "used_dsk_forth")
        mem_forth = lambda agg: loads.mem_world[slots] - col(agg, "i_mem") - col(agg, "nonmem_mem")  # noqa: E731
        spindles_out = excl & ((loads.sp_world[slots] - col(agg_new, "used_sp") < 0)
                               | self.no_spindles[own][:, None])
        over_sp = ~excl & ((col(agg_new, "inst_sp") > hi_sp) | (col(agg_new, "inst_sp_forth") > hi_sp))
        cpu = lambda name: (col(agg_new, name) + loads.os_cpu[slots]) / self.raw_cpu[slots]  # noqa: E731
        ratio = self.vcpu_ratio[slots]
        was_failing = np.where(old_pri | old_sec, unalloc_rem <= r_rem, self.fail_n1[slots])
        sec_mem = loads.sec_mem[own][:, None]
        # Forthcoming limits: all a forthcoming instance is checked against.
        pri_forth = ((mem_forth(agg_new) <= 0) | (local & ((f_dsk_forth <= 0) | over_sp))
                     | ((ratio >= 0) & (ratio < cpu("u_cpu_forth"))))
        sec_forth = (f_dsk_forth <= 0) | over_sp | (sec_mem >= mem_forth(agg_rem))
        pri_bad = np.where(forth, ~force_pri & pri_forth, (unalloc_new <= 0) | (
            local & ((f_dsk <= 0) | spindles_out)) | (~force_pri & (
                (local & over_sp) | ((unalloc_new <= r_rem) & ~was_failing)
                | ((ratio >= 0) & (ratio < cpu("u_cpu"))) | (count >= 1).any(-1) | pri_forth)))
        sec_bad = np.where(forth, ~force_sec & sec_forth, (~ignore_disks & (f_dsk <= 0)) | spindles_out | (
            ~force_sec & (over_sp | (sec_mem >= unalloc_rem) | ((unalloc_rem <= r_new) & ~was_failing)
                          | sec_forth)))
        new_pri_bad = (new_pri & pri_bad).any(axis=1)
        bad = new_pri_bad | (new_sec & sec_bad).any(axis=1)
        # replace-primary first fails the instance over to its secondary
        failover_bad = np.zeros(len(cand.insts), bool)
        failover_bad[cand.seg[new_pri_bad & (kinds == KIND_CODE[FAILOVER])]] = True
        bad |= failover_bad[cand.seg] & (kinds == KIND_CODE[REPLACE_PRIMARY])
        if self.migration is not None:
            ok = self.migration
            via_sec = np.isin(kinds, [KIND_CODE[k] for k in (FAILOVER, REPLACE_PRIMARY, FAILOVER_AND_REPLACE)])
            direct = np.isin(kinds, [KIND_CODE[k] for k in (REPLACE_AND_FAILOVER, FAILOVER_TO_ANY, COPY)])
            bad |= via_sec & ~ok[pri, sec]
            bad |= direct & ~ok[pri, cand.pri]
            bad |= (kinds == KIND_CODE[REPLACE_PRIMARY]) & ~ok[sec, cand.pri]
        return bad

    def _score(self, cand: _Candidates) -> np.ndarray:
        """Cluster score after each candidate move (inf where illegal)."""
        state = self._slot_state(cand)
        agg_new, r_new, conflicts = state[5], state[7], state[8]
        slots = cand.slots
        rows = self.loads.rows_of(slots.ravel(), agg_new.reshape(-1, len(AGG)), r_new.ravel(),
                                  conflicts.ravel()).reshape(*slots.shape, len(COLUMNS))
        rows[cand.pad] = self.state.rows[slots[cand.pad]]
        totals = self.state.slot_totals(slots, rows) + self._map_deltas(cand)
        return np.where(self._illegal(cand, state), np.inf, totals)

    def _sensitivity(self) -> np.ndarray:
        """Linear score change per unit of each aggregate on each node (nodes x AGG).

        The gradient of the score w.r.t. each node's metric row, through the
        (affine) map from aggregates to rows; cached with the nodes' free
        memory and disk until the next move.
        """
        if self._sens is None:
            state, loads = self.state, self.loads
            with np.errstate(invalid="ignore", divide="ignore"):
                mean = state.s1 / state.count
                std = np.sqrt(np.maximum(0.0, state.s2 / state.count - mean * mean))
                cv_grad = (state.rows - state.shift - mean) / (state.count * std)
            grad = np.where(state.is_cv, np.nan_to_num(cv_grad, nan=0.0, posinf=0.0, neginf=0.0), 1.0)
            row_grad = np.where(state.member, grad * state.weights, 0.0)
            cols, aggs, coef = self._jacobian
            self._sens = np.zeros((len(row_grad), len(AGG)))
            if len(aggs):
                first = np.flatnonzero(np.r_[True, aggs[1:] != aggs[:-1]])
                self._sens[:, aggs[first]] = np.add.reduceat(row_grad[:, cols] * coef, first, axis=1)
            reserved = row_grad[:, [COLUMN["reserved_mem_cv"], COLUMN["reserved_mem_rtotal"]]].sum(1)
            with np.errstate(invalid="ignore", divide="ignore"):
                self._reserved_sens = np.nan_to_num(reserved / loads.t_mem)
            self._free = (self.unalloc(slice(None), loads.agg),
                          loads.dsk_world - loads.agg[:, AGG["used_dsk"]])
        return self._sens

    def _target_masks(self, insts: np.ndarray, group: str) -> np.ndarray:
        """Which of their group's targets each instance (a row) is scored on: all but its
        own nodes; beyond ``shortlist`` of them, the ``shortlist_size`` per new role (primary,
        secondary) ranked best by the linearised score change, preferring those legal for
        memory and disk on the target alone."""
        loads, targets = self.loads, self.targets[group]
        pri, sec = loads.placement[insts].T
        other = (targets != pri[:, None]) & (targets != sec[:, None])
        short = other.sum(axis=1) > self.shortlist
        if not short.any():
            return other
        sens_t, unalloc, free_dsk, rmax, exempt, reserved_sens = self._target_view(group)
        pri_c, sec_c = loads.pri_contrib[insts], loads.sec_contrib[insts]
        mem, dsk = [AGG["i_mem"]], [AGG["used_dsk"]]
        bad_p = ((unalloc - pri_c[:, mem] <= rmax) & ~exempt) | (free_dsk <= pri_c[:, dsk])
        r_new = np.maximum(rmax, loads.peers[np.ix_(targets, pri)].T + loads.sec_mem[insts][:, None])
        gain_s = sec_c @ sens_t + reserved_sens * (r_new - rmax)
        bad_s = ((unalloc <= r_new) & ~exempt) | (free_dsk <= sec_c[:, dsk])
        k = min(self.shortlist_size, len(targets))
        keep, rows = np.zeros(other.shape, bool), np.arange(len(insts))[:, None]
        for gain, bad, role in ((pri_c @ sens_t, bad_p, np.ones(len(insts), bool)),
                                (gain_s, bad_s, self.internal[insts])):
            gain[bad] = np.finfo(float).max
            gain[~other] = np.inf
            best = np.argpartition(gain, k - 1, axis=1)[:, :k]
            keep[rows, best] |= role[:, None]
        return np.where(short[:, None], keep & other, other)

    def _target_view(self, group: str):
        """A group's targets' sensitivities (aggregates x targets), unallocated memory, free
        disk, reserved memory, N+1 exemption and reserved-memory sensitivity; cached per step."""
        if group not in self._views:
            targets, sens = self.targets[group], self._sensitivity()
            unalloc, free_dsk = self._free
            self._views[group] = (np.ascontiguousarray(sens[targets].T), unalloc[targets],
                                  free_dsk[targets], self.rmax[targets], self.fail_n1[targets],
                                  self._reserved_sens[targets])
        return self._views[group]

    def estimates(self, instances: Sequence[int], chunk: int = 1024) -> np.ndarray:
        """Linearised score change of each instance's best move (an order to search in).

        One matrix product of the instances' contributions against the node
        sensitivities per role; targets are the online nodes of the group.
        """
        loads, sens = self.loads, self._sensitivity()
        out = np.empty(len(instances))
        for start in range(0, len(instances), chunk):
            part = np.asarray(instances[start:start + chunk], dtype=int)
            pri, sec = loads.placement[part].T
            rows = np.arange(len(part))
            outside = ~self.online[None, :] | (self.group_id[None, :] != self.group_id[pri][:, None])
            as_pri = loads.pri_contrib[part] @ sens.T
            as_sec = loads.sec_contrib[part] @ sens.T
            best = np.where(outside, np.inf, as_pri).min(1) - as_pri[rows, pri]
            internal = sec >= 0
            s = np.where(internal, sec, pri)
            replace_sec = np.where(outside, np.inf, as_sec).min(1) - as_sec[rows, s]
            failover = as_pri[rows, s] - as_pri[rows, pri] + as_sec[rows, pri] - as_sec[rows, s]
            best = np.where(internal, np.minimum(best, np.minimum(replace_sec, failover)), best)
            out[start:start + len(part)] = best
        return out

    def best_moves(self, instances: Sequence[int]) -> List[Tuple[float, int, int, int]]:
        """(score after, kind code, new primary, new secondary) of each instance's best move.

        Instances of one group are scored together in batches of about
        ``BATCH_CELLS`` instance x target pairs, except those with exclusion
        tags (one each).
        """
        loads, nodes = self.loads, self.cluster.nodes
        batches: Dict[Tuple[str, int], List[int]] = {}
        for i in instances:
            key = (nodes[loads.placement[i][0]].group, i if len(self.inst_tags[i]) else -1)
            batches.setdefault(key, []).append(i)
        best: Dict[int, Tuple[float, int, int, int]] = {}
        for (group, _), members in batches.items():
            targets = self.targets[group]
            size = max(1, min(BATCH_MAX, BATCH_CELLS // max(1, len(targets))))
            for start in range(0, len(members), size):
                insts = np.array(members[start:start + size])
                cand = self._candidates(insts, self._target_masks(insts, group), targets)
                scores = self._score(cand)
                ends = np.cumsum(np.bincount(cand.seg, minlength=len(insts)))
                for i, lo, hi in zip(insts.tolist(), np.r_[0, ends[:-1]], ends):
                    k = lo + int(np.argmin(scores[lo:hi])) if hi > lo else -1
                    best[i] = ((float(scores[k]), int(cand.kinds[k]), int(cand.pri[k]), int(cand.sec[k]))
                               if k >= 0 else (np.inf, -1, -1, -1))
        return [best[i] for i in instances]

    # -- applying moves -------------------------------------------------------------

    def apply(self, i: int, pri: int, sec: int) -> List[int]:
        """Carry out a move in the score state and the cluster; the nodes it touched."""
        loads = self.loads
        old_pri = loads.placement[i][0]
        touched = loads.move(i, pri, sec)
        self.state.apply(loads.changes(touched))
        tags = self.inst_tags[i]
        self.tag_count[old_pri, tags] -= 1
        self.tag_count[pri, tags] += 1
        self.conflicts[touched] = np.maximum(self.tag_count[touched] - 1, 0).sum(axis=1)
        self.rmax[touched] = loads.peers[touched].max(axis=1)
        self.fail_n1[touched] = self.unalloc(touched, loads.agg[touched]) <= self.rmax[touched]
        self._sens = None
        self._views.clear()
        names = self.cluster.nodes
        self.cluster.relocate(self.cluster.instances[i], names[pri].name,
                              names[sec].name if sec >= 0 else None)
        return touched


def balance(cluster: Cluster, max_steps: int = -1, min_gain: float = DEFAULT_MIN_GAIN,
            min_gain_limit: float = DEFAULT_MIN_GAIN_LIMIT, allow_copy_storage: bool = False,
            min_score: float = DEFAULT_MIN_SCORE, shortlist: int = DEFAULT_SHORTLIST,
            shortlist_size: int = DEFAULT_SHORTLIST_SIZE,
            exact_budget: int = DEFAULT_EXACT_BUDGET, estimate_budget: int = DEFAULT_ESTIMATE_BUDGET,
            progress: Optional[Callable[[int, float], None]] = None) -> BalanceResult:
    """Balance a cluster like hbal; the input is not modified.

    ``max_steps`` < 0 means no limit; ``progress(step, score)`` is called
    after every move.
    """
    work = deepcopy(cluster)
    bal = Balancer(work, allow_copy_storage=allow_copy_storage, shortlist=shortlist,
                   shortlist_size=shortlist_size)
    initial = bal.state.total
    moves: List[Move] = []
    optimum = optimal_score(bal.loads)
    if initial - optimum < min_score:  # hbal: "Cluster is already well balanced"
        return BalanceResult(work, moves, initial, initial)
    stop_at = optimum + min_score
    size = len(bal.movable) * len(work.nodes)
    exact = size <= exact_budget
    if exact:  # hbal's search: every target of every instance, each step
        bal.shortlist = len(work.nodes)
    search = _LazySearch(bal, exact=exact, estimate=size > max(exact_budget, estimate_budget))
    while (max_steps < 0 or len(moves) < max_steps) and bal.state.total > stop_at:
        current = bal.state.total
        accept = lambda total: total < current - NOISE_GAIN and (  # noqa: E731
            current > min_gain_limit or current - total >= min_gain)
        found = search.next_move(accept)
        if found is None:
            break
        i, (total, kind, pri, sec) = found
        inst = work.instances[i]
        old = (inst.primary, inst.secondary)
        touched = bal.apply(i, pri, sec)
        moves.append(Move(inst.name, KINDS[kind], old[0], old[1], inst.primary, inst.secondary,
                          bal.state.total, running=inst.uses_memory))
        search.moved(touched)
        if progress:
            progress(len(moves), bal.state.total)
    return BalanceResult(work, moves, initial, bal.state.total)


class _LazySearch:
    """Lazy greedy over cached per-instance best moves (see the module doc)."""

    def __init__(self, bal: Balancer, exact: bool, estimate: bool):
        self.bal, self.exact, self.estimate = bal, exact, estimate
        self.version, self.current = 0, bal.state.total
        self.heap: List[Tuple[float, int, int]] = []
        self.best: Dict[int, Tuple[float, int, int, int]] = {}
        self.stamp: Dict[int, int] = {}
        self.full_version = -1
        # with estimates: the version each node was last moved at (the last
        # entry stands for node -1, never moved), and each cached move's nodes
        self.moved_at = np.full(len(bal.loads.t_mem) + 1, -1)
        self.move_nodes = np.full((len(bal.cluster.instances), 2), -1)
        if not estimate:
            self.refresh(bal.movable)
        else:  # search order from the linear estimates; exact scores when popped
            for i, delta in zip(bal.movable, bal.estimates(bal.movable)):
                self.stamp[i] = -1
                self.heap.append((float(delta), i, -1))
            heapq.heapify(self.heap)

    def refresh(self, instances: Sequence[int]) -> None:
        """Re-evaluate instances at the current state."""
        current = self.current
        for i, best in zip(instances, self.bal.best_moves(instances)):
            self.best[i] = best
            self.stamp[i] = self.version
            self.move_nodes[i] = best[2:]
            heapq.heappush(self.heap, (best[0] - current, i, self.version))

    def moved(self, touched: List[int]) -> None:
        """After a move: every cached move is stale (re-evaluated now if exact)."""
        self.version, self.current = self.version + 1, self.bal.state.total
        if self.exact:
            self.heap = []
            self.refresh(self.bal.movable)
            self.full_version = self.version
        elif self.estimate:
            self.moved_at[touched] = self.version

    def next_move(self, accept: Callable[[float], bool]):
        """The best current move passing ``accept``, or None; confirms with a full pass
        (with estimates: a pass over the instances whose nodes or cached move's nodes
        moved since they were evaluated)."""
        found = self._pop(accept)
        if found is None and self.full_version != self.version:
            if self.estimate:
                movable = np.array(self.bal.movable)
                nodes = np.concatenate((self.bal.loads.placement[movable], self.move_nodes[movable]), 1)
                stamps = np.array([self.stamp[i] for i in self.bal.movable])
                self.refresh(movable[self.moved_at[nodes].max(1) > stamps].tolist())
            else:
                self.heap = []
                self.refresh(self.bal.movable)
            self.full_version = self.version
            found = self._pop(accept)
        return found

    def _pop(self, accept: Callable[[float], bool]):
        while self.heap:
            delta, i, version = self.heap[0]
            if version != self.stamp[i]:
                heapq.heappop(self.heap)  # superseded entry
            elif version != self.version:
                self.refresh(self._stale_top())
            else:
                total = self.best[i][0]
                return (i, self.best[i]) if accept(total) else None
        return None

    def _stale_top(self) -> List[int]:
        """Up to ``POP_BATCH`` instances off the top of the heap whose cached move is stale."""
        stale: List[int] = []
        while self.heap and len(stale) < POP_BATCH and self.heap[0][2] != self.version:
            _, i, version = heapq.heappop(self.heap)
            if version == self.stamp[i]:
                stale.append(i)
        return stale


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
