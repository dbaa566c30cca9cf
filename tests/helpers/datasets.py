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

