"""The operator's declaration, pillar ``cluster:``, validated into plain dataclasses.

Every error names the key path (``cluster:nodes:node1:group``) and the fix; an
invalid pillar yields no config at all, so nothing acts on it.
"""

from dataclasses import dataclass, field

from saltext.vmcluster import names
from saltext.vmcluster.names import ValidationError

NODE_KEYS = {
    "group": "node group name (default: default)",
    "replication_address": "IP address for DRBD replication",
}


@dataclass(frozen=True)
class NodeConfig:
    name: str
    group: str = "default"
    replication_address: str = None


@dataclass(frozen=True)
class ClusterConfig:
    name: str
    nodes: dict = field(default_factory=dict)  # name -> NodeConfig


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
    return NodeConfig(name=name, group=group, replication_address=address)


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
    return ClusterConfig(name=name, nodes=_nodes(cluster["nodes"]))
