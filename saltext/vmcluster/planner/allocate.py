"""Instance allocation, relocation and node evacuation (Ganeti's hail).

An :class:`Allocator` holds a working copy of a cluster with its per-node
loads, score state and hard-check state, and places instances one at a time
so that each placement sees the previous ones:

* :meth:`Allocator.allocate` places a new instance on the node (or DRBD
  primary/secondary pair of one group) giving the best cluster score among
  those passing every hard check (:mod:`checks`), in the best group by alloc
  policy (preferred before last_resort, never unallocable) then score;
  offline (and drained, which Ganeti loads as offline) nodes are never used.
  By default the result must also keep the cluster globally N+1 redundant
  (Ganeti's capacity check).
* :meth:`Allocator.relocate` gives a DRBD instance a new secondary.
* :meth:`Allocator.evacuate` moves instances off their nodes by Ganeti's
  modes: ``primary`` (failover / re-home the primary), ``secondary`` (new
  secondary), ``all`` (both; DRBD instances get a new node pair).

Candidates are scored together with :meth:`ScoreState.candidate_totals`.
DRBD pairs are searched exhaustively among the :data:`PAIR_WIDTH` primaries
and secondaries with the best separate scores (all pairs in smaller groups).
Ties go to the last candidate in node order, as in Ganeti.
"""

import copy
from collections import Counter
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from saltext.vmcluster import names
from saltext.vmcluster.planner.balance import COPY_STORAGE
from saltext.vmcluster.planner.checks import (
    FAILURES, OK, Demand, NodeRoom, Redundancy, policy_failure,
)
from saltext.vmcluster.planner.model import (
    ALLOC_POLICIES, DISK_TEMPLATES, Cluster, Instance,
)
from saltext.vmcluster.planner.score import AGG, COLUMN, NodeLoads, ScoreState

PAIR_WIDTH = 32
EVAC_MODES = ("primary", "secondary", "all")
# Templates whose instance can be re-homed on any node (shared or no storage).
EXTERNAL = frozenset(("diskless", "sharedfile", "blockdev", "rbd", "ext", "gluster"))
TIE = 1e-9


@dataclass
class InstanceSpec:
    """A new instance: sizes in MiB; ``disks`` are the disk sizes (default one disk)."""

    mem: int
    disk: int
    vcpus: int
    disk_template: str = "plain"
    name: str = "new"
    tags: List[str] = field(default_factory=list)
    disks: Optional[List[int]] = None
    spindle_use: int = 1
    disk_spindles: Optional[int] = None
    networks: List[str] = field(default_factory=list)

    @property
    def required_nodes(self) -> int:
        return 2 if self.disk_template == "drbd" else 1

    @property
    def disk_sizes(self) -> List[int]:
        return list(self.disks) if self.disks is not None else [self.disk]

    def instance(self) -> Instance:
        """The instance (not yet placed) this spec describes."""
        return Instance(self.name, self.mem, self.disk, self.vcpus, "running", True, "", None,
                        self.disk_template, list(self.tags), self.spindle_use,
                        self.disk_spindles)


SPEC_KEYS = ("mem", "disk", "vcpus", "template", "spindles", "tags", "name")


def parse_spec(text: str) -> InstanceSpec:
    """Parse ``mem=4G,disk=10G,vcpus=2[,template=drbd][,tags=a+b][,name=x]``.

    Raises :class:`names.ValidationError` naming the bad field.
    """
    fields: Dict[str, str] = {}
    for part in filter(None, text.split(",")):
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or key not in SPEC_KEYS:
            raise names.ValidationError(key or "spec", part,
                                        "write key=value pairs with keys " + ", ".join(SPEC_KEYS))
        fields[key] = value.strip()
    for key in ("mem", "disk", "vcpus"):
        if key not in fields:
            raise names.ValidationError(key, None, f"give {key}=..., e.g. mem=1G,disk=10G,vcpus=1")
    return InstanceSpec(
        mem=names.size_mib(fields["mem"], "mem"), disk=names.size_mib(fields["disk"], "disk"),
        vcpus=names.positive_int(fields["vcpus"], "vcpus"),
        disk_template=names.choice(fields.get("template", "plain"), "template", DISK_TEMPLATES),
        name=names.name(fields.get("name", "new"), "name"),
        tags=[t for t in fields.get("tags", "").split("+") if t],
        spindle_use=names.positive_int(fields.get("spindles", "1"), "spindles"),
    )


@dataclass
class Placement:
    """Where an instance goes (``secondary`` None for single-node templates)."""

    instance: str
    primary: str
    secondary: Optional[str]
    group: str
    score: float


@dataclass
class AllocResult:
    """Outcome of one allocation: the placement, or None and the failure counts."""

    spec: InstanceSpec
    placement: Optional[Placement]
    failures: Counter
    info: str

    @property
    def ok(self) -> bool:
        return self.placement is not None


@dataclass
class Move:
    """One evacuated instance: its old and new nodes."""

    instance: str
    old: Tuple[str, Optional[str]]
    new: Tuple[str, Optional[str]]
    score: float


@dataclass
class EvacResult:
    """Moves made, and instances that could not move (name -> reason)."""

    moves: List[Move]
    failed: Dict[str, str]


@dataclass
class _Profile:
    """Score-relevant view of an instance for candidate scoring."""

    pri: np.ndarray
    sec: np.ndarray
    sec_mem: float
    desired: set
    excl: List[str]
    dem: Demand


@dataclass
class _Choice:
    primary: int
    secondary: int
    score: float


class Allocator:
    """Places instances on a working copy of a cluster (see the module doc)."""

    def __init__(self, cluster: Cluster, capacity_check: bool = True,
                 allow_copy_storage: bool = False):
        self.cluster = copy.deepcopy(cluster)
        self.relocatable = EXTERNAL | (COPY_STORAGE if allow_copy_storage else frozenset())
        self.loads = NodeLoads(self.cluster)
        self.state = ScoreState.from_loads(self.loads)
        self.room = NodeRoom(self.loads)
        self.capacity_check = capacity_check
        self.redundancy = Redundancy(self.room) if capacity_check else None
        self.groups = {g.uuid: g for g in self.cluster.groups}
        nodes = self.cluster.nodes
        self.group_nodes = {g.uuid: np.array([k for k, n in enumerate(nodes) if n.group == g.uuid],
                                             dtype=int) for g in self.cluster.groups}
        self.online = ~self.loads.offline

    @property
    def score(self) -> float:
        return self.state.total

    # -- scoring -------------------------------------------------------------

    def _profile(self, inst: Instance) -> _Profile:
        pri, sec = self.loads.contributions(inst)
        return _Profile(pri, sec, inst.mem if inst.uses_secondary_memory else 0.0,
                        self.cluster.desired_locations(inst), self.cluster.exclusion_tags(inst),
                        Demand.of(self.cluster, inst))

    def _pri_rows(self, nodes: np.ndarray, prof: _Profile):
        """Candidate rows and location-exclusion maps with the instance as primary."""
        loads = self.loads
        extra = np.tile(prof.pri, (len(nodes), 1))
        if prof.desired:
            extra[:, AGG["loc_score"]] += [len(prof.desired - loads.locations[n]) for n in nodes]
        rows = loads.rows_of(nodes, loads.agg[nodes] + extra, self.room.reserved(nodes),
                             self.state.rows[nodes, COLUMN["pri_tags_score"]])
        maps = None
        if prof.excl and any(loads.locations[n] for n in nodes):
            maps = [loads.excl_pairs[n] + Counter((loc, t) for loc in loads.locations[n]
                                                  for t in prof.excl) for n in nodes]
        return rows, maps

    def _sec_rows(self, nodes: np.ndarray, pri: int, prof: _Profile) -> np.ndarray:
        """Candidate rows with the instance as secondary of ``pri`` (-1: no primary yet).

        The location score of the pair (a summed metric) is booked here.
        """
        loads = self.loads
        extra = np.tile(prof.sec, (len(nodes), 1))
        r_mem = self.room.reserved(nodes)
        if pri >= 0:
            here = loads.locations[pri]
            extra[:, AGG["loc_score"]] += [len(here & loads.locations[n]) for n in nodes]
            r_mem = np.maximum(r_mem, loads.peers[nodes, pri] + prof.sec_mem)
        else:
            r_mem = np.maximum(r_mem, prof.sec_mem)
        return loads.rows_of(nodes, loads.agg[nodes] + extra, r_mem,
                             self.state.rows[nodes, COLUMN["pri_tags_score"]])

    @staticmethod
    def _order(nodes: np.ndarray, scores: np.ndarray) -> List[int]:
        """Candidate positions best first; near-ties prefer later nodes (Ganeti)."""
        rounded = np.round(scores / TIE)
        return list(np.lexsort((-nodes, rounded)))

    def _singles(self, nodes, prof, fixed, failures, strict=True) -> List[_Choice]:
        codes = self.room.primary_failures(nodes, prof.dem, strict)
        failures.update(FAILURES[c] for c in codes[codes != OK])
        good = nodes[codes == OK]
        if not len(good):
            return []
        rows, maps = self._pri_rows(good, prof)
        scores = self.state.candidate_totals(good, rows, fixed=fixed, maps=maps)
        return [_Choice(int(good[k]), -1, float(scores[k])) for k in self._order(good, scores)]

    def _pairs(self, prim, secs, prof, fixed, failures) -> List[_Choice]:
        """DRBD pairs from candidate primaries and secondaries (same group), best first."""
        codes = self.room.primary_failures(prim, prof.dem)
        failures.update(FAILURES[c] for c in codes[codes != OK])
        prim = prim[codes == OK]
        generic = self.room.secondary_failures(secs, secs, prof.dem)
        secs_ok = secs[generic == OK]
        failures.update(FAILURES[c] for c in generic[generic != OK])
        if not len(prim) or not len(secs_ok):
            return []
        rows, maps = self._pri_rows(prim, prof)
        p_scores = self.state.candidate_totals(prim, rows, fixed=fixed, maps=maps)
        s_scores = self.state.candidate_totals(secs_ok, self._sec_rows(secs_ok, -1, prof),
                                               fixed=fixed)
        top_p = [prim[k] for k in self._order(prim, p_scores)[:PAIR_WIDTH]]
        top_s = np.array([secs_ok[k] for k in self._order(secs_ok, s_scores)[:PAIR_WIDTH + 1]])
        choices = []
        for p in top_p:
            k = int(np.flatnonzero(prim == p)[0])
            cand = top_s[top_s != p]
            codes = self.room.secondary_failures(cand, p, prof.dem)
            failures.update(FAILURES[c] for c in codes[codes != OK])
            cand = cand[codes == OK]
            if not len(cand):
                continue
            pfixed = dict(fixed or {})
            pfixed[int(p)] = (rows[k], maps[k] if maps else Counter(self.loads.excl_pairs[p]))
            scores = self.state.candidate_totals(cand, self._sec_rows(cand, int(p), prof),
                                                 fixed=pfixed)
            choices += [_Choice(int(p), int(s), float(v)) for s, v in zip(cand, scores)]
        keys = np.array([[c.score for c in choices], [c.primary for c in choices],
                         [c.secondary for c in choices]]) if choices else np.zeros((3, 0))
        order = np.lexsort((-keys[2], -keys[1], np.round(keys[0] / TIE)))
        return [choices[k] for k in order]

    # -- committing ----------------------------------------------------------

    def _apply(self, i: int, pri: int, sec: int) -> None:
        """Move instance ``i`` (placed or not) and update every state."""
        placed = self.loads.placement[i][0] >= 0
        touched = (self.loads.move if placed else self._place_new)(i, pri, sec)
        self.state.apply(self.loads.changes(touched))
        self.room.refresh(touched)
        if self.redundancy:
            self.redundancy.commit(touched)
        inst = self.cluster.instances[i]
        names_ = (self.cluster.nodes[pri].name, self.cluster.nodes[sec].name if sec >= 0 else None)
        if placed:
            self.cluster.relocate(inst, *names_)
        else:
            inst.primary, inst.secondary = names_
            self.cluster.claim(inst)

    def _place_new(self, i: int, pri: int, sec: int) -> List[int]:
        self.loads.place(i, pri, sec)
        return sorted({pri, sec} - {-1})

    # -- allocation ----------------------------------------------------------

    def candidates(self, group: str, restrict: Optional[Iterable[str]] = None) -> np.ndarray:
        """Online nodes of a group (optionally only those named in ``restrict``)."""
        nodes = self.group_nodes[group]
        nodes = nodes[self.online[nodes]]
        if restrict is not None:
            allowed = set(restrict)
            nodes = np.array([n for n in nodes if self.cluster.nodes[n].name in allowed], dtype=int)
        return nodes

    def allocate(self, spec: InstanceSpec, restrict: Optional[Iterable[str]] = None,
                 group: Optional[str] = None, commit: bool = True) -> AllocResult:
        """Place a new instance (see the module doc); ``group`` is a group name."""
        inst = spec.instance()
        prof = self._profile(inst)
        failures: Counter = Counter()
        notes, best = [], []
        for grp in self.cluster.groups:
            if (group and grp.name != group) or grp.alloc_policy == "unallocable":
                continue
            missing = [net for net in spec.networks if net not in grp.networks]
            if missing:
                notes.append(f"group {grp.name} is not connected to network {missing[0]}")
                continue
            nodes = self.candidates(grp.uuid, restrict)
            if not len(nodes):
                continue
            exclusive = bool(self.loads.excl[nodes].any())
            reason = policy_failure(self.cluster.group_ipolicy(grp), inst, spec.disk_sizes,
                                    exclusive)
            if reason:
                failures[reason] += len(nodes)
                continue
            if spec.required_nodes == 2:
                choices = self._pairs(nodes, nodes, prof, None, failures)
            else:
                choices = self._singles(nodes, prof, None, failures)
            choice = self._first_keeping_capacity(inst, choices, failures)
            if choice:
                best.append((ALLOC_POLICIES.index(grp.alloc_policy), choice.score, grp, choice))
        if not best:
            info = "; ".join(notes + [_describe(failures)])
            return AllocResult(spec, None, failures, info)
        _, _, grp, choice = min(best, key=lambda b: b[:2])
        if commit:
            self._apply(self.loads.add_instance(inst), choice.primary, choice.secondary)
        nodes = self.cluster.nodes
        placement = Placement(spec.name, nodes[choice.primary].name,
                              nodes[choice.secondary].name if choice.secondary >= 0 else None,
                              grp.name, choice.score)
        return AllocResult(spec, placement, failures, f"group {grp.name}: score {choice.score:.8f}")

    def _first_keeping_capacity(self, inst, choices, failures) -> Optional[_Choice]:
        """The best choice that keeps the cluster globally N+1 redundant (if checked)."""
        for choice in choices:
            if not self.redundancy or self.redundancy.check(inst, choice.primary, choice.secondary):
                return choice
            failures["FailN1"] += 1
        return None

    def allocate_many(self, specs: Sequence[InstanceSpec], **kwargs) -> List[AllocResult]:
        """Allocate in turn; each allocation sees the previous ones (hail multi-allocate)."""
        return [self.allocate(spec, **kwargs) for spec in specs]

    # -- moving existing instances ---------------------------------------------

    def _index(self, name: str) -> int:
        if name not in self.loads.inst_index:
            raise KeyError(f"unknown instance {name!r}")
        return self.loads.inst_index[name]

    def _avail(self, group: str, exclude: Iterable[int]) -> np.ndarray:
        nodes = self.candidates(group)
        return np.setdiff1d(nodes, np.fromiter(exclude, dtype=int))

    def _move_choices(self, i: int, mode: str, avail: np.ndarray, failures: Counter):
        """Best-first new (primary, secondary) for instance ``i`` under an evac mode."""
        inst = self.cluster.instances[i]
        pri, sec = (int(x) for x in self.loads.placement[i])
        prof = self._profile(inst)
        drbd = inst.disk_template == "drbd"
        if not drbd and inst.disk_template not in self.relocatable:
            raise _CannotMove(f"Instances of type {inst.disk_template} cannot be relocated")
        if not drbd and mode == "secondary":
            raise _CannotMove(f"Instances with disk template '{inst.disk_template}' "
                              "can't execute change secondary")
        self.loads.unplace(i)
        try:
            if drbd and mode == "primary":
                return self._failover_choice(i, pri, sec, prof, failures)
            if drbd and mode == "secondary":
                self.loads.place(i, pri, -1)
                fixed = self.loads.changes([pri, sec])
                self.loads.unplace(i)
                return self._secondaries(pri, avail, prof, fixed, failures)
            fixed = self.loads.changes(sorted({pri, sec} - {-1}))
            if drbd:
                return self._pairs(avail, avail, prof, fixed, failures)
            return self._singles(avail, prof, fixed, failures,
                                 strict=not self.loads.offline[pri])
        finally:
            self.loads.place(i, pri, sec)

    def _secondaries(self, pri, avail, prof, fixed, failures) -> List[_Choice]:
        codes = self.room.secondary_failures(avail, pri, prof.dem)
        failures.update(FAILURES[c] for c in codes[codes != OK])
        good = avail[codes == OK]
        if not len(good):
            return []
        scores = self.state.candidate_totals(good, self._sec_rows(good, pri, prof), fixed=fixed)
        return [_Choice(pri, int(good[k]), float(scores[k])) for k in self._order(good, scores)]

    def _failover_choice(self, i, pri, sec, prof, failures) -> List[_Choice]:
        strict = not self.loads.offline[pri]
        code = self.room.primary_failures([sec], prof.dem, strict)[0]
        if code == OK and strict:
            code = self.room.secondary_failures([pri], sec, prof.dem)[0]
        if code != OK:
            failures[FAILURES[code]] += 1
            return []
        self.loads.place(i, sec, pri)
        touched = sorted({pri, sec})
        total = self.state.total + self.state.delta(self.loads.changes(touched))
        self.loads.unplace(i)
        return [_Choice(sec, pri, total)]

    def relocate(self, name: str, exclude: Sequence[str] = ()) -> Tuple[Optional[Move], str]:
        """New secondary for a DRBD instance (hail relocate); (move, reason if none)."""
        i = self._index(name)
        if self.cluster.instances[i].disk_template != "drbd":
            return None, "Can't relocate non-mirrored instances"
        result = self.evacuate([name], "secondary", exclude)
        return (result.moves[0], "") if result.moves else (None, result.failed[name])

    def evacuate(self, instances: Sequence[str], mode: str = "all",
                 exclude: Sequence[str] = ()) -> EvacResult:
        """Move the instances off their nodes (Ganeti's node-evacuate modes)."""
        names.choice(mode, "mode", EVAC_MODES)
        idx = [self._index(n) for n in instances]
        evac = {self.loads.index[n] for n in exclude}
        for i in idx:
            pri, sec = (int(x) for x in self.loads.placement[i])
            if mode != "secondary":
                evac.add(pri)
            if mode != "primary" and sec >= 0:
                evac.add(sec)
        result = EvacResult([], {})
        for name, i in zip(instances, idx):
            inst = self.cluster.instances[i]
            pri, sec = (int(x) for x in self.loads.placement[i])
            group = self.cluster.nodes[pri].group
            failures: Counter = Counter()
            try:
                choices = self._move_choices(i, mode, self._avail(group, evac | {pri}), failures)
            except _CannotMove as err:
                result.failed[name] = str(err)
                continue
            if not choices:
                result.failed[name] = "Can't find any good node: " + _describe(failures)
                continue
            old = (inst.primary, inst.secondary)
            best = choices[0]
            self._apply(i, best.primary, best.secondary)
            result.moves.append(Move(name, old, (inst.primary, inst.secondary), self.score))
        return result

    def evacuate_node(self, node: str, mode: str = "all") -> EvacResult:
        """Evacuate one node: its primaries, secondaries or both, by ``mode``."""
        names.choice(mode, "mode", EVAC_MODES)
        if node not in self.loads.index:
            raise KeyError(f"unknown node {node!r}")
        insts = [inst.name for inst in self.cluster.instances
                 if (mode != "secondary" and inst.primary == node)
                 or (mode != "primary" and inst.secondary == node)]
        return self.evacuate(insts, mode)


class _CannotMove(Exception):
    """The instance's template does not allow the requested move."""


def _describe(failures: Counter) -> str:
    if not failures:
        return "No valid allocation solutions, failure reasons: no online nodes"
    reasons = ", ".join(f"{k}: {v}" for k, v in sorted(failures.items(), key=lambda kv: -kv[1]))
    return "No valid allocation solutions, failure reasons: " + reasons
