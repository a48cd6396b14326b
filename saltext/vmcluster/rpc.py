"""Calls from the master to execution modules on the nodes (Salt's LocalClient)."""

import contextlib
import threading

import salt.client

DEFAULT_TIMEOUT = 60
# After ``timeout``, Salt asks a node that has not returned whether it still runs the job and
# waits this long for the answer (Salt's default, 10 s, is what a dead node costs every call;
# a busy node still answers within a few seconds).
GATHER_JOB_TIMEOUT = 5
NO_RETURN = "no_return"  # Salt's outputter of the reply it makes up for a node that did not answer
STEP_KEY = "vmcluster_step"  # Salt job metadata: the journal step that made the call
_step = threading.local()


@contextlib.contextmanager
def calls_of_step(tag):
    """Calls this thread makes inside the block carry ``tag`` in their Salt job metadata, so a node's
    running jobs tell which step started them (see :meth:`NodeRPC.calls_under_way`)."""
    outer = getattr(_step, "tag", None)
    _step.tag = tag
    try:
        yield
    finally:
        _step.tag = outer


def _metadata():
    tag = getattr(_step, "tag", None)
    return {"metadata": {STEP_KEY: tag}} if tag else {}


class NodeError(Exception):
    """A node did not answer, or its function failed; the message says which and why."""

    def __init__(self, node, fun, reason, silent=False):
        self.node = node
        self.fun = fun
        self.silent = silent  # the node did not answer (rather than failing)
        super().__init__(f"{node}: {fun} failed: {reason}")


class NodeRPC:
    """Run execution functions on named nodes."""

    def __init__(self, master_opts):
        self.opts = master_opts
        self._local = threading.local()

    @property
    def client(self):
        """This thread's LocalClient: one client's event subscription cannot serve calls from parallel steps."""
        client = getattr(self._local, "client", None)
        if client is None:
            client = self._local.client = salt.client.get_local_client(mopts=self.opts)
        return client

    def call(self, nodes, fun, args=(), kwargs=None, timeout=10):
        """``{node: return}`` for the nodes that answered within ``timeout`` seconds."""
        if not nodes:
            return {}
        return self.client.cmd(sorted(nodes), fun, arg=list(args), kwarg=kwargs, tgt_type="list", timeout=timeout,
                               gather_job_timeout=GATHER_JOB_TIMEOUT, **_metadata())

    def calls_under_way(self, nodes, tag, timeout=10):
        """``{node: [function, ...]}`` of the calls tagged ``tag`` (:func:`calls_of_step`) that ``nodes`` still run."""
        with calls_of_step(None):  # the question is no such call itself
            replies = self.call(nodes, "saltutil.running", timeout=timeout)
        found = {node: [job.get("fun") for job in jobs if (job.get("metadata") or {}).get(STEP_KEY) == tag]
                 for node, jobs in replies.items() if isinstance(jobs, list)}
        return {node: funs for node, funs in found.items() if funs}

    def call_one(self, node, fun, *args, rpc_timeout=DEFAULT_TIMEOUT, **kwargs):
        """The return of ``fun`` on ``node``; raise :class:`NodeError` if it is silent or the call fails."""
        reply = self.client.cmd(
            [node], fun, arg=list(args), kwarg=kwargs or None, tgt_type="list", timeout=rpc_timeout, full_return=True,
            gather_job_timeout=GATHER_JOB_TIMEOUT, **_metadata(),
        ).get(node)
        if not isinstance(reply, dict) or reply.get("out") == NO_RETURN:
            raise NodeError(node, fun, f"no answer within {rpc_timeout}s", silent=True)
        if reply.get("retcode", 0) != 0:
            raise NodeError(node, fun, _error_text(reply.get("ret")))
        return reply.get("ret")


def _error_text(ret):
    """The last line of an error Salt returned (its messages end with the useful part)."""
    text = str(ret).strip()
    return text.splitlines()[-1] if text else "unknown error"
