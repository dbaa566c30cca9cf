"""Teleoperation in simulation, recorded as RoboStack datasets (``robostack teleop``).

The device is a ``robostack.teleop`` ``Teleoperator`` (``DEVICES``: keyboard, gamepad, joy, spacemouse,
scripted). ``record`` runs one env with a device and writes every kept episode with ``source="teleop"``:

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

import contextlib
import os
import queue
import sys
import threading
import time
from pathlib import Path
from typing import Any, TextIO

import cv2
import numpy as np
import torch

from robostack import sim
from robostack.config import to_dict
from robostack.data.dataset import DatasetWriter
from robostack.data.features import SimFrameReader, sim_features
from robostack.teleop import DEVICES, EVENTS, Teleoperator, TeleopError
from robostack.teleop.devices import ScriptedTeleop
from robostack.workflows.render import RenderError, camera_renderer, ensure_offscreen_gl

TELEOP_ACTION = "teleop.action"  # the device's normalized action, recorded beside the controls it caused
STATUS_PERIOD_S = 0.1


class _Recorder:
    """Frames of the episode in progress, and the dataset they go to."""

    def __init__(self, env: Any, out: str, camera: str | None):
        self.env, self.camera = env, camera
        self.frame_reader = SimFrameReader(env)
        features = sim_features(env)
        features[TELEOP_ACTION] = {"dtype": "float32", "shape": [env.action_dim], "names": None}
        self.renderer = None
        if camera is not None:
            self.renderer = _renderer(env, camera, 160, 120, "--camera")
            features[f"observation.images.{camera}"] = {"dtype": "video", "shape": [120, 160, 3]}
        spec = sim.task(env.task.name)
        self.task_text = spec.summary  # each episode's task, in words
        self.writer = DatasetWriter(out, round(1.0 / env.control_dt), features, spec.robot,
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
        ensure_offscreen_gl()  # before MuJoCo renders, if it has not yet
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
