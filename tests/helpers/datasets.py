"""Small datasets for tests: a few episodes of made-up frames and a camera, written with ``DatasetWriter``."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from robostack.data.dataset import DatasetWriter

CAMERA = "observation.images.front"
HEIGHT, WIDTH = 48, 64


FPS = 30


FEATURES = {
    "observation.state": {"dtype": "float32", "shape": [4], "names": ["j0.pos", "j1.pos", "j0.vel", "j1.vel"]},
    "action": {"dtype": "float32", "shape": [2], "names": ["j0.target", "j1.target"]},
    CAMERA: {"dtype": "video", "shape": [HEIGHT, WIDTH, 3]},
}


# (task, length, source, success) of the episodes most tests write
EPISODES = [("pick the cube", 10, "teleop", True), ("pick the cube", 15, "intervention", None),
             ("open the drawer", 12, "rollout", False)]


def episode_data(seed: int, length: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Random numeric frames and a smooth moving gradient (what a lossy codec keeps well) as camera frames."""
    rng = np.random.default_rng(seed)
    frames = {"observation.state": rng.normal(size=(length, 4)).astype(np.float32),
              "action": rng.normal(size=(length, 2)).astype(np.float32),
              "next.reward": rng.random(length).astype(np.float32)}
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH]
    images = np.stack([np.stack([x * 3 + t, y * 4 + 2 * t, np.full_like(x, 40 * seed + 20)], axis=-1)
                       for t in range(length)]).astype(np.uint8)
    return frames, images


def write_episodes(root: Path, episodes=EPISODES, first_seed: int = 0, features=FEATURES) -> list:
    writer = DatasetWriter(root, FPS, features, "toybot")
    written = []
    for seed, (task, length, source, success) in enumerate(episodes, start=first_seed):
        frames, images = episode_data(seed, length)
        writer.add_episode(frames, task, images={CAMERA: images}, success=success, source=source)
        written.append((frames, images))
    return written



# What LeRobot's aggregate_datasets and delete_episodes keep of a v3.0 dataset's metadata (lerobot
# src/lerobot/datasets/{aggregate,dataset_tools}.py, read 2026-12: both write info.json anew through
# LeRobotDatasetMetadata.create with these keys, and delete_episodes rebuilds each episode row from these
# columns; data parquet files and the features are copied whole).
LEROBOT_INFO_KEYS = ("codebase_version", "robot_type", "total_episodes", "total_frames", "total_tasks", "chunks_size",
                     "data_files_size_in_mb", "video_files_size_in_mb", "fps", "splits", "data_path", "video_path",
                     "features")
LEROBOT_EPISODE_PREFIXES = ("episode_index", "tasks", "length", "data/", "videos/", "dataset_from_index",
                            "dataset_to_index", "meta/episodes/", "stats/")


def as_lerobot_tools_leave_it(root: Path) -> None:
    """Rewrite a dataset's metadata as LeRobot's tools rebuild it (only their keys and columns)."""
    import json

    import pyarrow.parquet as pq

    info_path = root / "meta/info.json"
    info = json.loads(info_path.read_text())
    info_path.write_text(json.dumps({key: info[key] for key in LEROBOT_INFO_KEYS if key in info}, indent=4))
    episodes = root / "meta/episodes/chunk-000/file-000.parquet"
    table = pq.read_table(episodes)
    pq.write_table(table.select([c for c in table.column_names if c.startswith(LEROBOT_EPISODE_PREFIXES)]), episodes)
