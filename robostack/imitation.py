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

In simulation the same observations come from ``robostack.dataset.sim_frame`` and the task's cameras, so
a dataset written by ``robostack teleop`` trains here without any conversion step. Episodes recorded as
failures are left out of training (``successful_only``).

A run folder (``runs/<task>/<stamp>-diffusion/``) holds ``config.yaml`` (task, dataset, the task config as
recorded, the recipe), ``checkpoints/last.pt`` (the EMA policy), ``metrics.csv`` (loss and learning rate)
and ``summary.yaml``.
"""
from __future__ import annotations

import copy
import csv
import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import yaml

from robostack.config import ConfigError, config_path, load_config, to_dict
from robostack.dataset import Dataset, DatasetError, load_dataset
from robostack.eval_policy import IMITATION_ALGO
from robostack.policies.diffusion import (ACTION_KEY, IMAGE_PREFIX, STATE_KEY, ChunkExecutor, DiffusionConfig,
                                          DiffusionPolicy, train_diffusion)

__all__ = ["ImitationConfig", "train_imitation", "load_imitation_run", "SimChunkPolicy", "export_chunk_bundle",
           "bench_imitation", "dataset_episodes"]

ALGO = IMITATION_ALGO
CHECKPOINT = "last.pt"
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
        raise ConfigError(f"{path}: algo {cfg.algo!r}: learning from a dataset runs algo {ALGO!r}")
    return cfg


def train_imitation(task: str, dataset: str | os.PathLike, overrides: Sequence[str] = (), seed: int | None = None,
                    run_root: str = "runs", progress: bool = True, config: str | os.PathLike | None = None
                    ) -> dict[str, Any]:
    """Train a diffusion policy for ``task`` on ``dataset``; returns the summary (run_dir, wall_s, final loss,
    and the play-variant evaluation unless ``eval_episodes=0``)."""
    from robostack.train import available_cores, new_run_dir

    cfg = _recipe(task, overrides, config)
    if seed is not None:
        cfg.diffusion.seed = seed
    data = load_dataset(dataset)
    recorded_task = data.info.get("robostack.task")
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
    task_config = data.info.get("robostack.task_config")
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

        policy = train_diffusion(episodes, cfg.diffusion, progress=progress, on_step=on_step,
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
        from robostack.eval_policy import eval_policy

        result = eval_policy(run_dir, episodes=cfg.eval_episodes, num_envs=min(cfg.eval_num_envs, cfg.eval_episodes),
                             seed=cfg.diffusion.seed + 1)
        summary.update({k: v for k, v in result.items() if k not in summary and k not in ("source", "kind")})
    with (run_dir / "summary.yaml").open("w") as f:
        yaml.safe_dump({k: (float(v) if isinstance(v, (float, np.floating)) else v) for k, v in summary.items()},
                       f, sort_keys=False)
    return summary


# -------------------------------------------------------------------------------------- in the task


class SimChunkPolicy:
    """A diffusion policy acting in a ``TaskEnv``: observations as ``sim_frame`` records them (and the task's
    cameras), actuator controls out (for ``env.step_controls``), or with ``controls=False`` the task's actions
    (for ``env.step``). Envs whose episode has just started (an automatic reset) start their chunk history
    over."""

    def __init__(self, env: Any, policy: DiffusionPolicy, state_keys: Sequence[str], cameras: Sequence[str] = (),
                 query_every: int | None = None, ensemble_coef: float = 0.01, seed: int = 0, controls: bool = True):
        from robostack.dataset import SimFrameReader, sim_features

        features = sim_features(env)
        missing = [key for key in state_keys if key not in features]
        if missing:
            raise ValueError(f"task {env.task.name!r} does not provide {missing} (it records {sorted(features)})")
        width = sum(features[key]["shape"][0] for key in state_keys)
        takes = env.ctrl.shape[1] if controls else env.action_dim
        if width != policy.state_dim or takes != policy.act_dim:
            raise ValueError(f"the policy reads {policy.state_dim} state values and writes {policy.act_dim} "
                             f"{'controls' if controls else 'actions'}; task {env.task.name!r} gives {width} and "
                             f"takes {takes}")
        self.env, self.state_keys, self.cameras = env, list(state_keys), list(cameras)
        self.frame_reader = SimFrameReader(env)
        self.executor = ChunkExecutor(policy, env.num_envs, query_every, ensemble_coef, seed)
        self.renderers = {camera: _CameraRenderer(env, camera, policy.image_shapes[IMAGE_PREFIX + camera])
                          for camera in self.cameras}

    def __call__(self, _obs: Any = None) -> torch.Tensor:
        env = self.env
        self.executor.reset(np.flatnonzero(env.episode_length.cpu().numpy() == 0))
        frame = self.frame_reader.read()
        observation = {STATE_KEY: np.concatenate([frame[key] for key in self.state_keys], axis=1)}
        for camera, renderer in self.renderers.items():
            observation[IMAGE_PREFIX + camera] = renderer.render_all()
        return torch.from_numpy(self.executor.step(observation)).to(env.device)

    def close(self) -> None:
        for renderer in self.renderers.values():
            renderer.close()


class _CameraRenderer:
    """One offscreen renderer for a camera of every env: each env's own model (randomized camera pose and
    lighting) is copied into the renderer's before its frame is drawn."""

    FIELDS = ("cam_pos", "cam_quat", "cam_fovy", "light_pos", "light_dir", "light_diffuse", "light_ambient",
              "light_specular")

    def __init__(self, env: Any, camera: str, shape: tuple[int, int]):
        from robostack.eval_policy import camera_renderer

        self.env, self.camera = env, camera
        self.model = copy.copy(env.sim.models[0])  # written to before each frame: not the env's own
        height, width = shape
        self.renderer = camera_renderer(self.model, camera, width, height, f"task {env.task.name!r}")

    def render_all(self) -> np.ndarray:
        frames = []
        for i in range(self.env.num_envs):
            source = self.env.sim.models[i]
            for name in self.FIELDS:
                getattr(self.model, name)[:] = getattr(source, name)
            self.renderer.update_scene(self.env.sim.data_for(i), camera=self.camera)
            frames.append(self.renderer.render())
        return np.stack(frames)

    def close(self) -> None:
        self.renderer.close()


def load_imitation_run(path: str | os.PathLike) -> dict[str, Any]:
    """What ``robostack.eval_policy.eval_policy`` needs to run a diffusion run in its task (see ``load_policy``)."""
    run_dir = Path(path)
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    ckpt_path = run_dir / "checkpoints" / CHECKPOINT
    if not ckpt_path.is_file():
        raise FileNotFoundError(f"{run_dir}: no checkpoints/{CHECKPOINT} (did the training finish?)")
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    policy = DiffusionPolicy.from_checkpoint(ckpt["policy"], str(ckpt_path))
    train_cfg = saved.get("train", {})

    controls = ckpt.get("action_key", ACTION_KEY) == ACTION_KEY

    def make_policy(env: Any) -> SimChunkPolicy:
        return SimChunkPolicy(env, policy, ckpt["state_keys"], ckpt["cameras"], train_cfg.get("query_every"),
                              train_cfg.get("ensemble_coef", 0.01), controls=controls)

    return {"kind": "run", "task": saved["task"], "algo": ALGO, "task_config": saved.get("task_config"),
            "make_policy": make_policy, "controls": controls, "cameras": ckpt["cameras"]}


def chunk_bundle_policy(bundle: Any) -> dict[str, Any]:
    """``load_imitation_run`` for a chunk bundle (``robostack.bundle.ChunkPolicyBundle``)."""
    meta = bundle.metadata
    chunk, cameras = meta["chunk"], list(meta["observation"].get("images", {}))

    controls = meta["action"].get("kind", "controls") == "controls"

    def make_policy(env: Any) -> SimChunkPolicy:
        return SimChunkPolicy(env, bundle, [term["name"] for term in meta["observation"]["terms"]], cameras,
                              chunk.get("query_every"), chunk.get("ensemble_coef", 0.01), controls=controls)

    return {"kind": "bundle", "task": meta["task"], "robot": meta["robot"], "algo": meta.get("algo"),
            "task_config": meta["task_config"], "make_policy": make_policy, "controls": controls, "cameras": cameras,
            "bundle": bundle}


# ---------------------------------------------------------------------------------------------- export


def export_chunk_bundle(run: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """The policy bundle of a diffusion run (``"kind": "chunk"``, see ``robostack.bundle``): every denoising
    step of one chunk as one ONNX graph (and TorchScript), with the observation names, the controls and the
    chunk settings it runs with."""
    import warnings

    import robostack
    from robostack import sim
    from robostack.bundle import CHUNK, CHUNK_OUTPUT, FORMAT_VERSION, ONNX_OPSET, describe_robot, write_bundle
    from robostack.dataset import FEATURE_DEFINITIONS, sim_features

    run_dir = Path(run)
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    if saved.get("algo") != ALGO:
        raise ValueError(f"{run_dir} is not a diffusion run (algo {saved.get('algo')!r})")
    ckpt = torch.load(run_dir / "checkpoints" / CHECKPOINT, map_location="cpu", weights_only=False)
    controls = ckpt.get("action_key", ACTION_KEY) == ACTION_KEY
    policy = DiffusionPolicy.from_checkpoint(ckpt["policy"], str(run_dir))
    module = policy.export_module()
    env = sim.make_env(saved["task"], num_envs=1, play=True, config=saved.get("task_config"),
                       overrides=["sim.num_threads=1"])
    try:
        features, model = sim_features(env), env.default_model
        terms, offset = [], 0
        for key in ckpt["state_keys"]:
            names = features[key]["names"]
            terms.append({"name": key, "dim": len(names), "names": names, "offset_in_vector": offset,
                          "definition": FEATURE_DEFINITIONS[key]})
            offset += len(names)
        limited = model.actuator_ctrllimited.astype(bool)
        if controls:
            action = {"kind": "controls", "dim": model.nu, "names": features["action"]["names"],
                      "actuators": [model.actuator(i).name for i in range(model.nu)],
                      "ctrl_min": [float(lo) if on else None for (lo, _), on in zip(model.actuator_ctrlrange, limited)],
                      "ctrl_max": [float(hi) if on else None for (_, hi), on in zip(model.actuator_ctrlrange, limited)]}
        else:  # the task's own actions: end-effector steps through its differential IK, then the gripper
            names = ["x", "y", "z", "rx", "ry", "rz"][:env.action_dim] if env.task.action.ik is not None else []
            names += ["gripper"] if env.task.action.gripper is not None else []
            if len(names) != env.action_dim:
                raise ValueError(f"task {env.task.name!r}: its actions are not end-effector steps (and a gripper); "
                                 "a chunk bundle describes actuator controls or those")
            action = {"kind": "task", "dim": env.action_dim, "names": names, "range": [-1.0, 1.0],
                      "ik": {"site": env.task.action.ik.site, "ee_step": [float(v) for v in env.task_cfg.ee_step]}}
        facts = {
            **describe_robot(env.task, model), "task": env.task.name, "control_rate_hz": 1.0 / env.control_dt,
            "control_dt": env.control_dt, "max_episode_length": int(env.max_episode_length), "action": action,
        }
    finally:
        env.close()
    train_cfg = saved.get("train", {})
    metadata = {
        "format_version": FORMAT_VERSION, "kind": CHUNK, "algo": ALGO, **facts,
        "observation": {"dim": offset, "terms": terms,
                        "images": {key[len(IMAGE_PREFIX):]: list(hw) for key, hw in policy.image_shapes.items()}},
        "chunk": {"n_obs_steps": policy.cfg.n_obs_steps, "horizon": policy.cfg.horizon,
                  "n_action_steps": policy.cfg.n_action_steps, "num_inference_steps": policy.cfg.num_inference_steps,
                  "query_every": train_cfg.get("query_every"), "ensemble_coef": train_cfg.get("ensemble_coef", 0.01),
                  "inputs": module.input_names},
        "task_config": saved.get("task_config"),
        "training": {"run_dir": str(run_dir.resolve()), "dataset": saved.get("dataset"),
                     "demonstrations": saved.get("dataset_episodes"), "train_config": train_cfg,
                     "steps": ckpt.get("steps"), "wall_s": ckpt.get("wall_s")},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "robostack_version": robostack.__version__,
    }
    example = module.example_inputs()

    def write_onnx(path: Path) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the legacy (TorchScript-based) exporter warns it is legacy
            torch.onnx.export(module, example, str(path), dynamo=False, input_names=module.input_names,
                              output_names=[CHUNK_OUTPUT], opset_version=ONNX_OPSET,
                              dynamic_axes={name: {0: "batch"} for name in [*module.input_names, CHUNK_OUTPUT]})

    def write_torchscript(path: Path) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.jit.trace(module, example).save(str(path))

    return write_bundle(out_dir, metadata, write_onnx, write_torchscript)


# ------------------------------------------------------------------------------------------ benchmark


def bench_imitation(task: str, demos: int = 200, episodes: int = 200, seed: int = 0, overrides: Sequence[str] = (),
                    cameras: Sequence[str] = (), workdir: str | os.PathLike | None = None, run_root: str = "runs",
                    expert_noise: float = 0.0) -> dict[str, Any]:
    """``robostack bench imitation``: ``demos`` scripted demonstrations under the task's randomization
    (``robostack teleop --device scripted --randomized``), a diffusion policy trained on them with the task's
    recipe, then ``episodes`` episodes of the randomized task. Each stage's wall time is reported.
    ``expert_noise``: see ``robostack.teleop.ScriptedTeleop``."""
    import tempfile

    from robostack.eval_policy import eval_policy
    from robostack.teleop import record

    if len(cameras) > 1:
        raise ValueError("the scripted recording renders one camera")
    workdir = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix=f"bench-{task}-"))
    dataset = workdir / "demonstrations"
    start = time.perf_counter()
    with open(os.devnull, "w") as quiet:
        recorded = record(task, "scripted", str(dataset), episodes=demos, seed=seed, randomized=True,
                          camera=cameras[0] if cameras else None, status=quiet, expert_noise=expert_noise)
    record_wall_s = time.perf_counter() - start
    camera_overrides = [f"cameras=[{', '.join(cameras)}]"] if cameras else []
    summary = train_imitation(task, dataset, [*overrides, *camera_overrides, "eval_episodes=0"], seed=seed,
                              run_root=run_root, progress=False)
    start = time.perf_counter()
    result = eval_policy(summary["run_dir"], episodes=episodes, randomized=True, num_envs=min(episodes, 50),
                         seed=seed + 1)
    return {
        "task": task, "algo": ALGO, "cameras": list(cameras), "expert_noise": expert_noise,
        "demonstrations": summary["demonstrations"], "recorded_episodes": recorded["kept"],
        "expert_successes": recorded["successes"], "record_wall_s": round(record_wall_s, 2),
        "train_steps": summary["steps"], "wall_s": summary["wall_s"], "final_loss": summary["final_loss"],
        "success_rate": result["success_rate"], "eval_episodes": result["episodes"],
        **{k: v for k, v in result.items() if k.startswith("metric/")},
        "eval_wall_s": round(time.perf_counter() - start, 2),
        "dataset": str(dataset), "run_dir": summary["run_dir"],
    }
