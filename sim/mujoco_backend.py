"""MuJoCo on the CPU, the embedded default backend: a batch of physics states stepped by ``mujoco.rollout``.

``mujoco.rollout`` runs many independent trajectories on a native thread pool without the GIL, which is
the fastest CPU path (see PLATFORM-NOTES: ~45k Go2 steps/s on 2 threads). We keep the whole batch's
state as one ``[num_envs, nstate]`` array (mjSTATE_FULLPHYSICS layout: time, qpos, qvel, act, ...) and
hand it to rollout for ``substeps`` physics steps per control step; sensors come back with it, so the
task never needs per-env Python work on the hot path.
"""
from __future__ import annotations

import copy
import os
from typing import Any

import mujoco
import numpy as np
from mujoco import rollout

from robostack import registry
from robostack.sim.task_env import TaskEnv
from robostack.specs import BackendSpec

FULL_STATE = int(mujoco.mjtState.mjSTATE_FULLPHYSICS)
# Controls per substep: actuator commands plus a generalized external force (pushes, wind).
CONTROL_SPEC = int(mujoco.mjtState.mjSTATE_CTRL) | int(mujoco.mjtState.mjSTATE_QFRC_APPLIED)


def default_threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class MujocoBatch:
    """``num_envs`` copies of one model; each env may get its own randomized ``MjModel`` copy."""

    def __init__(self, model: mujoco.MjModel, num_envs: int, substeps: int, nthread: int = 0):
        if num_envs < 1 or substeps < 1:
            raise ValueError(f"num_envs and substeps must be >= 1, got {num_envs} and {substeps}")
        self.model = model
        self.num_envs = num_envs
        self.substeps = substeps
        self.nthread = nthread or default_threads()
        self.models: list[mujoco.MjModel] = [model] * num_envs
        self._own_models = False

        nq, nv, nu = model.nq, model.nv, model.nu
        self.nstate = mujoco.mj_stateSize(model, FULL_STATE)
        self.qpos_slice = slice(1, 1 + nq)  # state[0] is time
        self.qvel_slice = slice(1 + nq, 1 + nq + nv)
        self.act_slice = slice(1 + nq + nv, 1 + nq + nv + model.na)

        self._scratch = mujoco.MjData(model)
        mujoco.mj_forward(model, self._scratch)
        initial = np.empty(self.nstate)
        mujoco.mj_getState(model, self._scratch, initial, FULL_STATE)
        self.state = np.tile(initial, (num_envs, 1))
        self.sensordata = np.tile(self._scratch.sensordata, (num_envs, 1))
        self.control = np.zeros((num_envs, substeps, nu + nv))
        self.ctrl = self.control[:, 0, :nu]  # what step() applies, for observers
        self._state_out = np.empty((num_envs, substeps, self.nstate))
        self._sensor_out = np.empty((num_envs, substeps, model.nsensordata))
        self._datas = [mujoco.MjData(model) for _ in range(self.nthread)]
        self._pool = rollout.Rollout(nthread=self.nthread)
        self._chunk = max(1, num_envs // (self.nthread * 4))

    # Views into the batch state; writes go straight into the next step's initial state.
    @property
    def qpos(self) -> np.ndarray:
        return self.state[:, self.qpos_slice]

    @property
    def qvel(self) -> np.ndarray:
        return self.state[:, self.qvel_slice]

    @property
    def act(self) -> np.ndarray:
        return self.state[:, self.act_slice]

    @property
    def time(self) -> np.ndarray:
        return self.state[:, 0]

    def per_env_models(self, env_ids: np.ndarray) -> list[mujoco.MjModel]:
        """Give every env its own model copy (once), so randomization can change one env's physics; ``env_ids``:
        the envs whose copies the caller changes (every env steps with its own copy here)."""
        if not self._own_models:
            self.models = [copy.copy(self.model) for _ in range(self.num_envs)]
            self._own_models = True
        return self.models

    def step(self, ctrl: np.ndarray, qfrc_applied: np.ndarray | None = None) -> None:
        """Advance every env by ``substeps`` physics steps holding ``ctrl`` [N, nu] (zero-order hold)."""
        nu = self.model.nu
        self.control[:, :, :nu] = ctrl[:, None, :]
        if qfrc_applied is not None:
            self.control[:, :, nu:] = qfrc_applied[:, None, :]
        self.rollout(self.state, self.control)
        self.state[:] = self._state_out[:, -1]
        self.sensordata[:] = self._sensor_out[:, -1]

    def rollout(self, initial_state: np.ndarray, control: np.ndarray) -> None:
        """Bare physics: ``substeps`` steps from ``initial_state`` [N, nstate] under ``control`` [N, substeps, nu+nv]."""
        self._pool.rollout(
            self.models, self._datas, initial_state, control,
            control_spec=CONTROL_SPEC, skip_checks=True, nstep=self.substeps,
            state=self._state_out, sensordata=self._sensor_out, chunk_size=self._chunk,
        )

    def forward(self, env_ids: np.ndarray) -> None:
        """Recompute sensors of envs whose state was written directly (resets, pushes)."""
        data = self._scratch
        for i in env_ids:
            m = self.models[i]
            mujoco.mj_setState(m, data, self.state[i], FULL_STATE)
            data.ctrl[:] = self.ctrl[i]
            mujoco.mj_forward(m, data)
            self.sensordata[i] = data.sensordata

    def data_for(self, env_id: int) -> mujoco.MjData:
        """An MjData holding one env's current state (for rendering, IK, debugging)."""
        data = mujoco.MjData(self.models[env_id])
        mujoco.mj_setState(self.models[env_id], data, self.state[env_id], FULL_STATE)
        mujoco.mj_forward(self.models[env_id], data)
        return data

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None


def make_env(definition: Any, num_envs: int | None = None, seed: int = 0, device: str = "cpu") -> TaskEnv:
    return TaskEnv(definition, MujocoBatch, num_envs=num_envs, seed=seed, device=device)


SPEC = registry.register(BackendSpec("mujoco", "MuJoCo (C, CPU) stepped in parallel by mujoco.rollout's thread pool",
                                     make_env))
