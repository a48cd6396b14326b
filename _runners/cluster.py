"""
The ``cluster`` runner: operator commands for a vmcluster, run on the salt-master.

The cluster is declared in pillar under ``cluster:`` (see ``pillar/cluster.sls``);
live figures come from each node's ``cluster_node.resources``.
"""

import logging

try:
    from saltext.vmcluster import config, views
    from saltext.vmcluster.names import ValidationError
    from saltext.vmcluster.rpc import NodeRPC

    IMPORT_ERROR = None
except ImportError as exc:
    IMPORT_ERROR = exc

log = logging.getLogger(__name__)

__virtualname__ = "cluster"
DEFAULT_TIMEOUT = 5


def __virtual__():
    if IMPORT_ERROR:
        return False, f"cluster runner: install saltext-vmcluster on the master ({IMPORT_ERROR})"
    return __virtualname__


class _Refused(Exception):
    """Bad input or configuration: reported to the operator, nothing changed."""


def _fail(message):
    """The operator's error: a message, a non-zero exit code of salt-run, nothing changed."""
    __context__["retcode"] = 1
    return {"error": str(message), "retcode": 1}


def _config():
    try:
        return config.load(__salt__["pillar.show_pillar"]())
    except ValidationError as exc:
        raise _Refused(f"invalid cluster pillar: {exc}") from exc


def _selected_nodes(cfg, patterns):
    chosen = views.match_names(cfg.nodes, patterns)
    if not chosen:
        raise _Refused(f"no node matches {patterns!r}; nodes: {', '.join(sorted(cfg.nodes))}")
    return chosen


def _live_rows(nodes, timeout):
    replies = NodeRPC(__opts__).call(nodes, "cluster_node.resources", timeout=timeout)
    return [views.node_row(name, replies.get(name)) for name in nodes], replies


def nodes(match="*", timeout=DEFAULT_TIMEOUT):
    """
    List the cluster's nodes with live figures, like ``gnt-node list``.

    Columns: Node, DTotal/DFree (node-local disk), MTotal/MNode/MFree (memory:
    total, used by the node OS, free for instances), Pinst/Sinst (primary and
    secondary instances), State (``down`` when the node did not answer within
    ``timeout`` seconds). ``match`` takes names, comma lists and wildcards.

    CLI Example:

    .. code-block:: bash

        salt-run cluster.nodes
        salt-run cluster.nodes 'node[12]'
        salt-run cluster.nodes --out=json
    """
    try:
        rows, _ = _live_rows(_selected_nodes(_config(), match), timeout)
    except _Refused as exc:
        return _fail(exc)
    return {"outputter": "cluster_table", "data": rows}


def info(timeout=DEFAULT_TIMEOUT):
    """
    Summarise the cluster: nodes up and down, memory and disk totals and free, instances.

    CLI Example:

    .. code-block:: bash

        salt-run cluster.info
    """
    try:
        cfg = _config()
    except _Refused as exc:
        return _fail(exc)
    rows, replies = _live_rows(sorted(cfg.nodes), timeout)
    return views.cluster_summary(cfg.name, rows, replies)
