"""A task's terms and action map for one robot whose state is measured rather than simulated.

``MeasuredTask`` offers what term functions and the action map read from a ``TaskEnv`` (``qpos``/``qvel`` in the
model's layout, sensors from MuJoCo's kinematics at that state, ``command``, the policy-side state kept by
``PolicyState``) for a state set from outside with ``set_state``. The deploy side builds a bundle's observation
on it (``robostack.real.observation``), and a human's arm takeover issues the task's own actions through it
(``robostack.teleop.takeovers``): both then act exactly as the task does in training.
"""
from __future__ import annotations

import numpy as np
import torch

from robostack.sim import ik
from robostack.sim.policy_state import PolicyState
from robostack.sim.task_env import actuated_joint_addresses, control_limits
from robostack.sim.terms import TaskDefinition


class MeasuredTask(PolicyState):
    """One robot of ``task``, its state set by ``set_state``; ``controls(action)`` applies the task's action map."""

    error: type[Exception] = ValueError  # what a bad action raises

    def __init__(self, task: TaskDefinition):
        self.task = task
        self.task_cfg = task.cfg
        self.num_envs = 1
        self.device = torch.device("cpu")
        self.control_dt = float(task.sim.timestep * task.sim.decimation)
        self.max_episode_length = int(round(task.sim.episode_length_s / self.control_dt))
        model = self.model = self.default_model = task.model  # default_model: as a TaskEnv names it
        self._kinematics = ik.KinematicSensors(model)
        self.actuator_qpos_adr, self.actuator_dof_adr = actuated_joint_addresses(model, self.device)
        self.default_joint_pos = torch.as_tensor(task.default_joint_pos, dtype=torch.float32)
        self.command = torch.zeros(1, task.command_dim)
        self.episode_length = torch.zeros(1, dtype=torch.long)
        self.buffers: dict[str, torch.Tensor] = {}
        self.init_policy_state(task, control_limits(model))
        self.qpos = torch.as_tensor(model.qpos0, dtype=torch.float32).reshape(1, -1)
        self.qvel = torch.zeros(1, model.nv)
        self._sensors: torch.Tensor | None = None  # [1, nsensordata] at the set configuration, once per state
        self.size_integrals()

    def set_state(self, qpos: np.ndarray, qvel: np.ndarray) -> None:
        """The robot's state now, in the model's layout ([1, nq] and [1, nv])."""
        self.qpos, self.qvel, self._sensors = torch.from_numpy(qpos), torch.from_numpy(qvel), None

    def sensor(self, name: str) -> torch.Tensor:
        """A view of the float32 sensor values, as ``TaskEnv.sensor`` gives: one conversion per state rather
        than one per call (a panda-reach step reads 18 sensors)."""
        if self._sensors is None:
            self._kinematics.set_qpos(self.qpos[0].double().numpy())
            self._sensors = torch.from_numpy(self._kinematics.data.sensordata.astype(np.float32)).reshape(1, -1)
        try:
            return self._sensors[:, self._kinematics.slices[name]]
        except KeyError:
            raise KeyError(f"task {self.task.name!r}: model has no sensor {name!r}") from None

    def anchor_targets(self) -> None:
        """Targets from where the joints are: a relative or end-effector action map adds its next step to the
        measured positions rather than to targets the robot did not follow (a safety layer holding it, a human
        in control)."""
        action_map = self.task.action
        if action_map.relative or action_map.ik is not None:
            self.ctrl_target = self.joint_pos.clone()

    @property
    def one_to_one(self) -> bool:
        """Whether the action map gives each action dimension one actuator's absolute target (no relative,
        end-effector or gripper commands): then controls determine the actions (``actions_of``)."""
        am = self.task.action
        return not (am.relative or am.ik is not None or am.gripper is not None)

    def actions_of(self, controls: np.ndarray) -> np.ndarray:
        """The actions in [-1, 1] whose controls ``controls`` [B, nu] are: the inverse of a ``one_to_one`` map
        (controls a clamp moved come back clipped)."""
        am = self.task.action
        ids = np.asarray(am.actuator_ids)
        offset = np.asarray(am.offset, dtype=np.float64)[ids]
        return np.clip((np.asarray(controls, dtype=np.float64)[:, ids] - offset) / np.asarray(am.scale), -1.0, 1.0)

    def controls(self, action: np.ndarray) -> np.ndarray:
        """Record the action and return the actuator controls the task's action map commands, float64 [nu]."""
        a = np.asarray(action, dtype=np.float32).reshape(1, -1)
        if a.shape[1] != self.action_dim or not np.isfinite(a).all():
            raise self.error(f"action must be {self.action_dim} finite values, got {a[0].tolist()}")
        self.episode_length += 1
        return self.apply_action(torch.from_numpy(a))[0].double().numpy()
