"""A bundle loaded for inference: its metadata (checked by ``robostack.bundle.format.read_metadata``) and the
onnxruntime session of its graph, as the class of its kind (``robostack.bundle.kinds``). Numpy and onnxruntime
only."""
from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from robostack import registry
from robostack.bundle.format import (ACTOR_CRITIC, BASE_DIR, CHUNK_NOISE, CHUNK_OUTPUT, COMMAND_CORRECTION,
                                     CONTRACT_KEY, INPUT_NAME, METADATA_FILE, ONNX_FILE, OUTPUT_NAME, BundleError,
                                     _jsonable, contract, read_metadata, residual_executed)


class LoadedBundle:
    """What every loaded bundle has: its folder, its metadata and the onnxruntime session of its graph."""

    def __init__(self, path: Path, metadata: dict[str, Any], session: Any):
        self.path = path
        self.metadata = metadata
        self._session = session

    @property
    def robot(self) -> str:
        return self.metadata["robot"]

    @property
    def task(self) -> str:
        return self.metadata["task"]

    @property
    def control_rate_hz(self) -> float:
        return float(self.metadata["control_rate_hz"])


class VectorPolicyBundle(LoadedBundle):
    """A bundle whose graph maps an observation vector to an action vector: ``act(obs) -> action``."""

    def __init__(self, path: Path, metadata: dict[str, Any], session: Any):
        super().__init__(path, metadata, session)
        self.obs_dim = int(metadata["observation"]["dim"])
        self.action_dim = int(metadata["action"]["dim"])

    # -- convenience views of the metadata
    def observation_slices(self) -> dict[str, slice]:
        """Observation term name -> its slice of the observation vector."""
        return {t["name"]: slice(t["offset_in_vector"], t["offset_in_vector"] + t["dim"])
                for t in self.metadata["observation"]["terms"]}

    # -- inference
    def act(self, obs: np.ndarray) -> np.ndarray:
        """Deterministic action(s) in [-1, 1] for raw policy observation(s) ``[obs_dim]`` or ``[B, obs_dim]``."""
        x = np.asarray(obs)
        if x.dtype == object or not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
            raise BundleError(f"bundle {self.path}: observation must be a numeric array, got dtype {x.dtype}")
        single = x.ndim == 1
        if x.ndim not in (1, 2) or x.shape[-1] != self.obs_dim:
            raise BundleError(f"bundle {self.path}: observation must have shape [{self.obs_dim}] or "
                              f"[batch, {self.obs_dim}], got {list(x.shape)}")
        x = np.ascontiguousarray(x.reshape(1, -1) if single else x, dtype=np.float32)
        finite = np.isfinite(x)
        if not finite.all():
            rows, cols = np.nonzero(~finite)
            names = self._term_at(cols[:3])
            raise BundleError(f"bundle {self.path}: observation has non-finite values (NaN or inf) at "
                              f"{'index' if single else 'row, index'} "
                              + ", ".join(f"{c}" if single else f"({r}, {c})" for r, c in zip(rows[:3], cols[:3]))
                              + f" (terms: {', '.join(names)})")
        if x.shape[0] == 0:
            return np.zeros((0, self.action_dim), np.float32)
        (action,) = self._session.run([OUTPUT_NAME], {INPUT_NAME: x})
        action = np.asarray(action, dtype=np.float32)
        return action[0] if single else action

    __call__ = act

    def _term_at(self, cols: np.ndarray) -> list[str]:
        out = []
        for c in cols:
            for name, sl in self.observation_slices().items():
                if sl.start <= int(c) < sl.stop and name not in out:
                    out.append(name)
        return out


class PolicyBundle(VectorPolicyBundle):
    """A loaded actor-critic bundle: ``act(obs) -> action`` through onnxruntime, ``controls(action)``."""

    def __init__(self, path: Path, metadata: dict[str, Any], session: Any):
        super().__init__(path, metadata, session)
        act = metadata["action"]
        self.ik = act.get("ik")  # end-effector actions: controls need the robot's kinematics
        ids = self.ik["actuator_indices"] if self.ik else [t["actuator_index"] for t in act["terms"]]
        self._act_ids = np.array(ids, dtype=np.int64)
        self._act_scale = np.array([t["scale"] for t in act["terms"]], dtype=np.float64)
        self._ctrl_offset = np.array(act["offset"], dtype=np.float64)
        self._ctrl_lo = np.array([-np.inf if v is None else v for v in act["ctrl_min"]], dtype=np.float64)
        self._ctrl_hi = np.array([np.inf if v is None else v for v in act["ctrl_max"]], dtype=np.float64)
        self.relative = bool(act.get("relative", False))
        self.target_limits = act.get("target_limits")  # the safety layer's clamps, at the measured state

    def controls(self, action: np.ndarray, previous: np.ndarray | None = None) -> np.ndarray:
        """Actuator controls ``[nu]`` (or ``[B, nu]``) for action(s): ``base + scale * a`` on the driven
        actuators, clipped to the actuators' control limits (what the simulator applied in training).

        ``base`` is the action offset; for a relative bundle it is ``previous``, the controls this method
        returned last step (pass None at the start of an episode to start from the offset)."""
        a = np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0)
        if a.shape[-1] != self.action_dim or a.ndim not in (1, 2):
            raise BundleError(f"bundle {self.path}: action must have shape [{self.action_dim}] or "
                              f"[batch, {self.action_dim}], got {list(a.shape)}")
        if self.ik:
            raise BundleError(f"bundle {self.path}: its actions are end-effector displacements; controls need the "
                              "robot's kinematics (robostack.real.observation.ObservationBuilder.controls)")
        if self.target_limits:
            raise BundleError(f"bundle {self.path}: its targets are limited at the measured joint state; controls "
                              "need it (robostack.real.observation.ObservationBuilder.controls)")
        base = self._ctrl_offset if previous is None or not self.relative else np.asarray(previous, np.float64)
        if base.shape[-1] != self._ctrl_offset.shape[-1]:
            raise BundleError(f"bundle {self.path}: previous controls must have {self._ctrl_offset.shape[-1]} "
                              f"values, got shape {list(base.shape)}")
        ctrl = np.broadcast_to(base, a.shape[:-1] + self._ctrl_offset.shape).copy()
        ctrl[..., self._act_ids] += self._act_scale * a
        return np.clip(ctrl, self._ctrl_lo, self._ctrl_hi)

    def __repr__(self) -> str:
        return (f"PolicyBundle({str(self.path)!r}, robot={self.robot!r}, task={self.task!r}, "
                f"obs_dim={self.obs_dim}, action_dim={self.action_dim})")


class ResidualPolicyBundle(VectorPolicyBundle):
    """A residual bundle (``robostack.workflows.residual``, ``robostack.workflows.export.write_residual_bundle``):
    ``act(obs)`` is the correction in [-1, 1] from the task's policy observation with the base's action appended;
    ``base`` is the bundle it corrects (an actor-critic, or a chunk bundle acting in the task's actions), and the
    executed action is ``residual_executed`` over the actions' range."""

    def __init__(self, path: Path, metadata: dict[str, Any], session: Any, base: LoadedBundle):
        super().__init__(path, metadata, session)
        self.base = base
        self.scale = float(metadata["residual"]["scale"])
        self.low, self.high = (float(v) for v in metadata["action"]["range"])

    def executed(self, base_action: np.ndarray, correction: np.ndarray) -> np.ndarray:
        """The action the robot executes: the base's, corrected."""
        return residual_executed(np.asarray(base_action), np.asarray(correction), self.scale, self.low, self.high)

    def __repr__(self) -> str:
        return (f"ResidualPolicyBundle({str(self.path)!r}, task={self.task!r}, obs_dim={self.obs_dim}, "
                f"scale={self.scale}, base={self.base!r})")


class CommandCorrectionBundle(LoadedBundle):
    """A loaded command correction (``robostack.bundle.format.COMMAND_CORRECTION_RULE``): ``rate(inputs)`` is the
    offset's rate, clipped, from ``[B, n + k]`` inputs (the command's error on ``tracks``, then ``inputs``);
    ``base`` is the actor-critic bundle that follows the corrected command."""

    def __init__(self, path: Path, metadata: dict[str, Any], session: Any, base: LoadedBundle):
        super().__init__(path, metadata, session)
        self.base = base
        block = metadata[COMMAND_CORRECTION]
        self.tracks, self.inputs = list(block["tracks"]), list(block["inputs"])
        self.rate_limit = np.asarray(block["rate_limit"], dtype=np.float32)
        self.offset_limit = float(block["offset_limit"])
        self.control_dt = float(metadata["control_dt"])

    def rate(self, inputs: np.ndarray) -> np.ndarray:
        (rate,) = self._session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(inputs, dtype=np.float32)})
        return np.clip(rate, -self.rate_limit, self.rate_limit)

    def moved(self, offset: np.ndarray, rate: np.ndarray) -> np.ndarray:
        """The offset a control step at ``rate`` leaves, its norm held within ``offset_limit``."""
        moved = offset + self.control_dt * rate
        norm = np.linalg.norm(moved, axis=-1, keepdims=True)
        return moved * np.minimum(1.0, self.offset_limit / np.maximum(norm, 1e-12))

    def __repr__(self) -> str:
        return (f"CommandCorrectionBundle({str(self.path)!r}, task={self.task!r}, tracks={self.tracks}, "
                f"inputs={self.inputs}, base={self.base!r})")


class ChunkPolicyBundle(LoadedBundle):
    """A loaded chunk (diffusion) bundle: ``predict_chunks(histories, rng)`` runs every denoising step of one
    chunk through onnxruntime; ``robostack.bundle.chunks.ChunkExecutor`` executes the chunks."""

    def __init__(self, path: Path, metadata: dict[str, Any], session: Any):
        super().__init__(path, metadata, session)
        chunk = metadata["chunk"]
        self.cfg = SimpleNamespace(**{key: int(chunk[key]) for key in ("n_obs_steps", "horizon", "n_action_steps",
                                                                       "num_inference_steps")})
        self.state_dim = int(metadata["observation"]["dim"])
        self.act_dim = int(metadata["action"]["dim"])
        self.image_shapes = {"observation.images." + camera: tuple(hw)
                             for camera, hw in metadata["observation"].get("images", {}).items()}
        self.obs_keys = (["observation.state"] if self.state_dim else []) + list(self.image_shapes)
        self.inputs = list(chunk["inputs"])

    def predict_chunks(self, histories: dict[str, np.ndarray], generator: np.random.Generator | None = None
                       ) -> np.ndarray:
        """Chunks ``[B, horizon, act_dim]`` (actuator controls) from B robots' last ``n_obs_steps`` observations:
        state ``[B, T, state_dim]``, images ``[B, T, H, W, 3]`` uint8."""
        generator = generator if generator is not None else np.random.default_rng()
        batch = len(histories[self.obs_keys[0]])
        feeds = {CHUNK_NOISE: generator.standard_normal((batch, self.cfg.horizon, self.act_dim), dtype=np.float32)}
        for name, key in zip(self.inputs[1:], self.obs_keys):
            value = np.asarray(histories[key])
            feeds[name] = (np.moveaxis(value, -1, -3).astype(np.float32) / 255.0 if key in self.image_shapes
                           else value.astype(np.float32))
        return self._session.run([CHUNK_OUTPUT], feeds)[0]

    def __repr__(self) -> str:
        return (f"ChunkPolicyBundle({str(self.path)!r}, robot={self.robot!r}, task={self.task!r}, "
                f"state_dim={self.state_dim}, cameras={list(self.image_shapes)}, action_dim={self.act_dim})")


def load_bundle(path: str | os.PathLike, robot: str | None = None, threads: int = 1,
                verify: bool = True) -> LoadedBundle:
    """Open a bundle directory; with ``robot``, refuse a bundle made for another robot.

    Checks, in order: the directory and ``metadata.json`` (``read_metadata``: JSON, format, robot, files,
    structure, content hash with ``verify``), the bundle in ``base/`` for kinds that have one (the same checks),
    that the ONNX graph loads, that its inputs and outputs are what the metadata says (the kind's loader), and
    that the contract embedded in the graph is the metadata's. Any failure raises ``BundleError`` naming the
    problem. ``threads``: onnxruntime intra-op threads (the policy is a small MLP: 1 is fastest for one robot).
    """
    root = Path(path)
    meta = read_metadata(root, robot, verify)
    kind = registry.bundle_kind(meta.get("kind", ACTOR_CRITIC))
    base = None
    if kind.has_base:
        if not (root / BASE_DIR).is_dir():
            raise BundleError(f"bundle {root}: missing {BASE_DIR}/ (the policy it corrects)")
        base = load_bundle(root / BASE_DIR, robot, threads, verify)
    session = _session(root, threads)
    bundle = kind.load(root, meta, session, base)
    embedded = session.get_modelmeta().custom_metadata_map.get(CONTRACT_KEY)
    if embedded is not None and json.loads(embedded) != _jsonable(contract(meta)):
        raise BundleError(f"bundle {root}: the contract in {ONNX_FILE}'s metadata_props differs from {METADATA_FILE}")
    return bundle


def _session(root: Path, threads: int) -> Any:
    """The onnxruntime session of the bundle's graph, on the CPU with ``threads`` intra-op threads."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, int(threads))
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(root / ONNX_FILE), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types (InvalidProtobuf, Fail, ...)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BundleError(f"bundle {root}: corrupt {ONNX_FILE}: onnxruntime cannot load it ({first})") from None
