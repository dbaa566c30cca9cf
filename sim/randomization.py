"""Domain randomization, in two layers.

1. Pure functions of ``(model, default, rng, range)`` that rewrite one env's ``MjModel`` copy from the
   unrandomized ``default`` model (so repeated resets never drift): masses, centres of mass, friction,
   joint damping and armature, actuator gains and strength, a payload (its whole config for ``range``).
2. Event functions ``(env, env_ids, cfg)`` that a task declares as ``EventTerm`` with a mode (startup,
   reset, interval); they apply layer 1 per env, or change env state (latency, pushes, wind).

All sampling goes through ``env.rng`` so a seed reproduces every sampled parameter.
"""
from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

import mujoco
import numpy as np
import torch

from robostack.config import ConfigError
from robostack.sim.task_env import write
from robostack.sim.terms import EventConfig, EventTerm, PayloadConfig, RandomizationConfig, WeakMotorConfig

if TYPE_CHECKING:
    from robostack.sim.task_env import TaskEnv


SAME_FRAME_BODY = int(mujoco.mjtSameFrame.mjSAMEFRAME_BODY)  # inertial frame = body frame
SAME_ROTATION_ONLY = int(mujoco.mjtSameFrame.mjSAMEFRAME_BODYROT)  # same orientation, the centre of mass elsewhere
NOT_SAME_FRAME = int(mujoco.mjtSameFrame.mjSAMEFRAME_NONE)


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
    that shortcut: otherwise their offsets would silently not apply (MuJoCo Warp applies them regardless). Its
    collision detection keeps a body's bounding boxes (``bvh_aabb``) in the body's inertial frame, so they move
    back by the offset: stale boxes sat up to 0.035 m off their geoms, and contacts went missing (a foot sank into
    the floor until its box reached it); ``mj_setConst`` would derive the same boxes."""
    shift = rng.uniform(*offset, (model.nbody - 1, 3))
    model.body_ipos[1:] = default.body_ipos[1:] + shift
    model.body_sameframe[1:] = np.where(default.body_sameframe[1:] == SAME_FRAME_BODY, SAME_ROTATION_ONLY,
                                        default.body_sameframe[1:])
    frames = np.empty((model.nbody - 1, 9))
    for body, quat in enumerate(default.body_iquat[1:]):
        mujoco.mju_quat2Mat(frames[body], quat)
    in_inertial_frame = np.einsum("bji,bj->bi", frames.reshape(-1, 3, 3), shift)  # R^T shift per body
    model.bvh_aabb[:] = default.bvh_aabb
    for body in np.flatnonzero(default.body_bvhnum[1:] > 0) + 1:
        first = default.body_bvhadr[body]
        model.bvh_aabb[first:first + default.body_bvhnum[body], :3] -= in_inertial_frame[body - 1]


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


def payload_body(model: mujoco.MjModel, name: str) -> int:
    """The body a payload rides on: ``name``, or the floating base (the body of the model's free joint)."""
    if name:
        body = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, name)
        if body < 1:
            bodies = ", ".join(model.body(i).name for i in range(1, model.nbody))
            raise ConfigError(f"randomization.payload.body: no body {name!r} to carry it (bodies: {bodies})",
                              key="randomization.payload.body")
        return body
    free = np.flatnonzero(model.jnt_type == mujoco.mjtJoint.mjJNT_FREE)
    if not len(free):
        raise ConfigError("randomization.payload.body: the model has no floating base; name the body that carries "
                          "the payload", key="randomization.payload.body")
    return int(model.jnt_bodyid[free[0]])


def principal_axes(inertia: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Principal moments and axes (a rotation's columns) of a symmetric 3x3 inertia, the axes ordered and signed
    closest to the frame it is given in: a diagonal inertia keeps that frame exactly (no rotation to round off)."""
    moments, axes = np.linalg.eigh(inertia)
    order = list(max(itertools.permutations(range(3)), key=lambda p: np.abs(axes[:, p].diagonal()).sum()))
    moments, axes = moments[order], axes[:, order]
    axes = axes * np.where(axes.diagonal() < 0, -1.0, 1.0)  # each pointing the way of the axis it replaces
    if np.linalg.det(axes) < 0:  # a reflection: turn the least aligned axis round
        axes[:, np.argmin(np.abs(axes.diagonal()))] *= -1.0
    return moments, axes


def add_payload(model: mujoco.MjModel, default: mujoco.MjModel, rng: np.random.Generator,
                cfg: PayloadConfig) -> None:
    """A point mass fixed to a body: the body's mass grows by it, its centre of mass moves to the combined one, and
    its inertia about that point grows by the parallel-axis theorem (for two masses: the reduced mass times
    ``|o|^2 E - o o^T`` of their offset ``o``), rediagonalized into new principal axes. ``mj_setConst`` then
    re-derives what MuJoCo's compiler derives from masses (subtree masses, which place ``subtree_com``; inverse
    weights, which set constraint softness), as for a model compiled with the load. The body is rewritten from
    ``default``, so the payload replaces that body's own ``link_mass`` and ``com_offset`` draws."""
    body = payload_body(model, cfg.body)
    mass, offset = rng.uniform(*cfg.mass), rng.uniform(*np.transpose(cfg.offset))
    own = default.body_mass[body]
    share = mass / (own + mass) if mass else 0.0  # how far the centre of mass moves toward the payload
    frame = np.empty(9)
    mujoco.mju_quat2Mat(frame, default.body_iquat[body])
    o = frame.reshape(3, 3).T @ offset  # in the body's inertial frame
    moments, axes = principal_axes(np.diag(default.body_inertia[body])
                                   + own * share * (o @ o * np.eye(3) - np.outer(o, o)))
    turn = np.empty(4)
    mujoco.mju_mat2Quat(turn, axes.ravel())
    mujoco.mju_mulQuat(model.body_iquat[body], default.body_iquat[body], turn)
    model.body_mass[body] = own + mass
    model.body_ipos[body] = default.body_ipos[body] + share * offset
    model.body_inertia[body] = moments
    model.body_sameframe[body] = NOT_SAME_FRAME  # its inertial frame moved: no shortcut
    mujoco.mj_setConst(model, mujoco.MjData(model))


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
    """Each event keeps its own factor in ``env.actuator_factors``, so none undoes another's."""
    models = env.sim.per_env_models(env_ids)
    kp, kd, strength, weak = env.actuator_factors.transpose(1, 0, 2)
    for i in env_ids:
        output = strength[i] * weak[i]
        set_actuator_gains(models[i], env.default_model, kp[i] * output, kd[i] * output)


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


def weak_motor(env: TaskEnv, env_ids: np.ndarray, cfg: WeakMotorConfig) -> None:
    """``cfg.count`` actuators of each env, picked at random (or ``cfg.actuators``), have their output scaled within
    ``cfg.range``, on top of ``motor_strength`` (one worn motor of otherwise varied ones)."""
    n, nu = len(env_ids), env.default_model.nu
    picked = (np.tile(cfg.actuators, (n, 1)) if cfg.actuators
              else np.argsort(env.rng.random((n, nu)), axis=1)[:, :cfg.count])
    factors = np.ones((n, nu))
    np.put_along_axis(factors, picked, env.rng.uniform(*cfg.range, picked.shape), axis=1)
    env.actuator_factors[env_ids, 3] = factors
    _apply_actuator_factors(env, env_ids)


def payload(env: TaskEnv, env_ids: np.ndarray, cfg: PayloadConfig) -> None:
    """``add_payload`` on the given envs' own model copies."""
    models = env.sim.per_env_models(env_ids)
    for i in env_ids:
        add_payload(models[i], env.default_model, env.rng, cfg)


def shift_events(cfg: RandomizationConfig, model: mujoco.MjModel) -> dict[str, EventTerm]:
    """The task shifts every task offers (``weak_motor``, ``payload``), to go after its other events: a payload
    lands on the body ``link_mass`` and ``com_offset`` rewrote. An enabled one is checked against the task's model
    here, so a wrong actuator or body is a config error when the env is made, and so is a payload that one of
    those would rewrite away later in an episode."""
    weak, load = cfg.weak_motor, cfg.payload
    if weak.enabled and weak.actuators and (len(set(weak.actuators)) < len(weak.actuators)
                                            or not 0 <= min(weak.actuators) <= max(weak.actuators) < model.nu):
        raise ConfigError(f"randomization.weak_motor.actuators: {list(weak.actuators)} must be distinct actuator "
                          f"indices below {model.nu}", key="randomization.weak_motor.actuators")
    if weak.enabled and not weak.actuators and not 1 <= weak.count <= model.nu:
        raise ConfigError(f"randomization.weak_motor.count: {weak.count} must be 1 to the model's {model.nu} "
                          "actuators", key="randomization.weak_motor.count")
    if load.enabled:
        payload_body(model, load.body)
        if min(load.mass) < 0:
            raise ConfigError(f"randomization.payload.mass: {list(load.mass)} kg must not be negative",
                              key="randomization.payload.mass")
        often = ("startup", "reset", "interval")
        for name in ("link_mass", "com_offset"):
            event = getattr(cfg, name)
            if event.enabled and often.index(event.mode) > often.index(load.mode):
                raise ConfigError(f"randomization.payload.mode: {load.mode}, but {name} (mode {event.mode}) "
                                  "rewrites the body more often and would drop the payload: run it no more often "
                                  "than the payload", key="randomization.payload.mode")
    return {"weak_motor": EventTerm(weak_motor, weak), "payload": EventTerm(payload, load)}


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

