"""vmcluster: a Ganeti-style virtualization cluster built on Salt."""

__version__ = "0.1.0"
