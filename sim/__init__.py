"""Simulation: robots, tasks, randomization and the batched MuJoCo backend.

``make_env`` is the one entry point: task name + YAML config (+ ``key=value`` overrides) -> a ``VecEnv``.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from robostack.sim.task_env import TaskEnv

PLAY_OVERRIDES = ("randomization.enabled=false",)


def load_task_config(task: str, overrides: Sequence[str] = (), play: bool = False):
    """The task's typed config from ``configs/tasks/<task>.yaml``; ``play`` turns randomization off."""
    from robostack import registry
    from robostack.config import config_path, load_config

    entry = registry.get("task", task)
    overrides = list(overrides) + (list(PLAY_OVERRIDES) if play else [])
    return load_config(entry.extra["config"], config_path("tasks", f"{task}.yaml"), overrides)


def make_env(task: str, num_envs: int | None = None, seed: int = 0, overrides: Sequence[str] = (),
             play: bool = False, device: str = "cpu") -> TaskEnv:
    from robostack import registry
    from robostack.sim.task_env import TaskEnv

    cfg = load_task_config(task, overrides, play)
    definition = registry.get("task", task).target(cfg)
    return TaskEnv(definition, num_envs=num_envs, seed=seed, device=device)
