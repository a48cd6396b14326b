"""Operator views built from live node data: node rows like ``gnt-node list`` and cluster totals."""

import fnmatch

NODE_COLUMNS = ("node", "dtotal", "dfree", "mtotal", "mnode", "mfree", "pinst", "sinst", "state")
SIZE_COLUMNS = {"dtotal", "dfree", "mtotal", "mnode", "mfree", "memory", "disk"}
MIB = 1024 * 1024
SHARED_TEMPLATES = {"sharedfile"}


def match_names(available, patterns):
    """Names among ``available`` matching any shell-style pattern (``'web*'``), sorted."""
    if isinstance(patterns, str):
        patterns = patterns.split(",")
    return sorted(n for n in available if any(fnmatch.fnmatchcase(n, p) for p in patterns))


def local_disk(storage):
    """Total and free MiB of node-local storage; one VG serving plain and drbd counts once."""
    seen = {}
    for template, space in storage.items():
        if template not in SHARED_TEMPLATES and "error" not in space:
            seen[space["location"]] = space
    return sum(s["total"] for s in seen.values()), sum(s["free"] for s in seen.values())


def node_row(name, resources):
    """One ``gnt-node list`` row; ``resources`` is ``cluster_node.resources`` or None if the node is down."""
    if not isinstance(resources, dict):
        return dict.fromkeys(NODE_COLUMNS, None) | {"node": name, "state": "down"}
    dtotal, dfree = local_disk(resources["storage"])
    memory = resources["memory"]
    return {
        "node": name,
        "dtotal": dtotal,
        "dfree": dfree,
        "mtotal": memory["total"],
        "mnode": memory["node"],
        "mfree": memory["free"],
        "pinst": len(resources["domains"]["defined"]),
        "sinst": resources.get("drbd_secondaries", 0),
        "state": "up",
    }


def cluster_summary(name, rows, replies):
    """``cluster.info``: nodes up/down and cluster-wide totals from the node rows."""
    up = [r for r in rows if r["state"] == "up"]

    def total(column):
        return sum(r[column] for r in up)

    shared = {}
    for reply in replies.values():
        if isinstance(reply, dict):
            for template in SHARED_TEMPLATES & set(reply["storage"]):
                space = reply["storage"][template]
                if "error" not in space:
                    shared[space["location"]] = {"total": space["total"], "free": space["free"]}
    return {
        "cluster": name,
        "nodes": {"total": len(rows), "up": len(up), "down": sorted(r["node"] for r in rows if r["state"] != "up")},
        "memory": {"total": total("mtotal"), "node": total("mnode"), "free": total("mfree")},
        "disk": {"local_total": total("dtotal"), "local_free": total("dfree"), "shared": shared},
        "instances": {"primary": total("pinst"), "secondary": total("sinst")},
    }


def human_size(mib):
    """MiB as Ganeti prints sizes: 512M, 23.4G, 1.1T."""
    if mib is None:
        return "?"
    for unit, factor in (("T", 1024 * 1024), ("G", 1024)):
        if mib >= factor:
            return f"{mib / factor:.1f}{unit}"
    return f"{mib}M"


def format_table(rows, columns=None):
    """Rows (dicts) as aligned text columns with a header, sizes in human units."""
    if not rows:
        return "(no rows)"
    columns = columns or list(rows[0])

    def cell(row, column):
        value = row.get(column)
        if column in SIZE_COLUMNS:
            return human_size(value)
        return "?" if value is None else str(value)

    table = [[c.capitalize() for c in columns]] + [[cell(r, c) for c in columns] for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(columns))]
    numeric = [all(line[i][:1].isdigit() or line[i] == "?" for line in table[1:]) for i in range(len(columns))]
    return "\n".join(
        " ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(line, widths, numeric)).rstrip()
        for line in table
    )


def instance_row(record):
    """One ``gnt-instance list`` row of a store record."""
    return {
        "instance": record["name"],
        "template": record["template"],
        "primary": record["primary"],
        "secondary": record.get("secondary") or "-",
        "state": record["admin_state"],
        "memory": record["memory"],
        "vcpus": record["vcpus"],
        "disk": sum(d["size"] for d in record["disks"]) // MIB,
    }


def job_row(job, owner_alive=None):
    """One row of the journal; a running job whose owner is gone is ``interrupted``."""
    done = sum(1 for s in job["steps"] if s["state"] == "done")
    state = job["state"]
    if state == "running" and owner_alive is not None and not owner_alive(job):
        state = "interrupted"
    return {"job": job["id"], "operation": job["operation"], "target": job["target"], "state": state,
            "steps": f"{done}/{len(job['steps'])}"}
