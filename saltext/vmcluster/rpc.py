"""Calls from the master to execution modules on the nodes (Salt's LocalClient)."""

import threading

import salt.client

DEFAULT_TIMEOUT = 60
# After ``timeout``, Salt asks a node that has not returned whether it still runs the job and
# waits this long for the answer (Salt's default, 10 s, is what a dead node costs every call;
# a busy node still answers within a few seconds).
GATHER_JOB_TIMEOUT = 5


class NodeError(Exception):
    """A node did not answer, or its function failed; the message says which and why."""

    def __init__(self, node, fun, reason):
        self.node = node
        self.fun = fun
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
                               gather_job_timeout=GATHER_JOB_TIMEOUT)

    def call_one(self, node, fun, *args, rpc_timeout=DEFAULT_TIMEOUT, **kwargs):
        """The return of ``fun`` on ``node``; raise :class:`NodeError` if it is silent or the call fails."""
        reply = self.client.cmd(
            [node], fun, arg=list(args), kwarg=kwargs or None, tgt_type="list", timeout=rpc_timeout, full_return=True,
            gather_job_timeout=GATHER_JOB_TIMEOUT,
        ).get(node)
        if not isinstance(reply, dict):
            raise NodeError(node, fun, f"no answer within {rpc_timeout}s")
        if reply.get("retcode", 0) != 0:
            raise NodeError(node, fun, _error_text(reply.get("ret")))
        return reply.get("ret")


def _error_text(ret):
    """The last line of an error Salt returned (its messages end with the useful part)."""
    text = str(ret).strip()
    return text.splitlines()[-1] if text else "unknown error"
