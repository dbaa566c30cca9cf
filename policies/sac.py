"""Soft Actor-Critic for batched environments, in one readable file (with RLPD-style prior data).

The loop (what ``robostack.workflows.train`` does for ``algo: sac``):

    algo = SAC.from_env(env, SACConfig(), device)
    obs, _ = env.reset(seed=0)
    for it in range(iterations):
        with torch.inference_mode():
            for _ in range(cfg.num_steps_per_env):
                action = algo.act(obs)
                next_obs, reward, terminated, truncated, info = env.step(action)
                algo.process_env_step(obs, action, reward, terminated, truncated, info, next_obs)
                obs = next_obs
        stats = algo.update()

Units, defined once:

* A **vectorized env step** is one ``env.step`` call; it adds ``num_envs`` transitions to the replay buffer.
* ``utd_ratio`` (update-to-data ratio) is the number of **critic** gradient updates per vectorized env step.
  The actor and the temperature are updated once per vectorized env step (after every ``utd_ratio``-th
  critic update), as in RLPD. ``update()`` performs ``utd_ratio`` critic updates for every vectorized env
  step recorded by ``process_env_step`` since its last call, so with ``num_steps_per_env`` steps per
  iteration an iteration makes ``num_steps_per_env * utd_ratio`` critic and ``num_steps_per_env`` actor
  updates, each on a fresh minibatch of ``batch_size`` transitions.
* ``learning_starts`` counts *transitions* (summed over envs). Until that many were collected, ``act``
  returns uniform random actions and ``update`` does nothing (it returns NaN losses).

Design choices:

* **Asymmetric.** The actor reads only the ``"policy"`` group (what the deployed robot has); the twin Q
  critics read the privileged ``"critic"`` group and the action. Only the actor is exported.
* **Tanh-squashed Gaussian.** ``a = tanh(u)`` with ``u ~ N(mean, std)``; the env gets
  ``low + (a + 1) / 2 * (high - low)``. Log-probs (and so entropies and ``target_entropy``) are those of the
  squashed action ``a`` in ``[-1, 1]^d`` (the affine rescale is a constant that is left out). The critics
  also see ``a`` in ``[-1, 1]^d``, whatever the env's bounds; the buffers store *env* actions.
* **Time-outs bootstrap, terminations do not.** The stored next observation of an env that finished is
  ``info["final_obs"]`` (the env already auto-reset), and ``done`` is ``terminated`` only.
* **Critics with LayerNorm** (RLPD) keep Q from blowing up at high update-to-data ratios.
* **Prior data** (demonstrations, interventions): a second buffer of the same layout; each minibatch draws
  ``round(prior_ratio * batch_size)`` samples from it and the rest from the online buffer (RLPD's
  symmetric sampling). ``prior_bc_weight`` adds a behaviour-cloning term on the prior rows to the actor's loss
  (the actor's mean action towards their actions): with a human's few takeovers as the prior data, the critic
  alone learns slowly which of their actions matter (``robostack.policies.rlif``).
* **Checkpoints** hold the networks, optimizers, temperature and transition counter, not the replay
  buffer (up to millions of rows). A resumed run refills the buffer with its *current* policy (no more
  random actions) and updates again once it holds ``learning_starts`` transitions.
  ``state_dict(include_buffer=True)`` saves it too when wanted.

Everything lives on the ``torch.device`` the algorithm was built with; env tensors are moved there.
"""
from __future__ import annotations

import dataclasses

from collections.abc import Callable
import copy
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from robostack import registry
from robostack.policies import distributed
from robostack.policies.learner import Learner
from robostack.policies.ppo import EmpiricalNormalizer, _activation, gaussian_log_prob
from robostack.specs import AlgorithmSpec

__all__ = ["SACConfig", "ReplayBuffer", "SquashedGaussianActor", "TwinQ", "SAC", "compute_targets",
           "squashed_log_prob", "polyak_update", "BUFFER_KEYS", "SACLearner", "export_policy", "sample_mixed"]

# the layout of a transition, shared by the online and the prior-data buffers
BUFFER_KEYS = ("policy_obs", "critic_obs", "actions", "rewards", "next_policy_obs", "next_critic_obs", "dones")


@dataclass
class SACConfig:
    num_steps_per_env: int = 1  # vectorized env steps per iteration
    batch_size: int = 256  # transitions per gradient update
    buffer_size: int = 1_000_000  # transitions kept (circular)
    learning_starts: int = 5_000  # transitions collected with random actions before the first update
    utd_ratio: int = 1  # critic updates per vectorized env step (the actor gets one)
    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    alpha_lr: float = 3e-4
    gamma: float = 0.99
    tau: float = 0.005  # Polyak factor of the target critics
    init_temperature: float = 1.0
    target_entropy: float | None = None  # None = -action_dim
    actor_hidden: tuple[int, ...] = (256, 256)
    critic_hidden: tuple[int, ...] = (256, 256)
    activation: str = "relu"
    critic_layer_norm: bool = True  # RLPD
    normalize_obs: bool = False
    log_std_min: float = -5.0
    log_std_max: float = 2.0
    max_grad_norm: float | None = None  # None = no clipping
    prior_ratio: float = 0.5  # share of each minibatch drawn from the prior-data buffer, when one is loaded
    prior_data: str | None = None  # trainer: torch file with a dict of BUFFER_KEYS tensors
    prior_bc_weight: float = 0.0  # weight of a behaviour-cloning term pulling the actor to the prior rows' actions
    num_envs: int | None = None  # trainer: replaces TrainConfig.num_envs when this algorithm runs
    max_iterations: int | None = None  # trainer: replaces TrainConfig.max_iterations when this algorithm runs


# --------------------------------------------------------------------------------------------- math


LOG2 = math.log(2.0)


def squashed_log_prob(u: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """Log-density of ``a = tanh(u)`` for ``u ~ N(mean, exp(log_std))``, summed over the action dimension.

    Change of variables: ``log p(a) = log N(u) - sum log(1 - tanh(u)^2)``, with the stable form
    ``log(1 - tanh(u)^2) = 2 * (log 2 - u - softplus(-2u))``.
    """
    log_det = 2.0 * (LOG2 - u - F.softplus(-2.0 * u))
    return gaussian_log_prob(u, mean, log_std.exp()) - log_det.sum(-1)


def compute_targets(reward: torch.Tensor, done: torch.Tensor, next_q1: torch.Tensor, next_q2: torch.Tensor,
                    next_log_prob: torch.Tensor, alpha: torch.Tensor | float, gamma: float) -> torch.Tensor:
    """Soft Bellman target ``r + gamma * (1 - done) * (min(Q1', Q2') - alpha * log pi(a'|s'))``.

    ``done`` is true only for terminations; a truncated transition carries its final observation as next
    observation and bootstraps like any other.
    """
    soft_value = torch.minimum(next_q1, next_q2) - alpha * next_log_prob
    return reward + gamma * (1.0 - done.float()) * soft_value


def updates_in_blocks(update: Callable[[int], dict[str, float]], total: int, block: int,
                      on_update: Callable[[int, dict[str, float]], None] | None = None) -> dict[str, float]:
    """``total`` updates of a fit on fixed data, ``block`` at a time (``update(n)`` returns the last losses), with
    ``on_update(done, losses)`` after each block (a progress bar, TensorBoard); the last losses."""
    losses: dict[str, float] = {}
    done = 0
    while done < total:
        n = min(block, total - done)
        losses = update(n)
        done += n
        if on_update is not None:
            on_update(done, losses)
    return losses


@torch.no_grad()
def polyak_update(target: nn.Module, source: nn.Module, tau: float) -> None:
    """``target <- (1 - tau) * target + tau * source``, parameter by parameter (buffers are copied)."""
    for t, s in zip(target.parameters(), source.parameters()):
        t.lerp_(s, tau)
    for t, s in zip(target.buffers(), source.buffers()):
        t.copy_(s)


# ------------------------------------------------------------------------------------------- buffer


class ReplayBuffer:
    """Preallocated circular buffer of transitions on ``device``; ``dones`` marks terminations only.

    Actions are stored as the env received them (env bounds). ``add`` takes ``[n, ...]`` batches and wraps
    around (the oldest rows are overwritten); ``sample`` draws uniformly with replacement.
    """

    def __init__(self, capacity: int, num_policy_obs: int, num_critic_obs: int, num_actions: int,
                 device: torch.device | str = "cpu"):
        if capacity < 1:
            raise ValueError(f"buffer capacity must be >= 1, got {capacity}")
        self.capacity, self.device = int(capacity), torch.device(device)
        shapes = {"policy_obs": (num_policy_obs,), "critic_obs": (num_critic_obs,), "actions": (num_actions,),
                  "rewards": (), "next_policy_obs": (num_policy_obs,), "next_critic_obs": (num_critic_obs,),
                  "dones": ()}
        self.data = {k: torch.zeros(self.capacity, *shapes[k], device=self.device) for k in BUFFER_KEYS}
        self.ptr = 0  # next row to write
        self.size = 0

    def __len__(self) -> int:
        return self.size

    @torch.no_grad()
    def add(self, **batch: torch.Tensor) -> None:
        """Add ``n`` transitions given as ``BUFFER_KEYS`` keyword tensors with a leading ``n``."""
        if set(batch) != set(BUFFER_KEYS):
            raise KeyError(f"a transition needs exactly {BUFFER_KEYS}, got {tuple(batch)}")
        n = batch["rewards"].shape[0]
        if n > self.capacity:  # only the newest rows would survive
            batch = {k: v[-self.capacity:] for k, v in batch.items()}
            n = self.capacity
        idx = (self.ptr + torch.arange(n, device=self.device)) % self.capacity
        for key, value in batch.items():
            self.data[key][idx] = value.to(self.device, torch.float32).reshape(n, *self.data[key].shape[1:])
        self.ptr = (self.ptr + n) % self.capacity
        self.size = min(self.size + n, self.capacity)

    def sample(self, n: int, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        if self.size == 0:
            raise RuntimeError("cannot sample from an empty replay buffer")
        if generator is not None:
            idx = torch.randint(0, self.size, (n,), generator=generator, device=generator.device).to(self.device)
        else:
            idx = torch.randint(0, self.size, (n,), device=self.device)
        return {k: v[idx] for k, v in self.data.items()}

    @classmethod
    def from_dict(cls, data: dict[str, torch.Tensor], device: torch.device | str = "cpu") -> "ReplayBuffer":
        """A buffer holding exactly the given transitions (e.g. demonstrations)."""
        missing = [k for k in BUFFER_KEYS if k not in data]
        if missing:
            raise KeyError(f"prior data lacks {missing} (needs {BUFFER_KEYS})")
        n = int(data["rewards"].shape[0])
        buf = cls(n, data["policy_obs"].shape[-1], data["critic_obs"].shape[-1], data["actions"].shape[-1], device)
        buf.add(**{k: torch.as_tensor(data[k]) for k in BUFFER_KEYS})
        return buf

    def state_dict(self) -> dict[str, Any]:
        return {"ptr": self.ptr, "size": self.size, "data": {k: v[:self.size].clone() for k, v in self.data.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        size = int(state["size"])
        if size > self.capacity:
            raise ValueError(f"saved buffer holds {size} rows, more than the capacity {self.capacity}")
        for key, value in state["data"].items():
            self.data[key][:size] = value.to(self.device)
        self.size, self.ptr = size, int(state["ptr"]) % self.capacity


def sample_mixed(buffer: ReplayBuffer, prior_buffer: ReplayBuffer | None, prior_ratio: float, n: int,
                 generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """``n`` transitions: ``round(prior_ratio * n)`` from ``prior_buffer`` (all of them while ``buffer`` is empty),
    the rest from ``buffer``, prior rows first (``num_prior`` of them); just ``buffer`` when there is no prior data
    (RLPD's symmetric sampling)."""
    if prior_buffer is None or len(prior_buffer) == 0:
        return buffer.sample(n, generator)
    n_prior = n if len(buffer) == 0 else round(prior_ratio * n)
    parts = [prior_buffer.sample(n_prior, generator)] if n_prior else []
    if n - n_prior:
        parts.append(buffer.sample(n - n_prior, generator))
    return {k: torch.cat([p[k] for p in parts]) for k in BUFFER_KEYS} | {"num_prior": n_prior}


# ----------------------------------------------------------------------------------------- networks


def _trunk(in_dim: int, hidden: tuple[int, ...], activation: str, layer_norm: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in hidden:
        layers.append(nn.Linear(in_dim, width))
        if layer_norm:
            layers.append(nn.LayerNorm(width))
        layers.append(_activation(activation))
        in_dim = width
    return nn.Sequential(*layers)


class SquashedGaussianActor(nn.Module):
    """``policy`` obs (raw) -> tanh-squashed Gaussian over actions; holds its normalizer and the env bounds."""

    def __init__(self, num_policy_obs: int, num_actions: int, action_low: torch.Tensor, action_high: torch.Tensor,
                 hidden: tuple[int, ...] = (256, 256), activation: str = "relu", normalize_obs: bool = False,
                 log_std_min: float = -5.0, log_std_max: float = 2.0):
        super().__init__()
        low = torch.as_tensor(action_low, dtype=torch.float32).reshape(num_actions)
        high = torch.as_tensor(action_high, dtype=torch.float32).reshape(num_actions)
        if not (torch.isfinite(low).all() and torch.isfinite(high).all()):
            raise ValueError("SAC needs a finite action_space (low and high)")
        self.register_buffer("action_low", low)
        self.register_buffer("action_high", high)
        self.normalizer: nn.Module = EmpiricalNormalizer(num_policy_obs) if normalize_obs else nn.Identity()
        self.trunk = _trunk(num_policy_obs, tuple(hidden), activation)
        width = hidden[-1] if hidden else num_policy_obs
        self.mean_head = nn.Linear(width, num_actions)
        self.log_std_head = nn.Linear(width, num_actions)
        self.log_std_min, self.log_std_max = log_std_min, log_std_max

    def forward(self, obs_policy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-std of the pre-tanh Gaussian; log-std smoothly bounded to [min, max]."""
        h = self.trunk(self.normalizer(obs_policy))
        log_std = torch.tanh(self.log_std_head(h))
        log_std = self.log_std_min + 0.5 * (self.log_std_max - self.log_std_min) * (log_std + 1.0)
        return self.mean_head(h), log_std

    def sample(self, obs_policy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Reparameterized sample ``a`` in [-1, 1]^d and its log-prob."""
        mean, log_std = self(obs_policy)
        u = mean + log_std.exp() * torch.randn_like(mean)
        return torch.tanh(u), squashed_log_prob(u, mean, log_std)

    def to_env_action(self, a: torch.Tensor) -> torch.Tensor:
        """[-1, 1]^d -> the env's bounds."""
        return self.action_low + (a + 1.0) * 0.5 * (self.action_high - self.action_low)

    def from_env_action(self, action: torch.Tensor) -> torch.Tensor:
        """The env's bounds -> [-1, 1]^d (clamped)."""
        return (2.0 * (action - self.action_low) / (self.action_high - self.action_low) - 1.0).clamp(-1.0, 1.0)

    def act_inference(self, obs_policy: torch.Tensor) -> torch.Tensor:
        """Deterministic env action (``tanh`` of the mean, rescaled) from a *raw* ``policy`` batch."""
        mean, _ = self(obs_policy)
        return self.to_env_action(torch.tanh(mean))

    def export_policy(self) -> nn.Module:
        """A standalone deterministic ``policy obs -> env action`` module (for TorchScript/ONNX export)."""
        return _DeterministicSquashedPolicy(self)


class _DeterministicSquashedPolicy(nn.Module):
    def __init__(self, actor: SquashedGaussianActor):
        super().__init__()
        self.normalizer = copy.deepcopy(actor.normalizer).eval()
        self.trunk = copy.deepcopy(actor.trunk)
        self.mean_head = copy.deepcopy(actor.mean_head)
        self.register_buffer("low", actor.action_low.clone())
        self.register_buffer("high", actor.action_high.clone())

    def forward(self, obs_policy: torch.Tensor) -> torch.Tensor:
        mean = self.mean_head(self.trunk(self.normalizer(obs_policy)))
        return self.low + (torch.tanh(mean) + 1.0) * 0.5 * (self.high - self.low)


class TwinQ(nn.Module):
    """Two independent Q networks on (normalized ``critic`` obs, action in [-1, 1]^d)."""

    def __init__(self, num_critic_obs: int, num_actions: int, hidden: tuple[int, ...] = (256, 256),
                 activation: str = "relu", layer_norm: bool = True):
        super().__init__()
        width = hidden[-1] if hidden else num_critic_obs + num_actions

        def q() -> nn.Sequential:
            return nn.Sequential(_trunk(num_critic_obs + num_actions, tuple(hidden), activation, layer_norm),
                                 nn.Linear(width, 1))

        self.q1, self.q2 = q(), q()

    def forward(self, critic_obs: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.cat([critic_obs, action], dim=-1)
        return self.q1(x).squeeze(-1), self.q2(x).squeeze(-1)


# ---------------------------------------------------------------------------------------------- SAC


_LOSS_KEYS = ("critic_loss", "actor_loss", "alpha", "q_mean", "entropy")


class SAC:
    """The algorithm: owns the actor, twin critics and their targets, the temperature and the buffers."""

    def __init__(
        self,
        num_policy_obs: int,
        num_critic_obs: int,
        num_actions: int,
        num_envs: int,
        cfg: SACConfig | None = None,
        action_low: Any = -1.0,
        action_high: Any = 1.0,
        device: torch.device | str = "cpu",
        prior_data: dict[str, torch.Tensor] | None = None,
    ):
        self.cfg = cfg = cfg if cfg is not None else SACConfig()
        if cfg.utd_ratio < 1 or cfg.num_steps_per_env < 1 or cfg.batch_size < 1:
            raise ValueError("utd_ratio, num_steps_per_env and batch_size must be >= 1")
        if not 0.0 <= cfg.prior_ratio <= 1.0:
            raise ValueError(f"prior_ratio must be in [0, 1], got {cfg.prior_ratio}")
        self.device = torch.device(device)
        self.num_envs = num_envs
        self.num_actions = num_actions
        low = torch.broadcast_to(torch.as_tensor(action_low, dtype=torch.float32), (num_actions,))
        high = torch.broadcast_to(torch.as_tensor(action_high, dtype=torch.float32), (num_actions,))
        self.model_kwargs = dict(
            num_policy_obs=num_policy_obs, num_critic_obs=num_critic_obs, num_actions=num_actions,
            actor_hidden=tuple(cfg.actor_hidden), critic_hidden=tuple(cfg.critic_hidden),
            activation=cfg.activation, normalize_obs=cfg.normalize_obs, critic_layer_norm=cfg.critic_layer_norm,
            log_std_min=cfg.log_std_min, log_std_max=cfg.log_std_max,
            action_low=low.tolist(), action_high=high.tolist(),
        )
        self.actor = SquashedGaussianActor(
            num_policy_obs, num_actions, low, high, tuple(cfg.actor_hidden), cfg.activation, cfg.normalize_obs,
            cfg.log_std_min, cfg.log_std_max).to(self.device)
        self.critic = TwinQ(num_critic_obs, num_actions, tuple(cfg.critic_hidden), cfg.activation,
                            cfg.critic_layer_norm).to(self.device)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.critic_normalizer: nn.Module = (EmpiricalNormalizer(num_critic_obs) if cfg.normalize_obs
                                             else nn.Identity()).to(self.device)
        self.log_alpha = torch.tensor(math.log(cfg.init_temperature), device=self.device, requires_grad=True)
        self.target_entropy = float(-num_actions if cfg.target_entropy is None else cfg.target_entropy)

        self.actor_optimizer = torch.optim.Adam(self.actor.parameters(), lr=cfg.actor_lr)
        self.critic_optimizer = torch.optim.Adam(self.critic.parameters(), lr=cfg.critic_lr)
        self.alpha_optimizer = torch.optim.Adam([self.log_alpha], lr=cfg.alpha_lr)

        self.buffer = ReplayBuffer(cfg.buffer_size, num_policy_obs, num_critic_obs, num_actions, self.device)
        self.prior_buffer: ReplayBuffer | None = None
        if prior_data is not None:
            self.load_prior_data(prior_data)
        self.num_transitions = 0  # collected since the start of training (checkpointed)
        self.pending_env_steps = 0  # vectorized env steps recorded since the last update()
        self.training = True

    @classmethod
    def from_env(cls, env: Any, cfg: SACConfig | None = None, device: torch.device | str | None = None,
                 prior_data: dict[str, torch.Tensor] | None = None) -> "SAC":
        """Size the networks from a ``VecEnv``'s observation groups and action space."""
        space = env.action_space
        return cls(
            num_policy_obs=int(env.observation_spaces["policy"].shape[-1]),
            num_critic_obs=int(env.observation_spaces["critic"].shape[-1]),
            num_actions=int(space.shape[-1]),
            num_envs=env.num_envs,
            cfg=cfg,
            action_low=space.low,
            action_high=space.high,
            device=device if device is not None else env.device,
            prior_data=prior_data,
        )

    def load_prior_data(self, data: dict[str, torch.Tensor]) -> None:
        """Use ``data`` (a dict of ``BUFFER_KEYS`` tensors, env actions) as the prior-data buffer."""
        buf = ReplayBuffer.from_dict(data, self.device)
        if buf.data["policy_obs"].shape[-1] != self.buffer.data["policy_obs"].shape[-1] \
                or buf.data["critic_obs"].shape[-1] != self.buffer.data["critic_obs"].shape[-1] \
                or buf.data["actions"].shape[-1] != self.num_actions:
            raise ValueError("prior data does not match the env's observation / action sizes")
        self.prior_buffer = buf

    @property
    def alpha(self) -> torch.Tensor:
        return self.log_alpha.detach().exp()

    # -- modes
    def train_mode(self) -> None:
        self.training = True
        self.actor.train()
        self.critic.train()
        self.critic_normalizer.train()

    def eval_mode(self) -> None:
        self.training = False
        self.actor.eval()
        self.critic.eval()
        self.critic_normalizer.eval()

    # -- acting
    @torch.no_grad()
    def act(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Stochastic env action for ``obs`` (uniform random until ``learning_starts`` transitions)."""
        policy = obs["policy"].to(self.device, torch.float32)
        if self.num_transitions < self.cfg.learning_starts:
            a = torch.rand(policy.shape[0], self.num_actions, device=self.device) * 2.0 - 1.0
        else:
            a, _ = self.actor.sample(policy)
        return self.actor.to_env_action(a)

    @torch.no_grad()
    def act_inference(self, obs_policy: torch.Tensor) -> torch.Tensor:
        """Deterministic env action from a raw ``policy`` observation batch."""
        return self.actor.act_inference(obs_policy.to(self.device, torch.float32))

    def export_policy(self) -> nn.Module:
        """A standalone deterministic ``policy obs -> env action`` module, like ``ActorCritic.export_policy``."""
        return self.actor.export_policy()

    @torch.no_grad()
    def process_env_step(self, obs: dict[str, torch.Tensor], action: torch.Tensor, reward: torch.Tensor,
                         terminated: torch.Tensor, truncated: torch.Tensor, info: dict[str, Any],
                         next_obs: dict[str, torch.Tensor]) -> None:
        """Store the ``num_envs`` transitions of one vectorized step (``obs`` is the obs ``action`` saw).

        For the envs that finished, the next observation is ``info["final_obs"]`` (``next_obs`` already
        starts their next episode); ``done`` is ``terminated`` only, so time-outs bootstrap.
        """
        dev = self.device
        terminated = terminated.to(dev, torch.bool)
        ended = info.get("done")
        ended = (terminated | truncated.to(dev, torch.bool)) if ended is None else ended.to(dev, torch.bool)
        nxt = {}
        for group in ("policy", "critic"):
            n = next_obs[group].to(dev, torch.float32)
            if bool(ended.any()):
                n = torch.where(ended.unsqueeze(-1), info["final_obs"][group].to(dev, torch.float32), n)
            nxt[group] = n
        policy, critic = obs["policy"].to(dev, torch.float32), obs["critic"].to(dev, torch.float32)
        self.buffer.add(policy_obs=policy, critic_obs=critic, actions=action.to(dev, torch.float32),
                        rewards=reward.to(dev, torch.float32), next_policy_obs=nxt["policy"],
                        next_critic_obs=nxt["critic"], dones=terminated.float())
        if self.training and self.cfg.normalize_obs:
            self.actor.normalizer.update(policy)
            self.critic_normalizer.update(critic)
        self.num_transitions += int(reward.shape[0])
        self.pending_env_steps += 1

    # -- learning
    def can_update(self) -> bool:
        """Enough transitions collected in total, and in the buffer (which a resumed run refills)."""
        return (self.num_transitions >= self.cfg.learning_starts
                and len(self.buffer) >= max(1, self.cfg.learning_starts))

    def sample_batch(self, batch_size: int | None = None,
                     generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """A minibatch: ``round(prior_ratio * n)`` rows from the prior-data buffer (if any), the rest online."""
        n = self.cfg.batch_size if batch_size is None else batch_size
        return sample_mixed(self.buffer, self.prior_buffer, self.cfg.prior_ratio, n, generator)

    def _reduce_and_clip(self, module: nn.Module) -> None:
        """The gradients averaged over the ranks (data-parallel training), then clipped."""
        distributed.average_gradients(module.parameters())
        if self.cfg.max_grad_norm is not None:
            nn.utils.clip_grad_norm_(module.parameters(), self.cfg.max_grad_norm)

    def update(self, num_updates: int | None = None) -> dict[str, float]:
        """``num_updates`` critic updates (default: ``utd_ratio`` per env step recorded since the last call),
        the actor and temperature once per ``utd_ratio`` of them; returns mean losses (NaN if none ran)."""
        cfg = self.cfg
        if num_updates is None:
            num_updates = self.pending_env_steps * cfg.utd_ratio
        self.pending_env_steps = 0
        if not self.can_update() or num_updates <= 0:
            return {k: float("nan") for k in _LOSS_KEYS}
        sums = dict.fromkeys(_LOSS_KEYS, 0.0)
        n_critic = n_actor = 0
        for i in range(num_updates):
            b = self.sample_batch()
            critic_obs = self.critic_normalizer(b["critic_obs"])
            next_critic_obs = self.critic_normalizer(b["next_critic_obs"])
            alpha = self.alpha

            # critics: regress both Q's on the soft Bellman target of the target critics
            with torch.no_grad():
                next_a, next_log_prob = self.actor.sample(b["next_policy_obs"])
                tq1, tq2 = self.critic_target(next_critic_obs, next_a)
                target = compute_targets(b["rewards"], b["dones"], tq1, tq2, next_log_prob, alpha, cfg.gamma)
            q1, q2 = self.critic(critic_obs, self.actor.from_env_action(b["actions"]))
            critic_loss = F.mse_loss(q1, target) + F.mse_loss(q2, target)
            self.critic_optimizer.zero_grad(set_to_none=True)
            critic_loss.backward()
            self._reduce_and_clip(self.critic)
            self.critic_optimizer.step()
            polyak_update(self.critic_target, self.critic, cfg.tau)
            sums["critic_loss"] += critic_loss.item()
            sums["q_mean"] += 0.5 * (q1.mean().item() + q2.mean().item())
            n_critic += 1

            # actor and temperature: once per utd_ratio critic updates (and after the last one)
            if (i + 1) % cfg.utd_ratio == 0 or i == num_updates - 1:
                a, log_prob = self.actor.sample(b["policy_obs"])
                self.critic.requires_grad_(False)  # the actor loss must not move the critics
                q1_pi, q2_pi = self.critic(critic_obs, a)
                self.critic.requires_grad_(True)
                actor_loss = (alpha * log_prob - torch.minimum(q1_pi, q2_pi)).mean()
                n_prior = b.get("num_prior", 0)
                if cfg.prior_bc_weight and n_prior:  # the actor's mean action towards the prior rows' actions
                    mean, _ = self.actor(b["policy_obs"][:n_prior])
                    target = self.actor.from_env_action(b["actions"][:n_prior])
                    actor_loss = actor_loss + cfg.prior_bc_weight * F.mse_loss(torch.tanh(mean), target)
                self.actor_optimizer.zero_grad(set_to_none=True)
                actor_loss.backward()
                self._reduce_and_clip(self.actor)
                self.actor_optimizer.step()

                # d(loss)/d(log_alpha) = -(log_prob + target_entropy): alpha rises when entropy < target
                alpha_loss = -(self.log_alpha * (log_prob.detach() + self.target_entropy)).mean()
                self.alpha_optimizer.zero_grad(set_to_none=True)
                alpha_loss.backward()
                distributed.average_gradients([self.log_alpha])
                self.alpha_optimizer.step()
                sums["actor_loss"] += actor_loss.item()
                sums["entropy"] += -log_prob.mean().item()
                n_actor += 1
        return {
            "critic_loss": sums["critic_loss"] / n_critic,
            "q_mean": sums["q_mean"] / n_critic,
            "actor_loss": sums["actor_loss"] / n_actor,
            "entropy": sums["entropy"] / n_actor,
            "alpha": self.alpha.item(),
        }

    # -- checkpoints
    def state_dict(self, include_buffer: bool = False) -> dict[str, Any]:
        state = {
            "algo": "sac",
            "actor": self.actor.state_dict(),
            "critic": self.critic.state_dict(),
            "critic_target": self.critic_target.state_dict(),
            "critic_normalizer": self.critic_normalizer.state_dict(),
            "log_alpha": self.log_alpha.detach().clone(),
            "actor_optimizer": self.actor_optimizer.state_dict(),
            "critic_optimizer": self.critic_optimizer.state_dict(),
            "alpha_optimizer": self.alpha_optimizer.state_dict(),
            "num_transitions": self.num_transitions,
            "model_kwargs": dict(self.model_kwargs),
        }
        if include_buffer:
            state["buffer"] = self.buffer.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any], load_optimizer: bool = True) -> None:
        self.actor.load_state_dict(state["actor"])
        self.critic.load_state_dict(state["critic"])
        self.critic_target.load_state_dict(state["critic_target"])
        self.critic_normalizer.load_state_dict(state["critic_normalizer"])
        with torch.no_grad():
            self.log_alpha.copy_(state["log_alpha"])
        if load_optimizer:
            self.actor_optimizer.load_state_dict(state["actor_optimizer"])
            self.critic_optimizer.load_state_dict(state["critic_optimizer"])
            self.alpha_optimizer.load_state_dict(state["alpha_optimizer"])
        self.num_transitions = int(state.get("num_transitions", 0))
        if "buffer" in state:
            self.buffer.load_state_dict(state["buffer"])


class SACLearner(Learner):
    """SAC in the shared training loop; ``prior_data`` (a file of transitions, ``sac.prior_data``) fills half of
    every batch (RLPD)."""

    columns = ("critic_loss", "actor_loss", "alpha", "q_mean", "entropy")

    def __init__(self, env: Any, cfg: SACConfig, device: torch.device | str | None = None):
        prior = torch.load(cfg.prior_data, map_location=device, weights_only=False) if cfg.prior_data else None
        super().__init__(SAC.from_env(env, cfg, device, prior_data=prior), cfg.num_steps_per_env)

    def env_step(self, env, obs):
        action = self.alg.act(obs)
        out = env.step(action.to(env.device))
        next_obs, reward, terminated, truncated, info = out
        self.alg.process_env_step(obs, action, reward, terminated, truncated, info, next_obs)
        return out

    def update(self):
        losses = self.alg.update()
        return {k: losses[k] for k in self.columns}

    def act_inference(self, obs_policy):
        return self.alg.act_inference(obs_policy)


INFERENCE_BUFFER = 1024  # transitions a SAC built only to act allocates (a trained run's buffer holds a million)


def export_policy(env: Any, cfg: SACConfig, state: dict[str, Any]) -> nn.Module:
    """The deterministic policy of a checkpoint's algorithm ``state`` (eval mode, CPU), without its replay buffer
    or prior data."""
    cfg = dataclasses.replace(cfg, buffer_size=min(cfg.buffer_size, INFERENCE_BUFFER), prior_data=None)
    alg = SAC.from_env(env, cfg, "cpu")
    alg.load_state_dict({key: value for key, value in state.items() if key != "buffer"}, load_optimizer=False)
    alg.eval_mode()
    return alg.export_policy()


SPEC = registry.register(AlgorithmSpec(
    "sac", "Soft Actor-Critic with twin critics, auto temperature and RLPD-style prior data", "reinforcement",
    SACConfig, bundle_kind="actor_critic", trainer=SACLearner, exporter=export_policy))
