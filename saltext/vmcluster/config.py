"""The operator's declaration, pillar ``cluster:``, validated into plain dataclasses.

Every error names the key path (``cluster:nodes:node1:group``) and the fix; an
invalid pillar yields no config at all, so nothing acts on it.
"""

from dataclasses import dataclass, field

from saltext.vmcluster import declared, disks, names
from saltext.vmcluster.names import ValidationError

NODE_KEYS = {
    "group": "node group name (default: default)",
    "replication_address": "IP address for DRBD replication",
    "fence": "fence command as a list of arguments (fence-agents style), e.g. [fence_ipmilan, ...]",
    "bridge": "the bridge new instances' NICs use on this node, e.g. br0 (default: cluster:defaults:bridge)",
}
# key -> validator(value, path)
DEFAULT_KEYS = {
    "template": lambda value, path: names.choice(value, path, disks.TEMPLATES),
    "image": disks.image,  # OS image new instances' disk 0 is made from, on every node
    "bridge": names.bridge,  # the bridge of new instances' NIC on nodes without a bridge of their own
}
ALLOC_POLICIES = ("preferred", "last_resort", "unallocable")
# Ganeti's built-in instance policy (sizes in MiB).
DEFAULT_IPOLICY = {
    "min": {"memory": 128, "vcpus": 1, "disk": 1024},
    "max": {"memory": 32768, "vcpus": 8, "disk": 1024 * 1024},
    "std": {"memory": 128, "vcpus": 1, "disk": 1024},
    "vcpu_ratio": 4.0,
}
SPEC_FIELDS = ("memory", "vcpus", "disk")


@dataclass(frozen=True)
class NodeConfig:
    name: str
    group: str = "default"
    replication_address: str = None
    fence: tuple = ()
    bridge: str = None


@dataclass(frozen=True)
class ClusterConfig:
    name: str
    nodes: dict = field(default_factory=dict)  # name -> NodeConfig
    groups: dict = field(default_factory=dict)  # name -> alloc policy
    defaults: dict = field(default_factory=dict)  # key -> value (see DEFAULT_KEYS)
    ipolicy: dict = field(default_factory=lambda: DEFAULT_IPOLICY)  # min/max/std specs (MiB), vcpu_ratio
    instances: dict = field(default_factory=dict)  # name -> declared.Declared (pillar cluster:instances)

    def bridge_of(self, node):
        """The bridge of new instances' NICs on ``node`` (its own, else the cluster's default; None: no NIC)."""
        return self.nodes[node].bridge or self.defaults.get("bridge")

    def policy_violation(self, memory, vcpus, disk):
        """Why an instance of this size breaks the instance policy (None if it does not)."""
        for name, value in (("memory", memory), ("vcpus", vcpus), ("disk", disk)):
            low, high = self.ipolicy["min"][name], self.ipolicy["max"][name]
            if not low <= value <= high:
                return (f"{name}: {value} is outside the instance policy ({low} to {high}{'' if name == 'vcpus' else ' MiB'}); "
                        f"change the {name} or cluster:ipolicy")
        return None


def _mapping(value, path, fix):
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValidationError(path, value, fix)
    return value


def _node(name, settings, path):
    names.name(name, path)
    settings = _mapping(settings, path, "give the node's settings as a mapping, or nothing")
    unknown = sorted(set(settings) - set(NODE_KEYS))
    if unknown:
        known = ", ".join(f"{k} ({v})" for k, v in NODE_KEYS.items())
        raise ValidationError(f"{path}:{unknown[0]}", settings[unknown[0]], f"unknown key; known keys: {known}")
    address = settings.get("replication_address")
    if address is not None:
        address = names.ip_address(address, f"{path}:replication_address")
    group = names.name(settings.get("group", "default"), f"{path}:group")
    fence = settings.get("fence", [])
    if not isinstance(fence, list) or not all(isinstance(arg, str) and arg for arg in fence):
        raise ValidationError(f"{path}:fence", fence, "give the fence command as a list of strings")
    bridge = settings.get("bridge")
    if bridge is not None:
        bridge = names.bridge(bridge, f"{path}:bridge")
    return NodeConfig(name=name, group=group, replication_address=address, fence=tuple(fence), bridge=bridge)


def _nodes(value):
    path = "cluster:nodes"
    if isinstance(value, list):
        value = {name: None for name in value}
    value = _mapping(value, path, "list the nodes by minion id: a list of names or a mapping name -> settings")
    if not value:
        raise ValidationError(path, value, "declare at least one node (its minion id)")
    return {str(name): _node(str(name), settings, f"{path}:{name}") for name, settings in value.items()}


def load(pillar):
    """Validate the whole pillar's ``cluster`` key into a :class:`ClusterConfig`."""
    if not isinstance(pillar, dict) or "cluster" not in pillar:
        raise ValidationError("cluster", None, "declare the cluster in pillar under the key 'cluster:'")
    cluster = _mapping(pillar["cluster"], "cluster", "make 'cluster:' a mapping with at least 'nodes:'")
    if "nodes" not in cluster:
        raise ValidationError("cluster:nodes", None, "declare the nodes: a list of minion ids")
    name = names.name(cluster.get("name", "cluster"), "cluster:name")
    nodes = _nodes(cluster["nodes"])
    defaults = _defaults(cluster.get("defaults"))
    return ClusterConfig(name=name, nodes=nodes, groups=_groups(cluster.get("groups"), nodes),
                         defaults=defaults, ipolicy=_ipolicy(cluster.get("ipolicy")),
                         instances=declared.load(cluster.get("instances"), nodes, defaults.get("template", "file")))


def _ipolicy(value):
    given = _mapping(value, "cluster:ipolicy", "give min/max/std specs and vcpu_ratio as a mapping")
    unknown = sorted(set(given) - set(DEFAULT_IPOLICY))
    if unknown:
        raise ValidationError(f"cluster:ipolicy:{unknown[0]}", given[unknown[0]], "known keys: min, max, std, vcpu_ratio")
    policy = {"vcpu_ratio": float(names.positive_int(given.get("vcpu_ratio", 4), "cluster:ipolicy:vcpu_ratio"))}
    for spec in ("min", "max", "std"):
        path = f"cluster:ipolicy:{spec}"
        fields = _mapping(given.get(spec), path, "give memory, vcpus and disk")
        policy[spec] = dict(DEFAULT_IPOLICY[spec])
        for key, val in fields.items():
            if key not in SPEC_FIELDS:
                raise ValidationError(f"{path}:{key}", val, f"known keys: {', '.join(SPEC_FIELDS)}")
            policy[spec][key] = (names.positive_int(val, f"{path}:{key}") if key == "vcpus"
                                 else names.size_mib(val, f"{path}:{key}"))
    for key in SPEC_FIELDS:
        if not policy["min"][key] <= policy["std"][key] <= policy["max"][key]:
            raise ValidationError(f"cluster:ipolicy:std:{key}", policy["std"][key], "keep min <= std <= max")
    return policy


def _groups(value, nodes):
    groups = _mapping(value, "cluster:groups", "give node groups as a mapping name -> {alloc_policy: ...}")
    result = {}
    for name in sorted(set(groups) | {n.group for n in nodes.values()}):
        path = f"cluster:groups:{name}"
        settings = _mapping(groups.get(name), path, "give the group's settings as a mapping")
        result[names.name(name, path)] = names.choice(settings.get("alloc_policy", "preferred"),
                                                      f"{path}:alloc_policy", ALLOC_POLICIES)
    return result


def _defaults(value):
    defaults = _mapping(value, "cluster:defaults", "give defaults as a mapping, e.g. {template: file}")
    for key, val in defaults.items():
        if key not in DEFAULT_KEYS:
            raise ValidationError(f"cluster:defaults:{key}", val, f"unknown key; known keys: {', '.join(DEFAULT_KEYS)}")
        DEFAULT_KEYS[key](val, f"cluster:defaults:{key}")
    return dict(defaults)
