"""
Lifecycle of cluster instances (libvirt domains) on this node.

:depends: libvirt-python, the ``saltext.vmcluster`` package
:configuration: the libvirt URI is the minion config option ``cluster_vm.uri``
    (default ``qemu:///system``), for example::

        cluster_vm.uri: qemu:///system?socket=/srv/lab/node1/run/libvirt-sock

Cluster instances never use libvirt autostart: the cluster decides where an
instance runs, and a node that comes back must not start stale copies. Every
function here that touches a domain switches autostart off if it finds it on.
"""

import contextlib
import dataclasses
import logging
import os
import time
import xml.etree.ElementTree as ET

import salt.utils.args
from salt.exceptions import CommandExecutionError, SaltInvocationError

MISSING = None
try:
    import libvirt

    from saltext.vmcluster import disks, domxml, hypervisor, names
    from saltext.vmcluster.loader_helpers import valid as _valid
except ImportError as exc:
    MISSING = exc.name

log = logging.getLogger(__name__)

__virtualname__ = "cluster_vm"

# libvirt's virDomainState values, in order (VIR_DOMAIN_NOSTATE = 0 … PMSUSPENDED = 7).
STATE_NAMES = (
    "nostate", "running", "blocked", "paused", "shutdown", "shutoff", "crashed", "pmsuspended"
)
SHUTDOWN_POLL = 0.25


def __virtual__():
    if MISSING == "libvirt":
        return False, "cluster_vm needs libvirt-python (pip install libvirt-python)"
    if MISSING:
        return False, f"cluster_vm needs the saltext.vmcluster package ({MISSING} is missing)"
    return __virtualname__



@contextlib.contextmanager
def _connect(uri=None):
    """An open libvirt connection (this node's by default); errors become CommandExecutionError."""
    uri = uri or hypervisor.uri_from_opts(__opts__)
    try:
        with hypervisor.connection(uri) as conn:
            yield conn
    except libvirt.libvirtError as exc:
        raise CommandExecutionError(f"libvirt {uri}: {exc.get_error_message() or exc}") from exc


def _find(conn, name):
    """The domain called ``name``, or None when it is not defined."""
    try:
        return conn.lookupByName(name)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return None
        raise


@contextlib.contextmanager
def _domain(name):
    """``(connection, domain)`` for a defined domain, else a CommandExecutionError."""
    _valid(names.name, name)
    with _connect() as conn:
        dom = _find(conn, name)
        if dom is None:
            raise CommandExecutionError(f"domain {name!r} is not defined on {conn.getURI()}")
        yield conn, dom


def _state(dom):
    state = dom.state()[0]
    return STATE_NAMES[state] if 0 <= state < len(STATE_NAMES) else "unknown"


def _no_autostart(dom):
    if dom.autostart():
        log.warning("cluster_vm: switching off libvirt autostart of %s", dom.name())
        dom.setAutostart(0)


def _destroy(dom):
    """Hard power-off; a domain that stopped meanwhile is fine."""
    try:
        dom.destroy()
    except libvirt.libvirtError as exc:
        if exc.get_error_code() != libvirt.VIR_ERR_OPERATION_INVALID or dom.isActive():
            raise


def _spec(name, memory, spec):
    """An InstanceSpec from Salt arguments (``spec`` holds the optional fields)."""
    fields = salt.utils.args.clean_kwargs(**spec)
    return _valid(domxml.InstanceSpec.from_dict, dict(fields, name=name, memory=memory))


def build_xml(name, memory, **spec):
    """
    Return the domain XML that ``define`` would define; touches nothing.

    ``memory`` is a size (``512M``, ``2G``; a bare number is MiB). Optional spec keys:
    ``vcpus``, ``disks`` (paths, or mappings of path/bus/format/device/cache), ``nics``
    (bridges, or mappings of bridge/mac/model), ``serial`` (``pty`` or a log file path),
    ``vnc`` (True or a mapping of listen/port), ``boot``, ``type`` (kvm, qemu, xen),
    ``emulator``, ``machine``, ``arch``, ``uuid``, ``bootloader`` (Xen PV).

    CLI Example:

    .. code-block:: bash

        salt node1 cluster_vm.build_xml web1 512M vcpus=2 disks='[/srv/vm/web1.qcow2]'
    """
    return domxml.build(_spec(name, memory, spec))


def define(name, memory, start=False, **spec):
    """
    Define (or redefine) domain ``name``; takes the arguments of ``build_xml``.

    Redefining keeps the domain's UUID and changes its persistent definition only: a
    running domain picks the change up at its next start. Autostart stays off.
    ``start=True`` also starts it (in the same call) unless it runs already.
    Returns ``{"name", "uuid", "created", "started"}``.

    CLI Example:

    .. code-block:: bash

        salt node1 cluster_vm.define web1 512M vcpus=2 disks='[/srv/vm/web1.qcow2]' nics='[br0]'
        salt node1 cluster_vm.define web1 1G type=qemu serial=/var/log/vm/web1.log vnc=True start=True
    """
    instance = _spec(name, memory, spec)
    with _connect() as conn:
        existing = _find(conn, name)
        if existing is not None and instance.uuid is None:
            instance = dataclasses.replace(instance, uuid=existing.UUIDString())
        dom = conn.defineXML(domxml.build(instance))
        _no_autostart(dom)
        started = bool(start) and not dom.isActive()
        if started:
            dom.create()
        return {"name": name, "uuid": dom.UUIDString(), "created": existing is None, "started": started}


def start(name):
    """
    Start domain ``name``. Returns True if it was started, False if it already ran.

    CLI Example:

    .. code-block:: bash

        salt node1 cluster_vm.start web1
    """
    with _domain(name) as (_conn, dom):
        _no_autostart(dom)
        if dom.isActive():
            return False
        dom.create()
        return True


def shutdown(name, timeout=60):
    """
    Shut domain ``name`` down through ACPI; power it off if it still runs after ``timeout`` seconds.

    Returns ``{"stopped": was it running, "forced": did it need a power-off}``.

    CLI Example:

    .. code-block:: bash

        salt node1 cluster_vm.shutdown web1 timeout=120
    """
    timeout = _valid(names.positive_int, timeout, "timeout", minimum=0)
    with _domain(name) as (_conn, dom):
        if not dom.isActive():
            return {"stopped": False, "forced": False}
        return {"stopped": True, "forced": _stop(dom, timeout)}


def _stop(dom, timeout):
    """Stop a domain: ACPI, then power off after ``timeout`` seconds (0: at once). True if forced."""
    if not dom.isActive():
        return False
    if timeout:
        dom.shutdown()
        deadline = time.monotonic() + timeout
        while dom.isActive() and time.monotonic() < deadline:
            time.sleep(SHUTDOWN_POLL)
    forced = bool(dom.isActive())
    if forced:
        if timeout:
            log.warning("cluster_vm: %s ignored ACPI shutdown for %ss; power off", dom.name(), timeout)
        _destroy(dom)
    return forced


def destroy(name):
    """
    Power domain ``name`` off at once. Returns True if it ran, False if it was already off.

    CLI Example:

    .. code-block:: bash

        salt node1 cluster_vm.destroy web1
    """
    with _domain(name) as (_conn, dom):
        if not dom.isActive():
            return False
        _destroy(dom)
        return True


def reboot(name):
    """
    Reboot running domain ``name`` (ACPI). Returns True.

    CLI Example:

    .. code-block:: bash

        salt node1 cluster_vm.reboot web1
    """
    with _domain(name) as (_conn, dom):
        if not dom.isActive():
            raise CommandExecutionError(f"domain {name!r} is not running; use cluster_vm.start")
        dom.reboot(0)
        return True


def undefine(name):
    """
    Remove the definition of stopped domain ``name`` (its disks stay). Returns True.

    CLI Example:

    .. code-block:: bash

        salt node1 cluster_vm.undefine web1
    """
    with _domain(name) as (_conn, dom):
        if dom.isActive():
            raise CommandExecutionError(
                f"domain {name!r} is running; stop it first (cluster_vm.shutdown {name})"
            )
        _undefine(dom)
        return True


def _undefine(dom):
    dom.undefineFlags(
        libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
    )


def release(name, timeout=60):
    """
    Make sure domain ``name`` no longer runs here and is not defined here: shut it down
    through ACPI, powered off after ``timeout`` seconds (``0``: at once), then undefine
    it (its disks stay). A domain that is not defined is fine.

    Returns ``{"state": its state before, or None if it was not defined, "forced": bool}``.

    CLI Example:

    .. code-block:: bash

        salt node1 cluster_vm.release web1 timeout=0
    """
    timeout = _valid(names.positive_int, timeout, "timeout", minimum=0)
    _valid(names.name, name)
    with _connect() as conn:
        dom = _find(conn, name)
        if dom is None:
            return {"state": None, "forced": False}
        state = _state(dom)
        forced = _stop(dom, timeout)
        _undefine(dom)
        return {"state": state, "forced": forced}


def list_domains():
    """
    Every domain defined or running on this node, with its state (``running``, ``shutoff`` …).

    CLI Example:

    .. code-block:: bash

        salt node1 cluster_vm.list_domains
    """
    with _connect() as conn:
        return {dom.name(): _state(dom) for dom in conn.listAllDomains()}


def info(name):
    """
    The essential definition of domain ``name`` (as ``build_xml`` takes it) with its
    ``state``, ``autostart``, ``persistent`` and ``id``.

    CLI Example:

    .. code-block:: bash

        salt node1 cluster_vm.info web1
    """
    with _domain(name) as (_conn, dom):
        details = domxml.parse(dom.XMLDesc(0))
        details.update(
            state=_state(dom),
            autostart=bool(dom.autostart()),
            persistent=bool(dom.isPersistent()),
            id=dom.ID() if dom.isActive() else None,
        )
        return details


def console(name):
    """
    How to reach the consoles of domain ``name``:
    ``{"serial": {"type", "path"}, "vnc": {"host", "port"}, "state"}``.

    A pty path and an automatic VNC port exist only while the domain runs (else None).

    CLI Example:

    .. code-block:: bash

        salt node1 cluster_vm.console web1
    """
    with _domain(name) as (conn, dom):
        details = domxml.console_details(dom.XMLDesc(0))
        vnc = details["vnc"]
        if vnc:
            listen = vnc.pop("listen")
            vnc["host"] = conn.getHostname() if listen in (None, "0.0.0.0", "::") else listen
        details["state"] = _state(dom)
        return details


def _set_config(dom, setter, value, current, maximum_flag):
    """Set a value and its maximum in the persistent definition, in an order libvirt accepts."""
    config = libvirt.VIR_DOMAIN_AFFECT_CONFIG
    steps = [config | maximum_flag, config]
    if value < current:
        steps.reverse()
    for flags in steps:
        setter(value, flags)


def _resize(name, field, value, setter_name, maximum_flag, scale=1):
    with _domain(name) as (_conn, dom):
        current = domxml.parse(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))[field]
        _set_config(dom, getattr(dom, setter_name), value * scale, current * scale, maximum_flag)
        return {field: value, "applies": "at next start" if dom.isActive() else "now"}


def set_memory(name, memory):
    """
    Set the memory of domain ``name`` (a size: ``1G``, ``512M``; bare numbers are MiB).

    The definition changes; a running domain gets it at its next start (no balloon).

    CLI Example:

    .. code-block:: bash

        salt node1 cluster_vm.set_memory web1 1G
    """
    mib = _valid(names.size_mib, memory, "memory")
    maximum = libvirt.VIR_DOMAIN_MEM_MAXIMUM
    return _resize(name, "memory", mib, "setMemoryFlags", maximum, scale=1024)


def set_vcpus(name, vcpus):
    """
    Set the number of virtual CPUs of domain ``name``; a running domain gets it at its next start.

    CLI Example:

    .. code-block:: bash

        salt node1 cluster_vm.set_vcpus web1 4
    """
    count = _valid(names.positive_int, vcpus, "vcpus", domxml.MAX_VCPUS)
    return _resize(name, "vcpus", count, "setVcpusFlags", libvirt.VIR_DOMAIN_VCPU_MAXIMUM)


def disk_info(name):
    """
    The disks of domain ``name`` with their virtual size, so that a caller can create
    disks of exactly that size and format on a migration target.

    Returns a list of ``{"target", "path", "format", "device", "bus", "virtual_size"}``
    (bytes; the guest-visible capacity, not the allocation).

    CLI Example:

    .. code-block:: bash

        salt node1 cluster_vm.disk_info web1
    """
    with _domain(name) as (_conn, dom):
        disks = domxml.disk_targets(dom.XMLDesc(0))
        for disk in disks:
            disk.pop("cache")
            disk["virtual_size"] = dom.blockInfo(disk["target"])[0]
        return disks


def block_resize(name, disk, size):
    """
    Grow disk ``disk`` (target such as ``vda``, or its path) of running domain ``name`` to
    ``size`` (``20G``, or exact bytes ``21474836480B``) through libvirt: QEMU grows the image
    it holds open and the guest sees the new size. Never shrinks; a disk that already has
    ``size`` stays as it is. A stopped domain's disks grow with ``cluster_disk.grow``.

    Returns ``{"old": bytes, "new": bytes}``.

    CLI Example:

    .. code-block:: bash

        salt node1 cluster_vm.block_resize web1 vda 20G
    """
    amount = _valid(disks.size, size)
    with _domain(name) as (_conn, dom):
        if not dom.isActive():
            raise CommandExecutionError(
                f"domain {name!r} is not running; grow its disk with cluster_disk.grow"
            )
        old = dom.blockInfo(disk)[0]
        if amount < old:
            raise SaltInvocationError(
                f"size: {amount} bytes is smaller than disk {disk} ({old} bytes); vmcluster never shrinks disks"
            )
        if amount > old:
            dom.blockResize(disk, amount, libvirt.VIR_DOMAIN_BLOCK_RESIZE_BYTES)
        return {"old": old, "new": dom.blockInfo(disk)[0]}


def _hooks(hooks, field):
    """Normalise a hook spec to ``[(function, args, kwargs)]`` and check the functions exist."""
    if hooks is None:
        return []
    result = []
    for hook in hooks if isinstance(hooks, list) else [hooks]:
        hook = {"fun": hook} if isinstance(hook, str) else hook
        if not isinstance(hook, dict) or hook.get("fun") not in __salt__:
            raise SaltInvocationError(
                f"{field}: invalid hook {hook!r}: give an available Salt function as "
                "'mod.fun' or {fun: mod.fun, args: [...], kwargs: {...}}"
            )
        result.append((hook["fun"], hook.get("args", []), hook.get("kwargs", {})))
    return result


def _run_hooks(hooks, field):
    for fun, args, kwargs in hooks:
        try:
            result = __salt__[fun](*args, **kwargs)
        except Exception as exc:  # pylint: disable=broad-except
            raise CommandExecutionError(f"{field} hook {fun} failed: {exc}") from exc
        if result is False:
            raise CommandExecutionError(f"{field} hook {fun} returned False")


def _target_disks(mapping, disks):
    """``{target dev: path on the target node}`` from ``mapping`` (by target dev, or a list in
    the order of the domain's ``disks``), checked against them."""
    if mapping is None:
        return {}
    known = [disk["target"] for disk in disks]
    if isinstance(mapping, list) and len(mapping) == len(known):
        mapping = dict(zip(known, mapping))
    if not isinstance(mapping, dict):
        raise SaltInvocationError(
            f"target_disks: invalid value {mapping!r}: give a mapping of disk target to its path "
            "on the target node, e.g. {vda: /srv/vmc/instances/web1/disk0.qcow2}, or a list of "
            f"{len(known)} paths in the order of the domain's disks ({', '.join(known)})"
        )
    for target, path in mapping.items():
        if target not in known:
            raise SaltInvocationError(
                f"target_disks: the domain has no disk {target!r}; its disks: {', '.join(known)}"
            )
        _valid(names.path, path, f"target_disks:{target}")
    return mapping


def _target_images(dom, copied, paths):
    """The image files to create on the target: each copied file disk at its target path, same
    format, exactly the source's virtual size."""
    images = []
    for disk in copied:
        size = dom.blockInfo(disk["target"])[0]
        if disk["format"] not in disks.FORMATS or size % 1024:
            raise CommandExecutionError(
                f"create_target_disks: disk {disk['target']} ({disk['format']}, {size} bytes) cannot be "
                "created through libvirt (qcow2/raw images of whole KiB only); create it on the target with "
                "cluster_disk.create and migrate without create_target_disks"
            )
        images.append({"path": paths.get(disk["target"], disk["path"]), "format": disk["format"], "size": size})
    return images


def _remove_source_images(name, copied):
    """Delete the copied source image files (and the instance's folder once empty); block devices
    are left to ``cluster_disk``. Returns ``(removed, left)``."""
    removed, left = [], []
    for disk in copied:
        if os.path.isfile(disk["path"]):
            os.remove(disk["path"])
            removed.append(disk["path"])
        else:
            left.append(disk["path"])
    for folder in {os.path.dirname(path) for path in removed}:
        if os.path.basename(folder) == name:  # <storage>/<instance>/diskN: the instance's own folder
            with contextlib.suppress(OSError):  # not empty: someone else's files stay
                os.rmdir(folder)
    return removed, left


def _with_disk_paths(xml, paths):
    """Domain XML with the sources of the disks named in ``paths`` (by target dev) replaced."""
    root = ET.fromstring(xml)
    for disk in root.iterfind("devices/disk"):
        source = disk.find("source")
        path = paths.get(disk.find("target").get("dev"))
        if path and source is not None:
            source.set("dev" if "dev" in source.attrib else "file", path)
    return ET.tostring(root, encoding="unicode")


def migrate(
    name,
    target_uri,
    copy_storage=False,
    migrate_uri=None,
    bandwidth=None,
    pre_migrate=None,
    post_migrate=None,
    remove_source_disks=True,
    target_disks=None,
    create_target_disks=False,
    unsafe=False,
):
    """
    Live-migrate running domain ``name`` to the libvirt at ``target_uri``.

    The definition moves with it (flags LIVE | PERSIST_DEST | UNDEFINE_SOURCE).

    copy_storage
        Copy the disks over the migration stream (adds NON_SHARED_DISK), for disks that
        are not shared. The target disks must exist with exactly the same virtual size
        (see ``disk_info``), or be made by ``create_target_disks``. After success the
        source image files are deleted when ``remove_source_disks`` is true (with the
        instance's folder once it is empty); block devices (LVs) are left to
        ``cluster_disk`` and listed under ``left_disks``.
    create_target_disks
        With ``copy_storage``: create the missing target image files (same format, exactly
        the source's virtual size) through the target's libvirt before migrating, so no
        separate call to the target node is needed. Image files only; a block device
        (LV) must exist on the target (``cluster_disk.create``).
    migrate_uri
        Where QEMU sends the data (``tcp://10.0.0.2``) when it differs from the
        target's own address.
    bandwidth
        Limit in MiB/s.
    pre_migrate, post_migrate
        Salt functions run on this node before and after the migration, as
        ``mod.fun`` or ``{fun: mod.fun, args: [...], kwargs: {...}}`` or a list of
        those: the place for DRBD dual-primary (allow two primaries, then demote).
        A failing ``pre_migrate`` stops before anything moved.
    target_disks
        Paths of the disks on the target node where they differ (another storage
        directory or volume group, another DRBD minor): ``{target dev: path}``, e.g.
        ``{vda: /srv/vmc/instances/web1/disk0.qcow2}``, or a list of paths in the order
        of the domain's disks. Without it the target opens the source's paths.
    unsafe
        Migrate disks that neither are copied nor have ``cache=none`` although
        libvirt does not recognise their file system as shared (adds UNSAFE):
        only for storage the operator knows to be coherent on both nodes.

    Returns ``{"name", "target_uri", "copy_storage", "seconds", "created_disks",
    "removed_disks", "left_disks"}``.

    CLI Example:

    .. code-block:: bash

        salt node1 cluster_vm.migrate web1 qemu+tcp://node2/system copy_storage=True
        salt node1 cluster_vm.migrate web1 qemu+tcp://node2/system copy_storage=True \\
            target_disks='[/vm/web1/disk0.qcow2]' create_target_disks=True
    """
    _valid(names.uri, target_uri, "target_uri")
    params = {}
    if migrate_uri is not None:
        params[libvirt.VIR_MIGRATE_PARAM_URI] = _valid(names.uri, migrate_uri, "migrate_uri")
    if bandwidth is not None:
        mibps = _valid(names.positive_int, bandwidth, "bandwidth")
        params[libvirt.VIR_MIGRATE_PARAM_BANDWIDTH] = mibps
    before, after = _hooks(pre_migrate, "pre_migrate"), _hooks(post_migrate, "post_migrate")
    flags = (
        libvirt.VIR_MIGRATE_LIVE
        | libvirt.VIR_MIGRATE_PERSIST_DEST
        | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE
    )
    if copy_storage:
        flags |= libvirt.VIR_MIGRATE_NON_SHARED_DISK
    if unsafe:
        flags |= libvirt.VIR_MIGRATE_UNSAFE
    with _domain(name) as (_conn, dom):
        if not dom.isActive():
            raise CommandExecutionError(
                f"domain {name!r} is not running; live migration needs a running domain"
            )
        disks = [d for d in domxml.disk_targets(dom.XMLDesc(0)) if d["device"] == "disk"]
        paths = _target_disks(target_disks, disks)
        images = _target_images(dom, disks, paths) if copy_storage and create_target_disks else []
        if paths:
            # the running domain's XML and its persistent definition both name the disks
            migratable = libvirt.VIR_DOMAIN_XML_MIGRATABLE
            inactive = migratable | libvirt.VIR_DOMAIN_XML_INACTIVE
            for param, flags_xml in (
                (libvirt.VIR_MIGRATE_PARAM_DEST_XML, migratable),
                (libvirt.VIR_MIGRATE_PARAM_PERSIST_XML, inactive),
            ):
                params[param] = _with_disk_paths(dom.XMLDesc(flags_xml), paths)
        _run_hooks(before, "pre_migrate")
        began = time.monotonic()
        with _connect(target_uri) as dconn:
            with hypervisor.new_image_files(dconn, images, f"vmcluster-migrate-{name}") as created:
                _no_autostart(dom.migrate3(dconn, params, flags))
        seconds = round(time.monotonic() - began, 3)
    _run_hooks(after, "post_migrate")
    removed, left = [], []
    if copy_storage and remove_source_disks:
        removed, left = _remove_source_images(name, disks)
    return {
        "name": name,
        "target_uri": target_uri,
        "copy_storage": bool(copy_storage),
        "seconds": seconds,
        "created_disks": created,
        "removed_disks": removed,
        "left_disks": left,
    }


def remove_stale(domains):
    """
    Undefine the stopped domains among ``domains`` (names the caller says do not
    belong on this node, e.g. after a failover). Never starts anything; running
    domains are left alone and reported, for the caller to fence or stop.

    Returns ``{"removed": [...], "running": [...], "absent": [...]}``.

    CLI Example:

    .. code-block:: bash

        salt node1 cluster_vm.remove_stale '[web1, db2]'
    """
    if isinstance(domains, str):
        domains = [item.strip() for item in domains.split(",") if item.strip()]
    wanted = [_valid(names.name, item, "domains") for item in domains]
    report = {"removed": [], "running": [], "absent": []}
    with _connect() as conn:
        for name in wanted:
            dom = _find(conn, name)
            if dom is None:
                report["absent"].append(name)
            elif dom.isActive():
                log.warning("cluster_vm: stale domain %s is running; left alone", name)
                report["running"].append(name)
            else:
                _no_autostart(dom)
                _undefine(dom)
                report["removed"].append(name)
    return report
