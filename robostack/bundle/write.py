"""Writing a bundle: its files next to the destination, the contract put into the graph, the hashes, then
moved in. The exporters of each kind (``robostack.workflows.export``) call ``write_bundle``."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

from robostack.bundle.format import (BASE_DIR, CONTRACT_KEY, CRITIC_FILE, HASHED_FILES, INPUT_NAME, METADATA_FILE,
                                     ONNX_FILE, ONNX_OPSET, OUTPUT_NAME, RECOVERY_FILE, TORCHSCRIPT_FILE, BundleError,
                                     _jsonable, _read_metadata_json, _sha256_file, content_hash, contract,
                                     hashed_files, non_finite_paths)


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
        extra = sorted(p.name for p in out.iterdir()
                       if p.name not in (*HASHED_FILES, CRITIC_FILE, RECOVERY_FILE, METADATA_FILE, BASE_DIR))
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
        metadata.pop("critic", None)  # a new policy: no critic was trained for it
        metadata["content_hash"] = content_hash(tmp, metadata)
        (tmp / METADATA_FILE).write_text(json.dumps(metadata, indent=2, allow_nan=False) + "\n")
        out.mkdir(parents=True, exist_ok=True)
        if (out / BASE_DIR).exists():
            shutil.rmtree(out / BASE_DIR)
        if write_base is not None:
            os.replace(tmp / BASE_DIR, out / BASE_DIR)
        for name in (*HASHED_FILES, METADATA_FILE):
            os.replace(tmp / name, out / name)
        for name in (CRITIC_FILE, RECOVERY_FILE):  # an older bundle's critic judged another policy
            (out / name).unlink(missing_ok=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def add_critic(bundle_dir: str | os.PathLike, write_critic: Callable[[Path], None], critic: dict[str, Any],
               recovery: Path | None = None) -> None:
    """Put a safety critic into a bundle: ``write_critic`` writes its graph, ``critic`` is its metadata block
    (``robostack.bundle.format.check_critic``; ``policy_files`` is filled in here), ``recovery`` the graph of its
    recovery policy where one was trained (``critic.recovery_policy``); the bundle is resealed (files and content
    hash), atomically, so a reader sees it with or without the critic, never half."""
    root = Path(bundle_dir)
    metadata = _read_metadata_json(root)
    metadata["critic"] = {**critic, "policy_files": {name: metadata["files"][name] for name in HASHED_FILES}}
    if (recovery is None) != ("recovery_policy" not in critic):
        raise ValueError("a critic's recovery_policy and its recovery graph go together")
    tmp_critic = root / f".{CRITIC_FILE}.tmp"
    write_critic(tmp_critic)
    os.replace(tmp_critic, root / CRITIC_FILE)
    if recovery is not None and recovery.resolve() != (root / RECOVERY_FILE).resolve():
        shutil.copyfile(recovery, root / f".{RECOVERY_FILE}.tmp")
        os.replace(root / f".{RECOVERY_FILE}.tmp", root / RECOVERY_FILE)
    elif recovery is None:
        (root / RECOVERY_FILE).unlink(missing_ok=True)
    metadata["files"] = {name: _sha256_file(root / name) for name in hashed_files(metadata)}
    metadata["content_hash"] = content_hash(root, metadata)
    tmp_meta = root / f".{METADATA_FILE}.tmp"
    tmp_meta.write_text(json.dumps(_jsonable(metadata), indent=2, allow_nan=False) + "\n")
    os.replace(tmp_meta, root / METADATA_FILE)


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
