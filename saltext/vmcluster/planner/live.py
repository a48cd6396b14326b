"""Fill the planner's model from live node data (pure: plain dicts in, a Cluster out).

Inputs are the validated ``cluster:`` config and the nodes' ``cluster_node.resources``
replies (None for a node that did not answer). Until the store records each
instance's template and disks, a defined domain counts as a ``file`` instance of
its node with no disk of its own: the planner then never moves it, which is
right for data it knows nothing about.
"""

from saltext.vmcluster import views
from saltext.vmcluster.planner.model import Cluster, Group, Instance, Node, default_ipolicy

UNKNOWN_TEMPLATE = "file"


def _node(name, group, reply):
    if not isinstance(reply, dict):
        return Node(name=name, total_mem=0, node_mem=0, free_mem=0, total_disk=0, free_disk=0, total_cpus=0,
                    group=group, offline=True)
    memory = reply["memory"]
    dtotal, dfree = views.local_disk(reply["storage"])
    return Node(name=name, total_mem=memory["total"], node_mem=memory["node"], free_mem=memory["free"],
                total_disk=dtotal, free_disk=dfree, total_cpus=reply["cpus"] or 1, group=group)


def _instances(node, reply):
    if not isinstance(reply, dict):
        return []
    return [
        Instance(name=name, mem=facts["memory"], disk=0, vcpus=facts["vcpus"],
                 status="running" if facts["running"] else "ADMIN_down", auto_balance=True,
                 primary=node, secondary=None, disk_template=UNKNOWN_TEMPLATE)
        for name, facts in sorted(reply.get("instances", {}).items())
    ]


def cluster_from_live(cfg, replies):
    """A planner Cluster of ``cfg``'s nodes (offline when silent) and their defined domains."""
    group_names = sorted({node.group for node in cfg.nodes.values()})
    groups = [Group(name=name, uuid=name) for name in group_names]
    nodes = [_node(name, cfg.nodes[name].group, replies.get(name)) for name in sorted(cfg.nodes)]
    instances = [inst for name in sorted(cfg.nodes) for inst in _instances(name, replies.get(name))]
    return Cluster(groups=groups, nodes=nodes, instances=instances, ipolicies={"": default_ipolicy()})
