"""Residual RL: PPO trains a small Gaussian correction on top of a frozen base policy, as ResiP does (Ankile et
al., 2024, "From Imitation to Refinement"): the base (a diffusion run or chunk bundle acting in the task's
actions) keeps its action chunks; the residual corrects every executed action by up to ``scale`` of the
action range, from the task's policy observations and the base's action, with the task's (sparse) reward and
domain randomization.

    robostack train panda-insert --base runs/panda-insert/<stamp>-diffusion   # configs/train/panda-insert-residual.yaml
    robostack eval runs/panda-insert/<stamp>-ppo --randomized --episodes 200 --json
    robostack export runs/panda-insert/<stamp>-ppo --out bundles/insert   # residual + base, one bundle

A residual run is a PPO run (``robostack.workflows.train``) whose recipe has ``residual.base``: everything but the
env is the same. The env is a ``ResidualEnv``: the task with the base acting in it. Its bundle
(``robostack.workflows.export``) holds the residual's graph and the base as a chunk bundle in ``base/``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import gymnasium as gym
import numpy as np
import torch

from robostack.bundle.format import residual_executed
from robostack.config import config_path
from robostack.sim.env import Obs, VecEnv

BASE_ACTION_DEFINITION = {"quantity": "the base policy's action for this control step, before the correction",
                          "units": "1 (each in [-1, 1])", "frame": "", "reference": "",
                          "components": "in action order (action.names)"}


@dataclass
class ResidualConfig:
    base: str | None = None  # a diffusion run or chunk bundle of the same task; None: plain RL
    scale: float = 0.1  # the largest correction, as a fraction of the action range's half-width


def residual_recipe(task: str) -> Path:
    """The recipe a residual run of ``task`` starts from: ``configs/train/<task>-residual.yaml``."""
    return config_path("train", f"{task}-residual.yaml")


class ResidualEnv(VecEnv):
    """The task with a frozen base policy (``base``: obs -> the task's actions) in it. ``step(residual)`` executes
    what the residual's bundle executes (``robostack.bundle.format.residual_executed``); every observation group
    gets the base's next action appended, so the residual sees what it corrects. Everything else (``task``,
    ``sim``, ...) is the task env's."""

    def __init__(self, env: Any, base: Callable[[Obs], torch.Tensor], scale: float):
        if not 0.0 < scale <= 2.0:
            raise ValueError(f"residual scale must be in (0, 2] (a fraction of the action range), got {scale}")
        self.env, self.scale = env, float(scale)
        self.base = base
        space = env.action_space
        self.low = torch.as_tensor(space.low, dtype=torch.float32, device=env.device)
        self.high = torch.as_tensor(space.high, dtype=torch.float32, device=env.device)
        self.num_envs, self.device = env.num_envs, env.device
        self.control_dt, self.max_episode_length = env.control_dt, env.max_episode_length
        n = space.shape[-1]
        self.action_space = gym.spaces.Box(-1.0, 1.0, (n,), np.float32)
        self.observation_spaces = {
            group: gym.spaces.Box(-np.inf, np.inf, (space_.shape[-1] + n,), np.float32)
            for group, space_ in env.observation_spaces.items()}
        self.base_action = torch.zeros(self.num_envs, n, device=env.device)

    def __getattr__(self, name: str) -> Any:
        if name == "env":  # not set yet: __init__ failed early
            raise AttributeError(name)
        return getattr(self.env, name)

    def _with_base(self, obs: Obs) -> Obs:
        return {group: torch.cat([value, self.base_action.to(value.dtype)], dim=-1) for group, value in obs.items()}

    def reset(self, seed: int | None = None) -> tuple[Obs, dict[str, Any]]:
        obs, info = self.env.reset(seed)
        self.base_action = self.base(obs)
        return self._with_base(obs), info

    def step(self, residual: torch.Tensor):
        executed = self.base_action
        action = residual_executed(executed, residual, self.scale, self.low, self.high)
        obs, reward, terminated, truncated, info = self.env.step(action)
        if "final_obs" in info:  # the base action a finished env would have corrected next: the last one
            info["final_obs"] = {group: torch.cat([value, executed.to(value.dtype)], dim=-1)
                                 for group, value in info["final_obs"].items()}
        self.base_action = self.base(obs)
        return self._with_base(obs), reward, terminated, truncated, info

    def close(self) -> None:
        if hasattr(self.base, "close"):
            self.base.close()
        self.env.close()
