"""Differential inverse kinematics, batched: a site's Jacobian from per-joint sensors, damped least squares.

The Jacobian of a chain of hinge joints needs, per joint, its anchor and axis in the world frame:
``J_pos[:, i] = axis_i x (p_site - anchor_i)`` and ``J_rot[:, i] = axis_i``. Each joint carries a site at its
anchor whose z axis is the joint axis, with a ``framepos`` (``<joint>_anchor``) and a ``framezaxis``
(``<joint>_axis``) sensor, so the batched rollout reports them for every env and the deploy side computes
them with MuJoCo's kinematics from measured joint positions: both evaluate the same code below.
"""
from __future__ import annotations

from typing import Any, Sequence

import mujoco
import numpy as np
import torch


class KinematicSensors:
    """One model's position-stage sensors (frame poses, joint anchors and axes) at a given configuration,
    without dynamics: what task terms and ``site_jacobian`` read for a measured robot (deploy side, teleop)."""

    def __init__(self, model: mujoco.MjModel):
        from robostack.sim.task_env import sensor_slices  # task_env imports this module

        self.model = model
        self.data = mujoco.MjData(model)
        self.slices = sensor_slices(model)
        self._values = torch.zeros(1, model.nsensordata, dtype=torch.float64)

    def set_qpos(self, qpos: np.ndarray) -> None:
        self.data.qpos[:] = qpos
        mujoco.mj_kinematics(self.model, self.data)
        mujoco.mj_comPos(self.model, self.data)
        mujoco.mj_sensorPos(self.model, self.data)
        self._values = torch.as_tensor(self.data.sensordata.copy()).reshape(1, -1)

    def sensor(self, name: str) -> torch.Tensor:
        """``[1, dim]`` float64 values of sensor ``name`` at the last ``set_qpos``."""
        return self._values[:, self.slices[name]]


def anchor_sensor(joint: str) -> str:
    return f"{joint}_anchor"


def axis_sensor(joint: str) -> str:
    return f"{joint}_axis"


def site_jacobian(state: Any, site: str, joints: Sequence[str]) -> torch.Tensor:
    """[N, 6, k] Jacobian (linear rows, then angular) of ``site``'s position w.r.t. the hinge ``joints``;
    ``state`` offers ``sensor(name) -> [N, dim]`` (a ``TaskEnv`` or a deploy-side view)."""
    anchors = torch.stack([state.sensor(anchor_sensor(j)) for j in joints], dim=1)  # [N, k, 3]
    axes = torch.stack([state.sensor(axis_sensor(j)) for j in joints], dim=1)
    lever = state.sensor(f"{site}_pos").unsqueeze(1) - anchors
    return torch.cat([torch.cross(axes, lever, dim=-1), axes], dim=-1).transpose(1, 2)


def damped_least_squares(jacobian: torch.Tensor, displacement: torch.Tensor, damping: float) -> torch.Tensor:
    """Joint changes ``J^T (J J^T + damping^2 I)^-1 dx`` for a batch: [N, 6, k], [N, 6] -> [N, k]."""
    jjt = jacobian @ jacobian.transpose(1, 2)
    eye = torch.eye(jjt.shape[-1], dtype=jjt.dtype, device=jjt.device)
    solved = torch.linalg.solve(jjt + damping ** 2 * eye, displacement.unsqueeze(-1))
    return (jacobian.transpose(1, 2) @ solved).squeeze(-1)


def axis_quat(axis: Sequence[float]) -> np.ndarray:
    """A (w, x, y, z) rotation taking the z axis onto ``axis``."""
    z = np.array([0.0, 0.0, 1.0])
    a = np.asarray(axis, dtype=np.float64)
    a = a / np.linalg.norm(a)
    cross, dot = np.cross(z, a), float(np.dot(z, a))
    if dot < -1.0 + 1e-9:  # opposite: half a turn about x
        return np.array([0.0, 1.0, 0.0, 0.0])
    quat = np.array([1.0 + dot, *cross])
    return quat / np.linalg.norm(quat)
