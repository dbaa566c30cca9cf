"""panda-reach: bring a Franka Panda's end effector (TCP between the fingertips) to a sampled pose.

Actions (``action_mode``) are, by default, end-effector displacements per control step that differential IK
turns into joint-target changes (``sim.ik``): the policy then only has to learn a Cartesian feedback law, not
the arm's inverse kinematics. ``joint`` (targets around home) and ``joint_relative`` (per-step joint target
changes) are the alternatives; the gripper stays open. Success means the TCP
ends the episode within 2 cm and 0.1 rad of the target pose.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import mujoco
import numpy as np
import torch

from robostack import registry
from robostack.sim import mdp
from robostack.sim import randomization as dr
from robostack.sim.joint_limits import JointTargetLimits, TargetBounds
from robostack.sim.robots.panda import model as panda
from robostack.sim.task_env import TaskEnv
from robostack.specs import TaskSpec
from robostack.sim.terms import (ActionMap, Definition, EndEffectorIK, EventConfig, EventTerm, Integral, ObsTerm,
                                 RandomizationConfig, RewardTerm, SimConfig, TaskDefinition, defined, noiseless)

ARM_JOINTS = 7


@dataclass
class Targets:
    x: tuple[float, float]  # m, in the robot base frame
    y: tuple[float, float]
    z: tuple[float, float]
    yaw: tuple[float, float]  # rad about the vertical, relative to the TCP's orientation in the home pose
    max_tilt: float  # rad, random tilt of that orientation


@dataclass
class Rewards:
    position: float  # x distance (m)
    position_kernel: float  # x (1 - tanh(distance / 0.05))
    orientation: float  # x angle error (rad)
    orientation_kernel: float  # x (1 - tanh(angle error / 0.2))
    action_rate: float
    joint_vel: float


@dataclass
class Randomization(RandomizationConfig):
    joint_damping: EventConfig
    joint_armature: EventConfig
    actuator_gains: EventConfig
    action_latency: EventConfig


@dataclass
class PandaReachConfig:
    robot: panda.PandaConfig
    sim: SimConfig
    action_mode: Literal["end_effector", "joint", "joint_relative"]
    action_scale: float  # joint modes: rad per unit action (per control step for joint_relative)
    ee_step: tuple[float, float]  # end_effector: m and rad of TCP motion per control step per unit action
    ik_damping: float  # end_effector: damped least squares lambda
    targets: Targets
    rewards: Rewards
    randomization: Randomization
    success_position: float  # m
    position_integral_limit: float  # m s: clip of the position error's running integral (an I term)
    position_integral_radius: float  # m: integrate only this close to the target (no windup on the way)
    success_angle: float  # rad
    target_limits: JointTargetLimits | None = None  # train under the safety layer's clamps (deploy YAML)


ARM_JOINT_ORDER = "joint1 .. joint7"
POSITION_ERROR = Definition("target TCP position minus the TCP's position", "m", "world", "", "x, y, z")


@defined(Definition("position of the TCP (site ee, between the fingertips)", "m", "world", "", "x, y, z"))
def ee_pos(env: TaskEnv) -> torch.Tensor:
    return env.sensor("ee_pos")


@defined(Definition("orientation of the TCP (site ee)", "1", "world", "", "quaternion w, x, y, z"))
def ee_quat(env: TaskEnv) -> torch.Tensor:
    return env.sensor("ee_quat")


@defined(Definition("arm joint positions", "rad", "", "minus default_joint_pos", ARM_JOINT_ORDER))
def arm_joint_pos(env: TaskEnv) -> torch.Tensor:
    return mdp.joint_pos_rel(env)[:, :ARM_JOINTS]


@defined(Definition("arm joint velocities", "rad/s", "", "", ARM_JOINT_ORDER))
def arm_joint_vel(env: TaskEnv) -> torch.Tensor:
    return mdp.joint_vel(env)[:, :ARM_JOINTS]


@defined(Definition("arm joint position targets commanded at the previous control step", "rad", "",
                    "minus default_joint_pos; the action map's offset at the start of an episode", ARM_JOINT_ORDER))
def arm_joint_target(env: TaskEnv) -> torch.Tensor:
    return mdp.joint_target_rel(env)[:, :ARM_JOINTS]


@defined(POSITION_ERROR)
def position_error(env: TaskEnv) -> torch.Tensor:
    return env.command[:, :3] - ee_pos(env)


@defined(Definition("rotation vector (axis times angle) that turns the TCP's orientation into the target's",
                    "rad", "world", "the shorter way round", "x, y, z"))
def orientation_error(env: TaskEnv) -> torch.Tensor:
    return mdp.quat_error_vector(ee_quat(env), env.command[:, 3:7])


def distance(env: TaskEnv) -> torch.Tensor:
    return torch.norm(position_error(env), dim=1)


def angle_error(env: TaskEnv) -> torch.Tensor:
    return mdp.quat_error_angle(ee_quat(env), env.command[:, 3:7])


def position_kernel(env: TaskEnv) -> torch.Tensor:
    return 1.0 - torch.tanh(distance(env) / 0.05)


def orientation_kernel(env: TaskEnv) -> torch.Tensor:
    return 1.0 - torch.tanh(angle_error(env) / 0.2)


def reached(env: TaskEnv) -> torch.Tensor:
    cfg: PandaReachConfig = env.task_cfg
    return (distance(env) < cfg.success_position) & (angle_error(env) < cfg.success_angle)


def home_tcp_quat(model: mujoco.MjModel, home: np.ndarray) -> np.ndarray:
    """The TCP's orientation in the ``home`` pose (pointing down): targets are sampled around it, so every
    sampled yaw stays within the wrist's reach from home."""
    data = mujoco.MjData(model)
    data.qpos[model.jnt_qposadr[[model.joint(j).id for j in panda.JOINT_NAMES]]] = home
    mujoco.mj_kinematics(model, data)
    quat = np.empty(4)
    mujoco.mju_mat2Quat(quat, data.site(panda.EE_SITE).xmat)
    return quat


def target_sampler(home_quat: np.ndarray):
    """Reset event drawing target poses around ``home_quat`` (computed once per task build)."""
    home_t = torch.as_tensor(home_quat)

    def sample_targets(env: TaskEnv, env_ids: np.ndarray, cfg: EventConfig) -> None:
        t: Targets = env.task_cfg.targets
        n, rng = len(env_ids), env.rng
        pos = np.stack([rng.uniform(*t.x, n), rng.uniform(*t.y, n), rng.uniform(*t.z, n)], axis=1)
        quat = mdp.quat_mul(torch.as_tensor(mdp.yaw_quat(rng.uniform(*t.yaw, n))), home_t.expand(n, 4))
        quat = mdp.quat_mul(torch.as_tensor(mdp.random_quat_within(rng, n, t.max_tilt)), quat)
        target = np.concatenate([pos, quat.numpy()], axis=1)
        env.command[torch.as_tensor(env_ids)] = torch.as_tensor(target, dtype=torch.float32, device=env.device)

    return sample_targets


def reset_arm(env: TaskEnv, env_ids: np.ndarray) -> None:
    n = len(env_ids)
    qpos = np.tile(env.default_model.qpos0, (n, 1))
    joints = env.actuator_qpos_adr.cpu().numpy()
    qpos[:, joints] = env.task_cfg.robot.home_joint_pos()
    qpos[:, joints[:ARM_JOINTS]] += env.rng.uniform(-0.2, 0.2, (n, ARM_JOINTS))
    env.write_sim("qpos", env_ids, qpos)
    env.write_sim("qvel", env_ids, 0.0)


def action_map(cfg: PandaReachConfig, model: mujoco.MjModel) -> ActionMap:
    arm, home = np.arange(ARM_JOINTS), cfg.robot.home_joint_pos()
    limits = (None if cfg.target_limits is None
              else TargetBounds.for_robot(panda.SPEC, cfg.robot, model, cfg.target_limits))
    if cfg.action_mode == "end_effector":
        scale = np.repeat(np.asarray(cfg.ee_step, dtype=np.float64), 3)
        ik = EndEffectorIK(panda.EE_SITE, panda.ARM_JOINT_NAMES, cfg.ik_damping)
        return ActionMap(arm, scale, home, ik=ik, limits=limits)
    return ActionMap(arm, np.full(ARM_JOINTS, cfg.action_scale), home, relative=cfg.action_mode == "joint_relative",
                     limits=limits)


def build(cfg: PandaReachConfig) -> TaskDefinition:
    model = panda.SPEC.build_model(cfg.robot)
    home = cfg.robot.home_joint_pos()
    r, dr_cfg = cfg.rewards, cfg.randomization
    policy_obs = {
        "joint_pos": ObsTerm(arm_joint_pos, noise=0.005),
        "joint_vel": ObsTerm(arm_joint_vel, noise=0.05, scale=0.2),
        "joint_target": ObsTerm(arm_joint_target),
        "target": ObsTerm(mdp.command, definition=Definition(
            "target TCP pose", "m, then 1", "world", "", "x, y, z, then quaternion w, x, y, z")),
        "position_error": ObsTerm(position_error, noise=0.002),
        "orientation_error": ObsTerm(orientation_error, noise=0.01),
        "last_action": ObsTerm(mdp.last_action),
        "position_error_integral": ObsTerm(mdp.integral("position_error_near_target", Definition(
            POSITION_ERROR.quantity, "m", "world", f"zero farther than {cfg.position_integral_radius} m from the "
            "target", "x, y, z"))),
    }
    critic_obs = noiseless(policy_obs)
    return TaskDefinition(
        name="panda-reach", robot="panda", model=model, sim=cfg.sim,
        action=action_map(cfg, model),
        default_joint_pos=home,
        observations={"policy": policy_obs, "critic": critic_obs},
        rewards={
            "position": RewardTerm(distance, r.position),
            "position_kernel": RewardTerm(position_kernel, r.position_kernel),
            "orientation": RewardTerm(angle_error, r.orientation),
            "orientation_kernel": RewardTerm(orientation_kernel, r.orientation_kernel),
            "action_rate": RewardTerm(mdp.action_rate_l2, r.action_rate),
            "joint_vel": RewardTerm(mdp.joint_vel_l2, r.joint_vel),
        },
        terminations={},
        events={
            "sample_targets": EventTerm(target_sampler(home_tcp_quat(model, home)), EventConfig("reset"), randomization=False),
            "link_mass": EventTerm(dr.model_event(dr.scale_link_masses), dr_cfg.link_mass),
            "com_offset": EventTerm(dr.model_event(dr.offset_coms), dr_cfg.com_offset),
            "joint_damping": EventTerm(dr.model_event(dr.scale_joint_damping), dr_cfg.joint_damping),
            "joint_armature": EventTerm(dr.model_event(dr.scale_joint_armature), dr_cfg.joint_armature),
            "actuator_gains": EventTerm(dr.actuator_gains, dr_cfg.actuator_gains),
            "action_latency": EventTerm(dr.action_latency, dr_cfg.action_latency),
            **dr.shift_events(dr_cfg, model),
        },
        reset=reset_arm,
        success=reached,
        command_dim=7,
        metrics={"position_error": distance, "orientation_error": angle_error},
        integrals={"position_error_near_target": Integral(mdp.within(position_error, cfg.position_integral_radius),
                                                          cfg.position_integral_limit)},
        observation_noise=dr_cfg.observation_noise,
        randomize=dr_cfg.enabled,
        cfg=cfg,
    )


SPEC = registry.register(TaskSpec("panda-reach", "panda", "Franka Panda: reach a sampled end-effector pose",
                                  PandaReachConfig, build))
