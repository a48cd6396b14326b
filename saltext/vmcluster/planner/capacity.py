"""Cluster capacity (Ganeti's hspace): how many more instances fit.

:func:`capacity` allocates instances of one spec (default: the cluster
policy's standard spec and first disk template) until an allocation fails,
and reports the count and the most frequent failure reason — the limiting
resource. :func:`tiered_capacity` starts at the policy's largest spec and,
whenever allocation fails, shrinks the resource that failed most often
(memory by 64 MiB, each disk by 256 MiB, one vcpu, one spindle), as Ganeti's
tiered allocation does. As in hspace, a cluster with a node already failing
N+1 gets no new instance (FailN1), and the global N+1 capacity check is left
out for DRBD instances.
"""

import dataclasses
from collections import Counter
from dataclasses import dataclass
from typing import List, Optional, Tuple

from saltext.vmcluster.planner.allocate import Allocator, InstanceSpec
from saltext.vmcluster.planner.model import Cluster, ISpec, default_ipolicy

# Ganeti's FailMode order: ties between failure counts go to the later one.
FAIL_ORDER = ("FailMem", "FailDisk", "FailCPU", "FailN1", "FailTags", "FailMig",
              "FailDiskCount", "FailSpindles", "FailInternal")
UNIT = {"FailMem": 64, "FailDisk": 256, "FailCPU": 1, "FailSpindles": 1}


@dataclass
class CapacityResult:
    """Instances that fit: ``tiers`` pairs each spec with its count."""

    count: int
    reason: str
    failures: Counter
    tiers: List[Tuple[InstanceSpec, int]]
    allocator: Allocator


def _policy(cluster: Cluster):
    return cluster.ipolicies.get("") or default_ipolicy()


def _from_ispec(cluster: Cluster, ispec: ISpec, spindles: Optional[int] = None) -> InstanceSpec:
    policy = _policy(cluster)
    return InstanceSpec(mem=ispec.memory_size, disk=ispec.disk_size, vcpus=ispec.cpu_count,
                        disk_template=policy.disk_templates[0],
                        spindle_use=policy.std_spec.spindle_use, disk_spindles=spindles)


def standard_spec(cluster: Cluster) -> InstanceSpec:
    """The cluster policy's standard instance (hspace's default spec)."""
    std = _policy(cluster).std_spec
    return _from_ispec(cluster, std, std.spindle_use)


def max_specs(cluster: Cluster) -> List[InstanceSpec]:
    """The largest instances of each min/max pair of the cluster policy (tiered starts)."""
    return [_from_ispec(cluster, high, high.spindle_use)
            for _, high in _policy(cluster).min_max_specs]


def ranked_reasons(failures: Counter) -> List[str]:
    """Failure reasons, most frequent first (ties: later in Ganeti's order first)."""
    seen = [r for r in FAIL_ORDER if failures.get(r)]
    return sorted(seen, key=lambda r: (-failures[r], -FAIL_ORDER.index(r)))


def shrink(spec: InstanceSpec, reason: str) -> Optional[InstanceSpec]:
    """``spec`` made one unit smaller in the failing resource (None: cannot)."""
    unit = UNIT.get(reason)
    if reason == "FailMem" and spec.mem - unit >= unit:
        return dataclasses.replace(spec, mem=spec.mem - unit)
    if reason == "FailDisk" and all(d - unit >= unit for d in spec.disk_sizes):
        disks = [d - unit for d in spec.disk_sizes]
        return dataclasses.replace(spec, disks=disks, disk=sum(disks))
    if reason == "FailCPU" and spec.vcpus - unit >= unit:
        return dataclasses.replace(spec, vcpus=spec.vcpus - unit)
    if reason == "FailSpindles" and (spec.disk_spindles or 0) - unit >= unit:
        return dataclasses.replace(spec, disk_spindles=spec.disk_spindles - unit)
    return None


def _start(cluster: Cluster, spec: InstanceSpec) -> Tuple[Allocator, bool]:
    """An allocator, and whether allocation may start (no node failing N+1)."""
    alloc = Allocator(cluster, capacity_check=spec.disk_template != "drbd")
    bad = alloc.room.fail_n1 & alloc.online
    return alloc, not bad.any()


def _fill(alloc: Allocator, spec: InstanceSpec, limit: Optional[int], done: int):
    """Allocate copies of ``spec`` until failure or ``limit``; (count, last failures)."""
    count = 0
    while limit is None or done + count < limit:
        result = alloc.allocate(dataclasses.replace(spec, name=f"new-{done + count}"))
        if not result.ok:
            return count, result.failures
        count += 1
    return count, Counter()


def _result(alloc, tiers, failures) -> CapacityResult:
    """The result; the reason is the most frequent failure (ties: earlier in Ganeti's order)."""
    reasons = sorted((r for r in FAIL_ORDER if failures.get(r)), key=lambda r: -failures[r])
    return CapacityResult(sum(n for _, n in tiers), reasons[0] if reasons else "",
                          failures, tiers, alloc)


def capacity(cluster: Cluster, spec: Optional[InstanceSpec] = None,
             limit: Optional[int] = None) -> CapacityResult:
    """How many instances of ``spec`` (default the standard spec) fit."""
    spec = spec or standard_spec(cluster)
    alloc, can_start = _start(cluster, spec)
    if not can_start:
        return _result(alloc, [], Counter(FailN1=1))
    count, failures = _fill(alloc, spec, limit, 0)
    return _result(alloc, [(spec, count)] if count else [], failures)


def _big_step(alloc: Allocator, spec: InstanceSpec, failures: Counter) -> Optional[InstanceSpec]:
    """A smaller spec that fits, shrinking one resource while it keeps failing."""
    for reason in ranked_reasons(failures):
        smaller = shrink(spec, reason)
        while smaller:
            probe = alloc.allocate(smaller, commit=False)
            if probe.ok:
                return smaller
            if not probe.failures.get(reason):
                break
            smaller = shrink(smaller, reason)
    return None


def tiered_capacity(cluster: Cluster, spec: Optional[InstanceSpec] = None,
                    limit: Optional[int] = None) -> CapacityResult:
    """Tiered allocation from ``spec`` downwards (default: from each policy maximum in turn)."""
    starts = [spec] if spec else max_specs(cluster)
    alloc, can_start = _start(cluster, starts[0])
    if not can_start:
        return _result(alloc, [], Counter(FailN1=1))
    tiers: List[Tuple[InstanceSpec, int]] = []
    failures: Counter = Counter()
    for start in starts:
        if limit is None or sum(n for _, n in tiers) < limit:
            failures = _tiers(alloc, start, limit, tiers)
    return _result(alloc, tiers, failures)


def _tiers(alloc: Allocator, spec: InstanceSpec, limit: Optional[int],
           tiers: List[Tuple[InstanceSpec, int]]) -> Counter:
    """Tiered allocation from one spec, appending to ``tiers``; the last failures."""
    tried: List[Tuple[InstanceSpec, Counter]] = []  # specs since the last success
    while True:
        done = sum(n for _, n in tiers)
        count, failures = _fill(alloc, spec, limit, done)
        if count:
            tiers.append((spec, count))
            tried = []
        if limit is not None and done + count >= limit:
            return failures
        tried.append((spec, failures))
        reasons = ranked_reasons(failures)
        smaller = shrink(spec, reasons[0]) if reasons else None
        if smaller is None:
            smaller = next(filter(None, (_big_step(alloc, s, f) for s, f in reversed(tried))),
                           None)
        if smaller is None:
            return failures
        spec = smaller
