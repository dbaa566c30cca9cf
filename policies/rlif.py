"""Learning from human interventions: RLIF's reward with RLPD's data mixing, as a residual on a frozen policy.

RLIF (Luo et al., 2023, "RLIF: Interactive Imitation Learning as Reinforcement Learning") needs no task reward:
the step on which a human takes over is the failure (reward -1), every other step is 0, so the learner's goal
is to stop being taken over, which it can reach without copying a suboptimal intervener exactly. HIL-SERL and
RLPD (Ball et al., 2023) train it off policy: SAC with LayerNorm critics, many updates per datum, every batch
half from all logged steps and half from a buffer of the human's steps (intervention steps go into both).

Here the learner is a correction on top of a frozen bundle (any kind): it sees the policy's observation and
the base's action and outputs a residual ``u`` in [-1, 1]; the robot executes ``clip(base + scale * u)``. A
residual starts at zero (the base as it was), so a round with few takeovers cannot unlearn the base, and it
fits every kind of bundle alike. The algorithm is ``robostack.policies.sac.SAC`` with prior data; this module
adds what is particular to interventions: the reward labelling, the residual targets of logged actions and the
two buffers.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from robostack import registry
from robostack.policies.command_correction import CommandCorrectionConfig
from robostack.policies.gripper_rule import GripperRuleConfig
from robostack.policies.iql import IQLConfig
from robostack.policies.sac import BUFFER_KEYS, SAC, ReplayBuffer, SACConfig, updates_in_blocks
from robostack.specs import AlgorithmSpec

__all__ = ["RLIFConfig", "takeover_starts", "rlif_rewards", "residual_targets", "intervention_buffers",
           "fit_residual"]


@dataclass
class RLIFConfig:
    scale: float = 0.5  # the largest correction, as a fraction of the action range's half-width
    updates: int = 6000  # rlif's critic updates over all data (RLPD: many per datum); iql's and the gripper
                         # rule's counts are in their sections
    utd_ratio: int = 4  # critic updates per actor update
    batch_size: int = 256
    prior_ratio: float = 0.5  # share of each batch from the human's steps (RLPD's symmetric sampling)
    gamma: float = 0.97  # per control step
    tau: float = 0.005
    learning_rate: float = 3e-4
    init_temperature: float = 0.01  # a residual on logged data: little entropy bonus, or it learns noise
    target_entropy: float | None = None  # None: -action_dim
    hidden: tuple[int, ...] = (256, 256)
    bc_weight: float = 0.0  # behaviour cloning of the human's steps in the actor's loss (SAC's prior_bc_weight)
    seed: int = 0
    # offline: IQL instead of SAC (its own gamma, batch, ...; 6000 updates: on panda-lift's three rounds 0.979, 2000
    # 0.94, BENCHMARKS.md)
    iql: IQLConfig = field(default_factory=lambda: IQLConfig(num_updates=6000))
    command: CommandCorrectionConfig = field(default_factory=CommandCorrectionConfig)  # --algo command-correction
    gripper: GripperRuleConfig = field(default_factory=GripperRuleConfig)  # --algo gripper-rule


def takeover_starts(intervention: np.ndarray, episode_index: np.ndarray) -> np.ndarray:
    """[T] bool: frames where a takeover starts (the human is in control there and was not on the previous frame
    of the same episode, or it is the episode's first frame)."""
    flags = np.asarray(intervention, dtype=bool)
    episodes = np.asarray(episode_index)
    before = np.concatenate([[False], flags[:-1]]) & np.concatenate([[False], episodes[1:] == episodes[:-1]])
    return flags & ~before


def rlif_rewards(intervention: np.ndarray, episode_index: np.ndarray) -> np.ndarray:
    """[T] float32 RLIF rewards: -1 on the policy's last step before each takeover (the step whose outcome made
    the human take over), 0 elsewhere. A takeover on an episode's first frame follows no policy step: no reward."""
    starts = takeover_starts(intervention, episode_index)
    episodes = np.asarray(episode_index)
    rewards = np.zeros(len(starts), dtype=np.float32)
    previous = np.flatnonzero(starts[1:] & (episodes[1:] == episodes[:-1]))
    rewards[previous] = -1.0
    return rewards


def residual_targets(executed: np.ndarray, base: np.ndarray, scale: float) -> np.ndarray:
    """The residual in [-1, 1] that turns the base's actions into the executed ones (``clip(base + scale * u)``),
    clipped where the executed action lies beyond the residual's reach."""
    return np.clip((np.asarray(executed) - np.asarray(base)) / scale, -1.0, 1.0).astype(np.float32)


def intervention_buffers(obs: np.ndarray, base: np.ndarray, residual: np.ndarray, rewards: np.ndarray,
                         next_index: np.ndarray, human: np.ndarray) -> tuple[dict[str, torch.Tensor],
                                                                           dict[str, torch.Tensor]]:
    """The online buffer (every logged step with a successor) and the prior buffer (the human's steps), in
    ``BUFFER_KEYS`` layout. The residual's input is the observation then the base's action (actor and critic
    alike); ``next_index[t]`` is the row of step t's successor, -1 where it has none (the episode's last frame:
    its outcome was not logged, so it is left out). No step is terminal: under RLIF only takeovers are failures,
    and they are rewarded, not ended."""
    inputs = torch.as_tensor(np.concatenate([obs, base], axis=1), dtype=torch.float32)
    rows = torch.as_tensor(np.flatnonzero(np.asarray(next_index) >= 0))
    successors = torch.as_tensor(np.asarray(next_index))[rows]
    online = {"policy_obs": inputs[rows], "actions": torch.as_tensor(residual, dtype=torch.float32)[rows],
              "rewards": torch.as_tensor(rewards, dtype=torch.float32)[rows], "next_policy_obs": inputs[successors],
              "dones": torch.zeros(len(rows))}
    online["critic_obs"], online["next_critic_obs"] = online["policy_obs"], online["next_policy_obs"]
    from_human = torch.as_tensor(np.asarray(human, dtype=bool))[rows]
    prior = {key: value[from_human] for key, value in online.items()}
    return {k: online[k] for k in BUFFER_KEYS}, {k: prior[k] for k in BUFFER_KEYS}


def fit_residual(online: dict[str, torch.Tensor], prior: dict[str, torch.Tensor], cfg: RLIFConfig,
                 on_update=None) -> tuple[SAC, dict[str, float]]:
    """SAC on the logged steps with RLPD's mixing (``prior_ratio`` of every batch from ``prior``; all from
    ``online`` when no human step was logged); returns the algorithm and its last losses. ``on_update(i,
    losses)`` is called after each block of updates (a progress bar, TensorBoard)."""
    if len(online["rewards"]) == 0:
        raise ValueError("no logged step with a successor to learn from")
    torch.manual_seed(cfg.seed)
    num_inputs, num_actions = online["policy_obs"].shape[1], online["actions"].shape[1]
    sac_cfg = SACConfig(batch_size=cfg.batch_size, buffer_size=len(online["rewards"]), learning_starts=0,
                        utd_ratio=cfg.utd_ratio, actor_lr=cfg.learning_rate, critic_lr=cfg.learning_rate,
                        alpha_lr=cfg.learning_rate, gamma=cfg.gamma, tau=cfg.tau,
                        init_temperature=cfg.init_temperature, target_entropy=cfg.target_entropy,
                        actor_hidden=tuple(cfg.hidden), critic_hidden=tuple(cfg.hidden), normalize_obs=True,
                        prior_ratio=cfg.prior_ratio, prior_bc_weight=cfg.bc_weight)
    alg = SAC(num_inputs, num_inputs, num_actions, num_envs=1, cfg=sac_cfg,
              prior_data=prior if len(prior["rewards"]) else None)
    alg.buffer = ReplayBuffer.from_dict(online)
    _fit_normalizers(alg, online["policy_obs"])
    alg.num_transitions = len(alg.buffer)
    block = max(cfg.utd_ratio, 200 // cfg.utd_ratio * cfg.utd_ratio)
    losses = updates_in_blocks(alg.update, cfg.updates, block, on_update)
    alg.eval_mode()
    return alg, losses


def _fit_normalizers(alg: SAC, inputs: torch.Tensor) -> None:
    """The observation normalizers set once from all logged inputs (fixed while fitting: the data does not grow)."""
    for normalizer in (alg.actor.normalizer, alg.critic_normalizer):
        normalizer.update(inputs)
        normalizer.eval()


SPEC = registry.register(AlgorithmSpec(
    "rlif", "RLIF's takeover reward with RLPD's data mixing (SAC): a correction of a deployed bundle from its "
    "interventions", "interventions", RLIFConfig, bundle_kind="residual", trainer=fit_residual,
    exporter=SAC.export_policy))
