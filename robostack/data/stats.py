"""Per-feature statistics of a dataset (LeRobot's ``meta/stats.json`` and each episode row's ``stats/KEY/STAT``):
per component for numeric features, per channel in [0, 1] for cameras, pooled over episodes."""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

STATS_FRAMES = 100  # frames sampled per episode for image statistics
STATS_PIXELS = 150 * 150  # about this many pixels per sampled frame (strided)


QUANTILES = {"q01": 0.01, "q10": 0.10, "q50": 0.50, "q90": 0.90, "q99": 0.99}  # what LeRobot writes by default (its
# QUANTILES normalization reads them)


def stats_of(x: np.ndarray, count: int) -> dict[str, np.ndarray]:
    quantiles = np.quantile(x, list(QUANTILES.values()), axis=0)
    return {"min": x.min(0), "max": x.max(0), "mean": x.mean(0), "std": x.std(0), "count": np.array([count]),
            **dict(zip(QUANTILES, quantiles))}


def episode_stats(columns: Mapping[str, np.ndarray], videos: Mapping[str, np.ndarray]) -> dict[str, dict]:
    """Statistics of one episode: per component for numeric features, per channel (in [0, 1]) for cameras."""
    stats = {key: stats_of(values.reshape(len(values), -1).astype(np.float64), len(values))
             for key, values in columns.items()}
    for key, frames in videos.items():
        picked = np.unique(np.linspace(0, len(frames) - 1, min(len(frames), STATS_FRAMES)).round().astype(int))
        stride = max(1, int(math.sqrt(frames.shape[1] * frames.shape[2] / STATS_PIXELS)))
        pixels = frames[picked, ::stride, ::stride].reshape(-1, 3).astype(np.float64) / 255.0
        stats[key] = {stat: value.reshape(3, 1, 1) if stat != "count" else value
                      for stat, value in stats_of(pixels, len(picked)).items()}
    return stats


def aggregate_stats(parts: Sequence[Mapping[str, Mapping[str, Any]]]) -> dict[str, dict[str, np.ndarray]]:
    """Statistics of the union of episodes from theirs (pooled mean and variance; quantiles approximated)."""
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
        for name in QUANTILES:  # as LeRobot aggregates them: the count-weighted mean of the episodes' quantiles
            if all(name in s for s in items):  # (episodes recorded before quantiles were kept have none)
                out[key][name] = (weights * np.stack([s[name] for s in items])).sum(0)
    return out


def row_stats(row: Mapping[str, Any]) -> dict[str, dict[str, np.ndarray]]:
    """An episode row's ``stats/KEY/STAT`` columns as nested arrays."""
    stats: dict[str, dict[str, np.ndarray]] = {}
    for column, value in row.items():
        if column.startswith("stats/") and value is not None:
            key, stat = column[len("stats/"):].rsplit("/", 1)
            stats.setdefault(key, {})[stat] = np.asarray(value)
    return stats


def jsonable_stats(stats: Mapping[str, Mapping[str, np.ndarray]]) -> dict[str, dict[str, list]]:
    return {key: {stat: np.asarray(value).tolist() for stat, value in s.items()} for key, s in stats.items()}
