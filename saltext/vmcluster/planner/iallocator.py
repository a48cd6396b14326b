"""Ganeti iallocator requests (the JSON ``hail`` reads; Backend/IAlloc.hs).

:func:`loads`/:func:`load` turn a request into a :class:`Cluster` and a
:class:`Request`; :func:`run` answers it with an :class:`Allocator` in hail's
response shape (``success``, ``info``, ``result``). Supported request types:
allocate, multi-allocate, relocate and node-evacuate. As in Ganeti, drained
nodes are loaded as offline and an instance's disk is ``disk_space_total``.
"""

import json
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from saltext.vmcluster.planner.allocate import Allocator, InstanceSpec
from saltext.vmcluster.planner.model import Cluster, Group, IPolicy, ISpec, Node, default_ipolicy

STATUS = {"up": "running", "down": "ADMIN_down", "offline": "ADMIN_offline"}
REQUEST_TYPES = ("allocate", "multi-allocate", "relocate", "node-evacuate")
ISPEC_KEYS = ("memory-size", "cpu-count", "disk-size", "disk-count", "nic-count", "spindle-use")


class RequestError(ValueError):
    """A request this reader cannot use; names the key."""


@dataclass
class Request:
    """What is asked: ``specs`` for (multi-)allocate, ``instances`` for moves."""

    type: str
    specs: List[InstanceSpec] = field(default_factory=list)
    restrict: Optional[List[str]] = None
    group: Optional[str] = None
    instances: List[str] = field(default_factory=list)
    relocate_from: List[str] = field(default_factory=list)
    evac_mode: str = "all"


def _get(obj: dict, key: str, kind, where: str):
    if key not in obj or not isinstance(obj[key], kind):
        raise RequestError(f"{where}: key {key!r} missing or not {getattr(kind, '__name__', kind)}")
    return obj[key]


def _ispec(obj: dict) -> ISpec:
    return ISpec(*(int(obj[k]) for k in ISPEC_KEYS))


def _ipolicy(obj: dict) -> IPolicy:
    """A group's policy; missing parts take Ganeti's defaults."""
    base = default_ipolicy()
    return IPolicy(
        std_spec=_ispec(obj["std"]) if "std" in obj else base.std_spec,
        min_max_specs=[(_ispec(m["min"]), _ispec(m["max"])) for m in obj["minmax"]]
        if "minmax" in obj else base.min_max_specs,
        disk_templates=list(obj.get("disk-templates", base.disk_templates)),
        vcpu_ratio=float(obj.get("vcpu-ratio", base.vcpu_ratio)),
        spindle_ratio=float(obj.get("spindle-ratio", base.spindle_ratio)))


def _spec(obj: dict, name: str) -> InstanceSpec:
    where = f"instance {name!r}"
    disks = _get(obj, "disks", list, where)
    spindles = [d.get("spindles") for d in disks]
    return InstanceSpec(
        mem=int(_get(obj, "memory", int, where)), disk=int(_get(obj, "disk_space_total", int, where)),
        vcpus=int(_get(obj, "vcpus", int, where)),
        disk_template=_get(obj, "disk_template", str, where), name=name,
        tags=list(obj.get("tags", [])), disks=[int(d["size"]) for d in disks],
        spindle_use=int(obj.get("spindle_use", 1)),
        disk_spindles=sum(spindles) if spindles and None not in spindles else None,
        networks=[n["network"] for n in obj.get("nics", []) if n.get("network")],
    )


def _node(name: str, obj: dict) -> Node:
    nd = obj.get("ndparams", {})
    excl = bool(nd.get("exclusive_storage", False))
    live = not obj.get("offline", False) and obj.get("vm_capable", True)
    val = lambda key: obj.get(key, 0) if live else 0  # noqa: E731
    return Node(name, float(val("total_memory")), int(val("reserved_memory")),
                int(val("free_memory")), float(val("total_disk")), int(val("free_disk")),
                float(val("total_cpus")), obj["group"],
                offline=not live or bool(obj.get("drained", False)),
                spindles=int(val("total_spindles") if excl else nd.get("spindle_count", 1)),
                tags=list(obj.get("tags", [])), exclusive_storage=excl,
                free_spindles=int(val("free_spindles")), os_vcpus=int(val("reserved_cpus")))


def loads(text: str) -> Tuple[Cluster, Request]:
    """Parse an iallocator request."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise RequestError(f"not JSON: {err}") from err
    groups, policies = [], {}
    for uuid, g in _get(data, "nodegroups", dict, "request file").items():
        groups.append(Group(g["name"], uuid, g.get("alloc_policy", "preferred"),
                            list(g.get("tags", [])), list(g.get("networks", []))))
        policies[g["name"]] = _ipolicy(g.get("ipolicy", {}))
    nodes = [_node(name, n) for name, n in _get(data, "nodes", dict, "request file").items()]
    instances = []
    for name, i in _get(data, "instances", dict, "request file").items():
        spec = _spec(i, name)
        inst = spec.instance()
        inst.status = STATUS[i.get("admin_state", "up")]
        inst.primary, inst.secondary = i["nodes"][0], (i["nodes"][1:] or [None])[0]
        inst.forthcoming = bool(i.get("forthcoming", False))
        instances.append(inst)
    cluster = Cluster(groups, nodes, instances, list(data.get("cluster_tags", [])), policies)
    return cluster, _request(_get(data, "request", dict, "request file"))


def _request(req: dict) -> Request:
    kind = _get(req, "type", str, "request")
    if kind not in REQUEST_TYPES:
        raise RequestError(f"request: type {kind!r} not supported (use {', '.join(REQUEST_TYPES)})")
    if kind == "allocate":
        return Request(kind, [_spec(req, _get(req, "name", str, "request"))],
                       restrict=req.get("restrict-to-nodes"), group=req.get("group_name"))
    if kind == "multi-allocate":
        return Request(kind, [_spec(r, _get(r, "name", str, "request")) for r in
                              _get(req, "instances", list, "request")], group=req.get("group_name"))
    if kind == "relocate":
        return Request(kind, instances=[_get(req, "name", str, "request")],
                       relocate_from=list(_get(req, "relocate_from", list, "request")))
    mode = _get(req, "evac_mode", str, "request")
    return Request(kind, instances=list(_get(req, "instances", list, "request")),
                   evac_mode={"primary-only": "primary", "secondary-only": "secondary"}.get(mode, mode))


def load(path: str) -> Tuple[Cluster, Request]:
    """Read an iallocator request file."""
    with open(path, encoding="utf-8") as handle:
        return loads(handle.read())


def run(cluster: Cluster, request: Request) -> Dict:
    """Answer a request like hail: ``{"success", "info", "result"}``."""
    alloc = Allocator(cluster)
    if request.type == "allocate":
        res = alloc.allocate(request.specs[0], restrict=request.restrict, group=request.group)
        if not res.ok:
            return {"success": False, "info": res.info, "result": []}
        nodes = [res.placement.primary] + ([res.placement.secondary] if res.placement.secondary else [])
        return {"success": True, "info": res.info, "result": nodes}
    if request.type == "multi-allocate":
        results = alloc.allocate_many(request.specs, group=request.group)
        done = [[r.spec.name, [n for n in (r.placement.primary, r.placement.secondary) if n]]
                for r in results if r.ok]
        failed = [[r.spec.name, r.info] for r in results if not r.ok]
        info = f"{len(failed)} instances failed to allocate and {len(done)} were allocated"
        return {"success": True, "info": info, "result": [done, failed]}
    if request.type == "relocate":
        move, reason = alloc.relocate(request.instances[0], request.relocate_from)
        if not move:
            return {"success": False, "info": reason, "result": []}
        return {"success": True, "info": "success", "result": [move.new[1]]}
    res = alloc.evacuate(request.instances, request.evac_mode)
    groups = {n.name: {g.uuid: g.name for g in cluster.groups}[n.group] for n in cluster.nodes}
    moved = [[m.instance, groups[m.new[0]], [n for n in m.new if n]] for m in res.moves]
    info = f"{len(res.failed)} instances failed to move and {len(moved)} were moved"
    return {"success": True, "info": info, "result": [moved, sorted(res.failed.items())]}
