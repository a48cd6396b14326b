"""Calls from the master to execution modules on the nodes (Salt's LocalClient)."""

import salt.client


class NodeRPC:
    """Run execution functions on named nodes; silent nodes are simply absent from replies."""

    def __init__(self, master_opts):
        self.client = salt.client.get_local_client(mopts=master_opts)

    def call(self, nodes, fun, args=(), kwargs=None, timeout=10):
        """``{node: return}`` for the nodes that answered within ``timeout`` seconds."""
        if not nodes:
            return {}
        return self.client.cmd(sorted(nodes), fun, arg=list(args), kwarg=kwargs, tgt_type="list", timeout=timeout)
