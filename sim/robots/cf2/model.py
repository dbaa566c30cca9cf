"""Bitcraze Crazyflie 2.x on a floating base, driven by four motor thrusts with a first-order motor lag."""
from __future__ import annotations

from dataclasses import dataclass

import mujoco
import numpy as np

from robostack import registry
from robostack.sim.robots import description
from robostack.specs import RobotSpec

NAME = "cf2"
URDF = description.urdf_path(NAME)
MENAGERIE_FILE = "bitcraze_crazyflie_2/cf2.xml"

MOTOR_NAMES = ("m1", "m2", "m3", "m4")  # Bitcraze order: front-right, back-right, back-left, front-left
# Body yaw torque per newton of thrust. M1/M3 spin counter-clockwise seen from above, so their reaction
# torque is clockwise (-z); M2/M4 the reverse. Source and derivation: the comment in cf2.urdf.
MOTOR_YAW_SIGN = np.array([-1.0, 1.0, -1.0, 1.0])

MASS = description.link_mass(URDF)
GRAVITY = 9.81
HOVER_THRUST = MASS * GRAVITY / 4  # N per motor: the URDF's mass, held up by four motors

# No joints: the joint facts are empty so code written for jointed robots still runs.
JOINT_NAMES: tuple[str, ...] = ()
LIMITS = description.joint_limits(URDF, JOINT_NAMES)


@dataclass
class Cf2Config:
    """configs/robots/cf2.yaml."""

    torque_to_thrust: float  # m, yaw reaction torque per newton of thrust
    max_thrust: float  # N per motor
    motor_time_constant: float  # s, first-order rotor lag
    default_height: float  # m, spawn height

    def joint_gains(self) -> tuple[np.ndarray, np.ndarray]:
        return np.zeros(0), np.zeros(0)

    def home_joint_pos(self) -> np.ndarray:
        return np.zeros(0)

    def home_base_pos(self) -> np.ndarray:
        return np.array([0.0, 0.0, self.default_height])


def build_spec(cfg: Cf2Config) -> mujoco.MjSpec:
    """Crazyflie above a floor with thrust actuators m1..m4 (ctrl in newtons) and ``imu_*`` sensors."""
    spec = description.load_spec(NAME, floating_base=True, menagerie_file=MENAGERIE_FILE)
    description.add_ground(spec)
    description.add_site(spec, NAME, "imu")
    description.add_imu(spec)
    for name, yaw_sign in zip(MOTOR_NAMES, MOTOR_YAW_SIGN):
        description.add_frame_site(spec, URDF, name, size=0.002)
        spec.add_actuator(
            name=name,
            target=name,
            trntype=mujoco.mjtTrn.mjTRN_SITE,
            gear=[0, 0, 1, 0, 0, yaw_sign * cfg.torque_to_thrust],
            # thrust follows the command through a first-order lag: d(thrust)/dt = (ctrl - thrust) / tau
            dyntype=mujoco.mjtDyn.mjDYN_FILTER,
            dynprm=[cfg.motor_time_constant] + [0] * 9,
            gaintype=mujoco.mjtGain.mjGAIN_FIXED,
            gainprm=[1] + [0] * 9,
            ctrllimited=True,
            ctrlrange=[0, cfg.max_thrust],
        )
    hover = np.full(len(MOTOR_NAMES), HOVER_THRUST)
    description.add_home_key(spec, {}, ctrl=hover, base_pos=cfg.home_base_pos(), act=hover)
    return spec


SPEC = registry.register(RobotSpec(
    name=NAME, kind="drone",
    summary="Bitcraze Crazyflie 2.x quadrotor: four motor thrusts with rotor lag (floating base)",
    urdf=URDF, config_type=Cf2Config, build_spec=build_spec, joint_names=JOINT_NAMES, joint_limits=LIMITS,
    menagerie_file=MENAGERIE_FILE))
