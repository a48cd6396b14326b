"""DRBD administration without Salt: resource files, command lines, status parsing.

Serves the in-kernel DRBD 8.4 module driven by drbd-utils 9 (Debian) and DRBD 9.
"""

import re

# Letters, digits, '-', '_', '.'; starts with a letter or digit so that it can
# never be read as an option, a hidden file or a path component.
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")
# drbdadm reads these words as "every resource", never as one name.
_RESERVED = frozenset({"all"})


class DrbdValueError(ValueError):
    """A value that must not reach a DRBD file or command; the message names the field."""


def check_name(value, field="resource"):
    """Return ``value`` if it is a safe DRBD name, else raise :class:`DrbdValueError`."""
    if not isinstance(value, str) or not _NAME_RE.match(value) or value in _RESERVED:
        raise DrbdValueError(
            f"{field}: {value!r} is not a valid name (1-64 letters, digits, '-', '_', '.';"
            " starting with a letter or digit; not 'all')"
        )
    return value
