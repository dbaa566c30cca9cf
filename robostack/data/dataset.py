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
``complementary_info.intervention`` (the human was in control during the frame),
``complementary_info.takeover_start`` (a takeover's first frame: where the intervention flags turn true, or an
episode's first frame that is one; datasets written before it lack the column: their flags give it the same
way) and any other feature the writer was given (``observation.command``, ``observation.environment_state``...).
Numeric features are scalars (shape ``[1]``: a plain column) or vectors (shape ``[n]``: a fixed-size list column).

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
* Videos are H.264 written with PyAV (``robostack.data.video``: browsers play it, LeRobot's decoders read it)
  and read with OpenCV, which also reads the MPEG-4 Part 2 (``mp4v``) videos of datasets RoboStack wrote
  before. LeRobot encodes AV1 by default; either is lossy: decoded frames are close to, not equal to, the
  written ones. Image statistics are per channel in [0, 1] (shape ``[3, 1, 1]``), from up to 100 frames.
* What RoboStack adds lives where LeRobot's own tools (``aggregate_datasets``, ``delete_episodes``) keep it,
  the features and the frame columns: they rebuild info.json and the episode table from their own keys. The
  ``action`` feature carries ``robostack: {task, task_config}`` when the data came from (or belongs to) a
  RoboStack simulated task (``replay`` re-executes an episode's actions there; datasets written before keep it
  in info.json as ``robostack.task``, and are read as they are); every frame carries its episode's outcome
  (``complementary_info.success``: 1, 0, -1 unknown) and source (``complementary_info.source``: index in
  ``SOURCES``), so an episode table without RoboStack's ``success`` and ``source`` columns gets them back.

State, action and command (what ``convert_bag`` and ``sim_frame`` record, so bag and simulation data of one
robot merge): ``observation.state`` is the robot's measured state named ``JOINT.pos``, ``JOINT.vel`` then,
for a floating base, ``base_position.{x,y,z}`` (world), ``base_orientation.{w,x,y,z}``,
``base_linear_velocity.{x,y,z}`` (world) and ``base_angular_velocity.{x,y,z}`` (body), and the same fields
of any other free body in a simulated scene by its body's name (a cube: ``object_position.x`` ...), the simulator's
conventions (``robostack.real.robot_state.RobotState``); the names and their layout are in
``robostack.data.features``. ``action`` is the actuator controls the robot was
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
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from robostack.data.stats import aggregate_stats, episode_stats, jsonable_stats, row_stats
from robostack.data.video import PIXEL_FORMAT, VIDEO_CODEC, VideoError, encode_video

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
SOURCES = ("teleop", "intervention", "rollout")
INTERVENTION = "complementary_info.intervention"
TAKEOVER_START = "complementary_info.takeover_start"
SUCCESS = "complementary_info.success"  # the frame's episode's outcome: 1 success, 0 failure, -1 unknown
SOURCE = "complementary_info.source"  # the frame's episode's source: its index in SOURCES
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
# What happened during and after the frame's action; given to add_episode or defaulted there.
OUTCOME_FEATURES = {"next.reward": _scalar("float32"), "next.done": _scalar("bool"), INTERVENTION: _scalar("bool"),
                    TAKEOVER_START: _scalar("bool")}
# The episode's success and source on each of its frames; the writer computes them from add_episode's arguments.
EPISODE_FEATURES = {SUCCESS: _scalar("int64"), SOURCE: _scalar("int64")}
COMPUTED_FEATURES = {**INDEX_FEATURES, **EPISODE_FEATURES}
STANDARD_FEATURES = {**INDEX_FEATURES, **OUTCOME_FEATURES, **EPISODE_FEATURES}

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
        if shape[0] % 2 or shape[1] % 2:
            raise DatasetError(f"feature {key!r}: H.264 video needs an even height and width, got {shape[:2]}")
        return {"dtype": "video", "shape": shape, "names": ["height", "width", "channels"],
                "info": {"video.height": shape[0], "video.width": shape[1], "video.codec": VIDEO_CODEC,
                         "video.pix_fmt": PIXEL_FORMAT, "video.is_depth_map": False, "video.fps": fps,
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


def _schema(ft: Mapping[str, Any]) -> dict[str, Any]:
    """A feature without what RoboStack notes beside it (the action's simulated task)."""
    return {key: value for key, value in ft.items() if key != "robostack"}


def feature_difference(a: Mapping[str, Any], b: Mapping[str, Any], a_name: str, b_name: str) -> str | None:
    """The first feature that differs between two feature sets, in words (None if they are the same)."""
    for key in sorted(set(a) | set(b)):
        if key not in b:
            return f"feature {key!r} is in {a_name} but not in {b_name}"
        if key not in a:
            return f"feature {key!r} is in {b_name} but not in {a_name}"
        if _schema(a[key]) != _schema(b[key]):
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
            _write_json(root / STATS_PATH, jsonable_stats(aggregate_stats([row_stats(r) for r in rows])))
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
    try:
        encode_video(path, frames, fps)
    except VideoError as exc:
        raise DatasetError(str(exc)) from None


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
        self._restore_episode_outcomes()
        self._check_videos()
        self.stats = self._current_stats()

    @property
    def sim_task(self) -> str | None:
        """The RoboStack task the data was simulated in (or belongs to), for ``replay``; None if none."""
        return self.features["action"].get("robostack", {}).get("task", self.info.get("robostack.task"))

    @property
    def sim_task_config(self) -> dict[str, Any] | None:
        return self.features["action"].get("robostack", {}).get("task_config", self.info.get("robostack.task_config"))

    def _restore_episode_outcomes(self) -> None:
        """``success`` and ``source`` of episode rows that lack them (a table LeRobot's tools rebuilt), from the
        episode's frames."""
        if SUCCESS not in self._columns:
            return
        for row in self.episodes:
            first = row["dataset_from_index"]
            if "success" not in row:
                row["success"] = {1: True, 0: False}.get(int(self._columns[SUCCESS][first]))
            if "source" not in row:
                row["source"] = SOURCES[int(self._columns[SOURCE][first])]

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
        per_episode = [row_stats(row) for row in self.episodes]
        if not current and per_episode and all(per_episode):
            return aggregate_stats(per_episode)
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
                "sources": sources, "sim_task": self.sim_task}


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
    stored with the ``action`` feature (``robostack: {task, task_config}``) for ``replay``.
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
        if sim_task is not None:
            self.features["action"] = {**self.features["action"],
                                       "robostack": {"task": sim_task, "task_config": config}}
        if (self.root / INFO_PATH).exists():
            self._open(robot, sim_task, config)
            return
        if self.root.exists() and any(self.root.iterdir()):
            raise DatasetError(f"{self.root}: exists and is not a dataset (no {INFO_PATH}); choose a new folder")
        self.info: dict[str, Any] = {
            "codebase_version": CODEBASE_VERSION, "robot_type": robot, "total_episodes": 0, "total_frames": 0,
            "total_tasks": 0, "chunks_size": int(chunks_size), "data_files_size_in_mb": 100,
            "video_files_size_in_mb": 500, "fps": self.fps, "splits": {}, "data_path": DATA_PATH,
            "video_path": VIDEO_PATH if _video_keys(self.features) else None, "features": self.features}
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
            ("simulated task", existing.sim_task, sim_task),
            ("simulated task config", existing.sim_task_config, config)) if theirs != ours]
        # a dataset written before the per-frame outcomes (or with the task in info.json) keeps its own layout
        self.features = {key: ft for key, ft in self.features.items()
                         if key in existing.features or key not in (*EPISODE_FEATURES, TAKEOVER_START)}
        if "robostack" not in existing.features["action"]:
            self.features["action"] = {k: v for k, v in self.features["action"].items() if k != "robostack"}
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
        (default: true on the last frame), ``complementary_info.intervention`` (default: true for
        ``source="teleop"``, else false) and ``complementary_info.takeover_start`` (default: where the intervention
        flags turn true, frame 0 if they start true) may be given: the bookkeeping (index, timestamp...) is computed.
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
        outcome = {SUCCESS: np.full(length, -1 if success is None else int(bool(success))),
                   SOURCE: np.full(length, SOURCES.index(source))}
        columns.update({key: values for key, values in outcome.items() if key in self.features})
        row: dict[str, Any] = {
            "episode_index": index, "tasks": [task], "length": length, "data/chunk_index": chunk,
            "data/file_index": file, "dataset_from_index": start, "dataset_to_index": start + length}
        for key in videos:
            row.update({f"videos/{key}/chunk_index": chunk, f"videos/{key}/file_index": file,
                        f"videos/{key}/from_timestamp": 0.0, f"videos/{key}/to_timestamp": length / self.fps})
        row.update({"meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0,
                    "success": None if success is None else bool(success), "source": source})
        stats = episode_stats(columns, {key: frames for key, (frames, _) in videos.items()})
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
            _write_json(self.root / STATS_PATH, jsonable_stats(aggregate_stats([row_stats(r) for r in rows])))
            _write_json(self.root / INFO_PATH, info)  # the commit
        except BaseException:
            _discard_uncommitted(self.root)
            raise
        self.info, self.tasks, self.rows = info, tasks, rows
        return index

    def _frame_columns(self, frames: Mapping[str, Any], source: str) -> dict[str, np.ndarray]:
        computed = [key for key in frames if key in COMPUTED_FEATURES]
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
        flags = _as_feature_array(INTERVENTION, frames.get(INTERVENTION, np.full(length, source == "teleop")),
                                  self.features[INTERVENTION], length)
        defaults = {"next.reward": np.zeros(length), "next.done": np.arange(length) == length - 1, INTERVENTION: flags,
                    TAKEOVER_START: np.diff(flags.astype(int), prepend=0) == 1}  # the flags turn true (or start so)
        return {key: _as_feature_array(key, frames.get(key, defaults.get(key)), self.features[key], length)
                for key in [*wanted, *OUTCOME_FEATURES] if key in self.features}  # older datasets: no takeover_start

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


