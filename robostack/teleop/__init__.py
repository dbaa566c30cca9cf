"""Teleoperation, one package for every path a human commands a robot through: input devices
(``devices``, ``spacemouse``), the pad mappings they and the takeover node share (``mapping``), and the takeovers
that turn a human's command into what each kind of robot runs (``takeovers``). ``robostack teleop`` records
demonstrations in simulation with the devices (``robostack.workflows.record``); ``teleop_node`` lets a human take
over a deployed robot with the mappings and takeovers (``robostack.real.teleop_node``).
"""
from __future__ import annotations

from collections.abc import Callable

from robostack.teleop.devices import (EVENTS, GamepadTeleop, JoyTeleop, KeyboardTeleop, ScriptedTeleop, Teleoperator,
                                      TeleopError)
from robostack.teleop.spacemouse import SpaceMouseTeleop

DEVICES: dict[str, Callable[..., Teleoperator]] = {
    "keyboard": KeyboardTeleop, "gamepad": GamepadTeleop, "joy": JoyTeleop, "spacemouse": SpaceMouseTeleop,
    "scripted": ScriptedTeleop}

__all__ = ["DEVICES", "EVENTS", "Teleoperator", "TeleopError"]
