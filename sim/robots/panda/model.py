"""Franka Emika Panda on a fixed base: 7 arm joints and 2 finger joints, all PD position-controlled."""
from __future__ import annotations

from dataclasses import dataclass

import mujoco
import numpy as np

from robostack.registry import register
from robostack.sim.robots import description

NAME = "panda"
URDF = description.urdf_path(NAME)

JOINT_NAMES = (*(f"joint{i}" for i in range(1, 8)), "finger_joint1", "finger_joint2")


@dataclass
class PandaConfig:
    """configs/robots/panda.yaml; lists are in JOINT_NAMES order."""

    kp: tuple[float, ...]
    kd: tuple[float, ...]
    armature: float  # kg m^2 on every joint
    default_joint_pos: tuple[float, ...]


CONFIG = description.robot_config(PandaConfig, NAME)
if not len(CONFIG.kp) == len(CONFIG.kd) == len(CONFIG.default_joint_pos) == len(JOINT_NAMES):
    raise ValueError(f"configs/robots/panda.yaml: kp, kd and default_joint_pos need {len(JOINT_NAMES)} values "
                     f"each ({', '.join(JOINT_NAMES)})")
DEFAULT_JOINT_POS = np.array(CONFIG.default_joint_pos)
KP = np.array(CONFIG.kp)
KD = np.array(CONFIG.kd)
ARMATURE = CONFIG.armature

_LIMITS = description.joint_limits(URDF, JOINT_NAMES)
JOINT_LOWER, JOINT_UPPER = _LIMITS.lower, _LIMITS.upper
EFFORT_LIMIT = _LIMITS.effort
VELOCITY_LIMIT = _LIMITS.velocity

EE_SITE = "ee"
ARM_JOINT_NAMES = JOINT_NAMES[:7]


def build_spec() -> mujoco.MjSpec:
    """Panda fixed at the world origin on a floor, with actuators, ``ee`` site, ``ee_*`` sensors and the
    arm joints' anchor/axis sensors (for differential IK)."""
    spec = description.load_spec(NAME, floating_base=False)
    # The stiff arm PD gains need implicit damping; the caller may still pick another integrator.
    spec.option.integrator = mujoco.mjtIntegrator.mjINT_IMPLICITFAST
    description.add_ground(spec)
    description.disable_self_collision(spec, "link0")
    description.set_joint_dynamics(spec, JOINT_NAMES, armature=ARMATURE)
    description.add_position_actuators(spec, JOINT_NAMES, KP, KD, _LIMITS)
    description.add_frame_site(spec, URDF, EE_SITE)
    for name, kind in (
        ("ee_pos", mujoco.mjtSensor.mjSENS_FRAMEPOS),
        ("ee_quat", mujoco.mjtSensor.mjSENS_FRAMEQUAT),
        ("ee_linvel", mujoco.mjtSensor.mjSENS_FRAMELINVEL),
    ):
        description.add_sensor(spec, name, kind, EE_SITE)
    description.add_joint_axis_sensors(spec, ARM_JOINT_NAMES)
    description.add_home_key(spec, dict(zip(JOINT_NAMES, DEFAULT_JOINT_POS)), ctrl=DEFAULT_JOINT_POS)
    return spec


@register("robot", NAME, "Franka Emika Panda: 7-DoF arm + 2-finger gripper, PD joints, TCP frame", urdf=str(URDF))
def build_model() -> mujoco.MjModel:
    return build_spec().compile()
