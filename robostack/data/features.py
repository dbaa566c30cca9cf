"""The feature schema of simulated and recorded robot data: how a robot's state, actions and command are named
in a dataset (``observation.state`` as ``JOINT.pos``, ``JOINT.vel``, then the robot's floating base's fields
``base_position.x`` ..., then those of any other free body in the scene by its body's name, e.g. a cube's
``object_position.x`` ...), where each name lives in a MuJoCo model's state, and what each recorded vector holds
(``FEATURE_DEFINITIONS``). Data and bundles written before objects had names of their own call the one free
body of a fixed-base robot's scene ``base_*``: ``StateMap`` still reads those names (as that body).

``sim_features`` names a task's features, ``SimFrameReader`` reads them from an env (or from the deploy side's
view of a measured robot, ``robostack.real.observation.ObservationBuilder``): the recorder of demonstrations, a
diffusion policy's inputs and a converted bag all share it, so their data merge.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from robostack.data.dataset import DatasetError

# A free joint's state entries: components, the MuJoCo array they live in, offset in the free joint's part.
FREE_BODY_STATE = {"position": ("xyz", "qpos", 0), "orientation": ("wxyz", "qpos", 3),
                   "linear_velocity": ("xyz", "qvel", 0), "angular_velocity": ("xyz", "qvel", 3)}
BASE = "base"  # the robot's floating base; another free body is named by its body
BASE_STATE = {f"{BASE}_{field}": layout for field, layout in FREE_BODY_STATE.items()}  # RobotState's base fields
# deployment logs of a policy acting in its task's action space (``robostack data convert``): that action behind each
# frame's controls (the human's on a joint-level takeover's frames) and the policy's base's proposal
TASK_ACTION = "action.task"
BASE_ACTION = "action.base"


# ------------------------------------------------------------------------------ robot state layout


def state_names(joints: Sequence[str], velocities: bool = True, base: Sequence[str] = (),
                objects: Sequence[str] = ()) -> list[str]:
    """``observation.state`` names: ``JOINT.pos`` (then ``JOINT.vel``) per joint, then the floating base
    fields ``base`` (keys of ``BASE_STATE``) per component, then every field of each free body in ``objects``."""
    names = [f"{joint}.pos" for joint in joints] + ([f"{joint}.vel" for joint in joints] if velocities else [])
    names += [f"{field}.{axis}" for field in base for axis in BASE_STATE[field][0]]
    return names + [f"{body}_{field}.{axis}" for body in objects for field, (axes, _, _) in FREE_BODY_STATE.items()
                    for axis in axes]


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

        free = free_bodies(model)
        self.pos_columns: list[int] = []
        self.pos_addresses: list[int] = []
        self.vel_columns: list[int] = []
        self.vel_addresses: list[int] = []
        for column, name in enumerate(names):
            owner, _, part = name.rpartition(".")
            field = next((f for f in FREE_BODY_STATE if owner.endswith(f"_{f}")), None)
            if part not in ("pos", "vel") and field is not None:
                axes, array, offset = FREE_BODY_STATE[field]
                joint = _named_free_joint(model, free, owner[:-len(field) - 1], name, where)
                if part not in axes:
                    raise DatasetError(f"{where}: state entry {name!r}: no component {part!r} (axes {axes})")
                start = model.jnt_qposadr[joint] if array == "qpos" else model.jnt_dofadr[joint]
                in_qpos, address = array == "qpos", int(start + offset + axes.index(part))
            elif part in ("pos", "vel"):
                joint = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_JOINT, owner)
                if joint < 0:
                    raise DatasetError(f"{where}: state entry {name!r}: the model has no joint {owner!r}")
                in_qpos = part == "pos"
                address = int(model.jnt_qposadr[joint] if in_qpos else model.jnt_dofadr[joint])
            else:
                raise DatasetError(f"{where}: state entry {name!r} is not JOINT.pos, JOINT.vel or BODY_FIELD.AXIS "
                                   f"of a free body (FIELD one of {', '.join(FREE_BODY_STATE)})")
            columns, addresses = ((self.pos_columns, self.pos_addresses) if in_qpos
                                  else (self.vel_columns, self.vel_addresses))
            columns.append(column)
            addresses.append(address)
        self.size = len(names)

    def layout(self) -> tuple[list[int], ...]:
        """Where each column lives: two state maps with the same layout read the same values."""
        return self.pos_columns, self.pos_addresses, self.vel_columns, self.vel_addresses

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


def state_columns(model: Any, names: Sequence[str], wanted: Sequence[str], where: str) -> list[int]:
    """The columns of a state whose entries are ``names`` that hold the values ``wanted`` names (a free body
    spelt either way); ``DatasetError`` names the first it does not hold."""
    have, want = StateMap(model, names, where), StateMap(model, wanted, where)
    found = {**{("qpos", a): c for c, a in zip(have.pos_columns, have.pos_addresses)},
             **{("qvel", a): c for c, a in zip(have.vel_columns, have.vel_addresses)}}
    placed = {**{c: ("qpos", a) for c, a in zip(want.pos_columns, want.pos_addresses)},
              **{c: ("qvel", a) for c, a in zip(want.vel_columns, want.vel_addresses)}}
    missing = [wanted[c] for c in range(len(wanted)) if placed[c] not in found]
    if missing:
        raise DatasetError(f"{where}: the state ({', '.join(names)}) does not hold {missing}")
    return [found[placed[c]] for c in range(len(wanted))]


def same_state_layout(model: Any, names: Sequence[str], other: Sequence[str]) -> bool:
    """Whether two lists of ``observation.state`` names read the same values of ``model`` (a bundle or dataset
    written with the older names of a scene's free body against today's)."""
    try:
        return StateMap(model, names, "").layout() == StateMap(model, other, "").layout()
    except DatasetError:
        return False


def free_bodies(model: Any) -> tuple[int | None, list[int]]:
    """The robot's floating base (the free joint above its actuated joints; None for a fixed-base robot) and
    the other free joints (objects in the scene), MuJoCo joint ids in model order."""
    import mujoco

    free = [j for j in range(model.njnt) if model.jnt_type[j] == mujoco.mjtJoint.mjJNT_FREE]
    robot_bodies = set()
    for i in range(model.nu):
        if model.actuator_trntype[i] == mujoco.mjtTrn.mjTRN_JOINT:
            body = int(model.jnt_bodyid[model.actuator_trnid[i, 0]])
            while body and body not in robot_bodies:
                robot_bodies.add(body)
                body = int(model.body_parentid[body])
    base = next((j for j in free if int(model.jnt_bodyid[j]) in robot_bodies), None)
    return base, [j for j in free if j != base]


def _named_free_joint(model: Any, free: tuple[int | None, list[int]], body: str, name: str, where: str) -> int:
    """The free joint of ``body`` (``base``: the robot's floating base; for a fixed-base robot whose scene has
    one free body, that body: the name data written before objects were named gave it); ``free``: the model's
    ``free_bodies``."""
    base, objects = free
    if body == BASE:
        if base is not None:
            return base
        if len(objects) == 1:
            return objects[0]
        raise DatasetError(f"{where}: state entry {name!r}: the model has no floating base")
    found = next((j for j in objects if model.body(int(model.jnt_bodyid[j])).name == body), None)
    if found is None:
        raise DatasetError(f"{where}: state entry {name!r}: the model has no free body {body!r} "
                           f"(free bodies: {[model.body(int(model.jnt_bodyid[j])).name for j in objects]})")
    return found


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
                      "base_angular_velocity.x/y/z (base frame, rad/s), then the same four for every other free "
                      "body of the scene, prefixed with its name instead of base (e.g. object_position.x)"},
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
    base, objects = free_bodies(model)
    features = {"observation.state": vector_feature(state_names(
                    joints, True, list(BASE_STATE) if base is not None else [],
                    [model.body(int(model.jnt_bodyid[j])).name for j in objects])),
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
        self.state_names = sim_features(env)["observation.state"]["names"]
        self.state_map = StateMap(env.default_model, self.state_names, env.task.name)
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
