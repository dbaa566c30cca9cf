"""``robostack bench``: timed end-to-end figures of the learning workflows (``train``, ``imitation``) and the
inference latency of a bundle (``policy``). The simulator's own benchmark is ``robostack.sim.bench``, the
deployed graph's ``robostack.real.bench``.
"""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from robostack.bundle import ACTOR_CRITIC, ChunkPolicyBundle, load_bundle
from robostack.workflows.evaluate import eval_policy
from robostack.workflows.imitation import ALGO, train_imitation
from robostack.workflows.record import record
from robostack.workflows.data_parallel import launch
from robostack.workflows.train import train


def bench_train(task: str, seed: int = 0, episodes: int = 1000, overrides: Sequence[str] = (),
                run_root: str = "runs", nproc: int = 1, backend: str | None = None, device: str | None = None
                ) -> dict[str, Any]:
    """``robostack bench train``: train from scratch with the task's recipe, then evaluate the deterministic
    policy on ``episodes`` episodes of the *randomized* (training) variant, one episode per env.

    ``wall_s`` is the training time alone (what the recipe's targets are about); the evaluation's own time
    is reported as ``eval_wall_s``. ``nproc`` > 1 trains on that many data-parallel ranks (torchrun, each with
    the recipe's ``num_envs``). ``backend`` and ``device`` (the recipe's ``device`` key) are the training's and
    the evaluation's.
    """
    overrides = [*overrides, "eval_episodes=0", *([f"device={device}"] if device is not None else [])]
    if nproc > 1:
        summary = launch(nproc, task=task, overrides=overrides, seed=seed, run_root=run_root, progress=False,
                         backend=backend)
    else:
        summary = train(task, overrides=overrides, seed=seed, run_root=run_root, progress=False, backend=backend)
    start = time.perf_counter()
    result = eval_policy(summary["run_dir"], episodes=episodes, randomized=True, num_envs=episodes, seed=seed + 1,
                         backend=backend, device=device or "cpu")
    return {
        "task": task,
        "algo": summary["algo"],
        "backend": backend or "mujoco",
        "device": device or "cpu",
        "wall_s": summary["wall_s"],
        "env_steps": summary["env_steps"],
        "iterations": summary["iterations"],
        "ranks": summary.get("ranks", 1),
        "steps_per_s": round(summary["env_steps"] / summary["wall_s"], 1),
        "success_rate": result["success_rate"],
        "eval_episodes": result["episodes"],
        "mean_return": result["mean_return"],
        **{k: v for k, v in result.items() if k.startswith("metric/")},
        "eval_wall_s": round(time.perf_counter() - start, 2),
        "run_dir": summary["run_dir"],
    }


def bench_imitation(task: str, demos: int = 200, episodes: int = 200, seed: int = 0, overrides: Sequence[str] = (),
                    cameras: Sequence[str] = (), workdir: str | os.PathLike | None = None, run_root: str = "runs",
                    expert_noise: float = 0.0) -> dict[str, Any]:
    """``robostack bench imitation``: ``demos`` scripted demonstrations under the task's randomization
    (``robostack teleop --device scripted --randomized``), a diffusion policy trained on them with the task's
    recipe, then ``episodes`` episodes of the randomized task. Each stage's wall time is reported.
    ``expert_noise``: see ``robostack.teleop.devices.ScriptedTeleop``."""
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


def bench_policy(path: str | os.PathLike, iterations: int = 200, warmup: int = 20, threads: int = 1,
                 seed: int = 0) -> dict[str, Any]:
    """``robostack bench policy``: the latency of one inference through onnxruntime for one robot (batch 1),
    on observations of the bundle's shapes: one action (actor-critic) or one full chunk, every denoising step
    (chunk). A chunk has to be ready within the ``n_action_steps`` control periods it covers."""
    bundle = load_bundle(path, threads=threads)
    rng = np.random.default_rng(seed)
    if isinstance(bundle, ChunkPolicyBundle):
        steps = bundle.cfg.n_obs_steps
        histories = {key: rng.integers(0, 256, (1, steps, *bundle.image_shapes[key], 3), dtype=np.uint8)
                     if key in bundle.image_shapes else rng.standard_normal((1, steps, bundle.state_dim), np.float32)
                     for key in bundle.obs_keys}

        def infer() -> Any:
            return bundle.predict_chunks(histories, rng)
    else:
        obs = rng.standard_normal((1, bundle.obs_dim), np.float32)

        def infer() -> Any:
            return bundle.act(obs)
    for _ in range(warmup):
        infer()
    times_ns = []
    for _ in range(iterations):
        start = time.perf_counter_ns()
        infer()
        times_ns.append(time.perf_counter_ns() - start)
    ms = np.array(times_ns) * 1e-6
    meta = bundle.metadata
    result = {"bundle": str(path), "kind": meta.get("kind", ACTOR_CRITIC), "task": meta["task"],
              "threads": threads, "iterations": iterations,
              "latency_ms": {**{f"p{q}": round(float(np.percentile(ms, q)), 3) for q in (50, 90, 99)},
                             "max": round(float(ms.max()), 3), "mean": round(float(ms.mean()), 3)},
              "control_period_ms": round(1000.0 / bundle.control_rate_hz, 3),
              "machine": {"cores": os.cpu_count(), "load_1min": round(os.getloadavg()[0], 2)}}
    if isinstance(bundle, ChunkPolicyBundle):
        result.update({"cameras": [key.rsplit(".", 1)[-1] for key in bundle.image_shapes],
                       "denoising_steps": bundle.cfg.num_inference_steps,
                       "chunk_covers_ms": round(1000.0 * bundle.cfg.n_action_steps / bundle.control_rate_hz, 3)})
    return result
