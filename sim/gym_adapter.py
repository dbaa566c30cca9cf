"""One RoboStack env as a standard ``gymnasium.Env`` (numpy in, numpy out), for tools that expect Gymnasium.

The batched env runs with ``num_envs=1``; its automatic reset is hidden, so the adapter behaves like any
Gymnasium env: after ``terminated`` or ``truncated`` the caller calls ``reset``. At an episode's end ``info``
holds the task's statistics under ``task_episode`` (return, length, success, reward terms, task metrics) and,
where the task says success, ``is_success`` (the key Stable-Baselines3 reads); ``info["episode"]`` is left to
Gymnasium's ``RecordEpisodeStatistics`` and SB3's ``Monitor``, which write it themselves.

Every task is registered as ``RoboStack/<task>-v0``::

    env = gymnasium.make("robostack.sim.gym_adapter:RoboStack/cf2-hover-v0", seed=3, play=True)
"""
from __future__ import annotations

from typing import Any, Sequence

import gymnasium as gym
import numpy as np
import torch

from robostack.sim.env import VecEnv

NAMESPACE = "RoboStack"


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
            stats = {k: float(v[0]) for k, v in info["episode"].items()}
            out_info["task_episode"] = stats
            if "success" in stats:
                out_info["is_success"] = stats["success"] > 0.5
        return self._obs(obs), float(reward[0]), term, trunc, out_info

    def _obs(self, obs: dict[str, torch.Tensor]) -> np.ndarray:
        return obs[self.obs_group][0].cpu().numpy()

    def close(self) -> None:
        self.env.close()


def make_gymnasium_env(task: str, seed: int = 0, play: bool = False, overrides: Sequence[str] = (),
                       render_mode: str | None = None) -> GymAdapter:
    """The entry point of ``RoboStack/<task>-v0``: one env of ``task`` (its YAML config with ``overrides``)."""
    from robostack import sim

    if render_mode is not None:
        raise ValueError(f"RoboStack/{task}-v0 renders nothing through Gymnasium (render_mode={render_mode!r}); "
                         "robostack eval --video renders a task")
    return GymAdapter(sim.make_env(task, num_envs=1, seed=seed, overrides=list(overrides), play=play))


def register_tasks() -> list[str]:
    """Register every task with Gymnasium as ``RoboStack/<task>-v0`` (again: a no-op); returns the ids."""
    from robostack import sim

    ids = []
    for spec in sim.tasks():
        env_id = f"{NAMESPACE}/{spec.name}-v0"
        if env_id not in gym.registry:
            gym.register(id=env_id, entry_point=f"{__name__}:make_gymnasium_env", kwargs={"task": spec.name},
                         disable_env_checker=True)  # checked by the test suite, not at every make
        ids.append(env_id)
    return ids


register_tasks()
