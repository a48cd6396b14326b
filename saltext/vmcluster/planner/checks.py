"""Hard placement checks shared by the allocator and the balancer.

Mirrors Ganeti 3.0's ``Node.addPriEx``/``Node.addSecExEx`` in strict mode
(memory and disk overcommit, N+1, vcpu ratio, spindles, exclusion tags) and
``GlobalN1.canEvacuateNode`` (capacity: every node's instances can be
re-homed if it fails). All checks are vectorised over candidate nodes and
read the per-node aggregates of a :class:`NodeLoads`.

Failures are small integer codes (``OK`` = 0) named by :data:`FAILURES`,
using Ganeti's failure-mode names; where several checks fail, the first in
Ganeti's order is reported.
"""

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Set, Tuple

import numpy as np

from saltext.vmcluster.planner.model import Cluster, Instance, IPolicy
from saltext.vmcluster.planner.score import AGG, NodeLoads

FAILURES = ("OK", "FailMem", "FailDisk", "FailCPU", "FailN1", "FailTags", "FailSpindles")
OK, FAIL_MEM, FAIL_DISK, FAIL_CPU, FAIL_N1, FAIL_TAGS, FAIL_SPINDLES = range(len(FAILURES))
# Templates whose disks cannot be recreated elsewhere when their node fails.
NOT_MOVABLE = frozenset(("plain", "file", "blockdev"))


def policy_failure(policy: IPolicy, inst: Instance, disks: Optional[Sequence[int]] = None,
                   exclusive: bool = False) -> str:
    """Why an instance breaks an instance policy ("" if it does not): instMatchesPolicy.

    ``disks`` are its disk sizes (default: one disk of its total size).
    """
    disks = [inst.disk] if disks is None else list(disks)

    def against(limit, sign) -> str:
        spindles = (inst.disk_spindles or 0) if exclusive else inst.spindle_use
        checks = [
            (inst.mem, limit.memory_size, "FailMem"),
            *((size, limit.disk_size, "FailDisk") for size in disks),
            (inst.vcpus, limit.cpu_count, "FailCPU"),
            (spindles, limit.spindle_use, "FailSpindles"),
        ]
        if inst.disk_template != "diskless":
            checks.append((len(disks), limit.disk_count, "FailDiskCount"))
        return next((code for value, bound, code in checks if sign * (value - bound) < 0), "")

    reason = "FailInternal" if policy.min_max_specs else ""
    for low, high in reversed(policy.min_max_specs):
        reason = against(low, 1) or against(high, -1)
        if not reason:
            break
    if not reason and inst.disk_template not in policy.disk_templates:
        reason = "FailDisk"
    return reason


@dataclass(frozen=True)
class Demand:
    """What an instance asks of the nodes it is placed on."""

    mem: float  # memory held on the primary (0 when the instance is down)
    local: bool  # disks on the nodes' local storage (plain, drbd)
    disk: float  # local disk on each node (0 unless plain/drbd)
    spindles: float  # disk spindles (exclusive storage)
    spindle_use: float  # spindles counted against the spindle ratio
    vcpus: float  # 0 when administratively offline
    sec_mem: float  # memory reserved on the secondary for failover (N+1)
    tags: Tuple[str, ...]  # exclusion tags

    @classmethod
    def of(cls, cluster: Cluster, inst: Instance) -> "Demand":
        local = inst.uses_local_storage
        return cls(
            mem=inst.mem if inst.uses_memory else 0, local=local, disk=inst.disk if local else 0,
            spindles=inst.disk_spindles or 0, spindle_use=inst.spindle_use if local else 0,
            vcpus=inst.vcpus if inst.online else 0,
            sec_mem=inst.mem if inst.uses_secondary_memory else 0,
            tags=tuple(cluster.exclusion_tags(inst)),
        )


class NodeRoom:
    """Free resources per node of a placement, and the hard checks against them."""

    def __init__(self, loads: NodeLoads):
        self.loads = loads
        groups = {g.uuid: g for g in loads.cluster.groups}
        self.vcpu_ratio = np.array([loads.cluster.group_ipolicy(groups[n.group]).vcpu_ratio
                                    for n in loads.cluster.nodes], dtype=float)
        # Ganeti's failN1 as loaded (reported free memory below the reservation).
        self.fail_n1 = self.loads.mem_world - self._col("i_mem") < self.reserved()

    def _col(self, name: str, nodes=slice(None)) -> np.ndarray:
        return self.loads.agg[nodes, AGG[name]]

    def reserved(self, nodes=slice(None)) -> np.ndarray:
        """Memory reserved for failovers of the peers' instances (rMem)."""
        peers = self.loads.peers[nodes]
        return peers.max(axis=-1) if peers.shape[-1] else np.zeros(peers.shape[:-1])

    def unallocated(self, nodes=slice(None)) -> np.ndarray:
        """Guaranteed free memory (state of record, less missing memory)."""
        return self.loads.mem_base[nodes] - self._col("i_mem", nodes)

    def free_disk(self, nodes=slice(None)) -> np.ndarray:
        return self.loads.dsk_world[nodes] - self._col("used_dsk", nodes)

    def _common(self, nodes, dem: Demand, forth_mem_fails) -> List[Tuple[np.ndarray, int]]:
        """Disk and spindle checks shared by primaries and secondaries."""
        loads = self.loads
        f_dsk = self.free_disk(nodes)
        f_sp = loads.sp_world[nodes] - self._col("used_sp", nodes)
        excl = loads.excl[nodes]
        over_sp = self._col("inst_sp", nodes) + dem.spindle_use > loads.hi_sp[nodes]
        forth_dsk = f_dsk - self._col("used_dsk_forth", nodes) - dem.disk
        local = dem.local
        return [
            (local & (f_dsk - dem.disk <= 0), FAIL_DISK),
            (local & excl & (f_sp - dem.spindles < 0), FAIL_SPINDLES),
            (local & ~excl & over_sp, FAIL_DISK),
            (forth_mem_fails, FAIL_MEM),
            (local & (forth_dsk <= 0), FAIL_DISK),
        ]

    def primary_failures(self, nodes: Sequence[int], dem: Demand, strict: bool = True) -> np.ndarray:
        """Failure code per node if the instance became its primary (addPriEx).

        Not ``strict`` (moving off an offline node) only memory, disk and
        spindle overcommit count.
        """
        nodes = np.asarray(nodes, dtype=int)
        new_free = self.unallocated(nodes) - dem.mem
        forth_mem = (self.loads.mem_world[nodes] - self._col("i_mem", nodes)
                     - self._col("nonmem_mem", nodes) - dem.mem)
        t_cpu = self.loads.t_cpu[nodes]
        cpu = self.loads.os_cpu[nodes] + self._col("u_cpu", nodes) + dem.vcpus
        cpu_forth = self.loads.os_cpu[nodes] + self._col("u_cpu_forth", nodes) + dem.vcpus
        ratio = self.vcpu_ratio[nodes]
        tags = np.array([any(self.loads.pri_tags[n][t] > 0 for t in dem.tags) for n in nodes],
                        dtype=bool) if dem.tags else np.zeros(len(nodes), dtype=bool)
        common = self._common(nodes, dem, forth_mem <= 0)
        conditions = [
            (new_free <= 0, FAIL_MEM), common[0], common[1],
            (strict & common[2][0], FAIL_DISK),
            (strict & (new_free <= self.reserved(nodes)) & ~self.fail_n1[nodes], FAIL_MEM),
            (strict & (ratio >= 0) & (cpu > ratio * t_cpu), FAIL_CPU),
            (strict & tags, FAIL_TAGS), *(
                [(strict & c, code) for c, code in common[3:]]),
            (strict & (ratio >= 0) & (cpu_forth > ratio * t_cpu), FAIL_CPU),
        ]
        return np.select([c for c, _ in conditions], [code for _, code in conditions], OK)

    def secondary_failures(self, nodes: Sequence[int], pri: np.ndarray, dem: Demand) -> np.ndarray:
        """Failure code per node if it became the secondary for primaries ``pri`` (addSecExEx)."""
        nodes = np.asarray(nodes, dtype=int)
        pri = np.broadcast_to(np.asarray(pri, dtype=int), nodes.shape)
        unalloc = self.unallocated(nodes)
        new_rmem = np.maximum(self.reserved(nodes), self.loads.peers[nodes, pri] + dem.sec_mem)
        forth_mem = (self.loads.mem_world[nodes] - self._col("i_mem", nodes)
                     - self._col("nonmem_mem", nodes))
        common = self._common(nodes, dem, dem.sec_mem >= forth_mem)
        conditions = [
            *common[:3],
            (dem.sec_mem >= unalloc, FAIL_MEM),
            ((unalloc <= new_rmem) & ~self.fail_n1[nodes], FAIL_MEM),
            *common[3:],
        ]
        return np.select([c for c, _ in conditions], [code for _, code in conditions], OK)

    def refresh(self, nodes: Sequence[int]) -> None:
        """Recompute N+1 state of nodes whose placement changed (Ganeti's add/remove)."""
        nodes = np.asarray(list(nodes), dtype=int)
        self.fail_n1[nodes] = self.unallocated(nodes) <= self.reserved(nodes)


class Redundancy:
    """Global N+1 (Ganeti's capacity check): can every node fail without loss?

    When a node fails, its DRBD primaries fail over to their secondaries and
    its other primaries are recreated (largest first) on the next nodes of
    its group that still have memory (and, for local storage, disk) for them
    — Ganeti picks the best-scoring target instead; either way only the hard
    limits apply. Each node's plan (target nodes) is cached, so after a change
    only the nodes whose plan used a changed node are re-planned.
    """

    def __init__(self, room: NodeRoom):
        self.room = room
        loads = room.loads
        self.group_nodes: Dict[str, np.ndarray] = {}
        for k, node in enumerate(loads.cluster.nodes):
            self.group_nodes.setdefault(node.group, []).append(k)
        self.group_nodes = {g: np.array(v) for g, v in self.group_nodes.items()}
        self.plans: Dict[int, Optional[Set[int]]] = {}
        self.users: Dict[int, Set[int]] = {}
        self.bad: Set[int] = set()
        for k in range(len(loads.cluster.nodes)):
            self._store(k, self.plan(k))

    def _store(self, node: int, plan: Optional[Set[int]]) -> None:
        for target in self.plans.get(node) or ():
            self.users[target].discard(node)
        self.plans[node] = plan
        (self.bad.discard if plan is not None else self.bad.add)(node)
        for target in plan or ():
            self.users.setdefault(target, set()).add(node)

    def plan(self, node: int, extra: Optional[Tuple[Instance, int, int]] = None
             ) -> Optional[Set[int]]:
        """Target nodes that take over ``node``'s primaries, or None if impossible.

        ``extra`` is a new instance with its primary and secondary (-1: none)
        counted as if it were placed.
        """
        loads, room = self.room.loads, self.room
        insts = loads.cluster.instances
        mine = [(insts[i], loads.placement[i, 1]) for i in np.flatnonzero(loads.placement[:, 0] == node)]
        group = self.group_nodes[loads.cluster.nodes[node].group]
        pos = {n: k for k, n in enumerate(group)}
        mem = room.unallocated(group).astype(float)
        dsk = room.free_disk(group).astype(float)
        if extra:
            inst, pri, sec = extra
            mine += [(inst, sec)] if pri == node else []
            dem = Demand.of(loads.cluster, inst)
            for target, need in ((pri, dem.mem), (sec, 0)):
                if target in pos:
                    mem[pos[target]] -= need
                    dsk[pos[target]] -= dem.disk
        node_group = {g.uuid: g for g in loads.cluster.groups}
        policy = loads.cluster.group_ipolicy(node_group[loads.cluster.nodes[node].group])
        exclusive = bool(loads.excl[group].any())
        targets, others = set(), []
        for inst, sec in mine:
            if inst.forthcoming:
                continue
            if inst.disk_template != "drbd" or sec < 0:
                others.append(inst)
                continue
            mem[pos[sec]] -= inst.mem if inst.uses_memory else 0
            if mem[pos[sec]] <= 0:
                return None
            targets.add(int(sec))
        order = np.roll(np.arange(len(group)), -pos[node] - 1)[:-1]
        for inst in sorted(others, key=lambda x: (x.disk_template in NOT_MOVABLE, -x.mem)):
            # Recreating it elsewhere must obey the policy (a new one was checked already).
            new = extra is not None and inst is extra[0]
            if inst.disk_template in NOT_MOVABLE and not new and policy_failure(
                    policy, inst, None, exclusive):
                return None
            need = inst.mem if inst.uses_memory else 0
            disk = inst.disk if inst.uses_local_storage else 0
            fits = (mem[order] - need > 0) & ((dsk[order] - disk > 0) | (disk == 0))
            if not fits.any():
                return None
            k = order[int(np.argmax(fits))]
            mem[k] -= need
            dsk[k] -= disk
            targets.add(int(group[k]))
        return targets

    def check(self, inst: Instance, pri: int, sec: int) -> bool:
        """Whether every node could still be evacuated with ``inst`` placed on pri/sec.

        Like Ganeti, a node that already cannot be evacuated fails every check.
        """
        affected = self._affected([pri, sec] if sec >= 0 else [pri])
        if self.bad - set(affected):
            return False
        return all(self.plan(n, (inst, pri, sec)) is not None for n in affected)

    def commit(self, changed: Sequence[int]) -> None:
        """Re-plan the nodes affected by a change that was kept."""
        for n in self._affected(changed):
            self._store(n, self.plan(n))

    def _affected(self, changed: Sequence[int]) -> List[int]:
        out = set(int(n) for n in changed)
        for n in changed:
            out |= self.users.get(int(n), set())
        return sorted(out)
