"""A human's stick rule, learned from their takeovers: how fast they moved the task command (a drone's setpoint)
given how far the robot was from the command the task gave and how it moved. Run all the time by the deployed
bundle (a command-correction bundle, ``robostack.bundle.kinds``), it aims the policy off as the human did, which
fixes what a policy cannot see: a heavier drone hanging below its target, a weak motor pulling it aside
(BENCHMARKS.md, "Learning from interventions").

The rule is linear: ``rate = [command error, inputs] @ W + b``, fitted by ridge regression on the frames a human
held the command through (``robostack.workflows.interventions`` extracts them from the logs). Linear because a
pilot's sticks are close to it (a PD on the error) and 20 episodes of takeovers then determine it; the bundle's
limits keep it within what the human did (``rate_limit``: their fastest stick, but for the 1 % of frames whose
command jumped between two logged states; ``offset_limit``: their farthest lead), unless the config sets them (the
device's full scale and lead: what the human could have done).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from robostack import registry
from robostack.specs import AlgorithmSpec


@dataclass
class CommandCorrectionConfig:
    tracks: list[str] = field(default_factory=list)  # per command component, the observation.state value it sets
    inputs: list[str] = field(default_factory=list)  # further state values the rule reads (a drone's velocity)
    ridge: float = 1e-3  # ridge weight on W per frame (not on b): a rule the takeovers barely excite stays small
    rate_limit: list[float] | None = None  # per component, units/s; None: how fast the human moved it (99th pct)
    offset_limit: float | None = None  # norm, command units; None: the farthest the human held it from the task's
    lead: float | None = None  # how close to the tracked values a takeover keeps the command; frames there: left out


@dataclass
class CommandRule:
    """``rate = x @ weights + bias``; ``rms`` the fit's residual per component on the frames it was fitted to."""

    weights: np.ndarray  # [n + k, n]
    bias: np.ndarray  # [n]
    rms: np.ndarray  # [n]
    frames: int


def fit_command_rule(inputs: np.ndarray, rates: np.ndarray, cfg: CommandCorrectionConfig,
                     on_update: Any = None) -> tuple[CommandRule, dict[str, float]]:
    """The ridge fit of ``rates`` [T, n] on ``inputs`` [T, n + k]; returns the rule and its losses (residual rms)."""
    x, y = np.asarray(inputs, dtype=np.float64), np.asarray(rates, dtype=np.float64)
    if len(x) < x.shape[1] + 1:
        raise ValueError(f"{len(x)} frames held by a human: too few to fit a stick rule of {x.shape[1]} inputs")
    design = np.hstack([x, np.ones((len(x), 1))])
    penalty = cfg.ridge * len(x) * np.eye(design.shape[1])
    penalty[-1, -1] = 0.0  # the bias is not shrunk
    solution = np.linalg.solve(design.T @ design + penalty, design.T @ y)
    rms = np.sqrt(np.mean((design @ solution - y) ** 2, axis=0))
    rule = CommandRule(solution[:-1].astype(np.float32), solution[-1].astype(np.float32), rms, len(x))
    return rule, {f"rms_{i}": float(v) for i, v in enumerate(rms)}


def rule_module(rule: CommandRule) -> torch.nn.Module:
    """The rule as the graph a command-correction bundle holds: inputs [B, n + k] -> rate [B, n]."""
    linear = torch.nn.Linear(*rule.weights.shape)
    with torch.no_grad():
        linear.weight.copy_(torch.from_numpy(rule.weights.T.copy()))
        linear.bias.copy_(torch.from_numpy(rule.bias))
    return linear.eval()


SPEC = registry.register(AlgorithmSpec(
    "command-correction", "the human's stick rule, learned from their takeovers: a correction of the command a "
    "deployed bundle follows", "interventions", CommandCorrectionConfig, bundle_kind="command_correction",
    trainer=fit_command_rule, exporter=rule_module))
