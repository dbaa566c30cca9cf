"""Teleoperation in simulation, recorded as RoboStack datasets (``robostack teleop``).

A ``Teleoperator`` is the input device, in LeRobot's shape: ``connect()``, ``get_action(env)`` (an action in
the task's normalized action space, [-1, 1]), ``events()`` (the episode events the operator asked for since
the last call: ``start``, ``stop``, ``success``, ``discard``, ``quit``) and ``disconnect()``. ``DEVICES`` maps
``--device`` names to them; a gamepad or a SpaceMouse is one more entry there.

``record`` runs one env with a device and writes every kept episode with ``source="teleop"``:

* ``start`` resets the env and begins recording; it is ignored while recording.
* ``success`` keeps the episode with success true; ``stop`` keeps it with the task's own success check at
  that moment; ``discard`` drops it; ``quit`` drops an unfinished episode and ends the session.
* The env ending the episode itself (success when the task terminates on it, the object dropped, time
  out) keeps it with the env's success flag.

Each frame holds the state before the step, the actuator controls the step applied (``action``, what
``replay`` re-executes), the task command, and the device's normalized action (``teleop.action``).
"""
from __future__ import annotations

import os
import select
import sys
import termios
import time
import tty
from collections.abc import Callable
from typing import Any, TextIO

import numpy as np

EVENTS = ("start", "stop", "success", "discard", "quit")
TELEOP_ACTION = "teleop.action"
STATUS_PERIOD_S = 0.1


class TeleopError(ValueError):
    """A device, task or terminal that teleoperation cannot work with (the message says which and why)."""


class Teleoperator:
    """An input device that drives one simulated env."""

    realtime = True  # the session paces steps to the env's control rate (a human is watching)

    def connect(self) -> None:
        """Take hold of the device."""

    def reset(self) -> None:
        """A new episode starts (the env was just reset)."""

    def get_action(self, env: Any) -> np.ndarray:
        """The action for env 0's current state, in the task's normalized action space."""
        raise NotImplementedError

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

    def __init__(self, env: Any):
        from robostack import registry

        try:
            entry = registry.get("expert", env.task.name)
        except KeyError as exc:
            raise TeleopError(f"--device scripted: {exc.args[0]}") from None
        self.expert = entry.target(env)

    def get_action(self, env: Any) -> np.ndarray:
        return self.expert.act(env)[0].cpu().numpy()

    def events(self) -> list[str]:
        return ["start"]

    def status(self) -> str:
        return "scripted"


DEVICES: dict[str, Callable[[Any], Teleoperator]] = {"keyboard": KeyboardTeleop, "scripted": ScriptedTeleop}


# ------------------------------------------------------------------------------------------ session


class _Recorder:
    """Frames of the episode in progress, and the dataset they go to."""

    def __init__(self, env: Any, out: str, camera: str | None):
        from robostack import registry
        from robostack.config import to_dict
        from robostack.dataset import DatasetWriter, sim_features

        self.env, self.camera = env, camera
        features = sim_features(env)
        features[TELEOP_ACTION] = {"dtype": "float32", "shape": [env.action_dim], "names": None}
        self.renderer = None
        if camera is not None:
            self.renderer = _renderer(env, camera)
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

    def step(self, action: np.ndarray) -> dict[str, Any]:
        """Step the env with ``action``, recording the frame; the step's info."""
        import torch

        from robostack.dataset import sim_frame

        env = self.env
        frame = {key: value[0] for key, value in sim_frame(env).items()}
        if self.renderer is not None:
            self.renderer.update_scene(env.sim.data_for(0), camera=self.camera)
            frame["image"] = self.renderer.render()
        _, reward, _, _, info = env.step(torch.as_tensor(action, dtype=torch.float32).unsqueeze(0))
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


def _renderer(env: Any, camera: str) -> Any:
    import mujoco

    from robostack.eval_policy import offscreen_renderer

    model = env.sim.models[0]
    if mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, camera) < 0:
        names = [mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_CAMERA, i) for i in range(model.ncam)]
        raise TeleopError(f"--camera: task {env.task.name!r} has no camera {camera!r}; it has {names}")
    return offscreen_renderer(model, 160, 120)


def record(task: str, device: str, out: str, episodes: int | None = None, seed: int = 0,
           max_seconds: float | None = None, camera: str | None = None, status: TextIO = sys.stderr) -> dict:
    """Teleoperate ``task`` with ``device`` and write the kept episodes to the dataset ``out``; the session's
    summary. Ends after ``episodes`` kept episodes (keyboard default: until quit; scripted: 1), on ``quit``,
    or after ``max_seconds`` of wall time (an unfinished episode is dropped)."""
    if device not in DEVICES:
        raise TeleopError(f"unknown device {device!r}; known devices: {', '.join(DEVICES)}")
    if camera is not None:
        from robostack.eval_policy import ensure_offscreen_gl

        ensure_offscreen_gl()  # before MuJoCo is imported, if it has not been yet
    from robostack import sim

    env = sim.make_env(task, num_envs=1, seed=seed, play=True)
    try:
        if env.task.action.ik is None and device != "scripted":
            raise TeleopError(
                f"task {task!r}: the {device} sets the task command, and turning a command into actuator actions "
                "needs a policy, which teleop does not run yet; teleoperate an end-effector arm task (panda-reach, "
                "panda-lift, panda-insert) or use --device scripted where the task has a scripted expert")
        teleop = DEVICES[device](env)
        episodes = episodes if episodes is not None or device != "scripted" else 1
        recorder = _Recorder(env, out, camera)
        try:
            reason = _run(env, teleop, recorder, episodes, max_seconds, status)
        finally:
            recorder.discard()
            recorder.close()
    finally:
        env.close()
    return {"task": task, "device": device, "out": str(out), "ended_by": reason, "kept": recorder.kept,
            "discarded": recorder.discarded, "successes": recorder.successes, "frames": recorder.total_frames,
            "dataset_episodes": recorder.writer.num_episodes}


def _run(env: Any, teleop: Teleoperator, recorder: _Recorder, episodes: int | None, max_seconds: float | None,
         status: TextIO) -> str:
    """The session loop; what ended it: ``episodes``, ``quit`` or ``max_seconds``."""
    deadline = None if max_seconds is None else time.monotonic() + max_seconds
    next_status = 0.0
    if teleop.realtime:
        status.write(f"teleop {env.task.name}: {KEY_HELP}\n")
    try:
        with teleop:
            tick = time.monotonic()
            while episodes is None or recorder.kept < episodes:
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    return "max_seconds"
                if _handle(teleop.events(), recorder, teleop):
                    return "quit"
                if recorder.recording:
                    info = recorder.step(teleop.get_action(env))
                    if recorder.recording and bool(info["done"][0]):
                        recorder.keep(bool(info["episode"]["success"][0]))
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
