"""One RoboStack env as a standard ``gymnasium.Env`` (numpy in, numpy out), for tools that expect Gymnasium.

The batched env runs with ``num_envs=1``; its automatic reset is hidden, so the adapter behaves like any
Gymnasium env: after ``terminated`` or ``truncated`` the caller calls ``reset``.
"""
from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import torch

from robostack.sim.env import VecEnv


class GymAdapter(gym.Env):
    metadata = {"render_modes": []}

    def __init__(self, env: VecEnv, obs_group: str = "policy"):
        if env.num_envs != 1:
            raise ValueError(f"GymAdapter wraps a single env, got num_envs={env.num_envs}")
        self.env = env
        self.obs_group = obs_group
        self.observation_space = env.observation_spaces[obs_group]
        self.action_space = env.action_space
        self._needs_reset = True

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        obs, info = self.env.reset(seed=seed)
        self._needs_reset = False
        return self._obs(obs), info

    def step(self, action: np.ndarray):
        if self._needs_reset:
            raise RuntimeError("call reset() before step() (the episode ended or never started)")
        action = np.asarray(action, dtype=np.float32).reshape(1, -1)
        obs, reward, terminated, truncated, info = self.env.step(torch.from_numpy(action))
        term, trunc = bool(terminated[0]), bool(truncated[0])
        out_info: dict[str, Any] = {}
        if term or trunc:
            self._needs_reset = True
            obs = info["final_obs"]  # Gymnasium shows the last observation, not the next episode's first
            out_info["episode"] = {k: float(v[0]) for k, v in info["episode"].items()}
        return self._obs(obs), float(reward[0]), term, trunc, out_info

    def _obs(self, obs: dict[str, torch.Tensor]) -> np.ndarray:
        return obs[self.obs_group][0].cpu().numpy()

    def close(self) -> None:
        self.env.close()
