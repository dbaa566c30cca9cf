"""Does a policy bundle fit the robot it is about to drive? ``robostack deploy``, the launch files and every node
that takes a bundle ask before anything starts or moves, and refuse with one line naming both sides.

A bundle pins its robot: the robot's name, the joints in driver order, the actuators and the robot
configuration it was trained with (gains, default pose, motor constants: ``task_config.robot``). A bundle whose
metadata claims another robot (even re-sealed, so its hash holds) fails here, not after the nodes started.
Numpy only (plus MuJoCo to build the robot's model): the safety node runs it.
"""
from __future__ import annotations

from typing import Any, Mapping

from robostack import sim
from robostack.bundle import BundleError
from robostack.config import ConfigError
from robostack.real.deploy_config import DeployConfig
from robostack.specs import RobotSpec


class BundleMismatch(BundleError):
    """A bundle made for another robot, task, joint order or actuator set than the deployment's."""


def bundle_robot_config(metadata: Mapping[str, Any], robot: RobotSpec, where: str) -> Any:
    """The robot configuration the bundle was trained with; bundles made before it was stored get the
    robot's YAML file, which deployment then checks against the bundle's action map."""
    stored = (metadata.get("task_config") or {}).get("robot")
    if stored is None:
        return robot.load_config()
    try:
        return robot.load_config(stored, f"{where}: its task_config.robot")
    except (ConfigError, ValueError) as exc:
        raise BundleMismatch(f"{exc} (the bundle's robot configuration is not a {robot.name}'s)") from None


def check_bundle_fits(metadata: Mapping[str, Any], path: Any, robot: RobotSpec, deploy: DeployConfig,
                      deploy_source: str) -> Any:
    """Refuse a bundle that does not fit ``robot`` as ``deploy`` (read from ``deploy_source``) wires it; returns
    the bundle's robot configuration. Checks the robot named, the joint names and order, its stored
    configuration's type, and the actuators (count and names, from the model that configuration builds)."""
    where = f"bundle {path}"
    claimed = metadata.get("robot")
    if claimed != robot.name or deploy.robot != robot.name:
        raise BundleMismatch(f"{where} was made for robot {claimed!r}, but this deployment drives robot "
                             f"{robot.name!r} ({deploy_source} is for {deploy.robot!r})")
    joints = list(metadata.get("joint_names") or [])
    if joints != list(robot.joint_names):
        raise BundleMismatch(f"{where} lists joints {joints}, but the {robot.name} has {list(robot.joint_names)} "
                             "(in driver order)")
    config = bundle_robot_config(metadata, robot, where)
    model = robot.build_model(config)
    actuators = [model.actuator(i).name for i in range(model.nu)]
    listed = [a["name"] for a in metadata.get("actuators") or []]
    if listed != actuators:
        raise BundleMismatch(f"{where} drives {len(listed)} actuators {listed}, but the {robot.name} has "
                             f"{len(actuators)}: {actuators}")
    return config


def check_bundle_task(metadata: Mapping[str, Any], path: Any) -> str:
    """The robot the bundle's task runs on, after checking the bundle names that robot and a known task."""
    task = metadata.get("task")
    try:
        robot = sim.task(task).robot
    except KeyError as exc:
        raise BundleMismatch(f"bundle {path}: {exc.args[0]}") from None
    if metadata.get("robot") != robot:
        raise BundleMismatch(f"bundle {path} says robot {metadata.get('robot')!r}, but its task {task!r} runs on "
                             f"robot {robot!r}")
    return robot
