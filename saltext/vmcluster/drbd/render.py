"""Render a two-node DRBD resource file.

One syntax serves both kernels: drbd-utils 9 hands a resource to ``drbdadm-84``
when the loaded module is 8.4, and that parser rejects ``node-id``. With the
DRBD 9 module pass ``drbd9=True``: every ``on`` section then gets an explicit
``node-id`` (a node's ``node_id``, else its position: identical on all nodes;
a node keeps its id for the life of the resource). Two nodes
need no ``connection-mesh``; DRBD 9 derives the single connection from the two
``on`` sections. DRBD 9 also takes a third node (a ``connection-mesh`` of all
three): the transient state of a secondary being replaced while the old one
still mirrors.
"""

import ipaddress
import re

from saltext.vmcluster.drbd import DrbdValueError, check_name

# HMACs for the peer authentication (cram-hmac-alg): kernel crypto names that
# both the 8.4 and the 9 module accept; sha256 is in every supported kernel.
HMAC_ALGORITHMS = ("sha1", "sha256", "sha512")
DEFAULT_HMAC = "sha256"
# DRBD keeps at most 64 bytes of shared secret; quotes and backslashes would
# end the quoted string in the resource file.
_SECRET_RE = re.compile(r"[A-Za-z0-9!#$%&()*+,./:;<=>?@\[\]^_{|}~-]{1,64}\Z")
_DISK_RE = re.compile(r"/[A-Za-z0-9_.+/-]+\Z")
MAX_MINOR = (1 << 20) - 1


def _check_int(value, field, low, high):
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise DrbdValueError(f"{field}: {value!r} is not an integer in {low}..{high}")
    return value


def _address(value, port, field):
    try:
        ip = ipaddress.ip_address(value)
    except ValueError:
        raise DrbdValueError(f"{field}: {value!r} is not an IP address") from None
    if ip.version == 6:
        return f"ipv6 [{ip}]:{port}"
    return f"ipv4 {ip}:{port}"


def _disk(value, field):
    if not isinstance(value, str) or not _DISK_RE.match(value) or "/../" in value + "/":
        raise DrbdValueError(f"{field}: {value!r} is not an absolute block device path")
    return value


def _on_section(index, node, port, minor, drbd9):
    where = f"nodes[{index}]"
    if not isinstance(node, dict):
        raise DrbdValueError(f"{where}: expected a mapping with name, address and disk")
    missing = sorted({"name", "address", "disk"} - set(node))
    if missing:
        raise DrbdValueError(f"{where}: missing {', '.join(missing)}")
    lines = [f'    on "{check_name(node["name"], where + ".name")}" {{']
    if drbd9:
        lines.append(f"        node-id {_check_int(node.get('node_id', index), where + '.node_id', 0, 31)};")
    node_minor = _check_int(node.get("minor", minor), where + ".minor", 0, MAX_MINOR)
    lines += [
        f"        device minor {node_minor};",
        f'        disk "{_disk(node["disk"], where + ".disk")}";',
        "        meta-disk internal;",
        f"        address {_address(node['address'], port, where + '.address')};",
        "    }",
    ]
    return lines


def render_resource(
    name,
    nodes,
    port,
    minor,
    secret,
    hmac_alg=DEFAULT_HMAC,
    allow_two_primaries=False,
    drbd9=False,
):
    """Return the text of a protocol C resource file for two ``nodes`` (three with ``drbd9``).

    ``nodes`` are mappings with ``name`` (``uname -n`` of the node), ``address``
    (its replication IP), ``disk`` (the backing LV) and optionally ``minor``
    (default: ``minor``) and ``node_id`` (DRBD 9; default: its position).
    Raises :class:`DrbdValueError` naming the bad field.
    """
    check_name(name)
    counts = (2, 3) if drbd9 else (2,)
    if not isinstance(nodes, (list, tuple)) or len(nodes) not in counts:
        raise DrbdValueError(f"nodes: expected two nodes (three with drbd9), got {nodes!r}")
    _check_int(port, "port", 1, 65535)
    if hmac_alg not in HMAC_ALGORITHMS:
        raise DrbdValueError(f"hmac_alg: {hmac_alg!r} is not one of {', '.join(HMAC_ALGORITHMS)}")
    if not isinstance(secret, str) or not _SECRET_RE.match(secret):
        raise DrbdValueError("secret: expected 1-64 printable characters without quotes, backslashes or spaces")
    sections = [line for index, node in enumerate(nodes) for line in _on_section(index, node, port, minor, drbd9)]
    node_names = [node["name"] for node in nodes]
    if len(set(node_names)) != len(node_names):
        raise DrbdValueError(f"nodes: two nodes share a name: {node_names!r}")
    if len(nodes) == 3:
        hosts = " ".join(f'"{n}"' for n in node_names)
        sections.append(f"    connection-mesh {{ hosts {hosts}; }}")
    header = [
        "# Managed by vmcluster (Salt); local changes are overwritten.",
        f'resource "{name}" {{',
        "    net {",
        "        protocol C;",
        f'        cram-hmac-alg "{hmac_alg}";',
        f'        shared-secret "{secret}";',
        f"        allow-two-primaries {'yes' if allow_two_primaries else 'no'};",
        "    }",
    ]
    return "\n".join([*header, *sections, "}"]) + "\n"
