"""
ext_pillar ``cluster``: each node's own assignments from the cluster's store, under ``vmcluster:``.

Enable it in the master config:

.. code-block:: yaml

    ext_pillar:
      - cluster: {}

A minion listed under pillar ``cluster:nodes`` gets ``vmcluster:instances``:
the instances it is primary or secondary of, with role, spec, disks (DRBD
minor, port, peers and secret) and admin state. Any other minion, or every
minion while the ``cluster:`` pillar is invalid, gets nothing. Nodes see
changes after a pillar refresh (``salt '*' saltutil.refresh_pillar``).
"""

import logging

try:
    from saltext.vmcluster import config
    from saltext.vmcluster.assignments import node_assignments
    from saltext.vmcluster.names import ValidationError
    from saltext.vmcluster.store import Store

    IMPORT_ERROR = None
except ImportError as exc:
    IMPORT_ERROR = exc

log = logging.getLogger(__name__)

__virtualname__ = "cluster"


def __virtual__():
    if IMPORT_ERROR:
        return False, f"cluster ext_pillar: install saltext-vmcluster on the master ({IMPORT_ERROR})"
    return __virtualname__


def ext_pillar(minion_id, pillar, *args, **kwargs):  # pylint: disable=unused-argument
    """``{"vmcluster": {"instances": ...}}`` for a node of the cluster, else ``{}``."""
    if "cluster" not in pillar:
        return {}
    try:
        cfg = config.load(pillar)
    except ValidationError as exc:
        log.warning("cluster ext_pillar: no assignments for %s: invalid cluster pillar: %s", minion_id, exc)
        return {}
    if minion_id not in cfg.nodes:
        return {}
    return {"vmcluster": node_assignments(minion_id, Store.from_opts(__opts__).instances())}
