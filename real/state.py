"""The robot's measured state from its driver's topics, as configured in ``configs/deploy/<robot>.yaml``.

``StateListener`` subscribes to the configured joint-state, IMU and odometry topics on an rclpy node (with
each topic's QoS from the deploy config) and keeps the latest of each with the time it was measured, so nodes
can tell a fresh state from a stale one. ``state()`` gives a ``RobotState`` in the simulator's conventions
(quaternion w, x, y, z; base linear velocity in the world frame; angular velocity in the body frame).

When it was measured: for a message with a header (and ``stamp: header``, the default), its stamp, read
against the node's clock when it arrives and kept on the monotonic clock. So a simulator that froze and replays
its last sample, stamps seconds old, or a backlog of messages queued behind a busy executor all read as old, not
as fresh because they keep arriving. A stamp no newer than the last one (a frozen or backward clock, or a
message delivered out of order) is not taken; a stamp further ahead of the node's clock than the deploy
config's ``clock_tolerance_s`` means the two machines' clocks disagree, and is not taken either; a zero stamp
means the driver does not stamp (set ``stamp: arrival`` for that topic). Each of these is a ``problem`` the
nodes report, and the state ages until good messages come. Messages without a header: their arrival time.

``primary_source`` names the topic whose every message is a new state for nodes that act per state;
``state_messages`` is the inverse of the listener, the messages a driver publishes for a state (the
simulated robot and ``robostack bench deploy`` use it).
"""
from __future__ import annotations

import functools
import math
import time
from typing import Any, Callable, Sequence

import numpy as np

from robostack.real.deploy_config import STATUS_DEPTH, DeployConfig, OdometryTopic, Qos
from robostack.real.messages import get_field, message_type, read_vector, set_field, write_vector
from robostack.real.robot_state import BodyState, Pose, RobotState

QUAT_FIELDS = ("w", "x", "y", "z")
WORLD_FRAME = "odom"  # REP 105
BASE_FRAME = "base_link"
OBJECT_FRAME = "object"  # the child frame of the object's odometry
FIXTURE = "fixture:"  # + body name: the state source of a fixture's pose
STATE_SOURCES = ("joint_states", "imu", "odometry")
# A policy that acts per state acts on the joint encoders of a jointed robot, else on the state estimate
# (odometry), else on the IMU; drivers publish it last of a cycle's topics, so the others are from it too.
PRIMARY_PREFERENCE = ("joint_states", "odometry", "imu")


def qos_profile(qos: Qos, depth: int | None = None) -> Any:
    """The rclpy ``QoSProfile`` of a deploy config's ``qos`` (``depth`` replaces its queue depth)."""
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth or qos.depth,
                      reliability=ReliabilityPolicy.BEST_EFFORT if qos.reliability == "best_effort"
                      else ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.TRANSIENT_LOCAL if qos.durability == "transient_local"
                      else DurabilityPolicy.VOLATILE)


def status_qos() -> Any:
    """Best effort, depth 1, for a status its publisher repeats (``safety/status``): a writer never waits on a
    reader, not even on one whose process died (a reliable one can stall the safety node's loop for 0.4 s)."""
    return qos_profile(Qos(reliability="best_effort", depth=STATUS_DEPTH))


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
        messages["odometry"] = _odometry_message(topics.odometry, stamp, BASE_FRAME, state.base_position,
                                                 state.base_orientation, state.base_linear_velocity,
                                                 state.base_angular_velocity)
    for name, pose in state.fixtures.items():
        t = topics.fixtures.get(name)
        if t is not None:
            msg = message_type(t.type)()
            stamp_header(msg, stamp, WORLD_FRAME)
            write_vector(msg, t.position, pose.position)
            write_vector(msg, t.orientation, pose.orientation, QUAT_FIELDS)
            messages[FIXTURE + name] = msg
    if topics.object is not None and state.object is not None:
        body = state.object
        messages["object"] = _odometry_message(topics.object, stamp, OBJECT_FRAME, body.position, body.orientation,
                                               body.linear_velocity, body.angular_velocity)
    primary = primary_source(cfg)
    return [(name, msg) for name, msg in messages.items() if name != primary] + [(primary, messages[primary])]


def _odometry_message(t: OdometryTopic, stamp: Any, child_frame: str, position: np.ndarray, orientation: np.ndarray,
                      linear_velocity: np.ndarray, angular_velocity: np.ndarray) -> Any:
    """A free body's odometry-like message: pose in the world (odom) frame, linear velocity (given in the world
    frame) in the frame ``t`` says, angular velocity in the body frame."""
    msg = message_type(t.type)()
    stamp_header(msg, stamp, WORLD_FRAME)
    if hasattr(msg, "child_frame_id"):
        msg.child_frame_id = child_frame
    orientation = np.asarray(orientation, dtype=np.float64)
    write_vector(msg, t.position, position)
    write_vector(msg, t.orientation, orientation, QUAT_FIELDS)
    if t.linear_velocity_frame == "body":
        linear_velocity = rotate(orientation * np.array([1.0, -1.0, -1.0, -1.0]), linear_velocity)
    write_vector(msg, t.linear_velocity, linear_velocity)
    if t.angular_velocity is not None and angular_velocity is not None:
        write_vector(msg, t.angular_velocity, angular_velocity)
    return msg


def stamp_header(msg: Any, stamp: Any, frame_id: str) -> None:
    """Stamp and frame of a message with a header (a driver's own message type may have none)."""
    if hasattr(msg, "header"):
        msg.header.stamp = stamp
        msg.header.frame_id = frame_id


def _read_pose_and_velocity(msg: Any, t: OdometryTopic) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Position, orientation (w, x, y, z) and world-frame linear velocity from an odometry-like message."""
    orientation = read_vector(msg, t.orientation, QUAT_FIELDS)
    velocity = read_vector(msg, t.linear_velocity)
    if t.linear_velocity_frame == "body":
        velocity = rotate(orientation, velocity)
    return read_vector(msg, t.position), orientation, velocity


class StateListener:
    """Latest joint states, IMU and odometry of one robot (``with_object``: and the pose and twist of the object
    its task manipulates, ``topics.object``; ``fixtures``: the poses of those fixed bodies, ``topics.fixtures``);
    ``on_update`` runs after every message taken. ``depth``: every state subscription's queue depth instead of
    the configured one (1 for a node that acts on each state: only the newest matters)."""

    def __init__(self, node: Any, cfg: DeployConfig, depth: int | None = None,
                 on_update: Callable[[str], None] | None = None, with_object: bool = False,
                 fixtures: Sequence[str] = ()):
        if with_object and cfg.topics.object is None:
            raise ValueError(f"deploy config for robot {cfg.robot!r} has no topics.object (the object's pose)")
        unknown = [name for name in fixtures if name not in cfg.topics.fixtures]
        if unknown:
            raise ValueError(f"deploy config for robot {cfg.robot!r} has no topics.fixtures for {unknown} "
                             "(their poses)")
        self.cfg = cfg
        self._clock = node.get_clock()
        self._on_update = on_update
        self.joint_position: dict[str, float] = {}
        self.joint_velocity: dict[str, float] = {}
        self.base_position: np.ndarray | None = None
        self.base_orientation: np.ndarray | None = None
        self.base_linear_velocity: np.ndarray | None = None
        self.base_angular_velocity: np.ndarray | None = None
        self.object: BodyState | None = None
        self.fixtures: dict[str, Pose] = {}
        self.received: dict[str, float] = {}  # source -> monotonic time its latest message was measured
        self._stamps: dict[str, int] = {}  # source -> header stamp (ns) of its latest message taken
        self.problems: dict[str, str] = {}  # source -> why its latest message was not taken (cleared by a good one)
        self.sources = [name for name in STATE_SOURCES if getattr(cfg.topics, name) is not None]
        self.sources += ["object"] if with_object else []
        self.topics = {name: getattr(cfg.topics, name) for name in self.sources}
        handlers = {"joint_states": self._joint_states, "imu": self._imu, "odometry": self._odometry,
                    "object": self._object}
        for name in fixtures:  # static: needed once, never stale
            self.topics[FIXTURE + name] = cfg.topics.fixtures[name]
            handlers[FIXTURE + name] = functools.partial(self._fixture, name)
        self.subscriptions = [
            node.create_subscription(message_type(t.type), t.topic, functools.partial(self._take, source, handlers[source]),
                                     qos_profile(t.qos, depth))
            for source, t in self.topics.items()]

    def _take(self, source: str, handler: Callable[[Any], None], msg: Any) -> None:
        """Read ``msg`` if its stamp allows, note when it was measured, tell ``on_update``."""
        arrived = time.monotonic()
        measured = self._measured_at(source, msg, arrived)
        if measured is None:
            return
        handler(msg)
        self.received[source] = measured
        self.problems.pop(source, None)
        if self._on_update is not None:
            self._on_update(source)

    def _measured_at(self, source: str, msg: Any, arrived: float) -> float | None:
        """Monotonic time ``msg`` was measured at, or None (and a problem noted) if it must not be taken."""
        topic = self.topics[source]
        header = getattr(msg, "header", None)
        if header is None or getattr(topic, "stamp", "arrival") == "arrival":
            return arrived
        stamp = header.stamp.sec * 1_000_000_000 + header.stamp.nanosec
        name = topic.topic
        if stamp == 0:
            self.problems[source] = (f"{name}: header stamp is zero (the driver does not stamp its messages: set "
                                     f"'stamp: arrival' for this topic in the deploy config)")
            return None
        previous = self._stamps.get(source)
        if previous is not None and stamp <= previous:
            change = "repeated" if stamp == previous else f"went backwards by {(previous - stamp) * 1e-9:.3f} s"
            self.problems[source] = f"{name}: header stamp {change}: a frozen or replayed sample"
            return None
        age = (self._clock.now().nanoseconds - stamp) * 1e-9
        if age < -self.cfg.clock_tolerance_s:
            self.problems[source] = (f"{name}: header stamp {-age:.3f} s ahead of this machine's clock (tolerance "
                                     f"{self.cfg.clock_tolerance_s:g} s): the clocks disagree")
            return None
        self._stamps[source] = stamp
        return arrived - max(age, 0.0)

    def _joint_states(self, msg: Any) -> None:
        t = self.cfg.topics.joint_states
        names = list(get_field(msg, t.name))
        positions, velocities = list(get_field(msg, t.position)), list(get_field(msg, t.velocity))
        self.joint_position.update(zip(names, map(float, positions)))
        if len(velocities) == len(names):  # a driver may leave velocity empty; then it stays unknown
            self.joint_velocity.update(zip(names, map(float, velocities)))

    def _imu(self, msg: Any) -> None:
        t = self.cfg.topics.imu
        self.base_orientation = read_vector(msg, t.orientation, QUAT_FIELDS)
        self.base_angular_velocity = read_vector(msg, t.angular_velocity)

    def _odometry(self, msg: Any) -> None:
        t = self.cfg.topics.odometry
        self.base_position, orientation, self.base_linear_velocity = _read_pose_and_velocity(msg, t)
        if self.cfg.topics.imu is None:  # no IMU: the odometry's orientation is the attitude
            self.base_orientation = orientation

    def _object(self, msg: Any) -> None:
        t = self.cfg.topics.object
        position, orientation, velocity = _read_pose_and_velocity(msg, t)
        spin = read_vector(msg, t.angular_velocity) if t.angular_velocity is not None else np.zeros(3)
        self.object = BodyState(position, orientation, velocity, spin)

    def _fixture(self, name: str, msg: Any) -> None:
        t = self.cfg.topics.fixtures[name]
        self.fixtures[name] = Pose(read_vector(msg, t.position), read_vector(msg, t.orientation, QUAT_FIELDS))

    # ----- queries
    def ready(self) -> bool:
        return all(source in self.received for source in self.topics)

    def age(self, now: float | None = None) -> float:
        """Seconds since the *oldest* configured source was measured (inf before all have arrived); fixtures
        only have to have arrived (they stand still)."""
        if not self.ready():
            return math.inf
        now = time.monotonic() if now is None else now
        return max(now - self.received[s] for s in self.sources)

    def staleness(self, now: float, timeout_s: float) -> str | None:
        """Why the state cannot be acted on now (missing topics, too old, and each topic's timing problem), or
        None while it is fresh."""
        if not self.ready():
            why = f"waiting for state topics {self.missing()}"
        else:
            age = self.age(now)
            if age <= timeout_s:
                return None
            why = f"state is stale: {age * 1000:.0f} ms old (limit {timeout_s * 1000:.0f} ms)"
        return "; ".join([why, *self.problems.values()])

    def missing(self) -> list[str]:
        """Configured topics that have not delivered a message yet, by topic name."""
        return [t.topic for source, t in self.topics.items() if source not in self.received]

    def state(self) -> RobotState:
        return RobotState(joint_position=dict(self.joint_position), joint_velocity=dict(self.joint_velocity),
                          base_position=self.base_position, base_orientation=self.base_orientation,
                          base_linear_velocity=self.base_linear_velocity,
                          base_angular_velocity=self.base_angular_velocity, object=self.object,
                          fixtures=dict(self.fixtures))
