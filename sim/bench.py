"""``robostack bench sim``: how much of the physics' speed a full task keeps.

The task is stepped with random actions for ``seconds``; each step's starting physics state and controls
are kept aside (outside the timed region). Then the same states and controls are replayed through bare
``mujoco.rollout`` on the same (randomized) models with the same substeps: identical physics work with
nothing else. ``ratio`` = task steps/s over bare steps/s, so 1 - ratio is the task's own overhead
(observations, rewards, randomization, resets, torch conversion). On another backend (``warp``) only the task's
rate is measured (the bare replay is ``mujoco.rollout``'s).
"""
from __future__ import annotations

import time

import torch

from robostack.sim import DEFAULT_BACKEND, make_env
from robostack.sim.mujoco_backend import MujocoBatch


def bench_sim(task: str, num_envs: int, seconds: float = 5.0, seed: int = 0, backend: str = DEFAULT_BACKEND,
              device: str = "cpu", overrides: list[str] | None = None) -> dict:
    env = make_env(task, num_envs=num_envs, seed=seed, backend=backend, device=device, overrides=overrides or [])
    gen = torch.Generator().manual_seed(seed)
    env.reset(seed=seed)
    for _ in range(5):  # warm-up: thread pool, allocator, first resets
        env.step(_random_action(env, gen))

    states, controls = [], []
    task_time, steps = 0.0, 0
    bare = backend == DEFAULT_BACKEND
    while task_time < seconds or steps < 10:
        action = _random_action(env, gen)
        if bare:
            states.append(env.sim.state.copy())
        start = time.perf_counter()
        env.step(action)
        if env.device.type == "cuda":  # the step's GPU work done, not only launched
            torch.cuda.synchronize(env.device)
        task_time += time.perf_counter() - start
        if bare:
            controls.append(env.sim.control.copy())
        steps += 1
    env_rate = steps * num_envs / task_time
    figures = {"task": task, "backend": backend, "device": device, "num_envs": num_envs, "substeps": env.sim.substeps,
               "threads": env.sim.nthread, "control_steps": steps, "env_steps_per_s": round(env_rate, 1),
               "physics_steps_per_s": round(env_rate * env.sim.substeps, 1),
               "task_ms_per_step": round(1e3 * task_time / steps, 3)}
    if not bare:
        env.close()
        return figures

    raw = MujocoBatch(env.default_model, num_envs, env.sim.substeps, env.sim.nthread)
    raw.models = env.sim.models
    raw_time = 0.0
    for state, control in zip(states, controls):
        start = time.perf_counter()
        raw.rollout(state, control)
        raw_time += time.perf_counter() - start
    raw.close()
    env.close()

    raw_rate = steps * num_envs / raw_time
    return {**figures, "raw_steps_per_s": round(raw_rate, 1),
            "physics_steps_per_s": round(raw_rate * env.sim.substeps, 1), "ratio": round(env_rate / raw_rate, 4),
            "raw_ms_per_step": round(1e3 * raw_time / steps, 3)}


def _random_action(env, gen: torch.Generator) -> torch.Tensor:
    return (torch.randn(env.num_envs, env.action_dim, generator=gen) * 0.5).clamp(-1.0, 1.0)
