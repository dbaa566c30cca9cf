"""``robostack export``: a finished run to the policy bundle deployment runs (``robostack.bundle``).

The kind of bundle is the run's: its algorithm's ``bundle_kind`` (``robostack.specs.AlgorithmSpec``), or
``residual`` for a reinforcement-learning run on a frozen base. Each kind has one writer here; every bundle's
metadata gets the same stamp (format version, creation time, RoboStack version) and training block (where the
run is, what it trained with, how long).
"""
from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import torch
import yaml

import robostack
from robostack import sim
from robostack.bundle import (ACTOR_CRITIC, BASE_DIR, COMMAND_CORRECTION, FORMAT_VERSION, RESIDUAL,
                              RESIDUAL_BASE_TERM, BundleError, is_bundle, load_bundle)
from robostack.bundle.describe import describe_env, describe_observation, describe_robot
from robostack.bundle.format import CHUNK_OUTPUT, COMMAND_CORRECTION_RULE, ONNX_OPSET, RESIDUAL_EXECUTED
from robostack.bundle.kinds import (check_command_correction, check_command_correction_base, check_residual,
                                    check_residual_base)
from robostack.bundle.write import write_bundle, write_vector_onnx, write_vector_torchscript
from robostack.conventions import ACTION_KEY, IMAGE_PREFIX
from robostack.data.features import FEATURE_DEFINITIONS, sim_features
from robostack.workflows.acting import CHECKPOINT, load_base
from robostack.workflows.residual import BASE_ACTION_DEFINITION, ResidualEnv
from robostack.workflows.runs import LoadedRun, algorithm, load_run, run_algorithm


BASE_FACTS = ("task", "control_rate_hz", "control_dt", "max_episode_length", "action")  # a residual's, from its base


def _stamp(kind: str, algo: str) -> dict[str, Any]:
    return {"format_version": FORMAT_VERSION, "kind": kind, "algo": algo,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "robostack_version": robostack.__version__}


def _rl_training(run: LoadedRun) -> dict[str, Any]:
    """The training block of a reinforcement-learning run's bundle."""
    ck = run.ckpt
    return {"task_overrides": list(run.task_overrides), "train_config": run.train_config,
            "run_dir": str(run.run_dir.resolve()), "checkpoint": str(run.checkpoint.resolve()),
            "iteration": ck.get("iteration"), "env_steps": ck.get("env_steps"), "wall_s": ck.get("wall_s")}


def _vector_writers(module: Any, obs_dim: int) -> tuple[Callable[[Path], None], Callable[[Path], None]]:
    return (lambda path: write_vector_onnx(module, obs_dim, path),
            lambda path: write_vector_torchscript(module, obs_dim, path))


def export_vector(run: LoadedRun, out_dir: str | os.PathLike) -> Path:
    """An actor-critic bundle: the run's deterministic policy, observation vector in, action out."""
    env = run.make_env(num_envs=1, seed=0, play=True)
    try:
        env.reset(seed=0)
        facts = describe_env(env)
        module = run.policy_module(env)
        obs_dim, act_dim = facts["observation"]["dim"], facts["action"]["dim"]
        with torch.no_grad():
            probe = module(torch.zeros(1, obs_dim))
        if tuple(probe.shape) != (1, act_dim):
            raise ValueError(f"policy of {run.checkpoint} maps [1, {obs_dim}] to {list(probe.shape)}, expected "
                             f"[1, {act_dim}]")
    finally:
        env.close()
    metadata = {**_stamp(ACTOR_CRITIC, run.algo), **facts, "task_config": run.task_config,
                "training": _rl_training(run)}
    return write_bundle(out_dir, metadata, *_vector_writers(module, obs_dim))


def _chunk_action(env: Any, features: dict[str, Any], controls: bool) -> dict[str, Any]:
    """A chunk bundle's action: absolute actuator controls, or the task's end-effector steps and gripper."""
    model = env.default_model
    if controls:
        limited = model.actuator_ctrllimited.astype(bool)
        return {"kind": "controls", "dim": model.nu, "names": features[ACTION_KEY]["names"],
                "actuators": [model.actuator(i).name for i in range(model.nu)],
                "ctrl_min": [float(lo) if on else None for (lo, _), on in zip(model.actuator_ctrlrange, limited)],
                "ctrl_max": [float(hi) if on else None for (_, hi), on in zip(model.actuator_ctrlrange, limited)]}
    names = ["x", "y", "z", "rx", "ry", "rz"][:env.action_dim] if env.task.action.ik is not None else []
    names += ["gripper"] if env.task.action.gripper is not None else []
    if len(names) != env.action_dim:
        raise ValueError(f"task {env.task.name!r}: its actions are not end-effector steps (and a gripper); "
                         "a chunk bundle describes actuator controls or those")
    return {"kind": "task", "dim": env.action_dim, "names": names, "range": [-1.0, 1.0],
            "ik": {"site": env.task.action.ik.site, "ee_step": [float(v) for v in env.task_cfg.ee_step]}}


def export_chunk(run_dir: Path, out_dir: str | os.PathLike) -> Path:
    """A chunk bundle of an imitation run: every denoising step of one chunk as one ONNX graph (and TorchScript),
    with the observation names, the actions and the chunk settings it runs with."""
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    spec = algorithm(saved["algo"])
    ckpt = torch.load(run_dir / "checkpoints" / CHECKPOINT, map_location="cpu", weights_only=False)
    controls = ckpt.get("action_key", ACTION_KEY) == ACTION_KEY
    module = spec.exporter(ckpt["policy"])
    policy = module.policy
    env = sim.make_env(saved["task"], num_envs=1, play=True, config=saved.get("task_config"),
                       overrides=["sim.num_threads=1"])
    try:
        features = sim_features(env)
        terms, offset = [], 0
        for key in ckpt["state_keys"]:
            names = features[key]["names"]
            terms.append({"name": key, "dim": len(names), "names": names, "offset_in_vector": offset,
                          "definition": FEATURE_DEFINITIONS[key]})
            offset += len(names)
        facts = {**describe_robot(env.task, env.default_model), "task": env.task.name,
                 "control_rate_hz": 1.0 / env.control_dt, "control_dt": env.control_dt,
                 "max_episode_length": int(env.max_episode_length), "action": _chunk_action(env, features, controls)}
    finally:
        env.close()
    train_cfg = saved.get("train", {})
    metadata = {
        **_stamp(spec.bundle_kind, spec.name), **facts,
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


def write_residual_bundle(out_dir: str | os.PathLike, base: str | os.PathLike, module: torch.nn.Module, scale: float,
                          algo: str, training: dict[str, Any], task_config: dict[str, Any] | None = None) -> Path:
    """A residual bundle over the bundle at ``base`` (an actor-critic, or a chunk bundle acting in the task's
    actions), copied into ``base/`` and sealed by the residual's hash. ``module`` maps the task's policy
    observation then the base's action, ``[B, obs_dim + act_dim]``, to the correction ``[B, act_dim]``, clipped
    to [-1, 1] here; the executed action is ``residual_executed`` with ``scale``. ``task_config`` (default: the
    base's) is the task's config as the residual trained with it; ``algo`` and ``training`` say how it was
    learned. Any residual learner (residual RL, corrections learned from interventions) writes through here."""
    base_dir = Path(base)
    base_bundle = load_bundle(base_dir)
    base_meta = base_bundle.metadata
    task_config = base_meta["task_config"] if task_config is None else task_config
    env = sim.make_env(base_meta["task"], num_envs=1, play=True, config=task_config, overrides=["sim.num_threads=1"])
    try:
        env.reset(seed=0)
        observation = describe_observation(env)
        robot = describe_robot(env.task, env.default_model)
    finally:
        env.close()
    n = int(base_meta["action"]["dim"])
    observation["terms"].append({"name": RESIDUAL_BASE_TERM, "dim": n, "scale": 1.0,
                                 "offset_in_vector": observation["dim"], "definition": BASE_ACTION_DEFINITION})
    observation["dim"] += n
    metadata = {
        **_stamp(RESIDUAL, algo), **robot,
        **{key: base_meta[key] for key in BASE_FACTS},
        "observation": observation,
        "residual": {"scale": float(scale), "executed": RESIDUAL_EXECUTED},
        "task_config": task_config,
        "training": training,
        "base": {"path": BASE_DIR, "content_hash": base_meta["content_hash"]},
    }
    where = f"cannot write a residual bundle to {out_dir}"
    check_residual(metadata, lambda what: BundleError(f"{where}: {what}"))
    check_residual_base(where, metadata, base_bundle)
    bounded = torch.nn.Sequential(module, torch.nn.Hardtanh(-1.0, 1.0))
    try:
        with torch.no_grad():
            shape = list(bounded(torch.zeros(1, observation["dim"])).shape)
    except RuntimeError as exc:
        shape = f"an error ({str(exc).splitlines()[0]})"
    if shape != [1, n]:
        raise ValueError(f"{where}: the module maps [1, {observation['dim']}] (the policy observation, then the base's "
                         f"action) to {shape}, expected [1, {n}]")
    return write_bundle(out_dir, metadata, *_vector_writers(bounded, observation["dim"]),
                        lambda path: shutil.copytree(base_dir, path))


STAMP_AND_SEAL = ("format_version", "kind", "algo", "created", "robostack_version", "training", "files", "content_hash",
                  "critic")  # what a bundle over a base does not take from it


def write_command_correction(out_dir: str | os.PathLike, base: str | os.PathLike, module: torch.nn.Module,
                             block: dict[str, Any], algo: str, training: dict[str, Any]) -> Path:
    """A command correction of the actor-critic bundle at ``base`` (copied into ``base/``, sealed by the
    correction's hash): ``module`` maps the command's error on ``block["tracks"]`` and the ``block["inputs"]``
    state values to the rate of the command's offset; ``block`` also holds the limits
    (``robostack.bundle.format.COMMAND_CORRECTION_RULE``). Its observation, action and robot are the base's."""
    base_dir = Path(base)
    base_bundle = load_bundle(base_dir)
    where = f"cannot write a command correction to {out_dir}"
    metadata = {**_stamp(COMMAND_CORRECTION, algo),
                **{key: value for key, value in base_bundle.metadata.items() if key not in STAMP_AND_SEAL},
                COMMAND_CORRECTION: {**block, "rule": COMMAND_CORRECTION_RULE}, "training": training,
                "base": {"path": BASE_DIR, "content_hash": base_bundle.metadata["content_hash"]}}
    check_command_correction(metadata, lambda what: BundleError(f"{where}: {what}"))
    check_command_correction_base(where, metadata, base_bundle)
    n, width = len(block["tracks"]), len(block["tracks"]) + len(block["inputs"])
    with torch.no_grad():
        shape = list(module(torch.zeros(1, width)).shape)
    if shape != [1, n]:
        raise ValueError(f"{where}: the module maps [1, {width}] to {shape}, expected [1, {n}]")
    return write_bundle(out_dir, metadata, *_vector_writers(module, width),
                        lambda path: shutil.copytree(base_dir, path))


def export_residual(run: LoadedRun, out_dir: str | os.PathLike) -> Path:
    """A residual run's bundle (``write_residual_bundle``): its policy over its base, a chunk bundle or the chunk
    bundle of its diffusion run."""
    residual = run.train_config["residual"]
    base_source = Path(residual["base"])
    base = load_base(base_source, run.task)
    task_env = run.make_env(num_envs=1, seed=0, play=True)
    env = ResidualEnv(task_env, base.make_policy(task_env), residual["scale"])
    try:
        module = run.policy_module(env)  # sized from the residual env's observation (with the base's action)
    finally:
        env.close()
    with tempfile.TemporaryDirectory() as tmp:
        base_dir = base_source if is_bundle(base_source) else export_chunk(base_source, Path(tmp) / BASE_DIR)
        return write_residual_bundle(out_dir, base_dir, module, residual["scale"], run.algo, _rl_training(run),
                                     run.task_config)


def export_bundle(source: str | os.PathLike, out_dir: str | os.PathLike,
                  checkpoint: str | os.PathLike | None = None) -> Path:
    """Write the bundle of a run folder or checkpoint file to ``out_dir``; returns its path. ``out_dir`` may be
    new, empty or an older bundle (replaced); anything else in it is refused."""
    path = Path(source)
    spec = run_algorithm(path) if path.is_dir() else None
    if spec is not None and spec.trains_with == "imitation":
        if checkpoint is not None:
            raise ValueError(f"{path} is a {spec.name} run: it keeps one checkpoint, give no --checkpoint")
        return export_chunk(path, out_dir)
    run = load_run(source, checkpoint)
    kind = RESIDUAL if run.residual_base else algorithm(run.algo).bundle_kind
    writers = {ACTOR_CRITIC: export_vector, RESIDUAL: export_residual}
    if kind not in writers:
        raise ValueError(f"{run.run_dir}: a {run.algo!r} run exports {kind!r} bundles, which come from imitation runs")
    return writers[kind](run, out_dir)
