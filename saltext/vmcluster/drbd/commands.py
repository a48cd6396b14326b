"""DRBD command lines as argument lists (run them without a shell).

Every ``drbdadm`` command takes ``config``: the file passed as ``-c`` (the
resource file itself works, so tests can point at a temporary directory);
``None`` leaves drbdadm's default ``/etc/drbd.conf``. The same lists work with
drbd-utils 9 on the DRBD 8.4 and the DRBD 9 module.
"""

from saltext.vmcluster.drbd import check_name

DRBDADM = "drbdadm"
DRBDSETUP = "drbdsetup"


def drbdadm(command, resource, *options, config=None):
    """Return ``drbdadm [-c config] command [options] resource`` after checking ``resource``."""
    argv = [DRBDADM]
    if config is not None:
        argv += ["-c", str(config)]
    return argv + [command, *options, check_name(resource)]


def create_md(resource, config=None, force=False):
    """Write fresh metadata; ``force`` overwrites metadata that already exists."""
    return drbdadm("create-md", resource, *(["--force"] if force else []), config=config)


def up(resource, config=None):
    """Attach the disk and start connecting to the peer."""
    return drbdadm("up", resource, config=config)


def down(resource, config=None):
    """Disconnect, detach and remove the resource from the kernel."""
    return drbdadm("down", resource, config=config)


def primary(resource, config=None, force_initial_sync=False):
    """Promote; ``force_initial_sync`` (``--force``) only to start the very first sync."""
    return drbdadm("primary", resource, *(["--force"] if force_initial_sync else []), config=config)


def secondary(resource, config=None):
    """Demote to Secondary."""
    return drbdadm("secondary", resource, config=config)


def connect(resource, config=None):
    """Connect to the peer."""
    return drbdadm("connect", resource, config=config)


def disconnect(resource, config=None):
    """Drop the connection to the peer (StandAlone)."""
    return drbdadm("disconnect", resource, config=config)


def resize(resource, config=None):
    """Grow the device to the size of its (already grown) backing disks."""
    return drbdadm("resize", resource, config=config)


def adjust(resource, config=None):
    """Make the running resource match its resource file."""
    return drbdadm("adjust", resource, config=config)


def allow_two_primaries(resource, enabled, config=None):
    """Switch dual-primary at runtime (``adjust`` returns to the file's setting)."""
    value = "yes" if enabled else "no"
    return drbdadm("net-options", resource, f"--allow-two-primaries={value}", config=config)


def events2(resource=None):
    """One snapshot of every (or one) resource's state with statistics."""
    return [DRBDSETUP, "events2", "--now", "--statistics", "all" if resource is None else check_name(resource)]
