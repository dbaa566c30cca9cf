"""Pad mappings, in one place for every teleop path: which gamepad axis and button does what, and the deadzone
that keeps a centred stick or an untouched cap from drifting the robot. ``robostack teleop`` (the gamepad and
joy devices, ``robostack.teleop.devices``) and ``teleop_node`` (a takeover on a robot) both read them.

Axes and buttons are numbered as SDL numbers an Xbox-style pad on Linux (the xpad driver; pygame and the ROS
joy driver alike): axis 0/1 left stick x/y, 2 left trigger, 3/4 right stick x/y, 5 right trigger; buttons 0 A,
1 B, 2 X, 3 Y, 4 LB, 5 RB, 6 Back, 7 Start. The ROS joy driver reports a stick pushed up or left as positive,
SDL and pygame as negative.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

def apply_deadzone(values: Any, deadzone: float) -> np.ndarray:
    """``values`` clipped to [-1, 1] with the band ``|v| < deadzone`` set to zero and the rest rescaled so
    that full deflection still gives ±1 (no jump at the band's edge): a centred stick or an untouched cap
    never drifts the arm. Non-finite values read as zero."""
    v = np.clip(np.nan_to_num(np.asarray(values, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0), -1.0, 1.0)
    return np.sign(v) * np.maximum(np.abs(v) - deadzone, 0.0) / (1.0 - deadzone)



@dataclass(frozen=True)
class PadMapping:
    """Which axes and buttons of a gamepad do what, by the index SDL's joystick API gives them.

    ``axes``: the axis that moves the TCP along x (forward), y (left), z (up) and in yaw (counter-clockwise).
    ``up_left_positive``: the input reports a stick pushed up or left as positive (the ROS joy driver flips
    SDL's values so); SDL and pygame report right and down as positive."""

    axes: tuple[int, int, int, int]
    up_left_positive: bool
    gripper_button: int
    event_buttons: tuple[tuple[int, str], ...]  # (button, episode event)



# Left stick: x (up) and y (left); right stick: z (up/down) and yaw (left/right).
XBOX_AXES = (1, 0, 4, 3)
XBOX_GRIPPER_BUTTON = 0  # A toggles the gripper

XBOX_EVENT_BUTTONS = ((7, "start"), (3, "success"), (2, "stop"), (1, "discard"), (6, "quit"))

GAMEPAD_MAPPING = PadMapping(XBOX_AXES, False, XBOX_GRIPPER_BUTTON, XBOX_EVENT_BUTTONS)

JOY_MAPPING = PadMapping(XBOX_AXES, True, XBOX_GRIPPER_BUTTON, XBOX_EVENT_BUTTONS)

PAD_HELP = ("left stick x/y, right stick up/down z, left/right yaw, A gripper | Start start, Y success, "
            "X stop, B discard, Back quit")

PAD_DEADZONE = 0.1



def pad_motion(axes: Mapping[int, float], mapping: PadMapping, deadzone: float = PAD_DEADZONE) -> np.ndarray:
    """The TCP motion (x, y, z, rx, ry, rz in [-1, 1]) a pad's sticks ask for; ``axes`` maps an axis index to
    its latest value, and an axis it lacks counts as centred. One mapping for pygame and for ROS Joy."""
    sign = 1.0 if mapping.up_left_positive else -1.0
    motion = np.zeros(6)
    motion[[0, 1, 2, 5]] = sign * apply_deadzone([axes.get(axis, 0.0) for axis in mapping.axes], deadzone)
    return motion



@dataclass(frozen=True)
class TakeoverMapping:
    """What a human commands on one kind of robot during a takeover (``teleop_node``), and how the default
    inputs map onto it: the pad axis per component, the value at full stick (a Twist's is clipped to it), and the
    Twist field per component."""

    components: tuple[str, ...]
    axes: tuple[int, ...]
    scales: tuple[float, ...]
    twist_fields: tuple[str, ...]


# The arm's sticks are the recording devices' (XBOX_AXES); the quadruped's scales are the go2-walk training
# ranges: the policy never saw faster commands.
TAKEOVER_MAPPINGS = {
    "arm": TakeoverMapping(("x", "y", "z", "yaw"), XBOX_AXES, (0.1, 0.1, 0.1, 0.5),
                           ("linear.x", "linear.y", "linear.z", "angular.z")),
    "quadruped": TakeoverMapping(("vx", "vy", "yaw_rate"), (1, 0, 3), (1.0, 0.5, 1.0),
                                 ("linear.x", "linear.y", "angular.z")),
    "drone": TakeoverMapping(("x", "y", "z"), (1, 0, 4), (0.5, 0.5, 0.5), ("linear.x", "linear.y", "linear.z")),
}
TAKEOVER_DEADMAN_BUTTON = 4  # LB: held, the human is in control
TAKEOVER_GRIPPER_BUTTONS = (1, 0)  # B opens, A closes
