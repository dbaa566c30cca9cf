"""The feature schema of simulated and recorded robot data: how a robot's state, actions and command are named
in a dataset (``observation.state`` as ``JOINT.pos``, ``JOINT.vel``, then a floating base's fields), where each
name lives in a MuJoCo model's state, and what each recorded vector holds (``FEATURE_DEFINITIONS``).

``sim_features`` names a task's features, ``SimFrameReader`` reads them from an env (or from the deploy side's
view of a measured robot, ``robostack.real.observation.ObservationBuilder``): the recorder of demonstrations, a
diffusion policy's inputs and a converted bag all share it, so their data merge.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from robostack.data.dataset import DatasetError

BASE_STATE = {"base_position": ("xyz", "qpos", 0), "base_orientation": ("wxyz", "qpos", 3),
              "base_linear_velocity": ("xyz", "qvel", 0), "base_angular_velocity": ("xyz", "qvel", 3)}


# ------------------------------------------------------------------------------ robot state layout


def state_names(joints: Sequence[str], velocities: bool = True, base: Sequence[str] = ()) -> list[str]:
    """``observation.state`` names: ``JOINT.pos`` (then ``JOINT.vel``) per joint, then the floating base
    fields ``base`` (keys of ``BASE_STATE``) per component."""
    names = [f"{joint}.pos" for joint in joints] + ([f"{joint}.vel" for joint in joints] if velocities else [])
    return names + [f"{field}.{axis}" for field in base for axis in BASE_STATE[field][0]]


def action_names(joints: Sequence[str], count: int) -> list[str]:
    """``action`` names: ``JOINT.target`` when there is one joint per actuator (ros2_control forward
    controllers, in actuator order), else ``actuator_I``."""
    if len(joints) == count:
        return [f"{joint}.target" for joint in joints]
    return [f"actuator_{i}" for i in range(count)]


def command_names(count: int) -> list[str]:
    return [f"command_{i}" for i in range(count)]


def vector_feature(names: Sequence[str]) -> dict[str, Any]:
    return {"dtype": "float32", "shape": [len(names)], "names": list(names)}


class StateMap:
    """Where each ``observation.state`` entry lives in a MuJoCo model's qpos / qvel, found by name."""

    def __init__(self, model: Any, names: Sequence[str], where: str):
        import mujoco

        free = _free_joint(model)
        self.pos_columns: list[int] = []
        self.pos_addresses: list[int] = []
        self.vel_columns: list[int] = []
        self.vel_addresses: list[int] = []
        for column, name in enumerate(names):
            owner, _, part = name.rpartition(".")
            if owner in BASE_STATE:
                axes, array, offset = BASE_STATE[owner]
                if free is None or part not in axes:
                    raise DatasetError(f"{where}: state entry {name!r}: the model has no floating base" if free is None
                                       else f"{where}: state entry {name!r}: no component {part!r} (axes {axes})")
                start = model.jnt_qposadr[free] if array == "qpos" else model.jnt_dofadr[free]
                in_qpos, address = array == "qpos", int(start + offset + axes.index(part))
            elif part in ("pos", "vel"):
                joint = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_JOINT, owner)
                if joint < 0:
                    raise DatasetError(f"{where}: state entry {name!r}: the model has no joint {owner!r}")
                in_qpos = part == "pos"
                address = int(model.jnt_qposadr[joint] if in_qpos else model.jnt_dofadr[joint])
            else:
                raise DatasetError(f"{where}: state entry {name!r} is not JOINT.pos, JOINT.vel or a base field "
                                   f"({', '.join(BASE_STATE)})")
            columns, addresses = ((self.pos_columns, self.pos_addresses) if in_qpos
                                  else (self.vel_columns, self.vel_addresses))
            columns.append(column)
            addresses.append(address)
        self.size = len(names)

    def read(self, qpos: np.ndarray, qvel: np.ndarray) -> np.ndarray:
        """States [N, D] of a batch from its qpos [N, nq] and qvel [N, nv]."""
        out = np.empty((qpos.shape[0], self.size))
        out[:, self.pos_columns] = qpos[:, self.pos_addresses]
        out[:, self.vel_columns] = qvel[:, self.vel_addresses]
        return out

    def write(self, qpos: np.ndarray, qvel: np.ndarray, state: np.ndarray) -> None:
        """Set one env's qpos [nq] and qvel [nv] from a state vector."""
        qpos[self.pos_addresses] = state[self.pos_columns]
        qvel[self.vel_addresses] = state[self.vel_columns]


def _free_joint(model: Any) -> int | None:
    """The floating base's joint (MuJoCo free joint), if the model has one."""
    import mujoco

    free = [j for j in range(model.njnt) if model.jnt_type[j] == mujoco.mjtJoint.mjJNT_FREE]
    return free[0] if free else None


def _actuated_joints(model: Any) -> list[str]:
    import mujoco

    return [model.joint(int(model.actuator_trnid[i, 0])).name for i in range(model.nu)
            if model.actuator_trntype[i] == mujoco.mjtTrn.mjTRN_JOINT]


# What each recorded vector feature holds (a chunk bundle's inputs state it, so a reader without RoboStack can
# build them): robostack.sim.terms.Definition fields.
FEATURE_DEFINITIONS = {
    "observation.state": {
        "quantity": "the robot's measured state", "units": "rad, rad/s, m, 1, m/s, rad/s (per component)",
        "frame": "", "reference": "joint positions absolute (not relative to a default pose)",
        "components": "as 'names' says: <joint>.pos (rad; m for a prismatic joint) for every actuated joint, then "
                      "<joint>.vel (rad/s), then for a floating base base_position.x/y/z (world, m), "
                      "base_orientation.w/x/y/z (quaternion, world), base_linear_velocity.x/y/z (world, m/s), "
                      "base_angular_velocity.x/y/z (base frame, rad/s)"},
    "observation.command": {"quantity": "the task command: what the task's command term states (its goal, target or "
                                        "velocity)", "units": "as that term states", "frame": "", "reference": "",
                            "components": "command_0 .. command_(n-1)"},
    "observation.ee_pose": {"quantity": "pose of the end effector (the IK site)", "units": "m, then 1",
                            "frame": "world", "reference": "", "components": "x, y, z, then quaternion qw, qx, qy, qz"},
    "observation.environment_state": {
        "quantity": "the scene's objects as a perception stack reports them", "units": "m, then 1", "frame": "world",
        "reference": "", "components": "as 'names' says: <object>_pos.x/y/z (m), <object>_quat.w/x/y/z"},
}


def sim_features(env: Any) -> dict[str, dict[str, Any]]:
    """``observation.state``, ``action`` and (if the task has them) ``observation.command``,
    ``observation.ee_pose`` (the IK site of an end-effector task: position, quaternion wxyz) and
    ``observation.environment_state`` (objects in the scene) of a ``TaskEnv``; state and action named as
    ``convert_bag`` names them for the same robot."""
    model = env.default_model
    joints = _actuated_joints(model)
    base = list(BASE_STATE) if _free_joint(model) is not None else []
    features = {"observation.state": vector_feature(state_names(joints, True, base)),
                "action": vector_feature(action_names(joints, model.nu))}
    if env.task.command_dim:
        features["observation.command"] = vector_feature(command_names(env.task.command_dim))
    if env.task.action.ik is not None:
        site = env.task.action.ik.site
        features["observation.ee_pose"] = vector_feature([f"{site}.{axis}" for axis in ("x", "y", "z", "qw", "qx",
                                                                                        "qy", "qz")])
    if env.task.environment_state:
        features["observation.environment_state"] = vector_feature(
            [f"{name}.{axis}" for name, (_, axes) in env.task.environment_state.items() for axis in axes])
    return features


class SimFrameReader:
    """Reads ``sim_frame`` from one ``TaskEnv`` again and again: the name-to-address mapping is found once
    (policies acting through recorded features read a frame every control step). It reads what term
    functions read (``qpos``, ``qvel``, ``command``, ``sensor``), so a deploy-side view of a measured robot
    (``robostack.real.observation.ObservationBuilder``) gives the same frame."""

    def __init__(self, env: Any):
        self.env = env
        names = sim_features(env)["observation.state"]["names"]
        self.state_map = StateMap(env.default_model, names, env.task.name)
        ik = env.task.action.ik
        self.ee_sensors = [f"{ik.site}_{part}" for part in ("pos", "quat")] if ik is not None else []

    def read(self) -> dict[str, np.ndarray]:
        env = self.env
        frame = {"observation.state": self.state_map.read(env.qpos.cpu().numpy(), env.qvel.cpu().numpy()
                                                          ).astype(np.float32)}
        if env.task.command_dim:
            frame["observation.command"] = env.command.cpu().numpy().astype(np.float32)
        if self.ee_sensors:  # the end effector's pose, as forward kinematics gives it
            frame["observation.ee_pose"] = np.concatenate(
                [env.sensor(name).cpu().numpy() for name in self.ee_sensors], axis=1).astype(np.float32)
        if env.task.environment_state:
            frame["observation.environment_state"] = np.concatenate(
                [term(env).cpu().numpy() for term, _ in env.task.environment_state.values()], axis=1
            ).astype(np.float32)
        return frame


def sim_frame(env: Any) -> dict[str, np.ndarray]:
    """The state (and command) every env of a ``TaskEnv`` is in now, per ``sim_features``: record it before a
    step, then ``env.ctrl`` (the controls that step applied) as the frame's action."""
    return SimFrameReader(env).read()
