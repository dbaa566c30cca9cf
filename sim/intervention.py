"""A human watching a simulated robot, per task: when they would take over, what they command while they hold
the deadman and when they hand back. They see what the simulator knows (privileged state: where the cube really
is, the drone's true position), not what the robot measures, as a person beside the robot sees it.

A task registers its ``TaskIntervener`` subclass on its ``TaskSpec`` (``intervener``). What it commands is in the
units of its robot kind's takeover (``robostack.teleop.mapping.TAKEOVER_MAPPINGS``: an arm's end-effector velocity
and yaw rate, a quadruped's velocity command, a drone's setpoint velocity) and, for an arm, whether the gripper
closes; ``robostack.teleop.intervener.SimulatedHuman`` turns that into a gamepad's messages for ``teleop_node``.
"""
from __future__ import annotations

import numpy as np
import torch


class TaskIntervener:
    """Batched over a ``TaskEnv``'s envs; tasks override what their human watches and does."""

    def __init__(self, env) -> None:
        """Made for ``env`` (its batch size), before its first step."""

    def begin(self, env, env_ids: np.ndarray) -> None:
        """A takeover starts in ``env_ids``."""

    def going_wrong(self, env) -> torch.Tensor:
        """[N] bool: where a watching human would take over now."""
        raise NotImplementedError

    def back_on_track(self, env) -> torch.Tensor:
        """[N] bool: where the human, in control, would hand back now."""
        raise NotImplementedError

    def command(self, env) -> torch.Tensor:
        """[N, components] the human's command now, in the takeover's units."""
        raise NotImplementedError

    def gripper_closed(self, env) -> torch.Tensor | None:
        """[N] bool for an arm with a gripper: whether the human closes it (after ``command``); None otherwise."""
        return None


def steps_held(count: torch.Tensor, holds: torch.Tensor) -> torch.Tensor:
    """[N] consecutive control steps a condition has held: ``count`` plus one where ``holds``, zero where not (a
    human's patience before taking over or handing back)."""
    return torch.where(holds, count + 1, torch.zeros_like(count))
