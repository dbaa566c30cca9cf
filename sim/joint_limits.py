"""Limits on PD joint position targets, shared by training and the safety layer.

The safety layer (``robostack.real.safety``) clamps every target it sends to a driver; a policy trained
without the same clamps learns targets the robot will never get (a stiff arm's policy leads its joints by
more than the effort bound allows), so a task may declare the same limits for its actions
(``ActionMap.limits``). One function, ``limit_targets``, applies them on numpy arrays (the safety layer,
one robot) and on torch tensors (training, a batch), so the two cannot drift.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import mujoco
import numpy as np

from robostack.specs import RobotConfig, RobotSpec


@dataclass
class JointTargetLimits:
    """Limits on joint position targets, relative to the URDF's joint limits (a YAML section)."""

    position_margin: float  # rad kept inside the URDF position limits of a revolute joint
    velocity_scale: float  # x URDF velocity limit: how fast a position target may move
    # x URDF effort limit: the bound on the PD torque kp (target - q) - kd qdot. None: no such bound, for a
    # driver whose joints saturate their own torque. The bound assumes the nominal gains: where a joint's
    # true kp is above and kd below nominal, a target held at the bound pushes along the joint's velocity
    # (anti-damping). Measured on panda-reach, clamping every 2 ms physics step: success 1.00 with nominal
    # gains, 0.07 with the training's +-20% gain randomization, 1.00 without the bound (BENCHMARKS.md).
    effort_scale: float | None
    prismatic_margin: float = 0.0  # m kept inside the URDF position limits of a prismatic joint (a finger)
    # x URDF velocity limit for a prismatic joint's target; None: no rate limit. A gripper's open / close
    # command is a target the gripper reaches at its own speed. (None, not ``.inf``: a bundle's JSON metadata
    # stores no infinities, and its task must rebuild with the limits it trained under.)
    prismatic_velocity_scale: float | None = None


UNLIMITED = 1e9  # rad/s or m/s: no rate limit, finite (an infinite one times a zero interval would be NaN)


@dataclass
class TargetBounds:
    """``JointTargetLimits`` resolved for one robot, per actuator (MuJoCo actuator order)."""

    lower: np.ndarray  # position bounds, margins applied
    upper: np.ndarray
    max_velocity: np.ndarray  # how fast a target may move (rad/s or m/s)
    max_lead: np.ndarray  # effort bound / kp: how far a target may lead the torque-free point
    damping_lead: np.ndarray  # kd / kp (s): the torque-free point leads the position by this x velocity

    @classmethod
    def for_robot(cls, robot: RobotSpec, config: RobotConfig, model: mujoco.MjModel,
                  limits: JointTargetLimits) -> "TargetBounds":
        """From a robot's URDF limits, the gains of its configuration and the model's joint types."""
        prismatic = model.jnt_type[model.actuator_trnid[:, 0]] == mujoco.mjtJoint.mjJNT_SLIDE
        margin = np.where(prismatic, limits.prismatic_margin, limits.position_margin)
        urdf = robot.joint_limits
        lower, upper = urdf.lower + margin, urdf.upper - margin
        if np.any(lower >= upper):
            names = [n for n, lo, hi in zip(robot.joint_names, lower, upper) if lo >= hi]
            raise ValueError(f"{robot.name}: the joint target margins leave no range for {names}")
        finger_scale = np.inf if limits.prismatic_velocity_scale is None else limits.prismatic_velocity_scale
        velocity_scale = np.where(prismatic, finger_scale, limits.velocity_scale)
        kp, kd = config.joint_gains()
        return cls(lower=lower, upper=upper,
                   max_velocity=np.minimum(urdf.velocity * velocity_scale, UNLIMITED),
                   max_lead=np.full(len(lower), np.inf) if limits.effort_scale is None
                   else urdf.effort * limits.effort_scale / kp,
                   damping_lead=kd / kp)

    def converted(self, convert: Callable[[np.ndarray], Any]) -> "TargetBounds":
        """The same bounds as another array type (``limit_targets`` on torch tensors takes them as tensors):
        numpy alone here, so the safety layer loads no torch."""
        return TargetBounds(**{k: convert(v) for k, v in vars(self).items()})


WINDOWS = ("joint bounds", "effort limit", "rate limit")  # in priority order


def limit_targets(target: Any, position: Any, velocity: Any, previous: Any, bounds: TargetBounds, dt: float,
                  xp: Any = np) -> tuple[Any, list[Any]]:
    """``target`` within the joint bounds, then the effort bound (|kp (target - q) - kd qdot| <= effort),
    then the rate limit (at most ``max_velocity * dt`` from ``previous``), in that priority: each window
    narrows what the stronger ones left, and where it lies outside them their nearest point wins.

    Works on numpy arrays (``xp=np``) or torch tensors (``xp=torch``, bounds ``converted`` to tensors); returns the
    limited targets and, per window in ``WINDOWS`` order, where the target was outside it."""
    torque_free = position + bounds.damping_lead * velocity
    step = bounds.max_velocity * dt
    low, high = bounds.lower, bounds.upper
    outside = []
    for window_low, window_high in ((bounds.lower, bounds.upper),
                                    (torque_free - bounds.max_lead, torque_free + bounds.max_lead),
                                    (previous - step, previous + step)):
        outside.append((target < window_low) | (target > window_high))
        low, high = xp.minimum(xp.maximum(window_low, low), high), xp.minimum(xp.maximum(window_high, low), high)
    return xp.minimum(xp.maximum(target, low), high), outside
