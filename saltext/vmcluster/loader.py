"""The ``salt.loader`` entry point: where Salt finds vmcluster's loader modules."""

import importlib.util
from pathlib import Path

# Salt loader kind -> the package that holds those modules (a top-level _<kind>/ folder).
LOADER_KINDS = ("modules", "states", "runners", "grains", "output", "pillar")
# Where the _<kind>/ folders are when this package is imported from a source checkout.
CHECKOUT = Path(__file__).resolve().parents[2]


def _kind_dirs(kind):
    try:
        spec = importlib.util.find_spec(f"saltext.vmcluster.loaders.{kind}")
    except ModuleNotFoundError:
        spec = None
    if spec is not None and spec.submodule_search_locations:
        return list(spec.submodule_search_locations)
    # Imported from a checkout (e.g. Python started in the repo): the package_dir mapping of
    # setup.cfg only exists in an installed copy; the folders themselves are beside us.
    folder = CHECKOUT / f"_{kind}"
    return [str(folder)] if folder.is_dir() else []


def loader_dirs():
    """Return ``{kind: [directory]}`` for every kind of loader module we ship."""
    return {kind: dirs for kind in LOADER_KINDS if (dirs := _kind_dirs(kind))}
