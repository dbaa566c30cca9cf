"""The batched environment contract every RoboStack simulator backend implements.

Everything is a torch tensor with a leading ``num_envs`` dimension. The contract is small on purpose
(in the spirit of rsl_rl's VecEnv) so an algorithm file never needs to know which physics runs below.

    obs, info = env.reset(seed)
    obs, reward, terminated, truncated, info = env.step(action)

* ``obs`` is a dict of observation groups: ``"policy"`` (what a deployed policy may read) and
  ``"critic"`` (privileged: the policy terms plus simulator-only ones), each ``[num_envs, dim]`` float32.
* ``step`` resets finished envs automatically: the returned ``obs`` of a finished env is already the first
  observation of its next episode, and ``info["final_obs"]`` holds the observation it finished with
  (needed to bootstrap values on time-outs).
* ``terminated`` (task failure or success end) is separate from ``truncated`` (time limit), both bool.
* ``info["episode"]`` is a dict of per-env tensors, filled for the envs that finished this step
  (``info["done"]`` marks them): ``return``, ``length``, ``success`` and one ``reward/<term>`` sum per
  reward term.
"""
from __future__ import annotations

import abc
from typing import Any

import gymnasium as gym
import torch

Obs = dict[str, torch.Tensor]


class VecEnv(abc.ABC):
    """A batch of ``num_envs`` environments stepped together."""

    num_envs: int
    device: torch.device
    observation_spaces: dict[str, gym.spaces.Box]  # per group, single-env shapes
    action_space: gym.spaces.Box  # single-env shape, bounds of a valid action
    control_dt: float  # seconds between two ``step`` calls
    max_episode_length: int  # in control steps

    @abc.abstractmethod
    def reset(self, seed: int | None = None) -> tuple[Obs, dict[str, Any]]:
        """Reset every env; with a seed, all randomness (sampling, randomization) restarts from it."""

    @abc.abstractmethod
    def step(self, action: torch.Tensor) -> tuple[Obs, torch.Tensor, torch.Tensor, torch.Tensor, dict[str, Any]]:
        """Apply ``action`` [num_envs, action_dim]; return obs, reward [N], terminated [N], truncated [N], info."""

    def close(self) -> None:
        """Release threads and native resources."""
