"""RoboStack policies: learning algorithms, registered for ``robostack list`` and the trainer.

Importing this package stays light (no torch): the registered builders import ``ppo`` and ``sac`` only when called.
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


@register(
    "algorithm",
    "sac",
    "Soft Actor-Critic with twin critics, auto temperature and RLPD-style prior data",
    config="robostack.policies.sac:SACConfig",
)
def build_sac(env: Any, cfg: Any = None, device: Any = None) -> Any:
    """Build a ``robostack.policies.sac.SAC`` sized for ``env`` (a VecEnv); ``cfg`` is a ``SACConfig``."""
    from robostack.policies.sac import SAC

    return SAC.from_env(env, cfg, device)
