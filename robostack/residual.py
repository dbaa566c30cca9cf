"""Residual RL: PPO trains a small Gaussian correction on top of a frozen base policy, as ResiP does (Ankile et
al., 2024, "From Imitation to Refinement"): the base (a diffusion run or chunk bundle acting in the task's
actions) keeps its action chunks; the residual corrects every executed action by up to ``scale`` of the
action range, from the task's policy observations and the base's action, with the task's (sparse) reward and
domain randomization.

    robostack train panda-insert --base runs/panda-insert/<stamp>-diffusion   # configs/train/panda-insert-residual.yaml
    robostack eval runs/panda-insert/<stamp>-ppo --randomized --episodes 200 --json
    robostack export runs/panda-insert/<stamp>-ppo --out bundles/insert   # residual + base, one bundle

A residual run is a PPO run (``robostack.train``) whose recipe has ``residual.base``: everything but the env
is the same. The env is a ``ResidualEnv``: the task with the base acting in it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from robostack.sim.env import Obs, VecEnv

__all__ = ["ResidualConfig", "ResidualEnv", "load_base", "residual_recipe"]


@dataclass
class ResidualConfig:
    base: str | None = None  # a diffusion run or chunk bundle of the same task; None: plain RL
    scale: float = 0.1  # the largest correction, as a fraction of the action range's half-width


def residual_recipe(task: str) -> Path:
    """The recipe a residual run of ``task`` starts from: ``configs/train/<task>-residual.yaml``."""
    from robostack.config import config_path

    return config_path("train", f"{task}-residual.yaml")


def load_base(source: str | os.PathLike, task: str) -> dict[str, Any]:
    """The base policy (``robostack.eval_policy.load_policy``'s dict) after checking it can carry a residual."""
    from robostack.eval_policy import IMITATION_ALGO, load_policy

    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"residual base {source}: no such run folder or bundle")
    base = load_policy(path)
    if base["task"] != task:
        raise ValueError(f"residual base {source} was trained for task {base['task']!r}, not {task!r}")
    if base.get("algo") != IMITATION_ALGO:
        raise ValueError(f"residual base {source} is a {base.get('algo')!r} policy; the base is a diffusion run "
                         "or chunk bundle (robostack train TASK --dataset DATASET)")
    if base.get("controls"):
        raise ValueError(f"residual base {source} writes actuator controls; a residual corrects the task's "
                         "actions, so train the base with action_key: teleop.action")
    return base


class ResidualEnv(VecEnv):
    """The task with a frozen base policy in it. ``step(residual)`` executes ``clip(base + scale * residual)``;
    every observation group gets the base's next action appended, so the residual sees what it corrects.
    Everything else (``task``, ``sim``, ...) is the task env's."""

    def __init__(self, env: Any, base: dict[str, Any], scale: float):
        if not 0.0 < scale <= 2.0:
            raise ValueError(f"residual scale must be in (0, 2] (a fraction of the action range), got {scale}")
        self.env, self.scale = env, float(scale)
        self.base = base["make_policy"](env)
        space = env.action_space
        self.low = torch.as_tensor(space.low, dtype=torch.float32, device=env.device)
        self.high = torch.as_tensor(space.high, dtype=torch.float32, device=env.device)
        self.half_range = (self.high - self.low) / 2
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
        action = torch.clamp(executed + self.scale * self.half_range * residual, self.low, self.high)
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


def env_wrapper(base: dict[str, Any], scale: float) -> Any:
    """``wrap_env`` of ``robostack.eval_policy.load_policy``'s dict: the task env -> a ``ResidualEnv`` on ``base``."""
    return lambda env: ResidualEnv(env, base, scale)


# ---------------------------------------------------------------------------------------------- bundles


BASE_ACTION_DEFINITION = {"quantity": "the base policy's action for this control step, before the correction",
                          "units": "1 (each in [-1, 1])", "frame": "", "reference": "",
                          "components": "in action order (action.names)"}


def export_residual_bundle(run: Any, out_dir: str | os.PathLike) -> Path:
    """The bundle of a residual run (``robostack.bundle.load_run``): the residual's graph (``policy.onnx``,
    input: the task's policy observation, then the base's action) and its base as a chunk bundle in
    ``base/``, whose hash the residual's metadata records."""
    import shutil
    import tempfile
    from datetime import datetime, timezone

    import robostack
    from robostack.bundle import (BASE_DIR, FORMAT_VERSION, RESIDUAL, RESIDUAL_BASE_TERM, describe_observation,
                                  describe_robot, is_bundle, load_bundle, write_bundle, write_vector_onnx, write_vector_torchscript)
    from robostack.imitation import export_chunk_bundle

    residual = run.train_config["residual"]
    base_source = Path(residual["base"])
    base = load_base(base_source, run.task)
    env = ResidualEnv(run.make_env(num_envs=1, seed=0, play=True), base, residual["scale"])
    try:
        env.reset(seed=0)
        observation = describe_observation(env.env)
        robot = describe_robot(env.env.task, env.env.default_model)
        module = run.policy_module(env)
        n = env.action_space.shape[0]
    finally:
        env.close()
    observation["terms"].append({"name": RESIDUAL_BASE_TERM, "dim": n, "scale": 1.0,
                                 "offset_in_vector": observation["dim"], "definition": BASE_ACTION_DEFINITION})
    observation["dim"] += n

    ck = run.ckpt
    with tempfile.TemporaryDirectory() as tmp:
        base_dir = Path(tmp) / BASE_DIR
        if is_bundle(base_source):
            shutil.copytree(base_source, base_dir)
        else:
            export_chunk_bundle(base_source, base_dir)
        base_meta = load_bundle(base_dir).metadata
        metadata = {
            "format_version": FORMAT_VERSION, "kind": RESIDUAL, "algo": run.algo,
            **robot,
            **{key: base_meta[key] for key in ("task", "control_rate_hz", "control_dt", "max_episode_length", "action")},
            "observation": observation,
            "residual": {"scale": float(residual["scale"]),
                         "executed": "clip(base action + scale * clip(residual, -1, 1), -1, 1)"},
            "task_config": run.task_config,
            "training": {"task_overrides": list(run.task_overrides), "train_config": run.train_config,
                         "run_dir": str(run.run_dir.resolve()), "checkpoint": str(run.checkpoint.resolve()),
                         "iteration": ck.get("iteration"), "env_steps": ck.get("env_steps"),
                         "wall_s": ck.get("wall_s")},
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "robostack_version": robostack.__version__,
        }
        return write_bundle(out_dir, metadata, lambda path: write_vector_onnx(module, observation["dim"], path),
                            lambda path: write_vector_torchscript(module, observation["dim"], path),
                            lambda path: shutil.copytree(base_dir, path))
