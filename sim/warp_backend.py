"""MuJoCo Warp (``mujoco-warp`` on ``warp-lang``): the same tasks, term functions and randomization on Warp's
batched physics, one world per env, on a GPU (``device="cuda"``) or on Warp's CPU device (for correctness: slow,
a go2 world steps a few thousand times a second). ``robostack.sim.make_env(..., backend="warp", device=...)``;
``--backend warp --device cuda`` on ``robostack train``, ``eval``, ``bench sim`` and ``bench train``.

The batch's state lives in Warp arrays on the device; ``qpos``, ``qvel``, ``act``, ``time``, ``sensordata`` and
``ctrl`` are torch tensors sharing their memory (``wp.to_torch``), so ``TaskEnv`` and the term functions read the
state without a copy, and resets and pushes write straight into the next step (``TaskEnv.write_sim``). On a GPU,
Warp's stream and torch's wait on each other on the device (no host sync), and a control step's
``substeps`` physics steps are one captured CUDA graph (``wp.ScopedCapture``), launched once per step; the
contact and constraint counts are watched on the device and checked on the host every ``OVERFLOW_CHECK_STEPS``
steps and at every reset (an overflow is an error, never a silently dropped contact).

Randomization writes per-env ``MjModel`` copies, as on the C backend (``per_env_models``); the fields it may
change (``RANDOMIZED_FIELDS``: masses, inertias, centres of mass, friction, damping, armature, gains, body poses,
and the constants ``mj_setConst`` derives from masses) are batched per world in the Warp model and copied from the
copies before the next step (in place: a captured graph stays valid). A randomizer that changes any other field
MuJoCo Warp steps with is an error naming it, never a silent difference (checked on the first copies synced).
A model MuJoCo Warp cannot simulate (a geom pair, a sensor, an integrator it lacks) is refused when the env is
made, with MuJoCo Warp's own words for what is missing. Compiled kernels are cached in ``WARP_CACHE``
(``.cache/warp`` in the working directory unless ``ROBOSTACK_WARP_CACHE`` says otherwise), not in ``$HOME``.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import os
from pathlib import Path
from typing import Any

import mujoco
import numpy as np
import torch

from robostack import registry
from robostack.sim.task_env import TaskEnv
from robostack.specs import BackendSpec

RANDOMIZED_FIELDS = ("body_mass", "body_inertia", "body_ipos", "body_iquat", "body_pos", "body_quat",
                     "body_subtreemass", "body_invweight0", "dof_invweight0", "dof_damping", "dof_armature",
                     "geom_friction", "actuator_gainprm", "actuator_biasprm")
# Fields (name prefixes) a randomizer changes, or mj_setConst re-derives, that MuJoCo Warp's physics does not read
# for these models: the scene's cameras and lights (rendering goes through the C model copies, ``data_for``), a
# muscle's acc0 and the dofs' lengths (used for muscles and sleeping).
NOT_STEPPED_FIELDS = ("cam_", "light_", "actuator_acc0", "dof_length")
WARP_CACHE = Path(os.environ.get("ROBOSTACK_WARP_CACHE", Path.cwd() / ".cache" / "warp"))
CONTACTS_PER_WORLD = 64  # contact and constraint buffers, per world (an overflow is an error, see step)
CONSTRAINTS_PER_WORLD = 256
OVERFLOW_CHECK_STEPS = 50  # control steps between host checks of the buffers' high-water marks (and every reset)


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


def warp_device(device: str | torch.device) -> str:
    """The Warp device for a torch device name: ``cpu``, or ``cuda:N`` (a GPU this machine has)."""
    device = torch.device(device)
    if device.type == "cpu":
        return "cpu"
    if device.type != "cuda":
        raise WarpBackendError(f"the warp backend runs on a CUDA GPU or Warp's CPU device, not {str(device)!r}")
    if not torch.cuda.is_available():
        raise WarpBackendError(f"device {str(device)!r}: this machine has no CUDA GPU that torch can use "
                               "(run the warp backend on --device cpu, slowly, or on the default mujoco backend)")
    return f"cuda:{device.index if device.index is not None else torch.cuda.current_device()}"


class WarpBatch:
    """``num_envs`` MuJoCo Warp worlds of one model on ``device``; each env may get its own randomized
    ``MjModel`` copy (``per_env_models``), whose randomized fields reach its world before the next step."""

    def __init__(self, model: mujoco.MjModel, num_envs: int, substeps: int, nthread: int = 0,
                 device: str = "cpu"):
        if num_envs < 1 or substeps < 1:
            raise ValueError(f"num_envs and substeps must be >= 1, got {num_envs} and {substeps}")
        wp, self._mjw = _warp()
        self._wp = wp
        self.device = warp_device(device)
        self.model, self.num_envs, self.substeps = model, num_envs, substeps
        self.nthread = 1  # Warp's CPU device runs kernels on one thread
        self.models: list[mujoco.MjModel] = [model] * num_envs
        self._own_models = False
        self._changed: set[int] = set()  # envs whose model copies changed since the worlds last had them
        data = mujoco.MjData(model)
        mujoco.mj_forward(model, data)
        with self._on_device():
            try:
                self._model = self._mjw.put_model(model, batch_sizes={f: num_envs for f in RANDOMIZED_FIELDS})
            except NotImplementedError as exc:
                raise WarpBackendError(f"MuJoCo Warp cannot simulate this model: {exc}") from None
            self._data = self._mjw.put_data(model, data, nworld=num_envs, nconmax=CONTACTS_PER_WORLD * num_envs,
                                            njmax=CONSTRAINTS_PER_WORLD)
        d = self._data
        self.qpos, self.qvel, self.act = wp.to_torch(d.qpos), wp.to_torch(d.qvel), wp.to_torch(d.act)
        self.time, self.sensordata, self.ctrl = wp.to_torch(d.time), wp.to_torch(d.sensordata), wp.to_torch(d.ctrl)
        self._qfrc_applied = wp.to_torch(d.qfrc_applied)
        self._model_fields = {field: wp.to_torch(getattr(self._model, field)) for field in RANDOMIZED_FIELDS}
        self._stepped_fields = [f.name for f in dataclasses.fields(self._model)
                                if f.name not in RANDOMIZED_FIELDS and not f.name.startswith(NOT_STEPPED_FIELDS)
                                and isinstance(getattr(model, f.name, None), np.ndarray)]
        self._fields_checked = False
        self._counts = [wp.to_torch(d.nacon), wp.to_torch(d.nefc)]
        self._limits = torch.tensor([CONTACTS_PER_WORLD * num_envs, CONSTRAINTS_PER_WORLD])
        self._high_water = torch.zeros(2, dtype=torch.int64, device=self.qpos.device)
        self._steps_unchecked = 0
        self._graph = None

    @contextlib.contextmanager
    def _on_device(self):
        """Warp work on this batch's device. On a GPU it runs on Warp's own stream (a graph cannot be captured on
        torch's default, legacy stream), after the torch work queued so far and before torch's next: stream waits
        on the device, no host sync."""
        wp = self._wp
        with wp.ScopedDevice(self.device):
            if self.device == "cpu":
                yield
                return
            torch_stream = wp.stream_from_torch(torch.cuda.current_stream(self.device))
            warp_stream = wp.get_stream(self.device)
            warp_stream.wait_stream(torch_stream)  # resets and controls written by torch land first
            yield
            torch_stream.wait_stream(warp_stream)  # and torch reads the state after the physics

    def per_env_models(self, env_ids: np.ndarray) -> list[mujoco.MjModel]:
        """Every env's own model copy (made once), for changes to those of ``env_ids``: their randomized fields
        reach their worlds before the next step (only theirs: on a GPU, envs reset every step)."""
        if not self._own_models:
            self.models = [copy.copy(self.model) for _ in range(self.num_envs)]
            self._own_models = True
        self._changed.update(int(i) for i in env_ids)
        return self.models

    def _sync_models(self) -> None:
        ids = sorted(self._changed)
        self._changed.clear()
        if not self._fields_checked:
            self._check_fields(self.models[ids[0]])
        index = torch.as_tensor(ids, device=self.qpos.device)
        for field, worlds in self._model_fields.items():  # [worlds, items(, vector)], torch views of Warp's
            values = np.stack([getattr(self.models[i], field) for i in ids]).reshape(len(ids), *worlds.shape[1:])
            worlds[index] = torch.as_tensor(values, dtype=worlds.dtype, device=worlds.device)

    def _check_fields(self, randomized: mujoco.MjModel) -> None:
        """A field a randomizer changed that the worlds would not get is refused by name (once: the startup and
        reset events have run on the first copies synced)."""
        self._fields_checked = True
        for field in self._stepped_fields:
            if not np.array_equal(getattr(randomized, field), getattr(self.model, field)):
                raise WarpBackendError(f"randomization changes {field}, which the warp backend does not copy to its "
                                       f"worlds yet (robostack.sim.warp_backend.RANDOMIZED_FIELDS); run this task "
                                       "on the mujoco backend, or leave that randomization out")

    def _substeps(self) -> None:
        for _ in range(self.substeps):
            self._mjw.step(self._model, self._data)

    def step(self, ctrl: torch.Tensor, qfrc_applied: torch.Tensor | None = None) -> None:
        """Advance every env by ``substeps`` physics steps holding ``ctrl`` [N, nu] (zero-order hold)."""
        if self._changed:
            self._sync_models()
        self.ctrl.copy_(ctrl)
        if qfrc_applied is None:
            self._qfrc_applied.zero_()
        else:
            self._qfrc_applied.copy_(qfrc_applied)
        with self._on_device():
            if self.device == "cpu":
                self._substeps()
            else:
                if self._graph is None:  # kernels load on a first plain step; then the step is captured once
                    self._substeps()
                    with self._wp.ScopedCapture() as capture:
                        self._substeps()
                    self._graph = capture.graph
                else:
                    self._wp.capture_launch(self._graph)
        self._watch_buffers()
        self._steps_unchecked += 1
        if self._steps_unchecked >= OVERFLOW_CHECK_STEPS:
            self.check_buffers()

    def _watch_buffers(self) -> None:
        """Keep the contact and constraint counts' high-water marks on the device (no host sync)."""
        for i, count in enumerate(self._counts):
            self._high_water[i] = torch.maximum(self._high_water[i], count.max())

    def check_buffers(self) -> None:
        """Contacts or constraints past their buffers are dropped by MuJoCo Warp: refuse to go on (a host sync)."""
        self._steps_unchecked = 0
        used = self._high_water.cpu()
        for name, count, limit in zip(("contacts", "constraints"), used.tolist(), self._limits.tolist()):
            if count > limit:
                raise WarpBackendError(f"the warp backend's {name} buffer overflowed ({count} > {limit} in a world): "
                                       f"raise CONTACTS_PER_WORLD / CONSTRAINTS_PER_WORLD in {__name__}")

    def forward(self, env_ids: np.ndarray) -> None:
        """Recompute sensors (and everything derived) after states were written directly (resets, pushes)."""
        if self._changed:
            self._sync_models()
        with self._on_device():
            self._mjw.forward(self._model, self._data)
        self._watch_buffers()
        self.check_buffers()

    def data_for(self, env_id: int) -> mujoco.MjData:
        """An MjData holding one env's current state (for rendering, IK, debugging)."""
        model = self.models[env_id]
        data = mujoco.MjData(model)
        data.time = float(self.time[env_id])
        for name in ("qpos", "qvel", "act", "ctrl"):
            getattr(data, name)[:] = getattr(self, name)[env_id].cpu().numpy()
        mujoco.mj_forward(model, data)
        return data

    def close(self) -> None:
        self._model = self._data = self._graph = None


def make_env(definition: Any, num_envs: int | None = None, seed: int = 0, device: str = "cpu") -> TaskEnv:
    device = str(torch.device(warp_device(device)))  # refused here, in one line, where no GPU is
    return TaskEnv(definition, functools.partial(WarpBatch, device=device), num_envs=num_envs, seed=seed,
                   device=device)


SPEC = registry.register(BackendSpec("warp", "MuJoCo Warp (mujoco-warp on warp-lang), one world per env, on a "
                                             "CUDA GPU or Warp's CPU device", make_env))
