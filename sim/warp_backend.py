"""MuJoCo Warp (``mujoco-warp`` on ``warp-lang``): the same tasks, term functions and randomization on Warp's
batched physics, one world per env. ``robostack.sim.make_env(..., backend="warp")``; ``robostack bench sim
--backend warp``.

What runs here today is Warp's CPU device, for correctness (it is slow: a go2 world steps a few thousand times a
second). The batch's state lives in Warp arrays; ``qpos``, ``qvel``, ``act``, ``time`` and ``sensordata`` are
numpy views of them (a CPU Warp array shares its memory), so a task's resets and pushes write straight into the
next step and ``TaskEnv`` reads them as torch tensors without a copy (float32, as Warp computes). A CUDA device
needs ``TaskEnv`` to hold torch tensors on that device instead of numpy views; until it does, asking for one is a
clear error.

Randomization writes per-env ``MjModel`` copies, as on the C backend (``per_env_models``); the fields it may
change (``RANDOMIZED_FIELDS``: masses, inertias, friction, damping, armature, gains, body poses, and the constants
``mj_setConst`` derives from masses) are batched per world in the Warp model and copied from the copies before the
next step. A randomized field that does not reach MuJoCo Warp yet (``UNSUPPORTED_FIELDS``: the centre of mass) is
an error naming it, never a silent difference.
A model MuJoCo Warp cannot simulate (a geom pair, a sensor, an integrator it lacks) is refused when the env is
made, with MuJoCo Warp's own words for what is missing; a contact or constraint buffer that overflows is an
error, never a silently dropped contact. Compiled kernels are cached in ``WARP_CACHE`` (``.cache/warp`` in the
working directory unless ``ROBOSTACK_WARP_CACHE`` says otherwise), not in ``$HOME``.
"""
from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import mujoco
import numpy as np

from robostack import registry
from robostack.sim.task_env import TaskEnv
from robostack.specs import BackendSpec

RANDOMIZED_FIELDS = ("body_mass", "body_inertia", "body_pos", "body_quat", "body_subtreemass",
                     "body_invweight0", "dof_invweight0", "dof_damping", "dof_armature", "geom_friction", "actuator_gainprm",
                     "actuator_biasprm")
# Randomized per env on the C backend, not here yet: what differs and why.
UNSUPPORTED_FIELDS = {"body_ipos": "randomization.com_offset is not supported on the warp backend yet: with "
                                   "per-world centres of mass, go2-walk's worlds leave their C-backend twins within "
                                   "a control step (by up to 0.03 m; cause not found); set its range to [0, 0]"}
WARP_CACHE = Path(os.environ.get("ROBOSTACK_WARP_CACHE", Path.cwd() / ".cache" / "warp"))
CONTACTS_PER_WORLD = 64  # contact and constraint buffers, per world (an overflow is an error, see step)
CONSTRAINTS_PER_WORLD = 256


class WarpBackendError(ValueError):
    """The warp backend cannot run this: the message says what and why."""


def _warp():
    try:
        import mujoco_warp
        import warp
    except ImportError as exc:
        raise WarpBackendError(f"the warp backend needs mujoco-warp and warp-lang ({exc}); install them with "
                               "`pip install -e .[warp]` (scripts/setup.sh does)") from None
    if warp.config.kernel_cache_dir != str(WARP_CACHE):  # before Warp's first kernel build in this process
        WARP_CACHE.mkdir(parents=True, exist_ok=True)
        warp.config.kernel_cache_dir = str(WARP_CACHE)
        warp.config.quiet = True
        warp.init()
    return warp, mujoco_warp


class WarpBatch:
    """``num_envs`` MuJoCo Warp worlds of one model on Warp's CPU device; each env may get its own randomized
    ``MjModel`` copy (``per_env_models``), whose randomized fields reach its world before the next step."""

    device = "cpu"

    def __init__(self, model: mujoco.MjModel, num_envs: int, substeps: int, nthread: int = 0):
        if num_envs < 1 or substeps < 1:
            raise ValueError(f"num_envs and substeps must be >= 1, got {num_envs} and {substeps}")
        wp, self._mjw = _warp()
        self.model, self.num_envs, self.substeps = model, num_envs, substeps
        self.nthread = 1  # Warp's CPU device runs kernels on one thread
        self.models: list[mujoco.MjModel] = [model] * num_envs
        self._own_models = self._models_changed = False
        data = mujoco.MjData(model)
        mujoco.mj_forward(model, data)
        with wp.ScopedDevice(self.device):
            try:
                self._model = self._mjw.put_model(model, batch_sizes={f: num_envs for f in RANDOMIZED_FIELDS})
            except NotImplementedError as exc:
                raise WarpBackendError(f"MuJoCo Warp cannot simulate this model: {exc}") from None
            self._data = self._mjw.put_data(model, data, nworld=num_envs, nconmax=CONTACTS_PER_WORLD * num_envs,
                                            njmax=CONSTRAINTS_PER_WORLD)
        self._wp = wp
        d = self._data
        self.qpos, self.qvel, self.act = d.qpos.numpy(), d.qvel.numpy(), d.act.numpy()
        self.time, self.sensordata = d.time.numpy(), d.sensordata.numpy()
        self.ctrl, self._qfrc_applied = d.ctrl.numpy(), d.qfrc_applied.numpy()
        self._limits = {"contacts": (d.nacon, CONTACTS_PER_WORLD * num_envs),
                        "constraints": (d.nefc, CONSTRAINTS_PER_WORLD)}

    def per_env_models(self) -> list[mujoco.MjModel]:
        """Every env's own model copy (made once); what randomization writes there reaches the worlds before
        the next step."""
        if not self._own_models:
            self.models = [copy.copy(self.model) for _ in range(self.num_envs)]
            self._own_models = True
        self._models_changed = True
        return self.models

    def _sync_models(self) -> None:
        for field in UNSUPPORTED_FIELDS:
            if any(not np.array_equal(getattr(m, field), getattr(self.model, field)) for m in self.models):
                raise WarpBackendError(UNSUPPORTED_FIELDS[field])
        for field in RANDOMIZED_FIELDS:
            values = np.stack([getattr(m, field) for m in self.models])
            getattr(self._model, field).assign(values.reshape(getattr(self._model, field).numpy().shape))
        self._models_changed = False

    def step(self, ctrl: np.ndarray, qfrc_applied: np.ndarray | None = None) -> None:
        """Advance every env by ``substeps`` physics steps holding ``ctrl`` [N, nu] (zero-order hold)."""
        if self._models_changed:
            self._sync_models()
        self.ctrl[:] = ctrl
        self._qfrc_applied[:] = 0.0 if qfrc_applied is None else qfrc_applied
        with self._wp.ScopedDevice(self.device):
            for _ in range(self.substeps):
                self._mjw.step(self._model, self._data)
        self._check_buffers()

    def _check_buffers(self) -> None:
        """Contacts or constraints past their buffers are dropped by MuJoCo Warp: refuse to go on."""
        for name, (count, limit) in self._limits.items():
            used = int(count.numpy().max())
            if used > limit:
                raise WarpBackendError(f"the warp backend's {name} buffer overflowed ({used} > {limit} in a world): "
                                       f"raise CONTACTS_PER_WORLD / CONSTRAINTS_PER_WORLD in {__name__}")

    def forward(self, env_ids: np.ndarray) -> None:
        """Recompute sensors (and everything derived) after states were written directly (resets, pushes)."""
        if self._models_changed:
            self._sync_models()
        with self._wp.ScopedDevice(self.device):
            self._mjw.forward(self._model, self._data)

    def data_for(self, env_id: int) -> mujoco.MjData:
        """An MjData holding one env's current state (for rendering, IK, debugging)."""
        model = self.models[env_id]
        data = mujoco.MjData(model)
        data.time = float(self.time[env_id])
        data.qpos[:], data.qvel[:] = self.qpos[env_id], self.qvel[env_id]
        data.act[:], data.ctrl[:] = self.act[env_id], self.ctrl[env_id]
        mujoco.mj_forward(model, data)
        return data

    def close(self) -> None:
        self._model = self._data = None


def make_env(definition: Any, num_envs: int | None = None, seed: int = 0, device: str = "cpu") -> TaskEnv:
    if str(device) != "cpu":
        raise WarpBackendError(f"the warp backend runs on Warp's CPU device for now, not {device!r}: a GPU needs "
                               "TaskEnv to hold torch tensors on it instead of numpy views of the physics")
    return TaskEnv(definition, WarpBatch, num_envs=num_envs, seed=seed, device=device)


SPEC = registry.register(BackendSpec("warp", "MuJoCo Warp (mujoco-warp on warp-lang), one world per env; Warp's "
                                             "CPU device for now", make_env))
