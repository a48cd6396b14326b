"""Unit-tier fixtures."""

from libvirt_fixtures import conn, name  # noqa: F401  pylint: disable=unused-import
