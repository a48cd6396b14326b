"""Desired state of instance disks on a vmcluster node.

.. code-block:: yaml

    web1-disk0:
      cluster_disk.present:
        - instance: web1
        - index: 0
        - size: 10G
        - template: file

Disks grow to the declared size but never shrink: a larger disk is left as it
is and the comment says so.
"""

from salt.exceptions import CommandExecutionError, SaltInvocationError

__virtualname__ = "cluster_disk"


def __virtual__():
    if "cluster_disk.create" in __salt__:
        return __virtualname__
    return (False, "cluster_disk: the cluster_disk execution module is not available")


def _ret(name):
    return {"name": name, "result": True, "changes": {}, "comment": ""}


def present(name, instance, index, size, template, fmt=None, **drbd):
    """
    Ensure disk ``index`` of ``instance`` exists with at least ``size``.

    Arguments as for ``cluster_disk.create`` (``drbd`` disks take ``nodes``,
    ``port``, ``minor``, ``secret`` …, used only on creation). A smaller disk
    is grown; a larger one is never shrunk; an existing file in another
    format than ``fmt`` is a failure (it is not converted).
    """
    ret = _ret(name)
    what = f"disk {index} of {instance} ({template})"
    try:
        wanted = __salt__["cluster_disk.size_bytes"](size)
        if not __salt__["cluster_disk.exists"](instance, index, template):
            if __opts__["test"]:
                path = __salt__["cluster_disk.path"](instance, index, template, fmt)
                ret.update(
                    result=None, changes={"created": {"path": path, "size": wanted}}, comment=f"{what} would be created"
                )
                return ret
            disk = __salt__["cluster_disk.create"](instance, index, size, template, fmt=fmt, **drbd)
            ret.update(changes={"created": {"path": disk["path"], "size": disk["size"]}}, comment=f"{what} created")
            return ret
        disk = __salt__["cluster_disk.info"](instance, index, template)
        if fmt and disk["format"] != fmt:
            ret.update(result=False, comment=f"{what} is {disk['format']}, declared {fmt}; it is not converted")
        elif disk["size"] >= wanted:
            larger = f", larger than the declared {wanted}; disks are never shrunk" if disk["size"] > wanted else ""
            ret["comment"] = f"{what} has {disk['size']} bytes{larger}"
        elif __opts__["test"]:
            ret.update(
                result=None,
                changes={"size": {"old": disk["size"], "new": wanted}},
                comment=f"{what} would grow",
            )
        else:
            ret.update(changes={"size": __salt__["cluster_disk.grow"](instance, index, template, size)})
            ret["comment"] = f"{what} grown"
    except (CommandExecutionError, SaltInvocationError) as exc:
        ret.update(result=False, comment=str(exc))
    return ret


def absent(name, instance, index, template):
    """Ensure disk ``index`` of ``instance`` does not exist (``drbd``: resource down and removed too)."""
    ret = _ret(name)
    what = f"disk {index} of {instance} ({template})"
    try:
        if not __salt__["cluster_disk.exists"](instance, index, template):
            ret["comment"] = f"{what} is absent"
        else:
            ret["changes"] = {"removed": __salt__["cluster_disk.path"](instance, index, template)}
            if __opts__["test"]:
                ret.update(result=None, comment=f"{what} would be removed")
            else:
                __salt__["cluster_disk.remove"](instance, index, template)
                ret["comment"] = f"{what} removed"
    except (CommandExecutionError, SaltInvocationError) as exc:
        ret.update(result=False, comment=str(exc))
    return ret
