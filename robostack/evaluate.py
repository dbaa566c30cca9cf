"""Evaluate a policy on a batched env: success rate, return, length and the task's own episode metrics.

Which episodes count: stopping at "the first ``episodes`` episodes that finish" would favour short episodes
(early failures or quick successes end first), so instead every env gets a quota of episodes decided *before*
stepping, from its index only: with ``K = ceil(episodes / num_envs)``, the first ``r = episodes - (K-1) *
num_envs`` envs count their first ``K`` episodes and the others their first ``K - 1``. That is exactly
``episodes`` episodes, and no env's outcome decides whether it is counted. Envs that reached their quota
keep stepping (the batch moves together) but are ignored. For speed, give the env ``num_envs <= episodes``
(ideally a divisor) so no env steps for nothing.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import torch

Policy = Callable[[dict[str, torch.Tensor]], torch.Tensor]

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
