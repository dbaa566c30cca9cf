"""Per-robot deployment config (``configs/deploy/<robot>.yaml``): the driver's topics, message types and
field paths, and the safety limits.

Message types are ROS type strings loaded at run time and fields are dotted paths into them, so a robot
whose driver speaks other messages is wired up in YAML. The defaults are the ros2_control conventions the
simulated robot (``sim_robot_node``) follows: ``sensor_msgs/JointState`` on ``joint_states``,
``std_msgs/Float64MultiArray`` to a forward controller's ``commands``, ``sensor_msgs/Imu`` and
``nav_msgs/Odometry`` for a floating base.

Topics between RoboStack's own nodes are fixed (``INTERNAL``): they are an implementation detail of one
deployment, and every node of it reads them from here.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from robostack.config import config_path, from_dict, load_yaml
from robostack.real.messages import check_field, message_type

# Topics and services between RoboStack's nodes (relative: they follow the nodes' namespace).
INTERNAL = {
    "policy_command": ("policy/command", "std_msgs/msg/Float64MultiArray"),  # policy -> safety: actuator controls
    "teleop_command": ("teleop/command", "std_msgs/msg/Float64MultiArray"),  # human -> safety, while active
    "teleop_active": ("teleop/active", "std_msgs/msg/Bool"),  # deadman held: the human is in control
    "intervention": ("teleop/intervention", "std_msgs/msg/String"),  # "start" / "end" of a takeover
    "override": ("safety/override", "std_msgs/msg/String"),  # JSON: what the safety layer changed and why
    "estop": ("safety/estop", "std_msgs/msg/Bool"),  # true latches the e-stop
    "estop_service": ("safety/trigger_estop", "std_srvs/srv/Trigger"),
    "reset_service": ("safety/reset", "std_srvs/srv/Trigger"),
    "diagnostics": ("/diagnostics", "diagnostic_msgs/msg/DiagnosticArray"),
}


@dataclass
class JointStatesTopic:
    topic: str = "joint_states"
    type: str = "sensor_msgs/msg/JointState"
    name: str = "name"  # field paths: joint names, positions, velocities (parallel arrays)
    position: str = "position"
    velocity: str = "velocity"


@dataclass
class ImuTopic:
    topic: str = "imu"
    type: str = "sensor_msgs/msg/Imu"
    orientation: str = "orientation"  # a quaternion with x, y, z, w fields
    angular_velocity: str = "angular_velocity"  # body frame


@dataclass
class OdometryTopic:
    topic: str = "odom"
    type: str = "nav_msgs/msg/Odometry"
    position: str = "pose.pose.position"  # world frame
    orientation: str = "pose.pose.orientation"
    linear_velocity: str = "twist.twist.linear"
    linear_velocity_frame: Literal["body", "world"] = "body"  # REP 105: Odometry twist is in the child frame


@dataclass
class DriverCommandTopic:
    topic: str = "forward_position_controller/commands"
    type: str = "std_msgs/msg/Float64MultiArray"
    data: str = "data"  # the array field, one value per actuator in bundle actuator order


@dataclass
class TaskCommandTopic:
    """The operator's task command (a velocity, a target pose); values read from ``fields`` in order."""

    topic: str
    type: str
    fields: list[str]
    default: list[float]  # until the first message arrives


@dataclass
class Topics:
    joint_states: JointStatesTopic | None = None
    imu: ImuTopic | None = None
    odometry: OdometryTopic | None = None
    driver_command: DriverCommandTopic = field(default_factory=DriverCommandTopic)
    task_command: TaskCommandTopic | None = None


@dataclass
class DeployConfig:
    robot: str
    topics: Topics
    state_timeout_s: float  # state older than this is stale: the policy stops acting, the safety layer falls back
    safety: dict[str, Any]  # checked by robostack.real.safety


def load_deploy_config(robot: str, path: str | Path | None = None) -> DeployConfig:
    """Read and check ``configs/deploy/<robot>.yaml`` (or ``path``): every type and field must exist."""
    source = Path(path) if path is not None else config_path("deploy", f"{robot}.yaml")
    cfg = from_dict(DeployConfig, load_yaml(source), str(source))
    if cfg.robot != robot:
        raise ValueError(f"{source}: made for robot {cfg.robot!r}, not {robot!r}")
    for name in ("joint_states", "imu", "odometry", "driver_command", "task_command"):
        topic = getattr(cfg.topics, name)
        if topic is None:
            continue
        msg_type = message_type(topic.type)
        paths = topic.fields if name == "task_command" else [
            v for k, v in vars(topic).items() if k not in ("topic", "type", "linear_velocity_frame")]
        for path_ in paths:
            check_field(msg_type, path_)
    return cfg
