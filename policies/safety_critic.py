"""The safety critic's learning algorithm: Q_risk(s, a) in [0, 1], the discounted probability of a constraint
violation ahead under a fixed policy, fitted by temporal differences (Recovery RL, SQRL) on transitions
``(x, c, x', terminal)``: features of a state and the policy's command, the violation indicator after the step,
the next state's features with the policy's next command. The rollouts it learns from and the bundle it goes
into are ``robostack.workflows.safety_critic``'s.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from robostack import registry
from robostack.specs import AlgorithmSpec


@dataclass
class CriticTrainConfig:
    hidden: list[int] = field(default_factory=lambda: [128, 128])
    steps: int = 6000  # gradient steps
    batch_size: int = 2048
    learning_rate: float = 1.0e-3
    target_tau: float = 0.02  # Polyak factor of the target network
    torch_threads: int = 0  # 0: all cores


class RiskNetwork(nn.Module):
    """Q_risk: normalized features -> an MLP -> a sigmoid (the risk in [0, 1])."""

    def __init__(self, dim: int, hidden: Sequence[int], mean: np.ndarray, std: np.ndarray):
        super().__init__()
        layers, width = [], dim
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ELU()]
            width = size
        self.body = nn.Sequential(*layers, nn.Linear(width, 1))
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.body((x - self.mean) / self.std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(x))


def td_targets(violation: torch.Tensor, next_risk: torch.Tensor, terminal: torch.Tensor, gamma: float
               ) -> torch.Tensor:
    """``c + (1 - c) * gamma * Q_risk(s', a')`` (``c``: the violation after the step), with no future after an
    episode's last step (``terminal``)."""
    c = violation.float()
    return c + (1.0 - c) * gamma * next_risk * (~terminal).float()


def fit_critic(data: dict[str, np.ndarray], gamma: float, cfg: CriticTrainConfig, seed: int = 0,
               writer: Any = None, progress: bool = True) -> RiskNetwork:
    """Fitted TD of Q_risk on ``transitions``: binary cross-entropy to the TD target of a slowly moving copy."""
    torch.manual_seed(seed)
    x = torch.as_tensor(data["x"])
    x_next = torch.as_tensor(data["x_next"])
    violation = torch.as_tensor(data["violation"])
    terminal = torch.as_tensor(data["terminal"])
    std = np.maximum(data["x"].std(0), 1e-3)
    net = RiskNetwork(x.shape[1], cfg.hidden, data["x"].mean(0), std)
    target = copy.deepcopy(net).requires_grad_(False)
    optimizer = torch.optim.Adam(net.parameters(), lr=cfg.learning_rate)
    generator = torch.Generator().manual_seed(seed)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=cfg.steps, desc="safety critic", unit="step", dynamic_ncols=True)
    for step in range(cfg.steps):
        idx = torch.randint(0, len(x), (cfg.batch_size,), generator=generator)
        with torch.no_grad():
            y = td_targets(violation[idx], target(x_next[idx])[:, 0], terminal[idx], gamma)
        loss = nn.functional.binary_cross_entropy_with_logits(net.logits(x[idx])[:, 0], y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            for p, q in zip(net.parameters(), target.parameters()):
                q.mul_(1.0 - cfg.target_tau).add_(cfg.target_tau * p)
        if writer is not None and step % 50 == 0:
            writer.add_scalar("critic/td_loss", float(loss.detach()), step)
        if bar is not None:
            bar.update(1)
            if step % 100 == 0:
                bar.set_postfix(loss=f"{float(loss.detach()):.4f}", refresh=False)
    if bar is not None:
        bar.close()
    return net.eval()


def export_module(net: RiskNetwork) -> RiskNetwork:
    """The module a bundle's ``critic.onnx`` holds: normalization, MLP and sigmoid in one graph."""
    return net.eval()


SPEC = registry.register(AlgorithmSpec(
    "safety-critic", "Q_risk of a deployed policy's commands, by TD on disturbed rollouts; added to its bundle",
    "critic", CriticTrainConfig, bundle_kind="critic", trainer=fit_critic, exporter=export_module))
