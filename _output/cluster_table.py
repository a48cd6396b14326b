"""Outputter ``cluster_table``: rows as aligned columns, like ``gnt-node list``.

Used by ``salt-run cluster.nodes``; ``--out=json`` or ``--out=yaml`` give the raw rows.
"""

try:
    from saltext.vmcluster import views

    IMPORT_ERROR = None
except ImportError as exc:
    IMPORT_ERROR = exc


def __virtual__():
    if IMPORT_ERROR:
        return False, f"cluster_table outputter: install saltext-vmcluster on the master ({IMPORT_ERROR})"
    return True


def output(data, **kwargs):  # pylint: disable=unused-argument
    """Render a list of row dicts as a table (anything else as plain text).

    A runner return that carries a ``retcode`` next to ``outputter`` and ``data`` (Salt then
    passes the whole dict) is rendered as its ``data``.
    """
    if isinstance(data, dict) and {"outputter", "data"} <= set(data):
        data = data["data"]
    if isinstance(data, list) and all(isinstance(r, dict) for r in data):
        return views.format_table(data)
    return str(data)
