"""Per-robot deployment config (``configs/deploy/<robot>.yaml``): the driver's topics, message types and
field paths, and the safety limits.

Message types are ROS type strings loaded at run time and fields are dotted paths into them, so a robot
whose driver speaks other messages is wired up in YAML. The defaults are the ros2_control conventions the
simulated robot (``sim_robot_node``) follows: ``sensor_msgs/JointState`` on ``joint_states``,
``std_msgs/Float64MultiArray`` to a forward controller's ``commands``, ``sensor_msgs/Imu`` and
``nav_msgs/Odometry`` for a floating base.

A robot's file may end with ``tasks: {<task>: {topics: ...}}``: what differs for one task (its task command,
say) is merged over the robot's settings when a node knows the task (``load_deploy_config(robot, task=...)``).

Each driver topic has its QoS (``qos``): state topics default to best effort, which hears reliable and
best-effort publishers alike (drivers publish state with ``qos_profile_sensor_data``, best effort; a reliable
subscription never hears them), and commands to reliable. A message with a header is as old as its stamp says
(``stamp: header``, the default): the age is this machine's clock minus the stamp, so a frozen or replayed
sample is stale however often it arrives; ``stamp: arrival`` for a driver that does not stamp its messages.

Topics between RoboStack's own nodes are fixed (``INTERNAL``): they are an implementation detail of one
deployment, and every node of it reads them from here.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from robostack.config import ConfigError, config_path, from_dict, load_yaml
from robostack.real.messages import check_field, message_type

# Topics and services between RoboStack's nodes (relative: they follow the nodes' namespace).
STATUS_DEPTH = 1  # a repeated status: only the newest matters
INTERNAL = {
    "policy_command": ("policy/command", "std_msgs/msg/Float64MultiArray"),  # policy -> safety: actuator controls
    "teleop_command": ("teleop/command", "std_msgs/msg/Float64MultiArray"),  # human -> safety, while active
    # the actions behind those commands, in the task's action space, for learning from the logs: the policy's
    # (rows: executed, then its base's proposal) and a joint-level takeover's (one row), see ``action_message``
    "policy_action": ("policy/action", "std_msgs/msg/Float64MultiArray"),
    "teleop_action": ("teleop/action", "std_msgs/msg/Float64MultiArray"),
    "teleop_active": ("teleop/active", "std_msgs/msg/Bool"),  # deadman held: the human is in control
    "intervention": ("teleop/intervention", "std_msgs/msg/String"),  # "start" / "end" of a takeover
    "override": ("safety/override", "std_msgs/msg/String"),  # JSON: what the safety layer changed and why
    "status": ("safety/status", "std_msgs/msg/String"),  # JSON, repeated: fallback phase and whose commands pass
    "estop": ("safety/estop", "std_msgs/msg/Bool"),  # true latches the e-stop
    "estop_service": ("safety/trigger_estop", "std_srvs/srv/Trigger"),
    "reset_service": ("safety/reset", "std_srvs/srv/Trigger"),
    "diagnostics": ("/diagnostics", "diagnostic_msgs/msg/DiagnosticArray"),
    "recorder_status": ("recorder/status", "std_msgs/msg/String"),  # JSON, latched: the listed topics it hears
}


@dataclass
class Qos:
    """A topic's quality of service, as rclpy's ``QoSProfile`` takes it."""

    reliability: Literal["best_effort", "reliable"]
    durability: Literal["volatile", "transient_local"] = "volatile"
    depth: int = 10  # keep-last queue


def state_qos() -> Qos:
    """Best effort: hears both best-effort (sensor data) and reliable publishers."""
    return Qos("best_effort")


def command_qos() -> Qos:
    return Qos("reliable")


Stamp = Literal["header", "arrival"]  # a message's age: now minus its header stamp, or since it arrived


@dataclass
class JointStatesTopic:
    topic: str = "joint_states"
    type: str = "sensor_msgs/msg/JointState"
    name: str = "name"  # field paths: joint names, positions, velocities (parallel arrays)
    position: str = "position"
    velocity: str = "velocity"
    qos: Qos = field(default_factory=state_qos)
    stamp: Stamp = "header"


@dataclass
class ImuTopic:
    topic: str = "imu"
    type: str = "sensor_msgs/msg/Imu"
    orientation: str = "orientation"  # a quaternion with x, y, z, w fields
    angular_velocity: str = "angular_velocity"  # body frame
    qos: Qos = field(default_factory=state_qos)
    stamp: Stamp = "header"


@dataclass
class OdometryTopic:
    topic: str = "odom"
    type: str = "nav_msgs/msg/Odometry"
    position: str = "pose.pose.position"  # world frame
    orientation: str = "pose.pose.orientation"
    linear_velocity: str = "twist.twist.linear"
    linear_velocity_frame: Literal["body", "world"] = "body"  # REP 105: Odometry twist is in the child frame
    angular_velocity: str | None = "twist.twist.angular"  # body frame (None: the message has none); a base's
    # angular velocity is read from the IMU, an object's from here
    qos: Qos = field(default_factory=state_qos)
    stamp: Stamp = "header"


@dataclass
class DriverCommandTopic:
    topic: str = "forward_position_controller/commands"
    type: str = "std_msgs/msg/Float64MultiArray"
    data: str = "data"  # the array field, one value per actuator in bundle actuator order
    qos: Qos = field(default_factory=command_qos)


@dataclass
class TaskCommandTopic:
    """The operator's task command (a velocity, a target pose); values read from ``fields`` in order."""

    topic: str
    type: str
    fields: list[str]
    default: list[float]  # until the first message arrives
    qos: Qos = field(default_factory=command_qos)


@dataclass
class PoseTopic:
    """The pose of a fixed body the task places per episode (panda-insert's hole), e.g. from perception; in
    the robot's base frame. Read whenever it comes: a latched message once per episode is enough."""

    topic: str
    type: str = "geometry_msgs/msg/PoseStamped"
    position: str = "pose.position"
    orientation: str = "pose.orientation"  # a quaternion with x, y, z, w fields
    qos: Qos = field(default_factory=state_qos)


@dataclass
class Topics:
    joint_states: JointStatesTopic | None = None
    imu: ImuTopic | None = None
    odometry: OdometryTopic | None = None
    driver_command: DriverCommandTopic = field(default_factory=DriverCommandTopic)
    task_command: TaskCommandTopic | None = None
    # The manipulated object's pose and twist (motion capture, a pose tracker) for tasks with one (panda-lift):
    # an odometry-like message, pose in the robot's base frame, twist as ``odometry`` says.
    object: OdometryTopic | None = None
    fixtures: dict[str, PoseTopic] = field(default_factory=dict)  # body name -> its pose (tasks that place one)


@dataclass
class DeployConfig:
    robot: str
    topics: Topics
    state_timeout_s: float  # state older than this is stale: the policy stops acting, the safety layer falls back
    safety: dict[str, Any]  # checked by robostack.real.safety
    # how far a header stamp may lie ahead of this machine's clock (the offset between the driver's computer's
    # clock and this one's, e.g. under chrony); further ahead, the clocks disagree and the state counts as stale
    clock_tolerance_s: float = 0.02


def _merged(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``over``'s values in place, mappings merged key by key (a null replaces)."""
    out = dict(base)
    for key, value in over.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load_deploy_config(robot: str, path: str | Path | None = None, task: str | None = None) -> DeployConfig:
    """Read and check ``configs/deploy/<robot>.yaml`` (or ``path``), with ``task``'s section of its ``tasks``
    merged over it: every type and field must exist."""
    source = Path(path) if path is not None else config_path("deploy", f"{robot}.yaml")
    data = load_yaml(source)
    per_task = data.pop("tasks", None) or {}
    if not isinstance(per_task, dict) or not all(isinstance(v, dict) for v in per_task.values()):
        raise ConfigError(f"{source}: 'tasks' must map task names to settings, got {per_task!r}", source=str(source))
    for name, section in per_task.items():  # every section is checked, whichever task is deployed
        merged = from_dict(DeployConfig, _merged(data, section), f"{source} (tasks.{name})")
        if name == task:
            cfg = merged
    if task not in per_task:
        cfg = from_dict(DeployConfig, data, str(source))
    if cfg.robot != robot:
        raise ValueError(f"{source}: made for robot {cfg.robot!r}, not {robot!r}")
    if not cfg.clock_tolerance_s >= 0:
        raise ConfigError(f"{source}: 'clock_tolerance_s' must be >= 0, got {cfg.clock_tolerance_s}",
                          key="clock_tolerance_s", source=str(source))
    topics = [getattr(cfg.topics, name) for name in ("joint_states", "imu", "odometry", "driver_command",
                                                       "task_command", "object")]
    for topic in [*topics, *cfg.topics.fixtures.values()]:
        if topic is None:
            continue
        if topic.qos.depth < 1:
            raise ConfigError(f"{source}: the qos depth of topic {topic.topic!r} must be >= 1, got {topic.qos.depth}",
                              source=str(source))
        msg_type = message_type(topic.type)
        paths = topic.fields if isinstance(topic, TaskCommandTopic) else [
            v for k, v in vars(topic).items() if k not in ("topic", "type", "linear_velocity_frame", "qos", "stamp")]
        for path_ in paths:
            if path_ is not None:
                check_field(msg_type, path_)
    return cfg
