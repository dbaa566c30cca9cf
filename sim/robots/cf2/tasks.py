"""cf2-hover: fly a Crazyflie 2.x to a target position and hold it, from random position, velocity and attitude.

Actions are the four motor thrusts around hover thrust. Observations follow the "Learning to Fly in
Seconds" recipe (position error, rotation matrix, velocities, recent actions) plus the position error's
running integral, which removes the steady offset a mass, thrust or wind mismatch leaves; the critic also
sees the wind force and the lagged rotor thrusts, which a real drone cannot measure.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from robostack import registry
from robostack.sim import mdp
from robostack.sim import randomization as dr
from robostack.sim.robots.cf2 import model as cf2
from robostack.sim.intervention import TaskIntervener, steps_held
from robostack.sim.task_env import TaskEnv, as_tensor
from robostack.specs import TaskSpec
from robostack.sim.terms import (ActionMap, Definition, DoneTerm, EventConfig, EventTerm, Integral, ObsTerm,
                                 RandomizationConfig, RewardTerm, SimConfig, TaskDefinition, defined, noiseless)


@dataclass
class Start:
    position_offset: float  # m, uniform per axis around the target
    velocity: float  # m/s, uniform per axis
    max_tilt: float  # rad (60 degrees), random axis
    angular_velocity: float  # rad/s, uniform per axis


@dataclass
class Rewards:
    alive: float  # per step in the air: staying up must pay more than crashing early
    termination: float  # once, on crashing or flying off
    position: float  # x distance to target (m)
    position_kernel: float  # x exp(-distance / position_sigma)
    position_sigma: float
    upright: float  # x (1 - body z . world z)
    angular_velocity: float
    action: float
    action_rate: float


@dataclass
class Randomization(RandomizationConfig):
    motor_strength: EventConfig
    action_latency: EventConfig
    wind: EventConfig


@dataclass
class Cf2HoverConfig:
    robot: cf2.Cf2Config
    sim: SimConfig
    target: tuple[float, float, float]
    start: Start
    rewards: Rewards
    randomization: Randomization
    action_history: int  # past actions the policy sees (newest first)
    position_integral_limit: float  # m s: clip of the position error's running integral (an I term)
    position_integral_radius: float  # m: integrate only this close to the target (no windup on the way)
    success_radius: float  # m from target at the end of the episode
    max_distance: float  # m from target: terminate (flew away)


POSITION_ERROR = Definition("target position minus the base's position", "m", "world", "", "x, y, z")


@defined(POSITION_ERROR)
def position_error(env: TaskEnv) -> torch.Tensor:
    """Target minus position, world frame."""
    return env.command - mdp.base_pos(env)


def distance(env: TaskEnv) -> torch.Tensor:
    return torch.norm(position_error(env), dim=1)


@defined(Definition("the base's orientation as a rotation matrix, base to world (its columns are the base's "
                    "axes in world coordinates)", "1", "world", "", "row-major: R00, R01, R02, R10, R11, R12, R20, "
                    "R21, R22"))
def rotation_matrix(env: TaskEnv) -> torch.Tensor:
    return mdp.quat_to_matrix(mdp.base_quat(env)).reshape(env.num_envs, 9)


def rotor_thrust(env: TaskEnv) -> torch.Tensor:
    """Actual (lagged) rotor thrusts, normalized by hover thrust: the motors' filter state."""
    return as_tensor(env.sim.act, env.device) / cf2.HOVER_THRUST


def wind_force(env: TaskEnv) -> torch.Tensor:
    return as_tensor(env.external_force, env.device)[:, 0:3] * 10.0


def position_kernel(env: TaskEnv) -> torch.Tensor:
    return torch.exp(-distance(env) / env.task_cfg.rewards.position_sigma)


def tilt(env: TaskEnv) -> torch.Tensor:
    return 1.0 + mdp.projected_gravity(env)[:, 2]


def angular_velocity_l2(env: TaskEnv) -> torch.Tensor:
    return torch.sum(mdp.base_ang_vel(env) ** 2, dim=1)


def crashed_or_lost(env: TaskEnv) -> torch.Tensor:
    return (distance(env) > env.task_cfg.max_distance) | (mdp.base_pos(env)[:, 2] < 0.05)


def at_target(env: TaskEnv) -> torch.Tensor:
    return (distance(env) < env.task_cfg.success_radius) & mdp.survived_episode(env)


def reset_drone(env: TaskEnv, env_ids: np.ndarray) -> None:
    cfg: Cf2HoverConfig = env.task_cfg
    s, n, rng = cfg.start, len(env_ids), env.rng
    qpos = np.tile(env.default_model.qpos0, (n, 1))
    qpos[:, 0:3] = np.asarray(cfg.target) + rng.uniform(-s.position_offset, s.position_offset, (n, 3))
    qpos[:, 3:7] = mdp.random_quat_within(rng, n, s.max_tilt)
    env.write_sim("qpos", env_ids, qpos)
    qvel = np.zeros((n, env.default_model.nv))
    qvel[:, 0:3] = rng.uniform(-s.velocity, s.velocity, (n, 3))
    qvel[:, 3:6] = rng.uniform(-s.angular_velocity, s.angular_velocity, (n, 3))
    env.write_sim("qvel", env_ids, qvel)
    env.write_sim("act", env_ids, cf2.HOVER_THRUST)  # rotors spinning at hover speed
    env.command[torch.as_tensor(env_ids)] = torch.as_tensor(cfg.target, dtype=torch.float32, device=env.device)


def near(cfg: Cf2HoverConfig) -> Definition:
    """What the position error's integral integrates."""
    return Definition(POSITION_ERROR.quantity, "m", "world",
                      f"zero farther than {cfg.position_integral_radius} m from the target", "x, y, z")


def build(cfg: Cf2HoverConfig) -> TaskDefinition:
    model = cf2.SPEC.build_model(cfg.robot)
    r, dr_cfg = cfg.rewards, cfg.randomization
    policy_obs = {
        "position_error": ObsTerm(position_error, noise=0.005),
        "rotation_matrix": ObsTerm(rotation_matrix, noise=0.01),
        "linear_velocity": ObsTerm(mdp.base_lin_vel_world, noise=0.01),
        "angular_velocity": ObsTerm(mdp.base_ang_vel, noise=0.05, scale=0.25),
        "action_history": ObsTerm(mdp.action_history),
        "position_error_integral": ObsTerm(mdp.integral("position_error_near_target", near(cfg))),
    }
    critic_obs = noiseless(policy_obs)
    critic_obs.update({"rotor_thrust": ObsTerm(rotor_thrust), "wind_force": ObsTerm(wind_force)})
    nu = model.nu
    return TaskDefinition(
        name="cf2-hover", robot="cf2", model=model, sim=cfg.sim,
        action=ActionMap(np.arange(nu), np.full(nu, cfg.robot.max_thrust - cf2.HOVER_THRUST),
                         np.full(nu, cf2.HOVER_THRUST)),
        observations={"policy": policy_obs, "critic": critic_obs},
        rewards={
            "alive": RewardTerm(mdp.alive, r.alive),
            "termination": RewardTerm(mdp.is_terminated, r.termination),
            "position": RewardTerm(distance, r.position),
            "position_kernel": RewardTerm(position_kernel, r.position_kernel),
            "upright": RewardTerm(tilt, r.upright),
            "angular_velocity": RewardTerm(angular_velocity_l2, r.angular_velocity),
            "action": RewardTerm(mdp.action_l2, r.action),
            "action_rate": RewardTerm(mdp.action_rate_l2, r.action_rate),
        },
        terminations={"crashed_or_lost": DoneTerm(crashed_or_lost)},
        events={
            "link_mass": EventTerm(dr.model_event(dr.scale_link_masses), dr_cfg.link_mass),
            "com_offset": EventTerm(dr.model_event(dr.offset_coms), dr_cfg.com_offset),
            "motor_strength": EventTerm(dr.motor_strength, dr_cfg.motor_strength),
            "action_latency": EventTerm(dr.action_latency, dr_cfg.action_latency),
            "wind": EventTerm(dr.wind_gust, dr_cfg.wind),
            **dr.shift_events(dr_cfg, model),
        },
        reset=reset_drone,
        success=at_target,
        command_dim=3,
        action_history=cfg.action_history,
        metrics={"position_error": distance},
        integrals={"position_error_near_target": Integral(mdp.within(position_error, cfg.position_integral_radius),
                                                          cfg.position_integral_limit)},
        observation_noise=dr_cfg.observation_noise,
        randomize=dr_cfg.enabled,
        cfg=cfg,
    )


class HoverIntervener(TaskIntervener):
    """Takes over when the drone strays more than ``STRAY_M`` from its target after having reached it (within
    ``SETTLED_M``), or is still that far ``ARRIVE_S`` into the episode (it starts away from the target, so farther
    is no sign of trouble before then). It moves the setpoint (from the task's, ``SetpointTakeover``) as a pilot
    aiming off would: at ``GAIN`` times the drone's error less ``DAMPING`` times its velocity (m/s), so a drone that
    hangs below its target (heavier, a weak motor) is flown to it by a setpoint above it. It hands back once the
    drone has stayed within ``SETTLED_M`` and slower than ``SETTLED_SPEED`` for ``SETTLE_S``: handing back the
    moment it arrives left the logs without a step flown at the target (BENCHMARKS.md, "Learning from
    interventions")."""

    STRAY_M, SETTLED_M, SETTLED_SPEED, ARRIVE_S = 0.3, 0.1, 0.2, 3.0
    GAIN, DAMPING, SETTLE_S = 2.0, 1.0, 1.0

    def __init__(self, env: TaskEnv):
        self.arrived = torch.zeros(env.num_envs, dtype=torch.bool, device=env.device)
        self.seen_length = env.episode_length.clone()  # a shorter episode since: a new one (not asked every step)
        self.settled_steps = torch.zeros(env.num_envs, dtype=torch.long, device=env.device)

    def begin(self, env: TaskEnv, env_ids: np.ndarray) -> None:
        self.settled_steps[torch.as_tensor(env_ids, device=env.device)] = 0

    def going_wrong(self, env: TaskEnv) -> torch.Tensor:
        same_episode = env.episode_length >= self.seen_length
        self.seen_length = env.episode_length.clone()
        self.arrived = (self.arrived & same_episode) | (distance(env) < self.SETTLED_M)
        late = env.episode_length * env.control_dt >= self.ARRIVE_S
        return (distance(env) > self.STRAY_M) & (self.arrived | late)

    def _settled(self, env: TaskEnv) -> torch.Tensor:
        return (distance(env) < self.SETTLED_M) & (torch.norm(mdp.base_lin_vel_world(env), dim=1) < self.SETTLED_SPEED)

    def back_on_track(self, env: TaskEnv) -> torch.Tensor:
        return self._settled(env) & (self.settled_steps * env.control_dt >= self.SETTLE_S - 1e-9)

    def command(self, env: TaskEnv) -> torch.Tensor:
        self.settled_steps = steps_held(self.settled_steps, self._settled(env))
        return self.GAIN * position_error(env) - self.DAMPING * mdp.base_lin_vel_world(env)


SPEC = registry.register(TaskSpec("cf2-hover", "cf2", "Crazyflie 2.x: fly to and hold a target position from random "
                                  "starts", Cf2HoverConfig, build, intervener=HoverIntervener))
