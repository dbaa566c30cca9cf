"""The robot's measured state from its driver's topics, as configured in ``configs/deploy/<robot>.yaml``.

``StateListener`` subscribes to the configured joint-state, IMU and odometry topics on an rclpy node and
keeps the latest of each with its arrival time (monotonic clock), so nodes can tell a fresh state from a
stale one. ``state()`` gives a ``RobotState`` in the simulator's conventions (quaternion w, x, y, z; base
linear velocity in the world frame; angular velocity in the body frame).
"""
from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np

from robostack.real.deploy_config import DeployConfig
from robostack.real.messages import get_field, message_type, read_vector
from robostack.real.observation import RobotState

QUAT_FIELDS = ("w", "x", "y", "z")


def rotate(quat_wxyz: np.ndarray, vector: np.ndarray) -> np.ndarray:
    """Rotate ``vector`` from the body frame of orientation ``quat_wxyz`` into the world frame."""
    w, xyz = quat_wxyz[0], quat_wxyz[1:]
    t = 2.0 * np.cross(xyz, vector)
    return vector + w * t + np.cross(xyz, t)


class StateListener:
    """Latest joint states, IMU and odometry of one robot; ``on_update`` runs after every message."""

    def __init__(self, node: Any, cfg: DeployConfig, qos: Any = 10, on_update: Callable[[str], None] | None = None):
        self.cfg = cfg
        self._on_update = on_update
        self.joint_position: dict[str, float] = {}
        self.joint_velocity: dict[str, float] = {}
        self.base_position: np.ndarray | None = None
        self.base_orientation: np.ndarray | None = None
        self.base_linear_velocity: np.ndarray | None = None
        self.base_angular_velocity: np.ndarray | None = None
        self.received: dict[str, float] = {}  # source -> monotonic time of its last message
        self.sources = [name for name in ("joint_states", "imu", "odometry") if getattr(cfg.topics, name) is not None]
        handlers = {"joint_states": self._joint_states, "imu": self._imu, "odometry": self._odometry}
        self.subscriptions = [
            node.create_subscription(message_type(getattr(cfg.topics, name).type), getattr(cfg.topics, name).topic,
                                     handlers[name], qos)
            for name in self.sources
        ]

    def _mark(self, source: str) -> None:
        self.received[source] = time.monotonic()
        if self._on_update is not None:
            self._on_update(source)

    def _joint_states(self, msg: Any) -> None:
        t = self.cfg.topics.joint_states
        names = list(get_field(msg, t.name))
        positions, velocities = list(get_field(msg, t.position)), list(get_field(msg, t.velocity))
        self.joint_position.update(zip(names, map(float, positions)))
        if len(velocities) == len(names):  # a driver may leave velocity empty; then it stays unknown
            self.joint_velocity.update(zip(names, map(float, velocities)))
        self._mark("joint_states")

    def _imu(self, msg: Any) -> None:
        t = self.cfg.topics.imu
        self.base_orientation = read_vector(msg, t.orientation, QUAT_FIELDS)
        self.base_angular_velocity = read_vector(msg, t.angular_velocity)
        self._mark("imu")

    def _odometry(self, msg: Any) -> None:
        t = self.cfg.topics.odometry
        self.base_position = read_vector(msg, t.position)
        velocity = read_vector(msg, t.linear_velocity)
        if t.linear_velocity_frame == "body":
            velocity = rotate(read_vector(msg, t.orientation, QUAT_FIELDS), velocity)
        self.base_linear_velocity = velocity
        if self.cfg.topics.imu is None:  # no IMU: the odometry's orientation is the attitude
            self.base_orientation = read_vector(msg, t.orientation, QUAT_FIELDS)
        self._mark("odometry")

    # ----- queries
    def ready(self) -> bool:
        return all(source in self.received for source in self.sources)

    def age(self, now: float | None = None) -> float:
        """Seconds since the *oldest* configured source last arrived (inf before all have arrived)."""
        if not self.ready():
            return float("inf")
        now = time.monotonic() if now is None else now
        return max(now - self.received[s] for s in self.sources)

    def missing(self) -> list[str]:
        """Configured topics that have not delivered a message yet, by topic name."""
        return [getattr(self.cfg.topics, s).topic for s in self.sources if s not in self.received]

    def state(self) -> RobotState:
        return RobotState(joint_position=dict(self.joint_position), joint_velocity=dict(self.joint_velocity),
                          base_position=self.base_position, base_orientation=self.base_orientation,
                          base_linear_velocity=self.base_linear_velocity,
                          base_angular_velocity=self.base_angular_velocity)
