"""RoboStack datasets: one format for teleoperated demonstrations, intervention logs and policy rollouts.

The layout is LeRobot's ``LeRobotDataset`` v3.0, so data moves between RoboStack and LeRobot::

    root/
      meta/info.json                             schema: codebase_version "v3.0", robot_type, fps, features
                                                 (dtype, shape, names per key), totals, path templates, splits
      meta/stats.json                            per feature min / max / mean / std / count
      meta/tasks.parquet                         task strings and their task_index (a pandas index, as LeRobot reads it)
      meta/episodes/chunk-000/file-000.parquet   one row per episode (see below)
      data/chunk-CCC/file-FFF.parquet            the frames
      videos/observation.images.CAM/chunk-CCC/file-FFF.mp4

Frames: ``index`` (over the dataset), ``episode_index``, ``frame_index``, ``timestamp`` (s from the episode
start), ``task_index``, ``observation.state``, ``action``, ``next.reward``, ``next.done``,
``complementary_info.intervention`` (the human was in control during the frame) and any other feature the
writer was given (``observation.command``, ``observation.environment_state``...). Numeric features are
scalars (shape ``[1]``: a plain column) or vectors (shape ``[n]``: a fixed-size list column).

Episode rows: LeRobot's ``episode_index``, ``tasks``, ``length``, ``data/chunk_index``, ``data/file_index``,
``dataset_from_index``, ``dataset_to_index``, ``videos/KEY/{chunk_index,file_index,from_timestamp,to_timestamp}``,
``meta/episodes/{chunk_index,file_index}`` and ``stats/KEY/STAT`` (the episode's statistics, from which
stats.json is aggregated), plus RoboStack's ``success`` (bool, or null when unknown) and ``source``: ``teleop``
(a human demonstration), ``intervention`` (a policy run in which a human took over) or ``rollout`` (a policy).

What RoboStack does within that layout:

* One parquet file per episode, and one video file per episode and camera: episode ``i`` lives in
  ``chunk-{i // chunks_size}/file-{i % chunks_size}``. LeRobot packs many episodes into files of up to
  100 MB; its reader finds episodes through the row's chunk/file indexes and ``dataset_from_index`` either
  way, and ``load_dataset`` here reads LeRobot's multi-episode files too. Appending is only supported to
  datasets with one file per episode.
* Videos are MPEG-4 Part 2 (OpenCV's ``mp4v`` fourcc) written and read with OpenCV. LeRobot encodes AV1
  with PyAV; neither PyAV nor AV1 is needed to read these files back with OpenCV (or with LeRobot's
  decoders, which read any FFmpeg codec). mp4v is lossy: decoded frames are close to, not equal to, the
  written ones. Image statistics are per channel in [0, 1] (shape ``[3, 1, 1]``), from up to 100 frames.
* ``info.json`` also carries ``robostack.task`` and ``robostack.task_config`` when the data came from (or
  belongs to) a RoboStack simulated task: ``replay`` re-executes an episode's actions there.

State, action and command (what ``convert_bag`` and ``sim_frame`` record, so bag and simulation data of one
robot merge): ``observation.state`` is the robot's measured state named ``JOINT.pos``, ``JOINT.vel`` then,
for a floating base, ``base_position.{x,y,z}`` (world), ``base_orientation.{w,x,y,z}``,
``base_linear_velocity.{x,y,z}`` (world) and ``base_angular_velocity.{x,y,z}`` (body), the simulator's
conventions (``robostack.real.observation.RobotState``). ``action`` is the actuator controls the robot was
sent (the driver command: position targets, thrusts), in actuator order, applied during the frame; replay
feeds them to ``TaskEnv.step_controls``. ``observation.command`` is the task command (target velocity,
pose) the robot was given.

Crash safety: an episode's data and video files are written under hidden temporary names
(``.NAME.tmp.EXT``), flushed to disk and renamed into place; then tasks, the episode table and stats.json are
replaced the same way, and ``meta/info.json`` last: it is the commit record. Whatever info.json does not
count (an episode row, a task, a data or video file past its totals) is the leftover of an interrupted
write: ``load_dataset`` ignores it, and ``DatasetWriter`` removes it, on failure and when it opens the folder.
So a crash at any point leaves either the dataset before or after the episode, never half of one.
"""
from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

CODEBASE_VERSION = "v3.0"
CHUNKS_SIZE = 1000  # files per chunk folder (LeRobot's default)
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
INFO_PATH = "meta/info.json"
STATS_PATH = "meta/stats.json"
TASKS_PATH = "meta/tasks.parquet"
EPISODES_DIR = "meta/episodes"
EPISODES_PATH = EPISODES_DIR + "/chunk-000/file-000.parquet"
IMAGE_PREFIX = "observation.images."
VIDEO_CODEC = "mp4v"
SOURCES = ("teleop", "intervention", "rollout")
INTERVENTION = "complementary_info.intervention"
STATS_FRAMES = 100  # frames sampled per episode for image statistics
STATS_PIXELS = 150 * 150  # about this many pixels per sampled frame (strided)
INFO_KEYS = ("codebase_version", "robot_type", "fps", "features", "total_episodes", "total_frames", "total_tasks",
             "chunks_size", "data_path", "video_path", "splits")
EPISODE_KEYS = ("episode_index", "tasks", "length", "data/chunk_index", "data/file_index", "dataset_from_index",
                "dataset_to_index")
VIDEO_KEYS = ("chunk_index", "file_index", "from_timestamp", "to_timestamp")  # videos/KEY/... episode columns
REQUIRED_FEATURES = ("observation.state", "action")

_ARROW_TYPES = {"float32": pa.float32(), "float64": pa.float64(), "int32": pa.int32(), "int64": pa.int64(),
                "bool": pa.bool_()}
_CASTABLE_KINDS = {"f": "biuf", "i": "biu", "b": "b"}  # numpy kinds each feature kind accepts


def _scalar(dtype: str) -> dict[str, Any]:
    return {"dtype": dtype, "shape": [1], "names": None}


# Bookkeeping every frame has; the writer computes them.
INDEX_FEATURES = {"timestamp": _scalar("float32"), "frame_index": _scalar("int64"),
                  "episode_index": _scalar("int64"), "index": _scalar("int64"), "task_index": _scalar("int64")}
# What happened after the frame's action; given to add_episode or defaulted there.
OUTCOME_FEATURES = {"next.reward": _scalar("float32"), "next.done": _scalar("bool"), INTERVENTION: _scalar("bool")}
STANDARD_FEATURES = {**INDEX_FEATURES, **OUTCOME_FEATURES}

# A floating base's state entries: components, the MuJoCo array they live in, offset in the free joint's part.
BASE_STATE = {"base_position": ("xyz", "qpos", 0), "base_orientation": ("wxyz", "qpos", 3),
              "base_linear_velocity": ("xyz", "qvel", 0), "base_angular_velocity": ("xyz", "qvel", 3)}


class DatasetError(ValueError):
    """A dataset is malformed or cannot be written; the message names the file, the episode and the problem."""


# ------------------------------------------------------------------------------------------- features


def _normalize_feature(key: str, ft: Any, fps: int) -> dict[str, Any]:
    """One feature definition checked and in its stored form."""
    if not isinstance(ft, Mapping) or "dtype" not in ft or "shape" not in ft:
        raise DatasetError(f"feature {key!r}: needs a mapping with 'dtype' and 'shape', got {ft!r}")
    dtype, shape = ft["dtype"], [int(s) for s in ft["shape"]]
    if dtype == "video":
        if not key.startswith(IMAGE_PREFIX) or len(shape) != 3 or shape[2] != 3 or min(shape) < 1:
            raise DatasetError(f"feature {key!r}: a video must be named {IMAGE_PREFIX}CAMERA and have shape "
                               f"[height, width, 3], got shape {shape}")
        return {"dtype": "video", "shape": shape, "names": ["height", "width", "channels"],
                "info": {"video.height": shape[0], "video.width": shape[1], "video.codec": VIDEO_CODEC,
                         "video.pix_fmt": "yuv420p", "video.is_depth_map": False, "video.fps": fps,
                         "video.channels": 3, "has_audio": False}}
    if dtype not in _ARROW_TYPES:
        raise DatasetError(f"feature {key!r}: dtype {dtype!r} is not one of {sorted(_ARROW_TYPES)} or 'video'")
    if len(shape) != 1 or shape[0] < 1:
        raise DatasetError(f"feature {key!r}: numeric features are scalars ([1]) or vectors ([n]), got shape {shape}")
    names = ft.get("names")
    if names is not None:
        names = [str(n) for n in names]
        if len(names) != shape[0]:
            raise DatasetError(f"feature {key!r}: {len(names)} names for shape {shape}")
    return {"dtype": dtype, "shape": shape, "names": names}


def dataset_features(features: Mapping[str, Any], fps: int) -> dict[str, dict[str, Any]]:
    """The full feature set of a dataset: ``features`` (observation.state, action, cameras...) checked, plus
    the standard ones (``INDEX_FEATURES``, ``OUTCOME_FEATURES``), which may be listed but not changed."""
    out = {key: _normalize_feature(key, ft, fps) for key, ft in features.items()}
    for key, ft in out.items():
        if key in STANDARD_FEATURES and ft != STANDARD_FEATURES[key]:
            raise DatasetError(f"feature {key!r} is a standard feature and must be {STANDARD_FEATURES[key]}, got {ft}")
    missing = [key for key in REQUIRED_FEATURES if key not in out]
    if missing:
        raise DatasetError(f"features {missing} are required (every dataset has a state and an action)")
    return {**out, **{key: ft for key, ft in STANDARD_FEATURES.items() if key not in out}}


def _describe(ft: Mapping[str, Any]) -> str:
    return f"{ft.get('dtype')} {list(ft.get('shape', []))} names {ft.get('names')}"


def feature_difference(a: Mapping[str, Any], b: Mapping[str, Any], a_name: str, b_name: str) -> str | None:
    """The first feature that differs between two feature sets, in words (None if they are the same)."""
    for key in sorted(set(a) | set(b)):
        if key not in b:
            return f"feature {key!r} is in {a_name} but not in {b_name}"
        if key not in a:
            return f"feature {key!r} is in {b_name} but not in {a_name}"
        if a[key] != b[key]:
            return f"feature {key!r} differs: {_describe(a[key])} in {a_name}, {_describe(b[key])} in {b_name}"
    return None


def _numeric_keys(features: Mapping[str, Any]) -> list[str]:
    return [key for key, ft in features.items() if ft["dtype"] != "video"]


def _video_keys(features: Mapping[str, Any]) -> list[str]:
    return [key for key, ft in features.items() if ft["dtype"] == "video"]


def _check_finite(key: str, values: np.ndarray, where: str) -> None:
    bad = ~np.isfinite(values)
    if bad.any():
        at = np.argwhere(bad)[0]
        component = f", component {at[1]}" if len(at) > 1 else ""
        raise DatasetError(f"{where}: feature {key!r} has NaN or inf at frame {at[0]}{component}")


def _as_feature_array(key: str, values: Any, ft: Mapping[str, Any], length: int) -> np.ndarray:
    """Per-frame values given to the writer, checked against the feature and cast to its dtype."""
    array = np.asarray(values)
    scalar = ft["shape"] == [1]
    if scalar and array.shape == (length, 1):
        array = array[:, 0]
    expected = (length,) if scalar else (length, ft["shape"][0])
    if array.shape != expected:
        raise DatasetError(f"feature {key!r}: shape {array.shape}, expected {expected} "
                           f"({length} frames of shape {ft['shape']})")
    target = np.dtype(ft["dtype"])
    if array.dtype.kind not in _CASTABLE_KINDS[target.kind]:
        raise DatasetError(f"feature {key!r}: {array.dtype} values cannot be stored as {ft['dtype']}")
    array = array.astype(target)
    if target.kind == "f":
        _check_finite(key, array, "episode to write")
    return array


def _to_arrow(values: np.ndarray, ft: Mapping[str, Any]) -> pa.Array:
    base = _ARROW_TYPES[ft["dtype"]]
    if ft["shape"] == [1]:
        return pa.array(values, type=base)
    return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1), type=base), ft["shape"][0])


def _from_arrow(column: pa.ChunkedArray, key: str, ft: Mapping[str, Any], where: str) -> np.ndarray:
    """A parquet column as ``[N]`` (scalar feature) or ``[N, n]`` (vector), checked against the feature."""
    array = column.combine_chunks()
    base, size = _ARROW_TYPES[ft["dtype"]], ft["shape"][0]
    if array.null_count:
        raise DatasetError(f"{where}: feature {key!r} has {array.null_count} missing (null) values")
    if ft["shape"] == [1]:
        if array.type != base:
            raise DatasetError(f"{where}: feature {key!r} is stored as {array.type}, info.json says {ft['dtype']}")
        return array.to_numpy(zero_copy_only=False)
    if not (pa.types.is_fixed_size_list(array.type) or pa.types.is_list(array.type)
            or pa.types.is_large_list(array.type)):
        raise DatasetError(f"{where}: feature {key!r} is stored as {array.type}, info.json says shape {ft['shape']}")
    if array.type.value_type != base:
        raise DatasetError(f"{where}: feature {key!r} holds {array.type.value_type} values, "
                           f"info.json says {ft['dtype']}")
    sizes = (np.full(len(array), array.type.list_size) if pa.types.is_fixed_size_list(array.type)
             else array.value_lengths().to_numpy(zero_copy_only=False))
    if len(array) and not (sizes == size).all():
        bad = int(np.flatnonzero(sizes != size)[0])
        raise DatasetError(f"{where}: feature {key!r} has {sizes[bad]} values in row {bad}, "
                           f"info.json says shape {ft['shape']}")
    return array.flatten().to_numpy(zero_copy_only=False).reshape(len(array), size)


# ------------------------------------------------------------------------------------------ statistics


def _stats_of(x: np.ndarray, count: int) -> dict[str, np.ndarray]:
    return {"min": x.min(0), "max": x.max(0), "mean": x.mean(0), "std": x.std(0), "count": np.array([count])}


def _episode_stats(columns: Mapping[str, np.ndarray], videos: Mapping[str, np.ndarray]) -> dict[str, dict]:
    """Statistics of one episode: per component for numeric features, per channel (in [0, 1]) for cameras."""
    stats = {key: _stats_of(values.reshape(len(values), -1).astype(np.float64), len(values))
             for key, values in columns.items()}
    for key, frames in videos.items():
        picked = np.unique(np.linspace(0, len(frames) - 1, min(len(frames), STATS_FRAMES)).round().astype(int))
        stride = max(1, int(math.sqrt(frames.shape[1] * frames.shape[2] / STATS_PIXELS)))
        pixels = frames[picked, ::stride, ::stride].reshape(-1, 3).astype(np.float64) / 255.0
        stats[key] = {stat: value.reshape(3, 1, 1) if stat != "count" else value
                      for stat, value in _stats_of(pixels, len(picked)).items()}
    return stats


def _aggregate_stats(parts: Sequence[Mapping[str, Mapping[str, Any]]]) -> dict[str, dict[str, np.ndarray]]:
    """Statistics of the union of episodes from theirs (pooled mean and variance)."""
    out: dict[str, dict[str, np.ndarray]] = {}
    for key in (parts[0] if parts else {}):
        items = [{stat: np.asarray(v, dtype=np.float64) for stat, v in p[key].items()} for p in parts if key in p]
        counts = np.array([s["count"].reshape(-1)[0] for s in items])
        means = np.stack([s["mean"] for s in items])
        weights = (counts / counts.sum()).reshape(-1, *[1] * (means.ndim - 1))
        mean = (weights * means).sum(0)
        variance = (weights * (np.stack([s["std"] for s in items]) ** 2 + (means - mean) ** 2)).sum(0)
        out[key] = {"min": np.min([s["min"] for s in items], 0), "max": np.max([s["max"] for s in items], 0),
                    "mean": mean, "std": np.sqrt(variance), "count": np.array([int(counts.sum())])}
    return out


def _row_stats(row: Mapping[str, Any]) -> dict[str, dict[str, np.ndarray]]:
    """An episode row's ``stats/KEY/STAT`` columns as nested arrays."""
    stats: dict[str, dict[str, np.ndarray]] = {}
    for column, value in row.items():
        if column.startswith("stats/") and value is not None:
            key, stat = column[len("stats/"):].rsplit("/", 1)
            stats.setdefault(key, {})[stat] = np.asarray(value)
    return stats


def _jsonable_stats(stats: Mapping[str, Mapping[str, np.ndarray]]) -> dict[str, dict[str, list]]:
    return {key: {stat: np.asarray(value).tolist() for stat, value in s.items()} for key, s in stats.items()}


# ----------------------------------------------------------------------------------------- files


def _temp_path(path: Path) -> Path:
    return path.with_name(f".{path.stem}.tmp{path.suffix}")


def _publish(tmp: Path, path: Path) -> None:
    """Move a completely written temp file into place: to disk first, so that a power cut cannot leave the
    new name on an empty file, then an atomic rename."""
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _write_file(path: Path, write: Callable[[Path], Any]) -> None:
    """Write ``path`` through ``write(temp_path)`` and ``_publish``: readers see the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_path(path)
    write(tmp)
    _publish(tmp, path)


def _write_json(path: Path, data: Any) -> None:
    _write_file(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8"))


def _write_parquet(path: Path, table: pa.Table) -> None:
    _write_file(path, lambda tmp: pq.write_table(table, tmp))


def _read_table(path: Path, where: str) -> pa.Table:
    if not path.is_file():
        raise DatasetError(f"{where}: missing file")
    try:
        return pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise DatasetError(f"{where}: not a readable parquet file ({exc})") from None


def _write_tasks(root: Path, tasks: Sequence[str]) -> None:
    """tasks.parquet as pandas writes LeRobot's task table: ``task_index`` indexed by the task string."""
    pandas_meta = {
        "index_columns": ["task"], "column_indexes": [],
        "columns": [{"name": "task_index", "field_name": "task_index", "pandas_type": "int64", "numpy_type": "int64",
                     "metadata": None},
                    {"name": "task", "field_name": "task", "pandas_type": "unicode", "numpy_type": "object",
                     "metadata": None}],
        "creator": {"library": "pyarrow", "version": pa.__version__}, "pandas_version": "2.2.0"}
    table = pa.table({"task_index": pa.array(range(len(tasks)), pa.int64()), "task": pa.array(tasks, pa.string())})
    _write_parquet(root / TASKS_PATH, table.replace_schema_metadata({"pandas": json.dumps(pandas_meta)}))


def _read_tasks(root: Path) -> list[str]:
    """All task strings in task_index order (unchecked against info.json)."""
    path = root / TASKS_PATH
    table = _read_table(path, f"{path}")
    name = "task" if "task" in table.column_names else "__index_level_0__"
    if name not in table.column_names or "task_index" not in table.column_names:
        raise DatasetError(f"{path}: needs the columns 'task' (or a task index) and 'task_index', "
                           f"has {table.column_names}")
    order = table.column("task_index").to_pylist()
    tasks = table.column(name).to_pylist()
    if sorted(order) != list(range(len(order))):
        raise DatasetError(f"{path}: task_index values {sorted(order)} are not 0..{len(order) - 1}")
    return [task for _, task in sorted(zip(order, tasks))]


def _episode_column_type(name: str) -> pa.DataType | None:
    """Arrow type of an episode-table column; None: inferred (the stats lists)."""
    if name == "tasks":
        return pa.list_(pa.string())
    if name == "success":
        return pa.bool_()
    if name == "source":
        return pa.string()
    if name.endswith("_timestamp"):
        return pa.float64()
    if name == "length" or name.endswith("_index"):
        return pa.int64()
    return None


def _write_episode_rows(root: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    names = list(dict.fromkeys(name for row in rows for name in row))
    table = pa.table({name: pa.array([row.get(name) for row in rows], type=_episode_column_type(name))
                      for name in names})
    _write_parquet(root / EPISODES_PATH, table)


def _read_episode_rows(root: Path) -> list[dict[str, Any]]:
    """Every episode row of every ``meta/episodes`` file, in file order (unchecked)."""
    rows: list[dict[str, Any]] = []
    for path in sorted((root / EPISODES_DIR).glob("chunk-*/file-*.parquet")):
        rows += _read_table(path, f"{path}").to_pylist()
    return rows


def _read_info(root: Path) -> dict[str, Any]:
    path = root / INFO_PATH
    if not path.is_file():
        raise DatasetError(f"{root}: not a dataset ({INFO_PATH} is missing)")
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: not valid JSON ({exc})") from None
    missing = [key for key in INFO_KEYS if key not in info] if isinstance(info, dict) else list(INFO_KEYS)
    if missing:
        raise DatasetError(f"{path}: missing keys {missing}")
    if info["codebase_version"] != CODEBASE_VERSION:
        raise DatasetError(f"{path}: codebase_version {info['codebase_version']!r}, only {CODEBASE_VERSION!r} "
                           "(LeRobotDataset v3.0) is read; convert older datasets with LeRobot first")
    for key, least in (("fps", 1), ("chunks_size", 1), ("total_episodes", 0), ("total_frames", 0), ("total_tasks", 0)):
        if isinstance(info[key], bool) or not isinstance(info[key], int) or info[key] < least:
            raise DatasetError(f"{path}: {key} must be an integer >= {least}, got {info[key]!r}")
    features = info["features"]
    if not isinstance(features, dict):
        raise DatasetError(f"{path}: features must be a mapping, got {type(features).__name__}")
    for key, ft in features.items():
        if not isinstance(ft, dict) or "dtype" not in ft or "shape" not in ft:
            raise DatasetError(f"{path}: feature {key!r} needs 'dtype' and 'shape', got {ft!r}")
        if ft["dtype"] == "video":
            if info["video_path"] is None:
                raise DatasetError(f"{path}: feature {key!r} is a video but video_path is null")
        elif ft["dtype"] not in _ARROW_TYPES or len(ft["shape"]) != 1:
            raise DatasetError(f"{path}: feature {key!r}: dtype {ft['dtype']!r} shape {ft['shape']} is not supported "
                               f"(numeric {sorted(_ARROW_TYPES)} scalars or vectors, or video)")
    missing = [key for key in INDEX_FEATURES if key not in features]
    if missing:
        raise DatasetError(f"{path}: features lack the frame bookkeeping {missing}")
    return info


def _file_label(root: Path, path: Path, episodes: Sequence[int]) -> str:
    which = f"episode {episodes[0]}" if len(episodes) == 1 else f"episodes {episodes[0]}-{episodes[-1]}"
    return f"{path.relative_to(root)} ({which})"


def _data_file(root: Path, info: Mapping[str, Any], row: Mapping[str, Any]) -> Path:
    return root / info["data_path"].format(chunk_index=row["data/chunk_index"], file_index=row["data/file_index"])


def _video_file(root: Path, info: Mapping[str, Any], row: Mapping[str, Any], key: str) -> Path:
    return root / info["video_path"].format(video_key=key, chunk_index=row[f"videos/{key}/chunk_index"],
                                            file_index=row[f"videos/{key}/file_index"])


def _discard_uncommitted(root: Path) -> None:
    """Bring the folder back to what info.json commits to: delete temp files, the data and video files no
    committed episode uses, and episode rows, tasks and statistics written for an episode it does not count."""
    info = _read_info(root)
    for tmp in [*root.rglob(".*.tmp.*")]:
        tmp.unlink()
    all_rows = _read_episode_rows(root)
    rows = all_rows[:info["total_episodes"]]
    if len(all_rows) > len(rows):
        if rows:
            _write_episode_rows(root, rows)
            _write_json(root / STATS_PATH, _jsonable_stats(_aggregate_stats([_row_stats(r) for r in rows])))
        else:
            (root / EPISODES_PATH).unlink()
            (root / STATS_PATH).unlink(missing_ok=True)
    if (root / TASKS_PATH).exists():
        tasks = _read_tasks(root)
        if len(tasks) > info["total_tasks"]:
            if info["total_tasks"]:
                _write_tasks(root, tasks[:info["total_tasks"]])
            else:
                (root / TASKS_PATH).unlink()
    used = {_data_file(root, info, row) for row in rows}
    used |= {_video_file(root, info, row, key) for row in rows for key in _video_keys(info["features"])}
    for folder in (root / "data", root / "videos", root / EPISODES_DIR):
        for path in sorted(folder.rglob("*"), key=lambda p: len(p.parts), reverse=True):  # files before their folder
            if path.is_file() and folder != root / EPISODES_DIR and path not in used:
                path.unlink()
            elif path.is_dir() and not any(path.iterdir()):
                path.rmdir()


# ----------------------------------------------------------------------------------------------- video


def _encode_video(path: Path, frames: np.ndarray, fps: int) -> None:
    height, width = frames.shape[1:3]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*VIDEO_CODEC), fps, (width, height))
    if not writer.isOpened():
        raise DatasetError(f"{path}: OpenCV cannot open an {VIDEO_CODEC} video writer ({width}x{height} at {fps} fps)")
    try:
        for frame in frames:
            writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    finally:
        writer.release()


def _decode_video(path: Path, start: int, count: int, where: str) -> np.ndarray:
    """``count`` RGB frames [count, H, W, 3] uint8 from frame ``start`` of a video file."""
    capture = cv2.VideoCapture(str(path))
    try:
        if not capture.isOpened():
            raise DatasetError(f"{where}: OpenCV cannot open the video")
        if start:
            capture.set(cv2.CAP_PROP_POS_FRAMES, start)
        frames = []
        for _ in range(count):
            ok, bgr = capture.read()
            if not ok:
                raise DatasetError(f"{where}: the video ends after {len(frames)} of the episode's {count} frames")
            frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    finally:
        capture.release()
    return np.stack(frames)


def _probe_video(path: Path, where: str) -> tuple[int, int, int]:
    """(frame count, height, width) of a video file from its container."""
    if not path.is_file():
        raise DatasetError(f"{where}: missing video file")
    capture = cv2.VideoCapture(str(path))
    try:
        if not capture.isOpened():
            raise DatasetError(f"{where}: OpenCV cannot open the video (corrupt, or a codec its FFmpeg lacks)")
        return (int(capture.get(cv2.CAP_PROP_FRAME_COUNT)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)),
                int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)))
    finally:
        capture.release()


# ------------------------------------------------------------------------------------------- reading


class Dataset:
    """A validated dataset: its metadata, the numeric frames in memory, camera frames decoded on demand.

    Loading checks info.json, the task and episode tables (index continuity, lengths vs frame ranges),
    every data file (columns vs features, dtypes, shapes, NaN/inf in float features, frame and dataset
    indexes, lengths) and every video file (present, readable, size, enough frames), and raises
    ``DatasetError`` naming the file, the episode and the problem.
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.info = _read_info(self.root)
        self.features: dict[str, dict[str, Any]] = self.info["features"]
        self.fps: int = self.info["fps"]
        self.tasks = self._committed_tasks()
        self.episodes = self._committed_episodes()
        self._columns = self._read_frames()
        self._check_videos()
        self.stats = self._current_stats()

    # ----- metadata
    def _committed_tasks(self) -> list[str]:
        total = self.info["total_tasks"]
        if total == 0:
            return []
        tasks = _read_tasks(self.root)
        if len(tasks) < total:
            raise DatasetError(f"{self.root / TASKS_PATH}: {len(tasks)} tasks, info.json counts {total}")
        return tasks[:total]  # more: a task added by a write that did not commit

    def _committed_episodes(self) -> list[dict[str, Any]]:
        total, where = self.info["total_episodes"], self.root / EPISODES_DIR
        rows = _read_episode_rows(self.root) if total else []
        if len(rows) < total:
            raise DatasetError(f"{where}: {len(rows)} episode rows, info.json counts {total} episodes")
        rows = rows[:total]  # more: rows of a write that did not commit
        required = [*EPISODE_KEYS,
                    *(f"videos/{key}/{part}" for key in _video_keys(self.features) for part in VIDEO_KEYS)]
        start = 0
        for position, row in enumerate(rows):
            missing = [key for key in required if row.get(key) is None]
            if missing:
                raise DatasetError(f"{where}: episode row {position} lacks {missing}")
            label = f"{where}: episode {row['episode_index']}"
            if row["episode_index"] != position:
                raise DatasetError(f"{where}: episode indexes are not continuous: row {position} has episode_index "
                                   f"{row['episode_index']}, expected {position}")
            if row["length"] < 1 or row["dataset_from_index"] != start or \
                    row["dataset_to_index"] != start + row["length"]:
                raise DatasetError(f"{label}: length {row['length']} and frames [{row['dataset_from_index']}, "
                                   f"{row['dataset_to_index']}) do not follow the previous episode (ends at {start})")
            unknown = [task for task in row["tasks"] if task not in self.tasks]
            if unknown:
                raise DatasetError(f"{label}: tasks {unknown} are not in {TASKS_PATH}")
            start = row["dataset_to_index"]
        if start != self.info["total_frames"]:
            raise DatasetError(f"{where}: episode lengths add up to {start} frames, info.json counts "
                               f"{self.info['total_frames']}")
        return rows

    # ----- frames
    def _read_frames(self) -> dict[str, np.ndarray]:
        keys = _numeric_keys(self.features)
        by_file: dict[Path, list[dict[str, Any]]] = {}
        for row in self.episodes:
            by_file.setdefault(_data_file(self.root, self.info, row), []).append(row)
        parts: dict[int, dict[str, np.ndarray]] = {}
        for path, rows in by_file.items():
            where = _file_label(self.root, path, [r["episode_index"] for r in rows])
            table = _read_table(path, where)
            missing = [key for key in keys if key not in table.column_names]
            extra = [name for name in table.column_names if name not in keys]
            if missing or extra:
                raise DatasetError(f"{where}: columns do not match the features of info.json: "
                                   f"missing {missing}, not features {extra}")
            columns = {key: _from_arrow(table.column(key), key, self.features[key], where) for key in keys}
            for row in rows:
                label = _file_label(self.root, path, [row["episode_index"]])
                parts[row["episode_index"]] = self._episode_part(columns, row, label)
        if not parts:
            return {key: np.zeros((0, *([] if ft["shape"] == [1] else ft["shape"])), ft["dtype"])
                    for key, ft in ((k, self.features[k]) for k in keys)}
        return {key: np.concatenate([parts[i][key] for i in range(len(self.episodes))]) for key in keys}

    def _episode_part(self, columns: Mapping[str, np.ndarray], row: Mapping[str, Any], where: str
                      ) -> dict[str, np.ndarray]:
        """One episode's rows of a data file, checked."""
        picked = np.flatnonzero(columns["episode_index"] == row["episode_index"])
        length, start = row["length"], row["dataset_from_index"]
        if len(picked) != length:
            raise DatasetError(f"{where}: {len(picked)} frames, the episode table says length {length}")
        part = {key: values[picked] for key, values in columns.items()}
        if not (part["frame_index"] == np.arange(length)).all():
            raise DatasetError(f"{where}: frame_index is not 0..{length - 1} in order")
        if not (part["index"] == np.arange(start, start + length)).all():
            raise DatasetError(f"{where}: index is not {start}..{start + length - 1} (dataset_from_index onwards)")
        if ((part["task_index"] < 0) | (part["task_index"] >= len(self.tasks))).any():
            raise DatasetError(f"{where}: task_index outside 0..{len(self.tasks) - 1}")
        if length > 1 and not (np.diff(part["timestamp"]) > 0).all():
            raise DatasetError(f"{where}: timestamps do not increase")
        for key, values in part.items():
            if values.dtype.kind == "f":
                _check_finite(key, values, where)
        return part

    def _check_videos(self) -> None:
        probed: dict[Path, tuple[int, int, int]] = {}
        for key in self.video_keys:
            height, width, _ = self.features[key]["shape"]
            for row in self.episodes:
                path = _video_file(self.root, self.info, row, key)
                where = _file_label(self.root, path, [row["episode_index"]])
                if path not in probed:
                    probed[path] = _probe_video(path, where)
                count, h, w = probed[path]
                if (h, w) != (height, width):
                    raise DatasetError(f"{where}: frames are {h}x{w}, info.json says {height}x{width} for {key!r}")
                first, end = self._video_range(row, key)
                if end - first != row["length"]:
                    raise DatasetError(f"{where}: timestamps cover {end - first} frames, "
                                       f"the episode has {row['length']}")
                if end > count:
                    raise DatasetError(f"{where}: the video has {count} frames, the episode needs frames up to {end}")

    def _video_range(self, row: Mapping[str, Any], key: str) -> tuple[int, int]:
        return (round(row[f"videos/{key}/from_timestamp"] * self.fps),
                round(row[f"videos/{key}/to_timestamp"] * self.fps))

    def _current_stats(self) -> dict[str, dict[str, np.ndarray]]:
        """stats.json when it counts exactly the committed frames, else aggregated from the episode rows
        (stats.json is replaced just before info.json, so a crash between the two leaves it one episode ahead)."""
        path = self.root / STATS_PATH
        stats = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        current = all(np.asarray(stats.get(key, {}).get("count", [-1])).reshape(-1)[0] == self.num_frames
                      for key in _numeric_keys(self.features))
        per_episode = [_row_stats(row) for row in self.episodes]
        if not current and per_episode and all(per_episode):
            return _aggregate_stats(per_episode)
        return {key: {stat: np.asarray(value) for stat, value in s.items()} for key, s in stats.items()}

    # ----- access
    @property
    def num_episodes(self) -> int:
        return len(self.episodes)

    @property
    def num_frames(self) -> int:
        return self.info["total_frames"]

    @property
    def video_keys(self) -> list[str]:
        return _video_keys(self.features)

    def _row(self, episode: int) -> dict[str, Any]:
        if not 0 <= episode < len(self.episodes):
            raise DatasetError(f"{self.root}: no episode {episode}; it has {len(self.episodes)} "
                               f"(0..{len(self.episodes) - 1})")
        return self.episodes[episode]

    def episode(self, episode: int, images: bool = True) -> dict[str, np.ndarray]:
        """An episode's per-frame arrays: ``[T]`` for scalar features, ``[T, n]`` for vectors and (with
        ``images``) ``[T, H, W, 3]`` uint8 RGB for cameras."""
        row = self._row(episode)
        span = slice(row["dataset_from_index"], row["dataset_to_index"])
        out = {key: values[span] for key, values in self._columns.items()}
        if images:
            out.update({key: self.video_frames(episode, key) for key in self.video_keys})
        return out

    def video_frames(self, episode: int, key: str) -> np.ndarray:
        """One camera's frames of an episode, decoded with OpenCV: [T, H, W, 3] uint8 RGB."""
        row = self._row(episode)
        if key not in self.video_keys:
            raise DatasetError(f"{self.root}: {key!r} is not a camera of this dataset (cameras: {self.video_keys})")
        path = _video_file(self.root, self.info, row, key)
        first, end = self._video_range(row, key)
        return _decode_video(path, first, end - first, _file_label(self.root, path, [episode]))

    def frames(self, keys: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """The flat frame table for training, all episodes in order: numeric features by default; camera keys
        decode every episode's video."""
        keys = list(self._columns) if keys is None else list(keys)
        unknown = [key for key in keys if key not in self.features]
        if unknown:
            raise DatasetError(f"{self.root}: no features {unknown}; features: {sorted(self.features)}")
        return {key: (self._columns[key] if key in self._columns else
                      np.concatenate([self.video_frames(i, key) for i in range(self.num_episodes)]))
                for key in keys}

    def summary(self) -> dict[str, Any]:
        """What ``robostack data info`` shows: sizes, features, tasks and success rate by source."""
        sources: dict[str, dict[str, Any]] = {}
        for row in self.episodes:
            entry = sources.setdefault(row.get("source") or "unknown",
                                       {"episodes": 0, "frames": 0, "with_outcome": 0, "successes": 0})
            entry["episodes"] += 1
            entry["frames"] += row["length"]
            if row.get("success") is not None:
                entry["with_outcome"] += 1
                entry["successes"] += bool(row["success"])
        for entry in sources.values():
            entry["success_rate"] = entry["successes"] / entry["with_outcome"] if entry["with_outcome"] else None
        return {"root": str(self.root), "robot_type": self.info["robot_type"], "fps": self.fps,
                "episodes": self.num_episodes, "frames": self.num_frames, "tasks": list(self.tasks),
                "features": {key: {"dtype": ft["dtype"], "shape": list(ft["shape"])}
                             for key, ft in self.features.items()},
                "sources": sources, "sim_task": self.info.get("robostack.task")}


def load_dataset(root: str | os.PathLike) -> Dataset:
    """Load and validate a dataset folder (``DatasetError`` names what is wrong)."""
    return Dataset(root)


# ------------------------------------------------------------------------------------------- writing


class DatasetWriter:
    """Creates a dataset, or appends to one with the same fps, robot, features and simulated task.

    >>> writer = DatasetWriter("data/panda", fps=50, robot="panda", features={
    ...     "observation.state": {"dtype": "float32", "shape": [18], "names": names},
    ...     "action": {"dtype": "float32", "shape": [9], "names": None},
    ...     "observation.images.front": {"dtype": "video", "shape": [240, 320, 3]}})
    >>> writer.add_episode({"observation.state": states, "action": actions}, "reach the target",
    ...                    images={"observation.images.front": frames}, success=True, source="teleop")

    ``sim_task`` / ``sim_task_config``: the RoboStack task (and its full config) the data was simulated in;
    stored in info.json as ``robostack.task`` / ``robostack.task_config`` for ``replay``.
    """

    def __init__(self, root: str | os.PathLike, fps: int, features: Mapping[str, Any], robot: str | None, *,
                 sim_task: str | None = None, sim_task_config: Mapping[str, Any] | None = None,
                 chunks_size: int = CHUNKS_SIZE):
        self.root = Path(root)
        if isinstance(fps, bool) or not float(fps).is_integer() or fps <= 0:
            raise DatasetError(f"fps must be a positive integer (LeRobot stores it as one), got {fps!r}")
        self.fps = int(fps)
        self.features = dataset_features(features, self.fps)
        # the config as JSON gives it back (tuples become lists), so that equal configs compare equal
        config = None if sim_task_config is None else json.loads(json.dumps(sim_task_config))
        if (self.root / INFO_PATH).exists():
            self._open(robot, sim_task, config)
            return
        if self.root.exists() and any(self.root.iterdir()):
            raise DatasetError(f"{self.root}: exists and is not a dataset (no {INFO_PATH}); choose a new folder")
        self.info: dict[str, Any] = {
            "codebase_version": CODEBASE_VERSION, "robot_type": robot, "total_episodes": 0, "total_frames": 0,
            "total_tasks": 0, "chunks_size": int(chunks_size), "data_files_size_in_mb": 100,
            "video_files_size_in_mb": 500, "fps": self.fps, "splits": {}, "data_path": DATA_PATH,
            "video_path": VIDEO_PATH if _video_keys(self.features) else None, "features": self.features,
            "robostack.task": sim_task, "robostack.task_config": config}
        self.tasks: list[str] = []
        self.rows: list[dict[str, Any]] = []
        _write_json(self.root / INFO_PATH, self.info)

    def _open(self, robot: str | None, sim_task: str | None, config: Any) -> None:
        info = _read_info(self.root)
        for row in _read_episode_rows(self.root)[:info["total_episodes"]]:
            expected = divmod(row["episode_index"], info["chunks_size"])
            if (row.get("data/chunk_index"), row.get("data/file_index")) != expected:
                raise DatasetError(f"{self.root}: episode {row['episode_index']} is not in its own data file "
                                   f"(chunk/file {expected}): appending needs one file per episode, as this writer "
                                   "makes them; merge() the dataset into a new folder first")
        _discard_uncommitted(self.root)
        existing = Dataset(self.root)
        differences = [f"{name} {theirs!r} there, {ours!r} here" for name, theirs, ours in (
            ("fps", existing.fps, self.fps), ("robot", existing.info["robot_type"], robot),
            ("simulated task", existing.info.get("robostack.task"), sim_task),
            ("simulated task config", existing.info.get("robostack.task_config"), config)) if theirs != ours]
        differences.append(feature_difference(existing.features, self.features, "the dataset", "the writer"))
        if differences[0]:  # fps first: it changes the video features too
            raise DatasetError(f"{self.root}: cannot append: {differences[0]}")
        self.info, self.tasks, self.rows = existing.info, existing.tasks, existing.episodes

    @property
    def num_episodes(self) -> int:
        return self.info["total_episodes"]

    def add_episode(self, frames: Mapping[str, Any], task: str, images: Mapping[str, Any] | None = None,
                    success: bool | None = None, source: str = "rollout") -> int:
        """Write one episode atomically and return its index.

        ``frames``: per-frame arrays of every declared numeric feature (``[T]`` or ``[T, 1]`` for scalars,
        ``[T, n]`` for vectors); of the standard ones only ``next.reward`` (default 0), ``next.done``
        (default: true on the last frame) and ``complementary_info.intervention`` (default: true for
        ``source="teleop"``, else false) may be given: the bookkeeping (index, timestamp...) is computed.
        ``images``: for every camera feature, ``[T, H, W, 3]`` uint8 RGB frames, or the path of a video file
        holding exactly the episode's frames (copied as is, no re-encoding). ``success``: the outcome, None
        when unknown. ``source``: ``teleop``, ``intervention`` or ``rollout``.
        """
        if source not in SOURCES:
            raise DatasetError(f"source must be one of {SOURCES}, got {source!r}")
        if not isinstance(task, str) or not task.strip():
            raise DatasetError(f"task must be a non-empty string (what the robot is doing), got {task!r}")
        if success is not None and not isinstance(success, (bool, np.bool_)):
            raise DatasetError(f"success must be True, False or None (unknown), got {success!r}")
        columns = self._frame_columns(frames, source)
        length = len(columns["action"])
        videos = self._videos(images or {}, length)
        index, start = self.info["total_episodes"], self.info["total_frames"]
        chunk, file = divmod(index, self.info["chunks_size"])
        tasks = self.tasks if task in self.tasks else [*self.tasks, task]
        columns.update(timestamp=(np.arange(length) / self.fps).astype(np.float32),
                       frame_index=np.arange(length), episode_index=np.full(length, index),
                       index=np.arange(start, start + length), task_index=np.full(length, tasks.index(task)))
        row: dict[str, Any] = {
            "episode_index": index, "tasks": [task], "length": length, "data/chunk_index": chunk,
            "data/file_index": file, "dataset_from_index": start, "dataset_to_index": start + length}
        for key in videos:
            row.update({f"videos/{key}/chunk_index": chunk, f"videos/{key}/file_index": file,
                        f"videos/{key}/from_timestamp": 0.0, f"videos/{key}/to_timestamp": length / self.fps})
        row.update({"meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0,
                    "success": None if success is None else bool(success), "source": source})
        stats = _episode_stats(columns, {key: frames for key, (frames, _) in videos.items()})
        row.update({f"stats/{key}/{stat}": value.tolist() for key, s in stats.items() for stat, value in s.items()})
        rows = [*self.rows, row]
        info = {**self.info, "total_episodes": index + 1, "total_frames": start + length, "total_tasks": len(tasks),
                "splits": {"train": f"0:{index + 1}"}}
        table = pa.table({key: _to_arrow(columns[key], ft) for key, ft in self.features.items() if key in columns})
        try:
            _write_parquet(_data_file(self.root, info, row), table)
            for key, (frames_, source_file) in videos.items():
                path = _video_file(self.root, info, row, key)
                if source_file is None:
                    _write_file(path, lambda tmp, f=frames_: _encode_video(tmp, f, self.fps))
                else:
                    _write_file(path, lambda tmp, s=source_file: shutil.copyfile(s, tmp))
            if tasks is not self.tasks:
                _write_tasks(self.root, tasks)
            _write_episode_rows(self.root, rows)
            _write_json(self.root / STATS_PATH, _jsonable_stats(_aggregate_stats([_row_stats(r) for r in rows])))
            _write_json(self.root / INFO_PATH, info)  # the commit
        except BaseException:
            _discard_uncommitted(self.root)
            raise
        self.info, self.tasks, self.rows = info, tasks, rows
        return index

    def _frame_columns(self, frames: Mapping[str, Any], source: str) -> dict[str, np.ndarray]:
        computed = [key for key in frames if key in INDEX_FEATURES]
        if computed:
            raise DatasetError(f"frames: {computed} are computed by the writer; leave them out")
        unknown = [key for key in frames if key not in self.features or self.features[key]["dtype"] == "video"]
        if unknown:
            raise DatasetError(f"frames: {unknown} are not numeric features of this dataset (cameras go in "
                               f"images=); features: {_numeric_keys(self.features)}")
        wanted = [key for key in _numeric_keys(self.features) if key not in STANDARD_FEATURES]
        missing = [key for key in wanted if key not in frames]
        if missing:
            raise DatasetError(f"frames: missing features {missing}")
        length = len(np.asarray(frames["action"]))
        if length < 1:
            raise DatasetError("frames: an episode needs at least one frame")
        defaults = {"next.reward": np.zeros(length), "next.done": np.arange(length) == length - 1,
                    INTERVENTION: np.full(length, source == "teleop")}
        return {key: _as_feature_array(key, frames.get(key, defaults.get(key)), self.features[key], length)
                for key in [*wanted, *OUTCOME_FEATURES]}

    def _videos(self, images: Mapping[str, Any], length: int) -> dict[str, tuple[np.ndarray, Path | None]]:
        """Camera frames of the episode (decoded from a given video file), checked: key -> (frames, file)."""
        cameras = _video_keys(self.features)
        if set(images) != set(cameras):
            raise DatasetError(f"images: the dataset's cameras are {cameras}, got {sorted(images)}")
        out = {}
        for key in cameras:
            value, source_file = images[key], None
            if isinstance(value, (str, os.PathLike)):
                source_file = Path(value)
                count = _probe_video(source_file, f"images[{key!r}] {source_file}")[0]
                if count != length:
                    raise DatasetError(f"images[{key!r}]: {source_file} has {count} frames, the episode {length}")
                value = _decode_video(source_file, 0, length, f"images[{key!r}] {source_file}")
            frames = np.asarray(value)
            expected = (length, *self.features[key]["shape"])
            if frames.shape != expected or frames.dtype != np.uint8:
                raise DatasetError(f"images[{key!r}]: {frames.dtype} frames of shape {frames.shape}, expected uint8 "
                                   f"RGB of shape {expected}")
            out[key] = (frames, source_file)
        return out


# ------------------------------------------------------------------------------------------- merging


def merge(sources: Sequence[str | os.PathLike], out: str | os.PathLike) -> Dataset:
    """Concatenate datasets with identical fps, robot and features into ``out`` (new, or a dataset with the
    same features), reindexing episodes, tasks and frames. Videos that hold exactly one episode in this
    writer's codec are copied; others are decoded and re-encoded. The simulated task is kept if all agree."""
    if not sources:
        raise DatasetError("merge: give at least one source dataset")
    datasets = [load_dataset(source) for source in sources]
    first = datasets[0]
    for other in datasets[1:]:
        for name, a, b in (("fps", first.fps, other.fps),
                           ("robot_type", first.info["robot_type"], other.info["robot_type"])):
            if a != b:
                raise DatasetError(f"merge: {name} differs: {a!r} in {first.root}, {b!r} in {other.root}")
        difference = feature_difference(first.features, other.features, str(first.root), str(other.root))
        if difference:
            raise DatasetError(f"merge: {difference}")
    same_task = all(d.info.get("robostack.task") == first.info.get("robostack.task") and
                    d.info.get("robostack.task_config") == first.info.get("robostack.task_config") for d in datasets)
    writer = DatasetWriter(out, first.fps, first.features, first.info["robot_type"],
                           sim_task=first.info.get("robostack.task") if same_task else None,
                           sim_task_config=first.info.get("robostack.task_config") if same_task else None)
    for dataset in datasets:
        for i, row in enumerate(dataset.episodes):
            if len(row["tasks"]) != 1:
                raise DatasetError(f"merge: {dataset.root} episode {i} has tasks {row['tasks']}; "
                                   "only one task per episode is supported")
            data = dataset.episode(i, images=False)
            frames = {key: values for key, values in data.items() if key not in INDEX_FEATURES}
            writer.add_episode(frames, row["tasks"][0], images=_episode_videos(dataset, i),
                               success=row.get("success"), source=row.get("source") or "rollout")
    return load_dataset(out)


def _episode_videos(dataset: Dataset, episode: int) -> dict[str, Any]:
    """For each camera: the video file when it is exactly this episode in this writer's codec, else frames."""
    row, out = dataset.episodes[episode], {}
    for key in dataset.video_keys:
        path = _video_file(dataset.root, dataset.info, row, key)
        codec = (dataset.features[key].get("info") or {}).get("video.codec")
        whole = dataset._video_range(row, key) == (0, row["length"]) and \
            _probe_video(path, str(path))[0] == row["length"]
        out[key] = path if whole and codec == VIDEO_CODEC else dataset.video_frames(episode, key)
    return out


# ------------------------------------------------------------------------------ robot state layout


def state_names(joints: Sequence[str], velocities: bool = True, base: Sequence[str] = ()) -> list[str]:
    """``observation.state`` names: ``JOINT.pos`` (then ``JOINT.vel``) per joint, then the floating base
    fields ``base`` (keys of ``BASE_STATE``) per component."""
    names = [f"{joint}.pos" for joint in joints] + ([f"{joint}.vel" for joint in joints] if velocities else [])
    return names + [f"{field}.{axis}" for field in base for axis in BASE_STATE[field][0]]


def action_names(joints: Sequence[str], count: int) -> list[str]:
    """``action`` names: ``JOINT.target`` when there is one joint per actuator (ros2_control forward
    controllers, in actuator order), else ``actuator_I``."""
    if len(joints) == count:
        return [f"{joint}.target" for joint in joints]
    return [f"actuator_{i}" for i in range(count)]


def command_names(count: int) -> list[str]:
    return [f"command_{i}" for i in range(count)]


def _vector_feature(names: Sequence[str]) -> dict[str, Any]:
    return {"dtype": "float32", "shape": [len(names)], "names": list(names)}


class _StateMap:
    """Where each ``observation.state`` entry lives in a MuJoCo model's qpos / qvel, found by name."""

    def __init__(self, model: Any, names: Sequence[str], where: str):
        import mujoco

        free = _free_joint(model)
        self.pos_columns: list[int] = []
        self.pos_addresses: list[int] = []
        self.vel_columns: list[int] = []
        self.vel_addresses: list[int] = []
        for column, name in enumerate(names):
            owner, _, part = name.rpartition(".")
            if owner in BASE_STATE:
                axes, array, offset = BASE_STATE[owner]
                if free is None or part not in axes:
                    raise DatasetError(f"{where}: state entry {name!r}: the model has no floating base" if free is None
                                       else f"{where}: state entry {name!r}: no component {part!r} (axes {axes})")
                start = model.jnt_qposadr[free] if array == "qpos" else model.jnt_dofadr[free]
                in_qpos, address = array == "qpos", int(start + offset + axes.index(part))
            elif part in ("pos", "vel"):
                joint = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_JOINT, owner)
                if joint < 0:
                    raise DatasetError(f"{where}: state entry {name!r}: the model has no joint {owner!r}")
                in_qpos = part == "pos"
                address = int(model.jnt_qposadr[joint] if in_qpos else model.jnt_dofadr[joint])
            else:
                raise DatasetError(f"{where}: state entry {name!r} is not JOINT.pos, JOINT.vel or a base field "
                                   f"({', '.join(BASE_STATE)})")
            columns, addresses = ((self.pos_columns, self.pos_addresses) if in_qpos
                                  else (self.vel_columns, self.vel_addresses))
            columns.append(column)
            addresses.append(address)
        self.size = len(names)

    def read(self, qpos: np.ndarray, qvel: np.ndarray) -> np.ndarray:
        """States [N, D] of a batch from its qpos [N, nq] and qvel [N, nv]."""
        out = np.empty((qpos.shape[0], self.size))
        out[:, self.pos_columns] = qpos[:, self.pos_addresses]
        out[:, self.vel_columns] = qvel[:, self.vel_addresses]
        return out

    def write(self, qpos: np.ndarray, qvel: np.ndarray, state: np.ndarray) -> None:
        """Set one env's qpos [nq] and qvel [nv] from a state vector."""
        qpos[self.pos_addresses] = state[self.pos_columns]
        qvel[self.vel_addresses] = state[self.vel_columns]


def _free_joint(model: Any) -> int | None:
    """The floating base's joint (MuJoCo free joint), if the model has one."""
    import mujoco

    free = [j for j in range(model.njnt) if model.jnt_type[j] == mujoco.mjtJoint.mjJNT_FREE]
    return free[0] if free else None


def _actuated_joints(model: Any) -> list[str]:
    import mujoco

    return [model.joint(int(model.actuator_trnid[i, 0])).name for i in range(model.nu)
            if model.actuator_trntype[i] == mujoco.mjtTrn.mjTRN_JOINT]


# What each recorded vector feature holds (a chunk bundle's inputs state it, so a reader without RoboStack can
# build them): robostack.sim.terms.Definition fields.
FEATURE_DEFINITIONS = {
    "observation.state": {
        "quantity": "the robot's measured state", "units": "rad, rad/s, m, 1, m/s, rad/s (per component)",
        "frame": "", "reference": "joint positions absolute (not relative to a default pose)",
        "components": "as 'names' says: <joint>.pos (rad; m for a prismatic joint) for every actuated joint, then "
                      "<joint>.vel (rad/s), then for a floating base base_position.x/y/z (world, m), "
                      "base_orientation.w/x/y/z (quaternion, world), base_linear_velocity.x/y/z (world, m/s), "
                      "base_angular_velocity.x/y/z (base frame, rad/s)"},
    "observation.command": {"quantity": "the task command: what the task's command term states (its goal, target or "
                                        "velocity)", "units": "as that term states", "frame": "", "reference": "",
                            "components": "command_0 .. command_(n-1)"},
    "observation.ee_pose": {"quantity": "pose of the end effector (the IK site)", "units": "m, then 1",
                            "frame": "world", "reference": "", "components": "x, y, z, then quaternion qw, qx, qy, qz"},
    "observation.environment_state": {
        "quantity": "the scene's objects as a perception stack reports them", "units": "m, then 1", "frame": "world",
        "reference": "", "components": "as 'names' says: <object>_pos.x/y/z (m), <object>_quat.w/x/y/z"},
}


def sim_features(env: Any) -> dict[str, dict[str, Any]]:
    """``observation.state``, ``action`` and (if the task has them) ``observation.command``,
    ``observation.ee_pose`` (the IK site of an end-effector task: position, quaternion wxyz) and
    ``observation.environment_state`` (objects in the scene) of a ``TaskEnv``; state and action named as
    ``convert_bag`` names them for the same robot."""
    model = env.default_model
    joints = _actuated_joints(model)
    base = list(BASE_STATE) if _free_joint(model) is not None else []
    features = {"observation.state": _vector_feature(state_names(joints, True, base)),
                "action": _vector_feature(action_names(joints, model.nu))}
    if env.task.command_dim:
        features["observation.command"] = _vector_feature(command_names(env.task.command_dim))
    if env.task.action.ik is not None:
        site = env.task.action.ik.site
        features["observation.ee_pose"] = _vector_feature([f"{site}.{axis}" for axis in ("x", "y", "z", "qw", "qx",
                                                                                        "qy", "qz")])
    if env.task.environment_state:
        features["observation.environment_state"] = _vector_feature(
            [f"{name}.{axis}" for name, (_, axes) in env.task.environment_state.items() for axis in axes])
    return features


class SimFrameReader:
    """Reads ``sim_frame`` from one ``TaskEnv`` again and again: the name-to-address mapping is found once
    (policies acting through recorded features read a frame every control step). It reads what term
    functions read (``qpos``, ``qvel``, ``command``, ``sensor``), so a deploy-side view of a measured robot
    (``robostack.real.observation.ObservationBuilder``) gives the same frame."""

    def __init__(self, env: Any):
        self.env = env
        names = sim_features(env)["observation.state"]["names"]
        self.state_map = _StateMap(env.default_model, names, env.task.name)
        ik = env.task.action.ik
        self.ee_sensors = [f"{ik.site}_{part}" for part in ("pos", "quat")] if ik is not None else []

    def read(self) -> dict[str, np.ndarray]:
        env = self.env
        frame = {"observation.state": self.state_map.read(env.qpos.cpu().numpy(), env.qvel.cpu().numpy()
                                                          ).astype(np.float32)}
        if env.task.command_dim:
            frame["observation.command"] = env.command.cpu().numpy().astype(np.float32)
        if self.ee_sensors:  # the end effector's pose, as forward kinematics gives it
            frame["observation.ee_pose"] = np.concatenate(
                [env.sensor(name).cpu().numpy() for name in self.ee_sensors], axis=1).astype(np.float32)
        if env.task.environment_state:
            frame["observation.environment_state"] = np.concatenate(
                [term(env).cpu().numpy() for term, _ in env.task.environment_state.values()], axis=1
            ).astype(np.float32)
        return frame


def sim_frame(env: Any) -> dict[str, np.ndarray]:
    """The state (and command) every env of a ``TaskEnv`` is in now, per ``sim_features``: record it before a
    step, then ``env.ctrl`` (the controls that step applied) as the frame's action."""
    return SimFrameReader(env).read()


# --------------------------------------------------------------------------------------------- replay


def replay(dataset: Dataset, episode: int) -> dict[str, Any]:
    """Re-execute an episode's recorded actions in its RoboStack task and say how far the states drift.

    The simulation starts from the episode's first recorded state (joints and floating base) on the task's
    play variant (no randomization) and applies each frame's ``action`` as actuator controls for one control
    step (``TaskEnv.step_controls``); the state after step k is compared with frame k + 1. Errors are
    absolute, per group of state entries (max, mean and at the last replayed frame).
    """
    import torch

    from robostack import sim

    task = dataset.info.get("robostack.task")
    if not task:
        raise DatasetError(f"{dataset.root}: info.json names no RoboStack task (robostack.task): replay needs the "
                           "simulated task the data belongs to (datasets written from simulation carry it; "
                           "give convert_bag sim_task= / robostack data convert --sim-task)")
    row = dataset._row(episode)
    env = sim.make_env(task, num_envs=1, play=True, config=dataset.info.get("robostack.task_config"),
                       overrides=["sim.num_threads=1"])
    try:
        if abs(env.control_dt * dataset.fps - 1.0) > 1e-6:
            raise DatasetError(f"{dataset.root}: recorded at {dataset.fps} fps, task {task!r} steps at "
                               f"{1 / env.control_dt:g} Hz: replay applies one frame per control step")
        names = dataset.features["observation.state"]["names"] or []
        if len(names) != dataset.features["observation.state"]["shape"][0]:
            raise DatasetError(f"{dataset.root}: observation.state has no names: replay maps states to the model "
                               "by name")
        state_map = _StateMap(env.default_model, names, f"{dataset.root} (task {task})")
        data = dataset.episode(episode, images=False)
        recorded, actions = data["observation.state"].astype(np.float64), data["action"]
        env.reset(seed=0)
        state_map.write(env.sim.qpos[0], env.sim.qvel[0], recorded[0])
        env.sim.forward(np.array([0]))
        replayed, ended_at = [recorded[0]], None
        for k in range(row["length"] - 1):
            _, _, _, _, info = env.step_controls(torch.as_tensor(actions[k:k + 1], dtype=torch.float32))
            if bool(info["done"][0]):  # the task ended the episode (a fall, the time limit): the env has reset
                ended_at = k + 1
                break
            replayed.append(state_map.read(env.sim.qpos, env.sim.qvel)[0])
    finally:
        env.close()
    error = np.abs(np.array(replayed) - recorded[:len(replayed)])
    groups: dict[str, list[int]] = {}
    for column, name in enumerate(names):
        owner, _, part = name.rpartition(".")
        groups.setdefault(owner if owner in BASE_STATE else f"joint_{'position' if part == 'pos' else 'velocity'}",
                          []).append(column)
    worst = int(error.max(0).argmax())
    return {"episode": episode, "task": task, "frames": row["length"], "replayed_frames": len(replayed),
            "ended_early_at": ended_at,
            "errors": {group: {"max": float(error[:, cols].max()), "mean": float(error[:, cols].mean()),
                               "final": float(error[-1, cols].max())} for group, cols in groups.items()},
            "worst": {"name": names[worst], "max_error": float(error[:, worst].max())}}


# ------------------------------------------------------------------------------------- bag conversion


class _BagSubscriptions:
    """Stands in for an rclpy node: collects ``StateListener``'s callbacks by topic so that bag messages
    can be fed to the same code that reads the live topics, on a clock that reads each message's log time
    (when the recorder received it: stamps are judged as they were live)."""

    def __init__(self) -> None:
        self.callbacks: dict[str, Callable[[Any], None]] = {}
        self.nanoseconds = 0  # the log time of the message being fed

    def create_subscription(self, _msg_type: Any, topic: str, callback: Callable[[Any], None], _qos: Any) -> None:
        self.callbacks[topic] = callback

    def get_clock(self) -> _BagSubscriptions:
        return self

    def now(self) -> _BagSubscriptions:
        return self


def _resolve(topic: str, namespace: str) -> str:
    return topic if topic.startswith("/") else f"{namespace}/{topic}"


def _bag_robot(bag: Path, topics: set[str], robot: str | None, namespace: str | None) -> tuple[Any, str]:
    """The deploy config of the robot whose state, driver and task-command topics the bag has, and the
    namespace they were recorded under (found from the driver command topic unless given)."""
    from robostack import registry
    from robostack.config import ConfigError
    from robostack.real.deploy_config import load_deploy_config

    candidates = [robot] if robot else [entry.name for entry in registry.entries("robot")]
    matches, problems = [], []
    for name in candidates:
        try:
            cfg = load_deploy_config(name)
        except ConfigError as exc:
            problems.append(f"{name}: {exc}")
            continue
        driver = cfg.topics.driver_command.topic
        found = [namespace] if namespace is not None else \
            [t[:len(t) - len(driver) - 1] for t in topics if t == _resolve(driver, "") or t.endswith("/" + driver)]
        for ns in found:
            wanted = [_resolve(getattr(cfg.topics, part).topic, ns) for part in
                      ("joint_states", "imu", "odometry", "driver_command", "task_command")
                      if getattr(cfg.topics, part) is not None]
            missing = [t for t in wanted if t not in topics]
            if missing:
                problems.append(f"{name} (namespace {ns or '/'}): no {missing}")
            else:
                matches.append((cfg, ns))
        if not found:
            problems.append(f"{name}: no driver command topic {driver!r}")
    if len(matches) != 1:
        why = "several robots match: " + ", ".join(f"{c.robot} in {ns or '/'}" for c, ns in matches) if matches \
            else "no robot's deploy config matches: " + "; ".join(problems)
        raise DatasetError(f"{bag}: {why} (bag topics: {sorted(topics)}); give the robot (and namespace)")
    return matches[0]


def _state_vector(state: Any) -> tuple[list[str], np.ndarray]:
    """``observation.state`` names and values of a ``RobotState`` (see ``state_names``)."""
    joints = list(state.joint_position)
    velocities = bool(joints) and set(joints) <= set(state.joint_velocity)
    base = [field for field in BASE_STATE if getattr(state, field) is not None]
    values = [state.joint_position[j] for j in joints]
    values += [state.joint_velocity[j] for j in joints] if velocities else []
    values += [float(v) for field in base for v in getattr(state, field)]
    return state_names(joints, velocities, base), np.array(values, dtype=np.float64)


def convert_bag(bag_dir: str | os.PathLike, out: str | os.PathLike, *, robot: str | None = None,
                fps: int | None = None, task: str | None = None, sim_task: str | None = None,
                namespace: str | None = None, success: bool | None = None) -> Dataset:
    """Turn a bag recorded by ``recorder_node`` (``robostack deploy --record``) into one episode of the
    dataset at ``out`` (created, or appended to when it has the same features).

    The whole bag is one episode: a takeover is kept in context (what the policy did before the human
    stepped in and after), and ``complementary_info.intervention`` marks the frames between
    ``teleop/intervention`` "start" and "end". ``source`` is ``teleop`` if the human was in control on every
    frame, ``intervention`` if on some, else ``rollout``.

    Frames are on a clock of ``fps`` (default: the rate of the robot's primary state topic) from the first
    moment both a state and a driver command exist to the last state: each frame holds the latest state
    (joint states, IMU, odometry as the deploy config of ``robot`` reads them, through the same
    ``StateListener`` the nodes use), the latest task command, and as action the last driver command sent
    before the next frame (the one in effect when the next state was measured). Rewards are 0 and
    ``next.done`` marks the last frame. ``robot`` and ``namespace`` are found from the bag's topics unless
    given; ``sim_task`` (a RoboStack task of that robot) is stored for ``replay``.

    A bag that a recorder is still writing, or one with a file cut short (a recorder killed in the middle of
    a flush), is refused (``DatasetError``; the latter names ``robostack data recover``, which rewrites files
    and so is not run unasked). A bag whose recorder was killed between flushes is read as it is: every
    flush leaves it readable (``robostack.real.bag``).
    """
    from robostack.real.bag import BagError, inspect_bag, read_messages, read_metadata
    from robostack.real.deploy_config import INTERNAL
    from robostack.real.messages import get_field
    from robostack.real.state import StateListener, primary_source

    bag = Path(bag_dir)
    try:
        topics = {t["topic_metadata"]["name"] for t in read_metadata(bag)["topics_with_message_count"]}
    except (OSError, KeyError, TypeError) as exc:
        raise DatasetError(f"{bag}: not a rosbag2 bag with a metadata.yaml ({exc})") from None
    try:
        refusal = inspect_bag(bag).refusal(f"robostack data recover {bag}")
    except BagError as exc:
        refusal = str(exc)
    if refusal:
        raise DatasetError(refusal)
    cfg, namespace = _bag_robot(bag, topics, robot, namespace)
    if sim_task is not None:
        from robostack import registry

        task_robot = registry.get("task", sim_task).extra.get("robot")
        if task_robot != cfg.robot:
            raise DatasetError(f"sim_task {sim_task!r} is for robot {task_robot!r}, the bag is from {cfg.robot!r}")
    subscriptions = _BagSubscriptions()
    listener = StateListener(subscriptions, cfg)
    state_topics = {_resolve(topic, namespace): callback for topic, callback in subscriptions.callbacks.items()}
    primary = _resolve(getattr(cfg.topics, primary_source(cfg)).topic, namespace)
    driver = _resolve(cfg.topics.driver_command.topic, namespace)
    command_cfg = cfg.topics.task_command
    command_topic = _resolve(command_cfg.topic, namespace) if command_cfg else None
    intervention = _resolve(INTERNAL["intervention"][0], namespace)
    wanted = [t for t in (*state_topics, driver, command_topic, intervention) if t in topics]

    names: list[str] | None = None
    states: list[tuple[int, np.ndarray]] = []
    commands: list[tuple[int, np.ndarray]] = []
    task_commands: list[tuple[int, np.ndarray]] = []
    events: list[tuple[int, bool]] = []
    for message in sorted(read_messages(bag, topics=wanted), key=lambda m: m.log_time):
        if message.topic in state_topics:
            subscriptions.nanoseconds = message.log_time
            state_topics[message.topic](message.msg)
            if message.topic == primary and listener.ready():
                current, values = _state_vector(listener.state())
                if names is not None and current != names:
                    raise DatasetError(f"{bag}: the state changed layout at t={message.log_time} ns: {current} "
                                       f"instead of {names}")
                names = current
                states.append((message.log_time, values))
        elif message.topic == driver:
            commands.append((message.log_time, np.asarray(get_field(message.msg, cfg.topics.driver_command.data),
                                                          dtype=np.float64)))
        elif message.topic == command_topic:
            task_commands.append((message.log_time, np.array([float(get_field(message.msg, f))
                                                              for f in command_cfg.fields])))
        else:
            events.append((message.log_time, message.msg.data == "start"))
    if len(states) < 2 or not commands:
        raise DatasetError(f"{bag}: needs at least two complete states on {primary} and one driver command on "
                           f"{driver}; has {len(states)} states and {len(commands)} commands")
    if len({len(c) for _, c in commands}) != 1:
        raise DatasetError(f"{bag}: driver commands on {driver} change length: {sorted({len(c) for _, c in commands})}")
    state_times = np.array([t for t, _ in states])
    if fps is None:
        period = float(np.median(np.diff(state_times)))
        if period <= 0:
            raise DatasetError(f"{bag}: states on {primary} share timestamps; give the frame rate (fps)")
        fps = round(1e9 / period)
    step = round(1e9 / fps)
    command_times = np.array([t for t, _ in commands])
    start = max(state_times[0], command_times[0])
    if start > state_times[-1]:
        raise DatasetError(f"{bag}: no state was recorded after the first driver command")
    times = np.arange(start, state_times[-1] + 1, step)

    def latest(stamped: Sequence[tuple[int, Any]], at: np.ndarray, side: str = "right") -> list[int]:
        return list(np.searchsorted([t for t, _ in stamped], at, side=side) - 1)

    frames: dict[str, Any] = {
        "observation.state": np.stack([states[i][1] for i in latest(states, times)]),
        "action": np.stack([commands[i][1] for i in latest(commands, times + step, "left")]),
        INTERVENTION: np.array([i >= 0 and events[i][1] for i in latest(events, times)], dtype=bool)}
    joints = [name[:-len(".pos")] for name in names if name.endswith(".pos")]
    features = {"observation.state": _vector_feature(names),
                "action": _vector_feature(action_names(joints, len(commands[0][1])))}
    if command_cfg is not None:
        default = np.asarray(command_cfg.default, dtype=np.float64)
        frames["observation.command"] = np.stack([task_commands[i][1] if i >= 0 else default
                                                  for i in latest(task_commands, times)])
        features["observation.command"] = _vector_feature(command_names(len(command_cfg.fields)))
    flags = frames[INTERVENTION]
    source = "teleop" if flags.all() else "intervention" if flags.any() else "rollout"
    writer = DatasetWriter(out, fps, features, cfg.robot, sim_task=sim_task)
    writer.add_episode(frames, task or f"{cfg.robot}: recorded deployment", success=success, source=source)
    return load_dataset(out)
