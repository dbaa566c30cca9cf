"""Datasets (``robostack.data``): the LeRobotDataset v3.0 layout, atomic episodes, validation, merge and
``robostack data``."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from robostack import cli
from helpers.datasets import (CAMERA, EPISODES, FEATURES, FPS, HEIGHT, WIDTH, as_lerobot_tools_leave_it,
                              episode_data, write_episodes)
from robostack.data import dataset as ds
from robostack.data.dataset import DatasetError, DatasetWriter, load_dataset
from robostack.data.merge import merge



def visible_files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


# ------------------------------------------------------------------------------------------ round trip


def test_round_trip_three_episodes_with_video(tmp_path):
    root = tmp_path / "demos"
    written = write_episodes(root)
    data = load_dataset(root)

    info = json.loads((root / "meta/info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["fps"] == FPS and info["robot_type"] == "toybot"
    assert (info["total_episodes"], info["total_frames"], info["total_tasks"]) == (3, 37, 2)
    assert info["data_path"] == "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
    assert info["video_path"] == "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
    assert info["splits"] == {"train": "0:3"}
    assert info["features"][CAMERA]["info"]["video.codec"] == "h264"  # browsers play it
    assert visible_files(root) == {
        "meta/info.json", "meta/stats.json", "meta/tasks.parquet", "meta/episodes/chunk-000/file-000.parquet",
        *(f"data/chunk-000/file-00{i}.parquet" for i in range(3)),
        *(f"videos/{CAMERA}/chunk-000/file-00{i}.mp4" for i in range(3))}
    columns = pq.read_schema(root / "data/chunk-000/file-001.parquet").names
    assert set(columns) == {"observation.state", "action", "next.reward", "next.done", ds.INTERVENTION, "timestamp",
                            "frame_index", "episode_index", "index", "task_index", ds.SUCCESS, ds.SOURCE,
                            ds.TAKEOVER_START}

    assert data.tasks == ["pick the cube", "open the drawer"]
    start = 0
    for i, ((frames, images), (task, length, source, success)) in enumerate(zip(written, EPISODES)):
        episode = data.episode(i)
        for key in ("observation.state", "action", "next.reward"):
            np.testing.assert_array_equal(episode[key], frames[key])
        np.testing.assert_array_equal(episode["frame_index"], np.arange(length))
        np.testing.assert_array_equal(episode["index"], np.arange(start, start + length))
        np.testing.assert_allclose(episode["timestamp"], np.arange(length) / FPS, rtol=1e-6)
        assert episode["next.done"].tolist() == [False] * (length - 1) + [True]
        assert episode[ds.INTERVENTION].tolist() == [source == "teleop"] * length
        assert (episode["task_index"] == data.tasks.index(task)).all()
        assert episode[CAMERA].shape == images.shape and episode[CAMERA].dtype == np.uint8
        assert np.abs(episode[CAMERA].astype(int) - images).mean() < 3.0  # H.264 is lossy, not wrong
        row = data.episodes[i]
        assert (row["dataset_from_index"], row["dataset_to_index"], row["length"]) == (start, start + length, length)
        assert (row["tasks"], row["source"], row["success"]) == ([task], source, success)
        assert row[f"videos/{CAMERA}/to_timestamp"] == pytest.approx(length / FPS)
        start += length

    states = np.concatenate([f["observation.state"] for f, _ in written])
    np.testing.assert_array_equal(data.frames(["observation.state"])["observation.state"], states)
    assert data.stats["observation.state"]["count"].tolist() == [37]
    np.testing.assert_allclose(data.stats["observation.state"]["mean"], states.astype(np.float64).mean(0), atol=1e-9)
    np.testing.assert_allclose(data.stats["observation.state"]["std"], states.astype(np.float64).std(0), atol=1e-9)
    parts = [f["observation.state"].astype(np.float64) for f, _ in written]
    for name, q in {"q01": 0.01, "q10": 0.10, "q50": 0.50, "q90": 0.90, "q99": 0.99}.items():  # LeRobot's defaults,
        expected = sum(len(p) * np.quantile(p, q, axis=0) for p in parts) / len(states)  # aggregated as LeRobot does
        np.testing.assert_allclose(data.stats["observation.state"][name], expected, atol=1e-9)
        np.testing.assert_allclose(data.episodes[0][f"stats/observation.state/{name}"],  # exact per episode
                                   np.quantile(parts[0], q, axis=0), atol=1e-9)
    assert data.stats[CAMERA]["q50"].shape == (3, 1, 1)
    assert data.stats[CAMERA]["mean"].shape == (3, 1, 1)
    assert data.summary()["sources"]["teleop"] == {"episodes": 1, "frames": 10, "with_outcome": 1, "successes": 1,
                                                   "success_rate": 1.0}


def test_tasks_parquet_is_a_task_indexed_table(tmp_path):
    write_episodes(tmp_path / "d")
    table = pq.read_table(tmp_path / "d/meta/tasks.parquet")
    assert table.column("task").to_pylist() == ["pick the cube", "open the drawer"]
    assert table.column("task_index").to_pylist() == [0, 1]
    assert json.loads(table.schema.metadata[b"pandas"])["index_columns"] == ["task"]  # as LeRobot reads it


def test_writer_rejects_bad_episodes_before_writing_anything(tmp_path):
    root = tmp_path / "d"
    writer = DatasetWriter(root, FPS, FEATURES, "toybot")
    frames, images = episode_data(0, 5)
    before = visible_files(root)
    frames["observation.state"][3, 1] = np.nan
    with pytest.raises(DatasetError, match=r"'observation.state' has NaN or inf at frame 3, component 1"):
        writer.add_episode(frames, "t", images={CAMERA: images})
    frames, _ = episode_data(0, 5)
    with pytest.raises(DatasetError, match=r"images\['observation.images.front'\].*shape \(4, 48, 64, 3\)"):
        writer.add_episode(frames, "t", images={CAMERA: images[:4]})
    with pytest.raises(DatasetError, match=r"'action': shape \(5, 3\), expected \(5, 2\)"):
        writer.add_episode({**frames, "action": np.zeros((5, 3))}, "t", images={CAMERA: images})
    with pytest.raises(DatasetError, match="source must be one of"):
        writer.add_episode(frames, "t", images={CAMERA: images}, source="human")
    assert visible_files(root) == before and load_dataset(root).num_episodes == 0


# ---------------------------------------------------------------------------------------------- append


def test_append_continues_the_dataset_and_refuses_other_features(tmp_path):
    root = tmp_path / "d"
    first = write_episodes(root, EPISODES[:1])
    second = write_episodes(root, EPISODES[1:2], first_seed=1)  # a new writer on the same folder appends
    data = load_dataset(root)
    assert data.num_episodes == 2 and data.num_frames == 25
    np.testing.assert_array_equal(data.episode(0)["action"], first[0][0]["action"])
    np.testing.assert_array_equal(data.episode(1)["action"], second[0][0]["action"])
    assert data.episode(1)["index"][0] == 10 and (root / "data/chunk-000/file-001.parquet").is_file()

    other = {**FEATURES, "observation.state": {"dtype": "float32", "shape": [5], "names": None}}
    with pytest.raises(DatasetError, match=r"cannot append: feature 'observation.state' differs: float32 \[4\]"):
        DatasetWriter(root, FPS, other, "toybot")
    with pytest.raises(DatasetError, match="cannot append: fps 30 there, 15 here"):
        DatasetWriter(root, 15, FEATURES, "toybot")


# ------------------------------------------------------------------------------------------ atomicity


class CrashAt:
    """Replaces ``_publish`` (the rename that makes each written file visible) and fails its n-th call."""

    def __init__(self, monkeypatch, n: int):
        self.n, self.calls, self.real, self.failed_on = n, 0, ds._publish, None
        monkeypatch.setattr(ds, "_publish", self)

    def __call__(self, tmp, path):
        self.calls += 1
        if self.calls == self.n:
            self.failed_on = path.name
            raise RuntimeError(f"simulated crash while publishing {path.name}")
        self.real(tmp, path)


# What one episode with a new task publishes, in order; info.json is the commit.
PUBLISHED = ["file-002.parquet", "file-002.mp4", "tasks.parquet", "file-000.parquet", "stats.json", "info.json"]


@pytest.mark.parametrize("crash_at", range(1, len(PUBLISHED) + 1))
def test_a_failed_episode_leaves_the_dataset_as_before(tmp_path, monkeypatch, crash_at):
    root = tmp_path / "d"
    written = write_episodes(root, EPISODES[:2])
    before = visible_files(root)
    writer = DatasetWriter(root, FPS, FEATURES, "toybot")
    crash = CrashAt(monkeypatch, crash_at)
    frames, images = episode_data(7, 12)
    with pytest.raises(RuntimeError, match="simulated crash"):
        writer.add_episode(frames, "a new task", images={CAMERA: images})
    assert crash.failed_on == PUBLISHED[crash_at - 1]
    assert visible_files(root) == before  # nothing half-written left, and no temp files either
    data = load_dataset(root)
    assert (data.num_episodes, data.tasks) == (2, ["pick the cube"])
    np.testing.assert_array_equal(data.episode(1)["observation.state"], written[1][0]["observation.state"])
    assert data.stats["action"]["count"].tolist() == [25]
    monkeypatch.setattr(ds, "_publish", crash.real)
    assert writer.add_episode(frames, "a new task", images={CAMERA: images}) == 2  # the writer carries on
    assert load_dataset(root).num_episodes == 3


def test_a_killed_writer_leaves_only_complete_episodes_and_the_next_writer_cleans_up(tmp_path, monkeypatch):
    root = tmp_path / "d"
    write_episodes(root, EPISODES[:2])
    before = visible_files(root)
    writer = DatasetWriter(root, FPS, FEATURES, "toybot")
    monkeypatch.setattr(ds, "_discard_uncommitted", lambda root: None)  # a SIGKILL runs no cleanup
    CrashAt(monkeypatch, 6)  # dies just before info.json: data, video and all other metadata are written
    frames, images = episode_data(7, 12)
    with pytest.raises(RuntimeError):
        writer.add_episode(frames, "a new task", images={CAMERA: images})
    monkeypatch.undo()
    assert visible_files(root) > before  # the dead episode's files are there ...
    data = load_dataset(root)  # ... but not part of the dataset
    assert (data.num_episodes, data.num_frames, data.tasks) == (2, 25, ["pick the cube"])
    assert data.stats["observation.state"]["count"].tolist() == [25]  # stats.json was one episode ahead
    writer = DatasetWriter(root, FPS, FEATURES, "toybot")
    assert visible_files(root) == before
    writer.add_episode(frames, "a new task", images={CAMERA: images})
    assert load_dataset(root).num_episodes == 3


# ----------------------------------------------------------------------------------------- validation


def rewrite_state(root: Path, episode: int, state: pa.Array) -> None:
    path = root / f"data/chunk-000/file-{episode:03d}.parquet"
    table = pq.read_table(path)
    pq.write_table(table.set_column(table.column_names.index("observation.state"), "observation.state", state), path)


def nan_state(root: Path) -> None:
    values = np.ones((10, 4), np.float32)
    values[2, 3] = np.nan
    rewrite_state(root, 0, pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), 4))


def short_state(root: Path) -> None:
    rewrite_state(root, 1, pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(45, np.float32)), 3))


def double_state(root: Path) -> None:
    rewrite_state(root, 0, pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(40, np.float64)), 4))


def corrupt_data(root: Path) -> None:
    (root / "data/chunk-000/file-001.parquet").write_bytes(b"PAR1 this is not a parquet file")


def gap_in_episodes(root: Path) -> None:
    path = root / "meta/episodes/chunk-000/file-000.parquet"
    table = pq.read_table(path)
    pq.write_table(table.set_column(0, "episode_index", pa.array([0, 2, 3], pa.int64())), path)


def edit_info(**changes):
    def edit(root: Path) -> None:
        path = root / "meta/info.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))
    return edit


@pytest.mark.parametrize("corrupt, problem", [
    (corrupt_data, r"data/chunk-000/file-001.parquet \(episode 1\): not a readable parquet file"),
    (lambda root: (root / "data/chunk-000/file-002.parquet").unlink(),
     r"data/chunk-000/file-002.parquet \(episode 2\): missing file"),
    (lambda root: (root / f"videos/{CAMERA}/chunk-000/file-000.mp4").unlink(),
     rf"videos/{CAMERA}/chunk-000/file-000.mp4 \(episode 0\): missing video file"),
    (short_state, r"file-001.parquet \(episode 1\): feature 'observation.state' has 3 values in row 0, "
                  r"info.json says shape \[4\]"),
    (double_state, r"file-000.parquet \(episode 0\): feature 'observation.state' holds double values, "
                   r"info.json says float32"),
    (nan_state, r"file-000.parquet \(episode 0\): feature 'observation.state' has NaN or inf at frame 2, component 3"),
    (gap_in_episodes, r"episode indexes are not continuous: row 1 has episode_index 2"),
    (edit_info(total_frames=40), r"episode lengths add up to 37 frames, info.json counts 40"),
    (edit_info(total_episodes=4), r"3 episode rows, info.json counts 4 episodes"),
    (lambda root: (root / "meta/info.json").write_text("{}"), r"info.json: missing keys \['codebase_version'"),
])
def test_validation_names_the_file_the_episode_and_the_problem(tmp_path, corrupt, problem):
    root = tmp_path / "d"
    write_episodes(root)
    corrupt(root)
    with pytest.raises(DatasetError, match=problem):
        load_dataset(root)


# ---------------------------------------------------------------------------------------------- merge


def test_videos_are_h264_and_older_mp4v_videos_still_read(tmp_path):
    """Browsers play H.264 (not MPEG-4 Part 2); a dataset RoboStack wrote before (mp4v) reads as it did; an odd
    frame size, which H.264 in yuv420p cannot hold, is refused when the feature is declared."""
    import av
    import cv2

    written = write_episodes(tmp_path / "d", EPISODES[:1])
    video = tmp_path / f"d/videos/{CAMERA}/chunk-000/file-000.mp4"
    with av.open(str(video)) as container:
        stream = container.streams.video[0]
        assert (stream.codec_context.name, stream.codec_context.pix_fmt) == ("h264", "yuv420p")
        assert stream.frames == len(written[0][1])

    images = written[0][1]
    old = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), FPS, (WIDTH, HEIGHT))
    for frame in images:
        old.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    old.release()
    assert np.abs(load_dataset(tmp_path / "d").episode(0)[CAMERA].astype(int) - images).mean() < 3.0

    odd = {**FEATURES, CAMERA: {"dtype": "video", "shape": [HEIGHT + 1, WIDTH, 3]}}
    with pytest.raises(DatasetError, match=r"H.264 video needs an even height and width, got \[49, 64\]"):
        DatasetWriter(tmp_path / "odd", FPS, odd, "toybot")


def test_outcomes_and_sources_survive_lerobots_tools(tmp_path):
    """LeRobot's aggregate and delete tools rebuild info.json and the episode table from their own keys: each
    episode's success and source come back from its frames, and the dataset still appends and merges."""
    write_episodes(tmp_path / "d")
    as_lerobot_tools_leave_it(tmp_path / "d")
    assert "success" not in pq.read_schema(tmp_path / "d/meta/episodes/chunk-000/file-000.parquet").names
    data = load_dataset(tmp_path / "d")
    assert [(row["source"], row["success"]) for row in data.episodes] == [(e[2], e[3]) for e in EPISODES]
    assert data.summary()["sources"]["teleop"]["episodes"] == sum(e[2] == "teleop" for e in EPISODES)
    merged = merge([tmp_path / "d"], tmp_path / "m")
    assert [(row["source"], row["success"]) for row in merged.episodes] == [(e[2], e[3]) for e in EPISODES]


def test_a_dataset_written_before_per_frame_outcomes_reads_and_appends_as_it_did(tmp_path):
    """The older layout: the simulated task in info.json, no complementary_info.success/source."""
    write_episodes(tmp_path / "d", EPISODES[:2])
    info = json.loads((tmp_path / "d/meta/info.json").read_text())
    for key in (ds.SUCCESS, ds.SOURCE):
        del info["features"][key]
    info.update({"robostack.task": "panda-reach", "robostack.task_config": {"x": 1}})
    (tmp_path / "d/meta/info.json").write_text(json.dumps(info))
    for path in (tmp_path / "d/data").rglob("*.parquet"):
        table = pq.read_table(path)
        pq.write_table(table.drop_columns([ds.SUCCESS, ds.SOURCE]), path)
    data = load_dataset(tmp_path / "d")
    assert (data.sim_task, data.sim_task_config) == ("panda-reach", {"x": 1})
    assert [(row["source"], row["success"]) for row in data.episodes] == [(e[2], e[3]) for e in EPISODES[:2]]
    frames, images = episode_data(7, 6)
    writer = DatasetWriter(tmp_path / "d", FPS, FEATURES, "toybot", sim_task="panda-reach", sim_task_config={"x": 1})
    writer.add_episode(frames, "pick the cube", images={CAMERA: images}, success=True)
    appended = load_dataset(tmp_path / "d")
    assert appended.num_episodes == 3 and ds.SUCCESS not in appended.features and appended.episodes[2]["success"]


def test_merge_reindexes_episodes_tasks_and_frames(tmp_path):
    a = write_episodes(tmp_path / "a", EPISODES[:2])
    b = write_episodes(tmp_path / "b", [EPISODES[2], EPISODES[0]], first_seed=5)
    merged = merge([tmp_path / "a", tmp_path / "b"], tmp_path / "all")
    assert (merged.num_episodes, merged.num_frames) == (4, 47)
    assert merged.tasks == ["pick the cube", "open the drawer"]
    np.testing.assert_array_equal(merged.frames(["index"])["index"], np.arange(47))
    for i, (frames, _) in enumerate(a + b):
        np.testing.assert_array_equal(merged.episode(i, images=False)["observation.state"], frames["observation.state"])
    assert [row["source"] for row in merged.episodes] == ["teleop", "intervention", "rollout", "teleop"]
    assert merged.episode(2)["task_index"][0] == 1 and merged.episode(3)["task_index"][0] == 0
    # one-episode H.264 files are copied as they are: no second round of lossy encoding
    copied = (tmp_path / f"all/videos/{CAMERA}/chunk-000/file-002.mp4").read_bytes()
    assert copied == (tmp_path / f"b/videos/{CAMERA}/chunk-000/file-000.mp4").read_bytes()

    renamed = {**FEATURES, "action": {"dtype": "float32", "shape": [2], "names": ["left", "right"]}}
    write_episodes(tmp_path / "c", EPISODES[:1], features=renamed)
    with pytest.raises(DatasetError, match=r"merge: feature 'action' differs"):
        merge([tmp_path / "a", tmp_path / "c"], tmp_path / "bad")


# ------------------------------------------------------------------------------------------------- CLI


def test_cli_info_json(tmp_path, capsys):
    write_episodes(tmp_path / "d", [*EPISODES, ("open the drawer", 5, "rollout", True)])
    assert cli.main(["data", "info", str(tmp_path / "d"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["episodes"], summary["frames"], summary["fps"]) == (4, 42, FPS)
    assert summary["tasks"] == ["pick the cube", "open the drawer"]
    assert summary["features"][CAMERA] == {"dtype": "video", "shape": [HEIGHT, WIDTH, 3]}
    assert summary["features"]["observation.state"] == {"dtype": "float32", "shape": [4]}
    sources = summary["sources"]
    assert sources["rollout"]["episodes"] == 2 and sources["rollout"]["success_rate"] == 0.5
    assert sources["intervention"]["success_rate"] is None and sources["teleop"]["success_rate"] == 1.0
    assert cli.main(["data", "info", str(tmp_path / "d")]) == 0
    assert "success 50.0% of 2 with an outcome" in capsys.readouterr().out


def test_cli_merge_and_errors(tmp_path, capsys):
    write_episodes(tmp_path / "a", EPISODES[:1])
    assert cli.main(["data", "merge", str(tmp_path / "m"), str(tmp_path / "a"), str(tmp_path / "a"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["episodes"] == 2
    assert cli.main(["data", "info", str(tmp_path / "nothing")]) == 2
    assert "not a dataset (meta/info.json is missing)" in capsys.readouterr().err
