"""The generic task environment: a ``TaskDefinition`` (terms) running on a backend's batch of physics states
(``physics``: ``MujocoBatch`` for the embedded ``mujoco`` backend).

Per control step: action -> latency buffer -> controls; interval events; ``decimation`` physics substeps
in native threads; then terminations, rewards, episode bookkeeping, automatic resets and observations,
all as batched torch ops so the task costs a small fraction of the physics (see ``robostack bench sim``).
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, Callable

import gymnasium as gym
import mujoco
import numpy as np
import torch

from robostack.sim.env import Obs, VecEnv
from robostack.sim.policy_state import PolicyState
from robostack.sim.terms import TaskDefinition


@contextlib.contextmanager
def _torch_single_thread(device: torch.device) -> Iterator[None]:
    """Run the task's small batched tensor ops on one thread.

    Right after ``mujoco.rollout`` returns, torch's intra-op workers contend with the rollout threads:
    measured here, a [256, 19] gather took 12 ms with 2 torch threads and 10 us with 1. The task's
    tensors are small, so one thread loses nothing; the previous setting is restored for training.
    """
    if device.type != "cpu":
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def control_limits(model: mujoco.MjModel) -> np.ndarray:
    """[nu, 2] control range of each actuator, +-inf where the model leaves it unlimited."""
    ctrlrange = model.actuator_ctrlrange.copy()
    ctrlrange[~model.actuator_ctrllimited.astype(bool)] = (-np.inf, np.inf)
    return ctrlrange


def sensor_slices(model: mujoco.MjModel) -> dict[str, slice]:
    """Sensor name -> its slice of ``sensordata``."""
    return {model.sensor(i).name: slice(model.sensor_adr[i], model.sensor_adr[i] + model.sensor_dim[i])
            for i in range(model.nsensor)}


def actuated_joint_addresses(model: mujoco.MjModel, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """qpos and qvel addresses of the joints the actuators drive, in actuator order."""
    jnt = [model.actuator_trnid[i, 0] for i in range(model.nu) if model.actuator_trntype[i] == mujoco.mjtTrn.mjTRN_JOINT]
    return (torch.as_tensor([model.jnt_qposadr[j] for j in jnt], dtype=torch.long, device=device),
            torch.as_tensor([model.jnt_dofadr[j] for j in jnt], dtype=torch.long, device=device))


def as_tensor(array: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    """A physics array as a float32 tensor on ``device``: no copy when it is one already."""
    tensor = array if torch.is_tensor(array) else torch.from_numpy(array)
    return tensor.to(device, torch.float32)


def write(array: np.ndarray | torch.Tensor, index: Any, value: Any, add: bool = False) -> None:
    """``array[index] = value`` (or ``+=``) for a numpy array or a torch tensor alike; a tensor's numpy index
    arrays and values move to its device."""
    if torch.is_tensor(array):
        parts = index if isinstance(index, tuple) else (index,)
        index = tuple(torch.as_tensor(p, device=array.device) if isinstance(p, np.ndarray) else p for p in parts)
        value = torch.as_tensor(value, dtype=array.dtype, device=array.device)
    if add:
        array[index] += value
    else:
        array[index] = value


class TaskEnv(PolicyState, VecEnv):
    """``physics(model, num_envs, substeps, threads)`` makes the backend's batch: ``qpos``, ``qvel``,
    ``sensordata``, ``time``, ``act`` and ``ctrl`` arrays per env, ``models`` (and ``per_env_models`` for
    randomization), ``step``, ``forward``, ``data_for`` and ``close`` (``robostack.sim.mujoco_backend``)."""

    def __init__(self, task: TaskDefinition, physics: Callable[..., Any], num_envs: int | None = None, seed: int = 0,
                 device: str | torch.device = "cpu"):
        self.task = task
        self.task_cfg = task.cfg
        self.num_envs = num_envs or task.sim.num_envs
        self.device = torch.device(device)
        self.control_dt = task.sim.timestep * task.sim.decimation
        self.max_episode_length = int(round(task.sim.episode_length_s / self.control_dt))
        model: mujoco.MjModel = task.model
        model.opt.timestep = task.sim.timestep
        self.sim = physics(model, self.num_envs, task.sim.decimation, task.sim.num_threads)
        self.default_model = model
        n, dev = self.num_envs, self.device

        # State every term function may read (refreshed from the physics once per step).
        self.init_policy_state(task, control_limits(model))
        self.command = torch.zeros(n, task.command_dim, device=dev)
        self.episode_length = torch.zeros(n, dtype=torch.long, device=dev)
        self.terminated = torch.zeros(n, dtype=torch.bool, device=dev)
        self.latency = torch.zeros(n, dtype=torch.long, device=dev)  # action delay, control steps
        self._torch_physics = torch.is_tensor(self.sim.qpos)  # the backend keeps its state in torch tensors (warp)
        # qfrc_applied held over the control step, an array of the physics' kind (numpy, or torch on its device)
        self.external_force = (torch.zeros((n, model.nv), device=self.sim.qpos.device) if self._torch_physics
                               else np.zeros((n, model.nv)))
        self.actuator_factors = np.ones((n, 4, model.nu))  # kp, kd, strength, weak-motor multipliers (randomization)
        self.ctrl = self._ctrl_offset.repeat(n, 1)  # controls applied this step (after any latency)
        self._ctrl_history: torch.Tensor | None = None  # [max_latency+1, N, nu], newest first
        self._sensor_slices = sensor_slices(model)
        self.actuator_qpos_adr, self.actuator_dof_adr = actuated_joint_addresses(model, dev)
        self.default_joint_pos = torch.as_tensor(task.default_joint_pos, dtype=torch.float32, device=dev)
        self.buffers: dict[str, torch.Tensor] = {}  # task-specific per-env state (e.g. feet air time)

        self.action_space = gym.spaces.Box(-1.0, 1.0, (self.action_dim,), np.float32)

        self._reward_sums = {name: torch.zeros(n, device=dev) for name in task.rewards}
        self._metric_sums = {name: torch.zeros(n, device=dev) for name in task.metrics}
        self._return = torch.zeros(n, device=dev)
        self._next_interval = {name: np.zeros(n) for name, ev in task.events.items()
                               if ev.cfg.mode == "interval"}
        self._seed(seed)
        self._refresh()
        self.size_integrals()
        self.observation_spaces = {
            group: gym.spaces.Box(-np.inf, np.inf, (sum(t.func(self).shape[-1] for t in terms.values()),),
                                  np.float32)
            for group, terms in task.observations.items()
        }
        self._run_events("startup", np.arange(n))

    # ----- seeding and events -----
    def _seed(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.torch_gen = torch.Generator(device=self.device).manual_seed(seed)

    def _active_events(self, mode: str):
        for name, ev in self.task.events.items():
            if ev.cfg.mode == mode and ev.cfg.enabled and (self.task.randomize or not ev.randomization):
                yield name, ev

    def _run_events(self, mode: str, env_ids: np.ndarray) -> None:
        if len(env_ids):
            for _, ev in self._active_events(mode):
                ev.func(self, env_ids, ev.cfg)

    def _schedule(self, name: str, env_ids: np.ndarray, now: np.ndarray | float = 0.0) -> None:
        """Next firing step of interval event ``name`` for those envs: ``now`` + a sampled interval."""
        lo, hi = self.task.events[name].cfg.interval_s
        self._next_interval[name][env_ids] = now + self.rng.uniform(lo, hi, len(env_ids)) / self.control_dt

    def _run_interval_events(self) -> None:
        steps = self.episode_length.cpu().numpy()
        for name, ev in self._active_events("interval"):
            due = np.nonzero(steps >= self._next_interval[name])[0]
            if len(due):
                ev.func(self, due, ev.cfg)
                self._schedule(name, due, steps[due])

    # ----- reading and writing the physics -----
    def _refresh(self) -> None:
        """The batch state and sensors as float32 torch tensors on the env's device, once per step; term functions
        read these. A backend whose state is such a tensor already (warp) is read without a copy."""
        self.qpos = as_tensor(self.sim.qpos, self.device)
        self.qvel = as_tensor(self.sim.qvel, self.device)
        self._sensors = as_tensor(self.sim.sensordata, self.device)

    def write_sim(self, name: str, index: Any, value: Any, add: bool = False) -> None:
        """``sim.<name>[index] = value`` (``+=`` with ``add``) whatever the physics keeps its state in: numpy
        arrays (the C backend) or torch tensors on a device (warp); ``index`` and ``value`` as numpy takes them.
        Resets and events write the state through this."""
        write(getattr(self.sim, name), index, value, add)

    def sim_array(self, name: str) -> np.ndarray:
        """``sim.<name>`` as a numpy array (a host copy for state kept on a GPU)."""
        array = getattr(self.sim, name)
        return array.cpu().numpy() if torch.is_tensor(array) else array

    def sensor(self, name: str) -> torch.Tensor:
        try:
            return self._sensors[:, self._sensor_slices[name]]
        except KeyError:
            raise KeyError(f"task {self.task.name!r}: model has no sensor {name!r}; "
                           f"sensors: {sorted(self._sensor_slices)}") from None

    def observe(self) -> Obs:
        obs = {}
        with self.following_command():
            for group, terms in self.task.observations.items():
                parts = []
                for term in terms.values():
                    value = term.func(self)
                    if term.noise and self.task.randomize and self.task.observation_noise:
                        half = term.noise * self.task.observation_noise
                        value = value + (torch.rand(value.shape, generator=self.torch_gen, device=self.device)
                                         * 2 - 1) * half
                    parts.append(value * term.scale if term.scale != 1.0 else value)
                obs[group] = torch.cat(parts, dim=-1)
        return obs

    # ----- the contract -----
    def reset(self, seed: int | None = None) -> tuple[Obs, dict[str, Any]]:
        with _torch_single_thread(self.device):
            return self._reset(seed)

    def _reset(self, seed: int | None) -> tuple[Obs, dict[str, Any]]:
        if seed is not None:
            self._seed(seed)
            self._run_events("startup", np.arange(self.num_envs))
        self._reset_envs(np.arange(self.num_envs))
        self._refresh()
        return self.observe(), {}

    def _reset_envs(self, env_ids: np.ndarray) -> None:
        ids = torch.as_tensor(env_ids, device=self.device)
        self.write_sim("time", env_ids, 0.0)
        self.write_sim("act", env_ids, 0.0)
        write(self.external_force, env_ids, 0.0)
        self.episode_length[ids] = 0
        self.clear_policy_state(ids)
        self.ctrl[ids] = self._ctrl_offset
        if self._ctrl_history is not None:
            self._ctrl_history[:, ids] = self._ctrl_offset
        for buf in (*self._reward_sums.values(), *self._metric_sums.values(), self._return):
            buf[ids] = 0.0
        self.task.reset(self, env_ids)
        self._run_events("reset", env_ids)
        for name in self._next_interval:
            self._schedule(name, env_ids)
        self.sim.forward(env_ids)

    def set_max_latency(self, steps: int) -> None:
        """Make the control history that action-latency events index into hold at least ``steps`` delays."""
        if self._ctrl_history is None or self._ctrl_history.shape[0] < steps + 1:
            self._ctrl_history = self._ctrl_offset.repeat(steps + 1, self.num_envs, 1)

    def _controls(self, action: torch.Tensor) -> torch.Tensor:
        """Record the action; return the controls to apply now (the commanded ones, ``latency`` steps old)."""
        ctrl = self.apply_action(action)
        if self._ctrl_history is None:
            return ctrl
        self._ctrl_history = torch.roll(self._ctrl_history, 1, dims=0)
        self._ctrl_history[0] = ctrl
        return self._ctrl_history[self.latency, torch.arange(self.num_envs, device=self.device)]

    def step(self, action: torch.Tensor, control_filter: Callable[[torch.Tensor], torch.Tensor] | None = None,
             before_reset: Callable[[], None] | None = None):
        """One control step of ``action`` [N, action_dim]; ``control_filter`` (controls -> controls, e.g. a safety
        layer) changes the controls the action map commands before they reach the physics, as a robot's safety
        layer sits between its policy and its driver; ``before_reset`` sees every env after the step, before
        those whose episode ended are reset (e.g. to judge the state a fall ended in)."""
        with _torch_single_thread(self.device):
            return self._step(action, control_filter, before_reset)

    def _step(self, action: torch.Tensor, control_filter: Callable[[torch.Tensor], torch.Tensor] | None = None,
              before_reset: Callable[[], None] | None = None):
        action = torch.as_tensor(action, dtype=torch.float32, device=self.device)
        if action.shape != (self.num_envs, self.action_dim):
            raise ValueError(f"task {self.task.name!r}: action must have shape "
                             f"{(self.num_envs, self.action_dim)}, got {tuple(action.shape)}")
        if not torch.isfinite(action).all():
            bad = torch.nonzero(~torch.isfinite(action).all(dim=1)).flatten().tolist()
            raise ValueError(f"task {self.task.name!r}: non-finite action (NaN or inf) for envs {bad[:10]}")
        ctrl = self._controls(action)
        if control_filter is not None:
            ctrl = torch.clamp(torch.as_tensor(control_filter(ctrl), dtype=torch.float32, device=self.device),
                               self._ctrl_lo, self._ctrl_hi)
        return self._advance(ctrl, before_reset)

    def step_controls(self, ctrl: torch.Tensor):
        """Step with actuator controls [N, nu] given directly (clipped to their limits), bypassing the action
        map and latency: how a simulated robot driver applies the commands it receives. Same return as
        ``step``; action terms keep their last values."""
        ctrl = torch.as_tensor(ctrl, dtype=torch.float32, device=self.device)
        if ctrl.shape != self.ctrl.shape or not torch.isfinite(ctrl).all():
            raise ValueError(f"task {self.task.name!r}: controls must be finite with shape {tuple(self.ctrl.shape)}, "
                             f"got {tuple(ctrl.shape)}")
        with _torch_single_thread(self.device):
            return self._advance(torch.clamp(ctrl, self._ctrl_lo, self._ctrl_hi))

    def _advance(self, ctrl: torch.Tensor, before_reset: Callable[[], None] | None = None):
        self.ctrl = ctrl
        self._run_interval_events()
        if self._torch_physics:
            self.sim.step(self.ctrl, self.external_force)
        else:
            self.sim.step(self.ctrl.cpu().numpy().astype(np.float64), self.external_force)
        self.episode_length += 1
        self._refresh()
        self.integrate()

        task = self.task
        terminated = torch.zeros(self.num_envs, dtype=torch.bool, device=self.device)
        truncated = self.episode_length >= self.max_episode_length
        for term in task.terminations.values():
            if term.time_out:
                truncated |= term.func(self)
            else:
                terminated |= term.func(self)
        truncated &= ~terminated
        self.terminated = terminated  # reward terms may penalize it (see mdp.is_terminated)

        reward = torch.zeros(self.num_envs, device=self.device)
        for name, term in task.rewards.items():
            if term.weight:
                value = term.weight * term.func(self)
                self._reward_sums[name] += value
                reward += value
        for name, fn in task.metrics.items():
            self._metric_sums[name] += fn(self)
        self._return += reward

        obs = self.observe()
        done = terminated | truncated
        if before_reset is not None:
            before_reset()
        info: dict[str, Any] = {"done": done, "final_obs": obs}
        done_ids = torch.nonzero(done).flatten()
        if len(done_ids):
            info["episode"] = self._episode_stats(done)
            info["final_obs"] = {k: v.clone() for k, v in obs.items()}
            env_ids = done_ids.cpu().numpy()
            self._reset_envs(env_ids)
            self._refresh()
            fresh = self.observe()
            for k in obs:
                obs[k][done_ids] = fresh[k][done_ids]
        return obs, reward, terminated, truncated, info

    def _episode_stats(self, done: torch.Tensor) -> dict[str, torch.Tensor]:
        length = self.episode_length.clone()
        stats = {"return": self._return.clone(), "length": length,
                 "success": self.task.success(self).float() * done}
        for name, total in self._reward_sums.items():
            stats[f"reward/{name}"] = total.clone()
        for name, total in self._metric_sums.items():
            stats[f"metric/{name}"] = total / length.clamp(min=1)
        return stats

    def close(self) -> None:
        self.sim.close()
