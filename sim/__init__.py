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
    mapping, e.g. the one a policy bundle was trained with); ``play`` turns randomization off."""
    from robostack import registry
    from robostack.config import build_config, config_path, load_config

    entry = registry.get("task", task)
    overrides = list(overrides) + (list(PLAY_OVERRIDES) if play else [])
    if config is not None:
        return build_config(entry.extra["config"], config, f"the {task} config given", overrides)
    return load_config(entry.extra["config"], config_path("tasks", f"{task}.yaml"), overrides)


def make_env(task: str, num_envs: int | None = None, seed: int = 0, overrides: Sequence[str] = (),
             play: bool = False, device: str = "cpu", config: Mapping[str, Any] | None = None) -> TaskEnv:
    """A batched ``TaskEnv``; ``config`` replaces the task's YAML file (see ``load_task_config``)."""
    from robostack import registry
    from robostack.sim.task_env import TaskEnv

    cfg = load_task_config(task, overrides, play, config)
    definition = registry.get("task", task).target(cfg)
    return TaskEnv(definition, num_envs=num_envs, seed=seed, device=device)
