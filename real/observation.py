"""A policy's observation and controls on one real (or rehearsed) robot, from the bundle alone.

``ObservationBuilder`` rebuilds the bundle's task from the task config stored in its metadata and evaluates
the task's *own* observation term functions on a one-robot view of measured state: the same code that
built the observation in training, so deployment cannot drift from it. Everything else (term order,
scales, joint order, action mapping, control rate) comes from the bundle's metadata.

The view offers what term functions read from a ``TaskEnv``: ``qpos`` / ``qvel`` in the model's layout
(a floating base's linear velocity in the world frame, its angular velocity in the body frame), sensors
computed by MuJoCo's kinematics from that state, ``command``, and the policy-side state (recent actions,
commanded targets, running integrals) kept by the shared ``PolicyState``.
"""
from __future__ import annotations

from functools import cached_property
from typing import Any, Mapping, Sequence

import mujoco
import numpy as np
import torch

from robostack import sim
from robostack.bundle import ACTOR_CRITIC, CHUNK, RESIDUAL, RESIDUAL_BASE_TERM
from robostack.bundle.describe import rebuilt_mismatches
from robostack.data.features import SimFrameReader, same_state_layout, sim_features, state_columns
from robostack.real.robot_state import BodyState, Pose, RobotState
from robostack.sim.joint_limits import TargetBounds
from robostack.sim.measured_task import MeasuredTask


# A free body's state fields and their sizes.
BODY_FIELDS = (("position", 3), ("orientation", 4), ("linear_velocity", 3), ("angular_velocity", 3))


class ObservationError(ValueError):
    """The measured state cannot make the bundle's observation (a missing joint, a wrong size, NaN)."""


def free_joints(model: mujoco.MjModel) -> tuple[int | None, int | None]:
    """(floating base, object): the free joints of a task's model. A free joint 0 is the robot's base; the
    first other free joint is the object it manipulates (the cube of panda-lift)."""
    free = [j for j in range(model.njnt) if model.jnt_type[j] == mujoco.mjtJoint.mjJNT_FREE]
    base = 0 if free[:1] == [0] else None
    objects = [j for j in free if j != base]
    return base, objects[0] if objects else None


def _check_body(state: BodyState | None, why: str, fields: str) -> None:
    """Every field of a free body's measured state has its size; ``fields`` prefixes their names."""
    for name, size in BODY_FIELDS:
        value = None if state is None else getattr(state, name)
        if value is None or np.asarray(value).shape != (size,):
            raise ObservationError(f"{why}: state.{fields}{name} must be {size} values, got {value!r}")


def _write_body(state: BodyState, qpos: np.ndarray, qvel: np.ndarray, qpos_adr: int, dof_adr: int) -> None:
    quat = np.asarray(state.orientation, dtype=np.float64)
    qpos[0, qpos_adr:qpos_adr + 3] = state.position
    qpos[0, qpos_adr + 3:qpos_adr + 7] = quat / max(np.linalg.norm(quat), 1e-9)
    qvel[0, dof_adr:dof_adr + 3] = state.linear_velocity
    qvel[0, dof_adr + 3:dof_adr + 6] = state.angular_velocity


def build_task(metadata: Mapping[str, Any]):
    """The ``TaskDefinition`` a bundle was trained on, from its stored task config (play variant: no noise)."""
    cfg = sim.load_task_config(metadata["task"], play=True, config=metadata["task_config"])
    return sim.task(metadata["task"]).build(cfg)


class ObservationBuilder(MeasuredTask):
    """Observation vector and actuator controls for one robot, as the bundle's task computes them."""

    error = ObservationError

    def __init__(self, metadata: Mapping[str, Any]):
        super().__init__(build_task(metadata))
        self.metadata = metadata
        self.control_dt = float(metadata["control_dt"])
        self.max_episode_length = int(metadata["max_episode_length"])
        model = self.model
        self._joint_qpos_adr, self._joint_dof_adr = self.actuator_qpos_adr.numpy(), self.actuator_dof_adr.numpy()
        self.joint_names: list[str] = list(metadata["joint_names"])
        base, obj = free_joints(model)
        self.floating_base = base is not None
        self.has_object = obj is not None  # the measured state must then carry the object's
        self._object_adr = (int(model.jnt_qposadr[obj]), int(model.jnt_dofadr[obj])) if obj is not None else None
        self._fixture_ids = {name: model.body(name).id for name in self.task.fixtures}  # moved in this model
        self._terms = self.task.observations["policy"]
        self.kind = metadata.get("kind", ACTOR_CRITIC)
        self._check_layout()

    def _check_layout(self) -> None:
        """The task rebuilt here must drive the robot as the bundle says (actuators, joints, default pose, gains,
        action map) and produce exactly the observation its policy was trained on: its policy terms (a
        residual's: then the base's action), or for a chunk bundle the recorded features."""
        differing = rebuilt_mismatches(self.metadata, self.task, self.model)
        if differing:
            raise ObservationError(f"bundle for task {self.task.name!r}: its {', '.join(differing)} differ from what "
                                   "the task rebuilt from its stored config gives (a bundle without its robot "
                                   "configuration and a configs/robots file edited since export?); re-export it")
        terms = self.metadata["observation"]["terms"]
        if self.kind == CHUNK:
            features = sim_features(self)
            wrong = [t["name"] for t in terms if features.get(t["name"], {}).get("names") != t.get("names") and not (
                t["name"] == "observation.state"  # older names of the same values (a scene's free body as base_*)
                and same_state_layout(self.model, t.get("names") or [], features[t["name"]]["names"]))]
            if wrong:
                recorded = {key: feature["names"] for key, feature in features.items()}
                raise ObservationError(f"bundle for task {self.task.name!r}: its inputs {wrong} are not what the task "
                                       f"rebuilt from its config records ({recorded})")
            _ = self.frame_reader  # a chunk bundle reads the state through it: made now, to refuse a layout here
            return
        listed = [(t["name"], int(t["dim"])) for t in terms]
        built = self._term_widths()
        if self.kind == RESIDUAL:
            built.append((RESIDUAL_BASE_TERM, self.action_dim))
        if listed != built:
            raise ObservationError(f"bundle for task {self.task.name!r}: its observation terms {listed} do not match "
                                   f"the task rebuilt from its config {built}")

    # ----- deployment API
    def reset(self, command: np.ndarray | None = None) -> None:
        """Start an episode: no past actions, targets at the action offset, integrals at zero."""
        self.clear_policy_state(torch.tensor([0]))
        self.episode_length.zero_()
        if command is not None:
            self.set_command(command)

    def follow_safety_limits(self, bounds: TargetBounds) -> None:
        """Clamp the targets recorded here as the safety layer clamps those it sends (``bounds``), where the task
        trained without limits of its own. End-effector and relative actions add to the previous target, which
        must be the one the robot got: otherwise a clamped policy's targets run away from the arm (panda-lift's
        diffusion policy through the safety layer, in lockstep with the simulator: 4 of 20 episodes succeeded,
        17 of 20 with this)."""
        if self._limits is None:
            self._limits = bounds.converted(lambda v: torch.as_tensor(v, dtype=torch.float32, device=self.device))

    def set_command(self, command: np.ndarray) -> None:
        value = np.asarray(command, dtype=np.float64).reshape(-1)
        if value.shape != (self.task.command_dim,) or not np.all(np.isfinite(value)):
            raise ObservationError(f"task {self.task.name!r}: command must be {self.task.command_dim} finite "
                                   f"values, got {value.tolist()}")
        self.command[0] = torch.as_tensor(value, dtype=torch.float32)

    def update(self, state: RobotState) -> None:
        """Take a new measurement (then ``integrate`` once per control step, ``observation`` to read). Built in
        numpy, which costs a fraction of torch's per-call overhead on vectors this small; the float32 values
        are the same."""
        qpos = self.qpos.numpy().copy()
        qvel = self.qvel.numpy().copy()
        names = self.joint_names
        for values, target, adr in ((state.joint_position, qpos, self._joint_qpos_adr),
                                    (state.joint_velocity, qvel, self._joint_dof_adr)):
            try:
                target[0, adr] = [float(values[n]) for n in names]
            except KeyError:
                missing = [n for n in names if n not in values]
                raise ObservationError(f"state has no value for joint(s) {missing} (bundle joints: {names})") from None
        if self.floating_base:
            base = BodyState(state.base_position, state.base_orientation, state.base_linear_velocity,
                             state.base_angular_velocity)
            _check_body(base, f"robot {self.metadata['robot']!r} has a floating base", "base_")
            _write_body(base, qpos, qvel, 0, 0)
        if self.has_object:
            _check_body(state.object, f"task {self.task.name!r} has an object", "object.")
            _write_body(state.object, qpos, qvel, *self._object_adr)
        self._place_fixtures(state.fixtures)
        if not (np.isfinite(qpos).all() and np.isfinite(qvel).all()):
            raise ObservationError("state has non-finite values (NaN or inf)")
        self.set_state(qpos, qvel)

    def features(self) -> dict[str, np.ndarray]:
        """The measured state as datasets record it (``robostack.data.features.sim_features``; a chunk bundle's
        inputs, a command correction's), float32 ``[1, dim]`` per feature; the command is the task's."""
        return self.frame_reader.read()

    def state_columns(self, names: list[str]) -> list[int]:
        """Where the values ``names`` names are in ``features()["observation.state"]``."""
        return state_columns(self.model, self.frame_reader.state_names, names, f"task {self.task.name!r}")

    @cached_property
    def frame_reader(self) -> SimFrameReader:
        """Reads this robot's state as datasets record it."""
        return SimFrameReader(self)

    def _place_fixtures(self, poses: Mapping[str, Pose]) -> None:
        """Move the task's fixtures in this builder's model to where they were measured."""
        for name, body in self._fixture_ids.items():
            pose = poses.get(name)
            position, orientation = (None, None) if pose is None else (np.asarray(pose.position, dtype=np.float64),
                                                                        np.asarray(pose.orientation, dtype=np.float64))
            if position is None or position.shape != (3,) or orientation.shape != (4,) or not (
                    np.isfinite(position).all() and np.isfinite(orientation).all()):
                raise ObservationError(f"task {self.task.name!r} places {name!r} per episode: state.fixtures[{name!r}] "
                                       f"must be a finite position (3) and orientation (4), got {pose!r}")
            self.model.body_pos[body] = position
            self.model.body_quat[body] = orientation / max(np.linalg.norm(orientation), 1e-9)

    def _term_widths(self) -> list[tuple[str, int]]:
        """The ``policy`` observation's terms in order, with how many values each gives."""
        return [(name, int(term.func(self).shape[-1])) for name, term in self._terms.items()]

    def term_columns(self, names: Sequence[str]) -> list[int]:
        """Where the ``policy`` observation's terms ``names`` are in its vector (``observation``), in that order."""
        layout, start = {}, 0
        for name, width in self._term_widths():
            layout[name], start = range(start, start + width), start + width
        unknown = [n for n in names if n not in layout]
        if unknown:
            raise ValueError(f"task {self.task.name!r}'s policy observation has no term(s) {unknown} "
                             f"(its terms: {list(layout)})")
        return [column for name in names for column in layout[name]]

    def observation(self) -> np.ndarray:
        """The raw ``policy`` observation vector (the bundle's ONNX input; a residual's without the base's
        action), float32 [obs_dim]."""
        parts = []
        with self.following_command():
            for term in self._terms.values():
                value = term.func(self)
                parts.append(value * term.scale if term.scale != 1.0 else value)
        return torch.cat(parts, dim=-1)[0].numpy().astype(np.float32)
