"""Names shared by datasets, diffusion policies and chunk bundles: the LeRobotDataset feature keys RoboStack
reads and writes. Core: every layer may use them."""
from __future__ import annotations

STATE_KEY = "observation.state"
IMAGE_PREFIX = "observation.images."  # + camera name
ACTION_KEY = "action"

