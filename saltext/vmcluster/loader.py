"""The ``salt.loader`` entry point: where Salt finds vmcluster's loader modules."""

import importlib.util

# Salt loader kind -> the package that holds those modules (a top-level _<kind>/ folder).
LOADER_KINDS = ("modules", "states", "runners", "grains", "output")


def loader_dirs():
    """Return ``{kind: [directory]}`` for every kind of loader module we ship."""
    dirs = {}
    for kind in LOADER_KINDS:
        spec = importlib.util.find_spec(f"saltext.vmcluster.loaders.{kind}")
        if spec is not None and spec.submodule_search_locations:
            dirs[kind] = list(spec.submodule_search_locations)
    return dirs
