"""Simulation: robots, tasks, randomization and the batched MuJoCo backend.

``make_env`` is the one entry point: task name + YAML config (+ ``key=value`` overrides) -> a ``VecEnv``.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from robostack.sim.task_env import TaskEnv

PLAY_OVERRIDES = ("randomization.enabled=false",)


def load_task_config(task: str, overrides: Sequence[str] = (), play: bool = False,
                     config: Mapping[str, Any] | None = None):
    """The task's typed config from ``configs/tasks/<task>.yaml``, or from ``config`` (a full config as a
    mapping, e.g. the one a policy bundle was trained with); ``play`` turns randomization off. Its ``robot``
    section is the robot's configuration (``configs/robots/<robot>.yaml`` unless ``config`` holds one), so a
    bundle made from it keeps the gains, default pose and motor constants it was trained with."""
    from robostack import registry
    from robostack.config import build_config, config_path, load_yaml, to_dict

    entry = registry.get("task", task)
    overrides = list(overrides) + (list(PLAY_OVERRIDES) if play else [])
    if config is None:
        path = config_path("tasks", f"{task}.yaml")
        data, source = load_yaml(path), str(path)
    else:
        data, source = dict(config), f"the {task} config given"
    if "robot" not in data:  # a task's YAML leaves the robot to its own file (so did runs and bundles made earlier)
        data["robot"] = to_dict(registry.robot(entry.extra["robot"]).load_config())
    return build_config(entry.extra["config"], data, source, overrides)


def make_env(task: str, num_envs: int | None = None, seed: int = 0, overrides: Sequence[str] = (),
             play: bool = False, device: str = "cpu", config: Mapping[str, Any] | None = None) -> TaskEnv:
    """A batched ``TaskEnv``; ``config`` replaces the task's YAML file (see ``load_task_config``)."""
    from robostack import registry
    from robostack.sim.task_env import TaskEnv

    cfg = load_task_config(task, overrides, play, config)
    definition = registry.get("task", task).target(cfg)
    return TaskEnv(definition, num_envs=num_envs, seed=seed, device=device)
