"""Train a policy for a task: recipe from ``configs/train/<task>.yaml``, a run folder, then an evaluation.

    from robostack.workflows.train import train
    summary = train("cf2-hover", overrides=["max_iterations=100", "task.reward.scale=2"])

or ``robostack train cf2-hover max_iterations=100 --seed 1`` (``robostack.cli``).

Overrides are ``dotted.key=value``; those starting with ``task.`` go (without the prefix) to the task config
via ``make_env``, the rest to the ``TrainConfig`` recipe. Each run writes ``runs/<task>/<stamp>-<algo>/``:

* ``config.yaml``: ``task``, ``algo``, ``task_overrides``, the full ``task_config`` (YAML + overrides, so the
  run still evaluates and exports after the task's YAML file changes) and the full ``train`` config;
* ``checkpoints/model_<iter>.pt`` every ``save_interval`` iterations and ``checkpoints/last.pt``;
* ``metrics.csv`` (one row per iteration) and TensorBoard event files;
* ``training_curves.png`` and ``summary.yaml`` (the returned summary, evaluation included) at the end.

``resume=RUN`` (a run folder or a checkpoint in it) reloads that run's config.yaml and ``last.pt`` and
trains on up to ``max_iterations`` iterations *in total* (pass ``max_iterations=N`` to go further),
appending to the same metrics.csv. The env is not checkpointed: it restarts from a fresh reset (nor is
SAC's replay buffer: a resumed SAC run refills it with its current policy before updating again).

Under torchrun (``robostack train --nproc N``, ``robostack.workflows.data_parallel``) every rank runs this
function on its own envs (seed + ``RANK_SEED_STRIDE`` x rank); the algorithms keep the ranks' weights equal, and
rank 0 alone writes the run folder, evaluates and returns the full summary (the others: their rank).

Algorithms (``algo``: the recipe's key, replaced by the ``algo`` argument): every reinforcement-learning
algorithm registered by ``robostack.policies`` (``robostack list``), each with its own recipe section under its
name (``ppo:``, ``sac:``; the section's type is its ``AlgorithmSpec.config_type``). A recipe may hold several
sections. Everything but one iteration's collect/update (the algorithm's ``Learner``) is shared.
An iteration is ``num_steps_per_env`` vectorized env steps (of the running algorithm's section) followed by
its update, so it always counts ``num_envs * num_steps_per_env`` env steps. ``sac.num_envs`` and
``sac.max_iterations``, when set, replace the top-level values for SAC runs (unless those are overridden
explicitly); the saved config.yaml holds the resolved values.
"""
from __future__ import annotations

import csv
import dataclasses
import functools
import math
import os
import random
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import yaml

from robostack import policies, registry, sim
from robostack.config import ConfigError, apply_overrides, build_config, config_path, from_dict, load_yaml, to_dict
from robostack.policies import distributed
from robostack.specs import AlgorithmSpec
from robostack.workflows import data_parallel
from robostack.workflows.acting import load_base
from robostack.workflows.evaluate import evaluate
from robostack.workflows.residual import ResidualConfig, ResidualEnv, residual_recipe
from robostack.workflows.runs import algorithm, available_cores, new_run_dir

__all__ = ["TrainSettings", "train_config_type", "train"]

RANK_SEED_STRIDE = 104_729  # rank r trains with seed + r * stride: seeds of neighbouring runs stay apart


@dataclass
class TrainSettings:
    """The recipe's settings shared by every algorithm; ``train_config_type`` adds one section per algorithm."""

    algo: str = "ppo"
    num_envs: int = 1024
    max_iterations: int = 300
    seed: int = 0
    device: str = "cpu"
    torch_threads: int = 0  # 0 = all cores available to this process
    save_interval: int = 50  # iterations between checkpoints/model_<iter>.pt (last.pt is written every one)
    eval_episodes: int = 200  # at the end, on the play variant of the task; 0 skips the evaluation
    residual: ResidualConfig = field(default_factory=ResidualConfig)  # residual.base: RL on a frozen base
    init: str | None = None  # an actor-critic bundle of the task whose policy starts this run (ppo; --init)


def reinforcement_algorithms() -> list[AlgorithmSpec]:
    policies.load()
    return [spec for spec in registry.registered(AlgorithmSpec) if spec.trains_with == "reinforcement"]


@functools.cache
def train_config_type() -> type:
    """``TrainConfig``: ``TrainSettings`` and a section per registered reinforcement-learning algorithm, named
    after it and typed by its ``config_type``, so a recipe is checked field by field whichever algorithm runs."""
    sections = [(spec.name, spec.config_type, field(default_factory=spec.config_type))
                for spec in reinforcement_algorithms()]
    return dataclasses.make_dataclass("TrainConfig", sections, bases=(TrainSettings,))


# ------------------------------------------------------------------------------------------- helpers


def split_overrides(overrides: Sequence[str]) -> tuple[list[str], list[str]]:
    """``task.x=1`` goes to the task (as ``x=1``), everything else to the train config."""
    task, train_ = [], []
    for item in overrides:
        if item.startswith("task."):
            task.append(item[len("task."):])
        else:
            train_.append(item)
    return task, train_


def _resolve_resume(resume: str | Path) -> Path:
    path = Path(resume)
    if path.is_file():  # runs/<task>/<run>/checkpoints/last.pt
        path = path.parent.parent
    if not (path / "config.yaml").is_file() or not (path / "checkpoints" / "last.pt").is_file():
        raise FileNotFoundError(f"cannot resume from {resume}: expected config.yaml and checkpoints/last.pt there")
    return path


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _fmt(value: Any) -> Any:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return value


class EpisodeStats:
    """Per-iteration collection of the episodes that finished (``info["done"]`` / ``info["episode"]``)."""

    def __init__(self) -> None:
        self.values: dict[str, list[torch.Tensor]] = {}
        self.keys: list[str] = []  # every key seen, in first-seen order (for the CSV header)

    def add(self, info: dict[str, Any], terminated: torch.Tensor, truncated: torch.Tensor) -> None:
        episode = info.get("episode")
        if not episode:
            return
        for key in episode:
            if key not in self.keys:
                self.keys.append(key)
        done = info.get("done")
        done = (terminated | truncated) if done is None else done
        if not bool(done.any()):
            return
        for key, tensor in episode.items():
            if torch.is_tensor(tensor) and tensor.ndim == 1 and tensor.shape[0] == done.shape[0]:
                self.values.setdefault(key, []).append(tensor[done].to("cpu", torch.float64))

    def pop_means(self) -> dict[str, float]:
        out = {}
        for key in self.keys:
            parts = self.values.get(key)
            out[key] = float(torch.cat(parts).mean()) if parts else float("nan")
        out["_count"] = float(sum(p.numel() for p in self.values.get("return", [])))
        self.values = {}
        return out


_HEAD = ["iteration", "env_steps", "wall_s", "steps_per_s", "episodes", "mean_return", "mean_episode_length",
         "success_rate"]



class MetricsCSV:
    """``metrics.csv``, one row per iteration. Episode keys (``reward/<term>``, task metrics) are only known
    once an episode has finished, so a new column rewrites the (small) file with the wider header."""

    def __init__(self, path: Path, keep_until: int | None = None, tail: Sequence[str] = ()):
        self.path = path
        self.rows: list[dict[str, Any]] = []
        self.tail = list(tail)  # the algorithm's loss columns, kept last
        self.columns = list(_HEAD) + self.tail
        if keep_until is not None and path.is_file():  # resume: rows past the checkpoint are dropped
            with path.open(newline="") as f:
                reader = csv.DictReader(f)
                self.columns = list(reader.fieldnames or self.columns)
                self.rows = [r for r in reader if int(r["iteration"]) <= keep_until]
        self._rewrite()

    def _rewrite(self) -> None:
        with self.path.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self.columns, extrasaction="ignore", restval="")
            w.writeheader()
            w.writerows(self.rows)

    def append(self, row: dict[str, Any]) -> None:
        row = {k: _fmt(v) for k, v in row.items()}
        new = [k for k in row if k not in self.columns]
        self.rows.append(row)
        if new:
            at = self.columns.index(self.tail[0]) if self.tail and self.tail[0] in self.columns else len(self.columns)
            self.columns[at:at] = new
            self._rewrite()
        else:
            with self.path.open("a", newline="") as f:
                csv.DictWriter(f, fieldnames=self.columns, extrasaction="ignore", restval="").writerow(row)


def _read_metrics(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def plot_training_curves(metrics_csv: Path, out_png: Path) -> None:
    """Return, success rate, episode length and steps/s against env steps (matplotlib Agg, no pyplot)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = _read_metrics(metrics_csv)

    def column(name: str) -> np.ndarray:
        return np.array([float(r[name]) if r.get(name) not in (None, "") else np.nan for r in rows])

    x = column("env_steps")
    fig = Figure(figsize=(10, 7), tight_layout=True)
    FigureCanvasAgg(fig)
    panels = [("mean_return", "mean return"), ("success_rate", "success rate"),
              ("mean_episode_length", "episode length (steps)"), ("steps_per_s", "env steps / s")]
    for i, (name, label) in enumerate(panels):
        ax = fig.add_subplot(2, 2, i + 1)
        y = column(name) if rows else np.array([])
        ok = ~np.isnan(y) if y.size else np.array([], bool)
        ax.plot(x[ok] if y.size else [], y[ok] if y.size else [], lw=1.2)
        ax.set_xlabel("env steps")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    fig.suptitle(metrics_csv.parent.name)
    fig.savefig(out_png, dpi=100)


def _resolve_algo_sizes(cfg: TrainSettings, explicit: set[str]) -> None:
    """Move the running algorithm's optional ``num_envs``/``max_iterations`` to the top level (an explicit
    top-level override wins) and clear them, so config.yaml holds one resolved value each."""
    section = getattr(cfg, cfg.algo)
    for key in ("num_envs", "max_iterations"):
        value = getattr(section, key, None)
        if value is not None:
            if key not in explicit:
                setattr(cfg, key, value)
            setattr(section, key, None)



def warm_start(alg: Any, source: str | os.PathLike, task: str) -> None:
    """Start a PPO run's actor and observation normalizers from an actor-critic bundle of ``task`` (its
    ``policy.pt``: the deterministic actor with its normalizer); the value function starts afresh. How a policy is
    fine-tuned for other conditions (the safety critic's recovery: ``robostack.workflows.safety_critic``)."""
    from robostack.bundle import ACTOR_CRITIC, load_bundle
    from robostack.bundle.format import TORCHSCRIPT_FILE

    bundle = load_bundle(source)
    kind = bundle.metadata.get("kind", ACTOR_CRITIC)
    if bundle.task != task or kind != ACTOR_CRITIC or bundle.metadata.get("algo") != "ppo":
        raise ConfigError(f"init {source}: a ppo bundle of {task} is needed, it is a {kind} "
                          f"{bundle.metadata.get('algo')} bundle of {bundle.task}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.load: the bundle's format holds TorchScript
        state = torch.jit.load(str(Path(source) / TORCHSCRIPT_FILE), map_location="cpu").state_dict()
    ac = alg.actor_critic
    parts = {"actor": ac.actor, "normalizer": ac.policy_normalizer}
    for prefix, module in parts.items():
        own = {k[len(prefix) + 1:]: v for k, v in state.items() if k.startswith(prefix + ".")}
        mine = module.state_dict()
        if set(own) != set(mine) or any(own[k].shape != mine[k].shape for k in own):
            raise ConfigError(f"init {source}: its {prefix} ({', '.join(f'{k} {tuple(v.shape)}' for k, v in own.items())}) "
                              f"is not this recipe's ({', '.join(f'{k} {tuple(v.shape)}' for k, v in mine.items())})")
        module.load_state_dict(own)
    shapes = [{k: v.shape for k, v in n.state_dict().items()} for n in (ac.policy_normalizer, ac.critic_normalizer)]
    if shapes[0] == shapes[1]:  # the critic reads the policy's observation: its statistics too
        ac.critic_normalizer.load_state_dict(ac.policy_normalizer.state_dict())


# --------------------------------------------------------------------------------------------- train


def train(
    task: str,
    algo: str | None = None,
    overrides: Sequence[str] = (),
    resume: str | None = None,
    seed: int | None = None,
    run_root: str = "runs",
    progress: bool = True,
    config: str | os.PathLike | None = None,
    base: str | os.PathLike | None = None,
    backend: str | None = None,
) -> dict[str, Any]:
    """Train ``algo`` on ``task``; returns a summary (run_dir, env_steps, wall_s, iterations, eval metrics).

    ``algo`` (a reinforcement-learning algorithm, ``robostack list``) replaces the recipe's ``algo`` key; None keeps
    it (when resuming it must match the run's). ``config`` replaces the recipe file ``configs/train/<task>.yaml``
    (ignored when resuming). ``base`` (a diffusion run or chunk bundle) trains a residual on it
    (``robostack.workflows.residual``) with the recipe ``configs/train/<task>-residual.yaml``. ``backend``: the
    simulator backend (``robostack list``; None: the resumed run's, else ``mujoco``), kept in config.yaml.
    """
    task_overrides, train_overrides = split_overrides(list(overrides))

    # -- config and run folder
    if resume is not None and base is not None:
        raise ConfigError(f"a resumed run keeps its base ({resume}); give no base")
    if resume is not None:
        run_dir = _resolve_resume(resume)
        saved = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
        if saved.get("task", task) != task:
            raise ValueError(f"run {run_dir} trained task {saved.get('task')!r}, not {task!r}")
        source = f"{run_dir / 'config.yaml'} + overrides"
        cfg = from_dict(train_config_type(), apply_overrides(saved.get("train", {}), train_overrides, source), source)
        saved_task_config, new_task_overrides = saved.get("task_config"), task_overrides
        task_overrides = list(saved.get("task_overrides", [])) + task_overrides
        backend = backend or saved.get("backend")
    else:
        saved_task_config = None
        if config is not None:
            path = Path(config)
        else:
            path = residual_recipe(task) if base is not None else config_path("train", f"{task}.yaml")
        data = load_yaml(path)
        recipe_algo = data.get("algo")
        if recipe_algo in {spec.name for spec in registry.registered(AlgorithmSpec)} and \
                algorithm(recipe_algo).trains_with == "imitation":
            raise ConfigError(f"{path} is a {recipe_algo} recipe: it learns from demonstrations "
                              f"(robostack train {task} --dataset DATASET, robostack.workflows.imitation); a residual "
                              f"on a {recipe_algo} policy: robostack train {task} --base RUN")
        cfg = build_config(train_config_type(), data, str(path), train_overrides)
        if base is not None:
            cfg.residual.base = str(Path(base).resolve())
        run_dir = None
    if seed is not None:
        cfg.seed = seed
    if algo is not None and algo != cfg.algo:
        if resume is not None:
            raise ConfigError(f"algo {algo!r} does not match the resumed run's algo {cfg.algo!r}")
        cfg.algo = algo
    learners = {spec.name: spec for spec in reinforcement_algorithms()}
    if cfg.algo not in learners:
        raise ConfigError(f"unsupported algo {cfg.algo!r} (this trainer runs: {', '.join(learners)})")
    _resolve_algo_sizes(cfg, {item.partition("=")[0].strip() for item in train_overrides})
    base_policy = None
    if cfg.residual.base:
        if cfg.algo != "ppo":
            raise ConfigError(f"a residual trains with ppo, not {cfg.algo!r}")
        base_policy = load_base(cfg.residual.base, task)
        if saved_task_config is None:  # the residual learns in the task its base was trained in
            saved_task_config, new_task_overrides = base_policy.task_config, task_overrides

    if cfg.init and (cfg.algo != "ppo" or cfg.residual.base):
        raise ConfigError(f"init starts a ppo run from a bundle's policy, not a {cfg.algo!r} run"
                          + (" on a residual base" if cfg.residual.base else ""))
    backend = backend or sim.DEFAULT_BACKEND

    def task_env(num_envs: int, seed: int, play: bool) -> Any:
        env = sim.make_env(task, num_envs=num_envs, seed=seed, play=play, config=task_config, backend=backend,
                           device=device_name)  # the envs' tensors (warp: its physics too) where the learning runs
        if base_policy is None:
            return env
        return ResidualEnv(env, base_policy.make_policy(env), cfg.residual.scale)

    rank, world, device_name = data_parallel.join(cfg.device)  # one rank unless torchrun started this process
    threads = cfg.torch_threads or available_cores()  # this rank's share of the cores
    torch.set_num_threads(threads)
    device = torch.device(device_name)
    rank_seed = cfg.seed + RANK_SEED_STRIDE * rank  # each rank its own envs and noise
    _seed_everything(rank_seed)

    # the task config is resolved once and saved whole, so the run stays evaluable after the YAML changes
    if saved_task_config is not None:
        task_config = to_dict(sim.load_task_config(task, new_task_overrides, config=saved_task_config))
    else:
        task_config = to_dict(sim.load_task_config(task, task_overrides))
    writes = rank == 0  # the other ranks train and leave no files
    if run_dir is None and writes:
        run_dir = new_run_dir(run_root, task, cfg.algo)
    ckpt_dir = run_dir / "checkpoints" if run_dir is not None else None
    if writes:
        ckpt_dir.mkdir(exist_ok=True)
        with (run_dir / "config.yaml").open("w") as f:
            yaml.safe_dump({"task": task, "algo": cfg.algo, "backend": backend, "ranks": world,
                            "task_overrides": list(task_overrides), "task_config": task_config,
                            "train": to_dict(cfg)}, f, sort_keys=False)

    # -- env and algorithm
    env = task_env(cfg.num_envs, rank_seed, play=False)
    learner = learners[cfg.algo].trainer(env, getattr(cfg, cfg.algo), device)
    alg = learner.alg

    start_iter, env_steps, wall_before = 0, 0, 0.0
    if cfg.init and resume is None:
        warm_start(alg, cfg.init, task)
    if resume is not None:
        ckpt = torch.load(ckpt_dir / "last.pt", map_location=device, weights_only=False)
        if ckpt.get("algo", "ppo") != cfg.algo:
            raise ConfigError(f"checkpoint of {ckpt.get('algo')!r}, run configured for {cfg.algo!r}")
        alg.load_state_dict(ckpt["algorithm"])
        start_iter, env_steps, wall_before = ckpt["iteration"], ckpt["env_steps"], ckpt["wall_s"]
        if rank == 0:
            _set_rng_state(ckpt["rng"])
        else:  # the checkpoint holds rank 0's generators
            _seed_everything(rank_seed + start_iter)
    distributed.broadcast_state(alg)  # every rank starts from rank 0's weights

    metrics_path = run_dir / "metrics.csv" if writes else None
    writer = metrics = None
    if writes:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(log_dir=str(run_dir), purge_step=start_iter + 1 if resume is not None else None)
        metrics = MetricsCSV(metrics_path, keep_until=start_iter if resume is not None else None,
                             tail=learner.columns)

    def save(iteration: int, wall_s: float) -> None:
        state = {"iteration": iteration, "env_steps": env_steps, "wall_s": wall_s, "task": task, "algo": cfg.algo,
                 "task_overrides": list(task_overrides), "task_config": task_config, "train_config": to_dict(cfg),
                 "algorithm": alg.state_dict(), "rng": _rng_state()}
        torch.save(state, ckpt_dir / "last.pt.tmp")
        os.replace(ckpt_dir / "last.pt.tmp", ckpt_dir / "last.pt")
        if cfg.save_interval > 0 and (iteration % cfg.save_interval == 0 or iteration == cfg.max_iterations):
            torch.save(state, ckpt_dir / f"model_{iteration}.pt")

    bar = None
    if progress and writes:
        from tqdm import tqdm

        bar = tqdm(total=cfg.max_iterations, initial=start_iter, desc=f"{task}/{cfg.algo}", unit="it",
                   dynamic_ncols=True)

    stats = EpisodeStats()
    steps_per_iter = world * cfg.num_envs * learner.num_steps_per_env  # every rank's
    t_start = time.perf_counter()
    last_shown: dict[str, float] = {}
    iteration = start_iter
    obs, _ = env.reset(seed=rank_seed + start_iter)
    alg.train_mode()
    try:
        for iteration in range(start_iter + 1, cfg.max_iterations + 1):
            t0 = time.perf_counter()
            with torch.inference_mode():
                for _ in range(learner.num_steps_per_env):
                    obs, reward, terminated, truncated, info = learner.env_step(env, obs)
                    stats.add(info, terminated, truncated)
                learner.end_rollout(obs)
            t_collect = time.perf_counter() - t0
            losses = learner.update()
            t_iter = time.perf_counter() - t0
            env_steps += steps_per_iter
            wall_s = wall_before + time.perf_counter() - t_start

            ep = stats.pop_means()
            row: dict[str, Any] = {
                "iteration": iteration, "env_steps": env_steps, "wall_s": wall_s,
                "steps_per_s": steps_per_iter / t_iter, "episodes": int(ep.pop("_count")),
                "mean_return": ep.pop("return", float("nan")),
                "mean_episode_length": ep.pop("length", float("nan")),
                "success_rate": ep.pop("success", float("nan")),
                **ep,
                **losses,
            }
            if not writes:
                continue
            metrics.append(row)

            for key, value in row.items():
                if key == "iteration" or not isinstance(value, (int, float)) or math.isnan(value):
                    continue
                group = "train" if key in losses else "episode"
                if key in ("env_steps", "wall_s", "steps_per_s", "episodes"):
                    group = "perf"
                writer.add_scalar(f"{group}/{key}", value, iteration)
            writer.add_scalar("perf/collect_fraction", t_collect / t_iter, iteration)

            save(iteration, wall_s)
            for key in ("mean_return", "success_rate"):
                if not math.isnan(row[key]):
                    last_shown[key] = row[key]
            if bar is not None:
                bar.set_postfix({"steps/s": f"{row['steps_per_s']:.0f}",
                                 "return": f"{last_shown.get('mean_return', float('nan')):.2f}",
                                 "success": f"{last_shown.get('success_rate', float('nan')):.2f}"}, refresh=False)
                bar.update(1)
        in_sync = distributed.parameters_in_sync(alg)
    finally:
        if bar is not None:
            bar.close()
        if writer is not None:
            writer.close()
        env.close()
        data_parallel.leave()

    wall_total = wall_before + time.perf_counter() - t_start
    if not writes:
        return {"rank": rank, "ranks": world, "ranks_in_sync": in_sync}
    if not in_sync:
        warnings.warn(f"the {world} training ranks ended with different parameters: their updates diverged")
    plot_training_curves(metrics_path, run_dir / "training_curves.png")

    rows = _read_metrics(metrics_path)
    recent = [r for r in rows[-10:] if r.get("mean_return") not in (None, "")]
    summary: dict[str, Any] = {
        "run_dir": str(run_dir),
        "task": task,
        "algo": cfg.algo,
        "iterations": iteration,
        "env_steps": env_steps,
        "wall_s": round(wall_total, 2),
        "ranks": world,
        "ranks_in_sync": in_sync,
        "train_mean_return": float(np.mean([float(r["mean_return"]) for r in recent])) if recent else float("nan"),
    }

    # -- evaluation of the deterministic policy on the play variant
    if cfg.eval_episodes > 0:
        n_eval = max(1, min(cfg.eval_episodes, cfg.num_envs))
        eval_env = task_env(n_eval, cfg.seed + 1_000_003, play=True)
        alg.eval_mode()

        def policy(o: dict[str, torch.Tensor]) -> torch.Tensor:
            return learner.act_inference(o["policy"].to(device, torch.float32)).to(eval_env.device)

        try:
            result = evaluate(eval_env, policy, cfg.eval_episodes, seed=cfg.seed + 1_000_003)
        finally:
            eval_env.close()
        summary.update(result)
    else:
        summary.update({"success_rate": float("nan"), "mean_return": float("nan")})

    with (run_dir / "summary.yaml").open("w") as f:
        yaml.safe_dump({k: (float(v) if isinstance(v, (float, np.floating)) else v) for k, v in summary.items()},
                       f, sort_keys=False)
    return summary
