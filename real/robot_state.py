"""One measurement of a robot (and of the objects its task handles), in the simulator's conventions.

Plain numpy: the safety layer, the nodes and the observation builder all read it, and the safety node must
not load what the policy needs (torch, the task's terms) to read it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import numpy as np


@dataclass
class BodyState:
    """A free body's pose and twist in the simulator's frames (a free joint's qpos and qvel): position and
    linear velocity in the world frame, orientation a (w, x, y, z) quaternion, angular velocity in the body's."""

    position: np.ndarray
    orientation: np.ndarray
    linear_velocity: np.ndarray
    angular_velocity: np.ndarray


@dataclass
class Pose:
    """A fixed body's pose: position and orientation (w, x, y, z), robot base (world) frame."""

    position: np.ndarray
    orientation: np.ndarray


@dataclass
class RobotState:
    """One measurement of the robot. Joint values are keyed by joint name; base fields are None for a
    fixed-base robot. Frames follow the simulator: base position and linear velocity in the world frame,
    orientation as a (w, x, y, z) quaternion, angular velocity in the body frame. ``object`` is the task's
    manipulated object, for tasks with one (from motion capture or a pose tracker); ``fixtures`` the poses of
    the fixed bodies the task places per episode, by body name."""

    joint_position: Mapping[str, float] = field(default_factory=dict)
    joint_velocity: Mapping[str, float] = field(default_factory=dict)
    base_position: np.ndarray | None = None
    base_orientation: np.ndarray | None = None
    base_linear_velocity: np.ndarray | None = None
    base_angular_velocity: np.ndarray | None = None
    object: BodyState | None = None
    fixtures: Mapping[str, Pose] = field(default_factory=dict)
