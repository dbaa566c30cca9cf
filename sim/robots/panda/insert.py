"""panda-insert: put a square peg, held in the gripper, into a square hole with a few millimetres of clearance.

The hole goes through a block fixed on the table (four walls; the table is its bottom); its side is the peg's
plus ``hole.clearance``, both sides together. Each episode starts with the peg grasped (``grasp_depth`` from
its top end, sampled) and the block at a sampled position and yaw. Actions are TCP displacements through
differential IK plus the gripper command (opening it drops the peg). Success: the peg's tip at least
``success_depth`` inside the hole, upright within ``success_tilt``. The sparse success reward is what
residual RL uses; shaping terms default to weight 0.
"""
from __future__ import annotations

from dataclasses import dataclass

import mujoco
import numpy as np
import torch

from robostack import registry
from robostack.sim import mdp
from robostack.sim.robots import description
from robostack.sim.robots.panda import manipulation as manip
from robostack.sim.task_env import TaskEnv
from robostack.specs import TaskSpec
from robostack.sim.terms import Definition, EventConfig, ObsTerm, RewardTerm, TaskDefinition, defined

HOLE = "hole"  # the block's body; site and sensors hole_pos, hole_quat at the centre of the hole's mouth
TIP = "peg_tip"  # site and sensor peg_tip_pos at the centre of the peg's lower face


@dataclass
class Peg:
    size: float  # m, side of its square section
    length: float  # m
    mass: float  # kg, before randomization
    friction: float  # sliding, before randomization
    grasp_depth: tuple[float, float]  # m from its top end to the TCP, sampled per episode


@dataclass
class Hole:
    clearance: float  # m, hole side minus peg side (both sides together)
    depth: float  # m, the block's height; the hole goes through it
    block_size: float  # m, the block's outer side
    x: tuple[float, float]  # m, robot base frame, sampled per episode
    y: tuple[float, float]
    yaw: tuple[float, float]  # rad


@dataclass
class Rewards(manip.Rewards):
    align: float  # x (1 - tanh(horizontal tip-hole distance / 0.02))
    depth: float  # x insertion depth / success_depth, clipped to [0, 1]


@dataclass
class PandaInsertConfig(manip.ManipulationConfig):
    peg: Peg
    hole: Hole
    success_depth: float  # m of the peg's tip below the hole's mouth
    success_tilt: float  # rad between the peg's axis and the vertical
    rewards: Rewards


def add_hole_block(spec: mujoco.MjSpec, peg: Peg, hole: Hole) -> None:
    """Body ``hole`` (placed per episode by ``place_hole``): four walls around a square hole, and the hole's
    mouth site with ``hole_pos`` / ``hole_quat`` sensors."""
    block = spec.worldbody.add_body(name=HOLE)
    side = peg.size + hole.clearance
    wall = (hole.block_size - side) / 2  # thickness
    middle = side / 2 + wall / 2  # of each wall, from the hole's axis
    for k, (x, y, sx, sy) in enumerate([(0, middle, hole.block_size, wall), (0, -middle, hole.block_size, wall),
                                        (middle, 0, wall, side), (-middle, 0, wall, side)]):
        block.add_geom(name=f"{HOLE}_wall{k}", type=mujoco.mjtGeom.mjGEOM_BOX, pos=[x, y, hole.depth / 2],
                       size=[sx / 2, sy / 2, hole.depth / 2], rgba=[0.3, 0.4, 0.6, 1.0])
    description.add_site(spec, HOLE, HOLE, pos=(0.0, 0.0, hole.depth))
    description.add_sensor(spec, f"{HOLE}_pos", mujoco.mjtSensor.mjSENS_FRAMEPOS, HOLE)
    description.add_sensor(spec, f"{HOLE}_quat", mujoco.mjtSensor.mjSENS_FRAMEQUAT, HOLE)


@defined(Definition("position of the hole's mouth (the centre of its opening)", "m", "world", "", "x, y, z"))
def hole_pos(env: TaskEnv) -> torch.Tensor:
    return env.sensor(f"{HOLE}_pos")


def hole_quat(env: TaskEnv) -> torch.Tensor:
    return env.sensor(f"{HOLE}_quat")


@defined(Definition("the hole's mouth minus the peg's tip", "m", "world", "", "x, y, z"))
def tip_to_hole(env: TaskEnv) -> torch.Tensor:
    return hole_pos(env) - env.sensor(f"{TIP}_pos")


def tip_offset(env: TaskEnv) -> torch.Tensor:
    """Horizontal distance (m) of the peg's tip from the hole's axis."""
    return torch.norm(tip_to_hole(env)[:, :2], dim=1)


def insertion_depth(env: TaskEnv) -> torch.Tensor:
    """How far (m) the peg's tip is below the hole's mouth; negative above it."""
    return tip_to_hole(env)[:, 2]


@defined(Definition("turn about the vertical that lines the peg's faces up with the hole's (the smallest of "
                    "the four)", "rad", "world", "positive counter-clockwise seen from above; in [-pi/4, pi/4)",
                    "one value"))
def yaw_error(env: TaskEnv) -> torch.Tensor:
    """[N, 1] turn (rad) that lines the peg's faces up with the hole's, the smallest of the four."""
    turn = manip.heading(hole_quat(env)) - manip.heading(manip.object_quat(env))
    return manip.wrap(turn, torch.pi / 2).unsqueeze(1)


def peg_tilt(env: TaskEnv) -> torch.Tensor:
    """Angle (rad) between the peg's axis and the vertical."""
    w, x, y, z = manip.object_quat(env).unbind(-1)
    return torch.acos(torch.clamp(2 * (x * x + y * y) - 1, -1.0, 1.0))  # its z axis against -z


def inserted(env: TaskEnv) -> torch.Tensor:
    cfg: PandaInsertConfig = env.task_cfg
    return ((insertion_depth(env) >= cfg.success_depth) & (tip_offset(env) < cfg.hole.clearance)
            & (peg_tilt(env) < cfg.success_tilt))


def dropped(env: TaskEnv) -> torch.Tensor:
    """The peg is out of the hand: its centre farther from the TCP than its length."""
    return manip.tcp_distance(env) > env.task_cfg.peg.length


def align_kernel(env: TaskEnv) -> torch.Tensor:
    return 1.0 - torch.tanh(tip_offset(env) / 0.02)


def depth_progress(env: TaskEnv) -> torch.Tensor:
    return torch.clamp(insertion_depth(env) / env.task_cfg.success_depth, 0.0, 1.0)


def place_hole(env: TaskEnv, env_ids: np.ndarray, cfg: EventConfig) -> None:
    """Block at a sampled (x, y, yaw) on the table: a change of those envs' own models (it is fixed)."""
    task: PandaInsertConfig = env.task_cfg
    h, n, rng = task.hole, len(env_ids), env.rng
    pos = np.stack([rng.uniform(*h.x, n), rng.uniform(*h.y, n), np.full(n, task.table.height)], axis=1)
    quat = mdp.yaw_quat(rng.uniform(*h.yaw, n))
    models, body = env.sim.per_env_models(env_ids), env.default_model.body(HOLE).id
    for k, i in enumerate(env_ids):
        models[i].body_pos[body] = pos[k]
        models[i].body_quat[body] = quat[k]


def reset(env: TaskEnv, env_ids: np.ndarray) -> None:
    """Arm near home holding the peg upright in the closed gripper, ``grasp_depth`` below its top end."""
    peg: PandaInsertConfig = env.task_cfg.peg
    manip.reset_arm(env, env_ids)
    depth = peg.length / 2 - env.rng.uniform(*peg.grasp_depth, len(env_ids))
    manip.place_in_gripper(env, env_ids, depth, half_width=peg.size / 2)


def build(cfg: PandaInsertConfig) -> TaskDefinition:
    spec = manip.build_spec(cfg.robot, cfg.table)
    peg = manip.add_object(spec, cfg.table, [cfg.peg.size / 2, cfg.peg.size / 2, cfg.peg.length / 2],
                           cfg.peg.mass, cfg.peg.friction, rgba=[0.9, 0.7, 0.1, 1.0])
    description.add_site(spec, peg.name, TIP, pos=(0.0, 0.0, cfg.peg.length / 2))  # +z: away from the hand
    description.add_sensor(spec, f"{TIP}_pos", mujoco.mjtSensor.mjSENS_FRAMEPOS, TIP)
    add_hole_block(spec, cfg.peg, cfg.hole)
    return manip.task_definition(
        "panda-insert", cfg, spec.compile(), success=inserted, dropped=dropped,
        goal={"hole_pos": ObsTerm(hole_pos, noise=0.002), "tip_to_hole": ObsTerm(tip_to_hole, noise=0.002),
              "yaw_error": ObsTerm(yaw_error, noise=0.02)},
        shaping={"align": RewardTerm(align_kernel, cfg.rewards.align),
                 "depth": RewardTerm(depth_progress, cfg.rewards.depth)},
        place=place_hole, reset=reset, gripper_closed=True,
        metrics={"tip_offset": tip_offset, "insertion_depth": insertion_depth},
        scene_state={"hole_pos": (hole_pos, "xyz"), "hole_quat": (hole_quat, "wxyz")}, fixtures=(HOLE,))


class InsertExpert(manip.ScriptedExpert):
    """Bring the peg's tip well above the hole's mouth with the peg upright and its faces turned to the hole's,
    line it up just above the mouth, then lower it while still correcting the horizontal offset and the
    orientation. The high waypoint keeps the fast approach from catching the tip on the block's top."""

    APPROACH, LINE_UP, INSERT = range(3)
    WAYPOINTS = (0.05, 0.01)  # m above the mouth where the tip goes in the first two phases
    TOLERANCE = (0.005, 0.0008)  # m of tip error (and 0.02 rad of turn to line up) before moving on
    SETTLED = 0.01  # m/s: the peg must be this slow to move on, or it overshoots the line-up
    MAX_STEP = (0.01, 0.004, 0.004)  # m per control step in each phase
    DESCENT = 0.003  # m the target sits below the tip while inserting: the descent is POSITION_GAIN of it a step

    def script(self, env: TaskEnv) -> torch.Tensor:
        tip, hole, peg_quat = env.sensor(f"{TIP}_pos"), hole_pos(env), manip.object_quat(env)
        yaw = manip.quarter_turn_yaw(manip.heading(env.sensor(f"{HOLE}_quat")), manip.heading(peg_quat))
        turn = mdp.quat_error_vector(peg_quat, manip.pointing_down(yaw))
        lined_up = (torch.norm(turn, dim=1) < 0.02) & (torch.norm(manip.object_linvel(env), dim=1) < self.SETTLED)
        waypoints = [hole + torch.tensor([0.0, 0.0, h], device=env.device) for h in self.WAYPOINTS]
        for phase, point, tolerance in zip((self.APPROACH, self.LINE_UP), waypoints, self.TOLERANCE):
            self.advance(phase, (torch.norm(point - tip, dim=1) < tolerance) & lined_up)
        bottom = hole[:, 2] - env.task_cfg.success_depth - 0.01
        down = torch.cat([hole[:, :2], torch.maximum(tip[:, 2:] - self.DESCENT, bottom.unsqueeze(1))], dim=1)
        target = torch.stack([*waypoints, down])[self.phase, torch.arange(env.num_envs, device=env.device)]
        max_step = torch.as_tensor(self.MAX_STEP, device=env.device)[self.phase]
        return self.servo(env, target - tip, turn, max_step, close=torch.ones_like(self.phase, dtype=torch.bool))


SPEC = registry.register(TaskSpec("panda-insert", "panda", "Franka Panda: insert a held square peg into a square hole, "
                                  "mm clearance (scripted expert: peg above the hole, lined up, then down with "
                                  "corrections)", PandaInsertConfig, build, expert=InsertExpert))
