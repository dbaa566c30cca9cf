"""go2-walk: track commanded forward, lateral and yaw velocities on flat ground with a Unitree Go2.

Terms follow the legged-robot recipes of legged_gym / Isaac Lab (velocity tracking kernels, posture and
smoothness penalties, feet air time), with randomization declared next to the task.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from robostack import registry
from robostack.sim import mdp
from robostack.sim import randomization as dr
from robostack.sim.joint_limits import JointTargetLimits, TargetBounds
from robostack.sim.robots.go2 import model as go2
from robostack.sim.intervention import TaskIntervener, steps_held
from robostack.sim.task_env import TaskEnv
from robostack.specs import TaskSpec
from robostack.sim.terms import (ActionMap, Definition, DoneTerm, EventConfig, EventTerm, ObsTerm,
                                 RandomizationConfig, RewardTerm, SimConfig, TaskDefinition, noiseless)

FEET = ("FR", "FL", "RR", "RL")


@dataclass
class Commands:
    lin_vel_x: tuple[float, float]  # m/s
    lin_vel_y: tuple[float, float]
    ang_vel_z: tuple[float, float]  # rad/s
    resample: EventConfig
    standing_fraction: float  # share of commands that are zero (learn to stand still)


@dataclass
class Rewards:
    termination: float  # once, on a fall
    track_lin_vel_xy: float
    track_ang_vel_z: float
    lin_vel_z: float
    ang_vel_xy: float
    flat_orientation: float
    joint_torques: float
    action_rate: float
    feet_air_time: float
    tracking_sigma: float  # width of the exp tracking kernels, (m/s)^2


@dataclass
class Randomization(RandomizationConfig):
    friction: EventConfig
    joint_damping: EventConfig
    joint_armature: EventConfig
    actuator_gains: EventConfig
    motor_strength: EventConfig
    action_latency: EventConfig
    push: EventConfig


@dataclass
class Go2WalkConfig:
    robot: go2.Go2Config
    sim: SimConfig
    action_scale: float  # rad per unit action around the default pose
    commands: Commands
    rewards: Rewards
    randomization: Randomization
    min_base_height: float  # below this the robot has fallen
    max_tilt_cos: float  # projected gravity z above -this: tilted past 60 degrees
    target_limits: JointTargetLimits | None = None  # train under the safety layer's clamps (deploy YAML)


# ----- commands -----
def resample_commands(env: TaskEnv, env_ids: np.ndarray, cfg: EventConfig) -> None:
    c: Commands = env.task_cfg.commands
    n = len(env_ids)
    cmd = np.stack([env.rng.uniform(*c.lin_vel_x, n), env.rng.uniform(*c.lin_vel_y, n),
                    env.rng.uniform(*c.ang_vel_z, n)], axis=1)
    cmd[env.rng.random(n) < c.standing_fraction] = 0.0
    env.command[torch.as_tensor(env_ids)] = torch.as_tensor(cmd, dtype=torch.float32, device=env.device)


# ----- terms -----
def feet_contact(env: TaskEnv) -> torch.Tensor:
    return torch.cat([env.sensor(f"{foot}_contact") for foot in FEET], dim=1) > 0.1


def track_lin_vel_xy(env: TaskEnv) -> torch.Tensor:
    err = torch.sum((env.command[:, :2] - mdp.base_lin_vel(env)[:, :2]) ** 2, dim=1)
    return torch.exp(-err / env.task_cfg.rewards.tracking_sigma)


def track_ang_vel_z(env: TaskEnv) -> torch.Tensor:
    err = (env.command[:, 2] - mdp.base_ang_vel(env)[:, 2]) ** 2
    return torch.exp(-err / env.task_cfg.rewards.tracking_sigma)


def joint_torques(env: TaskEnv) -> torch.Tensor:
    """Squared PD torques as commanded this step (the position actuators' force law, nominal gains)."""
    robot: go2.Go2Config = env.task_cfg.robot
    torque = robot.kp * (env.ctrl - env.joint_pos) - robot.kd * env.joint_vel
    return torch.sum(torque ** 2, dim=1)


def feet_air_time(env: TaskEnv) -> torch.Tensor:
    """Reward steps that end a swing longer than 0.5 s (encourages stepping instead of shuffling)."""
    contact = feet_contact(env)
    air = env.buffers.setdefault("air_time", torch.zeros(env.num_envs, len(FEET), device=env.device))
    first_contact = (air > 0) & contact
    reward = torch.sum((air - 0.5) * first_contact, dim=1)
    air += env.control_dt
    air *= ~contact
    moving = torch.norm(env.command[:, :2], dim=1) > 0.1
    return reward * moving


def lin_vel_error(env: TaskEnv) -> torch.Tensor:
    return torch.norm(env.command[:, :2] - mdp.base_lin_vel(env)[:, :2], dim=1)


def ang_vel_error(env: TaskEnv) -> torch.Tensor:
    return torch.abs(env.command[:, 2] - mdp.base_ang_vel(env)[:, 2])


def fallen(env: TaskEnv) -> torch.Tensor:
    cfg: Go2WalkConfig = env.task_cfg
    return (mdp.base_height(env)[:, 0] < cfg.min_base_height) | (mdp.projected_gravity(env)[:, 2] > -cfg.max_tilt_cos)


def reset_robot(env: TaskEnv, env_ids: np.ndarray) -> None:
    """Standing at the default pose with a random heading, small joint and velocity perturbations."""
    n, model = len(env_ids), env.default_model
    qpos = np.tile(model.qpos0, (n, 1))
    robot: go2.Go2Config = env.task_cfg.robot
    qpos[:, 0:3] = robot.home_base_pos()
    qpos[:, 3:7] = mdp.yaw_quat(env.rng.uniform(-np.pi, np.pi, n))
    joints = env.actuator_qpos_adr.cpu().numpy()
    qpos[:, joints] = robot.home_joint_pos() + env.rng.uniform(-0.1, 0.1, (n, len(joints)))
    env.write_sim("qpos", env_ids, qpos)
    qvel = np.zeros((n, model.nv))
    qvel[:, 0:6] = env.rng.uniform(-0.2, 0.2, (n, 6))
    env.write_sim("qvel", env_ids, qvel)
    if "air_time" in env.buffers:
        env.buffers["air_time"][torch.as_tensor(env_ids)] = 0.0


def build(cfg: Go2WalkConfig) -> TaskDefinition:
    model = go2.SPEC.build_model(cfg.robot)
    home = cfg.robot.home_joint_pos()
    r, dr_cfg = cfg.rewards, cfg.randomization
    policy_obs = {  # base velocity as a state estimator gives it (odometry), as Isaac Lab and Playground do
        "base_lin_vel": ObsTerm(mdp.base_lin_vel, noise=0.1, scale=2.0),
        "base_ang_vel": ObsTerm(mdp.base_ang_vel, noise=0.2, scale=0.25),
        "projected_gravity": ObsTerm(mdp.projected_gravity, noise=0.05),
        "command": ObsTerm(mdp.command, definition=Definition(
            "commanded base velocity", "m/s, m/s, rad/s", "base", "", "vx, vy, yaw rate (about z)")),
        "joint_pos": ObsTerm(mdp.joint_pos_rel, noise=0.01),
        "joint_vel": ObsTerm(mdp.joint_vel, noise=1.5, scale=0.05),
        "last_action": ObsTerm(mdp.last_action),
    }
    critic_obs = noiseless(policy_obs)
    critic_obs.update({
        "base_height": ObsTerm(mdp.base_height),
        "feet_contact": ObsTerm(lambda env: feet_contact(env).float()),
    })
    definition = TaskDefinition(
        name="go2-walk", robot="go2", model=model, sim=cfg.sim,
        action=ActionMap(np.arange(model.nu), np.full(model.nu, cfg.action_scale), home.copy(),
                         limits=None if cfg.target_limits is None
                         else TargetBounds.for_robot(go2.SPEC, cfg.robot, model, cfg.target_limits)),
        default_joint_pos=home,
        observations={"policy": policy_obs, "critic": critic_obs},
        rewards={
            "termination": RewardTerm(mdp.is_terminated, r.termination),
            "track_lin_vel_xy": RewardTerm(track_lin_vel_xy, r.track_lin_vel_xy),
            "track_ang_vel_z": RewardTerm(track_ang_vel_z, r.track_ang_vel_z),
            "lin_vel_z": RewardTerm(mdp.lin_vel_z_l2, r.lin_vel_z),
            "ang_vel_xy": RewardTerm(mdp.ang_vel_xy_l2, r.ang_vel_xy),
            "flat_orientation": RewardTerm(mdp.flat_orientation_l2, r.flat_orientation),
            "joint_torques": RewardTerm(joint_torques, r.joint_torques),
            "action_rate": RewardTerm(mdp.action_rate_l2, r.action_rate),
            "feet_air_time": RewardTerm(feet_air_time, r.feet_air_time),
        },
        terminations={"fallen": DoneTerm(fallen)},
        events={
            "resample_commands": EventTerm(resample_commands, EventConfig("reset"), randomization=False),
            "resample_commands_interval": EventTerm(resample_commands, cfg.commands.resample, randomization=False),
            "link_mass": EventTerm(dr.model_event(dr.scale_link_masses), dr_cfg.link_mass),
            "com_offset": EventTerm(dr.model_event(dr.offset_coms), dr_cfg.com_offset),
            "friction": EventTerm(dr.model_event(dr.scale_friction), dr_cfg.friction),
            "joint_damping": EventTerm(dr.model_event(dr.scale_joint_damping), dr_cfg.joint_damping),
            "joint_armature": EventTerm(dr.model_event(dr.scale_joint_armature), dr_cfg.joint_armature),
            "actuator_gains": EventTerm(dr.actuator_gains, dr_cfg.actuator_gains),
            "motor_strength": EventTerm(dr.motor_strength, dr_cfg.motor_strength),
            "action_latency": EventTerm(dr.action_latency, dr_cfg.action_latency),
            "push": EventTerm(dr.push_base, dr_cfg.push),
            **dr.shift_events(dr_cfg, model),
        },
        reset=reset_robot,
        success=mdp.survived_episode,
        command_dim=3,
        metrics={"lin_vel_error": lin_vel_error, "ang_vel_error": ang_vel_error},
        observation_noise=dr_cfg.observation_noise,
        randomize=dr_cfg.enabled,
        cfg=cfg,
    )
    return definition


class WalkIntervener(TaskIntervener):
    """Takes over when the body tilts more than ``TILT_RAD`` or the base's velocity stays more than
    ``TRACKING_M_S`` off the command for ``TRACKING_S``; commands standing still; hands back once the robot is
    upright (under ``SETTLED_TILT_RAD``) and slower than ``SETTLED_SPEED``."""

    TILT_RAD, TRACKING_M_S, TRACKING_S, SETTLED_TILT_RAD, SETTLED_SPEED = 0.35, 0.5, 1.0, 0.15, 0.2

    def __init__(self, env: TaskEnv):
        self.off_track_steps = torch.zeros(env.num_envs, dtype=torch.long, device=env.device)

    def _tilt(self, env: TaskEnv) -> torch.Tensor:
        return torch.arccos(torch.clamp(-mdp.projected_gravity(env)[:, 2], -1.0, 1.0))

    def going_wrong(self, env: TaskEnv) -> torch.Tensor:
        off = lin_vel_error(env) > self.TRACKING_M_S
        self.off_track_steps = steps_held(self.off_track_steps, off)
        return (self._tilt(env) > self.TILT_RAD) | (self.off_track_steps * env.control_dt >= self.TRACKING_S)

    def begin(self, env: TaskEnv, env_ids: np.ndarray) -> None:
        self.off_track_steps[env_ids] = 0

    def back_on_track(self, env: TaskEnv) -> torch.Tensor:
        return (self._tilt(env) < self.SETTLED_TILT_RAD) & (
            torch.norm(mdp.base_lin_vel(env)[:, :2], dim=1) < self.SETTLED_SPEED)

    def command(self, env: TaskEnv) -> torch.Tensor:
        return torch.zeros(env.num_envs, 3, device=env.device)


SPEC = registry.register(TaskSpec("go2-walk", "go2", "Unitree Go2: track commanded vx, vy, yaw rate on flat ground",
                                  Go2WalkConfig, build, intervener=WalkIntervener))
