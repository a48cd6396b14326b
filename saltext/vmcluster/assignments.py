"""What each node is told about its instances: the ``vmcluster:`` pillar of ext_pillar ``cluster``.

Pure: from the store's records, the instances a node is primary or secondary of
(or a DRBD peer of, while ``replace-disks`` builds a new mirror), each with its
role, spec, disks and admin state. A node learns nothing about other nodes'
instances; the DRBD secret of a disk goes to the nodes that mirror it, which
both need it.
"""

# The record fields a node may see (the record's other fields stay on the master).
NODE_FIELDS = ("template", "memory", "vcpus", "nics", "tags", "admin_state", "primary", "secondary")


def role(node, record):
    """``primary``, ``secondary``, ``drbd-peer`` (a mirror being built) or None: ``node``'s part in ``record``."""
    if record["primary"] == node:
        return "primary"
    if record.get("secondary") == node:
        return "secondary"
    peers = {peer["name"] for disk in record["disks"] for peer in disk.get("drbd", {}).get("nodes", ())}
    return "drbd-peer" if node in peers else None


def node_assignments(node, records):
    """``{"instances": {name: {role, template, memory, vcpus, disks, admin_state, ...}}}`` of ``node``."""
    instances = {}
    for name, record in sorted(records.items()):
        part = role(node, record)
        if part:
            instances[name] = {"role": part, **{key: record.get(key) for key in NODE_FIELDS},
                               "disks": [{"index": index, **disk} for index, disk in enumerate(record["disks"])]}
    return {"instances": instances}
