"""RoboStack policies: learning algorithms, registered for ``robostack list`` and the trainer.

Importing this package stays light (no torch): the registered builder imports ``ppo`` only when called.
"""
from __future__ import annotations

from typing import Any

from robostack.registry import register


@register(
    "algorithm",
    "ppo",
    "Proximal Policy Optimization, asymmetric actor-critic for massively parallel envs",
    config="robostack.policies.ppo:PPOConfig",
)
def build_ppo(env: Any, cfg: Any = None, device: Any = None) -> Any:
    """Build a ``robostack.policies.ppo.PPO`` sized for ``env`` (a VecEnv); ``cfg`` is a ``PPOConfig``."""
    from robostack.policies.ppo import PPO

    return PPO.from_env(env, cfg, device)
