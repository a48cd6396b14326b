"""Fill the planner's model from live node data (pure: plain dicts in, a Cluster out).

Inputs are the validated ``cluster:`` config, the nodes' ``cluster_node.resources``
replies (None for a node that did not answer), the store's instance records and
node flags. A domain the store does not know counts as a ``file`` instance of its
node with no disk of its own: the planner never moves it, which is right for
data it knows nothing about.
"""

from saltext.vmcluster import views
from saltext.vmcluster.planner.model import Cluster, Group, Instance, IPolicy, ISpec, Node, default_ipolicy

UNKNOWN_TEMPLATE = "file"


MIB = 1024 * 1024


def _node(name, group, reply, flags):
    if not isinstance(reply, dict) or flags.get("offline") or flags.get("drained"):
        return Node(name=name, total_mem=0, node_mem=0, free_mem=0, total_disk=0, free_disk=0, total_cpus=0,
                    group=group, offline=True)
    memory = reply["memory"]
    dtotal, dfree = views.local_disk(reply["storage"])
    return Node(name=name, total_mem=memory["total"], node_mem=memory["node"], free_mem=memory["free"],
                total_disk=dtotal, free_disk=dfree, total_cpus=reply["cpus"] or 1, group=group)


def _unknown_domains(node, reply, known):
    if not isinstance(reply, dict):
        return []
    return [
        Instance(name=name, mem=facts["memory"], disk=0, vcpus=facts["vcpus"],
                 status="running" if facts["running"] else "ADMIN_down", auto_balance=True,
                 primary=node, secondary=None, disk_template=UNKNOWN_TEMPLATE)
        for name, facts in sorted(reply.get("instances", {}).items())
        if name not in known
    ]


def instance_from_record(record):
    """The planner's view of a store record."""
    return Instance(
        name=record["name"], mem=record["memory"], disk=sum(d["size"] for d in record["disks"]) // MIB,
        vcpus=record["vcpus"], status="running" if record["admin_state"] == "up" else "ADMIN_down",
        auto_balance=True, primary=record["primary"], secondary=record.get("secondary"),
        disk_template=record["template"], tags=list(record.get("tags", [])),
    )


def cluster_from_live(cfg, replies, records=None, flags=None):
    """A planner Cluster: ``cfg``'s nodes (offline when silent, offline or drained), the store's
    instance ``records`` and any other domain the nodes report."""
    records = records or {}
    flags = flags or {}
    group_names = sorted({node.group for node in cfg.nodes.values()})
    groups = [Group(name=name, uuid=name) for name in group_names]
    nodes = [_node(name, cfg.nodes[name].group, replies.get(name), flags.get(name, {})) for name in sorted(cfg.nodes)]
    instances = [instance_from_record(records[name]) for name in sorted(records)]
    instances += [inst for name in sorted(cfg.nodes) for inst in _unknown_domains(name, replies.get(name), records)]
    policy = ipolicy(cfg.ipolicy)  # Ganeti checks a group's own policy: every group gets the pillar's
    return Cluster(groups=groups, nodes=nodes, instances=instances,
                   ipolicies={"": policy, **{group.name: policy for group in groups}})


def ipolicy(policy):
    """The planner's IPolicy of the pillar's ``cluster:ipolicy`` (counts Ganeti leaves implicit as its defaults)."""
    base = default_ipolicy()
    low, high = base.min_max_specs[0]

    def spec(values, like):
        return ISpec(values["memory"], values["vcpus"], values["disk"], like.disk_count, like.nic_count,
                     like.spindle_use)

    return IPolicy(std_spec=spec(policy["std"], base.std_spec),
                   min_max_specs=[(spec(policy["min"], low), spec(policy["max"], high))],
                   disk_templates=base.disk_templates, vcpu_ratio=policy["vcpu_ratio"],
                   spindle_ratio=base.spindle_ratio)
