"""Parse ``drbdsetup events2 [--now] [--statistics] [--timestamps]`` output.

drbd-utils 9 prints DRBD 9 names on both kernels: with the 8.4 module a
connection waiting for its peer is ``Connecting`` (8.4: WFConnection), a
connected one ``Connected`` with replication ``Established``; a resync shows as
replication ``SyncSource``/``SyncTarget``. Sizes and out-of-sync are in KiB.

:class:`Events2State` applies a snapshot (``exists`` lines) or a live stream
(``create``/``change``/``destroy``); :meth:`Events2State.resources` summarises
each resource as::

    {"name": "r0", "role": "Primary", "suspended": "no",
     "volumes": [{"volume": 0, "minor": 0, "disk": "UpToDate", "size_kib": 262100}],
     "peers": [{"node_id": 0, "name": "peer", "connection": "Connected",
                "role": "Secondary",
                "volumes": [{"volume": 0, "replication": "SyncSource",
                             "peer_disk": "Inconsistent", "out_of_sync_kib": 213972,
                             "done": 18.36}]}]}

``done`` is the percentage of the device in sync with that peer while a resync
runs (drbdsetup status' definition), else ``None``.
"""

import re

_TIMESTAMP_RE = re.compile(r"\d{4}-\d\d-\d\dT\S+\Z")
_INT_FIELDS = frozenset({"volume", "minor", "peer-node-id", "size", "out-of-sync"})
SYNCING = frozenset({"SyncSource", "SyncTarget", "PausedSyncS", "PausedSyncT"})


def parse_line(line):
    """Split one events2 line into ``(timestamp, action, object, fields)``, or ``None``.

    ``None`` for blank lines and the ``exists -`` end-of-snapshot marker.
    """
    words = line.split()
    if words and _TIMESTAMP_RE.match(words[0]):
        timestamp, words = words[0], words[1:]
    else:
        timestamp = None
    if len(words) < 2 or words[1] == "-":
        return None
    fields = {}
    for word in words[2:]:
        key, sep, value = word.partition(":")
        if sep:
            fields[key] = int(value) if key in _INT_FIELDS and value.isdigit() else value
    return timestamp, words[0], words[1], fields


def _key(kind, fields):
    """Identity of an object: resource; +peer; +volume; +peer and volume."""
    name = fields.get("name")
    if kind == "resource":
        return (name,)
    if kind == "connection":
        return (name, fields.get("peer-node-id"))
    if kind == "device":
        return (name, fields.get("volume"))
    if kind == "peer-device":
        return (name, fields.get("peer-node-id"), fields.get("volume"))
    return None  # path, helper: not part of the summary


class Events2State:
    """The state of all resources, built from events2 lines."""

    def __init__(self):
        self._objects = {kind: {} for kind in ("resource", "connection", "device", "peer-device")}
        self.last_timestamp = None

    def feed(self, line):
        """Apply one line; return the parsed ``(timestamp, action, object, fields)`` or ``None``."""
        event = parse_line(line)
        if event is None:
            return None
        timestamp, action, kind, fields = event
        key = _key(kind, fields)
        if key is None:
            return event
        table = self._objects[kind]
        if action == "destroy":
            table.pop(key, None)
            # a resource that goes takes its connections and devices along
            if kind == "resource":
                for other in self._objects.values():
                    for gone in [k for k in other if k[0] == key[0]]:
                        del other[gone]
        else:  # exists, create, change: later values win, missing ones stay
            table.setdefault(key, {}).update(fields)
        if timestamp is not None:
            self.last_timestamp = timestamp
        return event

    def feed_text(self, text):
        """Apply every line of ``text``; return ``self``."""
        for line in text.splitlines():
            self.feed(line)
        return self

    def resources(self):
        """Return ``{resource name: summary}`` (see the module docstring)."""
        sizes = {key: dev.get("size") for key, dev in self._objects["device"].items()}
        result = {}
        for (name,), res in sorted(self._objects["resource"].items()):
            result[name] = {
                "name": name,
                "role": res.get("role"),
                "suspended": res.get("suspended"),
                "volumes": [
                    {"volume": vol, "minor": dev.get("minor"), "disk": dev.get("disk"), "size_kib": dev.get("size")}
                    for (dname, vol), dev in sorted(self._objects["device"].items())
                    if dname == name
                ],
                "peers": [
                    {
                        "node_id": node_id,
                        "name": conn.get("conn-name"),
                        "connection": conn.get("connection"),
                        "role": conn.get("role"),
                        "volumes": [
                            _peer_volume(vol, pdev, sizes.get((name, vol)))
                            for (pname, pnode, vol), pdev in sorted(self._objects["peer-device"].items())
                            if (pname, pnode) == (name, node_id)
                        ],
                    }
                    for (cname, node_id), conn in sorted(self._objects["connection"].items())
                    if cname == name
                ],
            }
        return result


def _peer_volume(volume, pdev, size):
    out_of_sync = pdev.get("out-of-sync")
    replication = pdev.get("replication")
    done = None
    if replication in SYNCING:
        if "done" in pdev:  # printed by newer drbd-utils with DRBD 9
            done = float(pdev["done"])
        elif size and out_of_sync is not None:
            done = round(100 * (1 - out_of_sync / size), 2)
    return {
        "volume": volume,
        "replication": replication,
        "peer_disk": pdev.get("peer-disk"),
        "out_of_sync_kib": out_of_sync,
        "done": done,
    }


def parse_events2(text):
    """Parse one ``events2 --now`` snapshot (or a whole stream) into ``{name: summary}``."""
    return Events2State().feed_text(text).resources()


def sync_progress(resource):
    """Lowest ``done`` % over all resyncing peer volumes of a summary; ``None`` when none resyncs."""
    done = [vol["done"] for peer in resource["peers"] for vol in peer["volumes"] if vol["done"] is not None]
    return min(done) if done else None


def is_synced(resource):
    """True when every local disk is UpToDate and every peer is connected and UpToDate."""
    return (
        bool(resource["volumes"])
        and all(vol["disk"] == "UpToDate" for vol in resource["volumes"])
        and bool(resource["peers"])
        and all(
            peer["connection"] == "Connected"
            and peer["volumes"]
            and all(v["replication"] == "Established" and v["peer_disk"] == "UpToDate" for v in peer["volumes"])
            for peer in resource["peers"]
        )
    )
