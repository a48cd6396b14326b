"""What the cluster has decided: instances, node flags and the operations journal.

Records live in a Salt cache (``localfs`` by default, atomic writes; any Salt
cache driver works, e.g. for multi-master sites) under the banks
``vmcluster/instances``, ``vmcluster/nodes`` and ``vmcluster/jobs``. Locks are
``fcntl`` locks on files under the master's cachedir, one per instance or node,
always taken in sorted order so two operations cannot deadlock; a waiter that
times out learns which job holds the lock.
"""

import contextlib
import fcntl
import json
import os
import time
from pathlib import Path

INSTANCES = "vmcluster/instances"
NODES = "vmcluster/nodes"
JOBS = "vmcluster/jobs"
GRAINS = "grains"  # Salt's own minion data cache on the master
LOCK_POLL = 0.1
DEFAULT_LOCK_TIMEOUT = 60.0


class LockTimeout(Exception):
    """A lock stayed taken for longer than the caller would wait; the message names its holder."""


class Store:
    """Typed access to the cluster's records on a Salt-cache-like object (store/fetch/list/flush)."""

    def __init__(self, cache, lock_dir):
        self.cache = cache
        self.lock_dir = Path(lock_dir)

    @classmethod
    def from_opts(cls, opts):
        """The store of a salt-master, from its opts."""
        import salt.cache  # pylint: disable=import-outside-toplevel

        return cls(salt.cache.factory(opts), Path(opts["cachedir"]) / "vmcluster" / "locks")

    # -- records ---------------------------------------------------------------

    def _get(self, bank, key):
        return self.cache.fetch(bank, key) or None

    def _all(self, bank):
        return {key: self.cache.fetch(bank, key) for key in sorted(self.cache.list(bank))}

    def instance(self, name):
        """The instance record, or None."""
        return self._get(INSTANCES, name)

    def instances(self):
        """``{name: record}`` of every instance."""
        return self._all(INSTANCES)

    def put_instance(self, record):
        self.cache.store(INSTANCES, record["name"], record)

    def delete_instance(self, name):
        self.cache.flush(INSTANCES, name)

    def node_flags(self, name):
        """``{"offline": bool, "drained": bool}`` of a node (both False when never set)."""
        return {"offline": False, "drained": False, **(self._get(NODES, name) or {})}

    def put_node_flags(self, name, flags):
        self.cache.store(NODES, name, dict(flags))

    def node_grains(self, name):
        """The grains the master cached for minion ``name`` ({} if none yet)."""
        return self.cache.fetch(GRAINS, name) or {}

    def job(self, job_id):
        return self._get(JOBS, job_id)

    def jobs(self):
        return self._all(JOBS)

    def put_job(self, job):
        self.cache.store(JOBS, job["id"], job)

    def delete_job(self, job_id):
        self.cache.flush(JOBS, job_id)

    # -- locks -----------------------------------------------------------------

    @contextlib.contextmanager
    def locked(self, names, holder, timeout=DEFAULT_LOCK_TIMEOUT):
        """Hold the locks ``names`` (e.g. ``instance/web1``, ``node/node2``), taken in sorted order."""
        with contextlib.ExitStack() as stack:
            for name in sorted(set(names)):
                stack.enter_context(self._lock(name, holder, timeout))
            yield

    @contextlib.contextmanager
    def _lock(self, name, holder, timeout):
        self.lock_dir.mkdir(parents=True, exist_ok=True)
        path = self.lock_dir / (name.replace("/", "@") + ".lock")
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise LockTimeout(f"{name} is locked by {_holder(path)}; waited {timeout:g}s") from None
                    time.sleep(LOCK_POLL)
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps({**holder, "pid": os.getpid(), "since": time.time()}).encode(), 0)
            try:
                yield
            finally:
                os.ftruncate(fd, 0)
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


def _holder(path):
    try:
        info = json.loads(Path(path).read_text() or "{}")
    except (OSError, ValueError):
        info = {}
    if not info:
        return "another operation"
    since = time.strftime("%H:%M:%S", time.localtime(info.get("since", 0)))
    return f"job {info.get('job', '?')} ({info.get('operation', '?')}, pid {info.get('pid', '?')}, since {since})"
