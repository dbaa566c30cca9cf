"""What the Panda manipulation tasks (``panda-lift``, ``panda-insert``) share: the table scene with a camera and
a light, a free box object with pose sensors, the end-effector + gripper action, observation terms,
randomization events and the servo their scripted experts are built on.

Contact settings for grasping, and why:

* the object's geom has ``priority`` 1, so its friction, condim and solver parameters govern every contact it
  makes (fingers, table); otherwise MuJoCo takes the larger friction of the pair and the object-friction
  randomization would barely matter;
* ``condim`` 4 adds torsional friction, so a pinched object cannot spin about the grasp axis;
* an elliptic friction cone with ``impratio`` 10 makes friction stiff, MuJoCo's advice against slip in grasps;
* ``solref`` (0.005 s, critically damped) instead of the default 0.02 s: contact stiffness scales with the
  effective mass, and for a 50 g peg between 15 g fingers the default let the fingers sink 2 mm into it at
  full grip force (0.2 mm now); 0.005 s still spans 2.5 physics steps of 2 ms, the stability limit being 2;
* the two fingers are coupled by a joint equality, as the Franka Hand's are by its mechanism, so a grasp
  centres the object instead of one finger pushing it away.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Sequence

import mujoco
import numpy as np
import torch

from robostack.sim import mdp
from robostack.sim import randomization as dr
from robostack.sim.joint_limits import JointTargetLimits, TargetBounds
from robostack.sim.robots import description
from robostack.sim.robots.panda import model as panda
from robostack.sim.robots.panda import reach
from robostack.sim.terms import (ActionMap, Definition, DoneTerm, EndEffectorIK, EventConfig, EventFn, EventTerm,
                                 GripperCommand, ObsTerm, RewardTerm, SimConfig, TaskDefinition, TermFn, defined,
                                 noiseless)

if TYPE_CHECKING:
    from robostack.sim.task_env import TaskEnv

OBJECT = "object"  # the free object's body, joint, geom and site; sensors object_pos, object_quat, object_linvel
CAMERA = "scene"  # fixed camera looking at the table (for image observations)
LIGHT = "scene"  # spot light aimed at the table
FINGERS = np.array([panda.JOINT_NAMES.index(j) for j in ("finger_joint1", "finger_joint2")])  # actuator ids
# open: each finger's full travel (4 cm, an 8 cm gap); closed: past any object, so the fingers squeeze it
GRIPPER = GripperCommand(FINGERS, open=float(panda.LIMITS.upper[FINGERS[0]]), closed=0.0)
VIEW_HEIGHT = 0.15  # m above the table's top centre: where the camera and the light aim (objects and gripper)
CAMERA_OFFSET = np.array([1.0, 0.8, 0.7])  # m from that point
LIGHT_OFFSET = np.array([0.0, 0.3, 1.4])


@dataclass
class Table:
    center: tuple[float, float]  # m, robot base frame
    size: tuple[float, float]  # m along x and y
    height: float  # m, its top above the floor the robot stands on


@dataclass
class Randomization(reach.Randomization):
    """The arm's randomization (as panda-reach's) plus the object's and the scene's."""

    object_mass: EventConfig  # scale
    object_friction: EventConfig  # scale of its sliding friction
    camera_position: EventConfig  # offset (m) per axis; it stays aimed at the table
    light_position: EventConfig  # offset (m) per axis; it stays aimed at the table
    light_intensity: EventConfig  # scale of its diffuse colour


@dataclass
class Rewards:
    """The weights every manipulation task has; each task's adds its shaping terms (0 for sparse rewards)."""

    success: float  # x 1 while the task is done: the sparse reward residual RL uses
    action_rate: float


@dataclass
class ManipulationConfig:
    """Fields every manipulation task has; each task's config adds its object, goal and ``rewards``."""

    robot: panda.PandaConfig
    sim: SimConfig
    ee_step: tuple[float, float]  # m and rad of TCP motion per control step per unit action
    ik_damping: float  # damped least squares lambda
    table: Table
    arm_joint_noise: float  # rad, uniform per arm joint around home at reset
    terminate_on_success: bool  # end the episode on success (the success reward then comes once)
    randomization: Randomization
    # train under the safety layer's joint target clamps (configs/deploy/panda.yaml safety.joints), as go2 does
    target_limits: JointTargetLimits | None = field(default=None, kw_only=True)


# ----------------------------------------------------------------------------------------------- the scene
def table_top(table: Table) -> np.ndarray:
    """Centre of the table's top surface."""
    return np.array([*table.center, table.height])


def view_point(table: Table) -> np.ndarray:
    """Where the camera and the light aim."""
    return table_top(table) + [0.0, 0.0, VIEW_HEIGHT]


def look_at_quat(pos: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Orientation of a MuJoCo camera or frame at ``pos`` whose -z axis points at ``target``, x horizontal."""
    back = (pos - target) / np.linalg.norm(pos - target)
    right = np.cross([0.0, 0.0, 1.0], back)
    right /= np.linalg.norm(right)
    quat = np.empty(4)
    mujoco.mju_mat2Quat(quat, np.stack([right, np.cross(back, right), back], axis=1).flatten())
    return quat


def build_spec(robot: panda.PandaConfig, table: Table) -> mujoco.MjSpec:
    """The Panda (``panda.build_spec``) in front of a table, with coupled fingers, grasp-friendly contact
    options, camera ``scene`` and spot light ``scene``; tasks add their objects."""
    spec = panda.build_spec(robot)
    spec.option.cone = mujoco.mjtCone.mjCONE_ELLIPTIC
    spec.option.impratio = 10.0
    coupling = [0.0, 1.0] + [0.0] * (mujoco.mjNEQDATA - 2)  # finger_joint2 = 0 + 1 * finger_joint1
    spec.add_equality(type=mujoco.mjtEq.mjEQ_JOINT, objtype=mujoco.mjtObj.mjOBJ_JOINT, name1="finger_joint1",
                      name2="finger_joint2", data=coupling)
    spec.worldbody.add_geom(name="table", type=mujoco.mjtGeom.mjGEOM_BOX,
                            size=[table.size[0] / 2, table.size[1] / 2, table.height / 2],
                            pos=[*table.center, table.height / 2], rgba=[0.55, 0.4, 0.3, 1.0])
    aim = view_point(table)
    cam_pos = aim + CAMERA_OFFSET
    spec.worldbody.add_camera(name=CAMERA, pos=cam_pos, quat=look_at_quat(cam_pos, aim), fovy=50.0)
    light_pos = aim + LIGHT_OFFSET
    spec.worldbody.add_light(name=LIGHT, type=mujoco.mjtLightType.mjLIGHT_SPOT, pos=light_pos,
                             dir=(aim - light_pos) / np.linalg.norm(aim - light_pos), cutoff=60.0,
                             diffuse=[0.8, 0.8, 0.8], castshadow=False)
    return spec


def add_object(spec: mujoco.MjSpec, table: Table, half_size: Sequence[float], mass: float, friction: float,
               rgba: Sequence[float]) -> mujoco.MjsBody:
    """The free box ``object`` (standing on the table until a reset places it) with its centre site and
    ``object_pos``/``_quat``/``_linvel`` sensors."""
    body = spec.worldbody.add_body(name=OBJECT, pos=table_top(table) + [0.0, 0.0, half_size[2]])
    body.simple = 0  # ``object_mass`` runs mj_setConst, which refuses a 'simple' body whose com_offset moved
    body.add_freejoint(name=OBJECT)
    body.add_geom(name=OBJECT, type=mujoco.mjtGeom.mjGEOM_BOX, size=list(half_size), mass=mass,
                  friction=[friction, 0.01, 0.0001], condim=4, priority=1, solref=[0.005, 1.0], rgba=list(rgba))
    description.add_site(spec, OBJECT, OBJECT)
    for suffix, kind in (("pos", mujoco.mjtSensor.mjSENS_FRAMEPOS), ("quat", mujoco.mjtSensor.mjSENS_FRAMEQUAT),
                         ("linvel", mujoco.mjtSensor.mjSENS_FRAMELINVEL)):
        description.add_sensor(spec, f"{OBJECT}_{suffix}", kind, OBJECT)
    return body


def render(env: TaskEnv, env_id: int, width: int = 160, height: int = 120) -> np.ndarray:
    """RGB image ``[height, width, 3]`` of one env from camera ``scene``. Needs an OpenGL backend (headless:
    ``MUJOCO_GL=egl`` or ``osmesa``)."""
    with mujoco.Renderer(env.sim.models[env_id], height, width) as renderer:
        renderer.update_scene(env.sim.data_for(env_id), camera=CAMERA)
        return renderer.render()


# ----------------------------------------------------------------------------------------- actions, resets
def action_map(cfg: ManipulationConfig, gripper_closed: bool, model: mujoco.MjModel) -> ActionMap:
    """TCP displacement (x, y, z, rotation vector; ``ee_step`` per unit) through differential IK on the arm
    joints, then the gripper command; ``gripper_closed`` is the fingers' target before the first action. The
    targets are clamped as ``cfg.target_limits`` says, if it does."""
    offset = cfg.robot.home_joint_pos()
    offset[FINGERS] = GRIPPER.closed if gripper_closed else GRIPPER.open
    ik = EndEffectorIK(panda.EE_SITE, panda.ARM_JOINT_NAMES, cfg.ik_damping)
    scale = np.repeat(np.asarray(cfg.ee_step, dtype=np.float64), 3)
    limits = (None if cfg.target_limits is None
              else TargetBounds.for_robot(panda.SPEC, cfg.robot, model, cfg.target_limits))
    return ActionMap(np.arange(reach.ARM_JOINTS), scale, offset, ik=ik, gripper=GRIPPER, limits=limits)


def reset_arm(env: TaskEnv, env_ids: np.ndarray) -> None:
    """Arm at home plus uniform noise (``arm_joint_noise``), gripper open, everything at rest; the object back
    at its spec pose until the task places it."""
    n = len(env_ids)
    qpos = np.tile(env.default_model.qpos0, (n, 1))
    joints = env.actuator_qpos_adr.cpu().numpy()
    qpos[:, joints] = env.task_cfg.robot.home_joint_pos()
    noise = env.task_cfg.arm_joint_noise
    qpos[:, joints[:reach.ARM_JOINTS]] += env.rng.uniform(-noise, noise, (n, reach.ARM_JOINTS))
    qpos[:, joints[FINGERS]] = GRIPPER.open
    env.write_sim("qpos", env_ids, qpos)
    env.write_sim("qvel", env_ids, 0.0)


def place_object(env: TaskEnv, env_ids: np.ndarray, pos: np.ndarray, quat: np.ndarray) -> None:
    """Write the object's pose ([n, 3], [n, 4]) into those envs' state, at rest."""
    joint = env.default_model.joint(OBJECT)
    qpos, dof = joint.qposadr[0], joint.dofadr[0]
    env.write_sim("qpos", (env_ids, slice(qpos, qpos + 3)), pos)
    env.write_sim("qpos", (env_ids, slice(qpos + 3, qpos + 7)), quat)
    env.write_sim("qvel", (env_ids, slice(dof, dof + 6)), 0.0)


def tcp_poses(env: TaskEnv, env_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """TCP positions [n, 3] and rotation matrices [n, 3, 3] at those envs' joint positions as written now
    (before the reset's forward pass has refreshed the sensors)."""
    model = env.default_model
    data, site = mujoco.MjData(model), model.site(panda.EE_SITE).id
    pos, mat = np.empty((len(env_ids), 3)), np.empty((len(env_ids), 3, 3))
    written = env.sim_array("qpos")
    for k, i in enumerate(env_ids):
        data.qpos[:] = written[i]
        mujoco.mj_kinematics(model, data)
        pos[k], mat[k] = data.site_xpos[site], data.site_xmat[site].reshape(3, 3)
    return pos, mat


def place_in_gripper(env: TaskEnv, env_ids: np.ndarray, depth: np.ndarray, half_width: float) -> None:
    """Put the object between the fingers, aligned with the TCP frame, its centre ``depth`` [n] metres along
    the tool axis from the TCP, and close the fingers onto its faces (``half_width`` from the centre)."""
    pos, mat = tcp_poses(env, env_ids)
    quat = np.empty((len(env_ids), 4))
    for k in range(len(env_ids)):
        mujoco.mju_mat2Quat(quat[k], mat[k].flatten())
    place_object(env, env_ids, pos + mat[:, :, 2] * depth[:, None], quat)
    env.write_sim("qpos", np.ix_(env_ids, env.actuator_qpos_adr.cpu().numpy()[FINGERS]), half_width)


# ------------------------------------------------------------------------------------------- observations
@defined(Definition("position of the object's centre", "m", "world", "", "x, y, z"))
def object_pos(env: TaskEnv) -> torch.Tensor:
    return env.sensor(f"{OBJECT}_pos")


@defined(Definition("orientation of the object", "1", "world", "", "quaternion w, x, y, z"))
def object_quat(env: TaskEnv) -> torch.Tensor:
    return env.sensor(f"{OBJECT}_quat")


def object_linvel(env: TaskEnv) -> torch.Tensor:
    return env.sensor(f"{OBJECT}_linvel")


@defined(Definition("the object's centre minus the TCP's position", "m", "world", "", "x, y, z"))
def object_from_tcp(env: TaskEnv) -> torch.Tensor:
    return object_pos(env) - reach.ee_pos(env)


def tcp_distance(env: TaskEnv) -> torch.Tensor:
    return torch.norm(object_from_tcp(env), dim=1)


@defined(Definition("gap between the finger pads (the sum of the two finger joints' positions)", "m", "",
                    "0 when closed", "one value"))
def gripper_opening(env: TaskEnv) -> torch.Tensor:
    """Gap between the finger pads (m)."""
    return env.joint_pos[:, FINGERS].sum(dim=1, keepdim=True)


def observation_groups(goal: dict[str, ObsTerm]) -> dict[str, dict[str, ObsTerm]]:
    """Policy terms (robot, TCP, object, then the task's ``goal`` terms, then the last action) and the critic's:
    the same without noise, plus the object's velocity (privileged: a camera sees it only over frames)."""
    policy = {
        "joint_pos": ObsTerm(reach.arm_joint_pos, noise=0.005),
        "joint_vel": ObsTerm(reach.arm_joint_vel, noise=0.05, scale=0.2),
        "gripper_opening": ObsTerm(gripper_opening, noise=0.001),
        "tcp_pos": ObsTerm(reach.ee_pos, noise=0.002),
        "tcp_quat": ObsTerm(reach.ee_quat, noise=0.01),
        "object_pos": ObsTerm(object_pos, noise=0.003),
        "object_quat": ObsTerm(object_quat, noise=0.02),
        "object_from_tcp": ObsTerm(object_from_tcp, noise=0.003),
        **goal,
        "last_action": ObsTerm(mdp.last_action),
    }
    return {"policy": policy, "critic": {**noiseless(policy), "object_linvel": ObsTerm(object_linvel)}}


# ------------------------------------------------------------------------------------------ randomization
def object_mass(env: TaskEnv, env_ids: np.ndarray, cfg: EventConfig) -> None:
    """The object's mass and inertia scaled by one factor per env (lighter or denser objects). MuJoCo derives
    constants from the masses when it compiles (subtree masses, the inverse weights that size constraint
    softness); ``mj_setConst`` recomputes them, without which a heavier object's grasp turns soft and slips."""
    models, default = env.sim.per_env_models(env_ids), env.default_model
    body, data = default.body(OBJECT).id, mujoco.MjData(default)
    for i in env_ids:
        factor = env.rng.uniform(*cfg.range)
        models[i].body_mass[body] = default.body_mass[body] * factor
        models[i].body_inertia[body] = default.body_inertia[body] * factor
        mujoco.mj_setConst(models[i], data)


def scale_object_friction(model: mujoco.MjModel, default: mujoco.MjModel, rng: np.random.Generator,
                          scale: tuple[float, float]) -> None:
    """The object's sliding friction scaled; with its contact priority it governs the grasp and the table."""
    geom = model.geom(OBJECT).id
    model.geom_friction[geom, 0] = default.geom_friction[geom, 0] * rng.uniform(*scale)


def scene_randomizers(aim: np.ndarray):
    """Layer-1 randomizers (``sim.randomization``) of the camera's and the light's position, both re-aimed at
    ``aim``, and of the light's intensity."""

    def move_camera(model: mujoco.MjModel, default: mujoco.MjModel, rng: np.random.Generator,
                    offset: tuple[float, float]) -> None:
        cam = model.camera(CAMERA).id
        model.cam_pos[cam] = default.cam_pos[cam] + rng.uniform(*offset, 3)
        model.cam_quat[cam] = look_at_quat(model.cam_pos[cam], aim)

    def move_light(model: mujoco.MjModel, default: mujoco.MjModel, rng: np.random.Generator,
                   offset: tuple[float, float]) -> None:
        light = model.light(LIGHT).id
        model.light_pos[light] = default.light_pos[light] + rng.uniform(*offset, 3)
        direction = aim - model.light_pos[light]
        model.light_dir[light] = direction / np.linalg.norm(direction)

    def scale_light(model: mujoco.MjModel, default: mujoco.MjModel, rng: np.random.Generator,
                    scale: tuple[float, float]) -> None:
        light = model.light(LIGHT).id
        model.light_diffuse[light] = default.light_diffuse[light] * rng.uniform(*scale)

    return move_camera, move_light, scale_light


def randomization_events(r: Randomization, table: Table) -> dict[str, EventTerm]:
    """The arm's events (as panda-reach's), the object's mass and friction, the camera and the light."""
    move_camera, move_light, scale_light = scene_randomizers(view_point(table))
    model_events = {
        "link_mass": (dr.scale_link_masses, r.link_mass),
        "com_offset": (dr.offset_coms, r.com_offset),
        "joint_damping": (dr.scale_joint_damping, r.joint_damping),
        "joint_armature": (dr.scale_joint_armature, r.joint_armature),
        "object_friction": (scale_object_friction, r.object_friction),
        "camera_position": (move_camera, r.camera_position),
        "light_position": (move_light, r.light_position),
        "light_intensity": (scale_light, r.light_intensity),
    }
    return {
        **{name: EventTerm(dr.model_event(fn), cfg) for name, (fn, cfg) in model_events.items()},
        "object_mass": EventTerm(object_mass, r.object_mass),
        "actuator_gains": EventTerm(dr.actuator_gains, r.actuator_gains),
        "action_latency": EventTerm(dr.action_latency, r.action_latency),
    }


def task_definition(name: str, cfg: ManipulationConfig, model: mujoco.MjModel, *, success: TermFn, dropped: TermFn,
                    goal: dict[str, ObsTerm], shaping: dict[str, RewardTerm], place: EventFn,
                    reset: Callable[[TaskEnv, np.ndarray], None], gripper_closed: bool,
                    metrics: dict[str, TermFn], scene_state: dict[str, tuple[TermFn, str]] | None = None,
                    command_dim: int = 0, fixtures: tuple[str, ...] = ()) -> TaskDefinition:
    """A manipulation task from its own parts: the ``success`` and ``dropped`` terms, ``goal`` observations,
    ``shaping`` rewards, the reset event that ``place``s its object or goal (kept in play: it is the task, not
    randomization) and the ``fixtures`` it moves, ``reset`` and the ``scene_state`` beyond the object's pose.
    The rest is common: the end-effector + gripper action, observation groups, the sparse success reward and
    action-rate penalty, terminations (dropped; success where configured) and the randomization events."""
    terminations = {"dropped": DoneTerm(dropped)}
    if cfg.terminate_on_success:
        terminations["success"] = DoneTerm(success)
    return TaskDefinition(
        name=name, robot="panda", model=model, sim=cfg.sim,
        action=action_map(cfg, gripper_closed, model),
        default_joint_pos=cfg.robot.home_joint_pos(),
        observations=observation_groups(goal),
        rewards={
            "success": RewardTerm(success, cfg.rewards.success),
            **shaping,
            "action_rate": RewardTerm(mdp.action_rate_l2, cfg.rewards.action_rate),
        },
        terminations=terminations,
        events={
            place.__name__: EventTerm(place, EventConfig("reset"), randomization=False),
            **randomization_events(cfg.randomization, cfg.table),
            **dr.shift_events(cfg.randomization, model),
        },
        reset=reset,
        success=success,
        command_dim=command_dim,
        metrics=metrics,
        environment_state={"object_pos": (object_pos, "xyz"), "object_quat": (object_quat, "wxyz"),
                           **(scene_state or {})},
        fixtures=fixtures,
        observation_noise=cfg.randomization.observation_noise,
        randomize=cfg.randomization.enabled,
        cfg=cfg,
    )


# -------------------------------------------------------------------------------------- scripted experts
def heading(quat: torch.Tensor) -> torch.Tensor:
    """Yaw (rad) of a frame's x axis in the world's horizontal plane."""
    w, x, y, z = quat.unbind(-1)
    return torch.atan2(2 * (x * y + w * z), 1 - 2 * (y * y + z * z))


def wrap(angle: torch.Tensor, period: float) -> torch.Tensor:
    """``angle`` shifted by whole periods into [-period / 2, period / 2)."""
    return torch.remainder(angle + period / 2, period) - period / 2


def quarter_turn_yaw(target: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
    """The yaw nearest ``current`` that matches ``target`` up to quarter turns (square objects)."""
    return current + wrap(target - current, torch.pi / 2)


def pointing_down(yaw: torch.Tensor) -> torch.Tensor:
    """Orientation with z pointing down and x at heading ``yaw``: a half turn about x, then ``yaw`` about z."""
    return torch.stack([torch.zeros_like(yaw), torch.cos(yaw / 2), torch.sin(yaw / 2), torch.zeros_like(yaw)], -1)


class ScriptedExpert:
    """Base of the scripted experts: a batched state machine (``phase`` and the steps spent in it, per env)
    whose subclass turns the env's state (object poses read directly) into TCP targets; ``servo`` turns those
    into actions. Deterministic: the same env state gives the same actions."""

    POSITION_GAIN = 0.3  # share of the position error commanded per control step (stable with a step of latency)
    ROTATION_GAIN = 0.3

    def __init__(self, env: TaskEnv):
        self.phase = torch.zeros(env.num_envs, dtype=torch.long, device=env.device)
        self.phase_steps = torch.zeros_like(self.phase)

    def reset(self, env_ids: np.ndarray | torch.Tensor) -> None:
        """Start those envs' script from its first phase."""
        self.phase[env_ids] = 0
        self.phase_steps[env_ids] = 0

    def act(self, env: TaskEnv) -> torch.Tensor:
        """Actions [N, action dim] for the env's current state. Envs that have just started an episode
        (an automatic reset) start their script over."""
        self.reset(torch.nonzero(env.episode_length == 0).flatten())
        action = self.script(env)
        self.phase_steps += 1
        return action

    def script(self, env: TaskEnv) -> torch.Tensor:
        raise NotImplementedError

    def advance(self, phase: int, done: torch.Tensor) -> None:
        """Envs in ``phase`` for which ``done`` holds move on to the next phase."""
        moving = (self.phase == phase) & done
        self.phase[moving] = phase + 1
        self.phase_steps[moving] = 0

    def servo(self, env: TaskEnv, position_error: torch.Tensor, rotation_error: torch.Tensor,
              max_step: torch.Tensor, close: torch.Tensor) -> torch.Tensor:
        """Action moving the TCP a share of ``position_error`` (m, at most ``max_step`` [N] m this step) and
        turning it a share of ``rotation_error`` (rotation vector, rad), the gripper closed where ``close``."""
        pos_step, rot_step = env.task_cfg.ee_step
        move = position_error * self.POSITION_GAIN
        length = torch.norm(move, dim=1, keepdim=True).clamp(min=1e-9)
        move = move * torch.clamp(max_step.unsqueeze(1) / length, max=1.0)
        gripper = torch.where(close, 1.0, -1.0).unsqueeze(1)
        action = torch.cat([move / pos_step, rotation_error * self.ROTATION_GAIN / rot_step, gripper], dim=1)
        return torch.clamp(action, -1.0, 1.0)


def first_episode_success(env: TaskEnv, expert: ScriptedExpert) -> torch.Tensor:
    """Reset ``env`` and run ``expert`` until every env has ended one episode; [N] 1.0 where it succeeded."""
    env.reset()
    outcome = torch.full((env.num_envs,), float("nan"), device=env.device)
    while torch.isnan(outcome).any():
        _, _, _, _, info = env.step(expert.act(env))
        if "episode" in info:
            first = info["done"] & torch.isnan(outcome)
            outcome[first] = info["episode"]["success"][first]
    return outcome
