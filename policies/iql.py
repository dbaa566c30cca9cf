"""Implicit Q-Learning (Kostrikov, Nair & Levine, 2021), in one readable class: offline RL from logged robot data.

No simulator: it learns from transitions already recorded (deployment logs, human interventions) in the layout of
``robostack.policies.sac.BUFFER_KEYS``, with actions already in ``[-1, 1]^d``. The loop (what a workflow does):

    algo = IQL(num_policy_obs, num_critic_obs, num_actions, IQLConfig(), device)
    algo.load_data(logs, prior=interventions)  # prior: optional, fills prior_ratio of every batch
    for _ in range(cfg.num_updates // 1000):
        stats = algo.update(1000)
    module = algo.export_policy()  # policy obs -> action in [-1, 1]^d, deterministic

Each update, on one minibatch of dataset transitions ``(s, a, r, s', done)``:

1. **Value** by expectile regression on the dataset's actions only (never a policy's):
   ``V(s) <- expectile_tau of min(Q1_targ, Q2_targ)(s, a)``. With ``expectile`` above 0.5 this leans towards the
   best actions the data holds at ``s``, the "implicit" max over in-distribution actions.
2. **Policy** by advantage-weighted regression on the dataset's actions:
   maximise ``min(exp(beta * (Q_targ(s, a) - V(s))), max_weight) * log pi(a | s)``.
3. **Twin Q** regressed on ``r + gamma * (1 - done) * V(s')``; ``done`` marks terminations only (a time-out's
   next observation bootstraps).
4. **Polyak** update of the target Q's.

Design choices:

* **Asymmetric**, like SAC: the actor reads the ``policy`` observation (what the robot has at deploy time), the Q
  and V networks the privileged ``critic`` observation; only the actor is exported.
* **Critics with LayerNorm** (``critic_layer_norm``, as SAC's) on Q and V.
* **Fixed observation normalization** (``normalize_obs``): the dataset is known up front, so the mean and
  variance of the loaded data (and prior) are measured once, at the first ``load_data`` of a fresh learner, and
  then frozen; a checkpoint carries them, so a resumed learner keeps its statistics.
* **The actor** is SAC's ``SquashedGaussianActor`` (bounds ``[-1, 1]``), read as an *unsquashed* Gaussian whose
  mean is squashed: ``pi(a | s) = N(a; tanh(mean(s)), std(s))``. Its deterministic action, ``tanh(mean)``, is what
  SAC's exporter already writes. See ``log_prob`` for why not the tanh-squashed density.
* **Prior data** (e.g. the intervention steps, to up-weight them): a second buffer, sampled as SAC samples its
  prior data (``sample_mixed``), ``round(prior_ratio * batch_size)`` rows of each batch.

Not a registered algorithm: ``AlgorithmSpec`` knows reinforcement learners (driven by the online trainer, which
steps a simulator), imitation learners (``robostack.workflows.imitation``, chunk bundles) and safety critics. None
of them is offline RL, and a "reinforcement" registration would list ``iql`` in ``robostack train`` where it
cannot run. A workflow imports ``IQL`` directly.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from robostack import registry
from robostack.policies.ppo import EmpiricalNormalizer, gaussian_log_prob
from robostack.policies.sac import (
    BUFFER_KEYS,
    ReplayBuffer,
    SquashedGaussianActor,
    TwinQ,
    _trunk,
    polyak_update,
    sample_mixed,
    updates_in_blocks,
)
from robostack.specs import AlgorithmSpec

__all__ = ["IQL", "LOSS_KEYS", "IQLConfig", "awr_weights", "expectile_loss", "q_targets"]

LOSS_KEYS = ("value_loss", "critic_loss", "actor_loss", "adv_mean", "weight_mean")  # what ``update`` returns
CONSTANT_VARIANCE = 1e-8  # an observation dimension whose variance in the data is below this is left unscaled
ACTION_TOLERANCE = 1e-5  # how far past [-1, 1] a logged action may lie (rounding) before it is refused


@dataclass
class IQLConfig:
    """Defaults for small robot datasets (10k-200k transitions, 30-60 observation and 4-12 action dimensions);
    the paper's MuJoCo settings otherwise (expectile 0.7, beta 3, max weight 100, 256x256 networks)."""

    expectile: float = 0.7  # tau of the value's expectile regression: 0.5 = mean (SARSA), -> 1 = max over data
    beta: float = 3.0  # inverse temperature of the advantage weights: 0 = behaviour cloning
    max_weight: float = 100.0  # clip of exp(beta * advantage)
    gamma: float = 0.99
    tau: float = 0.005  # Polyak factor of the target Q's
    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    value_lr: float = 3e-4
    batch_size: int = 256
    actor_hidden: tuple[int, ...] = (256, 256)
    critic_hidden: tuple[int, ...] = (256, 256)  # Q and V
    activation: str = "relu"
    critic_layer_norm: bool = True  # as SAC's critics (RLPD): LayerNorm after each hidden layer of Q and V
    actor_dropout: float | None = None  # dropout after each hidden layer of the actor (the paper: 0.1 on some tasks)
    normalize_obs: bool = True  # measured once on the loaded data, then frozen
    log_std_min: float = -5.0
    log_std_max: float = 2.0
    max_grad_norm: float | None = None  # None = no clipping
    prior_ratio: float = 0.5  # share of each batch drawn from the prior data, when some is loaded
    num_updates: int = 100_000  # gradient steps a workflow runs in all (100k x 256 = 128 passes over 200k)


# --------------------------------------------------------------------------------------------- math


def expectile_loss(diff: torch.Tensor, expectile: float) -> torch.Tensor:
    """Asymmetric squared loss ``mean(|expectile - 1(diff < 0)| * diff^2)`` of ``diff = Q - V``.

    Its minimiser over V is the ``expectile`` of Q: positive errors (Q above V) weigh ``expectile``, negative ones
    ``1 - expectile``.
    """
    weight = torch.where(diff < 0, 1.0 - expectile, expectile)
    return (weight * diff.square()).mean()


def q_targets(rewards: torch.Tensor, dones: torch.Tensor, next_v: torch.Tensor, gamma: float) -> torch.Tensor:
    """``r + gamma * (1 - done) * V(s')``: IQL bootstraps from the value network, never from a policy's action."""
    return rewards + gamma * (1.0 - dones.float()) * next_v


def awr_weights(advantage: torch.Tensor, beta: float, max_weight: float) -> torch.Tensor:
    """``min(exp(beta * advantage), max_weight)`` (computed without overflow for large advantages)."""
    return torch.exp((beta * advantage).clamp(max=math.log(max_weight)))


# ---------------------------------------------------------------------------------------------- IQL


class IQL:
    """The algorithm: owns the actor, twin Q and its target, the value network and the dataset buffers."""

    def __init__(self, num_policy_obs: int, num_critic_obs: int, num_actions: int, cfg: IQLConfig | None = None,
                 device: torch.device | str = "cpu"):
        self.cfg = cfg = cfg if cfg is not None else IQLConfig()
        if cfg.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {cfg.batch_size}")
        if not 0.0 < cfg.expectile < 1.0:
            raise ValueError(f"expectile must be in (0, 1), got {cfg.expectile}")
        if not 0.0 <= cfg.prior_ratio <= 1.0:
            raise ValueError(f"prior_ratio must be in [0, 1], got {cfg.prior_ratio}")
        if cfg.max_weight <= 0.0:
            raise ValueError(f"max_weight must be > 0, got {cfg.max_weight}")
        self.device = torch.device(device)
        self.num_policy_obs, self.num_critic_obs, self.num_actions = num_policy_obs, num_critic_obs, num_actions
        self.model_kwargs = {
            "num_policy_obs": num_policy_obs, "num_critic_obs": num_critic_obs, "num_actions": num_actions,
            "actor_hidden": tuple(cfg.actor_hidden), "critic_hidden": tuple(cfg.critic_hidden),
            "activation": cfg.activation, "critic_layer_norm": cfg.critic_layer_norm,
            "actor_dropout": cfg.actor_dropout, "normalize_obs": cfg.normalize_obs,
            "log_std_min": cfg.log_std_min, "log_std_max": cfg.log_std_max}

        self.actor = SquashedGaussianActor(
            num_policy_obs, num_actions, -torch.ones(num_actions), torch.ones(num_actions), tuple(cfg.actor_hidden),
            cfg.activation, cfg.normalize_obs, cfg.log_std_min, cfg.log_std_max)
        if cfg.actor_dropout:
            self.actor.trunk = _with_dropout(self.actor.trunk, cfg.actor_dropout)
        self.actor.to(self.device)
        self.critic = TwinQ(num_critic_obs, num_actions, tuple(cfg.critic_hidden), cfg.activation,
                            cfg.critic_layer_norm).to(self.device)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        width = cfg.critic_hidden[-1] if cfg.critic_hidden else num_critic_obs
        self.value = nn.Sequential(_trunk(num_critic_obs, tuple(cfg.critic_hidden), cfg.activation,
                                          cfg.critic_layer_norm), nn.Linear(width, 1)).to(self.device)
        self.critic_normalizer: nn.Module = (EmpiricalNormalizer(num_critic_obs) if cfg.normalize_obs
                                             else nn.Identity()).to(self.device)

        self.actor_optimizer = torch.optim.Adam(self.actor.parameters(), lr=cfg.actor_lr)
        self.critic_optimizer = torch.optim.Adam(self.critic.parameters(), lr=cfg.critic_lr)
        self.value_optimizer = torch.optim.Adam(self.value.parameters(), lr=cfg.value_lr)

        self.buffer: ReplayBuffer | None = None
        self.prior_buffer: ReplayBuffer | None = None
        self.updates_done = 0  # gradient steps since the start of training (checkpointed)

    # -- data
    def load_data(self, data: dict[str, torch.Tensor], prior: dict[str, torch.Tensor] | None = None) -> None:
        """Learn from ``data`` (a dict of ``BUFFER_KEYS`` tensors, actions in ``[-1, 1]^d``, ``dones`` true for
        terminations only); ``prior``, in the same layout, fills ``prior_ratio`` of every batch. Replaces what an
        earlier call loaded. A fresh learner (``normalize_obs``) measures its observation statistics here."""
        self.buffer = self._to_buffer(data, "data")
        self.prior_buffer = self._to_buffer(prior, "prior") if prior is not None else None
        if self.cfg.normalize_obs and float(self.critic_normalizer.count) == 0:
            buffers = [b for b in (self.buffer, self.prior_buffer) if b is not None]
            for normalizer, key in ((self.actor.normalizer, "policy_obs"), (self.critic_normalizer, "critic_obs")):
                normalizer.train()
                normalizer.update(torch.cat([b.data[key][:len(b)] for b in buffers]))
                normalizer.eval()  # frozen from now on: update() is never called again
                # a dimension constant in the data is centred, not scaled: dividing by sqrt(0 + 1e-8) would turn
                # any change of it on the robot into an input 10^4 times its size
                normalizer.var.masked_fill_(normalizer.var < CONSTANT_VARIANCE, 1.0)

    def _to_buffer(self, data: dict[str, torch.Tensor], name: str) -> ReplayBuffer:
        missing = [key for key in BUFFER_KEYS if key not in data]
        if missing:
            raise KeyError(f"{name} lacks {missing} (needs {BUFFER_KEYS})")
        if len({int(data[key].shape[0]) for key in BUFFER_KEYS}) != 1 or int(data["rewards"].shape[0]) == 0:
            raise ValueError(f"{name}: every key must hold the same number (> 0) of transitions")
        sizes = {"policy_obs": self.num_policy_obs, "critic_obs": self.num_critic_obs, "actions": self.num_actions,
                 "next_policy_obs": self.num_policy_obs, "next_critic_obs": self.num_critic_obs}
        for key, size in sizes.items():
            if data[key].ndim != 2 or data[key].shape[-1] != size:
                raise ValueError(f"{name}[{key!r}] must be [N, {size}], got {tuple(data[key].shape)}")
        actions = torch.as_tensor(data["actions"], dtype=torch.float32)
        if not bool(torch.isfinite(actions).all()) or bool((actions.abs() > 1.0 + ACTION_TOLERANCE).any()):
            raise ValueError(f"{name}['actions'] must be finite and in [-1, 1] (normalize them by the action bounds)")
        return ReplayBuffer.from_dict({**data, "actions": actions.clamp(-1.0, 1.0)}, self.device)

    def sample_batch(self, batch_size: int | None = None,
                     generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """A minibatch: ``round(prior_ratio * n)`` rows of the prior data (if any), the rest of the data."""
        if self.buffer is None:
            raise RuntimeError("IQL has no data: call load_data first")
        n = self.cfg.batch_size if batch_size is None else batch_size
        return sample_mixed(self.buffer, self.prior_buffer, self.cfg.prior_ratio, n, generator)

    # -- the policy
    def log_prob(self, policy_obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """``log N(a; tanh(mean(s)), std(s))`` of dataset actions ``a`` in ``[-1, 1]^d``.

        Not the tanh-squashed density SAC uses: that needs ``atanh(a)``, infinite at the saturated commands robot
        logs are full of (a stick held against its stop, a clipped command). Clamping them to ``+-(1 - 1e-6)``
        would put them at ``u = +-7.25``, whose Gaussian term then dominates the weighted regression and drags the
        pre-tanh mean (and the std) after those rows. The Gaussian around ``tanh(mean)`` is finite for every
        action in ``[-1, 1]``, its gradient is bounded, and its deterministic action is the same ``tanh(mean)``.
        Its samples may leave ``[-1, 1]``; IQL never samples it (nor does the exported policy).
        """
        mean, log_std = self.actor(policy_obs)
        return gaussian_log_prob(actions, torch.tanh(mean), log_std.exp())

    @torch.no_grad()
    def act_inference(self, policy_obs: torch.Tensor) -> torch.Tensor:
        """Deterministic action in ``[-1, 1]^d`` from a raw ``policy`` observation batch (dropout off)."""
        training = self.actor.training
        self.actor.eval()
        try:
            return torch.tanh(self.actor(policy_obs.to(self.device, torch.float32))[0])
        finally:
            self.actor.train(training)

    def export_policy(self) -> nn.Module:
        """A standalone deterministic ``policy obs [B, obs] -> action [B, d]`` module in ``[-1, 1]`` (eval mode,
        on the learner's device), for TorchScript and ONNX export."""
        return self.actor.export_policy().eval()

    def train_mode(self) -> None:
        for module in (self.actor, self.critic, self.value):
            module.train()
        self._freeze_normalizers()

    def eval_mode(self) -> None:
        for module in (self.actor, self.critic, self.value):
            module.eval()
        self._freeze_normalizers()

    def _freeze_normalizers(self) -> None:
        self.actor.normalizer.eval()
        self.critic_normalizer.eval()

    # -- learning
    def _step(self, optimizer: torch.optim.Optimizer, loss: torch.Tensor, module: nn.Module) -> None:
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.max_grad_norm is not None:
            nn.utils.clip_grad_norm_(module.parameters(), self.cfg.max_grad_norm)
        optimizer.step()

    def update(self, num_updates: int) -> dict[str, float]:
        """``num_updates`` gradient steps of V, the actor and Q (in that order, each on the same fresh minibatch),
        each followed by a Polyak step of the target Q's; returns their mean losses (NaN if none ran)."""
        if self.buffer is None:
            raise RuntimeError("IQL has no data: call load_data first")
        if num_updates <= 0:
            return {key: float("nan") for key in LOSS_KEYS}
        cfg = self.cfg
        self.train_mode()
        sums = dict.fromkeys(LOSS_KEYS, 0.0)
        for _ in range(num_updates):
            b = self.sample_batch()
            n = b["rewards"].shape[0]
            critic_obs = self.critic_normalizer(b["critic_obs"])
            with torch.no_grad():
                q_data = torch.minimum(*self.critic_target(critic_obs, b["actions"]))  # dataset actions only

            # 1. value: the expectile of the target Q over the dataset's actions
            value_loss = expectile_loss(q_data - self.value(critic_obs).squeeze(-1), cfg.expectile)
            self._step(self.value_optimizer, value_loss, self.value)
            with torch.no_grad():  # the stepped V, at s (advantages) and s' (Q targets), as the paper's code
                both = self.value(torch.cat([critic_obs, self.critic_normalizer(b["next_critic_obs"])]))
                v, next_v = both.squeeze(-1).split(n)

            # 2. actor: advantage-weighted regression onto the dataset's actions
            advantage = q_data - v
            weights = awr_weights(advantage, cfg.beta, cfg.max_weight)
            actor_loss = -(weights * self.log_prob(b["policy_obs"], b["actions"])).mean()
            self._step(self.actor_optimizer, actor_loss, self.actor)

            # 3. twin Q on r + gamma * (1 - done) * V(s'), 4. the targets follow
            target = q_targets(b["rewards"], b["dones"], next_v, cfg.gamma)
            q1, q2 = self.critic(critic_obs, b["actions"])
            critic_loss = F.mse_loss(q1, target) + F.mse_loss(q2, target)
            self._step(self.critic_optimizer, critic_loss, self.critic)
            polyak_update(self.critic_target, self.critic, cfg.tau)

            for key, value in zip(LOSS_KEYS, (value_loss, critic_loss, actor_loss, advantage.mean(), weights.mean())):
                sums[key] += value.item()
        self.updates_done += num_updates
        return {key: total / num_updates for key, total in sums.items()}

    # -- checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Networks (normalizers included), optimizers and the update counter; not the data."""
        return {
            "algo": "iql",
            "actor": self.actor.state_dict(),
            "critic": self.critic.state_dict(),
            "critic_target": self.critic_target.state_dict(),
            "value": self.value.state_dict(),
            "critic_normalizer": self.critic_normalizer.state_dict(),
            "actor_optimizer": self.actor_optimizer.state_dict(),
            "critic_optimizer": self.critic_optimizer.state_dict(),
            "value_optimizer": self.value_optimizer.state_dict(),
            "updates_done": self.updates_done,
            "model_kwargs": dict(self.model_kwargs),
        }

    def load_state_dict(self, state: dict[str, Any], load_optimizer: bool = True) -> None:
        if state.get("algo") != "iql":
            raise ValueError(f"not an IQL state (algo {state.get('algo')!r})")
        for name in ("actor", "critic", "critic_target", "value", "critic_normalizer"):
            getattr(self, name).load_state_dict(state[name])
        if load_optimizer:
            for name in ("actor_optimizer", "critic_optimizer", "value_optimizer"):
                getattr(self, name).load_state_dict(state[name])
        self.updates_done = int(state.get("updates_done", 0))


def _with_dropout(trunk: nn.Sequential, p: float) -> nn.Sequential:
    """``trunk`` with a dropout layer after each activation (each hidden layer's output)."""
    layers: list[nn.Module] = []
    for layer in trunk:
        layers.append(layer)
        if not isinstance(layer, (nn.Linear, nn.LayerNorm)):
            layers.append(nn.Dropout(p))
    return nn.Sequential(*layers)


UPDATE_BLOCK = 200  # updates between progress reports


def fit_logged(online: dict[str, torch.Tensor], prior: dict[str, torch.Tensor], settings: Any,
               on_update: Any = None) -> tuple[IQL, dict[str, float]]:
    """IQL on logged steps (``online``) with the human's steps as prior data (none where ``prior`` is empty), both in
    ``BUFFER_KEYS`` layout: learning from interventions from the logs alone (``settings``: its ``RLIFConfig``, whose
    ``iql`` section configures this algorithm, ``num_updates`` included, and whose ``seed`` seeds it).
    ``on_update(i, losses)`` after each block of updates (a progress bar)."""
    torch.manual_seed(settings.seed)
    learner = IQL(online["policy_obs"].shape[1], online["critic_obs"].shape[1], online["actions"].shape[1],
                  settings.iql)
    learner.load_data(online, prior=prior if len(prior["rewards"]) else None)
    return learner, updates_in_blocks(learner.update, settings.iql.num_updates, UPDATE_BLOCK, on_update)


SPEC = registry.register(AlgorithmSpec(
    "iql", "Implicit Q-Learning, offline from logs alone: a correction of a deployed bundle from its interventions",
    "interventions", IQLConfig, bundle_kind="residual", trainer=fit_logged, exporter=IQL.export_policy))
