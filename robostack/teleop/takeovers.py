"""Takeovers: what a human's command becomes on each kind of robot while they hold the deadman (``teleop_node``).

* arm: the end effector's velocity (x, y, z, yaw) is integrated into an end-effector target that starts at the
  measured pose and stays within a lead of it (a blocked arm does not wind up); the difference to the measured
  pose becomes the task's own end-effector actions, issued through the task's action map (its IK site, damping,
  step sizes and gripper, as in training) from the measured joints (``robostack.sim.measured_task``);
* quadruped: the sticks' velocity is the task command;
* drone: the sticks move a position setpoint from the task's setpoint in effect when the takeover began.

Each takeover answers ``state_problem(state)`` (why it cannot command from this measured state), ``begin(state,
task_command)`` (the task's command in effect, where the node knows it),
``command(velocity, buttons, state, dt)`` and ``release()`` (the last command when the human lets go, or None).
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from robostack.sim import mdp
from robostack.sim.measured_task import MeasuredTask
from robostack.teleop.devices import TeleopError


def limit_lead(target: np.ndarray, measured: np.ndarray, lead: float) -> np.ndarray:
    """``target``, pulled back to within ``lead`` (Euclidean) of ``measured``."""
    offset = target - measured
    distance = float(np.linalg.norm(offset))
    return target if distance <= lead else measured + offset * (lead / distance)


class ArmTakeover:
    """End-effector velocity -> end-effector target -> the task's end-effector actions (and gripper) -> joint
    position targets for every actuator, in actuator order, by the task's action map at the measured joints."""

    joint_level = True

    def __init__(self, robot_task: MeasuredTask, lead: tuple[float, float], gripper_buttons: tuple[int, int]):
        action_map = robot_task.task.action
        if action_map.ik is None:
            raise TeleopError(f"task {robot_task.task.name!r}: its actions do not move an end effector, so an arm "
                              "takeover cannot issue them; deploy an end-effector task (panda-reach, panda-lift, "
                              "panda-insert)")
        self.robot_task, self.site, self.gripper = robot_task, action_map.ik.site, action_map.gripper
        self.position_step, self.rotation_step = (float(v) for v in robot_task.task_cfg.ee_step)
        self.position_lead, self.angle_lead = lead
        self.open_button, self.close_button = gripper_buttons
        model = robot_task.model
        self.actuated = [model.joint(int(model.actuator_trnid[i, 0])).name for i in range(model.nu)]
        self.qpos_adr = robot_task.actuator_qpos_adr.numpy()
        self.target_position = np.zeros(3)
        self.target_quat = np.array([1.0, 0.0, 0.0, 0.0])
        self.closed = False
        self.action: np.ndarray | None = None  # the last command as the task's action in [-1, 1]

    def state_problem(self, state: Any) -> str:
        missing = [j for j in self.actuated if not math.isfinite(state.joint_position.get(j, math.nan))]
        return f"no finite position for joints {missing}" if missing else ""

    def _measure(self, state: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Set the measured joints; their positions, the end effector's position and orientation."""
        task = self.robot_task
        joints = np.array([state.joint_position[j] for j in self.actuated])
        qpos = task.model.qpos0.copy()
        qpos[self.qpos_adr] = joints
        task.set_state(qpos[None], np.zeros((1, task.model.nv)))
        return (joints, task.sensor(f"{self.site}_pos")[0].double().numpy(),
                task.sensor(f"{self.site}_quat")[0].double().numpy())

    def begin(self, state: Any, task_command: np.ndarray | None = None) -> None:
        joints, self.target_position, self.target_quat = self._measure(state)
        if self.gripper is not None:  # the fingers keep the state they were found in
            fingers = joints[self.gripper.actuator_ids].mean()
            self.closed = abs(fingers - self.gripper.closed) < abs(fingers - self.gripper.open)

    def command(self, velocity: np.ndarray, buttons: frozenset[int], state: Any, dt: float) -> np.ndarray:
        joints, position, quat = self._measure(state)
        self.target_position = limit_lead(self.target_position + velocity[:3] * dt, position, self.position_lead)
        turn = mdp.rotation_vector_quat(torch.tensor([[0.0, 0.0, velocity[3] * dt]], dtype=torch.float64))
        turned = mdp.quat_mul(turn, torch.as_tensor(self.target_quat)[None])
        current = torch.as_tensor(quat)[None]
        angle = limit_lead(mdp.quat_error_vector(current, turned)[0].numpy(), np.zeros(3), self.angle_lead)
        self.target_quat = mdp.quat_mul(mdp.rotation_vector_quat(torch.as_tensor(angle)[None]), current)[0].numpy()
        action = np.zeros(self.robot_task.action_dim)
        action[:3] = (self.target_position - position) / self.position_step
        action[3:6] = angle / self.rotation_step
        if self.gripper is not None:
            self.closed = self.close_button in buttons or (self.closed and self.open_button not in buttons)
            action[-1] = 1.0 if self.closed else -1.0
        # the map's targets move from the measured joints, not from wherever its last targets were
        self.robot_task.ctrl_target = torch.as_tensor(joints, dtype=torch.float32)[None]
        self.action = np.clip(action, -1.0, 1.0)
        return self.robot_task.controls(self.action)

    def release(self) -> np.ndarray | None:
        return None  # the policy's own commands take over again


class VelocityTakeover:
    """Quadruped: the sticks' velocity is the task command."""

    joint_level = False

    def __init__(self, dim: int):
        self.dim = dim

    def state_problem(self, state: Any) -> str:
        return ""

    def begin(self, state: Any, task_command: np.ndarray | None = None) -> None:
        pass

    def command(self, velocity: np.ndarray, buttons: frozenset[int], state: Any, dt: float) -> np.ndarray:
        return velocity.copy()

    def release(self) -> np.ndarray | None:
        return np.zeros(self.dim)  # stand still


class SetpointTakeover:
    """Drone: the sticks move a position setpoint from the task's setpoint in effect when the takeover began (where
    the policy was flying to; the drone's position where none is known); it stays within ``lead`` of the measured
    position. Starting from the task's setpoint, the sticks offset what the policy was asked to do: a drone that
    cannot reach its setpoint (heavier, a weak motor) is corrected by aiming past it, and the logs hold that
    correction against the task's setpoint. (Starting where a sagging drone was made its policy cut thrust first.)"""

    joint_level = False

    def __init__(self, lead: float):
        self.lead = lead
        self.setpoint = np.zeros(3)

    def state_problem(self, state: Any) -> str:
        known = state.base_position is not None and np.all(np.isfinite(state.base_position))
        return "" if known else "no finite base position"

    def begin(self, state: Any, task_command: np.ndarray | None = None) -> None:
        position = np.asarray(state.base_position, dtype=np.float64)
        start = position if task_command is None else np.asarray(task_command, dtype=np.float64)
        self.setpoint = limit_lead(start.copy(), position, self.lead)

    def command(self, velocity: np.ndarray, buttons: frozenset[int], state: Any, dt: float) -> np.ndarray:
        self.setpoint = limit_lead(self.setpoint + velocity * dt, np.asarray(state.base_position), self.lead)
        return self.setpoint.copy()

    def release(self) -> np.ndarray | None:
        return self.setpoint.copy()  # hold where the human left it
