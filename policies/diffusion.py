"""Diffusion Policy with action chunks (Chi et al., "Diffusion Policy", 2023), in one readable file.

The policy learns from demonstrations: episodes as plain numpy arrays, one dict per episode with
``"observation.state"`` ``[T, obs_dim]`` and/or ``"observation.images.<camera>"`` ``[T, H, W, 3]`` uint8,
and ``"action"`` ``[T, act_dim]``.

    policy = train_diffusion(episodes, DiffusionConfig())
    executor = ChunkExecutor(policy, num_envs=N)  # robostack.bundle.chunks: actions = executor.step(observations)

Time structure, in control steps. The policy sees the last ``n_obs_steps`` observations and predicts a chunk
of ``horizon`` actions that starts at the *oldest* of them, so the action for the current step is
``chunk[n_obs_steps - 1]``; the robot executes ``n_action_steps`` actions from there (receding horizon).
Training windows are cut from the episodes as in the paper: every start from ``-(n_obs_steps - 1)`` to
``T - horizon + n_action_steps - 1``, with indices outside the episode clipped to its first or last frame.

Design choices:

* **Normalization.** State and actions map to [-1, 1] with the dataset's min and max (``MinMaxNormalizer``);
  the statistics are buffers, so they travel in ``state_dict`` and in the exported graph. Images are scaled
  to [0, 1] by 255 and to [-1, 1] inside the encoder.
* **Denoiser.** A 1D temporal convolution U-Net over the chunk (``ConditionalUnet1D``). The observation
  features and a sinusoidal embedding of the diffusion step condition every residual block through FiLM.
  A single level (``down_dims`` of length 1) has no down/up-sampling. The documented alternative for short
  horizons, ``denoiser: mlp`` (``ConditionalMLP``), reads the flattened chunk and the conditioning through a
  plain MLP: a few large matrix products instead of dozens of small convolutions, several times cheaper per
  training step on a CPU.
* **Images.** ``ImageEncoder``: a few strided convolutions with GroupNorm, then spatial-softmax keypoints
  (the expected image position of each feature map). One encoder per camera; a random crop (the same for
  all time steps of a sample) while training, the center crop otherwise.
* **Training.** DDPM noise prediction (epsilon) with the squared-cosine schedule (Nichol & Dhariwal 2021),
  AdamW, linear warmup then cosine decay of the learning rate, and an EMA of the weights; the EMA copy is
  what ``train_diffusion`` returns.
* **Sampling.** DDIM with ``num_inference_steps`` evenly spaced timesteps ("leading" spacing, 90, 80, ..., 0 for
  10 of 100); with ``eta = 0`` the chunk is a deterministic function of the initial noise.
* **Export.** ``DiffusionPolicy.export_module`` unrolls every DDIM step of one chunk into a plain module
  ``(noise, *observations) -> chunk`` that ``torch.onnx.export(..., dynamo=False)`` accepts.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Literal

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from tqdm import tqdm

from robostack import registry
from robostack.config import from_dict, to_dict
from robostack.conventions import ACTION_KEY, IMAGE_PREFIX, STATE_KEY
from robostack.policies.ppo import mlp
from robostack.policies.sac import polyak_update
from robostack.specs import AlgorithmSpec

__all__ = ["DiffusionConfig", "DiffusionPolicy", "ChunkSampler", "MinMaxNormalizer",
           "ImageEncoder", "ConditionalUnet1D", "ConditionalMLP", "DemonstrationWindows", "DDIMStep", "train_diffusion",
           "compute_stats", "relative_action_stats", "check_episodes", "window_indices",
           "squared_cosine_alphas_cumprod", "ddim_schedule", "ddim_update"]



@dataclass
class DiffusionConfig:
    # time structure, in control steps
    n_obs_steps: int = 2  # observations the policy sees: the current one and n_obs_steps - 1 before it
    horizon: int = 16  # actions per chunk; the chunk starts at the oldest observation
    n_action_steps: int = 8  # actions executed per chunk, from the current step on
    # denoiser: temporal conv U-Net with FiLM, or an MLP for short horizons
    denoiser: Literal["unet", "mlp"] = "unet"
    down_dims: tuple[int, ...] = (32, 64, 128)  # channels per level; horizon must divide by 2**(levels - 1)
    kernel_size: int = 5  # odd, so convolutions keep the length
    n_groups: int = 8  # GroupNorm groups, for the U-Net and the image encoder
    step_embed_dim: int = 64  # sinusoidal diffusion-step embedding (even)
    mlp_hidden: tuple[int, ...] = (256, 256, 256)  # denoiser: mlp
    # image encoder (only built when the episodes have cameras)
    image_channels: tuple[int, ...] = (32, 64, 64)  # conv layers; all but the last halve the resolution
    image_pool: int = 1  # average-pool the cropped frame by this factor first (part of the graph): CPU training
    num_keypoints: int = 32  # spatial-softmax keypoints per camera
    image_feature_dim: int = 64  # features per camera and observation step
    crop_fraction: float = 0.9  # crop size / image size: random crop in training, center crop at inference
    # diffusion
    num_train_timesteps: int = 100
    num_inference_steps: int = 10  # DDIM steps per chunk
    eta: float = 0.0  # DDIM noise; 0 = deterministic given the initial noise
    clip_sample: bool = True  # clip each predicted clean chunk to the normalized range [-1, 1]
    # training
    num_steps: int = 5000  # gradient steps
    batch_size: int = 64
    learning_rate: float = 1e-4
    weight_decay: float = 1e-6
    warmup_steps: int = 500
    ema_decay: float = 0.999  # upper bound; the decay ramps up as (1 + step) / (10 + step) early on
    seed: int = 0
    device: str = "cpu"

    def validate(self) -> None:
        """Raise ``ValueError`` naming every setting that cannot work."""
        problems = []
        if self.n_obs_steps < 1:
            problems.append(f"n_obs_steps must be >= 1, got {self.n_obs_steps}")
        if not 1 <= self.n_action_steps <= self.horizon - self.n_obs_steps + 1:
            problems.append(f"n_action_steps must be in 1..horizon - n_obs_steps + 1 = "
                            f"{self.horizon - self.n_obs_steps + 1} (the executed actions start at chunk index "
                            f"n_obs_steps - 1), got {self.n_action_steps}")
        if not self.down_dims:
            problems.append("down_dims needs at least one level")
        elif self.denoiser == "unet" and self.horizon % 2 ** (len(self.down_dims) - 1):
            problems.append(f"horizon {self.horizon} must divide by 2**(len(down_dims) - 1) = "
                            f"{2 ** (len(self.down_dims) - 1)} (each U-Net level but the last halves it)")
        bad_groups = [c for c in (*self.down_dims, *self.image_channels) if c % self.n_groups]
        if bad_groups:
            problems.append(f"channel counts {bad_groups} do not divide by n_groups = {self.n_groups}")
        if self.kernel_size % 2 == 0:
            problems.append(f"kernel_size must be odd, got {self.kernel_size}")
        if self.step_embed_dim % 2 or self.step_embed_dim < 4:
            problems.append(f"step_embed_dim must be even and >= 4, got {self.step_embed_dim}")
        if not self.image_channels:
            problems.append("image_channels needs at least one conv layer")
        if self.image_pool < 1:
            problems.append(f"image_pool must be >= 1, got {self.image_pool}")
        if not 0.0 < self.crop_fraction <= 1.0:
            problems.append(f"crop_fraction must be in (0, 1], got {self.crop_fraction}")
        if not 1 <= self.num_inference_steps <= self.num_train_timesteps:
            problems.append(f"num_inference_steps must be in 1..num_train_timesteps = {self.num_train_timesteps}, "
                            f"got {self.num_inference_steps}")
        if self.eta < 0.0:
            problems.append(f"eta must be >= 0, got {self.eta}")
        if self.num_steps < 1 or self.batch_size < 1 or self.warmup_steps < 0:
            problems.append("num_steps and batch_size must be >= 1 and warmup_steps >= 0")
        if not 0.0 <= self.ema_decay < 1.0:
            problems.append(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if problems:
            raise ValueError("invalid DiffusionConfig: " + "; ".join(problems))


# -------------------------------------------------------------------------------------------- data


def check_episodes(episodes: list[dict[str, np.ndarray]]) -> tuple[list[str], list[int]]:
    """Validate the demonstrations; return the observation keys (state first, cameras sorted) and lengths."""
    if not episodes:
        raise ValueError("no episodes to learn from")
    first = episodes[0]
    obs_keys = sorted((k for k in first if k.startswith("observation.")), key=lambda k: (k != STATE_KEY, k))
    unknown = [k for k in obs_keys if k != STATE_KEY and not k.startswith(IMAGE_PREFIX)]
    if unknown:
        raise ValueError(f"unsupported observation keys {unknown}: the diffusion policy reads {STATE_KEY!r} "
                         f"and {IMAGE_PREFIX}<camera>")
    if not obs_keys:
        raise ValueError(f"episode 0 has no observations (no {STATE_KEY!r} and no {IMAGE_PREFIX}<camera>)")
    lengths = []
    for i, episode in enumerate(episodes):
        keys = sorted(k for k in episode if k.startswith("observation."))
        if keys != sorted(obs_keys):
            raise ValueError(f"episode {i} has observations {keys}, episode 0 has {sorted(obs_keys)}")
        if ACTION_KEY not in episode:
            raise ValueError(f"episode {i} has no {ACTION_KEY!r} array")
        length = len(episode[ACTION_KEY])
        if length < 1:
            raise ValueError(f"episode {i} is empty")
        for key in (*obs_keys, ACTION_KEY):
            array = np.asarray(episode[key])
            if key.startswith(IMAGE_PREFIX):
                if array.dtype != np.uint8 or array.ndim != 4 or array.shape[-1] != 3:
                    raise ValueError(f"episode {i}: {key} must be uint8 [T, H, W, 3], got {array.dtype} "
                                     f"{list(array.shape)}")
            elif array.ndim != 2 or not np.all(np.isfinite(array)):
                raise ValueError(f"episode {i}: {key} must be a finite [T, dim] array, got shape "
                                 f"{list(array.shape)}")
            if len(array) != length:
                raise ValueError(f"episode {i}: {key} has {len(array)} frames, {ACTION_KEY!r} has {length}")
            if array.shape[1:] != np.shape(first[key])[1:]:
                raise ValueError(f"episode {i}: {key} frames are {list(array.shape[1:])}, in episode 0 "
                                 f"{list(np.shape(first[key])[1:])}")
        lengths.append(length)
    return obs_keys, lengths


def compute_stats(episodes: list[dict[str, np.ndarray]]) -> dict[str, dict[str, np.ndarray]]:
    """Per-dimension ``{"min", "max"}`` of the actions and (if present) the state over all frames."""
    obs_keys, _ = check_episodes(episodes)
    stats = {}
    for key in (k for k in (STATE_KEY, ACTION_KEY) if k == ACTION_KEY or k in obs_keys):
        frames = np.concatenate([np.asarray(ep[key], dtype=np.float64) for ep in episodes])
        stats[key] = {"min": frames.min(0), "max": frames.max(0)}
    return stats


def window_indices(episode_lengths: list[int], n_obs_steps: int, horizon: int, n_action_steps: int) -> np.ndarray:
    """Frame indices ``[num_windows, horizon]`` of every training window in the concatenated episodes.

    Windows start from ``-(n_obs_steps - 1)`` to ``T - horizon + n_action_steps - 1`` of each episode (at
    least one window for an episode shorter than that); indices past either end repeat the first/last frame.
    """
    pad_before, pad_after = n_obs_steps - 1, n_action_steps - 1
    windows, offset = [], 0
    for length in episode_lengths:
        starts = np.arange(-pad_before, max(length - horizon + pad_after, -pad_before) + 1)
        windows.append(np.clip(starts[:, None] + np.arange(horizon), 0, length - 1) + offset)
        offset += length
    return np.concatenate(windows)


def _model_input(key: str, frames: torch.Tensor) -> torch.Tensor:
    """Episode layout to model layout: images ``[..., H, W, 3]`` uint8 to ``[..., 3, H, W]`` in [0, 1]."""
    if key.startswith(IMAGE_PREFIX):
        return frames.movedim(-1, -3).float() / 255.0
    return frames.float()


class DemonstrationWindows:
    """The demonstrations as flat frame tensors on ``device``, and every training window cut from them."""

    def __init__(self, episodes: list[dict[str, np.ndarray]], n_obs_steps: int, horizon: int, n_action_steps: int,
                 device: torch.device | str = "cpu"):
        self.obs_keys, lengths = check_episodes(episodes)
        self.n_obs_steps = n_obs_steps
        self.frames = {key: torch.from_numpy(np.concatenate([np.asarray(ep[key]) for ep in episodes])).to(device)
                       for key in (*self.obs_keys, ACTION_KEY)}
        self.windows = torch.from_numpy(window_indices(lengths, n_obs_steps, horizon, n_action_steps)).to(device)

    def __len__(self) -> int:
        return len(self.windows)

    def batch(self, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        """Windows ``rows`` as model inputs: observations ``[B, n_obs_steps, ...]``, actions ``[B, horizon, A]``."""
        index = self.windows[rows]
        batch = {key: _model_input(key, self.frames[key][index[:, :self.n_obs_steps]]) for key in self.obs_keys}
        batch[ACTION_KEY] = self.frames[ACTION_KEY][index].float()
        return batch


class MinMaxNormalizer(nn.Module):
    """Maps data to [-1, 1] with per-dimension min and max (buffers: saved and exported with the model).

    A dimension that never changes (max == min) maps to 0, and back to its one value whatever the model
    outputs there: the policy cannot invent motion in a dimension the demonstrations never moved.
    """

    def __init__(self, low: Any, high: Any):
        super().__init__()
        low = torch.as_tensor(np.asarray(low), dtype=torch.float32)
        high = torch.as_tensor(np.asarray(high), dtype=torch.float32)
        if low.shape != high.shape or low.ndim != 1 or bool((high < low).any()):
            raise ValueError(f"min/max must be two vectors of the same size with max >= min, got shapes "
                             f"{list(low.shape)} and {list(high.shape)}")
        self.register_buffer("low", low)
        self.register_buffer("high", high)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        half_range = (self.high - self.low) / 2
        return (x - (self.high + self.low) / 2) / torch.where(half_range > 1e-6, half_range, 1.0)

    def unnormalize(self, y: torch.Tensor) -> torch.Tensor:
        return y * (self.high - self.low) / 2 + (self.high + self.low) / 2


# ----------------------------------------------------------------------------------------- diffusion


def squared_cosine_alphas_cumprod(num_timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
    """``alpha_bar_t`` for ``t = 0..T-1`` of the squared-cosine schedule (Nichol & Dhariwal 2021), float64.

    ``beta_t = 1 - f(t + 1) / f(t)`` with ``f(t) = cos((t / T + s) / (1 + s) * pi / 2)^2``, capped at
    ``max_beta`` so the last step keeps a trace of the signal instead of dividing by zero.
    """
    f = np.cos((np.arange(num_timesteps + 1) / num_timesteps + s) / (1 + s) * math.pi / 2) ** 2
    betas = np.minimum(1.0 - f[1:] / f[:-1], max_beta)
    return np.cumprod(1.0 - betas)


@dataclass(frozen=True)
class DDIMStep:
    timestep: int
    alpha_bar: float  # of this timestep
    alpha_bar_prev: float  # of the next, less noisy timestep; 1.0 after the last step (the clean chunk)


def ddim_schedule(alphas_cumprod: np.ndarray, num_inference_steps: int) -> list[DDIMStep]:
    """Timesteps ``i * (T // n)`` for ``i = n - 1, ..., 0`` ("leading" spacing), e.g. 90, 80, ..., 0 for 10 of 100.

    The first step is not ``T - 1``: the squared-cosine schedule leaves almost no signal in the last
    timesteps (``alpha_bar[99]`` is about 2e-7), where the clean-chunk estimate ``(x - sqrt(1 - a) eps) /
    sqrt(a)`` would be the model's error amplified about 2000-fold. At ``t = 90`` the factor is about 7.
    """
    total = len(alphas_cumprod)
    if not 1 <= num_inference_steps <= total:
        raise ValueError(f"num_inference_steps must be in 1..{total}, got {num_inference_steps}")
    timesteps = np.arange(num_inference_steps)[::-1] * (total // num_inference_steps)
    prev = [float(alphas_cumprod[t]) for t in timesteps[1:]] + [1.0]
    return [DDIMStep(int(t), float(alphas_cumprod[t]), p) for t, p in zip(timesteps, prev)]


def ddim_update(x: torch.Tensor, eps: torch.Tensor, step: DDIMStep, eta: float = 0.0, clip_sample: bool = True,
                noise: torch.Tensor | None = None) -> torch.Tensor:
    """One DDIM step (Song et al. 2021) from ``x`` at ``step.timestep`` to the next timestep.

    ``eta = 0`` is deterministic; ``eta = 1`` is as stochastic as DDPM and needs ``noise`` shaped like ``x``.
    """
    a, a_prev = step.alpha_bar, step.alpha_bar_prev
    clean = (x - math.sqrt(1.0 - a) * eps) / math.sqrt(a)
    if clip_sample:
        clean = clean.clamp(-1.0, 1.0)
    sigma = eta * math.sqrt((1.0 - a_prev) / (1.0 - a) * (1.0 - a / a_prev))
    x_prev = math.sqrt(a_prev) * clean + math.sqrt(max(1.0 - a_prev - sigma**2, 0.0)) * eps
    if sigma > 0.0:
        if noise is None:
            raise ValueError("ddim_update with eta > 0 needs noise")
        x_prev = x_prev + sigma * noise
    return x_prev


# ------------------------------------------------------------------------------------------ networks


class SinusoidalEmbedding(nn.Module):
    """Diffusion step ``[B]`` -> ``[B, dim]`` sines and cosines of geometrically spaced frequencies."""

    def __init__(self, dim: int):
        super().__init__()
        half = dim // 2
        self.register_buffer("frequencies", torch.exp(-math.log(10000.0) * torch.arange(half) / (half - 1)),
                             persistent=False)

    def forward(self, timestep: torch.Tensor) -> torch.Tensor:
        angles = timestep.float()[:, None] * self.frequencies
        return torch.cat([angles.sin(), angles.cos()], dim=-1)


def step_embedding(dim: int) -> nn.Sequential:
    """Diffusion step -> learned ``[B, dim]`` features: sinusoids, then a small MLP."""
    return nn.Sequential(SinusoidalEmbedding(dim), nn.Linear(dim, 4 * dim), nn.Mish(), nn.Linear(4 * dim, dim))


class Conv1dBlock(nn.Sequential):
    """Length-preserving Conv1d -> GroupNorm -> Mish."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, n_groups: int):
        super().__init__(nn.Conv1d(in_channels, out_channels, kernel_size, padding=kernel_size // 2),
                         nn.GroupNorm(n_groups, out_channels), nn.Mish())


class FiLMResidualBlock(nn.Module):
    """Two conv blocks; between them the conditioning vector scales and shifts every channel (FiLM)."""

    def __init__(self, in_channels: int, out_channels: int, cond_dim: int, kernel_size: int, n_groups: int):
        super().__init__()
        self.conv1 = Conv1dBlock(in_channels, out_channels, kernel_size, n_groups)
        self.conv2 = Conv1dBlock(out_channels, out_channels, kernel_size, n_groups)
        self.film = nn.Sequential(nn.Mish(), nn.Linear(cond_dim, 2 * out_channels))
        self.skip = nn.Conv1d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        scale, shift = self.film(cond).unsqueeze(-1).chunk(2, dim=1)
        h = self.conv1(x) * (1.0 + scale) + shift
        return self.conv2(h) + self.skip(x)


class ConditionalUnet1D(nn.Module):
    """Noise predictor ``eps(x_t, t, obs)`` for a chunk ``[B, horizon, act_dim]``, convolving over time.

    Level ``i`` has ``down_dims[i]`` channels; every level but the last halves the length on the way down
    and doubles it on the way up, where each level concatenates the features it had on the way down.
    """

    def __init__(self, act_dim: int, obs_cond_dim: int, down_dims: tuple[int, ...], kernel_size: int = 5,
                 n_groups: int = 8, step_embed_dim: int = 64):
        super().__init__()
        self.step_embed = step_embedding(step_embed_dim)
        block = partial(FiLMResidualBlock, cond_dim=step_embed_dim + obs_cond_dim, kernel_size=kernel_size,
                        n_groups=n_groups)
        ins = (act_dim, *down_dims[:-1])
        self.down = nn.ModuleList(nn.ModuleList([block(c_in, c), block(c, c)]) for c_in, c in zip(ins, down_dims))
        self.downsample = nn.ModuleList(nn.Conv1d(c, c, 3, stride=2, padding=1) for c in down_dims[:-1])
        self.mid = nn.ModuleList([block(down_dims[-1], down_dims[-1]), block(down_dims[-1], down_dims[-1])])
        outs = (down_dims[0], *down_dims[:-1])  # level i returns to the channels of level i - 1
        self.up = nn.ModuleList(nn.ModuleList([block(2 * c, c_out), block(c_out, c_out)])
                                for c, c_out in zip(down_dims, outs))
        self.upsample = nn.ModuleList(nn.ConvTranspose1d(c, c, 4, stride=2, padding=1) for c in down_dims[:-1])
        self.head = nn.Sequential(Conv1dBlock(down_dims[0], down_dims[0], kernel_size, n_groups),
                                  nn.Conv1d(down_dims[0], act_dim, 1))

    def forward(self, x: torch.Tensor, timestep: torch.Tensor, obs_cond: torch.Tensor) -> torch.Tensor:
        cond = torch.cat([self.step_embed(timestep), obs_cond], dim=-1)
        h = x.transpose(1, 2)  # [B, act_dim, horizon]: channels are action dimensions
        skips = []
        for level, blocks in enumerate(self.down):
            for b in blocks:
                h = b(h, cond)
            skips.append(h)
            if level < len(self.downsample):
                h = self.downsample[level](h)
        for b in self.mid:
            h = b(h, cond)
        for level in reversed(range(len(self.up))):
            h = torch.cat([h, skips[level]], dim=1)
            for b in self.up[level]:
                h = b(h, cond)
            if level > 0:
                h = self.upsample[level - 1](h)
        return self.head(h).transpose(1, 2)


class ConditionalMLP(nn.Module):
    """Noise predictor for short horizons: ``[flattened chunk, step embedding, observation features]`` through
    an MLP, reshaped back to ``[B, horizon, act_dim]``."""

    def __init__(self, act_dim: int, horizon: int, obs_cond_dim: int, hidden: tuple[int, ...] = (256, 256, 256),
                 step_embed_dim: int = 64):
        super().__init__()
        self.step_embed = step_embedding(step_embed_dim)
        self.net = mlp(horizon * act_dim + step_embed_dim + obs_cond_dim, tuple(hidden), horizon * act_dim, "silu")

    def forward(self, x: torch.Tensor, timestep: torch.Tensor, obs_cond: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([x.flatten(1), self.step_embed(timestep), obs_cond], dim=-1)).view_as(x)


class SpatialSoftmax(nn.Module):
    """Feature maps ``[N, K, h, w]`` -> ``[N, 2K]``: the expected (x, y) in [-1, 1] of each map's softmax."""

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        n, k, h, w = features.shape
        attention = features.flatten(2).softmax(-1).view(n, k, h, w)
        xs = torch.linspace(-1.0, 1.0, w, device=features.device, dtype=features.dtype)
        ys = torch.linspace(-1.0, 1.0, h, device=features.device, dtype=features.dtype)
        return torch.cat([(attention.sum(2) * xs).sum(-1), (attention.sum(3) * ys).sum(-1)], dim=-1)


class ImageEncoder(nn.Module):
    """Camera frames ``[B, T, 3, H, W]`` in [0, 1] -> features ``[B, T, feature_dim]``.

    Strided convolutions with GroupNorm, a 1x1 convolution to ``num_keypoints`` maps, spatial softmax and a
    linear layer. In training mode each sample gets a random crop (the same for its T frames); in eval mode
    the center crop, so the exported graph is deterministic.
    """

    def __init__(self, image_hw: tuple[int, int], crop_fraction: float = 0.9,
                 channels: tuple[int, ...] = (32, 64, 64), num_keypoints: int = 32, feature_dim: int = 64,
                 n_groups: int = 8, pool: int = 1):
        super().__init__()
        self.crop_hw = tuple(max(1, round(size * crop_fraction)) for size in image_hw)
        layers: list[nn.Module] = [nn.AvgPool2d(pool)] if pool > 1 else []
        in_channels = 3
        for i, out_channels in enumerate(channels):
            kernel = 5 if i == 0 else 3
            stride = 2 if i < len(channels) - 1 else 1
            layers += [nn.Conv2d(in_channels, out_channels, kernel, stride, padding=kernel // 2),
                       nn.GroupNorm(n_groups, out_channels), nn.ReLU()]
            in_channels = out_channels
        layers += [nn.Conv2d(in_channels, num_keypoints, 1), SpatialSoftmax(),
                   nn.Linear(2 * num_keypoints, feature_dim)]
        self.net = nn.Sequential(*layers)

    def crop(self, images: torch.Tensor) -> torch.Tensor:
        """Crop ``[B, T, 3, H, W]`` to ``crop_hw``: a random window per sample in training, else the center."""
        (h, w), (ch, cw) = images.shape[-2:], self.crop_hw
        if not self.training:
            top, left = (h - ch) // 2, (w - cw) // 2
            return images[..., top:top + ch, left:left + cw]
        tops = torch.randint(0, h - ch + 1, (len(images),)).tolist()
        lefts = torch.randint(0, w - cw + 1, (len(images),)).tolist()
        return torch.stack([im[..., t:t + ch, l:l + cw] for im, t, l in zip(images, tops, lefts)])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 5 or images.shape[2] != 3:
            raise ValueError(f"ImageEncoder expects [B, T, 3, H, W] frames, got {list(images.shape)}")
        x = self.crop(images) * 2.0 - 1.0
        return self.net(x.flatten(0, 1)).unflatten(0, images.shape[:2])


# ------------------------------------------------------------------------------------------- policy


class DiffusionPolicy(nn.Module):
    """Observation history -> action chunk ``[horizon, act_dim]`` in the original action units.

    ``stats``: ``{"action": {"min", "max"}, "observation.state": {"min", "max"}}`` (state only if observed;
    see ``compute_stats``). ``image_shapes``: ``{"observation.images.<camera>": (H, W)}``.
    Model inputs (``sample``, ``compute_loss``) are dicts of tensors: state ``[B, n_obs_steps, obs_dim]`` in
    raw units, images ``[B, n_obs_steps, 3, H, W]`` in [0, 1], actions ``[B, horizon, act_dim]``.
    """

    def __init__(self, cfg: DiffusionConfig, stats: dict[str, dict[str, Any]],
                 image_shapes: dict[str, tuple[int, int]] | None = None, action_reference: Any = None):
        super().__init__()
        cfg.validate()
        image_shapes = dict(sorted((image_shapes or {}).items()))
        if ACTION_KEY not in stats:
            raise ValueError(f"stats need {ACTION_KEY!r} min/max (see compute_stats)")
        if STATE_KEY not in stats and not image_shapes:
            raise ValueError(f"the policy needs {STATE_KEY!r} stats or at least one camera in image_shapes")
        self.cfg = cfg
        self.image_shapes = {key: (int(h), int(w)) for key, (h, w) in image_shapes.items()}
        self.action_normalizer = MinMaxNormalizer(stats[ACTION_KEY]["min"], stats[ACTION_KEY]["max"])
        self.act_dim = len(self.action_normalizer.low)
        self.state_normalizer = (MinMaxNormalizer(stats[STATE_KEY]["min"], stats[STATE_KEY]["max"])
                                 if STATE_KEY in stats else None)
        self.image_encoders = nn.ModuleDict({
            key[len(IMAGE_PREFIX):]: ImageEncoder(hw, cfg.crop_fraction, cfg.image_channels, cfg.num_keypoints,
                                                  cfg.image_feature_dim, cfg.n_groups, cfg.image_pool)
            for key, hw in self.image_shapes.items()})
        self.obs_keys = ([STATE_KEY] if self.state_normalizer is not None else []) + list(self.image_shapes)
        self.state_dim = 0 if self.state_normalizer is None else len(self.state_normalizer.low)
        self.action_reference = None if action_reference is None else [int(c) for c in action_reference]
        if self.action_reference is not None and (len(self.action_reference) != self.act_dim
                                                  or not all(0 <= c < self.state_dim for c in self.action_reference)):
            raise ValueError(f"action_reference needs one state column (of {self.state_dim}) per action dimension "
                             f"({self.act_dim}), got {self.action_reference}")
        cond_dim = cfg.n_obs_steps * (self.state_dim + cfg.image_feature_dim * len(self.image_encoders))
        self.denoiser: nn.Module = (
            ConditionalUnet1D(self.act_dim, cond_dim, tuple(cfg.down_dims), cfg.kernel_size, cfg.n_groups,
                              cfg.step_embed_dim) if cfg.denoiser == "unet"
            else ConditionalMLP(self.act_dim, cfg.horizon, cond_dim, cfg.mlp_hidden, cfg.step_embed_dim))
        self.alphas_cumprod = squared_cosine_alphas_cumprod(cfg.num_train_timesteps)

    @property
    def device(self) -> torch.device:
        return self.action_normalizer.low.device

    @property
    def stats(self) -> dict[str, dict[str, np.ndarray]]:
        """The dataset min/max the normalizers hold, in the form ``compute_stats`` returns."""
        normalizers = {ACTION_KEY: self.action_normalizer, STATE_KEY: self.state_normalizer}
        return {key: {"min": n.low.cpu().numpy(), "max": n.high.cpu().numpy()} for key, n in normalizers.items()
                if n is not None}

    def encode_observations(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Observation history -> the conditioning vector ``[B, n_obs_steps * features per step]``.

        The normalized state is held to [-1, 1], the demonstrations' own range, so training never sees the
        bound. A dimension the demonstrations barely moved would otherwise blow up off their range: a cube
        tilted 0.05 by the fingers, level to 0.002 in every demonstration, came in at 30-57 and the denoiser
        answered with chunks at the clip bounds, the gripper toggling every step (panda-lift, BENCHMARKS.md).
        """
        missing = [key for key in self.obs_keys if key not in obs]
        if missing:
            raise KeyError(f"observations lack {missing} (the policy reads {self.obs_keys})")
        features = ([] if self.state_normalizer is None
                    else [self.state_normalizer.normalize(obs[STATE_KEY]).clamp(-1.0, 1.0)])
        features += [encoder(obs[IMAGE_PREFIX + camera]) for camera, encoder in self.image_encoders.items()]
        per_step = torch.cat(features, dim=-1)
        if per_step.shape[1] != self.cfg.n_obs_steps:
            raise ValueError(f"expected {self.cfg.n_obs_steps} observation steps, got {per_step.shape[1]}")
        return per_step.flatten(1)

    def reference(self, obs: dict[str, torch.Tensor]) -> torch.Tensor | float:
        """What the chunk's actions are relative to: with ``action_reference``, those columns of the current
        (latest) state ``[B, 1, act_dim]``, the same for every action of the chunk; else 0."""
        if self.action_reference is None:
            return 0.0
        return obs[STATE_KEY][:, -1:, self.action_reference]

    def compute_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """DDPM epsilon loss: noise the normalized action chunk at a random timestep, predict that noise."""
        cond = self.encode_observations(batch)
        clean = self.action_normalizer.normalize(batch[ACTION_KEY] - self.reference(batch))
        noise = torch.randn_like(clean)
        timestep = torch.randint(0, self.cfg.num_train_timesteps, (len(clean),), device=clean.device)
        alpha_bar = torch.as_tensor(self.alphas_cumprod, dtype=clean.dtype, device=clean.device)[timestep]
        alpha_bar = alpha_bar[:, None, None]
        noisy = alpha_bar.sqrt() * clean + (1.0 - alpha_bar).sqrt() * noise
        return F.mse_loss(self.denoiser(noisy, timestep, cond), noise)

    @torch.no_grad()
    def sample(self, obs: dict[str, torch.Tensor], noise: torch.Tensor | None = None,
               generator: torch.Generator | None = None, num_inference_steps: int | None = None,
               eta: float | None = None) -> torch.Tensor:
        """Action chunks ``[B, horizon, act_dim]`` in action units, by DDIM from ``noise`` (drawn if None).

        ``generator`` (a CPU generator) draws the initial noise and, with ``eta > 0``, the noise of each step.
        """
        eta = self.cfg.eta if eta is None else eta
        cond = self.encode_observations(obs)
        shape = (len(cond), self.cfg.horizon, self.act_dim)
        x = torch.randn(shape, generator=generator).to(self.device) if noise is None else noise
        for step in ddim_schedule(self.alphas_cumprod, num_inference_steps or self.cfg.num_inference_steps):
            timestep = torch.full((x.shape[0],), float(step.timestep), device=x.device)
            eps = self.denoiser(x, timestep, cond)
            step_noise = torch.randn(shape, generator=generator).to(self.device) if eta > 0 else None
            x = ddim_update(x, eps, step, eta, self.cfg.clip_sample, step_noise)
        return self.action_normalizer.unnormalize(x) + self.reference(obs)

    def predict_chunks(self, histories: dict[str, np.ndarray], generator: np.random.Generator | None = None
                       ) -> np.ndarray:
        """Chunks ``[B, horizon, act_dim]`` for B robots from their last ``n_obs_steps`` observations, in the
        episode layout with a batch axis in front (state ``[B, T, obs_dim]``, images ``[B, T, H, W, 3]`` uint8).
        ``generator`` draws the initial noise (as a chunk bundle does, so both give the same chunks)."""
        obs = {key: _model_input(key, torch.as_tensor(np.asarray(histories[key]))).to(self.device)
               for key in self.obs_keys if key in histories}
        generator = generator if generator is not None else np.random.default_rng()
        noise = generator.standard_normal((len(next(iter(obs.values()))), self.cfg.horizon, self.act_dim),
                                          dtype=np.float32)
        return self.sample(obs, noise=torch.from_numpy(noise).to(self.device)).cpu().numpy()

    def predict_chunk(self, history: dict[str, np.ndarray], generator: np.random.Generator | None = None
                      ) -> np.ndarray:
        """One chunk ``[horizon, act_dim]`` for one robot (``predict_chunks`` without the batch axis)."""
        return self.predict_chunks({key: np.asarray(value)[None] for key, value in history.items()}, generator)[0]

    def export_module(self, num_inference_steps: int | None = None) -> ChunkSampler:
        """A standalone module for one full chunk (every DDIM step unrolled, eta = 0), for ONNX export."""
        # eval mode on the wrapper too: exporters restore its mode to every submodule (an image encoder in
        # training mode crops at random)
        return ChunkSampler(self, num_inference_steps or self.cfg.num_inference_steps).eval()

    # -- checkpoints
    def checkpoint(self) -> dict[str, Any]:
        """Everything ``from_checkpoint`` needs, as plain data plus the ``state_dict`` (normalizers included)."""
        return {"config": to_dict(self.cfg), "image_shapes": {k: list(v) for k, v in self.image_shapes.items()},
                "stats": {k: {n: v.tolist() for n, v in s.items()} for k, s in self.stats.items()},
                "action_reference": self.action_reference, "state_dict": self.state_dict()}

    @classmethod
    def from_checkpoint(cls, checkpoint: dict[str, Any], source: str = "diffusion checkpoint") -> DiffusionPolicy:
        cfg = from_dict(DiffusionConfig, checkpoint["config"], source)
        policy = cls(cfg, checkpoint["stats"], {k: tuple(v) for k, v in checkpoint["image_shapes"].items()},
                     checkpoint.get("action_reference"))
        policy.load_state_dict(checkpoint["state_dict"])
        return policy.eval()


class ChunkSampler(nn.Module):
    """``(noise [B, horizon, act_dim], *observations in input_names order) -> chunk [B, horizon, act_dim]``.

    All DDIM steps are unrolled with fixed timesteps and ``eta = 0``; the initial noise is an input, so the
    graph is a deterministic function that ``torch.onnx.export(..., dynamo=False)`` can trace.
    """

    def __init__(self, policy: DiffusionPolicy, num_inference_steps: int):
        super().__init__()
        self.policy = copy.deepcopy(policy).eval()
        self.num_inference_steps = num_inference_steps
        self.input_names = ["noise"] + [key.replace(".", "_") for key in policy.obs_keys]

    def forward(self, noise: torch.Tensor, *observations: torch.Tensor) -> torch.Tensor:
        obs = dict(zip(self.policy.obs_keys, observations))
        return self.policy.sample(obs, noise=noise, num_inference_steps=self.num_inference_steps, eta=0.0)

    def example_inputs(self, batch_size: int = 1) -> tuple[torch.Tensor, ...]:
        """Inputs of the right shapes (zero observations, unit noise from a fixed seed) for tracing."""
        cfg, policy = self.policy.cfg, self.policy
        noise = torch.randn(batch_size, cfg.horizon, policy.act_dim, generator=torch.Generator().manual_seed(0))
        obs = [torch.zeros(batch_size, cfg.n_obs_steps, policy.state_dim) if key == STATE_KEY
               else torch.zeros(batch_size, cfg.n_obs_steps, 3, *policy.image_shapes[key]) for key in policy.obs_keys]
        return (noise.to(policy.device), *(o.to(policy.device) for o in obs))


# ----------------------------------------------------------------------------------------- training


def warmup_cosine(step: int, warmup_steps: int, total_steps: int) -> float:
    """Learning-rate factor: linear from 0 to 1 over ``warmup_steps``, then a cosine down to 0 at the end."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def relative_action_stats(data: DemonstrationWindows, reference: list[int]) -> dict[str, np.ndarray]:
    """Min and max of every training window's actions minus its current state's ``reference`` columns."""
    current = data.windows[:, data.n_obs_steps - 1]
    relative = data.frames[ACTION_KEY][data.windows] - data.frames[STATE_KEY][current][:, None, reference]
    flat = relative.reshape(-1, relative.shape[-1]).double()
    return {"min": flat.min(0).values.numpy(), "max": flat.max(0).values.numpy()}


def train_diffusion(episodes: list[dict[str, np.ndarray]], cfg: DiffusionConfig | None = None,
                    progress: bool = True, on_step: Callable[[int, float], None] | None = None,
                    action_reference: list[int] | None = None) -> DiffusionPolicy:
    """Fit a diffusion policy to the demonstrations; returns the EMA weights in eval mode (to run and export).

    ``action_reference``: one state column per action dimension; the policy then learns each chunk relative
    to those values of the current state (for joint targets: offsets from the joints' measured positions at
    the query, which keep the arm anchored for the whole chunk) and adds them back when sampling.
    Repeatable for a given ``cfg.seed`` (it seeds torch's global generator). ``on_step(step, loss)`` is
    called after every gradient step; ``progress`` shows a tqdm bar.
    """
    cfg = cfg if cfg is not None else DiffusionConfig()
    cfg.validate()
    torch.manual_seed(cfg.seed)
    device = torch.device(cfg.device)
    data = DemonstrationWindows(episodes, cfg.n_obs_steps, cfg.horizon, cfg.n_action_steps, device)
    image_shapes = {key: tuple(np.shape(episodes[0][key])[1:3]) for key in data.obs_keys if key != STATE_KEY}
    stats = compute_stats(episodes)
    if action_reference is not None:
        stats[ACTION_KEY] = relative_action_stats(data, list(action_reference))
    policy = DiffusionPolicy(cfg, stats, image_shapes, action_reference).to(device).train()
    ema = copy.deepcopy(policy).requires_grad_(False)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=cfg.learning_rate, betas=(0.95, 0.999),
                                  weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, partial(warmup_cosine, warmup_steps=cfg.warmup_steps, total_steps=cfg.num_steps))
    bar = tqdm(range(cfg.num_steps), desc="diffusion", unit="step", disable=not progress, dynamic_ncols=True)
    for step in bar:
        rows = torch.randint(0, len(data), (cfg.batch_size,), device=device)
        loss = policy.compute_loss(data.batch(rows))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        polyak_update(ema, policy, 1.0 - min(cfg.ema_decay, (1 + step) / (10 + step)))
        value = loss.item()
        bar.set_postfix(loss=f"{value:.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}", refresh=False)
        if on_step is not None:
            on_step(step, value)
    return ema.eval()


def export_chunk_module(state: dict[str, Any]) -> ChunkSampler:
    """The module of one action chunk (every denoising step) of a checkpoint's policy ``state``."""
    return DiffusionPolicy.from_checkpoint(state).export_module()


SPEC = registry.register(AlgorithmSpec(
    "diffusion", "Diffusion Policy with action chunks, learned from demonstrations (a dataset)", "imitation",
    DiffusionConfig, bundle_kind="chunk", trainer=train_diffusion, exporter=export_chunk_module))
