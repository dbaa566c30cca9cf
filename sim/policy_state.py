"""What a policy's observation terms read besides the physics state: its recent actions, the control targets
it commanded and the running integrals of the task (``TaskDefinition.integrals``).

The simulator's ``TaskEnv`` keeps this state for a batch while training; the deployment side keeps it for one
real robot (``robostack.real.observation``). Both inherit ``PolicyState``, so the bookkeeping the observation
depends on is written once and cannot drift between training and deployment.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import numpy as np
import torch

from robostack.sim import ik
from robostack.sim.joint_limits import limit_targets
from robostack.sim.terms import TaskDefinition


class PolicyState:
    """Mixin: ``action``, ``last_action``, ``action_history`` (newest first), ``ctrl_target`` and ``integrals``.

    The host class provides ``num_envs``, ``device``, ``control_dt``, the ``qpos`` / ``qvel`` tensors with
    ``actuator_qpos_adr`` / ``actuator_dof_adr``, and whatever else the task's integral terms read.
    """

    task: TaskDefinition
    num_envs: int
    device: torch.device
    control_dt: float

    def init_policy_state(self, task: TaskDefinition, ctrlrange: np.ndarray) -> None:
        """Allocate the state; ``ctrlrange`` [nu, 2] bounds the controls (+-inf where unlimited)."""
        n, dev, am = self.num_envs, self.device, task.action
        self.action_dim = am.dim
        self._act_ids = torch.as_tensor(am.actuator_ids, device=dev)
        self._act_scale = torch.as_tensor(am.scale, dtype=torch.float32, device=dev)
        if am.gripper is not None:
            self._gripper_ids = torch.as_tensor(am.gripper.actuator_ids, device=dev)
        self._ctrl_offset = torch.as_tensor(am.offset, dtype=torch.float32, device=dev)
        self._ctrl_lo = torch.as_tensor(ctrlrange[:, 0], dtype=torch.float32, device=dev)
        self._ctrl_hi = torch.as_tensor(ctrlrange[:, 1], dtype=torch.float32, device=dev)
        self.action = torch.zeros(n, self.action_dim, device=dev)
        self.last_action = torch.zeros_like(self.action)
        self.action_history = torch.zeros(n, task.action_history, self.action_dim, device=dev)
        self._limits = None if am.limits is None else am.limits.converted(
            lambda v: torch.as_tensor(v, dtype=torch.float32, device=dev))
        self.ctrl_target = self._ctrl_offset.repeat(n, 1)  # the controls the policy commanded (before latency)
        self.integrals: dict[str, torch.Tensor] = {}  # sized by size_integrals once the state can be read
        self.command_offset: torch.Tensor | None = None  # a command correction's, once it offsets the command

    def offset_command(self, offset: torch.Tensor) -> None:
        """From now on the policy follows the task's ``command`` plus ``offset`` [N, command_dim] (a command
        correction's, ``robostack.bundle.kinds``): its observations and integrals read that command; rewards,
        success and recorded frames keep the task's. The offset is zero again at each episode's start."""
        value = torch.as_tensor(offset, dtype=torch.float32, device=self.device).reshape(self.num_envs, -1)
        if self.command_offset is None:
            self.command_offset = value.clone()
        else:  # every control step: into the tensor it already has
            self.command_offset.copy_(value)

    @contextmanager
    def following_command(self) -> Iterator[None]:
        """Within it, ``command`` is the one the policy follows: the task's plus the offset, where there is one."""
        if self.command_offset is None:
            yield
            return
        task_command = self.command
        self.command = task_command + self.command_offset
        try:
            yield
        finally:
            self.command = task_command

    @property
    def joint_pos(self) -> torch.Tensor:
        """Positions of the actuated joints, in actuator order."""
        return self.qpos[:, self.actuator_qpos_adr]

    @property
    def joint_vel(self) -> torch.Tensor:
        return self.qvel[:, self.actuator_dof_adr]

    def size_integrals(self) -> None:
        self.integrals = {name: torch.zeros_like(term.func(self)) for name, term in self.task.integrals.items()}

    def apply_action(self, action: torch.Tensor) -> torch.Tensor:
        """Record ``action`` (clipped to [-1, 1]) and return the control targets it commands: ``offset`` (or,
        for a relative action map, the previous targets) plus ``scale * action`` (or, for an end-effector map,
        the joint changes differential IK finds for that displacement), the gripper's open or closed targets
        where the map has one, within the control limits and, where the action map has them, the safety
        layer's joint target limits at the current state."""
        self.last_action = self.action
        self.action = torch.clamp(action, -1.0, 1.0)
        if self.task.action_history:
            self.action_history = torch.roll(self.action_history, 1, dims=1)
            self.action_history[:, 0] = self.action
        am = self.task.action
        base = self.ctrl_target if am.relative or am.ik else self._ctrl_offset.expand(self.num_envs, -1)
        ctrl = base.clone()
        scaled = self._act_scale * self.action[:, :len(self._act_scale)]
        if am.ik is None:
            ctrl[:, self._act_ids] += scaled
        else:
            jacobian = ik.site_jacobian(self, am.ik.site, am.ik.joints)
            ctrl[:, self._act_ids] += ik.damped_least_squares(jacobian, scaled, am.ik.damping)
        if am.gripper is not None:
            closing = self.action[:, -1:] > 0
            ctrl[:, self._gripper_ids] = torch.where(closing, am.gripper.closed, am.gripper.open)
        ctrl = torch.clamp(ctrl, self._ctrl_lo, self._ctrl_hi)
        if self._limits is not None:
            ctrl, _ = limit_targets(ctrl, self.joint_pos, self.joint_vel, self.ctrl_target, self._limits,
                                    self.control_dt, xp=torch)
        self.ctrl_target = ctrl
        return self.ctrl_target

    def integrate(self) -> None:
        """Advance every running integral by one control step (call after the state is refreshed)."""
        with self.following_command():
            for name, term in self.task.integrals.items():
                value = self.integrals[name] + self.control_dt * term.func(self)
                self.integrals[name] = torch.clamp(value, -term.limit, term.limit)

    def clear_policy_state(self, ids: torch.Tensor) -> None:
        """Start new episodes for ``ids``: no past actions, targets at the offset, integrals at zero."""
        self.action[ids] = 0.0
        self.last_action[ids] = 0.0
        self.action_history[ids] = 0.0
        self.ctrl_target[ids] = self._ctrl_offset
        for value in self.integrals.values():
            value[ids] = 0.0
        if self.command_offset is not None:
            self.command_offset[ids] = 0.0
