"""Franka Emika Panda on a fixed base: 7 arm joints and 2 finger joints, all PD position-controlled."""
from __future__ import annotations

from dataclasses import dataclass

import mujoco
import numpy as np

from robostack import registry
from robostack.sim.robots import description
from robostack.specs import RobotSpec

NAME = "panda"
URDF = description.urdf_path(NAME)
MENAGERIE_FILE = "franka_emika_panda/panda.xml"

JOINT_NAMES = (*(f"joint{i}" for i in range(1, 8)), "finger_joint1", "finger_joint2")
ARM_JOINT_NAMES = JOINT_NAMES[:7]
LIMITS = description.joint_limits(URDF, JOINT_NAMES)
EE_SITE = "ee"


@dataclass
class PandaConfig:
    """configs/robots/panda.yaml; lists are in JOINT_NAMES order."""

    kp: tuple[float, ...]
    kd: tuple[float, ...]
    armature: float  # kg m^2 on every joint
    default_joint_pos: tuple[float, ...]

    def __post_init__(self) -> None:
        if not len(self.kp) == len(self.kd) == len(self.default_joint_pos) == len(JOINT_NAMES):
            raise ValueError(f"panda robot config: kp, kd and default_joint_pos need {len(JOINT_NAMES)} values "
                             f"each ({', '.join(JOINT_NAMES)})")

    def joint_gains(self) -> tuple[np.ndarray, np.ndarray]:
        return np.array(self.kp, dtype=np.float64), np.array(self.kd, dtype=np.float64)

    def home_joint_pos(self) -> np.ndarray:
        return np.array(self.default_joint_pos, dtype=np.float64)


def build_spec(cfg: PandaConfig) -> mujoco.MjSpec:
    """Panda fixed at the world origin on a floor, with actuators, ``ee`` site, ``ee_*`` sensors and the
    arm joints' anchor/axis sensors (for differential IK)."""
    spec = description.load_spec(NAME, floating_base=False, menagerie_file=MENAGERIE_FILE)
    # The stiff arm PD gains need implicit damping; the caller may still pick another integrator.
    spec.option.integrator = mujoco.mjtIntegrator.mjINT_IMPLICITFAST
    description.add_ground(spec)
    description.disable_self_collision(spec, "link0")
    description.set_joint_dynamics(spec, JOINT_NAMES, armature=cfg.armature)
    kp, kd = cfg.joint_gains()
    description.add_position_actuators(spec, JOINT_NAMES, kp, kd, LIMITS)
    description.add_frame_site(spec, URDF, EE_SITE)
    for name, kind in (
        ("ee_pos", mujoco.mjtSensor.mjSENS_FRAMEPOS),
        ("ee_quat", mujoco.mjtSensor.mjSENS_FRAMEQUAT),
        ("ee_linvel", mujoco.mjtSensor.mjSENS_FRAMELINVEL),
    ):
        description.add_sensor(spec, name, kind, EE_SITE)
    description.add_joint_axis_sensors(spec, ARM_JOINT_NAMES)
    home = cfg.home_joint_pos()
    description.add_home_key(spec, dict(zip(JOINT_NAMES, home)), ctrl=home)
    return spec


SPEC = registry.register(RobotSpec(
    name=NAME, kind="arm", summary="Franka Emika Panda: 7-DoF arm + 2-finger gripper, PD joints, TCP frame",
    urdf=URDF, config_type=PandaConfig, build_spec=build_spec, joint_names=JOINT_NAMES, joint_limits=LIMITS,
    menagerie_file=MENAGERIE_FILE))
