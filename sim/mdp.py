"""Term functions and math shared by several tasks (observations, rewards, terminations).

Quaternions are MuJoCo's (w, x, y, z). A floating base's ``qvel[3:6]`` is already in the body frame.
"""
from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch

from robostack.sim.terms import Definition, defined

if TYPE_CHECKING:
    from robostack.sim.task_env import TaskEnv


# ----- quaternion math (batched torch) -----
def quat_rotate_inverse(q: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Rotate world-frame vectors ``v`` into the frame whose orientation is ``q``."""
    w, xyz = q[:, :1], q[:, 1:]
    t = 2.0 * torch.cross(xyz, v, dim=-1)
    return v - w * t + torch.cross(xyz, t, dim=-1)


def quat_to_matrix(q: torch.Tensor) -> torch.Tensor:
    """[N, 4] -> [N, 3, 3] rotation matrices (body to world)."""
    w, x, y, z = q.unbind(-1)
    return torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], dim=-1).reshape(-1, 3, 3)


@functools.lru_cache(maxsize=None)
def hamilton_table(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """[16, 4]: row 4 i + j holds the sign with which ``a_i b_j`` enters each component of the product ``a b``;
    one per dtype and device, so a product on the GPU copies nothing to it. Never an inference tensor (the
    first call may come from a deploy-side tick in inference mode): later products may be differentiated."""
    terms = {0: "+ww -xx -yy -zz", 1: "+wx +xw +yz -zy", 2: "+wy -xz +yw +zx", 3: "+wz +xy -yx +zw"}
    axis = "wxyz".index
    with torch.inference_mode(False):
        table = torch.zeros(4, 4, 4, dtype=dtype)
        for k, products in terms.items():
            for sign, i, j in products.split():
                table[axis(i), axis(j), k] = 1.0 if sign == "+" else -1.0
        return table.reshape(16, 4).to(device)


def quat_mul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Hamilton product of (w, x, y, z) quaternions, [N, 4] x [N, 4] -> [N, 4]: the 16 pairwise products times
    a sign table, three tensor operations instead of 28 (5 against 34 us for one robot on the deploy side, the
    same results and time for 4096 envs)."""
    pairs = (a.unsqueeze(-1) * b.unsqueeze(-2)).reshape(*a.shape[:-1], 16)
    return pairs @ hamilton_table(pairs.dtype, pairs.device)


def quat_error_angle(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Smallest rotation angle (rad) between orientations ``a`` and ``b``."""
    dot = torch.abs((a * b).sum(-1)).clamp(max=1.0)
    return 2.0 * torch.acos(dot)


def quat_error_vector(current: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Rotation vector (axis * angle, world frame) taking ``current`` to ``target``."""
    conj = current * torch.tensor([1.0, -1.0, -1.0, -1.0], device=current.device)
    err = quat_mul(target, conj)
    err = err * torch.sign(err[:, :1] + 1e-12)  # shortest way round
    sin_half = err[:, 1:].norm(dim=-1, keepdim=True).clamp(min=1e-9)
    angle = 2.0 * torch.atan2(sin_half, err[:, :1])
    return err[:, 1:] / sin_half * angle


def rotation_vector_quat(v: torch.Tensor) -> torch.Tensor:
    """The (w, x, y, z) quaternion of rotation vectors (axis * angle) [N, 3]."""
    angle = v.norm(dim=-1, keepdim=True)
    axis = v / angle.clamp(min=1e-12)
    return torch.cat([torch.cos(angle / 2), axis * torch.sin(angle / 2)], dim=-1)


def random_quat_within(rng: np.random.Generator, n: int, max_angle: float) -> np.ndarray:
    """Uniformly random axes with angles uniform in [0, max_angle]: [n, 4] (w, x, y, z)."""
    axis = rng.normal(size=(n, 3))
    axis /= np.linalg.norm(axis, axis=1, keepdims=True)
    angle = rng.uniform(0.0, max_angle, n)
    return np.concatenate([np.cos(angle / 2)[:, None], axis * np.sin(angle / 2)[:, None]], axis=1)


def yaw_quat(yaw: np.ndarray) -> np.ndarray:
    return np.stack([np.cos(yaw / 2), np.zeros_like(yaw), np.zeros_like(yaw), np.sin(yaw / 2)], axis=1)


# ----- floating-base terms -----
def base_pos(env: TaskEnv) -> torch.Tensor:
    return env.qpos[:, 0:3]


def base_quat(env: TaskEnv) -> torch.Tensor:
    return env.qpos[:, 3:7]


@defined(Definition("linear velocity of the base", "m/s", "world", components="x, y, z"))
def base_lin_vel_world(env: TaskEnv) -> torch.Tensor:
    return env.qvel[:, 0:3]


@defined(Definition("linear velocity of the base", "m/s", "base", components="x, y, z"))
def base_lin_vel(env: TaskEnv) -> torch.Tensor:
    """Linear velocity in the body frame."""
    return quat_rotate_inverse(base_quat(env), env.qvel[:, 0:3])


@defined(Definition("angular velocity of the base (what a gyroscope on it measures)", "rad/s", "base",
                    "right-handed about each axis", "x, y, z"))
def base_ang_vel(env: TaskEnv) -> torch.Tensor:
    """Angular velocity in the body frame."""
    return env.qvel[:, 3:6]


@defined(Definition("unit vector along gravity", "1", "base", "(0, 0, -1) when the base is level",
                    "x, y, z"))
def projected_gravity(env: TaskEnv) -> torch.Tensor:
    """Gravity direction seen from the body: (0, 0, -1) when level. What an IMU's attitude filter gives."""
    down = torch.zeros(env.num_envs, 3, device=env.device)
    down[:, 2] = -1.0
    return quat_rotate_inverse(base_quat(env), down)


def base_height(env: TaskEnv) -> torch.Tensor:
    return env.qpos[:, 2:3]


# ----- joint and action terms -----
JOINT_ORDER = "one per actuated joint, in joint_names order"


@defined(Definition("joint positions", "rad (m for a prismatic joint)", "",
                    "minus default_joint_pos (the default pose reads zero)", JOINT_ORDER))
def joint_pos_rel(env: TaskEnv) -> torch.Tensor:
    return env.joint_pos - env.default_joint_pos


@defined(Definition("joint position targets commanded at the previous control step (after the action map "
                    "and its limits)", "rad (m for a prismatic joint)", "",
                    "minus default_joint_pos; the action map's offset at the start of an episode", JOINT_ORDER))
def joint_target_rel(env: TaskEnv) -> torch.Tensor:
    """Commanded joint targets (before latency) minus the default pose: what a relative action adds to."""
    return env.ctrl_target - env.default_joint_pos


@defined(Definition("joint velocities", "rad/s (m/s for a prismatic joint)", "", "", JOINT_ORDER))
def joint_vel(env: TaskEnv) -> torch.Tensor:
    return env.joint_vel


@defined(Definition("the policy's previous action", "1 (each in [-1, 1])", "",
                    "zeros at the start of an episode", "in action order (action.terms)"))
def last_action(env: TaskEnv) -> torch.Tensor:
    return env.action


@defined(Definition("the policy's most recent actions", "1 (each in [-1, 1])", "",
                    "zeros for steps before the episode's first action",
                    "newest first; each action in action order (action.terms); flattened"))
def action_history(env: TaskEnv) -> torch.Tensor:
    """The last ``TaskDefinition.action_history`` actions, newest first, flattened. Lets a memoryless policy
    infer disturbances (thrust mismatch, wind) from what it commanded versus how the state moved, as in
    "Learning to Fly in Seconds"."""
    return env.action_history.reshape(env.num_envs, -1)


def within(error: Callable[[TaskEnv], torch.Tensor], radius: float) -> Callable[[TaskEnv], torch.Tensor]:
    """``error`` where its norm is below ``radius``, zero elsewhere: what an I term integrates, so the
    approach from a far start does not wind it up."""
    def term(env: TaskEnv) -> torch.Tensor:
        value = error(env)
        return value * (torch.norm(value, dim=1, keepdim=True) < radius)

    return term


def integral(name: str, of: Definition) -> Callable[[TaskEnv], torch.Tensor]:
    """Observation term reading ``TaskDefinition.integrals[name]``, the running integral of a quantity whose
    definition is ``of``; the bundle metadata records ``name`` (with the integral's limit and step)."""
    def term(env: TaskEnv) -> torch.Tensor:
        return env.integrals[name]

    term.integral_of = name
    term.definition = Definition(
        f"running integral over the episode of: {of.quantity}", f"({of.units}) x s", of.frame,
        f"zero at the start of an episode; after each control step (not before the first) it adds control_dt "
        f"times the quantity ({of.reference or 'as defined'}), then is clipped to +-integral.limit",
        of.components)
    return term


def command(env: TaskEnv) -> torch.Tensor:
    return env.command


def action_rate_l2(env: TaskEnv) -> torch.Tensor:
    return torch.sum((env.action - env.last_action) ** 2, dim=1)


def action_l2(env: TaskEnv) -> torch.Tensor:
    return torch.sum(env.action ** 2, dim=1)


def joint_vel_l2(env: TaskEnv) -> torch.Tensor:
    return torch.sum(env.joint_vel ** 2, dim=1)


def ang_vel_xy_l2(env: TaskEnv) -> torch.Tensor:
    return torch.sum(base_ang_vel(env)[:, :2] ** 2, dim=1)


def lin_vel_z_l2(env: TaskEnv) -> torch.Tensor:
    return base_lin_vel(env)[:, 2] ** 2


def flat_orientation_l2(env: TaskEnv) -> torch.Tensor:
    return torch.sum(projected_gravity(env)[:, :2] ** 2, dim=1)


def is_terminated(env: TaskEnv) -> torch.Tensor:
    """1 on the step an episode fails. With a negative weight it makes failing worse than any survival."""
    return env.terminated.float()


def alive(env: TaskEnv) -> torch.Tensor:
    return torch.ones(env.num_envs, device=env.device)


def survived_episode(env: TaskEnv) -> torch.Tensor:
    """Success for tasks whose goal is to last: the episode ran to its time limit."""
    return env.episode_length >= env.max_episode_length
