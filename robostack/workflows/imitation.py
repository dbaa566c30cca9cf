"""Imitation learning in simulation: a diffusion policy (``robostack.policies.diffusion``) trained on a RoboStack
dataset as it is, then run in the task the data was recorded in.

    robostack teleop --task panda-lift --device scripted --episodes 200 --randomized --out data/lift
    robostack train panda-lift --dataset data/lift          # recipe: configs/train/panda-lift.yaml
    robostack eval runs/panda-lift/<run> --randomized --episodes 200 --json
    robostack bench imitation --task panda-lift --demos 200 --json   # the three steps, timed

What the policy sees and does at each control step:

* ``observation.state`` (the policy's): the dataset's vector observations ``state_keys`` side by side; by
  default every vector ``observation.*`` feature in the dataset's order (the robot's joint state, the task's
  command, the scene's objects ``observation.environment_state``);
* ``observation.images.<camera>`` for each of ``cameras``;
* ``action``: the dataset's actions, actuator controls (joint targets and the gripper's), which the simulated
  robot's driver applies as they are (``TaskEnv.step_controls``), as ``robostack data replay`` does. With
  ``relative_actions`` (the default) the policy learns each chunk of controls as offsets from the joints'
  positions measured at the query (``J.target`` from ``J.pos`` in ``observation.state``) and adds them back:
  such offsets span far less than the joint ranges absolute targets need to be precise across (absolute
  targets, 200 panda-lift demonstrations and the default recipe: chunks 0.1-0.3 rad off the demonstrations,
  0.005 success). Offsets from the position measured at every step instead would leave the arm unanchored
  (it sags, and its targets follow).

In simulation the same observations come from ``robostack.data.features.sim_frame`` and the task's cameras, so
a dataset written by ``robostack teleop`` trains here without any conversion step. Episodes recorded as
failures are left out of training (``successful_only``).

A run folder (``runs/<task>/<stamp>-diffusion/``) holds ``config.yaml`` (task, dataset, the task config as
recorded, the recipe), ``checkpoints/last.pt`` (the EMA policy), ``metrics.csv`` (loss and learning rate)
and ``summary.yaml``.
"""
from __future__ import annotations

import csv
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import yaml

from robostack.config import ConfigError, config_path, load_config, to_dict
from robostack.conventions import ACTION_KEY, IMAGE_PREFIX, STATE_KEY
from robostack.data.dataset import Dataset, DatasetError, load_dataset
from robostack.policies.diffusion import SPEC as DIFFUSION, DiffusionConfig
from robostack.workflows.acting import CHECKPOINT
from robostack.workflows.evaluate import eval_policy
from robostack.workflows.runs import algorithm, available_cores, new_run_dir

ALGO = DIFFUSION.name
METRICS_EVERY = 25  # gradient steps between metrics.csv rows


@dataclass
class ImitationConfig:
    algo: str = ALGO
    state_keys: list[str] | None = None  # dataset features side by side as the policy's state; None: all vectors
    cameras: list[str] = field(default_factory=list)  # camera names (observation.images.<name>) the policy sees
    successful_only: bool = True  # leave out episodes recorded as failures
    relative_actions: bool = True  # controls as offsets from their joints' measured positions (see above)
    action_key: str = ACTION_KEY  # or "teleop.action": the task's normalized actions, through its action map
    query_every: int | None = None  # control steps between chunk queries; None: n_action_steps
    ensemble_coef: float = 0.01  # temporal ensembling (ChunkExecutor)
    eval_episodes: int = 100  # at the end, on the play variant; 0 skips it
    eval_num_envs: int = 50
    torch_threads: int = 0  # 0: all cores
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)



# ---------------------------------------------------------------------------------------------- data


def vector_observations(dataset: Dataset) -> list[str]:
    """The dataset's vector ``observation.*`` features, in its order (the default ``state_keys``)."""
    return [key for key, ft in dataset.features.items()
            if key.startswith("observation.") and not key.startswith(IMAGE_PREFIX) and ft["dtype"] != "video"
            and len(ft["shape"]) == 1]


def _check_inputs(dataset: Dataset, state_keys: Sequence[str], cameras: Sequence[str], action_key: str) -> None:
    problems = [f"no feature {key!r}" for key in state_keys if key not in dataset.features]
    problems += [f"no camera {camera!r} ({IMAGE_PREFIX}{camera})" for camera in cameras
                 if IMAGE_PREFIX + camera not in dataset.video_keys]
    if action_key not in dataset.features:
        problems.append(f"no {action_key!r} feature (the actions to learn)")
    if problems:
        raise DatasetError(f"{dataset.root}: {'; '.join(problems)} (features: {sorted(dataset.features)})")


def joint_columns(features: dict[str, Any]) -> list[int]:
    """For each control (``action`` name ``J.target``), the column of ``J.pos`` in ``observation.state``."""
    action_names = features[ACTION_KEY].get("names") or []
    state_names = (features.get("observation.state") or {}).get("names") or []
    missing = [name for name in action_names if not name.endswith(".target")
               or name[:-len(".target")] + ".pos" not in state_names]
    if missing or not action_names:
        raise DatasetError(f"relative actions need a joint position (J.pos in observation.state) for every control "
                           f"(J.target); none for {missing or 'the unnamed actions'}")
    return [state_names.index(name[:-len(".target")] + ".pos") for name in action_names]


def dataset_episodes(dataset: Dataset, state_keys: Sequence[str], cameras: Sequence[str] = (),
                     successful_only: bool = True, action_key: str = ACTION_KEY) -> list[dict[str, np.ndarray]]:
    """The dataset's episodes in the form ``train_diffusion`` takes (``action_key`` as the action)."""
    _check_inputs(dataset, state_keys, cameras, action_key)
    episodes = []
    for i, row in enumerate(dataset.episodes):
        if successful_only and row.get("success") is False:
            continue
        data = dataset.episode(i, images=False)
        episode = {ACTION_KEY: data[action_key].astype(np.float32)}
        if state_keys:
            episode[STATE_KEY] = np.concatenate([data[key].reshape(len(data[ACTION_KEY]), -1) for key in state_keys],
                                                axis=1).astype(np.float32)
        for camera in cameras:
            episode[IMAGE_PREFIX + camera] = dataset.video_frames(i, IMAGE_PREFIX + camera)
        episodes.append(episode)
    if not episodes:
        raise DatasetError(f"{dataset.root}: no episode to learn from ({dataset.num_episodes} episodes"
                           f"{', none recorded as successful' if successful_only else ''})")
    return episodes



# ------------------------------------------------------------------------------------------ training


def _recipe(task: str, overrides: Sequence[str], config: str | os.PathLike | None) -> ImitationConfig:
    path = Path(config) if config is not None else config_path("train", f"{task}.yaml")
    cfg = load_config(ImitationConfig, path, overrides)
    if cfg.algo != ALGO:
        raise ConfigError(f"{path}: algo {cfg.algo!r}: learning from a dataset runs algo {ALGO!r} "
                          f"({algorithm(ALGO).summary})")
    return cfg


def train_imitation(task: str, dataset: str | os.PathLike, overrides: Sequence[str] = (), seed: int | None = None,
                    run_root: str = "runs", progress: bool = True, config: str | os.PathLike | None = None
                    ) -> dict[str, Any]:
    """Train a diffusion policy for ``task`` on ``dataset``; returns the summary (run_dir, wall_s, final loss,
    and the play-variant evaluation unless ``eval_episodes=0``)."""
    cfg = _recipe(task, overrides, config)
    if seed is not None:
        cfg.diffusion.seed = seed
    data = load_dataset(dataset)
    recorded_task = data.sim_task
    if recorded_task is not None and recorded_task != task:
        raise DatasetError(f"{data.root}: recorded in task {recorded_task!r}, not {task!r}")
    state_keys = vector_observations(data) if cfg.state_keys is None else list(cfg.state_keys)
    episodes = dataset_episodes(data, state_keys, cfg.cameras, cfg.successful_only, cfg.action_key)
    reference = None
    if cfg.relative_actions and cfg.action_key != ACTION_KEY:
        raise ConfigError(f"relative_actions makes actuator controls (action_key: {ACTION_KEY}) offsets from joint "
                          f"positions; with action_key {cfg.action_key!r} set relative_actions=false")
    if cfg.relative_actions:
        if "observation.state" not in state_keys:
            raise ConfigError("relative_actions: the policy's state must include observation.state (the joint "
                              f"positions the actions are offsets from); state_keys are {state_keys}")
        offset = sum(data.features[key]["shape"][0] for key in state_keys[:state_keys.index("observation.state")])
        reference = [offset + column for column in joint_columns(data.features)]
    torch.set_num_threads(cfg.torch_threads or available_cores())

    run_dir = new_run_dir(run_root, task, ALGO)
    task_config = data.sim_task_config
    with (run_dir / "config.yaml").open("w") as f:
        yaml.safe_dump({"task": task, "algo": ALGO, "dataset": str(Path(dataset).resolve()),
                        "dataset_episodes": len(episodes), "state_keys": state_keys, "task_config": task_config,
                        "train": to_dict(cfg)}, f, sort_keys=False)
    metrics_path = run_dir / "metrics.csv"
    losses: list[float] = []
    with metrics_path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["step", "loss", "wall_s"])
        start = time.perf_counter()

        def on_step(step: int, loss: float) -> None:
            losses.append(loss)
            if (step + 1) % METRICS_EVERY == 0 or step + 1 == cfg.diffusion.num_steps:
                writer.writerow([step + 1, f"{np.mean(losses[-METRICS_EVERY:]):.6g}",
                                 f"{time.perf_counter() - start:.2f}"])
                f.flush()  # progress is readable while training runs

        policy = algorithm(ALGO).trainer(episodes, cfg.diffusion, progress=progress, on_step=on_step,
                                         action_reference=reference)
        wall_s = time.perf_counter() - start
    (run_dir / "checkpoints").mkdir()
    torch.save({"algo": ALGO, "policy": policy.checkpoint(), "state_keys": state_keys, "cameras": list(cfg.cameras),
                "action_key": cfg.action_key, "steps": cfg.diffusion.num_steps, "wall_s": wall_s},
               run_dir / "checkpoints" / CHECKPOINT)
    summary: dict[str, Any] = {
        "run_dir": str(run_dir), "task": task, "algo": ALGO, "dataset": str(dataset),
        "demonstrations": len(episodes), "frames": int(sum(len(e[ACTION_KEY]) for e in episodes)),
        "steps": cfg.diffusion.num_steps, "wall_s": round(wall_s, 2),
        "final_loss": float(np.mean(losses[-METRICS_EVERY:])),
    }
    if cfg.eval_episodes > 0:
        result = eval_policy(run_dir, episodes=cfg.eval_episodes, num_envs=min(cfg.eval_num_envs, cfg.eval_episodes),
                             seed=cfg.diffusion.seed + 1)
        summary.update({k: v for k, v in result.items() if k not in summary and k not in ("source", "kind")})
    with (run_dir / "summary.yaml").open("w") as f:
        yaml.safe_dump({k: (float(v) if isinstance(v, (float, np.floating)) else v) for k, v in summary.items()},
                       f, sort_keys=False)
    return summary
