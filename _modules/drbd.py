"""DRBD administration for vmcluster nodes (DRBD 8.4 module with drbd-utils 9, or DRBD 9).

Replaces the ``drbd`` execution module that Salt 3008 dropped. Resource files go
to ``drbd.config_dir`` (minion config, default ``/etc/drbd.d``) as
``<resource>.res``; every drbdadm call reads exactly that file (``-c``), so a
broken neighbour file cannot stop it.
"""

import logging
import os
import tempfile
import time

import salt.utils.files
import salt.utils.path
from salt.exceptions import CommandExecutionError, SaltInvocationError

try:
    from saltext.vmcluster.drbd import DrbdValueError, check_name
    from saltext.vmcluster.drbd import commands, render as _render, status as _status

    HAS_LIB = True
except ImportError:  # synced from file_roots without the package installed
    HAS_LIB = False

log = logging.getLogger(__name__)

__virtualname__ = "drbd"

DEFAULT_CONFIG_DIR = "/etc/drbd.d"


def __virtual__():
    if not HAS_LIB:
        return (False, "drbd: the saltext.vmcluster package is not installed (pip install saltext-vmcluster)")
    if not salt.utils.path.which("drbdadm"):
        return (False, "drbd: drbdadm not found (install drbd-utils)")
    return __virtualname__


def _config_path(name):
    try:
        check_name(name)
    except DrbdValueError as exc:
        raise SaltInvocationError(str(exc)) from None
    return os.path.join(__opts__.get("drbd.config_dir", DEFAULT_CONFIG_DIR), f"{name}.res")


def _run(argv):
    result = __salt__["cmd.run_all"](argv, python_shell=False)
    if result["retcode"] != 0:
        raise CommandExecutionError(
            f"{' '.join(argv)} failed ({result['retcode']}): {(result['stderr'] or result['stdout']).strip()}"
        )
    return result["stdout"]


def _drbdadm(builder, name, **kwargs):
    """Run ``builder(name, config=<resource file>, **kwargs)``; True on success."""
    _run(builder(name, config=_config_path(name), **kwargs))
    return True


def render(name, nodes, port, minor, secret, hmac_alg="sha256", allow_two_primaries=False, drbd9=False):
    """
    Return the text of a two-node resource file (writes nothing).

    ``nodes``: two mappings with ``name`` (``uname -n``), ``address``, ``disk``
    and optionally ``minor``. ``drbd9=True`` adds node-ids for the DRBD 9 module.

    CLI Example:

    .. code-block:: bash

        salt '*' drbd.render r0 '[{name: n1, address: 10.0.0.1, disk: /dev/vg0/r0}, {name: n2, address: 10.0.0.2, disk: /dev/vg0/r0}]' 7789 0 s3cret
    """
    try:
        return _render.render_resource(name, nodes, port, minor, secret, hmac_alg, allow_two_primaries, drbd9)
    except DrbdValueError as exc:
        raise SaltInvocationError(str(exc)) from None


def write_config(name, nodes, port, minor, secret, hmac_alg="sha256", allow_two_primaries=False, drbd9=False):
    """
    Write ``<drbd.config_dir>/<name>.res``; return True if its content changed.

    Arguments as for :func:`render`. The file is written atomically, mode 0600
    (it holds the shared secret).

    CLI Example:

    .. code-block:: bash

        salt '*' drbd.write_config r0 '[{name: n1, address: 10.0.0.1, disk: /dev/vg0/r0}, {name: n2, address: 10.0.0.2, disk: /dev/vg0/r0}]' 7789 0 s3cret
    """
    text = render(name, nodes, port, minor, secret, hmac_alg, allow_two_primaries, drbd9)
    path = _config_path(name)
    if read_config(name) == text:
        return False
    os.makedirs(os.path.dirname(path), exist_ok=True)
    # not *.res until complete, so drbd.conf's "include drbd.d/*.res" never sees half a file
    with tempfile.NamedTemporaryFile("w", dir=os.path.dirname(path), prefix=f".{name}.", delete=False) as handle:
        os.fchmod(handle.fileno(), 0o600)
        handle.write(text)
    os.replace(handle.name, path)
    return True


def read_config(name):
    """
    Return the text of the resource file, or None when there is none.

    CLI Example:

    .. code-block:: bash

        salt '*' drbd.read_config r0
    """
    try:
        with salt.utils.files.fopen(_config_path(name)) as handle:
            return handle.read()
    except FileNotFoundError:
        return None


def remove_config(name):
    """
    Delete the resource file; return True if there was one.

    CLI Example:

    .. code-block:: bash

        salt '*' drbd.remove_config r0
    """
    try:
        os.remove(_config_path(name))
    except FileNotFoundError:
        return False
    return True


def create_md(name, force=False):
    """
    Write fresh DRBD metadata on the backing disk.

    ``force=True`` overwrites existing metadata (the disk's DRBD state is lost).

    CLI Example:

    .. code-block:: bash

        salt '*' drbd.create_md r0
    """
    return _drbdadm(commands.create_md, name, force=force)


def up(name):
    """
    Attach the backing disk and connect to the peer.

    CLI Example:

    .. code-block:: bash

        salt '*' drbd.up r0
    """
    return _drbdadm(commands.up, name)


def down(name):
    """
    Disconnect, detach and remove the resource from the kernel.

    CLI Example:

    .. code-block:: bash

        salt '*' drbd.down r0
    """
    return _drbdadm(commands.down, name)


def primary(name, force=False):
    """
    Promote the resource to Primary.

    ``force=True`` is for the initial sync only: it declares this node's data
    good although no node is UpToDate yet. Never use it to recover: it can
    overwrite the newer data of a peer.

    CLI Example:

    .. code-block:: bash

        salt '*' drbd.primary r0
        salt '*' drbd.primary r0 force=True   # initial sync only
    """
    return _drbdadm(commands.primary, name, force_initial_sync=force is True)


def secondary(name):
    """
    Demote the resource to Secondary.

    CLI Example:

    .. code-block:: bash

        salt '*' drbd.secondary r0
    """
    return _drbdadm(commands.secondary, name)


def connect(name):
    """
    Connect the resource to its peer.

    CLI Example:

    .. code-block:: bash

        salt '*' drbd.connect r0
    """
    return _drbdadm(commands.connect, name)


def disconnect(name):
    """
    Drop the connection to the peer.

    CLI Example:

    .. code-block:: bash

        salt '*' drbd.disconnect r0
    """
    return _drbdadm(commands.disconnect, name)


def resize(name):
    """
    Grow the device after its backing LV has grown on both nodes.

    CLI Example:

    .. code-block:: bash

        salt '*' drbd.resize r0
    """
    return _drbdadm(commands.resize, name)


def adjust(name):
    """
    Make the running resource match its resource file.

    CLI Example:

    .. code-block:: bash

        salt '*' drbd.adjust r0
    """
    return _drbdadm(commands.adjust, name)


def allow_two_primaries(name, enabled):
    """
    Switch dual-primary (for live migration) on or off at runtime.

    The resource file keeps its setting; ``drbd.adjust`` goes back to it.

    CLI Example:

    .. code-block:: bash

        salt '*' drbd.allow_two_primaries r0 True
    """
    return _drbdadm(commands.allow_two_primaries, name, enabled=bool(enabled))


def status(name=None):
    """
    Return ``{resource: state}`` for every running resource (or only ``name``).

    A state holds role, volumes (disk state, size), and per peer the
    connection, peer role and per volume replication, peer disk, out-of-sync
    KiB and resync ``done`` %. A resource that is not up is absent.

    CLI Example:

    .. code-block:: bash

        salt '*' drbd.status
        salt '*' drbd.status r0
    """
    if name is not None:
        _config_path(name)  # validates the name
    resources = _status.parse_events2(_run(commands.events2()))
    return {key: value for key, value in resources.items() if name in (None, key)}


def wait_sync(name, timeout=3600, interval=2):
    """
    Wait until ``name`` is UpToDate on both nodes; log resync progress.

    Returns ``{"synced": bool, "done": % or None, "elapsed": seconds}``;
    ``synced`` is False when ``timeout`` seconds passed first.

    CLI Example:

    .. code-block:: bash

        salt '*' drbd.wait_sync r0 timeout=600
    """
    start = time.monotonic()
    while True:
        state = status(name).get(name)
        if state is None:
            raise CommandExecutionError(f"drbd: resource {name} is not up")
        done = _status.sync_progress(state)
        elapsed = round(time.monotonic() - start, 1)
        if _status.is_synced(state) or elapsed >= timeout:
            return {"synced": _status.is_synced(state), "done": done, "elapsed": elapsed}
        log.info("drbd: %s resync %s%% done after %ss", name, done, elapsed)
        time.sleep(interval)
