"""A gripper rule learned from the human's takeovers: close where they closed.

Where a policy fails by leaving its gripper open at the object (the shipped panda-lift diffusion bundle: 51 of
its 55 failures in 1000 episodes end with the TCP at the cube and the fingers open, and closing there turns 0.939
into 0.994-0.998; BENCHMARKS.md), no correction of the arm's motion is missing, and a residual on every action
learns the human's servo instead. This learner fits the probability that the executed gripper command closes given
the policy's observation (a small MLP, binary cross-entropy) on the steps that went right: the human's, and the
policy's own except those in the ``before_takeover_steps`` before a takeover (where it went wrong: the human's
fixes are learned from what they did instead). Only the human's steps teach too little: takeovers at the cube
close at once, and a rule fitted on them alone closed the gripper far from the cube (0.052 of 1000 episodes).
It is exported as a residual that adds a close where that probability is above ``threshold`` and changes
nothing else: the base's motion and its own closes pass as they were. The residual's ``scale`` must reach across
the gripper's range (2 for actions in [-1, 1]), so that an open command becomes a close.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from robostack import registry
from robostack.policies.sac import updates_in_blocks
from robostack.specs import AlgorithmSpec

__all__ = ["GripperRuleConfig", "GripperRule", "fit_gripper_rule"]

UPDATE_BLOCK = 250


@dataclass
class GripperRuleConfig:
    action_index: int = -1  # the gripper's action in the task's actions (above zero closes)
    threshold: float = 0.9  # the probability of closing above which the rule closes
    before_takeover_steps: int = 100  # the policy's steps before a takeover left out (it was going wrong there)
    inputs: tuple[str, ...] = ()  # the policy observation's terms the rule reads, by name (empty: all of them)
    columns: tuple[int, ...] = ()  # where those are in the observation vector: set from ``inputs`` by the caller
    hidden: tuple[int, ...] = (64, 64)
    batch_size: int = 256
    learning_rate: float = 1e-3
    updates: int = 2000  # the classifier's gradient steps


class _CloseLogits(nn.Module):
    """The log-odds of a close [B] from full observations [B, >= obs_dim]: the rule's columns, normalized, through
    the MLP. One module for fitting and for the exported residual."""

    def __init__(self, columns: torch.Tensor, hidden: tuple[int, ...], mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        layers, width = [], len(columns)
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU()]
            width = size
        self.net = nn.Sequential(*layers, nn.Linear(width, 1))
        self.register_buffer("columns", columns)
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net((obs[:, self.columns] - self.mean) / self.std)[:, 0]


class GripperRule:
    """The classifier and what it needs at run time: the observation's normalization, which action is the
    gripper, and the threshold."""

    def __init__(self, obs_dim: int, act_dim: int, cfg: GripperRuleConfig, mean: torch.Tensor, std: torch.Tensor):
        columns = torch.as_tensor(cfg.columns or range(obs_dim), dtype=torch.long)
        self.logits = _CloseLogits(columns, cfg.hidden, mean, std)
        self.act_dim, self.cfg = act_dim, cfg
        self.gripper = cfg.action_index % act_dim

    def export_module(self) -> nn.Module:
        """``[observation, base action] -> residual``: 1 on the gripper where the rule closes, else 0."""
        return _CloseWhereTheHumanWould(self)


class _CloseWhereTheHumanWould(nn.Module):
    def __init__(self, rule: GripperRule):
        super().__init__()
        self.logits = rule.logits.eval()
        onehot = torch.zeros(rule.act_dim)
        onehot[rule.gripper] = 1.0
        self.register_buffer("onehot", onehot)
        self.logit_threshold = float(torch.logit(torch.tensor(rule.cfg.threshold)))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return (self.logits(inputs) > self.logit_threshold).to(inputs.dtype).unsqueeze(1) * self.onehot


def fit_gripper_rule(online: dict[str, torch.Tensor], prior: dict[str, torch.Tensor], settings: Any,
                     on_update: Any = None) -> tuple[GripperRule, dict[str, float]]:
    """Fit the rule on the logged steps (``online``, in log order, a takeover's start marked by the reward of -1
    on the policy's step before it) less the policy's ``before_takeover_steps`` before each takeover, from
    ``BUFFER_KEYS``-layout buffers whose actions are residual targets at ``settings.scale``: the executed command
    is the base's plus ``scale`` times that target. ``settings``: its ``RLIFConfig`` (``gripper``, ``seed``).
    Refuses, in one line, a scale that cannot turn an open command into a close, a run of logs without any
    takeover (``prior``, the human's steps, empty: nothing says where the policy goes wrong), and steps that never
    close or never open (nothing to tell apart)."""
    cfg: GripperRuleConfig = settings.gripper
    if settings.scale < 2.0:
        raise ValueError(f"a gripper rule needs scale >= 2 (the gripper's whole range) to turn an open command into "
                         f"a close; got scale={settings.scale}")
    if len(prior["rewards"]) == 0:
        raise ValueError("the logs hold no human step: no takeover says where the policy's gripper goes wrong")
    act_dim = online["actions"].shape[1]
    obs_dim = online["policy_obs"].shape[1] - act_dim
    if not -act_dim <= cfg.action_index < act_dim:
        raise ValueError(f"gripper.action_index {cfg.action_index} is not one of the {act_dim} actions")
    gripper = cfg.action_index % act_dim
    went_wrong = torch.zeros(len(online["rewards"]), dtype=torch.bool)
    for start in torch.nonzero(online["rewards"] < 0).flatten().tolist():
        went_wrong[max(0, start + 1 - cfg.before_takeover_steps):start + 1] = True
    executed = online["policy_obs"][:, obs_dim + gripper] + settings.scale * online["actions"][:, gripper]
    closes = (executed[~went_wrong] > 0).float()
    if len(closes) == 0 or closes.min() == closes.max():
        never = "open" if len(closes) and closes[0] else "close"
        raise ValueError(f"the {len(closes)} steps that went right never {never} the gripper: no rule to learn "
                         "where it closes")
    torch.manual_seed(settings.seed)
    if any(not 0 <= c < obs_dim for c in cfg.columns):
        raise ValueError(f"gripper.columns {list(cfg.columns)} lie outside the {obs_dim} observation values")
    all_obs = online["policy_obs"][:, :obs_dim]
    read = all_obs[:, list(cfg.columns)] if cfg.columns else all_obs
    rule = GripperRule(obs_dim, act_dim, cfg, read.mean(0), read.std(0).clamp(min=1e-6))
    obs = all_obs[~went_wrong]
    optimizer = torch.optim.Adam(rule.logits.parameters(), lr=cfg.learning_rate)
    loss_fn = nn.BCEWithLogitsLoss()

    def update(n: int) -> dict[str, float]:
        for _ in range(n):
            rows = torch.randint(len(obs), (cfg.batch_size,))
            loss = loss_fn(rule.logits(obs[rows]), closes[rows])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            agree = ((rule.logits(obs) > 0).float() == closes).float().mean()
        return {"bce": float(loss.detach()), "accuracy": float(agree)}

    return rule, updates_in_blocks(update, cfg.updates, UPDATE_BLOCK, on_update)


SPEC = registry.register(AlgorithmSpec(
    "gripper-rule", "the human's gripper rule from their takeovers: a residual that closes where they closed",
    "interventions", GripperRuleConfig, bundle_kind="residual", trainer=fit_gripper_rule,
    exporter=GripperRule.export_module))
