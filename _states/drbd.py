"""Desired state of DRBD resources on a vmcluster node.

.. code-block:: yaml

    r0:
      drbd.resource_present:
        - nodes:
          - {name: n1, address: 10.99.0.11, disk: /dev/vg0/r0}
          - {name: n2, address: 10.99.0.12, disk: /dev/vg0/r0}
        - port: 7789
        - minor: 0
        - secret: s3cret

Metadata (``drbd.create_md``) and roles are not managed here: creating
metadata is a one-off step of disk creation, and roles belong to the cluster's
operations.
"""

from salt.exceptions import CommandExecutionError, SaltInvocationError

__virtualname__ = "drbd"


def __virtual__():
    if "drbd.status" in __salt__:
        return __virtualname__
    return (False, "drbd: the drbd execution module is not available")


def _is_up(name):
    return name in __salt__["drbd.status"](name)


def _converge(name, plan, unchanged, changed):
    """Report ``plan`` [(change key, value, action)] under test=True, else run it in order.

    ``changes`` holds exactly the steps that ran, also when a later one fails.
    """
    ret = {"name": name, "result": True, "changes": {}, "comment": f"DRBD resource {name} {unchanged}"}
    try:
        steps = plan()
        if steps and __opts__["test"]:
            ret.update(
                result=None,
                changes={key: value for key, value, _ in steps},
                comment=f"DRBD resource {name} would be {changed}",
            )
        elif steps:
            for key, value, action in steps:
                action()
                ret["changes"][key] = value
            ret["comment"] = f"DRBD resource {name} {changed}"
    except (CommandExecutionError, SaltInvocationError) as exc:
        ret.update(result=False, comment=str(exc))
    return ret


def resource_present(
    name,
    nodes,
    port,
    minor,
    secret,
    hmac_alg="sha256",
    allow_two_primaries=False,
    drbd9=False,
    up=True,
):
    """
    Ensure the resource file matches and (``up=True``) the resource runs with it.

    A changed file is applied to a running resource with ``drbdadm adjust``; a
    resource that is not up is brought up (its metadata must exist).
    """
    args = (name, nodes, port, minor, secret, hmac_alg, allow_two_primaries, drbd9)

    def plan():
        file_differs = __salt__["drbd.read_config"](name) != __salt__["drbd.render"](*args)
        steps = []
        if file_differs:
            steps.append(("config", "written", lambda: __salt__["drbd.write_config"](*args)))
        if up and not _is_up(name):
            steps.append(("up", True, lambda: __salt__["drbd.up"](name)))
        elif up and file_differs:
            steps.append(("adjusted", True, lambda: __salt__["drbd.adjust"](name)))
        return steps

    return _converge(name, plan, "is as declared", "updated")


def resource_absent(name):
    """Ensure the resource is down and its resource file is gone."""

    def plan():
        steps = []
        if _is_up(name):
            steps.append(("down", True, lambda: __salt__["drbd.down"](name)))
        if __salt__["drbd.read_config"](name) is not None:
            steps.append(("config", "removed", lambda: __salt__["drbd.remove_config"](name)))
        return steps

    return _converge(name, plan, "is absent", "removed")
