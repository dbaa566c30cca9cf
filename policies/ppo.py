"""Proximal Policy Optimization for massively parallel environments, in one readable file.

The shape follows rsl_rl (and the clarity of CleanRL): collect ``num_steps_per_env`` steps from every env
of the batch, compute GAE returns, then run a few epochs of clipped-surrogate minibatch updates.

    algo = PPO.from_env(env, PPOConfig(), device)
    obs, _ = env.reset(seed=0)
    for it in range(iterations):
        with torch.inference_mode():
            for _ in range(cfg.num_steps_per_env):
                obs, reward, terminated, truncated, info = env.step(algo.act(obs))
                algo.process_env_step(reward, terminated, truncated, info)
            algo.compute_returns(obs)
        stats = algo.update()

Design choices, all of them on purpose:

* **Asymmetric actor-critic.** The actor reads the ``"policy"`` observation group (what the robot has
  when deployed), the critic reads ``"critic"`` (privileged simulator state). Only the actor is exported.
* **Observation normalization** (``EmpiricalNormalizer``) lives inside ``ActorCritic`` so it is saved with
  the model and exported with the actor. The rollout stores *normalized* observations, so the stats may move
  during collection without changing what the update sees: the first minibatch's probability ratio is
  exactly 1.
* **Gaussian policy with a state-independent, learned log-std.**
* **Bounded actions.** ``bounded_actions="clip"`` (default): the Gaussian sample is clipped to the env's
  ``action_space`` only on its way to the env; log-probs are computed on the *unclipped* sample that is
  stored in the rollout. That keeps the log-probability exact and the gradient alive at the bounds (a
  clipped sample would give every out-of-bound action the same, wrong density) and it is what rsl_rl and
  most legged-robot PPO setups do; the mean is free to sit on a bound. ``"tanh"``: the sample ``u`` is
  squashed, ``a = low + (tanh(u) + 1) / 2 * (high - low)``. The stored sample is ``u``; because the same
  ``u`` is used for the old and the new policy, the tanh Jacobian cancels in the probability ratio, so the
  Gaussian log-prob of ``u`` gives the exact PPO ratio (the entropy bonus is then the Gaussian entropy, a
  proxy). Use it when the env must never see a saturated action for long (e.g. thrust commands).
* **Time-outs are not failures.** When an episode is ``truncated`` (and not ``terminated``) the reward of
  that step gets ``gamma * V(final_obs)``, with ``final_obs = info["final_obs"]["critic"]``: the value the
  episode would have had if it had continued. ``done`` then cuts the GAE recursion for both kinds of end.
* **Adaptive learning rate from the KL** (``desired_kl``): halve the LR when the KL of a minibatch is above
  ``2 * desired_kl``, multiply it by 1.5 below ``desired_kl / 2``, kept in ``[1e-5, 1e-2]``.

Everything lives on the ``torch.device`` the algorithm was built with; env tensors are moved there.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from robostack import registry
from robostack.policies import distributed
from robostack.policies.learner import Learner
from robostack.specs import AlgorithmSpec

__all__ = ["PPOConfig", "EmpiricalNormalizer", "ActorCritic", "RolloutStorage", "PPO", "PPOLearner", "export_policy"]

LR_MIN, LR_MAX = 1e-5, 1e-2


@dataclass
class PPOConfig:
    num_steps_per_env: int = 24  # rollout length per env and iteration
    learning_rate: float = 1e-3
    gamma: float = 0.99
    lam: float = 0.95  # GAE lambda
    clip_param: float = 0.2  # PPO ratio clip, also the value clip
    num_learning_epochs: int = 5
    num_mini_batches: int = 4
    entropy_coef: float = 0.005
    value_loss_coef: float = 1.0
    max_grad_norm: float = 1.0
    desired_kl: float | None = 0.01  # adaptive LR target; None = fixed learning rate
    init_noise_std: float = 1.0
    actor_hidden: tuple[int, ...] = (256, 128, 64)
    critic_hidden: tuple[int, ...] = (256, 128, 64)
    activation: str = "elu"
    normalize_obs: bool = True
    clip_value_loss: bool = True
    bounded_actions: Literal["clip", "tanh"] = "clip"


# --------------------------------------------------------------------------------------- normalizer


class EmpiricalNormalizer(nn.Module):
    """Running mean / variance of a stream of ``[batch, dim]`` observations; ``forward`` normalizes.

    Statistics are merged batch by batch with the parallel (Chan et al.) form of Welford's update, in
    float64 so millions of samples do not lose precision. They update only in ``train()`` mode and only
    when ``update`` is called; ``eval()`` freezes them. They are buffers, so they live in ``state_dict``.
    """

    def __init__(self, dim: int, eps: float = 1e-8, clip: float | None = None):
        super().__init__()
        self.eps = eps
        self.clip = clip
        self.register_buffer("mean", torch.zeros(dim, dtype=torch.float64))
        self.register_buffer("var", torch.ones(dim, dtype=torch.float64))
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        """Merge a batch in; under ``torch.distributed`` the batch is every rank's rows together, so the ranks'
        statistics stay identical (each rank calls it, even with no rows)."""
        if not self.training or (x.shape[0] == 0 and not distributed.active()):
            return
        x = x.reshape(-1, self.mean.shape[0]).to(torch.float64)
        d = x - self.mean  # sums of deviations from the shared running mean: one exchange, no cancellation
        sums = distributed.sum_across_ranks(torch.cat([d.new_tensor([x.shape[0]]), d.sum(0), d.square().sum(0)]))
        n = float(sums[0])
        if n == 0:
            return
        dim = self.mean.shape[0]
        shift = sums[1:1 + dim] / n
        batch_mean = self.mean + shift
        batch_var = (sums[1 + dim:] / n - shift.square()).clamp_min(0.0)
        total = self.count + n
        delta = batch_mean - self.mean
        # M2 (sum of squared deviations) of both parts, plus the between-means term
        m2 = self.var * self.count + batch_var * n + delta.square() * self.count * n / total
        self.mean.add_(delta * n / total)  # in place: the buffers stay normal tensors under inference_mode
        self.var.copy_(m2 / total)
        self.count.fill_(total)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = (x - self.mean.to(x.dtype)) / torch.sqrt(self.var.to(x.dtype) + self.eps)
        if self.clip is not None:
            y = y.clamp(-self.clip, self.clip)
        return y


# ------------------------------------------------------------------------------------- actor-critic


def _activation(name: str) -> nn.Module:
    table = {"elu": nn.ELU, "relu": nn.ReLU, "tanh": nn.Tanh, "selu": nn.SELU, "silu": nn.SiLU, "gelu": nn.GELU,
             "leaky_relu": nn.LeakyReLU}
    try:
        return table[name.lower()]()
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; choose one of {', '.join(table)}") from None


def mlp(in_dim: int, hidden: tuple[int, ...] | list[int], out_dim: int, activation: str) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(in_dim, width), _activation(activation)]
        in_dim = width
    layers.append(nn.Linear(in_dim, out_dim))
    return nn.Sequential(*layers)


LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Log-density of a diagonal Gaussian, summed over the last (action) dimension."""
    return (-0.5 * ((x - mean) / std).square() - std.log() - LOG_SQRT_2PI).sum(-1)


def gaussian_entropy(std: torch.Tensor) -> torch.Tensor:
    return (0.5 + LOG_SQRT_2PI + std.log()).sum(-1)


class ActorCritic(nn.Module):
    """Gaussian actor on the ``policy`` group, value critic on the ``critic`` group, with normalizers.

    Two kinds of input, kept apart by name: ``act_inference``/``export_policy``/``normalize`` take *raw*
    env observations; ``distribution``/``value`` take observations already passed through ``normalize``.
    """

    def __init__(
        self,
        num_policy_obs: int,
        num_critic_obs: int,
        num_actions: int,
        action_low: torch.Tensor | None = None,
        action_high: torch.Tensor | None = None,
        actor_hidden: tuple[int, ...] = (256, 128, 64),
        critic_hidden: tuple[int, ...] = (256, 128, 64),
        activation: str = "elu",
        init_noise_std: float = 1.0,
        normalize_obs: bool = True,
        bounded_actions: str = "clip",
    ):
        super().__init__()
        if bounded_actions not in ("clip", "tanh"):
            raise ValueError(f"bounded_actions must be 'clip' or 'tanh', got {bounded_actions!r}")
        self.bounded_actions = bounded_actions
        self.actor = mlp(num_policy_obs, actor_hidden, num_actions, activation)
        self.critic = mlp(num_critic_obs, critic_hidden, 1, activation)
        self.log_std = nn.Parameter(torch.full((num_actions,), math.log(init_noise_std)))
        self.policy_normalizer: nn.Module = EmpiricalNormalizer(num_policy_obs) if normalize_obs else nn.Identity()
        self.critic_normalizer: nn.Module = EmpiricalNormalizer(num_critic_obs) if normalize_obs else nn.Identity()
        low = torch.full((num_actions,), -math.inf) if action_low is None else torch.as_tensor(action_low).float()
        high = torch.full((num_actions,), math.inf) if action_high is None else torch.as_tensor(action_high).float()
        if bounded_actions == "tanh" and not (torch.isfinite(low).all() and torch.isfinite(high).all()):
            raise ValueError("bounded_actions='tanh' needs a finite action_space (low and high)")
        self.register_buffer("action_low", low.reshape(num_actions))
        self.register_buffer("action_high", high.reshape(num_actions))
        # small last actor layer: start near a zero mean so early exploration is set by init_noise_std
        with torch.no_grad():
            self.actor[-1].weight.mul_(0.01)
            self.actor[-1].bias.zero_()

    # -- normalization (raw -> normalized); update stats only while training
    def normalize(self, obs: dict[str, torch.Tensor], update: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        policy, critic = obs["policy"], obs["critic"]
        if update and self.training and isinstance(self.policy_normalizer, EmpiricalNormalizer):
            self.policy_normalizer.update(policy)
            self.critic_normalizer.update(critic)
        return self.policy_normalizer(policy), self.critic_normalizer(critic)

    @property
    def std(self) -> torch.Tensor:
        return self.log_std.exp()

    def distribution(self, policy_n: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and std (broadcast to the batch) of the Gaussian over the unbounded sample."""
        mean = self.actor(policy_n)
        return mean, self.std.expand_as(mean)

    def value(self, critic_n: torch.Tensor) -> torch.Tensor:
        return self.critic(critic_n).squeeze(-1)

    def to_env_action(self, sample: torch.Tensor) -> torch.Tensor:
        """Map an unbounded sample (or mean) into the env's action bounds."""
        if self.bounded_actions == "tanh":
            return self.action_low + (torch.tanh(sample) + 1.0) * 0.5 * (self.action_high - self.action_low)
        return torch.maximum(torch.minimum(sample, self.action_high), self.action_low)

    def act_inference(self, obs_policy: torch.Tensor) -> torch.Tensor:
        """Deterministic action (the mean, bounded) from a *raw* ``policy`` observation batch."""
        return self.to_env_action(self.actor(self.policy_normalizer(obs_policy)))

    def export_policy(self) -> nn.Module:
        """A standalone deterministic ``policy obs -> env action`` module (for TorchScript/ONNX export)."""
        return _DeterministicPolicy(self)


class _DeterministicPolicy(nn.Module):
    def __init__(self, ac: ActorCritic):
        super().__init__()
        import copy

        self.normalizer = copy.deepcopy(ac.policy_normalizer).eval()
        self.actor = copy.deepcopy(ac.actor)
        self.tanh = ac.bounded_actions == "tanh"
        self.register_buffer("low", ac.action_low.clone())
        self.register_buffer("high", ac.action_high.clone())

    def forward(self, obs_policy: torch.Tensor) -> torch.Tensor:
        mean = self.actor(self.normalizer(obs_policy))
        if self.tanh:
            return self.low + (torch.tanh(mean) + 1.0) * 0.5 * (self.high - self.low)
        return torch.maximum(torch.minimum(mean, self.high), self.low)


# ---------------------------------------------------------------------------------------- storage


class RolloutStorage:
    """Fixed-size ``[num_steps, num_envs, ...]`` tensors for one rollout, filled step by step."""

    def __init__(self, num_steps: int, num_envs: int, num_policy_obs: int, num_critic_obs: int, num_actions: int,
                 device: torch.device):
        self.num_steps, self.num_envs, self.device = num_steps, num_envs, device

        def zeros(*shape: int) -> torch.Tensor:
            return torch.zeros(num_steps, num_envs, *shape, device=device)

        self.policy_obs = zeros(num_policy_obs)  # normalized
        self.critic_obs = zeros(num_critic_obs)  # normalized
        self.actions = zeros(num_actions)  # unbounded Gaussian samples
        self.log_probs = zeros()
        self.mean = zeros(num_actions)
        self.std = zeros(num_actions)
        self.values = zeros()
        self.rewards = zeros()  # including the time-out bootstrap
        self.dones = zeros()  # 1.0 where the episode ended (terminated or truncated)
        self.returns = zeros()
        self.advantages = zeros()
        self.step = 0

    def clear(self) -> None:
        self.step = 0

    def compute_gae(self, last_values: torch.Tensor, gamma: float, lam: float) -> None:
        """Generalized advantage estimation, backwards over the rollout; ``done`` cuts the recursion."""
        gae = torch.zeros_like(last_values)
        next_values = last_values
        for t in reversed(range(self.num_steps)):
            not_done = 1.0 - self.dones[t]
            delta = self.rewards[t] + gamma * next_values * not_done - self.values[t]
            gae = delta + gamma * lam * not_done * gae
            self.advantages[t] = gae
            next_values = self.values[t]
        self.returns.copy_(self.advantages + self.values)

    def minibatches(self, num_mini_batches: int, generator: torch.Generator | None = None):
        """Yield dicts of flattened ``[batch, ...]`` tensors, one per minibatch, in a random order."""
        total = self.num_steps * self.num_envs
        size = total // num_mini_batches
        order = torch.randperm(total, device="cpu", generator=generator).to(self.device)
        flat = {
            name: getattr(self, name).flatten(0, 1)
            for name in ("policy_obs", "critic_obs", "actions", "log_probs", "mean", "std", "values", "returns",
                         "advantages")
        }
        for i in range(num_mini_batches):
            idx = order[i * size:(i + 1) * size]
            yield {name: tensor[idx] for name, tensor in flat.items()}


# ---------------------------------------------------------------------------------------------- PPO


class PPO:
    """The algorithm: owns the actor-critic, its optimizer and the rollout storage."""

    def __init__(
        self,
        num_policy_obs: int,
        num_critic_obs: int,
        num_actions: int,
        num_envs: int,
        cfg: PPOConfig | None = None,
        action_low: Any = None,
        action_high: Any = None,
        device: torch.device | str = "cpu",
    ):
        self.cfg = cfg = cfg if cfg is not None else PPOConfig()
        self.device = torch.device(device)
        self.num_envs = num_envs
        if (num_envs * cfg.num_steps_per_env) < cfg.num_mini_batches:
            raise ValueError("num_envs * num_steps_per_env must be at least num_mini_batches")
        self.model_kwargs = dict(
            num_policy_obs=num_policy_obs, num_critic_obs=num_critic_obs, num_actions=num_actions,
            actor_hidden=tuple(cfg.actor_hidden), critic_hidden=tuple(cfg.critic_hidden),
            activation=cfg.activation, init_noise_std=cfg.init_noise_std, normalize_obs=cfg.normalize_obs,
            bounded_actions=cfg.bounded_actions,
        )
        self.actor_critic = ActorCritic(
            **self.model_kwargs,
            action_low=None if action_low is None else torch.as_tensor(action_low, dtype=torch.float32),
            action_high=None if action_high is None else torch.as_tensor(action_high, dtype=torch.float32),
        ).to(self.device)
        self.learning_rate = cfg.learning_rate
        self.optimizer = torch.optim.Adam(self.actor_critic.parameters(), lr=cfg.learning_rate)
        self.storage = RolloutStorage(cfg.num_steps_per_env, num_envs, num_policy_obs, num_critic_obs, num_actions,
                                      self.device)

    @classmethod
    def from_env(cls, env: Any, cfg: PPOConfig | None = None, device: torch.device | str | None = None) -> "PPO":
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
        )

    # -- rollout
    def train_mode(self) -> None:
        self.actor_critic.train()

    def eval_mode(self) -> None:
        self.actor_critic.eval()

    @torch.no_grad()
    def act(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Sample actions for the current step, record them; returns the bounded action for ``env.step``."""
        ac, s = self.actor_critic, self.storage
        if s.step >= s.num_steps:
            raise RuntimeError("rollout storage is full: call compute_returns() and update() first")
        obs = {k: obs[k].to(self.device, torch.float32) for k in ("policy", "critic")}
        policy_n, critic_n = ac.normalize(obs, update=True)
        mean, std = ac.distribution(policy_n)
        sample = mean + std * torch.randn_like(mean)
        s.policy_obs[s.step].copy_(policy_n)
        s.critic_obs[s.step].copy_(critic_n)
        s.actions[s.step].copy_(sample)
        s.log_probs[s.step].copy_(gaussian_log_prob(sample, mean, std))
        s.mean[s.step].copy_(mean)
        s.std[s.step].copy_(std)
        s.values[s.step].copy_(ac.value(critic_n))
        return ac.to_env_action(sample)

    @torch.no_grad()
    def process_env_step(self, reward: torch.Tensor, terminated: torch.Tensor, truncated: torch.Tensor,
                         info: dict[str, Any]) -> None:
        """Record the step's reward and episode ends; bootstrap time-outs with ``V(final_obs)``."""
        s = self.storage
        reward = reward.to(self.device, torch.float32).clone()
        terminated = terminated.to(self.device, torch.bool)
        truncated = truncated.to(self.device, torch.bool)
        timeout = truncated & ~terminated  # a step that is both counts as a real end: no bootstrap
        if bool(timeout.any()):
            final = info["final_obs"]["critic"].to(self.device, torch.float32)
            idx = timeout.nonzero(as_tuple=True)[0]
            critic_n = self.actor_critic.critic_normalizer(final[idx])
            reward[idx] += self.cfg.gamma * self.actor_critic.value(critic_n)
        s.rewards[s.step].copy_(reward)
        s.dones[s.step].copy_((terminated | truncated).float())
        s.step += 1

    @torch.no_grad()
    def compute_returns(self, last_obs: dict[str, torch.Tensor]) -> None:
        if self.storage.step != self.storage.num_steps:
            raise RuntimeError(f"rollout incomplete: {self.storage.step} of {self.storage.num_steps} steps recorded")
        critic = last_obs["critic"].to(self.device, torch.float32)
        last_values = self.actor_critic.value(self.actor_critic.critic_normalizer(critic))
        self.storage.compute_gae(last_values, self.cfg.gamma, self.cfg.lam)

    # -- learning
    def update(self) -> dict[str, float]:
        """Epochs of minibatch PPO on the stored rollout; returns mean losses, KL, LR and action std."""
        cfg, ac, s = self.cfg, self.actor_critic, self.storage
        if s.step != s.num_steps:
            raise RuntimeError("update() needs a full rollout and compute_returns() first")
        adv = s.advantages
        s.advantages.copy_((adv - adv.mean()) / (adv.std() + 1e-8))
        sums = {"surrogate_loss": 0.0, "value_loss": 0.0, "entropy": 0.0, "kl": 0.0, "clip_fraction": 0.0}
        n = 0
        for _ in range(cfg.num_learning_epochs):
            for mb in s.minibatches(cfg.num_mini_batches):
                mean, std = ac.distribution(mb["policy_obs"])
                log_prob = gaussian_log_prob(mb["actions"], mean, std)
                entropy = gaussian_entropy(std).mean()
                values = ac.value(mb["critic_obs"])

                with torch.no_grad():  # KL(old || new) between diagonal Gaussians, averaged over the batch
                    kl = distributed.mean_across_ranks(  # and the ranks: they adapt the learning rate as one
                        (torch.log(std / mb["std"])
                         + (mb["std"].square() + (mb["mean"] - mean).square()) / (2.0 * std.square())
                         - 0.5).sum(-1).mean())
                if cfg.desired_kl is not None:
                    if kl > 2.0 * cfg.desired_kl:
                        self.learning_rate = max(LR_MIN, self.learning_rate / 2.0)
                    elif 0.0 < kl < 0.5 * cfg.desired_kl:
                        self.learning_rate = min(LR_MAX, self.learning_rate * 1.5)
                    for group in self.optimizer.param_groups:
                        group["lr"] = self.learning_rate

                ratio = torch.exp(log_prob - mb["log_probs"])
                a = mb["advantages"]
                surrogate = -torch.min(ratio * a, ratio.clamp(1.0 - cfg.clip_param, 1.0 + cfg.clip_param) * a).mean()

                if cfg.clip_value_loss:
                    clipped = mb["values"] + (values - mb["values"]).clamp(-cfg.clip_param, cfg.clip_param)
                    value_loss = torch.max((values - mb["returns"]).square(),
                                           (clipped - mb["returns"]).square()).mean()
                else:
                    value_loss = (values - mb["returns"]).square().mean()

                loss = surrogate + cfg.value_loss_coef * value_loss - cfg.entropy_coef * entropy
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                distributed.average_gradients(ac.parameters())
                nn.utils.clip_grad_norm_(ac.parameters(), cfg.max_grad_norm)
                self.optimizer.step()

                sums["surrogate_loss"] += surrogate.item()
                sums["value_loss"] += value_loss.item()
                sums["entropy"] += entropy.item()
                sums["kl"] += kl.item()
                sums["clip_fraction"] += ((ratio - 1.0).abs() > cfg.clip_param).float().mean().item()
                n += 1
        s.clear()
        out = {k: v / n for k, v in sums.items()}
        out["learning_rate"] = self.learning_rate
        out["action_std"] = ac.std.mean().item()
        return out

    # -- checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.actor_critic.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "learning_rate": self.learning_rate,
            "model_kwargs": dict(self.model_kwargs),
        }

    def load_state_dict(self, state: dict[str, Any], load_optimizer: bool = True) -> None:
        self.actor_critic.load_state_dict(state["model"])
        if load_optimizer and "optimizer" in state:
            self.optimizer.load_state_dict(state["optimizer"])
        self.learning_rate = float(state.get("learning_rate", self.learning_rate))
        for group in self.optimizer.param_groups:
            group["lr"] = self.learning_rate


class PPOLearner(Learner):
    """PPO in the shared training loop."""

    columns = ("surrogate_loss", "value_loss", "entropy", "kl", "clip_fraction", "lr", "action_std")

    def __init__(self, env: Any, cfg: PPOConfig, device: torch.device | str | None = None):
        super().__init__(PPO.from_env(env, cfg, device), cfg.num_steps_per_env)

    def env_step(self, env, obs):
        out = env.step(self.alg.act(obs).to(env.device))
        _, reward, terminated, truncated, info = out
        self.alg.process_env_step(reward, terminated, truncated, info)
        return out

    def end_rollout(self, obs):
        self.alg.compute_returns(obs)

    def update(self):
        losses = self.alg.update()
        return {"surrogate_loss": losses["surrogate_loss"], "value_loss": losses["value_loss"],
                "entropy": losses["entropy"], "kl": losses["kl"], "clip_fraction": losses["clip_fraction"],
                "lr": losses["learning_rate"], "action_std": losses["action_std"]}

    def act_inference(self, obs_policy):
        return self.alg.actor_critic.act_inference(obs_policy)


def export_policy(env: Any, cfg: PPOConfig, state: dict[str, Any]) -> nn.Module:
    """The deterministic policy of a checkpoint's algorithm ``state`` (eval mode, CPU)."""
    alg = PPO.from_env(env, cfg, "cpu")
    alg.load_state_dict(state, load_optimizer=False)
    alg.eval_mode()
    return alg.actor_critic.export_policy()


SPEC = registry.register(AlgorithmSpec(
    "ppo", "Proximal Policy Optimization, asymmetric actor-critic for massively parallel envs", "reinforcement",
    PPOConfig, bundle_kind="actor_critic", trainer=PPOLearner, exporter=export_policy))
