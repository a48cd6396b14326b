"""htools cluster score (Ganeti's src/Ganeti/HTools/Cluster/Metrics.hs).

Score = sum of weight x statistic, where a statistic is the population standard
deviation ("cv") or the sum of one per-node value over the online nodes (the
offline counts: over offline nodes), plus the location-exclusion map metric.

Two layers, both built for the balancer:

* :class:`NodeLoads` keeps per-node aggregates of the placement (numpy
  arrays, one entry per node) and turns them into per-node metric rows,
  vectorised over any set of nodes; :meth:`NodeLoads.move` re-places one
  instance and reports the nodes it touched.
* :class:`ScoreState` keeps running sums and sums of squares per metric, so
  replacing the rows of a few nodes (:meth:`ScoreState.delta`,
  :meth:`ScoreState.apply`) costs O(changed nodes), and
  :meth:`ScoreState.candidate_totals` scores many alternative rows at once.

The score is a function of the placement alone: it equals what ``hinfo``
reports for the cluster written out after the moves (Ganeti's in-memory move
bookkeeping differs slightly for forthcoming-memory fields).
"""

from collections import Counter
from dataclasses import dataclass
from typing import Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from saltext.vmcluster.planner.model import Cluster, Instance


class Metric(NamedTuple):
    """One score component: ``kind`` is "cv", "sum" or "map"."""

    name: str
    weight: float
    kind: str
    online: bool = True


METRICS: Tuple[Metric, ...] = (
    Metric("free_mem_cv", 0.5, "cv"),
    Metric("free_disk_cv", 0.5, "cv"),
    Metric("n1_cnt", 1, "sum"),
    Metric("reserved_mem_cv", 1, "cv"),
    Metric("offline_all_cnt", 4, "sum", online=False),
    Metric("offline_pri_cnt", 16, "sum", online=False),
    Metric("vcpu_ratio_cv", 0.5, "cv"),
    Metric("cpu_load_cv", 1, "cv"),
    Metric("mem_load_cv", 1, "cv"),
    Metric("disk_load_cv", 1, "cv"),
    Metric("net_load_cv", 1, "cv"),
    Metric("pri_tags_score", 2, "sum"),
    Metric("spindles_cv", 0.5, "cv"),
    Metric("free_mem_cv_forth", 0.5, "cv"),
    Metric("free_disk_cv_forth", 0.5, "cv"),
    Metric("vcpu_ratio_cv_forth", 0.5, "cv"),
    Metric("spindles_cv_forth", 0.5, "cv"),
    Metric("location_score", 1, "sum"),
    Metric("location_exclusion_score", 1, "map"),
    Metric("reserved_mem_rtotal", 0.25, "sum"),
)
# Metrics carried as columns of the per-node row matrix (all but the map one).
COLUMNS: Tuple[Metric, ...] = tuple(m for m in METRICS if m.kind != "map")
COLUMN = {m.name: i for i, m in enumerate(COLUMNS)}
MAP_METRIC = next(m for m in METRICS if m.kind == "map")

# Additive per-node aggregates of the placement, one column each.
AGGREGATES = (
    "i_mem", "nonmem_mem", "used_dsk", "used_dsk_forth", "used_sp", "used_sp_forth",
    "u_cpu", "u_cpu_forth", "n_pri", "n_sec", "load_cpu", "load_mem", "load_dsk",
    "load_net", "inst_sp", "inst_sp_forth", "loc_score",
)
AGG = {name: i for i, name in enumerate(AGGREGATES)}

# A node's new state for ScoreState: its metric row and location-exclusion map.
NodeRow = Tuple[np.ndarray, Counter]


def _contribution(inst: Instance, primary: bool) -> np.ndarray:
    """The aggregate vector an instance adds to its primary or secondary node."""
    vec = np.zeros(len(AGGREGATES))
    local = inst.uses_local_storage
    real = not inst.forthcoming
    spindles = inst.disk_spindles or 0
    vec[AGG["used_dsk" if real else "used_dsk_forth"]] = inst.disk if local else 0
    vec[AGG["used_sp" if real else "used_sp_forth"]] = spindles
    vec[AGG["inst_sp_forth"]] = inst.spindle_use if local else 0
    vec[AGG["inst_sp"]] = inst.spindle_use if local and real else 0
    vec[AGG["load_dsk"]] = inst.util[2] if real else 0
    if not primary:
        vec[AGG["n_sec"]] = real
        return vec
    vec[AGG["i_mem"]] = inst.mem if inst.uses_memory else 0
    vec[AGG["nonmem_mem"]] = 0 if inst.uses_memory else inst.mem
    vec[AGG["u_cpu_forth"]] = inst.vcpus if inst.online else 0
    vec[AGG["u_cpu"]] = inst.vcpus if inst.online and real else 0
    if real:
        vec[AGG["n_pri"]] = 1
        vec[[AGG["load_cpu"], AGG["load_mem"], AGG["load_net"]]] = np.take(inst.util, [0, 1, 3])
    return vec


def _pdsk(free: np.ndarray, total: np.ndarray) -> np.ndarray:
    """Free fraction of disk; a node without disk counts as all free."""
    return np.where(total == 0, 1.0, free / np.where(total == 0, 1, total))


class NodeLoads:
    """Per-node aggregates of a placement, and the metric rows derived from them."""

    def __init__(self, cluster: Cluster):
        self.cluster = cluster
        nodes = cluster.nodes
        self.index = {n.name: i for i, n in enumerate(nodes)}
        self.inst_index = {inst.name: i for i, inst in enumerate(cluster.instances)}
        groups = {g.uuid: g for g in cluster.groups}
        arr = lambda get: np.array([get(n) for n in nodes], dtype=float)  # noqa: E731
        self.offline = np.array([n.offline for n in nodes], dtype=bool)
        self.excl = np.array([n.exclusive_storage for n in nodes], dtype=bool)
        self.t_mem = arr(lambda n: n.total_mem)
        self.t_dsk = arr(lambda n: n.total_disk)
        self.t_cpu = arr(lambda n: n.total_cpus * n.cpu_speed)
        self.os_cpu = arr(lambda n: n.os_vcpus)
        self.t_sp = arr(lambda n: n.spindles)
        self.hi_sp = arr(lambda n: cluster.group_ipolicy(groups[n.group]).spindle_ratio * n.spindles)
        self.locations = [cluster.location_tags(n) for n in nodes]
        self.excl_tags = [cluster.exclusion_tags(i) for i in cluster.instances]
        self.desired = [cluster.desired_locations(i) for i in cluster.instances]
        self.pri_contrib = np.array([_contribution(i, True) for i in cluster.instances])
        self.sec_contrib = np.array([_contribution(i, False) for i in cluster.instances])
        self.sec_mem = np.array([i.mem if i.uses_secondary_memory else 0 for i in cluster.instances],
                                dtype=float)
        n = len(nodes)
        self.agg = np.zeros((n, len(AGGREGATES)))
        self.peers = np.zeros((n, n))  # [secondary, primary] -> reserved memory
        self.pri_tags: List[Counter] = [Counter() for _ in nodes]
        self.excl_pairs: List[Counter] = [Counter() for _ in nodes]
        self.placement = np.full((len(cluster.instances), 2), -1)
        self.loc_of = np.zeros(len(cluster.instances))
        for i, inst in enumerate(cluster.instances):
            self.place(i, self.index[inst.primary], self.index.get(inst.secondary, -1))
        # The nodes' free resources as if no instance were placed.
        used = self.agg
        self.mem_base = (np.trunc(self.t_mem) - arr(lambda n: n.node_mem)
                         - np.maximum(0, self._missing_mem(arr)))
        self.mem_world = arr(lambda n: n.free_mem) + used[:, AGG["i_mem"]]
        self.dsk_world = arr(lambda n: n.free_disk) + used[:, AGG["used_dsk"]]
        self.sp_world = arr(lambda n: n.free_spindles) + used[:, AGG["used_sp"]]

    def _missing_mem(self, arr) -> np.ndarray:
        """Memory used outside the recorded instances (Node.missingMem)."""
        recorded = (np.trunc(self.t_mem) - arr(lambda n: n.node_mem)
                    - self.agg[:, AGG["i_mem"]])
        return recorded - arr(lambda n: n.free_mem)

    def _loc_score(self, i: int, pri: int, sec: int) -> int:
        """Location score an instance adds to its primary node (real ones only)."""
        if self.cluster.instances[i].forthcoming:
            return 0
        here = self.locations[pri]
        shared = len(here & self.locations[sec]) if sec >= 0 else 0
        return shared + len(self.desired[i] - here)

    @staticmethod
    def contributions(inst: Instance) -> Tuple[np.ndarray, np.ndarray]:
        """The aggregate vectors an instance adds to its primary and to its secondary."""
        return _contribution(inst, True), _contribution(inst, False)

    def add_instance(self, inst: Instance) -> int:
        """Register a new, not yet placed instance (appended to the cluster); its index."""
        self.cluster.instances.append(inst)
        i = len(self.cluster.instances) - 1
        self.inst_index[inst.name] = i
        self.excl_tags.append(self.cluster.exclusion_tags(inst))
        self.desired.append(self.cluster.desired_locations(inst))
        pri, sec = self.contributions(inst)
        self.pri_contrib = np.vstack([self.pri_contrib.reshape(i, len(AGGREGATES)), pri])
        self.sec_contrib = np.vstack([self.sec_contrib.reshape(i, len(AGGREGATES)), sec])
        self.sec_mem = np.append(self.sec_mem, inst.mem if inst.uses_secondary_memory else 0)
        self.placement = np.vstack([self.placement, [-1, -1]])
        self.loc_of = np.append(self.loc_of, 0.0)
        return i

    def place(self, i: int, pri: int, sec: int) -> None:
        """Add instance ``i`` on node ``pri`` and (if ``sec`` >= 0) node ``sec``."""
        self._update(i, pri, sec, +1)

    def unplace(self, i: int) -> None:
        """Remove instance ``i`` from its nodes."""
        pri, sec = self.placement[i]
        self._update(i, pri, sec, -1)

    def _update(self, i: int, pri: int, sec: int, sign: int) -> None:
        inst = self.cluster.instances[i]
        loc = self._loc_score(i, pri, sec) if sign > 0 else self.loc_of[i]
        self.loc_of[i] = loc
        self.agg[pri] += sign * self.pri_contrib[i]
        self.agg[pri, AGG["loc_score"]] += sign * loc
        self.pri_tags[pri].update({t: sign for t in self.excl_tags[i]})
        if not inst.forthcoming:
            pairs = {(loc_tag, t): sign for loc_tag in self.locations[pri] for t in self.excl_tags[i]}
            self.excl_pairs[pri].update(pairs)
        if sec >= 0:
            self.agg[sec] += sign * self.sec_contrib[i]
            if not inst.forthcoming:
                self.peers[sec, pri] += sign * self.sec_mem[i]
        self.placement[i] = (pri, sec) if sign > 0 else (-1, -1)

    def move(self, i: int, pri: int, sec: int) -> List[int]:
        """Re-place instance ``i``; returns the indices of the nodes touched."""
        touched = {*self.placement[i], pri, sec} - {-1}
        self.unplace(i)
        self.place(i, pri, sec)
        return sorted(touched)

    def rows(self, nodes: Optional[Sequence[int]] = None) -> np.ndarray:
        """Metric rows (len(nodes) x len(COLUMNS)) of the given (default all) nodes."""
        sel = np.arange(len(self.t_mem)) if nodes is None else np.asarray(nodes, dtype=int)
        r_mem = self.peers[sel].max(axis=1) if len(self.t_mem) else np.zeros(0)
        return self.rows_of(sel, self.agg[sel], r_mem, self._conflicts(sel))

    def rows_of(self, sel: np.ndarray, agg: np.ndarray, r_mem: np.ndarray,
                conflicts: np.ndarray) -> np.ndarray:
        """Metric rows of nodes ``sel`` (repeats allowed) given hypothetical state.

        ``agg`` holds their aggregates, ``r_mem`` their reserved memory and
        ``conflicts`` their exclusion-tag conflict counts (one entry per ``sel``).
        """
        col = lambda name: agg[:, AGG[name]]  # noqa: E731
        t_mem, excl, hi_sp = self.t_mem[sel], self.excl[sel], self.hi_sp[sel]
        unalloc = self.mem_base[sel] - col("i_mem")
        f_mem = self.mem_world[sel] - col("i_mem")
        f_dsk = self.dsk_world[sel] - col("used_dsk")
        f_sp = self.sp_world[sel] - col("used_sp")
        n_inst = col("n_pri") + col("n_sec")
        out = np.empty((len(agg), len(COLUMNS)))
        with np.errstate(divide="ignore", invalid="ignore"):
            values = {
                "free_mem_cv": unalloc / t_mem,
                "free_disk_cv": np.where(excl, _pdsk(f_sp, self.t_sp[sel]),
                                         _pdsk(f_dsk, self.t_dsk[sel])),
                # Ganeti 3.0 (installed hinfo): reported free memory < reserved;
                # 3.1 changed this to unallocated memory <= reserved.
                "n1_cnt": np.where(f_mem < r_mem, n_inst, 0),
                "reserved_mem_cv": r_mem / t_mem,
                "offline_all_cnt": n_inst,
                "offline_pri_cnt": col("n_pri"),
                "vcpu_ratio_cv": (col("u_cpu") + self.os_cpu[sel]) / self.t_cpu[sel],
                "cpu_load_cv": col("load_cpu"),
                "mem_load_cv": col("load_mem"),
                "disk_load_cv": col("load_dsk"),
                "net_load_cv": col("load_net"),
                "pri_tags_score": conflicts,
                "spindles_cv": np.where(excl, 0, col("inst_sp")) / hi_sp,
                "free_mem_cv_forth": (f_mem - col("nonmem_mem")) / t_mem,
                "free_disk_cv_forth": np.where(
                    excl, _pdsk(f_sp - col("used_sp_forth"), self.t_sp[sel]),
                    _pdsk(f_dsk - col("used_dsk_forth"), self.t_dsk[sel])),
                "vcpu_ratio_cv_forth": (col("u_cpu_forth") + self.os_cpu[sel]) / self.t_cpu[sel],
                "spindles_cv_forth": np.where(excl, 0, col("inst_sp_forth")) / hi_sp,
                "location_score": col("loc_score"),
                "reserved_mem_rtotal": r_mem / t_mem,
            }
        for name, value in values.items():
            out[:, COLUMN[name]] = value
        return out

    def _conflicts(self, sel) -> np.ndarray:
        """Primaries sharing an exclusion tag, per node (Node.conflictingPrimaries)."""
        counters = [self.pri_tags[i] for i in sel]
        return np.array([sum(c.values()) - sum(1 for v in c.values() if v) for c in counters],
                        dtype=float)

    def changes(self, nodes: Sequence[int]) -> Dict[int, NodeRow]:
        """The current rows of ``nodes`` in the form ScoreState.delta/apply take."""
        rows = self.rows(nodes)
        return {n: (rows[k], Counter(self.excl_pairs[n])) for k, n in enumerate(nodes)}


@dataclass
class MetricValue:
    """One line of the score breakdown."""

    name: str
    value: float
    weight: float


def _map_value(totals: Counter) -> float:
    """Sum over (location, exclusion tag) of (count - 1)."""
    return float(sum(v - 1 for v in totals.values() if v > 0))


class ScoreState:
    """Running per-metric sums over per-node rows; O(1) update per changed node."""

    def __init__(self, rows: np.ndarray, online: np.ndarray, maps: Sequence[Counter]):
        self.rows = np.array(rows, dtype=float).reshape(len(online), len(COLUMNS))
        self.online = np.asarray(online, dtype=bool)
        self.maps = [Counter(m) for m in maps]
        col_online = np.array([m.online for m in COLUMNS])
        self.member = self.online[:, None] == col_online[None, :]
        self.count = self.member.sum(axis=0).astype(float)
        self.is_cv = np.array([m.kind == "cv" for m in COLUMNS])
        self.weights = np.array([m.weight for m in COLUMNS], dtype=float)
        masked = np.where(self.member, self.rows, 0.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = masked.sum(axis=0) / self.count
        self.shift = np.where(self.is_cv & (self.count > 0), mean, 0.0)
        centred = np.where(self.member, self.rows - self.shift, 0.0)
        self.s1 = centred.sum(axis=0)
        self.s2 = (centred * centred).sum(axis=0)
        self.map_totals: Counter = Counter()
        for node, counter in enumerate(self.maps):
            if self.online[node]:
                self.map_totals.update(counter)

    @classmethod
    def from_cluster(cls, cluster: Cluster) -> "ScoreState":
        """Full score state of a cluster."""
        return cls.from_loads(NodeLoads(cluster))

    @classmethod
    def from_loads(cls, loads: NodeLoads) -> "ScoreState":
        """Full score state of a placement."""
        return cls(loads.rows(), ~loads.offline, loads.excl_pairs)

    def _values(self, s1: np.ndarray, s2: np.ndarray) -> np.ndarray:
        """Statistic values from sums; works on (C,) or (K, C) arrays."""
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = s1 / self.count
            std = np.sqrt(np.maximum(0.0, s2 / self.count - mean * mean))
        return np.where(self.is_cv, std, s1)

    @property
    def has_online(self) -> bool:
        """Ganeti scores a cluster without online nodes as 0 with no metrics."""
        return bool(self.online.any())

    def breakdown(self) -> List[MetricValue]:
        """Per-metric values and weights, in Ganeti's order."""
        if not self.has_online:
            return []
        values = dict(zip((m.name for m in COLUMNS), self._values(self.s1, self.s2)))
        values[MAP_METRIC.name] = _map_value(self.map_totals)
        return [MetricValue(m.name, float(values[m.name]), m.weight) for m in METRICS]

    @property
    def total(self) -> float:
        """The cluster score."""
        return float(sum(m.value * m.weight for m in self.breakdown()))

    def _sums_after(self, changes: Mapping[int, NodeRow]):
        """(s1, s2, map totals) with the rows of the changed nodes replaced."""
        s1, s2, totals = self.s1.copy(), self.s2.copy(), Counter(self.map_totals)
        for node, (row, counter) in changes.items():
            member = self.member[node]
            old = np.where(member, self.rows[node] - self.shift, 0.0)
            new = np.where(member, np.asarray(row) - self.shift, 0.0)
            s1 += new - old
            s2 += new * new - old * old
            if self.online[node]:
                totals.subtract(self.maps[node])
                totals.update(counter)
        return s1, s2, totals

    def _total(self, s1: np.ndarray, s2: np.ndarray, totals: Counter) -> float:
        if not self.has_online:
            return 0.0
        return float(self._values(s1, s2) @ self.weights + MAP_METRIC.weight * _map_value(totals))

    def delta(self, changes: Mapping[int, NodeRow]) -> float:
        """Score change if the given nodes took the given rows (no mutation)."""
        return self._total(*self._sums_after(changes)) - self.total

    def apply(self, changes: Mapping[int, NodeRow]) -> None:
        """Replace the rows of the changed nodes."""
        self.s1, self.s2, totals = self._sums_after(changes)
        self.map_totals = +totals
        for node, (row, counter) in changes.items():
            self.rows[node] = row
            self.maps[node] = Counter(counter)

    def slot_totals(self, nodes: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Scores if, for each candidate k, nodes ``nodes[k, j]`` took ``rows[k, j]``.

        ``nodes`` is (K, m) with distinct nodes per candidate, ``rows`` is
        (K, m, C); the location-exclusion map is taken as unchanged.
        """
        if not self.has_online:
            return np.zeros(len(nodes))
        member = self.member[nodes]
        new = np.where(member, rows - self.shift, 0.0)
        old = np.where(member, self.rows[nodes] - self.shift, 0.0)
        s1 = self.s1 + (new - old).sum(axis=1)
        s2 = self.s2 + (new * new - old * old).sum(axis=1)
        return np.einsum("kc,c->k", self._values(s1, s2), self.weights) + MAP_METRIC.weight * _map_value(self.map_totals)

    def candidate_totals(self, nodes: Sequence[int], rows: np.ndarray,
                         fixed: Optional[Mapping[int, NodeRow]] = None,
                         maps: Optional[Sequence[Counter]] = None) -> np.ndarray:
        """Scores if, after the ``fixed`` changes, node ``nodes[k]`` took ``rows[k]``.

        Vectorised over the K candidates; ``maps`` (per candidate
        location-exclusion maps) is only needed when those maps change.
        """
        fixed = dict(fixed or {})
        s1, s2, totals = self._sums_after(fixed)
        nodes = np.asarray(nodes, dtype=int)
        current = self.rows[nodes].copy()
        for k, node in enumerate(nodes):
            if node in fixed:
                current[k] = fixed[node][0]
        member = self.member[nodes]
        old = np.where(member, current - self.shift, 0.0)
        new = np.where(member, np.asarray(rows) - self.shift, 0.0)
        cand_s1 = s1 + new - old
        cand_s2 = s2 + new * new - old * old
        if not self.has_online:
            return np.zeros(len(nodes))
        scores = self._values(cand_s1, cand_s2) @ self.weights
        if maps is None:
            return scores + MAP_METRIC.weight * _map_value(totals)
        base = {n: fixed[n][1] if n in fixed else self.maps[n] for n in nodes}
        for k, (node, counter) in enumerate(zip(nodes, maps)):
            cand = Counter(totals)
            if self.online[node]:
                cand.subtract(base[node])
                cand.update(counter)
            scores[k] += MAP_METRIC.weight * _map_value(cand)
        return scores


def score(cluster: Cluster) -> List[MetricValue]:
    """Per-metric breakdown of a cluster's score (sum value x weight for the total)."""
    return ScoreState.from_cluster(cluster).breakdown()
