"""The robot's measured state from its driver's topics, as configured in ``configs/deploy/<robot>.yaml``.

``StateListener`` subscribes to the configured joint-state, IMU and odometry topics on an rclpy node and
keeps the latest of each with its arrival time (monotonic clock), so nodes can tell a fresh state from a
stale one. ``state()`` gives a ``RobotState`` in the simulator's conventions (quaternion w, x, y, z; base
linear velocity in the world frame; angular velocity in the body frame).

``primary_source`` names the topic whose every message is a new state for nodes that act per state;
``state_messages`` is the inverse of the listener, the messages a driver publishes for a state (the
simulated robot and ``robostack bench deploy`` use it).
"""
from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import numpy as np

from robostack.real.deploy_config import DeployConfig
from robostack.real.messages import get_field, message_type, read_vector, set_field, write_vector
from robostack.real.observation import RobotState

QUAT_FIELDS = ("w", "x", "y", "z")
WORLD_FRAME = "odom"  # REP 105
BASE_FRAME = "base_link"
STATE_SOURCES = ("joint_states", "imu", "odometry")
# A policy that acts per state acts on the joint encoders of a jointed robot, else on the state estimate
# (odometry), else on the IMU; drivers publish it last of a cycle's topics, so the others are from it too.
PRIMARY_PREFERENCE = ("joint_states", "odometry", "imu")


def primary_source(cfg: DeployConfig) -> str:
    """The state source (``joint_states``, ``odometry`` or ``imu``) whose arrival is a new state."""
    source = next((name for name in PRIMARY_PREFERENCE if getattr(cfg.topics, name) is not None), None)
    if source is None:
        raise ValueError(f"deploy config for robot {cfg.robot!r} names no state topic (joint_states, imu or "
                         "odometry): there is no state to act on")
    return source


def rotate(quat_wxyz: np.ndarray, vector: np.ndarray) -> np.ndarray:
    """Rotate ``vector`` from the body frame of orientation ``quat_wxyz`` into the world frame:
    ``v + w t + xyz x t`` with ``t = 2 xyz x v``, in scalars (``np.cross`` costs ~50 us on 3-vectors, and it
    runs on every odometry message; the result is bit for bit the same)."""
    w, x, y, z = (float(q) for q in quat_wxyz)
    vx, vy, vz = (float(v) for v in vector)
    tx, ty, tz = 2.0 * (y * vz - z * vy), 2.0 * (z * vx - x * vz), 2.0 * (x * vy - y * vx)
    return np.array([vx + w * tx + (y * tz - z * ty), vy + w * ty + (z * tx - x * tz),
                     vz + w * tz + (x * ty - y * tx)])


def state_messages(cfg: DeployConfig, state: RobotState, stamp: Any, joint_names: Sequence[str],
                   joint_effort: Sequence[float] | None = None, linear_acceleration: np.ndarray | None = None
                   ) -> list[tuple[str, Any]]:
    """(source, message) for each configured state topic, the primary source last. Joint states carry
    ``joint_effort`` (zeros if None: rosbags rejects rclpy messages with empty arrays); the IMU carries
    ``linear_acceleration`` or, if None, covariance[0] = -1 ("unknown", REP 145); odometry's twist is in
    the frame the config says (body by default, REP 105)."""
    topics, messages = cfg.topics, {}
    if topics.joint_states is not None:
        t = topics.joint_states
        msg = message_type(t.type)()
        stamp_header(msg, stamp, "")
        set_field(msg, t.name, list(joint_names))
        set_field(msg, t.position, [float(state.joint_position[n]) for n in joint_names])
        set_field(msg, t.velocity, [float(state.joint_velocity[n]) for n in joint_names])
        if hasattr(msg, "effort"):
            msg.effort = [float(e) for e in joint_effort] if joint_effort is not None else [0.0] * len(joint_names)
        messages["joint_states"] = msg
    if topics.imu is not None:
        t = topics.imu
        msg = message_type(t.type)()
        stamp_header(msg, stamp, BASE_FRAME)
        write_vector(msg, t.orientation, state.base_orientation, QUAT_FIELDS)
        write_vector(msg, t.angular_velocity, state.base_angular_velocity)
        if hasattr(msg, "linear_acceleration"):
            if linear_acceleration is None:
                msg.linear_acceleration_covariance[0] = -1.0
            else:
                write_vector(msg, "linear_acceleration", linear_acceleration)
        messages["imu"] = msg
    if topics.odometry is not None:
        t = topics.odometry
        msg = message_type(t.type)()
        stamp_header(msg, stamp, WORLD_FRAME)
        if hasattr(msg, "child_frame_id"):
            msg.child_frame_id = BASE_FRAME
        orientation = np.asarray(state.base_orientation, dtype=np.float64)
        write_vector(msg, t.position, state.base_position)
        write_vector(msg, t.orientation, orientation, QUAT_FIELDS)
        velocity = state.base_linear_velocity
        if t.linear_velocity_frame == "body":
            velocity = rotate(orientation * np.array([1.0, -1.0, -1.0, -1.0]), velocity)
        write_vector(msg, t.linear_velocity, velocity)
        twist = get_field(msg, t.linear_velocity.rpartition(".")[0] or t.linear_velocity)
        if hasattr(twist, "angular"):  # a Twist (the standard message): its angular part too, body frame
            write_vector(twist, "angular", state.base_angular_velocity)
        messages["odometry"] = msg
    primary = primary_source(cfg)
    return [(name, msg) for name, msg in messages.items() if name != primary] + [(primary, messages[primary])]


def stamp_header(msg: Any, stamp: Any, frame_id: str) -> None:
    """Stamp and frame of a message with a header (a driver's own message type may have none)."""
    if hasattr(msg, "header"):
        msg.header.stamp = stamp
        msg.header.frame_id = frame_id


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
        self.sources = [name for name in STATE_SOURCES if getattr(cfg.topics, name) is not None]
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
