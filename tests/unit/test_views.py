from saltext.vmcluster import views


def _resources(defined=("a",), storage=None, free=1000):
    return {
        "memory": {"total": 4096, "node": 512, "instances": 2584, "free": free},
        "storage": storage
        or {"file": {"location": "/srv/f", "total": 100, "free": 40}, "sharedfile": {"location": "/mnt/s", "total": 900, "free": 800}},
        "domains": {"defined": list(defined), "running": list(defined)},
    }


def test_match_names_wildcards_and_lists():
    names = ["node1", "node2", "node10", "web1"]
    assert views.match_names(names, "node?") == ["node1", "node2"]
    assert views.match_names(names, "node1*,web*") == ["node1", "node10", "web1"]
    assert views.match_names(names, ["web1"]) == ["web1"]
    assert views.match_names(names, "db*") == []


def test_node_row_counts_local_disk_only_once_per_location():
    storage = {
        "plain": {"location": "vg0", "total": 1000, "free": 600},
        "drbd": {"location": "vg0", "total": 1000, "free": 600},
        "sharedfile": {"location": "/mnt/s", "total": 5000, "free": 5000},
        "file": {"location": "/srv/f", "error": "No such file or directory: /srv/f"},
    }
    row = views.node_row("n1", _resources(storage=storage))
    assert (row["dtotal"], row["dfree"]) == (1000, 600)


def test_node_row_up_and_down():
    up = views.node_row("n1", _resources(defined=("a", "b")))
    assert up == {"node": "n1", "dtotal": 100, "dfree": 40, "mtotal": 4096, "mnode": 512, "mfree": 1000,
                  "pinst": 2, "sinst": 0, "state": "up"}
    down = views.node_row("n2", None)
    assert down["state"] == "down" and down["mfree"] is None and down["node"] == "n2"
    assert views.node_row("n3", "Minion did not return")["state"] == "down"


def test_cluster_summary_counts_shared_storage_once():
    replies = {"n1": _resources(), "n2": _resources(free=500), "n3": False}
    rows = [views.node_row(n, replies[n]) for n in sorted(replies)]
    summary = views.cluster_summary("lab", rows, replies)
    assert summary["nodes"] == {"total": 3, "up": 2, "down": ["n3"]}
    assert summary["memory"] == {"total": 8192, "node": 1024, "free": 1500}
    assert summary["disk"]["shared"] == {"/mnt/s": {"total": 900, "free": 800}}
    assert summary["disk"]["local_total"] == 200


def test_format_table_aligns_and_uses_units():
    rows = [views.node_row("node1", _resources()), views.node_row("node10", None)]
    lines = views.format_table(rows, views.NODE_COLUMNS).splitlines()
    assert lines[0].split() == ["Node", "Dtotal", "Dfree", "Mtotal", "Mnode", "Mfree", "Pinst", "Sinst", "State"]
    assert lines[1].split() == ["node1", "100M", "40M", "4.0G", "512M", "1000M", "1", "0", "up"]
    assert lines[2].split() == ["node10", "?", "?", "?", "?", "?", "?", "?", "down"]
    assert lines[0].index("State") == lines[1].index("up") == lines[2].index("down")


def test_human_size():
    assert views.human_size(512) == "512M"
    assert views.human_size(24105) == "23.5G"
    assert views.human_size(3 * 1024 * 1024) == "3.0T"
    assert views.human_size(None) == "?"
