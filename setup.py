"""RoboStack is both a pip package and a ROS 2 ament_python package; this file serves both builds."""
from glob import glob

from setuptools import setup

PACKAGE = "robostack"
# The design card fixes top-level folders (sim/, policies/, real/); they install namespaced under robostack.
SUBPACKAGE_DIRS = {"sim": "sim", "policies": "policies", "real": "real"}


def _find(root: str, prefix: str) -> dict[str, str]:
    import os

    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        if "__init__.py" in filenames:
            rel = os.path.relpath(dirpath, root)
            name = prefix if rel == "." else prefix + "." + rel.replace(os.sep, ".")
            found[name] = dirpath
    return found


package_dir = _find("robostack", PACKAGE)
for folder, sub in SUBPACKAGE_DIRS.items():
    package_dir.update(_find(folder, f"{PACKAGE}.{sub}"))

setup(
    packages=sorted(package_dir),
    package_dir=package_dir,
    package_data={f"{PACKAGE}.sim.robots.{r}": ["*.urdf"] for r in ("panda", "go2", "cf2")},
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/robostack"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.py")),
        (f"share/{PACKAGE}/configs/robots", glob("configs/robots/*.yaml")),
        (f"share/{PACKAGE}/configs/tasks", glob("configs/tasks/*.yaml")),
        (f"share/{PACKAGE}/configs/train", glob("configs/train/*.yaml")),
        (f"share/{PACKAGE}/configs/deploy", glob("configs/deploy/*.yaml")),
    ],
)
