"""Policies acting in a simulated task: a run (a checkpoint of any algorithm) or a bundle of any kind, loaded as
one ``LoadedPolicy`` that evaluation, residual training and benchmarks use alike.

A bundle acts in simulation through its kind's own actor (``robostack.specs.BundleKindSpec.actor``), the one the
robot's ``policy_node`` runs, reading the env through a ``SimSource``; a diffusion run acts through the same chunk
actor on its torch policy; a reinforcement-learning run through its algorithm's exporter.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import yaml

from robostack import registry
from robostack.bundle import (ACTOR_CRITIC, CHUNK, RESIDUAL, CommandCorrectionBundle, LoadedBundle,
                              ResidualPolicyBundle, VectorPolicyBundle, is_bundle, load_bundle)
from robostack.bundle.kinds import ChunkActor
from robostack.conventions import ACTION_KEY, IMAGE_PREFIX
from robostack.data.features import SimFrameReader, sim_features, state_columns
from robostack.workflows.render import CameraRenderer
from robostack.workflows.residual import ResidualEnv
from robostack.workflows.runs import LoadedRun, algorithm, load_run, run_algorithm

Policy = Callable[[dict[str, torch.Tensor]], torch.Tensor]
CHECKPOINT = "last.pt"  # the one checkpoint of an imitation run (its EMA policy)


@dataclass
class LoadedPolicy:
    """What acting in a task needs: which task (and its full config as trained), ``make_policy(env)`` (obs dict ->
    action batch), whether its output is actuator controls (``env.step_controls``) rather than the task's actions,
    the cameras it renders, and ``wrap_env(env)``: the env it acts in, where that is not the task's own (a
    residual run acts in a ``ResidualEnv``)."""

    kind: str  # "bundle" | "run"
    bundle_kind: str  # the bundle's, or the kind of bundle the run exports to
    task: str
    algo: str | None
    task_config: dict[str, Any]
    make_policy: Callable[[Any], Policy]
    controls: bool = False
    cameras: list[str] = field(default_factory=list)
    wrap_env: Callable[[Any], Any] | None = None
    bundle: LoadedBundle | None = None
    run: LoadedRun | None = None


class SimSource:
    """A batched env as an actor's ``ObservationSource``: the policy observation it was last given, the state as
    datasets record it (``SimFrameReader``) and, for policies that see images, each env's camera frames."""

    def __init__(self, env: Any, image_shapes: dict[str, tuple[int, int]] | None = None):
        self.env, self.obs = env, None
        self.reader = SimFrameReader(env)
        self.renderers = {key: CameraRenderer(env, key[len(IMAGE_PREFIX):], shape)
                          for key, shape in (image_shapes or {}).items()}

    def observation(self) -> np.ndarray:
        return self.obs["policy"].detach().cpu().numpy()

    def features(self) -> dict[str, np.ndarray]:
        return self.reader.read()

    def state_columns(self, names: list[str]) -> list[int]:
        return state_columns(self.env.default_model, self.reader.state_names, names, f"task {self.env.task.name!r}")

    def offset_command(self, offset: np.ndarray) -> None:
        self.env.offset_command(torch.from_numpy(np.asarray(offset, dtype=np.float32)))

    def images(self, keys: list[str]) -> dict[str, np.ndarray]:
        return {key: self.renderers[key].render_all() for key in keys}

    def close(self) -> None:
        for renderer in self.renderers.values():
            renderer.close()


class SimActor:
    """An actor (``robostack.bundle.kinds``) as a policy of a batched env: envs whose episode has just started
    (an automatic reset) start their actor state over."""

    def __init__(self, env: Any, actor: Any, source: SimSource):
        self.env, self.actor, self.source = env, actor, source

    def __call__(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        self.source.obs = obs
        self.actor.reset(np.flatnonzero(self.env.episode_length.cpu().numpy() == 0))
        return torch.from_numpy(np.asarray(self.actor.act(), dtype=np.float32)).to(self.env.device)

    def close(self) -> None:
        self.source.close()


def _check_chunk_fits(env: Any, state_dim: int, act_dim: int, state_keys: list[str], controls: bool) -> None:
    features = sim_features(env)
    missing = [key for key in state_keys if key not in features]
    if missing:
        raise ValueError(f"task {env.task.name!r} does not provide {missing} (it records {sorted(features)})")
    width = sum(features[key]["shape"][0] for key in state_keys)
    takes = env.ctrl.shape[1] if controls else env.action_dim
    if width != state_dim or takes != act_dim:
        raise ValueError(f"the policy reads {state_dim} state values and writes {act_dim} "
                         f"{'controls' if controls else 'actions'}; task {env.task.name!r} gives {width} and "
                         f"takes {takes}")


def _bundle_policy(path: Path) -> LoadedPolicy:
    bundle = load_bundle(path)
    meta = bundle.metadata
    kind = registry.bundle_kind(meta.get("kind", ACTOR_CRITIC))
    image_shapes = dict(getattr(bundle, "image_shapes", {}))

    def make_policy(env: Any) -> SimActor:
        acting = bundle.base if isinstance(bundle, CommandCorrectionBundle) else bundle  # reads what its base reads
        if isinstance(acting, VectorPolicyBundle):
            obs_dim = int(env.observation_spaces["policy"].shape[-1])
            obs_dim += env.action_dim if isinstance(acting, ResidualPolicyBundle) else 0
            if obs_dim != acting.obs_dim or env.action_dim != acting.action_dim:
                raise ValueError(f"bundle {path} expects {acting.obs_dim} observations and {acting.action_dim} "
                                 f"actions, the env has {obs_dim} and {env.action_dim}")
        else:
            _check_chunk_fits(env, bundle.state_dim, bundle.act_dim, [t["name"] for t in meta["observation"]["terms"]],
                              meta["action"].get("kind") == "controls")
        source = SimSource(env, image_shapes)
        return SimActor(env, kind.actor(bundle, source, num_envs=env.num_envs, seed=0), source)

    return LoadedPolicy("bundle", kind.name, meta["task"], meta.get("algo"), meta["task_config"], make_policy,
                        controls=meta["action"].get("kind") == "controls",
                        cameras=[key[len(IMAGE_PREFIX):] for key in image_shapes], bundle=bundle)


def _imitation_policy(run_dir: Path) -> LoadedPolicy:
    """A diffusion run (``robostack.workflows.imitation``): its checkpointed policy through the chunk actor."""
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    ckpt_path = run_dir / "checkpoints" / CHECKPOINT
    if not ckpt_path.is_file():
        raise FileNotFoundError(f"{run_dir}: no checkpoints/{CHECKPOINT} (did the training finish?)")
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    from robostack.policies.diffusion import DiffusionPolicy

    policy = DiffusionPolicy.from_checkpoint(ckpt["policy"], str(ckpt_path))
    train_cfg = saved.get("train", {})
    controls = ckpt.get("action_key", ACTION_KEY) == ACTION_KEY
    state_keys = list(ckpt["state_keys"])

    def make_policy(env: Any) -> SimActor:
        _check_chunk_fits(env, policy.state_dim, policy.act_dim, state_keys, controls)
        source = SimSource(env, policy.image_shapes)
        actor = ChunkActor(policy, source, state_keys, train_cfg.get("query_every"),
                           train_cfg.get("ensemble_coef", 0.01), controls, env.num_envs, 0)
        return SimActor(env, actor, source)

    return LoadedPolicy("run", CHUNK, saved["task"], saved.get("algo"), saved.get("task_config"), make_policy,
                        controls=controls, cameras=list(ckpt["cameras"]))


def load_policy(source: str | os.PathLike, checkpoint: str | os.PathLike | None = None) -> LoadedPolicy:
    """A run folder (or checkpoint file) of any algorithm, or a bundle of any kind, ready to act in its task."""
    path = Path(source)
    spec = run_algorithm(path) if path.is_dir() else None
    if spec is not None and spec.trains_with == "imitation":
        if checkpoint is not None:
            raise ValueError(f"{path} is a {spec.name} run: it keeps one checkpoint, give no --checkpoint")
        return _imitation_policy(path)
    if is_bundle(path):
        return _bundle_policy(path)
    run = load_run(path, checkpoint)
    wrap_env = None
    if run.residual_base:  # a residual on a frozen base (robostack.workflows.residual): the base acts in the env
        base, scale = load_base(run.residual_base, run.task), run.train_config["residual"]["scale"]

        def wrap_env(env: Any) -> ResidualEnv:
            return ResidualEnv(env, base.make_policy(env), scale)

    def make_policy(env: Any) -> Policy:
        module = run.policy_module(env)

        def policy(obs: dict[str, Any]) -> Any:
            with torch.no_grad():
                return module(obs["policy"].to("cpu", torch.float32)).to(env.device)

        return policy

    kind = RESIDUAL if run.residual_base else algorithm(run.algo).bundle_kind
    return LoadedPolicy("run", kind, run.task, run.algo, run.task_config, make_policy, wrap_env=wrap_env, run=run)


def load_base(source: str | os.PathLike, task: str) -> LoadedPolicy:
    """The base policy of a residual, after checking it can carry one: a chunk policy of ``task`` acting in the
    task's actions."""
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"residual base {source}: no such run folder or bundle")
    base = load_policy(path)
    if base.task != task:
        raise ValueError(f"residual base {source} was trained for task {base.task!r}, not {task!r}")
    if base.bundle_kind != CHUNK:
        raise ValueError(f"residual base {source} is a {base.algo!r} policy; the base is a diffusion run "
                         "or chunk bundle (robostack train TASK --dataset DATASET)")
    if base.controls:
        raise ValueError(f"residual base {source} writes actuator controls; a residual corrects the task's "
                         "actions, so train the base with action_key: teleop.action")
    return base
