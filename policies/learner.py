"""What the shared reinforcement-learning loop (``robostack.workflows.train``) drives: one iteration's collect and
update of an algorithm, behind one small interface, so a new algorithm is its own file in ``policies/`` (its
``Learner`` and an ``AlgorithmSpec``) and nothing else changes."""
from __future__ import annotations

from typing import Any

import torch


class Learner:
    """The per-algorithm part of an iteration: act and record each env step, then update.

    ``alg`` is the algorithm object (its ``state_dict``/``load_state_dict``/``train_mode``/``eval_mode`` are
    used as they are; ``export_policy()`` gives the deterministic policy a bundle holds); ``columns`` are the
    names ``update`` returns, the loss columns of metrics.csv.
    """

    columns: tuple[str, ...] = ()

    def __init__(self, alg: Any, num_steps_per_env: int):
        self.alg = alg
        self.num_steps_per_env = num_steps_per_env

    def env_step(self, env: Any, obs: dict[str, torch.Tensor]) -> tuple[Any, ...]:
        """Act on ``obs``, step ``env``, record the transition; returns what ``env.step`` returned."""
        raise NotImplementedError

    def end_rollout(self, obs: dict[str, torch.Tensor]) -> None:
        """Called after the iteration's last env step (inside inference mode)."""

    def update(self) -> dict[str, float]:
        raise NotImplementedError

    def act_inference(self, obs_policy: torch.Tensor) -> torch.Tensor:
        """Deterministic action from a raw ``policy`` observation batch (for evaluation)."""
        raise NotImplementedError
