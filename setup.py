"""RoboStack is both a pip package and a ROS 2 ament_python package; this file serves both builds.

Metadata, dependencies and console scripts are in pyproject.toml; this file adds the package layout and
the ROS 2 data files. colcon (colcon-python-setup-py) reads the setup() arguments by repr and
ast.literal_eval, so every value given here must be a plain literal (str, list, dict, tuple).
"""
import os
from glob import glob

from setuptools import setup

PACKAGE = "robostack"
# The design card fixes top-level folders (sim/, policies/, real/); they install namespaced under robostack.
SUBPACKAGE_DIRS = {"sim": "sim", "policies": "policies", "real": "real"}

# colcon --symlink-install runs `setup.py develop` in build/robostack, where it links setup.py, setup.cfg,
# robostack/ and the data files, but not pyproject.toml: without it setuptools would not see the name,
# version, dependencies and console scripts. Link it too, only there (where setup.py is such a link).
if os.path.islink("setup.py") and not os.path.lexists("pyproject.toml"):
    _source = os.path.dirname(os.path.realpath("setup.py"))
    if os.path.isfile(os.path.join(_source, "pyproject.toml")):
        os.symlink(os.path.join(_source, "pyproject.toml"), "pyproject.toml")


def _find(root: str, prefix: str) -> dict[str, str]:
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        if "__init__.py" in filenames:
            rel = os.path.relpath(dirpath, root)
            name = prefix if rel == "." else prefix + "." + rel.replace(os.sep, ".")
            found[name] = dirpath
    return found


def _tree(src: str, dest: str) -> list[tuple[str, list[str]]]:
    """data_files entries for every file under ``src`` (any depth), at the same relative place under ``dest``:
    a new configs/ subfolder is installed without editing this file."""
    entries = []
    for dirpath, dirnames, filenames in os.walk(src):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__" and not d.startswith("."))
        files = sorted(os.path.join(dirpath, f) for f in filenames if not f.startswith("."))
        if files:
            rel = os.path.relpath(dirpath, src)
            entries.append((dest if rel == "." else f"{dest}/{rel.replace(os.sep, '/')}", files))
    return entries


# robostack/sim, /policies and /real are symlinks to the top-level folders (for tools that walk the package, such
# as import-linter); _find does not follow them, so the mapping below alone puts those folders in the package.
# robostack/ itself is found by setuptools' default (package name = folder); it has no package_dir entry
# because colcon --symlink-install refuses a mapping whose value is also a key ("robostack": "robostack").
package_dir: dict[str, str] = {}
for folder, sub in SUBPACKAGE_DIRS.items():
    package_dir.update(_find(folder, f"{PACKAGE}.{sub}"))
packages = sorted(set(_find(PACKAGE, PACKAGE)) | set(package_dir))

urdfs = sorted(glob("sim/robots/*/*.urdf"))  # sim/robots/<robot>/<robot>.urdf
setup(
    # Not requires-python in pyproject.toml: setuptools turns that into a SpecifierSet object, whose repr
    # colcon's setup.py parse (ast.literal_eval) rejects, with the setuptools of Ubuntu 24.04 (68).
    python_requires=">=3.10",
    packages=packages,
    package_dir=package_dir,
    package_data={f"{PACKAGE}.bundle": ["*.schema.json"],  # the bundle metadata's JSON Schema
                  **{f"{PACKAGE}.{os.path.dirname(u).replace(os.sep, '.')}": ["*.urdf"] for u in urdfs}},
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", sorted(glob("launch/*.launch.py"))),
        (f"share/{PACKAGE}/urdf", urdfs),  # robot_state_publisher and RViz read share/robostack/urdf/<robot>.urdf
        *_tree("configs", f"share/{PACKAGE}/configs"),
    ],
)
