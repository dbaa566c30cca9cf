"""The robots, one folder each: ``<robot>/`` holds its URDF, ``model.py`` (its ``RobotSpec`` and model builder)
and one module per task.

Importing this package registers every robot (their ``model`` modules: MuJoCo and numpy only, what a deploy
node may load); ``load_tasks`` imports the task modules as well (torch), registering every task. A new robot
is a new folder: nothing else lists it.
"""
from __future__ import annotations

import importlib
import pkgutil

ROBOT_MODULE = "model"  # the module of a robot folder that declares the robot


def _folders() -> list[str]:
    return sorted(info.name for info in pkgutil.iter_modules(__path__) if info.ispkg)


for _folder in _folders():
    importlib.import_module(f"{__name__}.{_folder}.{ROBOT_MODULE}")


def load_tasks() -> None:
    """Import every other module of every robot folder: the tasks, which register themselves."""
    for folder in _folders():
        package = importlib.import_module(f"{__name__}.{folder}")
        for info in pkgutil.iter_modules(package.__path__):
            if info.name != ROBOT_MODULE and not info.name.startswith("_"):
                importlib.import_module(f"{package.__name__}.{info.name}")
