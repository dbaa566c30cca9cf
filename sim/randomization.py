"""Domain randomization, in two layers.

1. Pure functions of ``(model, default, rng, range)`` that rewrite one env's ``MjModel`` copy from the
   unrandomized ``default`` model (so repeated resets never drift): masses, centres of mass, friction,
   joint damping and armature, actuator gains and strength.
2. Event functions ``(env, env_ids, cfg)`` that a task declares as ``EventTerm`` with a mode (startup,
   reset, interval); they apply layer 1 per env, or change env state (latency, pushes, wind).

All sampling goes through ``env.rng`` so a seed reproduces every sampled parameter.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import mujoco
import numpy as np
import torch

from robostack.sim.task_env import write
from robostack.sim.terms import EventConfig

if TYPE_CHECKING:
    from robostack.sim.task_env import TaskEnv


SAME_FRAME_BODY = int(mujoco.mjtSameFrame.mjSAMEFRAME_BODY)  # inertial frame = body frame
SAME_ROTATION_ONLY = int(mujoco.mjtSameFrame.mjSAMEFRAME_BODYROT)  # same orientation, the centre of mass elsewhere


# ----- layer 1: (model, default, rng, range) -> model changed in place -----
def scale_link_masses(model: mujoco.MjModel, default: mujoco.MjModel, rng: np.random.Generator,
                      scale: tuple[float, float]) -> None:
    """Each body's mass and inertia scaled by its own factor (density error, payloads)."""
    factor = rng.uniform(*scale, model.nbody)
    factor[0] = 1.0  # world
    model.body_mass[:] = default.body_mass * factor
    model.body_inertia[:] = default.body_inertia * factor[:, None]


def offset_coms(model: mujoco.MjModel, default: mujoco.MjModel, rng: np.random.Generator,
                offset: tuple[float, float]) -> None:
    """Each body's centre of mass shifted by a uniform offset in metres per axis. MuJoCo skips the offset of a
    body compiled with its centre of mass at its origin (``body_sameframe``: xipos = xpos), so those bodies lose
    that shortcut: otherwise their offsets would silently not apply (MuJoCo Warp applies them regardless)."""
    model.body_ipos[1:] = default.body_ipos[1:] + rng.uniform(*offset, (model.nbody - 1, 3))
    model.body_sameframe[1:] = np.where(default.body_sameframe[1:] == SAME_FRAME_BODY, SAME_ROTATION_ONLY,
                                        default.body_sameframe[1:])


def scale_friction(model: mujoco.MjModel, default: mujoco.MjModel, rng: np.random.Generator,
                   scale: tuple[float, float]) -> None:
    """One sliding-friction factor for the whole env (floor and feet wear alike)."""
    model.geom_friction[:, 0] = default.geom_friction[:, 0] * rng.uniform(*scale)


def scale_joint_damping(model: mujoco.MjModel, default: mujoco.MjModel, rng: np.random.Generator,
                        scale: tuple[float, float]) -> None:
    model.dof_damping[:] = default.dof_damping * rng.uniform(*scale, model.nv)


def scale_joint_armature(model: mujoco.MjModel, default: mujoco.MjModel, rng: np.random.Generator,
                         scale: tuple[float, float]) -> None:
    model.dof_armature[:] = default.dof_armature * rng.uniform(*scale, model.nv)


def set_actuator_gains(model: mujoco.MjModel, default: mujoco.MjModel, kp: np.ndarray, kd: np.ndarray) -> None:
    """Scale each actuator's gain and position bias by ``kp`` and velocity bias by ``kd``.

    For MuJoCo position actuators (force = kp*ctrl - kp*q - kd*qdot) this scales the PD gains; for plain
    motors (the drone's rotors) ``kp`` scales thrust. Scaling gains rather than ``gear`` keeps the
    position target's meaning intact.
    """
    model.actuator_gainprm[:, 0] = default.actuator_gainprm[:, 0] * kp
    model.actuator_biasprm[:, 1] = default.actuator_biasprm[:, 1] * kp
    model.actuator_biasprm[:, 2] = default.actuator_biasprm[:, 2] * kd


# ----- layer 2: events -----
def model_event(randomizer):
    """Turn a layer-1 function into an event that rewrites the given envs' own model copies."""

    def event(env: TaskEnv, env_ids: np.ndarray, cfg: EventConfig) -> None:
        models = env.sim.per_env_models(env_ids)
        for i in env_ids:
            randomizer(models[i], env.default_model, env.rng, cfg.range)

    event.__name__ = f"randomize_{randomizer.__name__}"
    event.__doc__ = randomizer.__doc__
    return event


def _apply_actuator_factors(env: TaskEnv, env_ids: np.ndarray) -> None:
    models = env.sim.per_env_models(env_ids)
    kp, kd, strength = env.actuator_factors[:, 0], env.actuator_factors[:, 1], env.actuator_factors[:, 2]
    for i in env_ids:
        set_actuator_gains(models[i], env.default_model, kp[i] * strength[i], kd[i] * strength[i])


def actuator_gains(env: TaskEnv, env_ids: np.ndarray, cfg: EventConfig) -> None:
    """kp and kd scaled independently per actuator, each within ``cfg.range``."""
    nu = env.default_model.nu
    env.actuator_factors[env_ids, 0] = env.rng.uniform(*cfg.range, (len(env_ids), nu))
    env.actuator_factors[env_ids, 1] = env.rng.uniform(*cfg.range, (len(env_ids), nu))
    _apply_actuator_factors(env, env_ids)


def motor_strength(env: TaskEnv, env_ids: np.ndarray, cfg: EventConfig) -> None:
    """Each actuator's whole output (torque or thrust) scaled within ``cfg.range`` (weak motors, battery sag)."""
    env.actuator_factors[env_ids, 2] = env.rng.uniform(*cfg.range, (len(env_ids), env.default_model.nu))
    _apply_actuator_factors(env, env_ids)


def action_latency(env: TaskEnv, env_ids: np.ndarray, cfg: EventConfig) -> None:
    """Delay actions by 0..N whole control steps per env (``range`` = (min_steps, max_steps))."""
    lo, hi = int(cfg.range[0]), int(cfg.range[1])
    env.set_max_latency(hi)
    env.latency[torch.as_tensor(env_ids)] = torch.as_tensor(env.rng.integers(lo, hi + 1, len(env_ids)),
                                                            device=env.device)


def push_base(env: TaskEnv, env_ids: np.ndarray, cfg: EventConfig) -> None:
    """Kick the floating base: add a horizontal velocity uniform in ``range`` m/s per axis."""
    env.write_sim("qvel", (env_ids, slice(0, 2)), env.rng.uniform(*cfg.range, (len(env_ids), 2)), add=True)


def wind_gust(env: TaskEnv, env_ids: np.ndarray, cfg: EventConfig) -> None:
    """Hold a new constant wind force (newtons, uniform per axis in ``range``) on the floating base."""
    write(env.external_force, (env_ids, slice(0, 3)), env.rng.uniform(*cfg.range, (len(env_ids), 3)))

