"""Evaluating a policy in its task: ``evaluate`` counts episodes on a batched env, ``eval_policy`` (``robostack
eval``) runs a run folder or bundle of any kind (``robostack.workflows.acting``), optionally with a video of env 0.

    from robostack.workflows.evaluate import eval_policy
    result = eval_policy("bundles/cf2", episodes=20, video="cf2.mp4")

Which episodes count: stopping at "the first ``episodes`` episodes that finish" would favour short episodes
(early failures or quick successes end first), so instead every env gets a quota of episodes decided *before*
stepping, from its index only: with ``K = ceil(episodes / num_envs)``, the first ``r = episodes - (K-1) *
num_envs`` envs count their first ``K`` episodes and the others their first ``K - 1``. That is exactly
``episodes`` episodes, and no env's outcome decides whether it is counted. Envs that reached their quota
keep stepping (the batch moves together) but are ignored. For speed, give the env ``num_envs <= episodes``
(ideally a divisor) so no env steps for nothing.

The env is the task's ``play`` variant (randomization off) unless ``randomized``; its task config is the one the
run or bundle trained with, shifted by ``overrides`` (``key=value``, as ``--disturbance`` takes them):

    eval_policy("bundles/cf2-hover", 64, randomized=True, overrides=[
        "randomization.link_mass.range=[1.4,1.4]",  # 40% heavier
        "randomization.weak_motor.enabled=true", "randomization.weak_motor.range=[0.8,0.8]"])  # one motor at 80%
"""
from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import torch

from robostack import sim
from robostack.workflows.acting import Policy, load_policy
from robostack.workflows.render import VideoRecorder, ensure_offscreen_gl

_CORE = ("return", "length", "success")
_CORE = ("return", "length", "success")


def evaluate(env: Any, policy: Policy, episodes: int, seed: int | None = None,
             max_steps: int | None = None, controls: bool = False) -> dict[str, Any]:
    """Run ``policy`` (obs dict -> action batch) on ``env`` until ``episodes`` episodes are counted.
    With ``controls`` the policy's output is actuator controls (``env.step_controls``), not actions.

    Returns ``episodes``, ``success_rate``, ``mean_return``, ``std_return``, ``mean_length`` and, for every
    other key of ``info["episode"]`` (``reward/<term>`` sums, task errors, ...), its mean under that key.
    ``max_steps`` (default: ``(K + 1) * max_episode_length + 1``) guards against an env that never ends.
    """
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    n = env.num_envs
    per_env = math.ceil(episodes / n)
    quota = torch.full((n,), per_env - 1, dtype=torch.long)
    quota[: episodes - (per_env - 1) * n] = per_env
    counted = torch.zeros(n, dtype=torch.long)
    if max_steps is None:
        max_steps = (per_env + 1) * int(getattr(env, "max_episode_length", 10_000)) + 1

    values: dict[str, list[torch.Tensor]] = {}
    step = env.step_controls if controls else env.step
    with torch.inference_mode():
        obs, _ = env.reset(seed)
        steps = 0
        while bool((counted < quota).any()):
            if steps >= max_steps:
                raise RuntimeError(
                    f"evaluate: only {int(counted.sum())} of {episodes} episodes finished in {steps} steps"
                )
            obs, _, terminated, truncated, info = step(policy(obs))
            steps += 1
            done = info.get("done")
            done = (terminated | truncated) if done is None else done
            done = done.to("cpu", torch.bool)
            take = done & (counted < quota)
            counted += done.long()
            if not bool(take.any()):
                continue
            ids = take.nonzero(as_tuple=True)[0]
            for key, tensor in info.get("episode", {}).items():
                if not torch.is_tensor(tensor) or tensor.ndim != 1 or tensor.shape[0] != n:
                    continue
                values.setdefault(key, []).append(tensor.to("cpu", torch.float64)[ids])

    cat = {k: torch.cat(v) for k, v in values.items()}
    out: dict[str, Any] = {"episodes": int(quota.sum())}
    ret = cat.get("return")
    out["success_rate"] = float(cat["success"].mean()) if "success" in cat else float("nan")
    out["mean_return"] = float(ret.mean()) if ret is not None else float("nan")
    out["std_return"] = float(ret.std(unbiased=False)) if ret is not None else float("nan")
    out["mean_length"] = float(cat["length"].mean()) if "length" in cat else float("nan")
    for key in sorted(cat):
        if key not in _CORE:
            out[key] = float(cat[key].mean())
    return out


def eval_policy(source: str | os.PathLike, episodes: int, randomized: bool = False,
                video: str | os.PathLike | None = None, num_envs: int | None = None, seed: int = 0,
                checkpoint: str | os.PathLike | None = None, backend: str | None = None, device: str = "cpu",
                overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Evaluate a run folder / checkpoint or a bundle for ``episodes`` episodes in its task shifted by
    ``overrides``; returns ``evaluate``'s result (success_rate, mean_return, ..., ``metric/<name>``) plus what
    was evaluated. The play variant turns randomization off, so a ``randomization.`` override there would change
    nothing: it is refused (shift the randomized variant)."""
    if episodes < 1:
        raise ValueError(f"episodes must be at least 1, got {episodes}")
    if num_envs is not None and num_envs < 1:
        raise ValueError(f"num_envs must be at least 1, got {num_envs}")
    overrides = [overrides] if isinstance(overrides, str) else list(overrides)
    inert = [o for o in overrides if not randomized and o.partition("=")[0].strip().split(".")[0] == "randomization"]
    if inert:
        raise ValueError(f"override {inert[0]!r} changes nothing in the play variant (randomization off): "
                         "evaluate randomized (--randomized)")
    if video is not None:
        ensure_offscreen_gl()  # before MuJoCo is imported, if it has not been yet
    loaded = load_policy(source, checkpoint)
    if loaded.cameras:
        ensure_offscreen_gl()

    n = num_envs or min(episodes, 32)
    env = sim.make_env(loaded.task, num_envs=n, seed=seed, play=not randomized, config=loaded.task_config,
                       overrides=overrides, backend=backend or sim.DEFAULT_BACKEND, device=device)
    recorder = policy = None
    try:
        if loaded.wrap_env is not None:
            env = loaded.wrap_env(env)
        policy = loaded.make_policy(env)
        if video is not None:
            recorder = VideoRecorder(env, video)
            inner = policy

            def policy(obs: dict[str, Any]) -> Any:  # noqa: F811 - the recording wrapper
                recorder.record()
                return inner(obs)

        result = evaluate(env, policy, episodes, seed=seed, controls=loaded.controls)
    finally:
        if recorder is not None:
            recorder.close()
        if hasattr(policy, "close"):
            policy.close()
        env.close()

    out: dict[str, Any] = {"source": str(source), "kind": loaded.kind, "task": loaded.task,
                           "algo": loaded.algo, "randomized": bool(randomized), "overrides": overrides,
                           "num_envs": n, "seed": seed}
    out.update(result)
    if recorder is not None:
        out.update({"video": str(video), "video_frames": recorder.frames, "video_fps": recorder.fps})
    return out
