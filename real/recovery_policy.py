"""A recovery policy trained with the safety critic (``critic.recovery_policy`` of a bundle, Recovery RL's), as the
safety layer runs it in place of the robot kind's scripted recovery (``robostack.real.safety``). It reads the
policy's own observation, so it needs torch and the task's observation terms: ``RiskCritic.new_recovery`` imports
this module only for a bundle that has one, and a safety node without one loads neither."""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from robostack.bundle.format import INPUT_NAME, OUTPUT_NAME
from robostack.real.observation import ObservationBuilder
from robostack.real.robot_state import RobotState


class PolicyRecovery:
    """A recovery policy trained with the critic (``critic.recovery_policy``, Recovery RL's): the bundle's own
    observation of the measured state (``robostack.real.observation.ObservationBuilder``, as the policy node builds
    it) with the recovery's task command (the go2's: stand still), its graph, the bundle's action map. It acts at
    the bundle's control rate, as it was trained, and holds its target between steps; it starts with the command
    it takes over as its last action (where the action map is absolute), as the policy's own past action."""

    name = "learned recovery"

    def __init__(self, session: Any, metadata: dict[str, Any], command: np.ndarray):
        self.session, self.command = session, command
        self.builder = ObservationBuilder(metadata)
        self.period = float(metadata["control_dt"])
        self._next, self._target, self._first = math.inf, None, True

    def begin(self, state: RobotState, now: float, command: np.ndarray) -> None:
        """A recovery from ``state`` (this tick's: the first ``target`` comes in the same tick and acts on it)."""
        with torch.inference_mode():  # as the policy node's tick: the builder's tensors are inference tensors
            self.builder.reset(self.command if self.command.size else None)
            self.builder.update(state)  # the command's targets are limited at this state, as the policy's were
            if self.builder.one_to_one and command is not None:
                taken_over = self.builder.actions_of(np.asarray(command, dtype=np.float64)[None])[0]
                self.builder.controls(taken_over)  # its last action: the one it takes over
                self.builder.episode_length.zero_()
        self._next, self._target, self._first = now, None, True

    def target(self, state: RobotState, now: float) -> np.ndarray:
        if self._target is None or now >= self._next - 1e-9:
            with torch.inference_mode():
                if not self._first:  # the first step acts on the state begin took
                    self.builder.update(state)
                    self.builder.integrate()
                obs = self.builder.observation()[None]
                action = self.session.run([OUTPUT_NAME], {INPUT_NAME: obs})[0][0]
                self._target = self.builder.controls(np.clip(action, -1.0, 1.0))
            self._first = False
            self._next = max(self._next + self.period, now)
        return self._target
