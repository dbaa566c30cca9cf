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

from dataclasses import dataclass, field
from typing import Any, Mapping

import mujoco
import numpy as np
import torch

from robostack.sim.policy_state import PolicyState
from robostack.sim import ik
from robostack.sim.task_env import actuated_joint_addresses, control_limits


# A floating base's state fields and their sizes.
BASE_FIELDS = (("base_position", 3), ("base_orientation", 4), ("base_linear_velocity", 3), ("base_angular_velocity", 3))


class ObservationError(ValueError):
    """The measured state cannot make the bundle's observation (a missing joint, a wrong size, NaN)."""


@dataclass
class RobotState:
    """One measurement of the robot. Joint values are keyed by joint name; base fields are None for a
    fixed-base robot. Frames follow the simulator: base position and linear velocity in the world frame,
    orientation as a (w, x, y, z) quaternion, angular velocity in the body frame."""

    joint_position: Mapping[str, float] = field(default_factory=dict)
    joint_velocity: Mapping[str, float] = field(default_factory=dict)
    base_position: np.ndarray | None = None
    base_orientation: np.ndarray | None = None
    base_linear_velocity: np.ndarray | None = None
    base_angular_velocity: np.ndarray | None = None


def build_task(metadata: Mapping[str, Any]):
    """The ``TaskDefinition`` a bundle was trained on, from its stored task config (play variant: no noise)."""
    from robostack import registry, sim

    cfg = sim.load_task_config(metadata["task"], play=True, config=metadata["task_config"])
    return registry.get("task", metadata["task"]).target(cfg)


class ObservationBuilder(PolicyState):
    """Observation vector and actuator controls for one robot, as the bundle's task computes them."""

    def __init__(self, metadata: Mapping[str, Any]):
        self.metadata = metadata
        self.task = build_task(metadata)
        self.task_cfg = self.task.cfg
        self.num_envs = 1
        self.device = torch.device("cpu")
        self.control_dt = float(metadata["control_dt"])
        self.max_episode_length = int(metadata["max_episode_length"])
        model = self.model = self.task.model
        self._kinematics = ik.KinematicSensors(model)
        self.actuator_qpos_adr, self.actuator_dof_adr = actuated_joint_addresses(model, self.device)
        self._joint_qpos_adr, self._joint_dof_adr = self.actuator_qpos_adr.numpy(), self.actuator_dof_adr.numpy()
        self.default_joint_pos = torch.as_tensor(self.task.default_joint_pos, dtype=torch.float32)
        self.joint_names: list[str] = list(metadata["joint_names"])
        self.floating_base = model.nq > 0 and model.jnt_type[0] == mujoco.mjtJoint.mjJNT_FREE
        self.command = torch.zeros(1, self.task.command_dim)
        self.episode_length = torch.zeros(1, dtype=torch.long)
        self.buffers: dict[str, torch.Tensor] = {}
        self.init_policy_state(self.task, control_limits(model))
        self.qpos = torch.as_tensor(model.qpos0, dtype=torch.float32).reshape(1, -1)
        self.qvel = torch.zeros(1, model.nv)
        self._sensors: torch.Tensor | None = None  # [1, nsensordata] at the measured configuration, once per update
        self.size_integrals()
        self._terms = self.task.observations["policy"]
        self._check_layout()

    def _check_layout(self) -> None:
        """The task rebuilt here must produce exactly the observation the bundle's policy was trained on."""
        listed = [(t["name"], int(t["dim"])) for t in self.metadata["observation"]["terms"]]
        built = [(name, int(term.func(self).shape[-1])) for name, term in self._terms.items()]
        if listed != built:
            raise ObservationError(f"bundle for task {self.task.name!r}: its observation terms {listed} do not match "
                                   f"the task rebuilt from its config {built}")

    # ----- what term functions read
    def sensor(self, name: str) -> torch.Tensor:
        """A view of the float32 sensor values, as ``TaskEnv.sensor`` gives: one conversion per update rather
        than one per call (a panda-reach step reads 18 sensors)."""
        if self._sensors is None:
            self._kinematics.set_qpos(self.qpos[0].double().numpy())
            self._sensors = torch.from_numpy(self._kinematics.data.sensordata.astype(np.float32)).reshape(1, -1)
        try:
            return self._sensors[:, self._kinematics.slices[name]]
        except KeyError:
            raise KeyError(f"task {self.task.name!r}: model has no sensor {name!r}") from None

    # ----- deployment API
    def reset(self, command: np.ndarray | None = None) -> None:
        """Start an episode: no past actions, targets at the action offset, integrals at zero."""
        self.clear_policy_state(torch.tensor([0]))
        self.episode_length.zero_()
        if command is not None:
            self.set_command(command)

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
            for what, size in BASE_FIELDS:
                value = getattr(state, what)
                if value is None or np.asarray(value).shape != (size,):
                    raise ObservationError(f"robot {self.metadata['robot']!r} has a floating base: state.{what} "
                                           f"must be {size} values, got {value!r}")
            quat = np.asarray(state.base_orientation, dtype=np.float64)
            qpos[0, 0:3] = state.base_position
            qpos[0, 3:7] = quat / max(np.linalg.norm(quat), 1e-9)
            qvel[0, 0:3] = state.base_linear_velocity
            qvel[0, 3:6] = state.base_angular_velocity
        if not (np.isfinite(qpos).all() and np.isfinite(qvel).all()):
            raise ObservationError("state has non-finite values (NaN or inf)")
        self.qpos, self.qvel, self._sensors = torch.from_numpy(qpos), torch.from_numpy(qvel), None

    def observation(self) -> np.ndarray:
        """The raw ``policy`` observation vector (the bundle's ONNX input), float32 [obs_dim]."""
        parts = []
        for term in self._terms.values():
            value = term.func(self)
            parts.append(value * term.scale if term.scale != 1.0 else value)
        return torch.cat(parts, dim=-1)[0].numpy().astype(np.float32)

    def controls(self, action: np.ndarray) -> np.ndarray:
        """Record the policy's action and return the actuator controls it commands, float64 [nu]."""
        a = np.asarray(action, dtype=np.float32).reshape(1, -1)
        if a.shape[1] != self.action_dim or not np.isfinite(a).all():
            raise ObservationError(f"action must be {self.action_dim} finite values, got {a[0].tolist()}")
        self.episode_length += 1
        return self.apply_action(torch.from_numpy(a))[0].double().numpy()
