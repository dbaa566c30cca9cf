"""Typed specifications of what RoboStack runs, registered in ``robostack.registry`` and read by every stage.

Core: this module imports no simulator, learner or ROS code, so any process (a deploy node included) can
read a specification without loading what it describes.

``RobotSpec`` describes a robot once: its kind (which safety layer, fallback, launch file and teleop mapping
it gets), its URDF (physical facts: links, inertias, joint limits), its configuration type (the tunable
actuation numbers of ``configs/robots/<robot>.yaml``: gains, default pose, motor constants), the builder of its
MuJoCo model from that configuration, and its joints in driver order. Nothing else restates those facts.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Protocol

import numpy as np

RobotKind = Literal["arm", "quadruped", "drone"]
ROBOT_KINDS: tuple[RobotKind, ...] = ("arm", "quadruped", "drone")


class RobotConfig(Protocol):
    """What every robot configuration (a dataclass read from ``configs/robots/<robot>.yaml``) answers."""

    def joint_gains(self) -> tuple[np.ndarray, np.ndarray]:
        """kp and kd of each actuated joint's PD servo, in driver order (empty for a robot without joints)."""

    def home_joint_pos(self) -> np.ndarray:
        """The default (home) pose of the actuated joints, in driver order."""


@dataclass(frozen=True)
class JointLimits:
    """Per-joint ``<limit>`` values of a URDF, in driver order."""

    lower: np.ndarray
    upper: np.ndarray
    effort: np.ndarray
    velocity: np.ndarray


@dataclass(frozen=True)
class RobotSpec:
    """One robot, described once (see the module docstring). ``build_spec(config)`` returns the robot on a
    floor as a ``mujoco.MjSpec`` with one actuator per driver command value, in driver order; tasks add
    their scene to it."""

    name: str
    kind: RobotKind
    summary: str
    urdf: Path
    config_type: type
    build_spec: Callable[[Any], Any]
    joint_names: tuple[str, ...]  # actuated joints in driver order; () for a robot driven by motors alone
    joint_limits: JointLimits  # of ``joint_names``, from the URDF
    menagerie_file: str | None = None  # its MJCF in a MuJoCo Menagerie checkout (``MENAGERIE_ROOT``)

    def __post_init__(self) -> None:
        if self.kind not in ROBOT_KINDS:
            raise ValueError(f"robot {self.name!r}: kind must be one of {ROBOT_KINDS}, got {self.kind!r}")

    @property
    def config_file(self) -> Path:
        from robostack.config import config_path

        return config_path("robots", f"{self.name}.yaml")

    @property
    def deploy_config_file(self) -> Path:
        from robostack.config import config_path

        return config_path("deploy", f"{self.name}.yaml")

    @property
    def launch_file(self) -> str:
        """The launch file (``launch/``) that brings up a robot of this kind."""
        return f"{self.kind}.launch.py"

    def load_config(self, data: dict[str, Any] | None = None, source: str | None = None) -> Any:
        """The robot's configuration: from ``data`` (as a bundle or run stored it), else from its YAML file."""
        from robostack.config import from_dict, load_config

        if data is None:
            return load_config(self.config_type, self.config_file)
        return from_dict(self.config_type, data, source or f"the {self.name} robot config given")

    def build_model(self, config: Any = None) -> Any:
        """The robot's ``mujoco.MjModel`` for ``config`` (default: its YAML file)."""
        return self.build_spec(config if config is not None else self.load_config()).compile()
