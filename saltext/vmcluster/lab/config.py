"""Configuration files of a lab: salt-master, salt-minions, libvirtd per node, pillar."""

import uuid

import yaml

MIGRATION_PORT_BASE = 49152
MIGRATION_PORTS_PER_NODE = 32


def master_config(lab_dir, publish_port, ret_port, states_dir):
    """The salt-master config of a lab rooted at ``lab_dir``."""
    return {
        "id": "lab-master",
        "user": "root",
        "interface": "127.0.0.1",
        "publish_port": publish_port,
        "ret_port": ret_port,
        "root_dir": str(lab_dir),
        "pki_dir": str(lab_dir / "pki" / "master"),
        "cachedir": str(lab_dir / "cache" / "master"),
        "sock_dir": str(lab_dir / "sock" / "master"),
        "pidfile": str(lab_dir / "master.pid"),
        "log_file": str(lab_dir / "log" / "master.log"),
        "key_logfile": str(lab_dir / "log" / "key.log"),
        "token_dir": str(lab_dir / "cache" / "tokens"),
        "auto_accept": True,
        "file_roots": {"base": [str(states_dir)]},
        "pillar_roots": {"base": [str(lab_dir / "pillar")]},
        "ext_pillar": [{"cluster": {}}],  # each node's assignments under vmcluster: (saltext.vmcluster)
        "enable_ssh_minions": False,
        "timeout": 10,
    }


def libvirt_uri(node_dir):
    """URI of a node's libvirtd, reachable from the host and from inside every other node."""
    return f"qemu:///system?socket={node_dir / 'libvirt' / 'run' / 'libvirt-sock'}"


def minion_config(lab_dir, node_dir, name, ret_port, storage):
    """The salt-minion config of one node; ``storage`` maps template -> path or VG.

    ``vmcluster:migration`` tells the other nodes how to reach this node's
    libvirtd and QEMU: the nodes share the host's network namespace, where
    libvirt refuses loopback as its own migration host, so data goes to
    ``tcp://127.0.0.1`` explicitly (see LAB.md). The shared directory is a local
    one that every node sees through one kernel, so it is coherent although
    libvirt does not take it for shared storage: ``unsafe_shared_storage``.
    """
    return {
        "id": name,
        "user": "root",
        "master": "127.0.0.1",
        "master_port": ret_port,
        "root_dir": str(node_dir),
        "pki_dir": str(node_dir / "pki"),
        "cachedir": str(node_dir / "cache"),
        "sock_dir": str(node_dir / "sock"),
        "pidfile": str(node_dir / "minion.pid"),
        "log_file": str(node_dir / "log" / "minion.log"),
        "acceptance_wait_time": 0.5,
        "random_reauth_delay": 0,
        "auth_safemode": False,
        "vmcluster": {"storage": storage, "migration": {
            "uri": libvirt_uri(node_dir), "address": "127.0.0.1", "unsafe_shared_storage": True}},
        # /etc is the host's in every node: each node keeps its DRBD resource files apart
        "drbd.config_dir": str(node_dir / "drbd.d"),
    }


def libvirtd_conf(node_dir):
    """libvirtd.conf: root-only unix socket, no auth, a distinct host UUID, a log file."""
    return {
        "unix_sock_group": "root",
        "unix_sock_rw_perms": "0770",
        "auth_unix_rw": "none",
        "auth_unix_ro": "none",
        "host_uuid": str(uuid.uuid4()),
        "log_outputs": f"3:file:{node_dir / 'log' / 'libvirtd.log'}",
    }


def qemu_conf(index):
    """qemu.conf for a node in namespaces: no cgroups, no security driver, own migration ports."""
    low = MIGRATION_PORT_BASE + index * MIGRATION_PORTS_PER_NODE
    return {
        "user": "root",
        "group": "root",
        "dynamic_ownership": 0,
        "remember_owner": 0,
        "security_driver": "none",
        "cgroup_controllers": [],
        "namespaces": [],
        "stdio_handler": "file",
        "migration_port_min": low,
        "migration_port_max": low + MIGRATION_PORTS_PER_NODE - 1,
    }


def _libvirt_value(value):
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list):
        return "[ " + ", ".join(_libvirt_value(v) for v in value) + " ]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_libvirt_conf(settings):
    """Render ``settings`` in libvirt's ``key = value`` config syntax."""
    lines = ["# written by vmcluster-lab"]
    lines += [f"{key} = {_libvirt_value(value)}" for key, value in settings.items()]
    return "\n".join(lines) + "\n"


def render_yaml(data):
    """YAML for Salt config and pillar files."""
    return yaml.safe_dump(data, default_flow_style=False, sort_keys=True)


def cluster_pillar(node_names, bridge):
    """The ``cluster:`` pillar declaring the lab's nodes, each with the lab's ``bridge`` for instance NICs;
    its policy admits the lab's tiny VMs."""
    return {"cluster": {
        "name": "lab",
        "nodes": {name: {"bridge": bridge} for name in node_names},
        "ipolicy": {"min": {"memory": "32M", "disk": "16M"}, "std": {"memory": "64M", "disk": "256M"}},
    }}


PILLAR_TOP = {"base": {"*": ["cluster"]}}
