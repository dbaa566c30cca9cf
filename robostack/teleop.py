"""Teleoperation in simulation, recorded as RoboStack datasets (``robostack teleop``).

A ``Teleoperator`` is the input device, in LeRobot's shape: ``connect()``, ``get_action(env)`` (an action in
the task's normalized action space, [-1, 1]), ``events()`` (the episode events the operator asked for since
the last call: ``start``, ``stop``, ``success``, ``discard``, ``quit``) and ``disconnect()``. ``DEVICES`` maps
``--device`` names to them: ``keyboard`` (a terminal), ``gamepad`` (SDL through pygame), ``joy`` (ROS 2
``sensor_msgs/Joy`` from the joy driver), ``spacemouse`` (a 3Dconnexion SpaceMouse over HID) and ``scripted``
(the task's scripted expert). The gamepad, joy and SpaceMouse devices move an end-effector arm; their
mappings are the module constants ``GAMEPAD_MAPPING``, ``JOY_MAPPING`` and ``SPACEMOUSE_AXES``.

``record`` runs one env with a device and writes every kept episode with ``source="teleop"``:

* ``start`` resets the env and begins recording; it is ignored while recording.
* ``success`` keeps the episode with success true; ``stop`` keeps it with the task's own success check at
  that moment; ``discard`` drops it; ``quit`` drops an unfinished episode and ends the session.
* The env ending the episode itself (success when the task terminates on it, the object dropped, time
  out) keeps it with the env's success flag.

Each frame holds the state before the step, the actuator controls the step applied (``action``, what
``replay`` re-executes), the task command, and the device's normalized action (``teleop.action``).

A live view shows the operator the scene (``view``): MuJoCo's passive viewer window, synced every step, or,
without a display, the task's ``scene`` camera rendered offscreen about 5 times a second to a PNG next to
the dataset (``<out>.live.png``, replaced atomically, so any image viewer can keep it open).
"""
from __future__ import annotations

import math
import contextlib
import os
import queue
import select
import sys
import termios
import threading
import time
import tty
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, TextIO

import numpy as np

EVENTS = ("start", "stop", "success", "discard", "quit")
TELEOP_ACTION = "teleop.action"
STATUS_PERIOD_S = 0.1


class TeleopError(ValueError):
    """A device, task or terminal that teleoperation cannot work with (the message says which and why)."""


class Teleoperator:
    """An input device that drives one simulated env."""

    realtime = True  # the session paces steps to the env's control rate (a human is watching)
    help = ""  # the controls, in one line, shown when a real-time session starts
    # Whether an episode is being recorded: the session sets it before each ``events()`` call, so a device
    # with few buttons can give one button two meanings (start when idle, success while recording).
    recording = False

    def connect(self) -> None:
        """Take hold of the device."""

    def reset(self) -> None:
        """A new episode starts (the env was just reset)."""

    def get_action(self, env: Any) -> np.ndarray:
        """The action for env 0's current state, in the task's normalized action space."""
        raise NotImplementedError

    def executed(self, action: np.ndarray) -> np.ndarray:
        """What the env is sent for the recorded ``action``: the action itself, but see ``ScriptedTeleop``."""
        return action

    def events(self) -> list[str]:
        """Episode events (``EVENTS``) asked for since the last call, in order."""
        raise NotImplementedError

    def disconnect(self) -> None:
        """Give the device back (restore what ``connect`` changed)."""

    def status(self) -> str:
        """The device's state in a few words, for the status line."""
        return ""

    def __enter__(self) -> "Teleoperator":
        self.connect()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.disconnect()


# ------------------------------------------------------------------------------------------ keyboard

# key -> (action component, sign): end-effector x (forward), y (left), z (up), yaw (counter-clockwise)
ARM_KEYS = {"w": (0, 1), "s": (0, -1), "a": (1, 1), "d": (1, -1), "r": (2, 1), "f": (2, -1), "q": (5, 1), "e": (5, -1)}
# the same keys on a velocity command (vx, vy, yaw rate)
VELOCITY_KEYS = {"w": (0, 1), "s": (0, -1), "a": (1, 1), "d": (1, -1), "q": (2, 1), "e": (2, -1)}
VELOCITY_STEP = np.array([0.1, 0.1, 0.2])  # m/s, m/s, rad/s per key press
EVENT_KEYS = {"\n": "start", "\r": "start", "x": "stop", "y": "success", "n": "discard", "\x1b": "quit", "Q": "quit"}
GRIPPER_KEY = " "
HOLD_S = 0.15  # a motion key moves for this long after each press (bridges the terminal's autorepeat)
KEY_HELP = ("w/s x, a/d y, r/f z, q/e yaw, space gripper | Enter start, x stop, y success, n discard, "
            "Esc/Q quit")


def parse_keys(data: str) -> list[str]:
    """Key presses in terminal input: escape sequences (arrow and function keys) are dropped, a lone Esc kept."""
    keys, i = [], 0
    while i < len(data):
        if data[i] == "\x1b" and data[i + 1:i + 2] in ("[", "O"):
            i += 2
            while i < len(data) and not data[i].isalpha() and data[i] != "~":
                i += 1
            i += 1
            continue
        keys.append(data[i])
        i += 1
    return keys


class KeyboardTeleop(Teleoperator):
    """Keys of a plain terminal (no GUI): cbreak mode on a tty, read without blocking.

    Arm tasks whose actions are end-effector deltas: a held motion key commands ``speed`` (normalized) on
    its axis each control step; space toggles the gripper. A velocity-commanded robot (go2): each press
    changes the command by ``VELOCITY_STEP`` (see ``apply_command``).
    """

    help = KEY_HELP

    def __init__(self, env: Any, fd: int | None = None, speed: float = 0.5):
        self.fd = sys.stdin.fileno() if fd is None else fd
        self.speed = speed
        self.arm = env.task.action.ik is not None
        self.action_dim = env.action_dim
        self.has_gripper = env.task.action.gripper is not None
        self.gripper_closed = False
        self.velocity = np.zeros(len(VELOCITY_STEP))
        # the task's own command ranges (go2-walk's): the policy never saw faster commands
        commands = getattr(env.task_cfg, "commands", None)
        ranges = np.array([commands.lin_vel_x, commands.lin_vel_y, commands.ang_vel_z]) if commands is not None \
            else np.zeros((len(VELOCITY_STEP), 2))
        self.velocity_low, self.velocity_high = ranges[:, 0], ranges[:, 1]
        self._pressed: dict[str, float] = {}  # motion key -> when it was last pressed
        self._events: list[str] = []
        self._saved: list | None = None

    def connect(self) -> None:
        if not os.isatty(self.fd):
            raise TeleopError("keyboard teleop needs a terminal (a tty) on stdin; use --device scripted to record "
                              "without one")
        self._saved = termios.tcgetattr(self.fd)
        tty.setcbreak(self.fd)  # keys arrive one at a time, unechoed; Ctrl-C still interrupts

    def disconnect(self) -> None:
        if self._saved is not None:
            termios.tcsetattr(self.fd, termios.TCSADRAIN, self._saved)
            self._saved = None

    def poll(self) -> None:
        """Take in every key pressed since the last poll."""
        data = b""
        while select.select([self.fd], [], [], 0)[0]:
            chunk = os.read(self.fd, 1024)
            if not chunk:
                break
            data += chunk
        now = time.monotonic()
        for key in parse_keys(data.decode(errors="ignore")):
            if key in EVENT_KEYS:
                self._events.append(EVENT_KEYS[key])
            elif key == GRIPPER_KEY:
                self.gripper_closed = not self.gripper_closed
            elif key in (ARM_KEYS if self.arm else VELOCITY_KEYS):
                self._pressed[key] = now
                if not self.arm:
                    component, sign = VELOCITY_KEYS[key]
                    self.velocity[component] += sign * VELOCITY_STEP[component]
        self.velocity = np.clip(self.velocity, self.velocity_low, self.velocity_high)

    def reset(self) -> None:
        self.gripper_closed = False
        self.velocity[:] = 0.0
        self._pressed.clear()

    def events(self) -> list[str]:
        self.poll()
        events, self._events = self._events, []
        return events

    def get_action(self, env: Any) -> np.ndarray:
        if not self.arm:
            raise TeleopError(f"task {env.task.name!r}: the keyboard sets a velocity command, not actions")
        self.poll()
        now = time.monotonic()
        action = np.zeros(self.action_dim, dtype=np.float32)
        for key, pressed in self._pressed.items():
            if now - pressed <= HOLD_S:
                component, sign = ARM_KEYS[key]
                action[component] += sign * self.speed
        if self.has_gripper:
            action[-1] = 1.0 if self.gripper_closed else -1.0
        return action

    def apply_command(self, env: Any) -> None:
        """Write the keyboard's velocity command into the env's task command (all envs)."""
        self.poll()
        env.command[:] = env.command.new_tensor(self.velocity)

    def status(self) -> str:
        if self.arm:
            return f"gripper {'closed' if self.gripper_closed else 'open'}"
        return "vx {:+.1f} vy {:+.1f} yaw {:+.1f}".format(*self.velocity)


# ------------------------------------------------------------------------------------------ scripted


class ScriptedTeleop(Teleoperator):
    """The task's scripted expert as the operator: demonstrations without a human, as fast as the CPU runs.
    It asks for a new episode whenever none is recording; the env's success decides the outcome."""

    realtime = False

    def __init__(self, env: Any, noise: float = 0.0, seed: int = 0):
        from robostack import registry

        try:
            entry = registry.get("expert", env.task.name)
        except KeyError as exc:
            raise TeleopError(f"--device scripted: {exc.args[0]}") from None
        if not noise >= 0.0:
            raise TeleopError(f"expert noise must be >= 0, got {noise}")
        self.expert = entry.target(env)
        self.noise, self.rng = float(noise), np.random.default_rng(seed)
        self.moving = env.action_dim - (env.task.action.gripper is not None)  # noise on motion, not the gripper

    def get_action(self, env: Any) -> np.ndarray:
        return self.expert.act(env)[0].cpu().numpy()

    def executed(self, action: np.ndarray) -> np.ndarray:
        """With ``noise``, the expert's action plus Gaussian noise of that standard deviation on its motion
        components: the env drifts off the expert's path and the expert's corrections are recorded (DART,
        Laskey et al. 2017), so the policy learns to recover from the errors it will make."""
        if not self.noise:
            return action
        noisy = np.array(action, dtype=np.float32)
        noisy[:self.moving] += self.rng.normal(0.0, self.noise, self.moving).astype(np.float32)
        return np.clip(noisy, -1.0, 1.0)

    def events(self) -> list[str]:
        return ["start"]

    def status(self) -> str:
        return "scripted"


# ------------------------------------------------------------------------------------------ arm devices

DEFAULT_SPEED = 0.5  # normalized action at full deflection, as a held key (0.5 m/s, 1.25 rad/s on panda-lift)
MAX_READS_PER_POLL = 100  # a poll takes in what waits, but a flooding device cannot stall the control loop


def apply_deadzone(values: Any, deadzone: float) -> np.ndarray:
    """``values`` clipped to [-1, 1] with the band ``|v| < deadzone`` set to zero and the rest rescaled so
    that full deflection still gives ±1 (no jump at the band's edge): a centred stick or an untouched cap
    never drifts the arm. Non-finite values read as zero."""
    v = np.clip(np.nan_to_num(np.asarray(values, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0), -1.0, 1.0)
    return np.sign(v) * np.maximum(np.abs(v) - deadzone, 0.0) / (1.0 - deadzone)


class ArmTeleop(Teleoperator):
    """A device that moves an end-effector arm task's TCP: ``motion`` (x, y, z, rx, ry, rz, each in [-1, 1],
    task frame: x forward, y left, z up) scaled by ``speed``, plus a gripper it toggles (+1 closed, -1 open,
    the last action component of panda-lift and panda-insert). Subclasses read their input in ``poll``."""

    def __init__(self, env: Any, speed: float = DEFAULT_SPEED):
        if env.task.action.ik is None:
            raise TeleopError(f"task {env.task.name!r}: {type(self).__name__} moves an end effector; use an "
                              "end-effector arm task (panda-reach, panda-lift, panda-insert)")
        self.speed = speed
        self.action_dim = env.action_dim
        self.has_gripper = env.task.action.gripper is not None
        self.gripper_closed = False
        self.motion = np.zeros(6)
        self._events: list[str] = []

    def poll(self) -> None:
        """Take in the device's input since the last poll (``motion``, gripper, events)."""
        raise NotImplementedError

    def toggle_gripper(self) -> None:
        self.gripper_closed = not self.gripper_closed

    def reset(self) -> None:
        self.gripper_closed = False  # the env's reset opens the fingers

    def events(self) -> list[str]:
        self.poll()
        events, self._events = self._events, []
        return events

    def get_action(self, env: Any) -> np.ndarray:
        self.poll()
        action = np.zeros(self.action_dim, dtype=np.float32)
        action[:6] = self.speed * self.motion
        if self.has_gripper:
            action[-1] = 1.0 if self.gripper_closed else -1.0
        return action

    def status(self) -> str:
        return f"gripper {'closed' if self.gripper_closed else 'open'}"


# ------------------------------------------------------------------------------------------ gamepads


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


# An Xbox-style pad as SDL numbers it on Linux (the xpad driver; pygame and the ROS joy_node alike): axis 0/1
# left stick x/y, 2 left trigger, 3/4 right stick x/y, 5 right trigger; buttons 0 A, 1 B, 2 X, 3 Y, 4 LB,
# 5 RB, 6 Back, 7 Start. Left stick: x (up) and y (left); right stick: z (up/down) and yaw (left/right).
XBOX_AXES = (1, 0, 4, 3)
XBOX_GRIPPER_BUTTON = 0  # A toggles the gripper
XBOX_EVENT_BUTTONS = ((7, "start"), (3, "success"), (2, "stop"), (1, "discard"), (6, "quit"))
GAMEPAD_MAPPING = PadMapping(XBOX_AXES, False, XBOX_GRIPPER_BUTTON, XBOX_EVENT_BUTTONS)
JOY_MAPPING = PadMapping(XBOX_AXES, True, XBOX_GRIPPER_BUTTON, XBOX_EVENT_BUTTONS)
PAD_HELP = ("left stick x/y, right stick up/down z, left/right yaw, A gripper | Start start, Y success, "
            "X stop, B discard, Back quit")
PAD_DEADZONE = 0.1
JOY_QUEUE_DEPTH = 100  # Joy messages kept while the loop is busy: 5 s of the driver's 20 Hz, no press is lost


def pad_motion(axes: Mapping[int, float], mapping: PadMapping, deadzone: float = PAD_DEADZONE) -> np.ndarray:
    """The TCP motion (x, y, z, rx, ry, rz in [-1, 1]) a pad's sticks ask for; ``axes`` maps an axis index to
    its latest value, and an axis it lacks counts as centred. One mapping for pygame and for ROS Joy."""
    sign = 1.0 if mapping.up_left_positive else -1.0
    motion = np.zeros(6)
    motion[[0, 1, 2, 5]] = sign * apply_deadzone([axes.get(axis, 0.0) for axis in mapping.axes], deadzone)
    return motion


class PadTeleop(ArmTeleop):
    """A gamepad, whatever carries its input: the latest axis values and each button press, mapped by
    ``mapping``. Subclasses fill ``axes`` and call ``press`` in ``read_input``."""

    help = PAD_HELP

    def __init__(self, env: Any, mapping: PadMapping, speed: float = DEFAULT_SPEED,
                 deadzone: float = PAD_DEADZONE):
        super().__init__(env, speed)
        self.mapping, self.deadzone = mapping, deadzone
        self.axes: dict[int, float] = {}  # axis index -> latest value

    def press(self, button: int) -> None:
        """A button went down."""
        if button == self.mapping.gripper_button:
            self.toggle_gripper()
        for event_button, event in self.mapping.event_buttons:
            if button == event_button:
                self._events.append(event)

    def read_input(self) -> None:
        """Take in the axis values and button presses that arrived since the last call."""
        raise NotImplementedError

    def poll(self) -> None:
        self.read_input()
        self.motion = pad_motion(self.axes, self.mapping, self.deadzone)


def _import_pygame() -> Any:
    """pygame, quietly, for its event queue only: SDL's dummy video driver (no window is ever opened) and
    no SDL signal handlers (Ctrl-C stays a KeyboardInterrupt)."""
    os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")  # its greeting would go to stdout
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    os.environ.setdefault("SDL_NO_SIGNAL_HANDLERS", "1")
    try:
        import pygame
    except ImportError:
        raise TeleopError("--device gamepad needs pygame: pip install pygame (or pip install 'robostack[teleop]')"
                          ) from None
    return pygame


class GamepadTeleop(PadTeleop):
    """A gamepad through SDL (pygame), read from pygame's event queue: axis motion, button presses, and pads
    plugged in or out (unplugging the pad stops the arm).

    ``open_joystick=False`` opens no physical pad: the device then follows whatever joystick events reach
    the queue (``pygame.event.post`` in tests, or a pad another part of the program opened)."""

    def __init__(self, env: Any, mapping: PadMapping = GAMEPAD_MAPPING, speed: float = DEFAULT_SPEED,
                 deadzone: float = PAD_DEADZONE, open_joystick: bool = True):
        super().__init__(env, mapping, speed, deadzone)
        self.open_joystick = open_joystick
        self.joystick: Any = None
        self._pygame: Any = None
        self._started_display = False

    def connect(self) -> None:
        pygame = self._pygame = _import_pygame()
        self._started_display = not pygame.display.get_init()
        try:
            pygame.display.init()  # pygame's event queue lives in SDL's video subsystem
            pygame.joystick.init()
        except pygame.error as exc:
            self.disconnect()
            raise TeleopError(f"--device gamepad: SDL cannot start ({exc})") from None
        if self.open_joystick:
            if pygame.joystick.get_count() == 0:
                self.disconnect()
                raise TeleopError("--device gamepad: no gamepad found (SDL sees no joystick); plug one in, and "
                                  "on Linux check that this user may read /dev/input/event*")
            self.joystick = pygame.joystick.Joystick(0)

    def disconnect(self) -> None:
        if self._pygame is None:
            return
        if self.joystick is not None:
            self.joystick.quit()
            self.joystick = None
        self._pygame.joystick.quit()
        if self._started_display:
            self._pygame.display.quit()
        self._pygame = None

    def read_input(self) -> None:
        pygame = self._pygame
        for event in pygame.event.get():  # all of them: the ones not used here (button releases) must not pile up
            if event.type == pygame.JOYAXISMOTION:
                self.axes[event.axis] = event.value
            elif event.type == pygame.JOYBUTTONDOWN:
                self.press(event.button)
            elif event.type == pygame.JOYDEVICEADDED and self.open_joystick and self.joystick is None:
                self.joystick = pygame.joystick.Joystick(event.device_index)
            elif (event.type == pygame.JOYDEVICEREMOVED and self.joystick is not None
                  and event.instance_id == self.joystick.get_instance_id()):
                self.joystick = None
                self.axes.clear()  # a pad unplugged with a stick held must not keep the arm moving

    def status(self) -> str:
        if self.open_joystick and self.joystick is None:
            return "no gamepad (plug one in)"
        return super().status()


class JoyTeleop(PadTeleop):
    """A gamepad through ROS 2: ``sensor_msgs/Joy`` on ``topic`` from the joy driver (``ros2 run joy
    joy_node``), taken in by a non-blocking ``spin_once`` at every poll. A button press is a button that
    is down in a message and was up in the one before.

    Input older than ``input_timeout_s`` stops the arm: the driver died or was unplugged, perhaps with a
    stick held (the joy driver repeats its last message at 20 Hz by default, so a held stick stays fresh)."""

    def __init__(self, env: Any, topic: str = "joy", mapping: PadMapping = JOY_MAPPING,
                 speed: float = DEFAULT_SPEED, deadzone: float = PAD_DEADZONE, input_timeout_s: float = 0.5):
        super().__init__(env, mapping, speed, deadzone)
        self.topic, self.input_timeout_s = topic, input_timeout_s
        self.received = 0  # Joy messages taken in
        self._buttons: list[int] = []  # the previous message's buttons
        self._last_message = -math.inf  # when (monotonic) the latest Joy arrived
        self._context: Any = None
        self._node: Any = None
        self._executor: Any = None

    def connect(self) -> None:
        try:
            import rclpy
            from rclpy.executors import SingleThreadedExecutor
            from sensor_msgs.msg import Joy
        except ImportError as exc:
            raise TeleopError(f"--device joy needs ROS 2's rclpy and sensor_msgs ({exc}); scripts/setup.sh "
                              "installs their Jazzy wheels") from None
        self._context = rclpy.Context()
        rclpy.init(context=self._context, args=[])
        self._node = rclpy.create_node("robostack_teleop", context=self._context)
        self._node.create_subscription(Joy, self.topic, self._take, JOY_QUEUE_DEPTH)
        self._executor = SingleThreadedExecutor(context=self._context)
        self._executor.add_node(self._node)
        self.poll()

    def disconnect(self) -> None:
        if self._context is None:
            return
        self._executor.shutdown()
        self._node.destroy_node()
        self._context.try_shutdown()
        self._context = self._node = self._executor = None

    def _take(self, msg: Any) -> None:
        self.received += 1
        self._last_message = time.monotonic()
        self.axes = dict(enumerate(msg.axes))
        for button, down in enumerate(msg.buttons):
            if down and not (button < len(self._buttons) and self._buttons[button]):
                self.press(button)
        self._buttons = list(msg.buttons)

    def read_input(self) -> None:
        for _ in range(MAX_READS_PER_POLL):  # every message that waits (each carries button edges), never blocking
            before = self.received
            self._executor.spin_once(timeout_sec=0)
            if self.received == before:
                break
        if time.monotonic() - self._last_message > self.input_timeout_s:
            self.axes.clear()

    def status(self) -> str:
        if self.received == 0:
            return f"waiting for sensor_msgs/Joy on {self._topic_name()}"
        if time.monotonic() - self._last_message > self.input_timeout_s:
            return f"no Joy on {self._topic_name()} for {time.monotonic() - self._last_message:.1f} s (stopped)"
        return super().status()

    def _topic_name(self) -> str:
        return self._node.resolve_topic_name(self.topic) if self._node is not None else self.topic


# ------------------------------------------------------------------------------------------ SpaceMouse

SPACEMOUSE_VENDOR = 0x256F  # 3Dconnexion: every product is a 6-DoF device
LOGITECH_VENDOR = 0x046D  # older SpaceMice carry Logitech's vendor id; these are their product ids
LOGITECH_SPACEMOUSE_PRODUCTS = frozenset({0xC603, 0xC605, 0xC606, 0xC621, 0xC623, 0xC625, 0xC626, 0xC627, 0xC628,
                                          0xC629, 0xC62B, 0xC640})
SPACEMOUSE_FULL_SCALE = 350.0  # counts at full deflection (the cap reports about ±350)
SPACEMOUSE_DEADZONE = 0.1
# HID axes 0-2: translation x (right), y (toward the user), z (down); 3-5: rotation about them. The
# operator stands behind the robot, facing +x. Action component i <- sign * HID axis: x forward = -y,
# y left = -x, z up = -z, and the same turn for rotations (rx = -ry, ry = -rx, yaw counter-clockwise = -rz).
SPACEMOUSE_AXES = ((1, -1.0), (0, -1.0), (2, -1.0), (4, -1.0), (3, -1.0), (5, -1.0))
SPACEMOUSE_LEFT, SPACEMOUSE_RIGHT = 0b01, 0b10  # bits of the buttons report
SPACEMOUSE_HELP = ("push/pull/lift and tilt/twist the cap to move and turn the TCP | left button gripper, "
                   "right button start (idle) or success (recording), both buttons discard (recording) or quit "
                   "(idle)")


class SpaceMouseReport(NamedTuple):
    """What one HID report of a SpaceMouse says; a field is None when the report does not carry it."""

    translation: np.ndarray | None  # raw counts x, y, z (int16)
    rotation: np.ndarray | None  # raw counts rx, ry, rz
    buttons: int | None  # bitmask, bit 0 the left button


def parse_spacemouse_report(report: bytes | Sequence[int]) -> SpaceMouseReport:
    """Parse one HID input report: id 1 is the translation (three little-endian int16), or all six axes in 12
    bytes on newer devices; id 2 the rotation; id 3 the buttons (a little-endian bitmask). Anything else
    (battery level, a short report) carries nothing for us."""
    data = bytes(report)
    report_id, payload = (data[0], data[1:]) if data else (None, b"")
    if report_id == 1 and len(payload) >= 12:
        axes = np.frombuffer(payload[:12], dtype="<i2").astype(np.float64)
        return SpaceMouseReport(axes[:3], axes[3:], None)
    if report_id in (1, 2) and len(payload) >= 6:
        axes = np.frombuffer(payload[:6], dtype="<i2").astype(np.float64)
        return SpaceMouseReport(axes, None, None) if report_id == 1 else SpaceMouseReport(None, axes, None)
    if report_id == 3 and payload:
        return SpaceMouseReport(None, None, int.from_bytes(payload, "little"))
    return SpaceMouseReport(None, None, None)


def spacemouse_motion(counts: np.ndarray, deadzone: float = SPACEMOUSE_DEADZONE) -> np.ndarray:
    """The TCP motion (x, y, z, rx, ry, rz in [-1, 1], task frame) for the cap's raw counts (HID x, y, z, rx,
    ry, rz), by ``SPACEMOUSE_AXES``."""
    normalized = apply_deadzone(np.asarray(counts, dtype=np.float64) / SPACEMOUSE_FULL_SCALE, deadzone)
    return np.array([sign * normalized[axis] for axis, sign in SPACEMOUSE_AXES])


def is_spacemouse(vendor_id: int, product_id: int) -> bool:
    return vendor_id == SPACEMOUSE_VENDOR or (vendor_id == LOGITECH_VENDOR
                                              and product_id in LOGITECH_SPACEMOUSE_PRODUCTS)


def open_spacemouse() -> Any:
    """The first SpaceMouse hidapi sees (its multi-axis controller interface), open for non-blocking reads."""
    try:
        import hid
    except ImportError:
        raise TeleopError("--device spacemouse needs the hidapi package: pip install hidapi (or pip install "
                          "'robostack[teleop]')") from None
    if not hasattr(hid, "device"):
        raise TeleopError(f"--device spacemouse: the 'hid' module at {hid.__file__} is not hidapi's "
                          "(pip uninstall hid, then pip install hidapi)")
    found = [info for info in hid.enumerate() if is_spacemouse(info["vendor_id"], info["product_id"])]
    if not found:
        raise TeleopError("--device spacemouse: no 3Dconnexion SpaceMouse found (HID vendor 0x256F, or a Logitech "
                          "0x046D SpaceMouse); plug one in, and on Linux check that this user may read its "
                          "/dev/hidraw* node (a udev rule)")
    found.sort(key=lambda info: (info.get("usage_page"), info.get("usage")) != (0x01, 0x08))  # multi-axis first
    device = hid.device()
    try:
        device.open_path(found[0]["path"])
    except OSError as exc:
        name = found[0].get("product_string") or "the SpaceMouse"
        raise TeleopError(f"--device spacemouse: cannot open {name} ({exc}); on Linux this user needs read "
                          "access to its /dev/hidraw* node (a udev rule)") from None
    device.set_nonblocking(1)
    return device


class SpaceMouseTeleop(ArmTeleop):
    """A 3Dconnexion SpaceMouse over HID (hidapi): six axes move and turn the TCP.

    It has two buttons, so a button acts when every button is up again, by what was pressed: the left alone
    toggles the gripper; the right alone starts an episode, or ends the one recording as a success; both
    together discard the one recording, or quit when none is.

    ``device``: an HID device already open, anything with hidapi's ``read(size)`` (a report's bytes, empty
    when none waits) and ``close()``; the caller keeps it. None: ``connect`` finds and opens a SpaceMouse."""

    help = SPACEMOUSE_HELP

    def __init__(self, env: Any, device: Any = None, speed: float = DEFAULT_SPEED,
                 deadzone: float = SPACEMOUSE_DEADZONE):
        super().__init__(env, speed)
        self.device = device
        self.deadzone = deadzone
        self.counts = np.zeros(6)  # the latest raw counts, HID x, y, z, rx, ry, rz
        self._own_device = device is None
        self._pressed = 0  # every button pressed since all were last up

    def connect(self) -> None:
        if self.device is None:
            self.device = open_spacemouse()

    def disconnect(self) -> None:
        if self._own_device and self.device is not None:
            self.device.close()
            self.device = None

    def poll(self) -> None:
        for _ in range(MAX_READS_PER_POLL):  # every report that waits, never blocking
            try:
                report = self.device.read(64)
            except OSError as exc:
                raise TeleopError(f"--device spacemouse: reading the SpaceMouse failed ({exc}); was it "
                                  "unplugged?") from None
            if not report:
                break
            parsed = parse_spacemouse_report(report)
            if parsed.translation is not None:
                self.counts[:3] = parsed.translation
            if parsed.rotation is not None:
                self.counts[3:] = parsed.rotation
            if parsed.buttons is not None:
                self._take_buttons(parsed.buttons)
        self.motion = spacemouse_motion(self.counts, self.deadzone)

    def _take_buttons(self, held: int) -> None:
        self._pressed |= held & (SPACEMOUSE_LEFT | SPACEMOUSE_RIGHT)
        if held or not self._pressed:
            return
        clicked, self._pressed = self._pressed, 0
        if clicked == SPACEMOUSE_LEFT:
            self.toggle_gripper()
        elif clicked == SPACEMOUSE_RIGHT:
            self._events.append("success" if self.recording else "start")
        else:
            self._events.append("discard" if self.recording else "quit")


DEVICES: dict[str, Callable[[Any], Teleoperator]] = {
    "keyboard": KeyboardTeleop, "gamepad": GamepadTeleop, "joy": JoyTeleop, "spacemouse": SpaceMouseTeleop,
    "scripted": ScriptedTeleop}


# ------------------------------------------------------------------------------------------ recording


class _Recorder:
    """Frames of the episode in progress, and the dataset they go to."""

    def __init__(self, env: Any, out: str, camera: str | None):
        from robostack import registry
        from robostack.config import to_dict
        from robostack.dataset import DatasetWriter, SimFrameReader, sim_features

        self.env, self.camera = env, camera
        self.frame_reader = SimFrameReader(env)
        features = sim_features(env)
        features[TELEOP_ACTION] = {"dtype": "float32", "shape": [env.action_dim], "names": None}
        self.renderer = None
        if camera is not None:
            self.renderer = _renderer(env, camera, 160, 120, "--camera")
            features[f"observation.images.{camera}"] = {"dtype": "video", "shape": [120, 160, 3]}
        entry = registry.get("task", env.task.name)
        self.task_text = entry.summary  # each episode's task, in words
        self.writer = DatasetWriter(out, round(1.0 / env.control_dt), features, entry.extra.get("robot"),
                                    sim_task=env.task.name,
                                    sim_task_config=to_dict(env.task_cfg))
        self.frames: dict[str, list] | None = None
        self.kept = self.discarded = self.successes = self.total_frames = 0

    @property
    def recording(self) -> bool:
        return self.frames is not None

    def start(self) -> None:
        self.env.reset()
        self.frames = {}

    def step(self, action: np.ndarray, executed: np.ndarray | None = None) -> dict[str, Any]:
        """Step the env with ``executed`` (default: ``action``), recording the frame with ``action`` as the
        operator's; the step's info."""
        import torch

        env = self.env
        frame = {key: value[0] for key, value in self.frame_reader.read().items()}
        if self.renderer is not None:
            self.renderer.update_scene(env.sim.data_for(0), camera=self.camera)
            frame["image"] = self.renderer.render()
        sent = action if executed is None else executed
        _, reward, _, _, info = env.step(torch.as_tensor(sent, dtype=torch.float32).unsqueeze(0))
        frame.update({"action": env.ctrl[0].cpu().numpy(), TELEOP_ACTION: action,
                      "next.reward": float(reward[0]), "next.done": bool(info["done"][0])})
        for key, value in frame.items():
            self.frames.setdefault(key, []).append(value)
        return info

    def keep(self, success: bool | None) -> None:
        frames = {key: np.asarray(values) for key, values in self.frames.items()}
        images = None
        if "image" in frames:
            images = {f"observation.images.{self.camera}": frames.pop("image")}
        self.writer.add_episode(frames, self.task_text, images=images, success=success, source="teleop")
        self.kept += 1
        self.successes += bool(success)
        self.total_frames += len(frames["action"])
        self.frames = None

    def discard(self) -> None:
        if self.frames is not None:
            self.discarded += 1
        self.frames = None

    def close(self) -> None:
        if self.renderer is not None:
            self.renderer.close()


def _renderer(env: Any, camera: str, width: int, height: int, option: str) -> Any:
    from robostack.eval_policy import camera_renderer

    try:
        return camera_renderer(env.sim.models[0], camera, width, height, f"{option}: task {env.task.name!r}")
    except ValueError as exc:
        raise TeleopError(str(exc)) from None


# ------------------------------------------------------------------------------------------ live view

VIEWS = ("none", "viewer", "frames")
VIEW_CAMERA = "scene"
VIEW_SIZE = (480, 360)  # width, height of the frames
VIEW_PERIOD_S = 0.2  # frames about 5 times a second: enough to steer by, cheap for a software renderer
VIEWER_START_TIMEOUT_S = 20.0
VIEWER_CLOSE_TIMEOUT_S = 5.0


def has_display() -> bool:
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def choose_view(requested: str | None, device: str) -> str:
    """The live view for ``--view``: ``auto`` is MuJoCo's viewer where there is a display, else frames; no
    choice means ``auto`` for a human's device (they steer by what they see) and ``none`` for scripted."""
    if requested is None:
        requested = "auto" if getattr(DEVICES.get(device), "realtime", True) else "none"
    if requested == "auto":
        return "viewer" if has_display() else "frames"
    if requested not in VIEWS:
        raise TeleopError(f"unknown view {requested!r}; views are auto, {', '.join(VIEWS)}")
    return requested


def default_view_path(out: str | os.PathLike) -> Path:
    """``<out>.live.png``: beside the dataset, not inside it (a dataset folder holds only its own files)."""
    return Path(f"{Path(out)}.live.png")


class _FramesView:
    """The scene camera, rendered offscreen every ``VIEW_PERIOD_S``, written to a PNG by a temporary file and
    a rename: a reader never sees half an image."""

    is_open = True

    def __init__(self, env: Any, path: Path):
        from robostack.eval_policy import RenderError

        self.path = path
        self._partial = path.with_name(f".{path.name}")  # ends in .png: cv2 picks the format by the name
        try:
            self.renderer = _renderer(env, VIEW_CAMERA, *VIEW_SIZE, "--view frames")
        except RenderError as exc:
            raise TeleopError(f"--view frames: {exc}; or use --view none") from None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._next_frame = 0.0

    @property
    def description(self) -> str:
        return f"camera {VIEW_CAMERA!r} every {VIEW_PERIOD_S:g} s -> {self.path}"

    def show(self, env: Any) -> None:
        import cv2

        now = time.monotonic()
        if now < self._next_frame:
            return
        self._next_frame = now + VIEW_PERIOD_S
        self.renderer.update_scene(env.sim.data_for(0), camera=VIEW_CAMERA)
        if not cv2.imwrite(str(self._partial), cv2.cvtColor(self.renderer.render(), cv2.COLOR_RGB2BGR)):
            raise TeleopError(f"--view frames: cannot write {self._partial}")
        os.replace(self._partial, self.path)

    def close(self) -> None:
        self.renderer.close()


class _ViewerView:
    """MuJoCo's passive viewer window showing env 0, synced every step; closing the window ends the session."""

    description = "MuJoCo's viewer window (closing it quits; keys go to the terminal for the keyboard)"

    def __init__(self, env: Any):
        import mujoco

        if not has_display():
            raise TeleopError("--view viewer needs a display (DISPLAY or WAYLAND_DISPLAY is not set); use --view "
                              "frames")
        self.model = env.sim.models[0]
        self.data = mujoco.MjData(self.model)
        self._copy_state(env)
        self.viewer, self._gui_threads = _launch_viewer(self.model, self.data)

    @property
    def is_open(self) -> bool:
        return self.viewer.is_running()

    def _copy_state(self, env: Any) -> None:
        import mujoco

        from robostack.sim.mujoco_backend import FULL_STATE

        mujoco.mj_setState(self.model, self.data, env.sim.state[0], FULL_STATE)
        mujoco.mj_forward(self.model, self.data)

    def show(self, env: Any) -> None:
        with self.viewer.lock():
            self._copy_state(env)
        self.viewer.sync()

    def close(self) -> None:
        """Close the window and wait for the viewer's GUI thread: a process that exits while that thread still
        tears the window down can crash or hang (seen with Xvfb)."""
        self.viewer.close()
        deadline = time.monotonic() + VIEWER_CLOSE_TIMEOUT_S
        for thread in self._gui_threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))


def _launch_viewer(model: Any, data: Any) -> tuple[Any, list[threading.Thread]]:
    """``mujoco.viewer.launch_passive`` and the threads it started, or TeleopError. It waits forever for a
    window that its GUI thread failed to open (no usable OpenGL), so it runs on a thread of its own, with a
    time limit."""
    outcome: queue.Queue = queue.Queue(1)

    def launch() -> None:
        try:
            import mujoco.viewer

            outcome.put(mujoco.viewer.launch_passive(model, data, show_left_ui=False, show_right_ui=False))
        except Exception as exc:  # noqa: BLE001 - reported below, in one line
            outcome.put(exc)

    before = set(threading.enumerate())
    launcher = threading.Thread(target=launch, daemon=True)
    launcher.start()
    try:
        result = outcome.get(timeout=VIEWER_START_TIMEOUT_S)
    except queue.Empty:
        raise TeleopError(f"--view viewer: MuJoCo's viewer did not open in {VIEWER_START_TIMEOUT_S:g} s (no usable "
                          "OpenGL on this display?); use --view frames") from None
    if isinstance(result, Exception):
        raise TeleopError(f"--view viewer: MuJoCo's viewer cannot open here ({result}); use --view frames")
    return result, [t for t in threading.enumerate() if t not in before and t is not launcher]


# ------------------------------------------------------------------------------------------ session


def record(task: str, device: str, out: str, episodes: int | None = None, seed: int = 0,
           max_seconds: float | None = None, camera: str | None = None, randomized: bool = False,
           view: str = "none", view_path: str | os.PathLike | None = None, status: TextIO = sys.stderr,
           expert_noise: float = 0.0) -> dict:
    """Teleoperate ``task`` with ``device`` and write the kept episodes to the dataset ``out``; the session's
    summary. Ends after ``episodes`` kept episodes (a human's device default: until quit; scripted: 1), on
    ``quit``, or after ``max_seconds`` of wall time (an unfinished episode is dropped). The task runs its play
    variant unless ``randomized`` (demonstrations under the domain randomization a policy will be evaluated
    in). ``expert_noise`` (scripted only): the standard deviation of the noise ``ScriptedTeleop`` adds to the
    actions it executes, not to those it records. ``view`` (``VIEWS``; ``choose_view`` resolves ``--view
    auto``) shows the operator the scene; frames go to ``view_path`` (default ``<out>.live.png``)."""
    if device not in DEVICES:
        raise TeleopError(f"unknown device {device!r}; known devices: {', '.join(DEVICES)}")
    if view not in VIEWS:
        raise TeleopError(f"unknown view {view!r}; views are {', '.join(VIEWS)}")
    frames_path = (Path(view_path) if view_path is not None else default_view_path(out)) if view == "frames" else None
    if camera is not None or view == "frames":
        from robostack.eval_policy import ensure_offscreen_gl

        ensure_offscreen_gl()  # before MuJoCo is imported, if it has not been yet
    from robostack import sim

    env = sim.make_env(task, num_envs=1, seed=seed, play=not randomized)
    try:
        if env.task.action.ik is None and device != "scripted":
            raise TeleopError(
                f"task {task!r}: the {device} moves an end effector or sets a task command, and turning either into "
                "this task's actuator actions needs a policy, which teleop does not run yet; teleoperate an "
                "end-effector arm task (panda-reach, panda-lift, panda-insert) or use --device scripted where the "
                "task has a scripted expert")
        if expert_noise and device != "scripted":
            raise TeleopError(f"--expert-noise perturbs the scripted expert; the {device} is a human's device")
        teleop = ScriptedTeleop(env, expert_noise, seed) if device == "scripted" else DEVICES[device](env)
        episodes = episodes if episodes is not None or device != "scripted" else 1
        with contextlib.ExitStack() as stack:  # device, then view, then dataset: what cannot open writes nothing
            stack.enter_context(teleop)
            live = _FramesView(env, frames_path) if view == "frames" else _ViewerView(env) if view == "viewer" else None
            if live is not None:
                stack.callback(live.close)
            recorder = _Recorder(env, out, camera)
            stack.callback(recorder.close)
            stack.callback(recorder.discard)
            reason = _run(env, teleop, recorder, episodes, max_seconds, status, live)
    finally:
        env.close()
    return {"task": task, "device": device, "out": str(out), "ended_by": reason, "kept": recorder.kept,
            "discarded": recorder.discarded, "successes": recorder.successes, "frames": recorder.total_frames,
            "dataset_episodes": recorder.writer.num_episodes, "view": view,
            "view_path": None if frames_path is None else str(frames_path)}


def _run(env: Any, teleop: Teleoperator, recorder: _Recorder, episodes: int | None, max_seconds: float | None,
         status: TextIO, live: _FramesView | _ViewerView | None) -> str:
    """The session loop; what ended it: ``episodes``, ``quit`` (also: the viewer window was closed) or
    ``max_seconds``."""
    deadline = None if max_seconds is None else time.monotonic() + max_seconds
    next_status = 0.0
    if teleop.realtime:
        status.write(f"teleop {env.task.name}: {teleop.help}\n")
    if live is not None:
        status.write(f"live view: {live.description}\n")
    try:
        tick = time.monotonic()
        while episodes is None or recorder.kept < episodes:
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return "max_seconds"
            teleop.recording = recorder.recording
            if _handle(teleop.events(), recorder, teleop):
                return "quit"
            if recorder.recording:
                action = teleop.get_action(env)
                info = recorder.step(action, teleop.executed(action))
                if recorder.recording and bool(info["done"][0]):
                    recorder.keep(bool(info["episode"]["success"][0]))
            if live is not None:
                if not live.is_open:
                    return "quit"
                live.show(env)
            if now >= next_status:
                _show_status(status, recorder, teleop)
                next_status = now + STATUS_PERIOD_S
            if teleop.realtime:  # a late step does not make the next ones hurry
                tick = max(tick + env.control_dt, time.monotonic())
                time.sleep(max(0.0, tick - time.monotonic()))
        return "episodes"
    finally:
        status.write("\n")


def _handle(events: list[str], recorder: _Recorder, teleop: Teleoperator) -> bool:
    """Apply the device's events in order; whether one of them was ``quit``."""
    for event in events:
        if event not in EVENTS:
            raise TeleopError(f"device {type(teleop).__name__} sent event {event!r}; events are {EVENTS}")
        if event == "quit":
            return True
        if event == "start" and not recorder.recording:
            recorder.start()
            teleop.reset()
        elif event in ("stop", "success") and recorder.recording:
            success = True if event == "success" else bool(recorder.env.task.success(recorder.env)[0])
            recorder.keep(success)
        elif event == "discard":
            recorder.discard()
    return False


def _show_status(status: TextIO, recorder: _Recorder, teleop: Teleoperator) -> None:
    state = f"recording {len(recorder.frames.get('action', []))} frames" if recorder.recording else "idle"
    status.write(f"\r[{state}] kept {recorder.kept} discarded {recorder.discarded} | {teleop.status()}\x1b[K")
    status.flush()
