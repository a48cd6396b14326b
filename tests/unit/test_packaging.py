"""The installed package ships every loader module and Salt finds them through the entry point."""

import configparser
import json
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from saltext.vmcluster import loader

REPO = Path(__file__).resolve().parents[2]


def _setup_cfg():
    parser = configparser.ConfigParser()
    parser.read(REPO / "setup.cfg")
    return parser


def test_entry_point_is_registered():
    eps = metadata.entry_points(group="salt.loader")
    assert any(ep.value == "saltext.vmcluster.loader:loader_dirs" for ep in eps)


def test_every_loader_kind_resolves_to_a_folder_with_our_modules():
    dirs = loader.loader_dirs()
    assert set(dirs) == set(loader.LOADER_KINDS)
    expected = {"modules": "cluster_node.py", "runners": "cluster.py", "grains": "cluster_node.py",
                "output": "cluster_table.py", "pillar": "cluster.py"}
    for kind, filename in expected.items():
        assert any((Path(d) / filename).is_file() for d in dirs[kind]), (kind, dirs[kind])


def test_setup_cfg_lists_every_python_package_and_loader_folder():
    cfg = _setup_cfg()
    packages = set(cfg["options"]["packages"].split())
    on_disk = {
        ".".join(p.parent.relative_to(REPO).parts)
        for p in (REPO / "saltext").rglob("__init__.py")
    }
    assert on_disk <= packages, on_disk - packages
    mapped = dict(
        line.split(" = ") for line in cfg["options"]["package_dir"].strip().splitlines()
    )
    kinds = {f"saltext.vmcluster.loaders.{kind}" for kind in loader.LOADER_KINDS}
    assert set(mapped) == kinds
    for folder in mapped.values():
        assert (REPO / folder).is_dir()


def test_test_files_have_unique_basenames():
    """pytest imports test files by basename: a unit and a lab test of one name break collection."""
    seen = {}
    for path in (REPO / "tests").rglob("test_*.py"):
        if (path.parent / "__init__.py").exists():
            continue  # inside a package the module name is qualified
        assert path.name not in seen, f"{path} and {seen[path.name]} share a basename"
        seen[path.name] = path


def test_loader_dirs_from_a_source_checkout():
    """Python started in the repo imports the checkout's package, which has no mapped loader packages."""
    out = subprocess.run(
        [sys.executable, "-c", "from saltext.vmcluster.loader import loader_dirs; import json; print(json.dumps(loader_dirs()))"],
        cwd=REPO, capture_output=True, text=True, check=True).stdout
    dirs = json.loads(out)
    assert set(dirs) == set(loader.LOADER_KINDS)
    assert any((Path(d) / "cluster.py").is_file() for d in dirs["runners"])
