"""``complementary_info.takeover_start``: the first frame of each takeover, defaulted by the writer from the
intervention flags, kept by merge, and absent (derived the same way where needed) in datasets written before it."""
from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from helpers.datasets import CAMERA, EPISODES, FEATURES, FPS, episode_data, write_episodes
from robostack.data.dataset import INTERVENTION, TAKEOVER_START, DatasetWriter, load_dataset
from robostack.data.merge import merge


def starts(data, episode: int) -> list[int]:
    return np.flatnonzero(data.episode(episode, images=False)[TAKEOVER_START]).tolist()


def write_without_takeover_start(root) -> None:
    """A dataset as RoboStack wrote it before the column: no feature, no column, no statistics."""
    write_episodes(root, EPISODES[:2])
    info = json.loads((root / "meta/info.json").read_text())
    del info["features"][TAKEOVER_START]
    (root / "meta/info.json").write_text(json.dumps(info))
    for path in (root / "data").rglob("*.parquet"):
        pq.write_table(pq.read_table(path).drop_columns([TAKEOVER_START]), path)
    episodes = root / "meta/episodes/chunk-000/file-000.parquet"
    table = pq.read_table(episodes)
    pq.write_table(table.drop_columns([c for c in table.column_names if TAKEOVER_START in c]), episodes)
    stats = json.loads((root / "meta/stats.json").read_text())
    del stats[TAKEOVER_START]
    (root / "meta/stats.json").write_text(json.dumps(stats))


def test_the_writer_marks_teleop_episodes_at_frame_0_and_rollouts_nowhere(tmp_path):
    """Sources teleop, intervention (no flags given: none) and rollout, as ``EPISODES`` writes them."""
    write_episodes(tmp_path / "d")
    data = load_dataset(tmp_path / "d")
    assert [starts(data, i) for i in range(3)] == [[0], [], []]
    assert data.features[TAKEOVER_START] == {"dtype": "bool", "shape": [1], "names": None}
    stats = json.loads((tmp_path / "d/meta/stats.json").read_text())[TAKEOVER_START]  # LeRobot reads it
    assert stats["count"] == [37] and stats["max"] == [1.0] and stats["mean"] == [pytest.approx(1 / 37)]
    assert data.episodes[0][f"stats/{TAKEOVER_START}/mean"] == [pytest.approx(0.1)]


def test_takeover_starts_default_to_where_the_flags_turn_true_and_given_ones_are_kept(tmp_path):
    writer = DatasetWriter(tmp_path / "d", FPS, FEATURES, "toybot")
    frames, images = episode_data(0, 8)
    flags = np.array([1, 1, 0, 0, 1, 1, 1, 0], dtype=bool)
    writer.add_episode({**frames, INTERVENTION: flags}, "pick the cube", images={CAMERA: images},
                       source="intervention")
    handed_over = np.array([0, 0, 0, 0, 1, 0, 1, 0], dtype=bool)  # a second human took over at frame 6
    writer.add_episode({**frames, INTERVENTION: flags, TAKEOVER_START: handed_over}, "pick the cube",
                       images={CAMERA: images}, source="intervention")
    data = load_dataset(tmp_path / "d")
    assert [starts(data, 0), starts(data, 1)] == [[0, 4], [4, 6]]
    merged = merge([tmp_path / "d"], tmp_path / "m")  # carried as written
    assert [starts(merged, 0), starts(merged, 1)] == [[0, 4], [4, 6]]


def test_a_dataset_written_before_takeover_starts_loads_appends_and_merges(tmp_path):
    """It loads and appends as it is (no column); merged with a newer one, the writer derives its starts."""
    write_without_takeover_start(tmp_path / "old")
    old = load_dataset(tmp_path / "old")
    assert TAKEOVER_START not in old.features and old.num_episodes == 2
    frames, images = episode_data(7, 6)
    DatasetWriter(tmp_path / "old", FPS, FEATURES, "toybot").add_episode(
        frames, "pick the cube", images={CAMERA: images}, source="teleop")
    appended = load_dataset(tmp_path / "old")
    assert appended.num_episodes == 3 and TAKEOVER_START not in appended.features

    write_episodes(tmp_path / "new", EPISODES[:1], first_seed=5)
    merged = merge([tmp_path / "old", tmp_path / "new"], tmp_path / "merged")
    assert TAKEOVER_START in merged.features
    assert [starts(merged, i) for i in range(4)] == [[0], [], [0], [0]]  # teleop, intervention, teleop, teleop
    into_old = merge([tmp_path / "new"], tmp_path / "old")  # into the older layout: left out, as its flags say
    assert into_old.num_episodes == 4 and TAKEOVER_START not in into_old.features
