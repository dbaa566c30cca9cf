"""Franka Emika Panda on a fixed base: 7 arm joints and 2 finger joints, all PD position-controlled."""
from __future__ import annotations

import mujoco
import numpy as np

from robostack.sim.robots import description

NAME = "panda"
URDF = description.urdf_path(NAME)

JOINT_NAMES = (*(f"joint{i}" for i in range(1, 8)), "finger_joint1", "finger_joint2")
DEFAULT_JOINT_POS = np.array([0, 0, 0, -1.57079, 0, 1.57079, -0.7853, 0.04, 0.04])

# Arm gains are Menagerie's (kd = kp / 10). Finger gains are ours: 1000 N/m saturates the 20 N finger force
# at 2 cm squeeze, and with the 0.1 kg armature 20 N s/m is about critically damped.
KP = np.array([4500, 4500, 3500, 3500, 2000, 2000, 2000, 1000, 1000], dtype=np.float64)
KD = np.array([450, 450, 350, 350, 200, 200, 200, 20, 20], dtype=np.float64)
ARMATURE = 0.1  # Menagerie's, on every joint

_LIMITS = description.joint_limits(URDF, JOINT_NAMES)
JOINT_LOWER, JOINT_UPPER = _LIMITS.lower, _LIMITS.upper
EFFORT_LIMIT = _LIMITS.effort
VELOCITY_LIMIT = _LIMITS.velocity

EE_SITE = "ee"


def build_spec() -> mujoco.MjSpec:
    """Panda fixed at the world origin on a floor, with actuators, ``ee`` site and ``ee_*`` sensors."""
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
    description.add_home_key(spec, dict(zip(JOINT_NAMES, DEFAULT_JOINT_POS)), ctrl=DEFAULT_JOINT_POS)
    return spec


def build_model() -> mujoco.MjModel:
    return build_spec().compile()
