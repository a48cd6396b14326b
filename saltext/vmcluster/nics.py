"""Instance NICs without Salt: the operator's ``nics=`` argument, default bridges, cluster-unique MACs.

A NIC is ``{"bridge": "br0", "mac": "52:54:00:xx:xx:xx", "model": "virtio"}`` in an
instance's record, exactly what :class:`saltext.vmcluster.domxml.Nic` takes. The
bridge name belongs to the instance: every node that may run it must provide a
bridge of that name (the operations check it before a move).

MACs the cluster generates start with the KVM prefix ``52:54:00``; the other three
octets come from a hash of the cluster, the instance and the NIC index, so the same
request yields the same MAC, and a MAC already used by another instance is skipped.
"""

import hashlib
import itertools

from saltext.vmcluster import domxml, names

MAC_PREFIX = "52:54:00"
NO_NICS = "none"
NIC_KEYS = ("bridge", "mac", "model")
NICS_FIX = ("give a bridge (nics=br0), a comma list (nics=br0,br1), a list of mappings "
            "(nics='[{bridge: br0, mac: \"52:54:00:12:34:56\"}]'), or nics=none for no NIC")


def parse(value, field="nics"):
    """The operator's ``nics=`` as a list of ``{"bridge", "mac", "model"}`` (bridge and mac may be None:
    filled in by :func:`complete`); None when ``value`` is None (the default NIC)."""
    if value is None:
        return None
    if value in ("", NO_NICS):
        return []
    if isinstance(value, str):
        value = value.split(",")
    elif isinstance(value, dict):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise names.ValidationError(field, value, NICS_FIX)
    return [_nic(item, f"{field}[{index}]") for index, item in enumerate(value)]


def _nic(item, field):
    if isinstance(item, str):
        item = {"bridge": item}
    if not isinstance(item, dict):
        raise names.ValidationError(field, item, NICS_FIX)
    unknown = sorted(set(item) - set(NIC_KEYS))
    if unknown:
        raise names.ValidationError(f"{field}.{unknown[0]}", item[unknown[0]], "known keys: " + ", ".join(NIC_KEYS))
    bridge, mac = item.get("bridge"), item.get("mac")
    if isinstance(mac, int):  # YAML reads a MAC of digits only (52:54:00:12:34:56) as a base-60 number
        raise names.ValidationError(f"{field}.mac", mac, "quote the MAC: mac: \"52:54:00:12:34:56\"")
    return {
        "bridge": None if bridge is None else names.bridge(bridge, f"{field}.bridge"),
        "mac": None if mac is None else names.mac(mac, f"{field}.mac"),
        "model": names.choice(item.get("model", "virtio"), f"{field}.model", domxml.NIC_MODELS),
    }


def default(bridge):
    """The NICs of an instance added without ``nics=``: one on ``bridge``, none when there is no bridge."""
    return [{"bridge": bridge, "mac": None, "model": "virtio"}] if bridge else []


def macs_in_use(records):
    """``{mac: "instance nic N"}`` of every NIC in the instance ``records`` (a mapping name -> record)."""
    return {nic["mac"]: f"{name} nic {index}"
            for name, record in records.items() for index, nic in enumerate(record.get("nics") or [])}


def _mac(seed, attempt):
    digest = hashlib.sha256(f"{seed}/{attempt}".encode()).digest()
    return MAC_PREFIX + "".join(f":{octet:02x}" for octet in digest[:3])


def generate_mac(seed, used):
    """The first MAC ``MAC_PREFIX:xx:xx:xx`` (octets from sha256 of ``seed`` and an attempt number) not in
    ``used``."""
    return next(mac for mac in (_mac(seed, attempt) for attempt in itertools.count()) if mac not in used)


def complete(nics, seed, bridge, node, used):
    """``nics`` (from :func:`parse`) with every bridge and MAC set: a NIC without a bridge goes on ``bridge``
    (the default bridge of ``node``); MACs are generated from ``seed`` and the NIC index. A MAC in ``used``
    (``{mac: owner}``, see :func:`macs_in_use`) or given twice is refused."""
    used = dict(used)
    result = []
    for index, nic in enumerate(nics):
        field = f"nics[{index}]"
        if nic["bridge"] is None and not bridge:
            raise names.ValidationError(f"{field}.bridge", None,
                                        f"node {node} has no default bridge: give the bridge (nics=br0), or declare "
                                        f"cluster:nodes:{node}:bridge or cluster:defaults:bridge")
        mac = nic["mac"] or generate_mac(f"{seed}/{index}", used)
        if mac in used:
            raise names.ValidationError(f"{field}.mac", mac, f"the MAC is taken by {used[mac]}; give another one "
                                                             "or leave mac out to get a generated one")
        used[mac] = f"this instance's {field}"
        result.append({**nic, "bridge": nic["bridge"] or bridge, "mac": mac})
    return result
