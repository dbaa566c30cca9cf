"""``robostack data replay``: an episode of a dataset re-executed in the simulated task it belongs to, and how far
the simulated states drift from the recorded ones (a check of the data, and of the simulator against the robot).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from robostack import sim
from robostack.data.dataset import Dataset, DatasetError
from robostack.data.features import BASE_STATE, StateMap


def replay(dataset: Dataset, episode: int) -> dict[str, Any]:
    """Re-execute an episode's recorded actions in its RoboStack task and say how far the states drift.

    The simulation starts from the episode's first recorded state (joints and floating base) on the task's
    play variant (no randomization) and applies each frame's ``action`` as actuator controls for one control
    step (``TaskEnv.step_controls``); the state after step k is compared with frame k + 1. Errors are
    absolute, per group of state entries (max, mean and at the last replayed frame).
    """
    task = dataset.sim_task
    if not task:
        raise DatasetError(f"{dataset.root}: names no RoboStack task (its action feature's robostack.task): replay "
                           "needs the simulated task the data belongs to (datasets written from simulation carry "
                           "it; give convert_bag sim_task= / robostack data convert --sim-task)")
    row = dataset._row(episode)
    env = sim.make_env(task, num_envs=1, play=True, config=dataset.sim_task_config,
                       overrides=["sim.num_threads=1"])
    try:
        if abs(env.control_dt * dataset.fps - 1.0) > 1e-6:
            raise DatasetError(f"{dataset.root}: recorded at {dataset.fps} fps, task {task!r} steps at "
                               f"{1 / env.control_dt:g} Hz: replay applies one frame per control step")
        names = dataset.features["observation.state"]["names"] or []
        if len(names) != dataset.features["observation.state"]["shape"][0]:
            raise DatasetError(f"{dataset.root}: observation.state has no names: replay maps states to the model "
                               "by name")
        state_map = StateMap(env.default_model, names, f"{dataset.root} (task {task})")
        data = dataset.episode(episode, images=False)
        recorded, actions = data["observation.state"].astype(np.float64), data["action"]
        env.reset(seed=0)
        state_map.write(env.sim.qpos[0], env.sim.qvel[0], recorded[0])
        env.sim.forward(np.array([0]))
        replayed, ended_at = [recorded[0]], None
        for k in range(row["length"] - 1):
            _, _, _, _, info = env.step_controls(torch.as_tensor(actions[k:k + 1], dtype=torch.float32))
            if bool(info["done"][0]):  # the task ended the episode (a fall, the time limit): the env has reset
                ended_at = k + 1
                break
            replayed.append(state_map.read(env.sim.qpos, env.sim.qvel)[0])
    finally:
        env.close()
    error = np.abs(np.array(replayed) - recorded[:len(replayed)])
    groups: dict[str, list[int]] = {}
    for column, name in enumerate(names):
        owner, _, part = name.rpartition(".")
        groups.setdefault(owner if owner in BASE_STATE else f"joint_{'position' if part == 'pos' else 'velocity'}",
                          []).append(column)
    worst = int(error.max(0).argmax())
    return {"episode": episode, "task": task, "frames": row["length"], "replayed_frames": len(replayed),
            "ended_early_at": ended_at,
            "errors": {group: {"max": float(error[:, cols].max()), "mean": float(error[:, cols].mean()),
                               "final": float(error[-1, cols].max())} for group, cols in groups.items()},
            "worst": {"name": names[worst], "max_error": float(error[:, worst].max())}}


