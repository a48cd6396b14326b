"""
Desired state of cluster instances (libvirt domains) on this node.

Uses the ``cluster_vm`` execution module. Example:

.. code-block:: yaml

    web1:
      cluster_vm.running:
        - spec:
            memory: 512M
            vcpus: 2
            disks: [/srv/vm/web1.qcow2]
            nics: [br0]

    old1:
      cluster_vm.absent:
        - timeout: 120
"""

import contextlib

from salt.exceptions import SaltException

__virtualname__ = "cluster_vm"

# Domain states in which the guest is not executing and ``start`` is the way forward.
OFF_STATES = ("shutoff", "crashed", "nostate")


def __virtual__():
    if "cluster_vm.list_domains" in __salt__:
        return __virtualname__
    return False, "the cluster_vm execution module is not available (see its load error)"


def _ret(name, result=True, comment="", changes=None):
    return {"name": name, "result": result, "comment": comment, "changes": changes or {}}


@contextlib.contextmanager
def _failures_into(ret):
    """An error of the execution module fails the state; changes made so far stay in ``ret``."""
    try:
        yield
    except SaltException as exc:
        ret.update(result=False, comment=str(exc))


def _planned(ret, comment, changes):
    """Fill ``ret`` for ``test=True``: what would change, nothing done."""
    ret.update(result=None, comment=comment, changes=changes)
    return ret


def running(name, spec=None):
    """
    Ensure domain ``name`` is running; define it from ``spec`` first when it is not.

    spec
        The arguments of ``cluster_vm.define`` (``memory``, ``vcpus``, ``disks``,
        ``nics`` …). Used only to define a missing domain: an existing definition
        is not changed here.
    """
    ret = _ret(name)
    state = __salt__["cluster_vm.list_domains"]().get(name)
    if state not in (None, *OFF_STATES):
        if state == "paused":
            ret.update(result=False, comment=f"{name} is paused; resume it or stop it first")
        else:
            ret["comment"] = f"{name} is already {state}"
        return ret
    if state is None and not spec:
        ret.update(result=False, comment=f"{name} is not defined here; give spec to define it")
        return ret
    started = {"old": state, "new": "running"}
    with _failures_into(ret):
        if state is None:
            spec = dict(spec)
            memory = spec.pop("memory", None)
            # Checks the spec (also with test=True) before anything changes.
            __salt__["cluster_vm.build_xml"](name, memory, **spec)
            if __opts__["test"]:
                changes = {"defined": {"old": False, "new": True}, "state": started}
                return _planned(ret, f"{name} would be defined and started", changes)
            __salt__["cluster_vm.define"](name, memory, **spec)
            ret["changes"]["defined"] = {"old": False, "new": True}
        elif __opts__["test"]:
            return _planned(ret, f"{name} would be started", {"state": started})
        __salt__["cluster_vm.start"](name)
        ret["changes"]["state"] = started
        ret["comment"] = f"{name} started"
    return ret


def _stop(ret, name, state, timeout):
    """Shut a running domain down; records the change in ``ret``."""
    stopped = __salt__["cluster_vm.shutdown"](name, timeout=timeout)
    ret["changes"]["state"] = {"old": state, "new": "shutoff"}
    if stopped["forced"]:
        ret["changes"]["forced"] = True
    return "powered off after ACPI shutdown timed out" if stopped["forced"] else "shut down"


def stopped(name, timeout=60):
    """
    Ensure domain ``name`` is not running: ACPI shutdown, power-off after ``timeout`` seconds.

    A domain that is not defined here counts as stopped.
    """
    ret = _ret(name)
    state = __salt__["cluster_vm.list_domains"]().get(name)
    if state is None or state in OFF_STATES:
        ret["comment"] = f"{name} is not defined here" if state is None else f"{name} is {state}"
        return ret
    if __opts__["test"]:
        changes = {"state": {"old": state, "new": "shutoff"}}
        return _planned(ret, f"{name} would be shut down", changes)
    with _failures_into(ret):
        ret["comment"] = f"{name} " + _stop(ret, name, state, timeout)
    return ret


def absent(name, timeout=60):
    """
    Ensure domain ``name`` is not defined here; a running one is shut down first (as in
    ``stopped``). Its disks are left alone (``cluster_disk`` manages them).
    """
    ret = _ret(name)
    state = __salt__["cluster_vm.list_domains"]().get(name)
    if state is None:
        ret["comment"] = f"{name} is not defined here"
        return ret
    if __opts__["test"]:
        changes = {"defined": {"old": True, "new": False}}
        if state not in OFF_STATES:
            changes["state"] = {"old": state, "new": "shutoff"}
        return _planned(ret, f"{name} would be removed", changes)
    with _failures_into(ret):
        done = [_stop(ret, name, state, timeout)] if state not in OFF_STATES else []
        __salt__["cluster_vm.undefine"](name)
        ret["changes"]["defined"] = {"old": True, "new": False}
        ret["comment"] = f"{name} " + " and ".join(done + ["undefined"])
    return ret
