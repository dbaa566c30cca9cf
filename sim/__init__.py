"""Simulation: robots, tasks, randomization and the batched simulator backends.

``make_env`` is the one entry point: task name + YAML config (+ ``key=value`` overrides) -> a ``VecEnv`` on a
backend (``mujoco``, MuJoCo's C library on the CPU, by default). Tasks and backends register themselves
(``robostack.registry``); this package finds its own: the tasks in the robot folders (``sim/robots``), the
backends in its ``*_backend`` modules.
"""
from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from robostack import registry
from robostack.sim import robots
from robostack.specs import TaskSpec

if TYPE_CHECKING:
    from robostack.sim.env import VecEnv

PLAY_OVERRIDES = ("randomization.enabled=false",)
DEFAULT_BACKEND = "mujoco"
BACKEND_SUFFIX = "_backend"  # a module sim/<name>_backend.py registers a simulator backend


def task(name: str) -> TaskSpec:
    """The registered task ``name`` (its robot folder's modules loaded first)."""
    robots.load_tasks()
    return registry.task(name)


def tasks() -> list[TaskSpec]:
    """Every registered task (every robot folder's modules loaded first)."""
    robots.load_tasks()
    return registry.registered(TaskSpec)


def load_backends() -> None:
    """Import every ``*_backend`` module of this package: each registers its backend."""
    for info in pkgutil.iter_modules(__path__):
        if info.name.endswith(BACKEND_SUFFIX):
            importlib.import_module(f"{__name__}.{info.name}")


def load_task_config(task_name: str, overrides: Sequence[str] = (), play: bool = False,
                     config: Mapping[str, Any] | None = None):
    """The task's typed config from ``configs/tasks/<task>.yaml``, or from ``config`` (a full config as a
    mapping, e.g. the one a policy bundle was trained with); ``play`` turns randomization off. Its ``robot``
    section is the robot's configuration (``configs/robots/<robot>.yaml`` unless ``config`` holds one), so a
    bundle made from it keeps the gains, default pose and motor constants it was trained with."""
    from robostack.config import build_config, config_path, load_yaml, to_dict

    spec = task(task_name)
    overrides = list(overrides) + (list(PLAY_OVERRIDES) if play else [])
    if config is None:
        path = config_path("tasks", f"{task_name}.yaml")
        data, source = load_yaml(path), str(path)
    else:
        data, source = dict(config), f"the {task_name} config given"
    if "robot" not in data:  # a task's YAML leaves the robot to its own file (so did runs and bundles made earlier)
        data["robot"] = to_dict(registry.robot(spec.robot).load_config())
    return build_config(spec.config_type, data, source, overrides)


def make_env(task_name: str, num_envs: int | None = None, seed: int = 0, overrides: Sequence[str] = (),
             play: bool = False, device: str = "cpu", config: Mapping[str, Any] | None = None,
             backend: str = DEFAULT_BACKEND) -> VecEnv:
    """A batched env of the task on ``backend``; ``config`` replaces the task's YAML file (see
    ``load_task_config``)."""
    cfg = load_task_config(task_name, overrides, play, config)
    definition = task(task_name).build(cfg)
    load_backends()
    return registry.backend(backend).make_env(definition, num_envs=num_envs, seed=seed, device=device)
