"""A tiny batched point-mass task implementing the full ``VecEnv`` contract, for fast algorithm tests.

A point in the plane moves with the commanded velocity (action in [-1, 1]^2) and must reach a random target.
Reward terms: ``distance`` (minus the distance, every step) and ``reach`` (+``reach_bonus`` on success).
Success (within ``tolerance``) terminates; leaving the arena (|x| > 2.5) terminates as a failure; the time
limit truncates. The policy sees the target offset and the velocity; the critic also sees the time left.
"""
from __future__ import annotations

from typing import Any, Sequence

import gymnasium as gym
import numpy as np
import torch

from robostack.sim.env import VecEnv


class PointMassEnv(VecEnv):
    def __init__(self, num_envs: int = 64, seed: int = 0, max_episode_length: int = 40, dt: float = 0.1,
                 tolerance: float = 0.15, reach_bonus: float = 5.0, device: str = "cpu"):
        self.num_envs = num_envs
        self.device = torch.device(device)
        self.control_dt = dt
        self.max_episode_length = max_episode_length
        self.tolerance = tolerance
        self.reach_bonus = reach_bonus
        self.action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.observation_spaces = {
            "policy": gym.spaces.Box(-np.inf, np.inf, (4,), np.float32),
            "critic": gym.spaces.Box(-np.inf, np.inf, (5,), np.float32),
        }
        self.reward_terms = ("distance", "reach")
        self.gen = torch.Generator(device=self.device)
        self.gen.manual_seed(seed)
        n, d = num_envs, self.device
        self.pos = torch.zeros(n, 2, device=d)
        self.vel = torch.zeros(n, 2, device=d)
        self.target = torch.zeros(n, 2, device=d)
        self.steps = torch.zeros(n, dtype=torch.long, device=d)
        self.ep_return = torch.zeros(n, device=d)
        self.ep_terms = {t: torch.zeros(n, device=d) for t in self.reward_terms}
        self.closed = False

    def _sample(self, ids: torch.Tensor) -> None:
        k = ids.numel()
        self.pos[ids] = (torch.rand(k, 2, generator=self.gen, device=self.device) * 2 - 1) * 1.0
        self.target[ids] = (torch.rand(k, 2, generator=self.gen, device=self.device) * 2 - 1) * 1.0
        self.vel[ids] = 0.0
        self.steps[ids] = 0
        self.ep_return[ids] = 0.0
        for t in self.reward_terms:
            self.ep_terms[t][ids] = 0.0

    def _obs(self) -> dict[str, torch.Tensor]:
        policy = torch.cat([self.target - self.pos, self.vel], dim=1)
        time_left = (1.0 - self.steps.float() / self.max_episode_length).unsqueeze(1)
        return {"policy": policy.clone(), "critic": torch.cat([policy, time_left], dim=1)}

    def reset(self, seed: int | None = None):
        if seed is not None:
            self.gen.manual_seed(seed)
        self._sample(torch.arange(self.num_envs, device=self.device))
        return self._obs(), {}

    def step(self, action: torch.Tensor):
        action = action.to(self.device).clamp(-1.0, 1.0)
        self.vel = action.clone()
        self.pos = self.pos + self.vel * self.control_dt
        self.steps += 1
        dist = (self.target - self.pos).norm(dim=1)
        success = dist < self.tolerance
        out = self.pos.abs().max(dim=1).values > 2.5
        terms = {"distance": -dist * self.control_dt * 10.0, "reach": success.float() * self.reach_bonus}
        reward = terms["distance"] + terms["reach"]
        self.ep_return += reward
        for t in self.reward_terms:
            self.ep_terms[t] += terms[t]
        terminated = success | out
        truncated = (self.steps >= self.max_episode_length) & ~terminated
        done = terminated | truncated
        final_obs = self._obs()
        episode = {
            "return": torch.where(done, self.ep_return, 0.0),
            "length": torch.where(done, self.steps.float(), 0.0),
            "success": success & done,
            "final_distance": torch.where(done, dist, 0.0),
        }
        for t in self.reward_terms:
            episode[f"reward/{t}"] = torch.where(done, self.ep_terms[t], 0.0)
        ids = done.nonzero(as_tuple=True)[0]
        if ids.numel():
            self._sample(ids)
        info: dict[str, Any] = {"final_obs": final_obs, "done": done, "episode": episode}
        return self._obs(), reward, terminated, truncated, info

    def close(self) -> None:
        self.closed = True


def toy_task_config(task: str, overrides: Sequence[str] = (), play: bool = False,
                    config: dict[str, Any] | None = None) -> dict[str, Any]:
    """Stands in for ``robostack.sim.load_task_config``: the toy's constructor arguments, from ``config`` and
    ``name=value`` overrides."""
    kwargs: dict[str, Any] = dict(config or {})
    for item in overrides:
        key, _, value = item.partition("=")
        kwargs[key.strip()] = int(value) if key.strip() == "max_episode_length" else float(value)
    return kwargs


def make_toy_env(task: str, num_envs: int, seed: int, overrides: Sequence[str] = (), play: bool = False,
                 config: dict[str, Any] | None = None, backend: str = "mujoco", device: str = "cpu"):
    """Same signature as ``robostack.sim.make_env`` (the toy env stands in for the default backend, on the CPU)."""
    assert backend == "mujoco" and str(device) == "cpu", (backend, device)
    return PointMassEnv(num_envs=num_envs, seed=seed, **toy_task_config(task, overrides, play, config))
