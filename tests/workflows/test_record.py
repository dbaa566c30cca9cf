"""Recording demonstrations in simulation (``robostack.workflows.record``, ``robostack teleop``): the keyboard
driven through a pseudo-terminal, the scripted device, the gamepad driven by events posted to pygame's queue (SDL's
dummy video driver, no hardware), the joy device following a real ROS 2 publisher in another process, a fake
SpaceMouse HID device, the live view's frames, and the errors.

The ROS 2 test keeps discovery on this host (``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST``) on a topic of its
own, so parallel runs do not see each other."""
from __future__ import annotations

import io
import json
import os
import pty
import re
import subprocess
import sys
import termios
import threading
import time
import uuid
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from helpers.hid import hid_report
from robostack import cli, sim, teleop
from robostack.data.dataset import load_dataset
from robostack.sim.robots.panda.model import EE_SITE
from robostack.teleop.devices import DEFAULT_SPEED, GamepadTeleop, JoyTeleop, KeyboardTeleop, ScriptedTeleop
from robostack.teleop.spacemouse import SpaceMouseTeleop
from robostack.workflows import record as recording
from robostack.workflows.record import TELEOP_ACTION, TeleopError, choose_view

STARTUP_S = 60.0  # the child imports torch and MuJoCo and builds the env before it reads keys


class KeyboardSession:
    """``robostack teleop --device keyboard`` with a pseudo-terminal as its stdin, and keys typed into it."""

    def __init__(self, tmp_path: Path, out: Path):
        self.master, self.slave = pty.openpty()
        self.mode_before = termios.tcgetattr(self.slave)
        self.stderr = tmp_path / "stderr.txt"
        with open(self.stderr, "w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "robostack.cli", "teleop", "--task", "panda-lift", "--device", "keyboard",
                 "--out", str(out), "--max-seconds", "60", "--view", "none", "--json"],
                stdin=self.slave, stdout=subprocess.PIPE, stderr=err)
        deadline = time.monotonic() + STARTUP_S
        while "teleop panda-lift:" not in self.stderr.read_text():  # the key help: keys are read from now on
            assert self.proc.poll() is None, self.stderr.read_text()
            assert time.monotonic() < deadline, "the session did not start"
            time.sleep(0.1)
        time.sleep(0.2)

    def type(self, keys: str, pause: float = 0.15) -> None:
        for key in keys:
            os.write(self.master, key.encode())
            time.sleep(pause)

    def finish(self) -> dict:
        stdout, _ = self.proc.communicate(timeout=30)
        try:
            assert self.proc.returncode == 0, self.stderr.read_text()
            return json.loads(stdout)
        finally:
            self.mode_after = termios.tcgetattr(self.slave)
            os.close(self.master)
            os.close(self.slave)


def test_keyboard_session_records_a_successful_episode(tmp_path):
    out = tmp_path / "demos"
    session = KeyboardSession(tmp_path, out)
    session.type("\n")
    session.type("w" * 6, pause=0.05)  # forward (+x) while held
    session.type(" ")  # close the gripper
    session.type("yQ", pause=0)  # success then quit, read together: handled in order
    summary = session.finish()
    assert summary["kept"] == 1 and summary["discarded"] == 0 and summary["ended_by"] == "quit"
    assert session.mode_after == session.mode_before  # the terminal's mode is restored

    data = load_dataset(out)
    assert data.num_episodes == 1
    assert data.episodes[0]["source"] == "teleop" and data.episodes[0]["success"] is True
    action = data.episode(0)[TELEOP_ACTION]
    assert action[:, 0].max() > 0 and action[:, 0].min() == 0  # x moved while w was held, not before
    assert np.all(action[:, 1:6] == 0)  # no other motion was commanded
    assert action[0, 6] == -1 and action[-1, 6] == 1  # the gripper went from open to closed


def test_keyboard_discard_keeps_no_episode(tmp_path):
    out = tmp_path / "demos"
    session = KeyboardSession(tmp_path, out)
    session.type("\nwwn")
    session.type("\x1b")  # Esc quits
    summary = session.finish()
    assert (summary["kept"], summary["discarded"]) == (0, 1)
    assert session.mode_after == session.mode_before
    assert load_dataset(out).num_episodes == 0


def test_scripted_device_writes_successful_episodes(tmp_path, capsys):
    out = tmp_path / "demos"
    assert cli.main(["teleop", "--task", "panda-lift", "--device", "scripted", "--out", str(out),
                     "--episodes", "3", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["kept"] == summary["successes"] == 3
    data = load_dataset(out)
    assert data.num_episodes == 3 and data.sim_task == "panda-lift"
    assert all(row["source"] == "teleop" and row["success"] is True for row in data.episodes)
    assert data.num_frames == summary["frames"]


def test_scripted_expert_noise_moves_the_arm_but_not_the_recorded_actions(tmp_path, capsys):
    """DART: the env executes the expert's action plus noise on its motion (never on the gripper); the dataset
    keeps the expert's own action, so a policy learns the corrections without the noise."""
    env = sim.make_env("panda-lift", num_envs=1, seed=0, play=True)
    try:
        env.reset(seed=0)
        device = ScriptedTeleop(env, noise=0.1, seed=3)
        action = device.get_action(env)
        executed = device.executed(action)
        assert np.abs(executed[:6] - action[:6]).max() > 0.01 and executed[6] == action[6]
        assert np.all(np.abs(executed) <= 1.0)
        assert ScriptedTeleop(env).executed(action) is action
    finally:
        env.close()
    out = tmp_path / "demos"
    assert cli.main(["teleop", "--task", "panda-lift", "--device", "scripted", "--out", str(out), "--episodes", "1",
                     "--expert-noise", "0.1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["kept"] == 1
    recorded = load_dataset(out).episode(0, images=False)[TELEOP_ACTION]
    assert recorded.shape[1] == 7 and set(np.unique(recorded[:, 6])) <= {-1.0, 1.0}  # the expert's gripper


def test_scripted_device_records_a_camera(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MUJOCO_GL", raising=False)  # teleop picks an offscreen backend itself
    monkeypatch.delenv("DISPLAY", raising=False)
    out = tmp_path / "demos"
    assert cli.main(["teleop", "--task", "panda-lift", "--device", "scripted", "--out", str(out),
                     "--camera", "scene", "--json"]) == 0
    data = load_dataset(out)
    frames = data.video_frames(0, "observation.images.scene")
    assert frames.shape == (data.num_frames, 120, 160, 3) and frames.std() > 1  # an image, not a blank


def test_keyboard_needs_a_terminal(tmp_path):
    env = sim.make_env("panda-lift", num_envs=1, play=True)
    with open(tmp_path / "keys.txt", "w") as not_a_tty:
        with pytest.raises(ValueError, match="needs a terminal"):
            KeyboardTeleop(env, fd=not_a_tty.fileno()).connect()


@pytest.mark.parametrize("args, message", [
    (["--task", "panda-lift", "--device", "wiimote"],
     "unknown device 'wiimote'; known devices: keyboard, gamepad, joy, spacemouse, scripted"),
    (["--task", "go2-walk", "--device", "spacemouse"], "needs a policy"),
    (["--task", "panda-lif", "--device", "scripted"], "unknown task 'panda-lif'"),
    (["--task", "go2-walk", "--device", "keyboard"], "needs a policy"),
    (["--task", "go2-walk", "--device", "scripted"], "--device scripted: task 'go2-walk' has no scripted expert"),
    (["--task", "panda-lift", "--device", "gamepad"], "--device gamepad: no gamepad found"),  # none attached here
    (["--task", "panda-lift", "--device", "spacemouse"], "--device spacemouse: no 3Dconnexion SpaceMouse found"),
    (["--task", "panda-lift", "--device", "keyboard", "--expert-noise", "0.1"], "perturbs the scripted expert"),
    (["--task", "panda-lift", "--device", "scripted", "--expert-noise", "-1"], "expert noise must be >= 0"),
])
def test_bad_device_or_task_is_a_clear_error(tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.setenv("SDL_VIDEODRIVER", "dummy")
    assert cli.main(["teleop", *args, "--out", str(tmp_path / "demos")]) == 2
    err = capsys.readouterr().err
    assert message in err and "teleop panda-lift:" not in err  # no controls shown for a device that is not there
    assert list(tmp_path.iterdir()) == []  # no dataset, no live view


# ------------------------------------------------------------------------------------------ gamepads


def recorded_frames(status: io.StringIO) -> int:
    """The frame count of the episode in progress, as the session's status line last showed it."""
    counts = re.findall(r"\[recording (\d+) frames\]", status.getvalue())
    return int(counts[-1]) if counts else 0


def wait_until(condition, what: str) -> None:
    deadline = time.monotonic() + STARTUP_S
    while not condition():
        assert time.monotonic() < deadline, f"the session did not get to: {what}"
        time.sleep(0.02)


def test_gamepad_records_an_episode_from_joystick_events(tmp_path, monkeypatch, pygame_events):
    pygame = pygame_events
    monkeypatch.setitem(teleop.DEVICES, "gamepad", lambda env: GamepadTeleop(env, open_joystick=False))
    status = io.StringIO()

    def post(event_type, **attributes):
        pygame.event.post(pygame.event.Event(event_type, instance_id=0, joy=0, **attributes))

    def operator():  # the events a pad sends, each phase after the session recorded frames of the one before
        wait_until(lambda: "teleop panda-lift:" in status.getvalue(), "the controls' help (it connects next)")
        post(pygame.JOYBUTTONDOWN, button=7)  # Start
        post(pygame.JOYAXISMOTION, axis=1, value=-1.0)  # left stick fully up
        post(pygame.JOYAXISMOTION, axis=0, value=0.05)  # and a hair to the left: inside the deadzone
        post(pygame.JOYAXISMOTION, axis=3, value=0.55)  # right stick half right (past the deadzone)
        wait_until(lambda: recorded_frames(status) >= 10, "10 frames")
        post(pygame.JOYAXISMOTION, axis=1, value=0.0)
        post(pygame.JOYAXISMOTION, axis=3, value=0.0)
        post(pygame.JOYBUTTONDOWN, button=0)  # A: close the gripper
        frames = recorded_frames(status)
        wait_until(lambda: recorded_frames(status) >= frames + 5, "5 more frames")
        post(pygame.JOYBUTTONDOWN, button=3)  # Y: success
        post(pygame.JOYBUTTONDOWN, button=6)  # Back: quit

    thread = threading.Thread(target=operator, daemon=True)
    thread.start()
    out = tmp_path / "demos"
    summary = recording.record("panda-lift", "gamepad", str(out), max_seconds=60, status=status)
    thread.join()
    assert (summary["kept"], summary["successes"], summary["ended_by"]) == (1, 1, "quit")

    data = load_dataset(out)
    assert data.episodes[0]["source"] == "teleop" and data.episodes[0]["success"] is True
    action = data.episode(0)[TELEOP_ACTION]
    assert action[0, 0] == pytest.approx(DEFAULT_SPEED)  # full stick up: +x at full speed from frame 0
    assert action[0, 5] == pytest.approx(-0.5 * DEFAULT_SPEED)  # half right: clockwise yaw
    assert action[-1, 0] == 0 and action[-1, 5] == 0  # the sticks were let go
    assert np.all(action[:, 1:5] == 0)  # y stayed inside the deadzone; nothing moved z, rx, ry
    assert action[0, 6] == -1 and action[-1, 6] == 1  # A toggled the gripper closed


# ------------------------------------------------------------------------------------------ joy (ROS 2)

JOY_PUBLISHER = '''
import sys, time
import rclpy
from sensor_msgs.msg import Joy

rclpy.init()
node = rclpy.create_node("fake_joy_driver")
publisher = node.create_publisher(Joy, sys.argv[1], 10)
while publisher.get_subscription_count() == 0:
    time.sleep(0.02)


def joy(axes={}, buttons=()):  # an Xbox pad as the joy driver numbers it: up and left positive
    return Joy(axes=[float(axes.get(i, 0.0)) for i in range(6)], buttons=[int(i in buttons) for i in range(11)])


timeline = [(0.5, joy()), (0.3, joy(buttons={7})),  # Start
            (1.0, joy({1: 1.0, 0: 0.03})),  # left stick up, a hair left (inside the deadzone)
            (0.3, joy(buttons={0})),  # A: gripper
            (60.0, joy(buttons={3}))]  # Y: success
for seconds, msg in timeline:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        publisher.publish(msg)
        time.sleep(0.02)
'''


def tcp_position(env) -> np.ndarray:
    return env.sim.data_for(0).site(EE_SITE).xpos.copy()


@pytest.mark.filterwarnings("ignore:module 'sre_:DeprecationWarning")  # rclpy type support imports lark
def test_joy_device_follows_a_joy_publisher_and_moves_the_tcp(tmp_path, monkeypatch):
    monkeypatch.setenv("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    monkeypatch.setenv("ROS_DOMAIN_ID", os.environ.get("ROS_DOMAIN_ID") or str(1 + os.getpid() % 100))
    topic = f"/teleop_test_{uuid.uuid4().hex[:12]}/joy"
    script = tmp_path / "joy_publisher.py"
    script.write_text(JOY_PUBLISHER)
    env = sim.make_env("panda-lift", num_envs=1, play=True)
    env.reset()
    publisher = subprocess.Popen([sys.executable, str(script), topic], stderr=subprocess.PIPE, text=True)
    events, actions = [], []
    try:
        with JoyTeleop(env, topic=topic) as joy:
            deadline = time.monotonic() + STARTUP_S
            while "success" not in events:
                assert publisher.poll() is None, publisher.communicate()[1]
                assert time.monotonic() < deadline, f"no success from the publisher; events {events}, {joy.status()}"
                events += joy.events()
                if "start" in events:
                    if not actions:
                        start_tcp = tcp_position(env)
                    actions.append(joy.get_action(env))
                    env.step(torch.as_tensor(actions[-1]).unsqueeze(0))
                time.sleep(0.02)
    finally:
        publisher.kill()
        publisher.communicate()
    assert events == ["start", "success"]
    action = np.array(actions)
    assert action[:, 0].max() == pytest.approx(DEFAULT_SPEED)  # the stick fully up
    assert np.all(action[:, 1:6] == 0)  # y inside the deadzone, nothing else touched
    assert action[0, 6] == -1 and action[-1, 6] == 1  # A closed the gripper
    moved = tcp_position(env) - start_tcp
    assert moved[0] > 0.05, moved  # the TCP went forward


# ------------------------------------------------------------------------------------------ SpaceMouse


class FakeSpaceMouse:
    """hidapi's device as SpaceMouseTeleop uses it: each read hands out the next report of ``script``; a
    None there (and the end) reads as nothing waiting, so one poll ends at each None."""

    def __init__(self, script):
        self.script = list(script)
        self.closed = False

    def read(self, size: int) -> list[int]:
        item = self.script.pop(0) if self.script else None
        return [] if item is None else list(item)

    def close(self) -> None:
        self.closed = True


def test_spacemouse_records_an_episode_from_a_fake_hid_device(tmp_path, monkeypatch):
    left, right, both, none_held = (bytes([3, mask]) for mask in (0b01, 0b10, 0b11, 0))
    script = [right, none_held, None,  # right click while idle: start
              hid_report(1, 0, -350, 0), hid_report(2, 0, 0, -175), None,  # push away, twist counter-clockwise
              *[None] * 8,
              left, none_held, None,  # left click: gripper
              hid_report(1, 0, 0, 0), hid_report(2, 0, 0, 0), *[None] * 4,  # cap let go
              right, none_held, None,  # right click while recording: success
              *[None] * 2,
              left, both, none_held, None]  # both buttons while idle: quit
    fake = FakeSpaceMouse(script)
    monkeypatch.setitem(teleop.DEVICES, "spacemouse", lambda env: SpaceMouseTeleop(env, device=fake))
    out = tmp_path / "demos"
    summary = recording.record("panda-lift", "spacemouse", str(out), max_seconds=30, status=io.StringIO())
    assert (summary["kept"], summary["successes"], summary["ended_by"]) == (1, 1, "quit")
    assert not fake.closed  # the caller's device stays the caller's

    action = load_dataset(out).episode(0)[TELEOP_ACTION]
    assert action[0, 0] == pytest.approx(DEFAULT_SPEED)  # pushed away: +x from the first frame
    assert action[0, 5] == pytest.approx(4 / 9 * DEFAULT_SPEED)  # counter-clockwise yaw
    assert np.all(action[:, 1:5] == 0)
    assert action[-1, :6].tolist() == [0.0] * 6  # let go
    assert action[0, 6] == -1 and action[-1, 6] == 1  # the left click closed the gripper


# ------------------------------------------------------------------------------------------ live view


def test_view_frames_writes_the_scene_beside_the_dataset(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MUJOCO_GL", raising=False)  # teleop picks an offscreen backend itself
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    out = tmp_path / "demos"
    assert cli.main(["teleop", "--task", "panda-lift", "--device", "scripted", "--out", str(out),
                     "--view", "frames", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    live = tmp_path / "demos.live.png"
    assert summary["view"] == "frames" and summary["view_path"] == str(live)
    image = cv2.imread(str(live))
    assert image.shape == (360, 480, 3) and image.std() > 1  # a rendered scene, not a blank
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demos", "demos.live.png"]  # no partial file left


def test_choose_view_resolves_auto_by_display(monkeypatch):
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.delenv("DISPLAY", raising=False)
    assert choose_view(None, "gamepad") == "frames" and choose_view("auto", "keyboard") == "frames"
    assert choose_view(None, "scripted") == "none" and choose_view("viewer", "scripted") == "viewer"
    monkeypatch.setenv("DISPLAY", ":0")
    assert choose_view(None, "spacemouse") == "viewer"


def test_unknown_or_impossible_view_is_a_clear_error(tmp_path, capsys, monkeypatch):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["teleop", "--task", "panda-lift", "--device", "scripted", "--out", str(tmp_path / "demos"),
                  "--view", "window"])
    assert exit_info.value.code == 2
    assert "argument --view: invalid choice: 'window'" in capsys.readouterr().err
    with pytest.raises(TeleopError, match="unknown view 'window'; views are none, viewer, frames"):
        recording.record("panda-lift", "scripted", str(tmp_path / "demos"), view="window")
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    assert cli.main(["teleop", "--task", "panda-lift", "--device", "scripted", "--out", str(tmp_path / "demos"),
                     "--view", "viewer"]) == 2
    assert "--view viewer needs a display" in capsys.readouterr().err
    assert not (tmp_path / "demos").exists()
