"""Run folders: where training writes (``runs/<task>/<stamp>-<algo>/``) and how a finished run is read back.

A run folder holds ``config.yaml`` (task, algo, the task config it trained with, the recipe) and
``checkpoints/``; ``load_run`` brings a reinforcement-learning checkpoint back with its algorithm's exporter
(``robostack.specs.AlgorithmSpec``), ``run_algorithm`` says which algorithm wrote a folder without torch.
"""
from __future__ import annotations

import itertools
import os
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from robostack import policies, registry, sim
from robostack.config import from_dict, to_dict
from robostack.specs import AlgorithmSpec


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def new_run_dir(run_root: str | Path, task: str, algo: str) -> Path:
    base = Path(run_root) / task
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base.mkdir(parents=True, exist_ok=True)
    for k in itertools.count():
        run_dir = base / (f"{stamp}-{algo}" if k == 0 else f"{stamp}-{algo}-{k}")
        try:  # the mkdir itself decides: two runs started in the same second each get their own folder
            run_dir.mkdir()
            return run_dir
        except FileExistsError:
            continue


def algorithm(name: str) -> AlgorithmSpec:
    """The registered algorithm ``name`` (every algorithm of ``robostack.policies`` loaded first)."""
    policies.load()
    return registry.algorithm(name)


def run_algorithm(path: str | os.PathLike) -> AlgorithmSpec | None:
    """The algorithm that wrote run folder ``path`` (from its config.yaml), or None when it is not a run."""
    config = Path(path) / "config.yaml"
    if not config.is_file():
        return None
    name = (yaml.safe_load(config.read_text()) or {}).get("algo")
    return algorithm(name) if isinstance(name, str) else None


def _resolve_source(source: str | os.PathLike, checkpoint: str | os.PathLike | None = None) -> tuple[Path, Path]:
    """(run_dir, checkpoint file) from a run folder or a checkpoint file (``checkpoint`` wins if given)."""
    path = Path(source)
    if not path.exists() and not path.is_absolute() and len(path.parts) == 1:
        found = sorted(Path("runs").glob(f"*/{path}"))  # a bare run name: look under ./runs/<task>/
        if len(found) == 1:
            path = found[0]
    if not path.exists():
        raise FileNotFoundError(f"no run folder or checkpoint at {source}")
    if path.is_file():
        ckpt = path
        run_dir = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    else:
        run_dir = path
        ckpt = run_dir / "checkpoints" / "last.pt"
    if checkpoint is not None:
        ckpt = Path(checkpoint)
        if not ckpt.exists() and (run_dir / "checkpoints" / ckpt).exists():
            ckpt = run_dir / "checkpoints" / ckpt
    if not ckpt.is_file():
        raise FileNotFoundError(f"no checkpoint at {ckpt} (a run folder has checkpoints/last.pt)")
    return run_dir, ckpt


class LoadedRun:
    """A reinforcement-learning checkpoint brought back to life: its task, env settings and deterministic policy."""

    def __init__(self, run_dir: Path, checkpoint: Path, ckpt: dict[str, Any], config: dict[str, Any]):
        self.run_dir, self.checkpoint, self.ckpt, self.config = run_dir, checkpoint, ckpt, config
        self.task: str = ckpt.get("task") or config.get("task")
        train_cfg = ckpt.get("train_config") or config.get("train") or {}
        self.train_config: dict[str, Any] = dict(train_cfg)
        self.algo: str = ckpt.get("algo") or self.train_config.get("algo") or config.get("algo") or "ppo"
        overrides = ckpt.get("task_overrides")
        self.task_overrides: list[str] = list(overrides if overrides is not None else config.get("task_overrides", []))
        if not self.task:
            raise ValueError(f"checkpoint {checkpoint}: does not say which task it was trained on")
        self._task_config: dict[str, Any] | None = ckpt.get("task_config") or config.get("task_config")

    @property
    def task_config(self) -> dict[str, Any]:
        """The full task config the run trained with, so its task is rebuilt exactly even after the task's YAML
        file changes (runs written before it was saved: the current YAML + the run's overrides)."""
        if self._task_config is None:
            self._task_config = to_dict(sim.load_task_config(self.task, self.task_overrides))
        return self._task_config

    @property
    def residual_base(self) -> str | None:
        """The frozen base a residual run corrects (``robostack.workflows.residual``), None for plain RL."""
        return (self.train_config.get("residual") or {}).get("base")

    def policy_module(self, env: Any) -> Any:
        """Deterministic ``raw policy obs -> action`` torch module (eval mode, on CPU), by the run's algorithm."""
        spec = algorithm(self.algo)
        if spec.trains_with != "reinforcement":
            raise ValueError(f"{self.run_dir}: a {self.algo!r} run is not a reinforcement-learning checkpoint")
        section = self.train_config.get(self.algo)
        cfg = from_dict(spec.config_type, section if isinstance(section, dict) else {},
                        f"{self.checkpoint} (train_config.{self.algo})")
        state = self.ckpt.get("algorithm")
        if state is None:
            raise ValueError(f"checkpoint {self.checkpoint}: no 'algorithm' state in it")
        module = spec.exporter(env, cfg, state).to("cpu").eval()
        for p in module.parameters():
            p.requires_grad_(False)
        return module

    def make_env(self, num_envs: int = 1, seed: int = 0, play: bool = True) -> Any:
        return sim.make_env(self.task, num_envs=num_envs, seed=seed, play=play, config=self.task_config)


def load_run(source: str | os.PathLike, checkpoint: str | os.PathLike | None = None) -> LoadedRun:
    """Read a run folder (or a checkpoint file) with torch: checkpoint, config.yaml, algorithm name."""
    import torch

    run_dir, ckpt_path = _resolve_source(source, checkpoint)
    try:
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise ValueError(f"cannot read checkpoint {ckpt_path}: {exc}") from None
    if not isinstance(ckpt, dict):
        raise ValueError(f"checkpoint {ckpt_path}: not a RoboStack checkpoint (expected a dict)")
    config_file = run_dir / "config.yaml"
    config = (yaml.safe_load(config_file.read_text()) or {}) if config_file.is_file() else {}
    return LoadedRun(run_dir, ckpt_path, ckpt, config)
