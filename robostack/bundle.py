"""The policy bundle: the one artifact deployment consumes.

A bundle is a directory::

    policy.onnx     input "obs" float32 [batch, obs_dim] (the raw "policy" observation, exactly as the env
                    builds it), output "action" float32 [batch, action_dim] in [-1, 1]; the observation
                    normalization and the action bounding are part of the graph
    policy.pt       the same module as TorchScript
    metadata.json   everything deploy code needs to build that observation and apply that action

``metadata.json`` (``format_version`` 1)::

    format_version, robot, task, algo, created, robostack_version
    observation     {dim, terms: [{name, dim, scale, offset_in_vector[, integral: {of, limit, dt}]}]}
                    (policy group, in order; an ``integral`` term is the running sum of dt x the quantity
                    ``of`` over the episode, clipped to +-limit, zero at the episode's start)
    action          {dim, range: [-1, 1],
                     terms: [{index, actuator, actuator_index, joint, scale, offset}],  (one per action dim;
                            with ik: [{index, ee_axis, scale}])
                     actuators: [names], offset: [per actuator], ctrl_min/ctrl_max: [per actuator, null =
                     unlimited], relative, ik: null | {site, joints, actuator_indices, damping}, formula}
    actuators       [{name, joint, type ("position" | "motor" | ...), gear, ctrl_range, kp, kd}]
    joint_names     actuated joints in actuator order (the joint_pos / joint_vel observation order)
    default_joint_pos
    pd_gains        {kp: [per actuator], kd: [per actuator]} (null for actuators that are not PD servos)
    control_rate_hz, control_dt, physics_dt, decimation, max_episode_length
    task_config     the task's full config as trained (YAML + overrides): evaluation and deployment rebuild
                    the task's terms from it, not from the current YAML file
    training        {task_overrides, train_config, run_dir, checkpoint, iteration, env_steps, wall_s}
    files           {"policy.onnx": sha256, "policy.pt": sha256}
    content_hash    sha256 over the two files' bytes and the canonical JSON of the metadata without this field

Applying an action ``a`` (deploy side, see ``PolicyBundle.controls``)::

    ctrl = base; ctrl[terms[i].actuator_index] += terms[i].scale * clip(a[i], -1, 1); clip to ctrl limits

where ``base`` is ``action.offset``, or with ``action.relative`` the previous step's ``ctrl`` (``offset`` at
the start of an episode): a relative action integrates into the joint targets. With ``action.ik`` the action
is an end-effector displacement (``scale`` m, then rad, per step, world frame) and the change of the listed
joints' targets is ``J^T (J J^T + damping^2 I)^-1 (scale * a)`` with ``J`` the site Jacobian (``sim.ik``).

A chunk bundle (``"kind": "chunk"``: a diffusion policy, ``robostack.imitation.export_chunk_bundle``) has the
same three files; its graph runs every denoising step of one action chunk::

    policy.onnx     inputs "noise" [batch, horizon, action_dim] (standard normal), "observation_state"
                    [batch, n_obs_steps, dim] and "observation_images_<camera>" [batch, n_obs_steps, 3, H, W]
                    in [0, 1]; output "chunk" [batch, horizon, action_dim]
    metadata        observation {dim, terms: [{name, dim, names, offset_in_vector}], images: {camera: [H, W]}}
                    (the state: dataset features side by side), action {kind: "controls", dim, names,
                    actuators, ctrl_min, ctrl_max} (absolute controls, whatever the graph learned them relative
                    to) or {kind: "task", dim, names, range, ik: {site, ee_step}} (the task's end-effector steps
                    and gripper command, in [-1, 1]; ee_step: m and rad per unit), chunk {n_obs_steps, horizon,
                    n_action_steps, num_inference_steps, query_every, ensemble_coef, inputs}, and robot, task,
                    joint_names, control rate, task_config, training, files and content_hash as above

A residual bundle (``"kind": "residual"``: ``robostack.residual.export_residual_bundle``) is a vector policy
that corrects a chunk bundle kept in ``base/``::

    policy.onnx     input "obs" [batch, obs_dim]: the task's policy observation, then the base's action;
                    output "action" [batch, action_dim]: the correction in [-1, 1]
    metadata        observation {dim, terms: [..., {name: "base_action", dim: action_dim}]}, action (the
                    base's), residual {scale, executed}: the executed action is clip(base action + scale *
                    correction, -1, 1); base {path: "base", content_hash: the base bundle's}

Loading (``load_bundle``) needs only numpy and onnxruntime: this module imports neither torch nor MuJoCo at
the top; ``export_bundle`` (the training side) imports them when called.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import numpy as np

__all__ = ["FORMAT_VERSION", "BundleError", "LoadedBundle", "PolicyBundle", "ChunkPolicyBundle", "ResidualPolicyBundle",
           "load_bundle",
           "write_bundle", "bench_policy", "export_bundle", "content_hash", "ONNX_FILE", "TORCHSCRIPT_FILE",
           "METADATA_FILE"]

FORMAT_VERSION = 1
ONNX_FILE = "policy.onnx"
TORCHSCRIPT_FILE = "policy.pt"
METADATA_FILE = "metadata.json"
BASE_DIR = "base"  # a residual bundle's base policy: a bundle of its own
HASHED_FILES = (ONNX_FILE, TORCHSCRIPT_FILE)
INPUT_NAME = "obs"
OUTPUT_NAME = "action"
ACTOR_CRITIC, CHUNK, RESIDUAL = "actor_critic", "chunk", "residual"  # metadata "kind" (absent: actor_critic)
RESIDUAL_BASE_TERM = "base_action"  # a residual's last observation term: the action of the base it corrects
CHUNK_NOISE, CHUNK_STATE, CHUNK_IMAGE, CHUNK_OUTPUT = "noise", "observation_state", "observation_images_", "chunk"
ONNX_OPSET = 17


class BundleError(ValueError):
    """A policy bundle that cannot be used: the message names the bundle and the problem."""


# ------------------------------------------------------------------------------------------ hashing


def _canonical_json(data: Any) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def content_hash(bundle_dir: str | os.PathLike, metadata: dict[str, Any] | None = None) -> str:
    """sha256 over ``policy.onnx``, ``policy.pt`` (name and bytes, in that order) and the canonical JSON of
    the metadata without its ``content_hash`` field (read from the bundle unless given)."""
    root = Path(bundle_dir)
    if metadata is None:
        metadata = json.loads((root / METADATA_FILE).read_text())
    h = hashlib.sha256()
    for name in HASHED_FILES:
        h.update(name.encode() + b"\0")
        with (root / name).open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    meta = {k: v for k, v in metadata.items() if k != "content_hash"}
    h.update(METADATA_FILE.encode() + b"\0")
    h.update(_canonical_json(meta))
    return h.hexdigest()


# ------------------------------------------------------------------------------------------ loading


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
        self._act_ids = np.array(self.ik["actuator_indices"] if self.ik else [t["actuator_index"] for t in act["terms"]],
                                 dtype=np.int64)
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
    """A residual bundle (``robostack.residual``): ``act(obs)`` is the correction in [-1, 1] from the task's
    policy observation with the base's action appended; ``base`` is the chunk bundle it corrects, and the
    executed action is ``clip(base action + scale * correction, -1, 1)``."""

    def __init__(self, path: Path, metadata: dict[str, Any], session: Any, base: ChunkPolicyBundle):
        super().__init__(path, metadata, session)
        self.base = base
        self.scale = float(metadata["residual"]["scale"])

    def executed(self, base_action: np.ndarray, correction: np.ndarray) -> np.ndarray:
        """The action the robot executes: the base's, corrected (actions span [-1, 1])."""
        return np.clip(np.asarray(base_action) + self.scale * np.clip(correction, -1.0, 1.0), -1.0, 1.0)

    def __repr__(self) -> str:
        return (f"ResidualPolicyBundle({str(self.path)!r}, task={self.task!r}, obs_dim={self.obs_dim}, "
                f"scale={self.scale}, base={self.base!r})")


class ChunkPolicyBundle(LoadedBundle):
    """A loaded chunk (diffusion) bundle: ``predict_chunks(histories, rng)`` runs every denoising step of one
    chunk through onnxruntime; ``robostack.policies.diffusion.ChunkExecutor`` executes the chunks."""

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


def _read_metadata_json(root: Path) -> dict[str, Any]:
    path = root / METADATA_FILE
    if not path.is_file():
        raise BundleError(f"bundle {root}: missing {METADATA_FILE}")
    try:
        metadata = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"bundle {root}: corrupt {METADATA_FILE}: not valid JSON ({exc})") from None
    if not isinstance(metadata, dict):
        raise BundleError(f"bundle {root}: corrupt {METADATA_FILE}: expected a JSON object")
    return metadata


def _check_metadata(root: Path, meta: dict[str, Any]) -> None:
    def fail(what: str) -> BundleError:
        return BundleError(f"bundle {root}: corrupt {METADATA_FILE}: {what}")

    for key in ("robot", "task", "observation", "action", "task_config", "content_hash"):
        if key not in meta:
            raise fail(f"missing field {key!r}")
    kind = meta.get("kind", ACTOR_CRITIC)
    if kind == CHUNK:
        _check_chunk_metadata(meta, fail)
        return
    if kind == RESIDUAL:
        _check_residual_metadata(meta, fail)
        return
    if kind != ACTOR_CRITIC:
        raise fail(f"unknown policy kind {kind!r} (this RoboStack runs {ACTOR_CRITIC!r}, {CHUNK!r} and {RESIDUAL!r})")
    obs, act = meta["observation"], meta["action"]
    try:
        terms = obs["terms"]
        total = sum(int(t["dim"]) for t in terms)
        offsets_ok = all(int(t["offset_in_vector"]) == sum(int(u["dim"]) for u in terms[:i])
                         for i, t in enumerate(terms))
        obs_dim, act_dim, act_terms = int(obs["dim"]), int(act["dim"]), act["terms"]
        nu = len(act["offset"])
        ids = act["ik"]["actuator_indices"] if act.get("ik") else [t["actuator_index"] for t in act_terms]
        ids_ok = all(0 <= int(i) < nu for i in ids)
        limits_ok = len(act["ctrl_min"]) == nu and len(act["ctrl_max"]) == nu
    except (KeyError, TypeError, ValueError) as exc:
        raise fail(f"malformed observation/action description ({type(exc).__name__}: {exc})") from None
    if total != obs_dim:
        raise BundleError(f"bundle {root}: observation terms add up to {total} values but observation.dim is "
                          f"{obs_dim}")
    if not offsets_ok:
        raise fail("observation term offsets do not follow the term order")
    if len(act_terms) != act_dim:
        raise BundleError(f"bundle {root}: action.dim is {act_dim} but {len(act_terms)} action terms are listed")
    if not ids_ok or not limits_ok:
        raise fail("action terms or control limits do not match the actuator list")


def _check_chunk_metadata(meta: dict[str, Any], fail: Callable[[str], BundleError]) -> None:
    try:
        obs, act, chunk = meta["observation"], meta["action"], meta["chunk"]
        terms = obs["terms"]
        total = sum(int(t["dim"]) for t in terms)
        names_ok = all(len(t["names"]) == int(t["dim"]) for t in terms)
        sizes = [int(chunk[k]) for k in ("n_obs_steps", "horizon", "n_action_steps", "num_inference_steps")]
        images = {camera: [int(v) for v in hw] for camera, hw in obs.get("images", {}).items()}
        inputs = list(chunk["inputs"])
        kind = act.get("kind", "controls")
        act_ok = (len(act["names"]) == int(act["dim"]) and kind in ("controls", "task")
                  and (kind == "task" or len(act["ctrl_min"]) == len(act["ctrl_max"]) == int(act["dim"])))
    except (KeyError, TypeError, ValueError) as exc:
        raise fail(f"malformed chunk policy description ({type(exc).__name__}: {exc})") from None
    if total != int(obs["dim"]) or not names_ok:
        raise fail(f"observation terms add up to {total} values, observation.dim is {obs['dim']}, or a term's names "
                   "do not match its size")
    if min(sizes) < 1 or not act_ok:
        raise fail("chunk sizes must be positive and the action's names and limits must match action.dim")
    expected = [CHUNK_NOISE] + ([CHUNK_STATE] if terms else []) + [CHUNK_IMAGE + camera for camera in images]
    if inputs != expected:
        raise fail(f"chunk.inputs {inputs} should be {expected}")


def _check_residual_metadata(meta: dict[str, Any], fail: Callable[[str], BundleError]) -> None:
    try:
        terms, obs_dim, act_dim = meta["observation"]["terms"], int(meta["observation"]["dim"]), int(meta["action"]["dim"])
        total = sum(int(t["dim"]) for t in terms)
        scale, base = float(meta["residual"]["scale"]), meta["base"]
        base_ok = base["path"] == BASE_DIR and isinstance(base["content_hash"], str)
    except (KeyError, TypeError, ValueError) as exc:
        raise fail(f"malformed residual policy description ({type(exc).__name__}: {exc})") from None
    if total != obs_dim or not terms or terms[-1]["name"] != "base_action" or int(terms[-1]["dim"]) != act_dim:
        raise fail(f"observation terms add up to {total} values (observation.dim is {obs_dim}) or do not end with "
                   f"the base's action (base_action, {act_dim} values)")
    if not 0.0 < scale <= 2.0 or not base_ok:
        raise fail(f"residual.scale must be in (0, 2] (got {scale}) and base must name {BASE_DIR!r} and its hash")


def _onnx_dim(shape: list[Any], axis: int) -> int | None:
    if len(shape) <= axis:
        return None
    return shape[axis] if isinstance(shape[axis], int) else None


def read_metadata(path: str | os.PathLike, robot: str | None = None, verify: bool = True) -> dict[str, Any]:
    """A bundle's checked metadata, without loading its graph (numpy only: what a safety node reads).

    Checks, in order: the directory and ``metadata.json`` (JSON, ``format_version``), the robot (with
    ``robot``), that both policy files are there, the metadata's structure and the content hash (``verify``).
    Any failure raises ``BundleError`` naming the problem."""
    root = Path(path)
    if not root.exists():
        raise BundleError(f"bundle {root}: no such directory")
    if not root.is_dir():
        raise BundleError(f"bundle {root}: not a directory (a bundle is a folder with {METADATA_FILE}, "
                          f"{ONNX_FILE} and {TORCHSCRIPT_FILE})")
    meta = _read_metadata_json(root)
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise BundleError(f"bundle {root}: bundle format {version}, this RoboStack reads {FORMAT_VERSION}")
    if robot is not None and meta.get("robot") != robot:
        raise BundleError(f"bundle {root}: bundle made for {meta.get('robot')}, not {robot}")
    for name in HASHED_FILES:
        if not (root / name).is_file():
            raise BundleError(f"bundle {root}: missing {name}")
    _check_metadata(root, meta)
    if verify:
        try:
            actual = content_hash(root, meta)
        except ValueError as exc:  # e.g. NaN in the metadata: not canonical JSON
            raise BundleError(f"bundle {root}: corrupt {METADATA_FILE}: {exc}") from None
        if actual != meta["content_hash"]:
            raise BundleError(f"bundle {root}: content hash mismatch: files were modified "
                              f"(expected {meta['content_hash'][:12]}..., got {actual[:12]}...)")
    return meta


def load_bundle(path: str | os.PathLike, robot: str | None = None, threads: int = 1,
                verify: bool = True) -> PolicyBundle | ChunkPolicyBundle | ResidualPolicyBundle:
    """Open a bundle directory; with ``robot``, refuse a bundle made for another robot.

    Checks, in order: the directory and ``metadata.json`` (JSON, ``format_version``), the robot, that both
    policy files are there, the content hash (``verify``), that the ONNX graph loads, and that its input /
    output sizes agree with the metadata (a residual's base: the same checks, and that it is the base the
    residual was exported with). Any failure raises ``BundleError`` naming the problem.
    ``threads``: onnxruntime intra-op threads (the policy is a small MLP: 1 is fastest for a single robot).
    """
    root = Path(path)
    meta = read_metadata(root, robot, verify)
    base = None
    if meta.get("kind") == RESIDUAL:
        if not (root / BASE_DIR).is_dir():
            raise BundleError(f"bundle {root}: missing {BASE_DIR}/ (the policy the residual corrects)")
        base = load_bundle(root / BASE_DIR, robot, threads, verify)
        if not isinstance(base, ChunkPolicyBundle) or base.metadata["action"].get("kind") != "task":
            raise BundleError(f"bundle {root}: its base is not a chunk bundle acting in the task's actions")
        if base.metadata["content_hash"] != meta["base"]["content_hash"]:
            raise BundleError(f"bundle {root}: {BASE_DIR}/ is not the base this residual was exported with "
                              f"(content hash {base.metadata['content_hash'][:12]}..., expected "
                              f"{meta['base']['content_hash'][:12]}...)")

    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, int(threads))
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(root / ONNX_FILE), sess_options=options,
                                       providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types (InvalidProtobuf, Fail, ...)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BundleError(f"bundle {root}: corrupt {ONNX_FILE}: onnxruntime cannot load it ({first})") from None

    inputs, outputs = session.get_inputs(), session.get_outputs()
    if meta.get("kind", ACTOR_CRITIC) == CHUNK:
        if [i.name for i in inputs] != meta["chunk"]["inputs"] or [o.name for o in outputs] != [CHUNK_OUTPUT]:
            raise BundleError(f"bundle {root}: {ONNX_FILE} has inputs {[i.name for i in inputs]} and outputs "
                              f"{[o.name for o in outputs]}; the metadata says {meta['chunk']['inputs']} and "
                              f"{[CHUNK_OUTPUT]}")
        _check_contract(root, meta, session)
        return ChunkPolicyBundle(root, meta, session)
    if [i.name for i in inputs] != [INPUT_NAME] or OUTPUT_NAME not in [o.name for o in outputs]:
        raise BundleError(f"bundle {root}: {ONNX_FILE} must have one input {INPUT_NAME!r} and an output "
                          f"{OUTPUT_NAME!r}, has inputs {[i.name for i in inputs]} and outputs "
                          f"{[o.name for o in outputs]}")
    obs_dim, act_dim = int(meta["observation"]["dim"]), int(meta["action"]["dim"])
    in_dim = _onnx_dim(inputs[0].shape, 1)
    out_dim = _onnx_dim(next(o for o in outputs if o.name == OUTPUT_NAME).shape, 1)
    if in_dim != obs_dim:
        raise BundleError(f"bundle {root}: {ONNX_FILE} takes observations of size {in_dim} but the metadata "
                          f"says observation.dim = {obs_dim}")
    if out_dim != act_dim:
        raise BundleError(f"bundle {root}: {ONNX_FILE} returns actions of size {out_dim} but the metadata "
                          f"says action.dim = {act_dim}")
    _check_contract(root, meta, session)
    if base is not None:
        return ResidualPolicyBundle(root, meta, session, base)
    return PolicyBundle(root, meta, session)


def _check_contract(root: Path, meta: dict[str, Any], session: Any) -> None:
    """The contract embedded in the graph (``embed_contract``) must be the metadata's."""
    embedded = session.get_modelmeta().custom_metadata_map.get(CONTRACT_KEY)
    if embedded is not None and json.loads(embedded) != _jsonable(contract(meta)):
        raise BundleError(f"bundle {root}: the contract in {ONNX_FILE}'s metadata_props differs from {METADATA_FILE}")


def bench_policy(path: str | os.PathLike, iterations: int = 200, warmup: int = 20, threads: int = 1,
                 seed: int = 0) -> dict[str, Any]:
    """``robostack bench policy``: the latency of one inference through onnxruntime for one robot (batch 1),
    on observations of the bundle's shapes: one action (actor-critic) or one full chunk, every denoising step
    (chunk). A chunk has to be ready within the ``n_action_steps`` control periods it covers."""
    import time

    bundle = load_bundle(path, threads=threads)
    rng = np.random.default_rng(seed)
    if isinstance(bundle, ChunkPolicyBundle):
        steps = bundle.cfg.n_obs_steps
        histories = {key: rng.integers(0, 256, (1, steps, *bundle.image_shapes[key], 3), dtype=np.uint8)
                     if key in bundle.image_shapes else rng.standard_normal((1, steps, bundle.state_dim), np.float32)
                     for key in bundle.obs_keys}

        def infer() -> Any:
            return bundle.predict_chunks(histories, rng)
    else:
        obs = rng.standard_normal((1, bundle.obs_dim), np.float32)

        def infer() -> Any:
            return bundle.act(obs)
    for _ in range(warmup):
        infer()
    times_ns = []
    for _ in range(iterations):
        start = time.perf_counter_ns()
        infer()
        times_ns.append(time.perf_counter_ns() - start)
    ms = np.array(times_ns) * 1e-6
    meta = bundle.metadata
    result = {"bundle": str(path), "kind": meta.get("kind", ACTOR_CRITIC), "task": meta["task"],
              "threads": threads, "iterations": iterations,
              "latency_ms": {**{f"p{q}": round(float(np.percentile(ms, q)), 3) for q in (50, 90, 99)},
                             "max": round(float(ms.max()), 3), "mean": round(float(ms.mean()), 3)},
              "control_period_ms": round(1000.0 / bundle.control_rate_hz, 3),
              "machine": {"cores": os.cpu_count(), "load_1min": round(os.getloadavg()[0], 2)}}
    if isinstance(bundle, ChunkPolicyBundle):
        result.update({"cameras": [key.rsplit(".", 1)[-1] for key in bundle.image_shapes],
                       "denoising_steps": bundle.cfg.num_inference_steps,
                       "chunk_covers_ms": round(1000.0 * bundle.cfg.n_action_steps / bundle.control_rate_hz, 3)})
    return result


def is_bundle(path: str | os.PathLike) -> bool:
    p = Path(path)
    return p.is_dir() and (p / METADATA_FILE).is_file()


# ---------------------------------------------------------------------------------------- exporting


def _json_number(x: float) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def non_finite_paths(value: Any, path: str) -> list[str]:
    """Where plain data (dicts, lists, numbers) under ``path`` holds an infinity or NaN, as dotted paths."""
    if isinstance(value, dict):
        return [p for key, item in value.items() for p in non_finite_paths(item, f"{path}.{key}")]
    if isinstance(value, (list, tuple)):
        return [p for i, item in enumerate(value) for p in non_finite_paths(item, f"{path}[{i}]")]
    if isinstance(value, (float, np.floating)) and not math.isfinite(value):
        return [path]
    return []


def _jsonable(value: Any) -> Any:
    """Plain JSON data (tuples to lists, numpy scalars to numbers, non-finite floats to None)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return [_jsonable(v) for v in value.tolist()]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return _json_number(value)
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, Path):
        return str(value)
    return str(value)


def describe_observation(env: Any) -> dict[str, Any]:
    """The policy observation group of a ``TaskEnv`` for the metadata: its terms in order, sized from what
    the env computes now."""
    import dataclasses

    task = env.task
    terms, offset = [], 0
    for name, term in task.observations["policy"].items():
        dim = int(term.func(env).shape[-1])
        if term.defines is None:
            raise BundleError(f"task {task.name}: policy observation term {name!r} has no definition (what it "
                              "measures, its frame, units and order: robostack.sim.terms.Definition)")
        entry = {"name": name, "dim": dim, "scale": float(term.scale), "offset_in_vector": offset,
                 "definition": dataclasses.asdict(term.defines)}
        if hasattr(term.func, "integral_of"):  # a running integral: deploy code integrates that quantity
            of = term.func.integral_of
            entry["integral"] = {"of": of, "limit": float(task.integrals[of].limit), "dt": float(env.control_dt)}
        terms.append(entry)
        offset += dim
    obs_dim = int(env.observation_spaces["policy"].shape[-1])
    if offset != obs_dim:
        raise RuntimeError(f"task {task.name}: policy terms add up to {offset}, observation space is {obs_dim}")
    return {"dim": obs_dim, "terms": terms}


def _actuated_joint(model: Any, i: int) -> str | None:
    import mujoco

    if int(model.actuator_trntype[i]) in (int(mujoco.mjtTrn.mjTRN_JOINT), int(mujoco.mjtTrn.mjTRN_JOINTINPARENT)):
        return model.joint(int(model.actuator_trnid[i, 0])).name
    return None


def describe_actuators(model: Any) -> list[dict[str, Any]]:
    """Every actuator of a ``mujoco.MjModel`` in driver order: name, joint, type ("position": a PD servo,
    "motor": force or thrust = gain x gear x ctrl), gain, gear, control range (null: unlimited), kp, kd."""
    import mujoco

    actuators = []
    for i in range(model.nu):
        gain, bias = model.actuator_gainprm[i], model.actuator_biasprm[i]
        gaintype, biastype = int(model.actuator_gaintype[i]), int(model.actuator_biastype[i])
        is_pd = (gaintype == int(mujoco.mjtGain.mjGAIN_FIXED) and biastype == int(mujoco.mjtBias.mjBIAS_AFFINE)
                 and bias[0] == 0.0 and gain[0] > 0 and np.isclose(bias[1], -gain[0]))
        limited = bool(model.actuator_ctrllimited[i])
        lo, hi = (float(model.actuator_ctrlrange[i, 0]), float(model.actuator_ctrlrange[i, 1])) if limited \
            else (None, None)
        if is_pd:
            kind = "position"
        elif biastype == int(mujoco.mjtBias.mjBIAS_NONE) and gaintype == int(mujoco.mjtGain.mjGAIN_FIXED):
            kind = "motor"  # force/torque/thrust = gain * gear * ctrl
        else:
            kind = "other"
        actuators.append({"name": model.actuator(i).name, "joint": _actuated_joint(model, i), "type": kind,
                          "gain": float(gain[0]), "gear": float(model.actuator_gear[i, 0]),
                          "ctrl_range": [lo, hi], "kp": float(gain[0]) if is_pd else None,
                          "kd": float(-bias[2]) if is_pd else None})
    return actuators


def describe_robot(task: Any, model: Any) -> dict[str, Any]:
    """What every bundle states about the robot it drives: its name, actuators, actuated joints (driver
    order), default joint positions and PD gains."""
    actuators = describe_actuators(model)
    return {
        "robot": task.robot,
        "actuators": actuators,
        "joint_names": [a["joint"] for a in actuators if a["joint"] is not None],
        "default_joint_pos": [float(v) for v in np.asarray(task.default_joint_pos).tolist()],
        "pd_gains": {"kp": [a["kp"] for a in actuators], "kd": [a["kd"] for a in actuators]},
    }


def describe_action(task: Any, model: Any) -> dict[str, Any]:
    """A vector policy's action map (``ActionMap``) for the metadata: what ``PolicyBundle.controls`` applies."""
    am, nu = task.action, model.nu
    if am.gripper is not None:
        raise BundleError(f"task {task.name}: its gripper action cannot be described in a bundle yet")
    action_terms, ik = [], None
    if am.ik is None:
        for k, aid in enumerate(np.asarray(am.actuator_ids).tolist()):
            action_terms.append({"index": k, "actuator": model.actuator(int(aid)).name, "actuator_index": int(aid),
                                 "joint": _actuated_joint(model, int(aid)), "scale": float(am.scale[k]),
                                 "offset": float(am.offset[int(aid)])})
    else:
        axes = ("x", "y", "z", "rx", "ry", "rz")  # metres, then a rotation vector (rad), world frame
        action_terms = [{"index": k, "ee_axis": axes[k], "scale": float(am.scale[k])} for k in range(am.dim)]
        ik = {"site": am.ik.site, "joints": list(am.ik.joints), "damping": float(am.ik.damping),
              "actuator_indices": [int(a) for a in np.asarray(am.actuator_ids).tolist()]}
    limited = model.actuator_ctrllimited.astype(bool)
    return {
        "dim": int(am.dim), "range": [-1.0, 1.0], "terms": action_terms,
        "actuators": [model.actuator(i).name for i in range(nu)],
        "offset": [float(v) for v in am.offset],
        "ctrl_min": [float(lo) if on else None for (lo, _), on in zip(model.actuator_ctrlrange, limited)],
        "ctrl_max": [float(hi) if on else None for (_, hi), on in zip(model.actuator_ctrlrange, limited)],
        "relative": bool(am.relative or am.ik), "ik": ik,
        "formula": ("ctrl = previous ctrl (offset at episode start)" if am.relative or am.ik else "ctrl = offset")
                   + ("; ctrl[ik.actuator_indices] += dls(J(ik.site), terms.scale * clip(a, -1, 1), ik.damping)"
                      if am.ik else "; ctrl[terms[i].actuator_index] += terms[i].scale * clip(a[i], -1, 1)")
                   + "; ctrl = clip(ctrl, ctrl_min, ctrl_max)"
                   + ("; ctrl = robostack.sim.joint_limits.limit_targets(ctrl, measured q, qdot, previous ctrl, "
                      "target_limits, control dt)" if am.limits is not None else ""),
        "target_limits": None if am.limits is None else {k: np.asarray(v).tolist() for k, v in vars(am.limits).items()},
    }


def rebuilt_mismatches(metadata: dict[str, Any], task: Any, model: Any) -> list[str]:
    """The metadata fields that the task rebuilt from the bundle's stored config (robot configuration
    included) describes otherwise: the robot's actuators, joints, default pose and gains, and a vector
    policy's action map. Empty when deployment applies actions exactly as the metadata says."""
    rebuilt = _jsonable(describe_robot(task, model))
    if metadata.get("kind", ACTOR_CRITIC) == ACTOR_CRITIC:
        rebuilt["action"] = _jsonable(describe_action(task, model))

    def differs(stored: Any, built: Any) -> bool:
        if isinstance(stored, dict) and isinstance(built, dict):  # a key stored without (older exports): null
            return any(differs(stored.get(k), built.get(k)) for k in {*stored, *built})
        return stored != built

    return [key for key, value in rebuilt.items() if key in metadata and differs(metadata[key], value)]


def describe_env(env: Any) -> dict[str, Any]:
    """Robot/task facts of a ``TaskEnv`` for a vector bundle's metadata: the robot (``describe_robot``),
    observation terms, action map, control timing."""
    task, model = env.task, env.default_model
    return {
        **describe_robot(task, model),
        "task": task.name,
        "observation": describe_observation(env),
        "action": describe_action(task, model),
        "command_dim": int(task.command_dim),
        "control_rate_hz": 1.0 / float(env.control_dt),
        "control_dt": float(env.control_dt),
        "physics_dt": float(task.sim.timestep),
        "decimation": int(task.sim.decimation),
        "max_episode_length": int(env.max_episode_length),
    }


def _resolve_source(source: str | os.PathLike, checkpoint: str | os.PathLike | None = None) -> tuple[Path, Path]:
    """(run_dir, checkpoint file) from a run folder or a checkpoint file (``checkpoint`` wins if given)."""
    path = Path(source)
    if not path.exists() and not path.is_absolute() and len(path.parts) == 1:
        found = sorted(Path("runs").glob(f"*/{path}"))  # a bare run name: look under ./runs/<task>/
        if len(found) == 1:
            path = found[0]
    if not path.exists():
        raise FileNotFoundError(f"no run folder or checkpoint at {source}")
    if path.is_file():
        ckpt = path
        run_dir = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    else:
        run_dir = path
        ckpt = run_dir / "checkpoints" / "last.pt"
    if checkpoint is not None:
        ckpt = Path(checkpoint)
        if not ckpt.exists() and (run_dir / "checkpoints" / ckpt).exists():
            ckpt = run_dir / "checkpoints" / ckpt
    if not ckpt.is_file():
        raise FileNotFoundError(f"no checkpoint at {ckpt} (a run folder has checkpoints/last.pt)")
    return run_dir, ckpt


class LoadedRun:
    """A checkpoint brought back to life: its task, env settings and the deterministic policy module."""

    def __init__(self, run_dir: Path, checkpoint: Path, ckpt: dict[str, Any], config: dict[str, Any]):
        self.run_dir, self.checkpoint, self.ckpt, self.config = run_dir, checkpoint, ckpt, config
        self.task: str = ckpt.get("task") or config.get("task")
        train_cfg = ckpt.get("train_config") or config.get("train") or {}
        self.train_config: dict[str, Any] = dict(train_cfg)
        self.algo: str = ckpt.get("algo") or self.train_config.get("algo") or config.get("algo") or "ppo"
        overrides = ckpt.get("task_overrides")
        self.task_overrides: list[str] = list(overrides if overrides is not None else config.get("task_overrides", []))
        if not self.task:
            raise ValueError(f"checkpoint {checkpoint}: does not say which task it was trained on")
        self._task_config: dict[str, Any] | None = ckpt.get("task_config") or config.get("task_config")

    @property
    def task_config(self) -> dict[str, Any]:
        """The full task config the run trained with, so its task is rebuilt exactly even after the task's YAML
        file changes (runs written before it was saved: the current YAML + the run's overrides)."""
        if self._task_config is None:
            from robostack import sim
            from robostack.config import to_dict

            self._task_config = to_dict(sim.load_task_config(self.task, self.task_overrides))
        return self._task_config

    def build_algorithm(self, env: Any) -> Any:
        """The algorithm object for ``env`` with the checkpoint's weights (through the registry)."""
        import importlib

        from robostack import registry
        from robostack.config import from_dict

        entry = registry.get("algorithm", self.algo)
        cfg = None
        spec = entry.extra.get("config")
        section = self.train_config.get(self.algo)
        if spec and isinstance(section, dict):
            module, _, name = spec.partition(":")
            cls = getattr(importlib.import_module(module), name)
            cfg = from_dict(cls, section, f"{self.checkpoint} (train_config.{self.algo})")
            if isinstance(getattr(cfg, "buffer_size", None), int):  # inference only: no big replay buffer
                cfg.buffer_size = min(cfg.buffer_size, 1024)
        try:
            alg = entry.target(env, cfg, device="cpu")
        except TypeError:  # a builder without a device argument
            alg = entry.target(env, cfg)
        state = self.ckpt.get("algorithm")
        if state is None:
            raise ValueError(f"checkpoint {self.checkpoint}: no 'algorithm' state in it")
        try:
            alg.load_state_dict(state, load_optimizer=False)
        except TypeError:
            alg.load_state_dict(state)
        if hasattr(alg, "eval_mode"):
            alg.eval_mode()
        return alg

    def policy_module(self, env: Any) -> Any:
        """Deterministic ``raw policy obs -> action`` torch module (eval mode, on CPU)."""
        alg = self.build_algorithm(env)
        module = None
        for owner in (alg, getattr(alg, "actor_critic", None), getattr(alg, "actor", None),
                      getattr(alg, "policy", None)):
            if owner is not None and callable(getattr(owner, "export_policy", None)):
                module = owner.export_policy()
                break
        if module is None:
            raise ValueError(f"algorithm {self.algo!r} has no export_policy(): cannot export its policy")
        module = module.to("cpu").eval()
        for p in module.parameters():
            p.requires_grad_(False)
        return module

    def make_env(self, num_envs: int = 1, seed: int = 0, play: bool = True) -> Any:
        from robostack import sim

        return sim.make_env(self.task, num_envs=num_envs, seed=seed, play=play, config=self.task_config)


def load_run(source: str | os.PathLike, checkpoint: str | os.PathLike | None = None) -> LoadedRun:
    """Read a run folder (or a checkpoint file) with torch: checkpoint, config.yaml, algorithm name."""
    import torch
    import yaml

    run_dir, ckpt_path = _resolve_source(source, checkpoint)
    try:
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise ValueError(f"cannot read checkpoint {ckpt_path}: {exc}") from None
    if not isinstance(ckpt, dict):
        raise ValueError(f"checkpoint {ckpt_path}: not a RoboStack checkpoint (expected a dict)")
    config_file = run_dir / "config.yaml"
    config = (yaml.safe_load(config_file.read_text()) or {}) if config_file.is_file() else {}
    return LoadedRun(run_dir, ckpt_path, ckpt, config)


def write_vector_onnx(module: Any, obs_dim: int, path: Path) -> None:
    import warnings

    import torch

    example = torch.zeros(2, obs_dim, dtype=torch.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy (TorchScript-based) exporter warns it is legacy
        torch.onnx.export(module, (example,), str(path), dynamo=False, input_names=[INPUT_NAME],
                          output_names=[OUTPUT_NAME], opset_version=ONNX_OPSET,
                          dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})


def write_vector_torchscript(module: Any, obs_dim: int, path: Path) -> None:
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            scripted = torch.jit.script(module)
        except Exception:  # a module scripting cannot compile: tracing is exact for a fixed MLP
            scripted = torch.jit.trace(module, torch.zeros(2, obs_dim))
        scripted.save(str(path))


def export_bundle(source: str | os.PathLike, out_dir: str | os.PathLike,
                  checkpoint: str | os.PathLike | None = None) -> Path:
    """Write the bundle for a run folder or checkpoint file to ``out_dir``; returns its path.

    ``out_dir`` may be new, empty or an older bundle (replaced); anything else in it is refused.
    """
    import torch

    import robostack

    run = load_run(source, checkpoint)
    if (run.train_config.get("residual") or {}).get("base"):
        from robostack.residual import export_residual_bundle

        return export_residual_bundle(run, out_dir)
    env = run.make_env(num_envs=1, seed=0, play=True)
    try:
        env.reset(seed=0)
        facts = describe_env(env)
        module = run.policy_module(env)
        obs_dim, act_dim = facts["observation"]["dim"], facts["action"]["dim"]
        with torch.no_grad():
            probe = module(torch.zeros(1, obs_dim))
        if tuple(probe.shape) != (1, act_dim):
            raise ValueError(f"policy of {run.checkpoint} maps [1, {obs_dim}] to {list(probe.shape)}, expected "
                             f"[1, {act_dim}]")
    finally:
        env.close()

    ck = run.ckpt
    metadata: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "robot": facts.pop("robot"),
        "task": facts.pop("task"),
        "algo": run.algo,
        **facts,
        "task_config": run.task_config,
        "training": {
            "task_overrides": list(run.task_overrides),
            "train_config": run.train_config,
            "run_dir": str(run.run_dir.resolve()),
            "checkpoint": str(run.checkpoint.resolve()),
            "iteration": ck.get("iteration"),
            "env_steps": ck.get("env_steps"),
            "wall_s": ck.get("wall_s"),
        },
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "robostack_version": robostack.__version__,
    }
    return write_bundle(out_dir, metadata, lambda path: write_vector_onnx(module, obs_dim, path),
                        lambda path: write_vector_torchscript(module, obs_dim, path))


CONTRACT_KEY = "robostack.contract"  # policy.onnx's metadata_props entry holding the contract (JSON)
CONTRACT_FIELDS = ("format_version", "kind", "robot", "task", "observation", "action", "joint_names", "actuators",
                   "default_joint_pos", "pd_gains", "command_dim", "control_rate_hz", "control_dt", "chunk", "residual")


def contract(metadata: dict[str, Any]) -> dict[str, Any]:
    """What a runtime needs of the metadata to run the graph on a robot (``CONTRACT_FIELDS``, those present):
    the observation terms with their definitions, the action map, the robot, the control rate."""
    return {key: metadata[key] for key in CONTRACT_FIELDS if key in metadata}


def embed_contract(onnx_path: Path, metadata: dict[str, Any]) -> None:
    """Put the bundle's contract into the ONNX graph's ``metadata_props`` (``CONTRACT_KEY``), so the graph
    alone says what to feed it and what its output commands."""
    import onnx

    model = onnx.load(str(onnx_path))
    del model.metadata_props[:]
    entry = model.metadata_props.add()
    entry.key, entry.value = CONTRACT_KEY, json.dumps(_jsonable(contract(metadata)), sort_keys=True)
    onnx.save(model, str(onnx_path))


def write_bundle(out_dir: str | os.PathLike, metadata: dict[str, Any], write_onnx: Callable[[Path], None],
                 write_torchscript: Callable[[Path], None], write_base: Callable[[Path], None] | None = None) -> Path:
    """Write a bundle's files next to ``out_dir``, hash them, then move them in: a reader never sees a half
    bundle. ``out_dir`` may be new, empty or an older bundle (replaced); anything else in it is refused.
    ``write_base`` writes the bundle a residual runs on into the folder it is given (``base/``); its content
    hash goes into the metadata (``base``), so the residual's hash covers it too."""
    out = Path(out_dir)
    if out.exists():
        if not out.is_dir():
            raise BundleError(f"cannot write a bundle to {out}: it is a file")
        extra = sorted(p.name for p in out.iterdir() if p.name not in (*HASHED_FILES, METADATA_FILE, BASE_DIR))
        if extra:
            raise BundleError(f"cannot write a bundle to {out}: the folder holds other files "
                              f"({', '.join(extra[:3])}); choose a new or empty folder")
    # _jsonable would store them as null, which a task rebuilt from the bundle may read as something else
    infinite = non_finite_paths(metadata.get("task_config", {}), "task_config")
    if infinite:
        raise BundleError(f"cannot write a bundle: {', '.join(infinite)} is not finite, and a bundle's JSON metadata "
                          "holds finite numbers only; say 'no limit' with null in the task config")
    metadata = _jsonable(metadata)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        write_onnx(tmp / ONNX_FILE)
        embed_contract(tmp / ONNX_FILE, metadata)
        write_torchscript(tmp / TORCHSCRIPT_FILE)
        if write_base is not None:
            write_base(tmp / BASE_DIR)
            metadata["base"] = {"path": BASE_DIR, "content_hash": _read_metadata_json(tmp / BASE_DIR)["content_hash"]}
        metadata["files"] = {name: _sha256_file(tmp / name) for name in HASHED_FILES}
        metadata["content_hash"] = content_hash(tmp, metadata)
        (tmp / METADATA_FILE).write_text(json.dumps(metadata, indent=2, allow_nan=False) + "\n")
        out.mkdir(parents=True, exist_ok=True)
        if (out / BASE_DIR).exists():
            shutil.rmtree(out / BASE_DIR)
        if write_base is not None:
            os.replace(tmp / BASE_DIR, out / BASE_DIR)
        for name in (*HASHED_FILES, METADATA_FILE):
            os.replace(tmp / name, out / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
