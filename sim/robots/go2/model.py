"""Unitree Go2 quadruped on a floating base: 12 PD position-controlled joints, IMU and foot contact sensors."""
from __future__ import annotations

from dataclasses import dataclass

import mujoco
import numpy as np

from robostack import registry
from robostack.sim.robots import description
from robostack.specs import RobotSpec

NAME = "go2"
URDF = description.urdf_path(NAME)
MENAGERIE_FILE = "unitree_go2/go2.xml"

LEGS = ("FR", "FL", "RR", "RL")  # Unitree SDK motor order
JOINT_NAMES = tuple(f"{leg}_{part}_joint" for leg in LEGS for part in ("hip", "thigh", "calf"))
LIMITS = description.joint_limits(URDF, JOINT_NAMES)

FOOT_RADIUS = 0.022
CONTACT_SITE_RADIUS = 0.025  # a bit larger than the foot sphere so the touch sensor sees its contacts


@dataclass
class Go2Config:
    """configs/robots/go2.yaml."""

    kp: float  # N m / rad, every joint
    kd: float  # N m s / rad
    armature: float  # kg m^2, reflected rotor inertia
    default_leg_pos: tuple[float, float, float]  # hip, thigh, calf (rad), the same for every leg
    default_base_height: float  # m, spawn height of the base in the default pose
    foot_friction: float

    def joint_gains(self) -> tuple[np.ndarray, np.ndarray]:
        return np.full(len(JOINT_NAMES), self.kp), np.full(len(JOINT_NAMES), self.kd)

    def home_joint_pos(self) -> np.ndarray:
        return np.tile(np.asarray(self.default_leg_pos, dtype=np.float64), len(LEGS))

    def home_base_pos(self) -> np.ndarray:
        return np.array([0.0, 0.0, self.default_base_height])


def build_spec(cfg: Go2Config) -> mujoco.MjSpec:
    """Go2 above a floor: actuators in SDK order; ``imu_*``, ``base_linvel``, ``<leg>_foot_pos``, ``<leg>_contact``."""
    spec = description.load_spec(NAME, floating_base=True, menagerie_file=MENAGERIE_FILE)
    spec.option.cone = mujoco.mjtCone.mjCONE_ELLIPTIC  # as Menagerie: less foot slip than pyramidal cones
    spec.option.impratio = 100
    description.add_ground(spec)
    description.set_joint_dynamics(spec, JOINT_NAMES, armature=cfg.armature)
    kp, kd = cfg.joint_gains()
    description.add_position_actuators(spec, JOINT_NAMES, kp, kd, LIMITS)

    description.add_frame_site(spec, URDF, "imu")
    description.add_imu(spec)
    description.add_sensor(spec, "base_linvel", mujoco.mjtSensor.mjSENS_VELOCIMETER, "imu")
    for leg in LEGS:
        foot = spec.geom(leg)  # foot sphere, named like Menagerie's; its body owns the foot contacts
        foot.friction = [cfg.foot_friction, 0.02, 0.01]
        foot.priority = 1  # the foot's friction wins over the floor's
        # Touch sensors count contacts of the site's own body, so the sites go on the foot geom's body.
        description.add_site(spec, foot.parent.name, f"{leg}_foot", foot.pos, size=CONTACT_SITE_RADIUS)
        description.add_sensor(spec, f"{leg}_foot_pos", mujoco.mjtSensor.mjSENS_FRAMEPOS, f"{leg}_foot")
        description.add_sensor(spec, f"{leg}_contact", mujoco.mjtSensor.mjSENS_TOUCH, f"{leg}_foot")

    home = cfg.home_joint_pos()
    description.add_home_key(spec, dict(zip(JOINT_NAMES, home)), ctrl=home, base_pos=cfg.home_base_pos())
    return spec


SPEC = registry.register(RobotSpec(
    name=NAME, kind="quadruped", summary="Unitree Go2 quadruped: 12 PD joints, IMU, foot contacts (floating base)",
    urdf=URDF, config_type=Go2Config, build_spec=build_spec, joint_names=JOINT_NAMES, joint_limits=LIMITS,
    menagerie_file=MENAGERIE_FILE))
