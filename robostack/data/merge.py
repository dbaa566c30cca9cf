"""Merging datasets: episodes of datasets with the same fps, robot and features, reindexed into one."""
from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from robostack.data.dataset import (COMPUTED_FEATURES, TAKEOVER_START, VIDEO_CODEC, Dataset, DatasetError,
                                    DatasetWriter, _probe_video, _video_file, feature_difference, load_dataset)


def merge(sources: Sequence[str | os.PathLike], out: str | os.PathLike) -> Dataset:
    """Concatenate datasets with identical fps, robot and features into ``out`` (new, or a dataset with the
    same features), reindexing episodes, tasks and frames. Videos that hold exactly one episode in this
    writer's codec are copied; others are decoded and re-encoded. The simulated task is kept if all agree.
    Datasets written before ``complementary_info.takeover_start`` merge with newer ones: the writer derives it from
    their intervention flags (and leaves it out when ``out`` is such a dataset)."""
    if not sources:
        raise DatasetError("merge: give at least one source dataset")
    datasets = [load_dataset(source) for source in sources]
    first = datasets[0]
    for other in datasets[1:]:
        for name, a, b in (("fps", first.fps, other.fps),
                           ("robot_type", first.info["robot_type"], other.info["robot_type"])):
            if a != b:
                raise DatasetError(f"merge: {name} differs: {a!r} in {first.root}, {b!r} in {other.root}")
        difference = feature_difference(_compared(first), _compared(other), str(first.root), str(other.root))
        if difference:
            raise DatasetError(f"merge: {difference}")
    same_task = all(d.sim_task == first.sim_task and d.sim_task_config == first.sim_task_config for d in datasets)
    writer = DatasetWriter(out, first.fps, first.features, first.info["robot_type"],
                           sim_task=first.sim_task if same_task else None,
                           sim_task_config=first.sim_task_config if same_task else None)
    for dataset in datasets:
        for i, row in enumerate(dataset.episodes):
            if len(row["tasks"]) != 1:
                raise DatasetError(f"merge: {dataset.root} episode {i} has tasks {row['tasks']}; "
                                   "only one task per episode is supported")
            data = dataset.episode(i, images=False)
            frames = {key: values for key, values in data.items()
                      if key in writer.features and key not in COMPUTED_FEATURES}
            writer.add_episode(frames, row["tasks"][0], images=_episode_videos(dataset, i),
                               success=row.get("success"), source=row.get("source") or "rollout")
    return load_dataset(out)


def _compared(dataset: Dataset) -> dict[str, Any]:
    """Its features but ``complementary_info.takeover_start``, which the writer derives where a dataset lacks it."""
    return {key: ft for key, ft in dataset.features.items() if key != TAKEOVER_START}


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
