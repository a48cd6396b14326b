"""
State ``cluster``: declared instances made real, on the master (orchestrate).

Each state compares the declaration with the cluster's store and runs the
``cluster`` runner's verbs (through ``saltutil.runner``, as orchestrate's
``salt.runner`` does) for what differs: ``cluster.add``, ``cluster.modify``,
``cluster.grow_disk``, ``cluster.start``/``cluster.stop``, ``cluster.remove``.
Each verb is a journaled job; ``test=True`` shows each verb's dry-run plan.
What no verb can change (template, number of disks, shrinking a disk) fails
the state with the way out, and nothing changes.

``states/cluster/converge.sls`` declares every instance of pillar
``cluster:instances``:

.. code-block:: bash

    salt-run state.orchestrate cluster.converge
    salt-run state.orchestrate cluster.converge test=True

.. code-block:: yaml

    web1:
      cluster.instance_present:
        - memory: 1G
        - disks: [10G]
        - template: sharedfile
        - admin_state: up
"""

try:
    from saltext.vmcluster import config, declared
    from saltext.vmcluster.names import ValidationError
    from saltext.vmcluster.store import Store

    IMPORT_ERROR = None
except ImportError as exc:
    IMPORT_ERROR = exc

__virtualname__ = "cluster"


def __virtual__():
    if IMPORT_ERROR:
        return False, f"cluster state: install saltext-vmcluster on the master ({IMPORT_ERROR})"
    return __virtualname__


class _RunnerError(Exception):
    """A runner verb refused or failed; the message is the runner's."""


def _runner(verb, *args, **kwargs):
    """``salt-run cluster.<verb>`` in this process; its result, or _RunnerError with the runner's message."""
    result = __salt__["saltutil.runner"](f"cluster.{verb}", arg=list(args), kwarg=kwargs)
    if not isinstance(result, dict) or "error" in result:
        raise _RunnerError(result.get("error") if isinstance(result, dict) else result)
    return result


def _record(name):
    return Store.from_opts(__opts__).instance(name)


def _apply(ret, name, todo):
    """Run (or, under test, plan) each action; changes keyed by verb, the first failure stops."""
    test = bool(__opts__.get("test"))
    for action in todo:
        try:
            result = _runner(action.verb, name, *action.args, test=test, **(action.kwargs or {}))
        except _RunnerError as exc:
            ret.update(result=False, comment=f"{action.detail}: salt-run cluster.{action.verb} failed: {exc}")
            return ret
        ret["changes"][action.verb] = {"why": action.detail, **result}
    done = "would run" if test else "ran"
    ret.update(result=None if test else True,
               comment=f"{name}: {done} " + ", ".join(f"cluster.{a.verb} ({a.detail})" for a in todo))
    return ret


def instance_present(name, memory, disks, vcpus=1, template=None, nodes=None, admin_state="up", tags=None):
    """
    Make sure instance ``name`` exists with this spec and admin state.

    A missing instance is added (``nodes``: where, else the planner chooses;
    ``template``: else ``cluster:defaults:template``; ``tags`` at creation).
    An existing one gets ``cluster.modify`` for memory/vCPUs, ``cluster.grow_disk``
    for larger disks and ``cluster.start``/``cluster.stop`` for ``admin_state``
    (``up``/``down``); where it runs is left to the cluster.

    .. code-block:: yaml

        db1:
          cluster.instance_present:
            - memory: 4G
            - vcpus: 2
            - disks: [20G, 100G]
            - template: drbd
            - nodes: node1:node2
    """
    ret = {"name": name, "result": True, "changes": {}, "comment": ""}
    given = {"memory": memory, "disks": disks, "vcpus": vcpus, "template": template, "nodes": nodes,
             "admin_state": admin_state, "tags": tags}
    try:
        decl = declared.instance(name, {key: value for key, value in given.items() if value is not None},
                                 default_template=None)
    except ValidationError as exc:
        return {**ret, "result": False, "comment": f"invalid declaration, nothing changed: {exc}"}
    todo = declared.actions(decl, _record(name))
    manual = [action for action in todo if action.verb is None]
    if manual:
        return {**ret, "result": False, "comment": "; ".join(a.detail for a in manual)
                + f". Nothing changed: {manual[0].command(name)}"}
    if not todo:
        return {**ret, "comment": f"{name} is as declared"}
    return _apply(ret, name, todo)


def instance_absent(name):
    """
    Make sure instance ``name`` is not in the cluster: ``cluster.remove`` (its
    domain and disks on every node) if it is.

    .. code-block:: yaml

        old1:
          cluster.instance_absent
    """
    ret = {"name": name, "result": True, "changes": {}, "comment": f"{name} is not in the cluster"}
    if _record(name) is None:
        return ret
    return _apply(ret, name, [declared.Action("remove", "not wanted")])


def pillar_valid(name):
    """
    Check the ``cluster:`` pillar (nodes, policy, declared instances) as the
    runner reads it; fail naming the key path and the fix. ``converge.sls``
    makes every instance state require it, so invalid pillar changes nothing.

    .. code-block:: yaml

        cluster-pillar:
          cluster.pillar_valid
    """
    declaration = __salt__["pillar.get"]("cluster", None, unmask=True)
    try:
        cfg = config.load({} if declaration is None else {"cluster": declaration})
    except ValidationError as exc:
        return {"name": name, "result": False, "changes": {}, "comment": f"invalid cluster pillar: {exc}"}
    return {"name": name, "result": True, "changes": {},
            "comment": f"cluster pillar is valid: {len(cfg.nodes)} node(s), {len(cfg.instances)} declared instance(s)"}
