"""Teleop devices in LeRobot's shape: a ``Teleoperator`` is ``connect()``, ``get_action(env)`` (an action in the
task's normalized action space, [-1, 1]), ``events()`` (the episode events the operator asked for since the last
call: ``start``, ``stop``, ``success``, ``discard``, ``quit``) and ``disconnect()``. ``DEVICES`` maps ``robostack
teleop --device`` names to them: ``keyboard`` (a terminal), ``gamepad`` (SDL through pygame), ``joy`` (ROS 2
``sensor_msgs/Joy`` from the joy driver), ``spacemouse`` (``robostack.teleop.spacemouse``) and ``scripted`` (the
task's scripted expert). The gamepad, joy and SpaceMouse devices move an end-effector arm; their pad mappings are
``robostack.teleop.mapping``'s.
"""
from __future__ import annotations

import math
import os
import select
import sys
import termios
import time
import tty
from typing import Any

import numpy as np

from robostack import sim
from robostack.teleop.mapping import GAMEPAD_MAPPING, JOY_MAPPING, PAD_DEADZONE, PAD_HELP, PadMapping, pad_motion

EVENTS = ("start", "stop", "success", "discard", "quit")


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
        expert = sim.task(env.task.name).expert
        if expert is None:
            raise TeleopError(f"--device scripted: task {env.task.name!r} has no scripted expert")
        if not noise >= 0.0:
            raise TeleopError(f"expert noise must be >= 0, got {noise}")
        self.expert = expert(env)
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


JOY_QUEUE_DEPTH = 100  # Joy messages kept while the loop is busy: 5 s of the driver's 20 Hz, no press is lost


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

