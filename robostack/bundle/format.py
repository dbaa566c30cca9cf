"""The bundle's format: file names, the metadata's kinds, hashing, reading and checking ``metadata.json``, the
contract its graph carries. Numpy only."""
from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from robostack import registry
from robostack.specs import BundleKindSpec

FORMAT_VERSION = 1

ONNX_FILE = "policy.onnx"

TORCHSCRIPT_FILE = "policy.pt"

METADATA_FILE = "metadata.json"

BASE_DIR = "base"  # a residual bundle's base policy: a bundle of its own

HASHED_FILES = (ONNX_FILE, TORCHSCRIPT_FILE)

CRITIC_FILE = "critic.onnx"  # optional: the learned safety critic trained for this policy (metadata "critic")

CRITIC_INPUT, CRITIC_OUTPUT = "features", "risk"  # its graph: risk features [B, F] -> risk in [0, 1] [B, 1]

RECOVERIES = {"quadruped": "stand", "drone": "level", "arm": "hold"}  # what the safety layer does on high risk

RECOVERY_FILE = "recovery.onnx"  # optional: a recovery policy trained with the critic (metadata critic.recovery_policy);
# it reads the policy's observation and writes its action (the same contract, INPUT_NAME -> OUTPUT_NAME), with the
# task command critic.recovery_policy.command, and replaces the scripted recovery of RECOVERIES

INPUT_NAME = "obs"

OUTPUT_NAME = "action"

ACTOR_CRITIC, CHUNK, RESIDUAL = "actor_critic", "chunk", "residual"  # metadata "kind" (absent: actor_critic)

RESIDUAL_BASE_TERM = "base_action"  # a residual's last observation term: the action of the base it corrects

RESIDUAL_EXECUTED = "clip(base action + scale * half_range * clip(residual, -1, 1), low, high)"  # action.range

COMMAND_CORRECTION = "command_correction"  # metadata "kind": moves the task command the bundle in base/ follows

COMMAND_CORRECTION_RULE = (  # metadata command_correction.rule
    "every control step: rate = clip(graph([command - state[tracks], state[inputs]]), -rate_limit, rate_limit); "
    "offset = offset + control_dt * rate, scaled back to a norm of at most offset_limit; the base follows the task's "
    "command + offset (its observation and integrals read it). offset is zero at an episode's start and frozen while "
    "a human holds the command (no jump when they take over or hand back)")

CHUNK_NOISE, CHUNK_STATE, CHUNK_IMAGE, CHUNK_OUTPUT = "noise", "observation_state", "observation_images_", "chunk"

ONNX_OPSET = 17
SCHEMA_FILE = Path(__file__).resolve().parent / "metadata.schema.json"  # the JSON Schema of metadata.json
REQUIRED = ("robot", "task", "observation", "action", "task_config", "content_hash")


class BundleError(ValueError):
    """A policy bundle that cannot be used: the message names the bundle and the problem."""


def residual_executed(base_action: Any, residual: Any, scale: float, low: Any, high: Any) -> Any:
    """The action a residual executes (``RESIDUAL_EXECUTED``): its base's, corrected by up to ``scale`` of the
    half-range of the actions, which span [``low``, ``high``]. One rule for training (torch tensors,
    ``robostack.workflows.residual.ResidualEnv``) and deployment (numpy arrays, ``ResidualPolicyBundle``)."""
    return (base_action + scale * (high - low) / 2 * residual.clip(-1.0, 1.0)).clip(low, high)


# ------------------------------------------------------------------------------------------ hashing


def _canonical_json(data: Any) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def hashed_files(metadata: dict[str, Any]) -> tuple[str, ...]:
    """The files a bundle's content hash covers: the policy's two, and its critic's (and the critic's recovery
    policy's) where it has one."""
    critic = metadata.get("critic")
    if critic is None:
        return HASHED_FILES
    return HASHED_FILES + (CRITIC_FILE,) + ((RECOVERY_FILE,) if isinstance(critic, dict) and
                                            "recovery_policy" in critic else ())


def content_hash(bundle_dir: str | os.PathLike, metadata: dict[str, Any] | None = None) -> str:
    """sha256 over ``policy.onnx``, ``policy.pt`` (and ``critic.onnx`` when the metadata has a ``critic``; name
    and bytes, in that order) and the canonical JSON of the metadata without its ``content_hash`` field (read
    from the bundle unless given)."""
    root = Path(bundle_dir)
    if metadata is None:
        metadata = json.loads((root / METADATA_FILE).read_text())
    h = hashlib.sha256()
    for name in hashed_files(metadata):
        h.update(name.encode() + b"\0")
        with (root / name).open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    meta = {k: v for k, v in metadata.items() if k != "content_hash"}
    h.update(METADATA_FILE.encode() + b"\0")
    h.update(_canonical_json(meta))
    return h.hexdigest()


# ------------------------------------------------------------------------------------------ metadata


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
    for name in hashed_files(meta):
        if not (root / name).is_file():
            raise BundleError(f"bundle {root}: missing {name}")

    def fail(what: str) -> BundleError:
        return BundleError(f"bundle {root}: corrupt {METADATA_FILE}: {what}")

    missing = [key for key in REQUIRED if key not in meta]
    if missing:
        raise fail(f"missing field {missing[0]!r}")
    kind = meta.get("kind", ACTOR_CRITIC)
    try:
        spec = registry.bundle_kind(kind)
    except KeyError:
        known = ", ".join(repr(spec.name) for spec in registry.registered(BundleKindSpec))
        raise fail(f"unknown policy kind {kind!r} (this RoboStack runs {known})") from None
    spec.check(meta, fail)
    if "critic" in meta:
        check_critic(meta, fail)
    if verify:
        try:
            actual = content_hash(root, meta)
        except ValueError as exc:  # e.g. NaN in the metadata: not canonical JSON
            raise BundleError(f"bundle {root}: corrupt {METADATA_FILE}: {exc}") from None
        if actual != meta["content_hash"]:
            raise BundleError(f"bundle {root}: content hash mismatch: files were modified "
                              f"(expected {meta['content_hash'][:12]}..., got {actual[:12]}...)")
    return meta


def check_critic(meta: dict[str, Any], fail: Any) -> None:
    """A critic's metadata: its feature names, a risk threshold in (0, 1), a discount, the recovery of the
    robot's kind, and the policy it was trained for (the hashes of its files: a critic never judges another
    policy's commands)."""
    critic = meta["critic"]
    try:
        names, epsilon, gamma = list(critic["features"]), float(critic["epsilon"]), float(critic["gamma"])
        recovery, trained_for = critic["recovery"], dict(critic["policy_files"])
    except (KeyError, TypeError, ValueError) as exc:
        raise fail(f"malformed critic description ({type(exc).__name__}: {exc})") from None
    if not names or not all(isinstance(n, str) for n in names):
        raise fail("critic.features must name every input of the critic")
    if not (0.0 < epsilon < 1.0 and 0.0 < gamma < 1.0):
        raise fail(f"critic.epsilon and critic.gamma must be in (0, 1), got {epsilon} and {gamma}")
    if not isinstance(critic.get("judges_recovery", False), bool):
        raise fail(f"critic.judges_recovery must be true or false, got {critic['judges_recovery']!r}")
    if recovery not in RECOVERIES.values():
        raise fail(f"critic.recovery must be one of {sorted(set(RECOVERIES.values()))}, got {recovery!r}")
    learned = critic.get("recovery_policy")
    if learned is not None:
        command = learned.get("command") if isinstance(learned, dict) else None
        if not isinstance(learned, dict) or learned.get("file") != RECOVERY_FILE or not isinstance(command, list) \
                or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in command):
            raise fail(f"critic.recovery_policy must be {{'file': {RECOVERY_FILE!r}, 'command': [finite numbers]}}, "
                       f"got {learned!r}")
    files = meta.get("files") or {}
    if any(files.get(name) != digest for name, digest in trained_for.items()) or ONNX_FILE not in trained_for:
        raise fail("its critic was trained for another policy (critic.policy_files differ from files): retrain the "
                   "critic for this policy")


def is_bundle(path: str | os.PathLike) -> bool:
    p = Path(path)
    return p.is_dir() and (p / METADATA_FILE).is_file()


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


CONTRACT_KEY = "robostack.contract"  # policy.onnx's metadata_props entry holding the contract (JSON)


CONTRACT_FIELDS = ("format_version", "kind", "robot", "task", "observation", "action", "joint_names", "actuators",
                   "default_joint_pos", "pd_gains", "command_dim", "control_rate_hz", "control_dt", "chunk", "residual",
                   COMMAND_CORRECTION)


def contract(metadata: dict[str, Any]) -> dict[str, Any]:
    """What a runtime needs of the metadata to run the graph on a robot (``CONTRACT_FIELDS``, those present):
    the observation terms with their definitions, the action map, the robot, the control rate."""
    return {key: metadata[key] for key in CONTRACT_FIELDS if key in metadata}
