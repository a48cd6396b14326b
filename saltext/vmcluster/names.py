"""Validation of the values users give vmcluster: names, sizes, MACs, bridges, paths.

Every validator returns the normalised value or raises :class:`ValidationError`,
whose message names the field and says how to fix it. Pure: no Salt, no libvirt.
"""

import ipaddress
import posixpath
import re
import uuid as _uuid
from decimal import Decimal

KIB = 1024
MIB = KIB * 1024
GIB = MIB * 1024
TIB = GIB * 1024
PIB = TIB * 1024

NAME_MAX = 63
BRIDGE_MAX = 15  # Linux IFNAMSIZ - 1

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_SIZE_RE = re.compile(r"(?P<num>\d+(?:\.\d+)?)\s*(?P<unit>[A-Za-z]*)")
_UNITS = {"": MIB, "k": KIB, "m": MIB, "g": GIB, "t": TIB, "p": PIB}
_MAC_RE = re.compile(r"[0-9a-f]{2}(?::[0-9a-f]{2}){5}")
_URI_RE = re.compile(r"[a-z][a-z0-9+.-]*://[^\s\"'`;|&$<>\\]*")

NAME_FIX = (
    f"use 1-{NAME_MAX} letters, digits, '-', '_' or '.', starting with a letter or "
    "digit, without '..'"
)
SIZE_FIX = (
    "give a positive number with a binary unit: 512M, 10G, 1.5T, 10GiB "
    "(no unit means MiB: 2048)"
)


class ValidationError(ValueError):
    """A value given for ``field`` is not acceptable; ``fix`` says what would be."""

    def __init__(self, field, value, fix):
        self.field = field
        self.value = value
        self.fix = fix
        super().__init__(f"{field}: invalid value {value!r}: {fix}")


def _text(value, field, fix):
    if not isinstance(value, str) or not value:
        raise ValidationError(field, value, fix)
    return value


def name(value, field="name"):
    """Return ``value`` if it is a valid instance, node or resource name."""
    _text(value, field, NAME_FIX)
    if len(value) > NAME_MAX or not _NAME_RE.fullmatch(value) or ".." in value:
        raise ValidationError(field, value, NAME_FIX)
    return value


def bridge(value, field="bridge"):
    """Return ``value`` if it is a valid Linux bridge (network interface) name."""
    fix = (
        f"use 1-{BRIDGE_MAX} letters, digits, '-', '_' or '.', starting with a letter "
        "or digit (a Linux interface name such as br0)"
    )
    _text(value, field, fix)
    if len(value) > BRIDGE_MAX or not _NAME_RE.fullmatch(value) or ".." in value:
        raise ValidationError(field, value, fix)
    return value


def size_bytes(value, field="size"):
    """Parse a size such as ``10G``, ``512M``, ``10GiB`` or ``2048`` (MiB) to bytes."""
    if isinstance(value, bool) or value is None:
        raise ValidationError(field, value, SIZE_FIX)
    match = _SIZE_RE.fullmatch(str(value).strip())
    unit = match and match.group("unit").lower()
    if unit and len(unit) > 1:
        # "GiB" and "GB" both mean the binary unit here, as in Ganeti.
        unit = unit[0] if unit[1:] in ("ib", "b") else None
    if not match or unit not in _UNITS:
        raise ValidationError(field, value, SIZE_FIX)
    amount = Decimal(match.group("num")) * _UNITS[unit]
    if amount <= 0 or amount != amount.to_integral_value():
        raise ValidationError(field, value, SIZE_FIX)
    return int(amount)


def size_mib(value, field="size"):
    """Parse a size like :func:`size_bytes` and return it in whole MiB."""
    amount = size_bytes(value, field)
    if amount % MIB:
        raise ValidationError(field, value, "give a whole number of MiB: " + SIZE_FIX)
    return amount // MIB


def positive_int(value, field, maximum=None, minimum=1):
    """Return ``value`` as an int if it is a whole number from ``minimum`` to ``maximum``."""
    fix = f"give a whole number of at least {minimum}" + (f" and at most {maximum}" if maximum else "")
    if isinstance(value, bool):
        raise ValidationError(field, value, fix)
    try:
        number = int(str(value).strip())
    except ValueError as exc:
        raise ValidationError(field, value, fix) from exc
    if number < minimum or (maximum is not None and number > maximum):
        raise ValidationError(field, value, fix)
    return number


def mac(value, field="mac"):
    """Return a unicast MAC address in lower-case colon form (``52:54:00:12:34:56``)."""
    fix = "give six hex octets separated by ':' or '-', unicast, e.g. 52:54:00:12:34:56"
    _text(value, field, fix)
    normal = value.strip().lower().replace("-", ":")
    if not _MAC_RE.fullmatch(normal) or int(normal[:2], 16) & 1:
        raise ValidationError(field, value, fix)
    return normal


def path(value, field="path"):
    """Return ``value`` if it is a normalised absolute path without control characters."""
    fix = "give an absolute, normalised path (no '..', '//', control characters or quotes)"
    _text(value, field, fix)
    if (
        not value.startswith("/")
        or posixpath.normpath(value) != value
        or any(ord(char) < 32 or char in "\"'`\x7f" for char in value)
    ):
        raise ValidationError(field, value, fix)
    return value


def choice(value, field, allowed):
    """Return ``value`` if it is one of ``allowed``."""
    if value not in allowed:
        raise ValidationError(field, value, "use one of: " + ", ".join(allowed))
    return value


def ip_address(value, field="listen"):
    """Return ``value`` as a normalised IPv4 or IPv6 address string."""
    try:
        return str(ipaddress.ip_address(str(value).strip()))
    except ValueError as exc:
        raise ValidationError(field, value, "give an IP address such as 127.0.0.1") from exc


def port(value, field="port"):
    """Return ``value`` as a TCP port number (1-65535)."""
    return positive_int(value, field, maximum=65535)


def uuid(value, field="uuid"):
    """Return ``value`` as a canonical lower-case UUID string."""
    try:
        return str(_uuid.UUID(str(value)))
    except ValueError as exc:
        fix = "give a UUID such as 3e3fce45-4f53-4fa7-bb32-11f34168b82b"
        raise ValidationError(field, value, fix) from exc


def uri(value, field="uri"):
    """Return ``value`` if it looks like a connection URI (``qemu+tcp://node2/system``)."""
    fix = "give a URI such as qemu+tcp://node2/system or tcp://10.0.0.2 (no spaces or quotes)"
    _text(value, field, fix)
    if not _URI_RE.fullmatch(value):
        raise ValidationError(field, value, fix)
    return value
