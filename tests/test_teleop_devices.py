"""Teleoperation in simulation (``robostack.teleop``, ``robostack teleop``): the keyboard driven through a
pseudo-terminal, the scripted device, and the errors."""
from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
import termios
import time
from pathlib import Path

import numpy as np
import pytest

from robostack import cli, sim
from robostack.dataset import load_dataset
from robostack.teleop import TELEOP_ACTION, KeyboardTeleop, parse_keys

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
                 "--out", str(out), "--max-seconds", "60", "--json"],
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
    assert data.num_episodes == 3 and data.info["robostack.task"] == "panda-lift"
    assert all(row["source"] == "teleop" and row["success"] is True for row in data.episodes)
    assert data.num_frames == summary["frames"]


def test_scripted_device_records_a_camera(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MUJOCO_GL", raising=False)  # teleop picks an offscreen backend itself
    monkeypatch.delenv("DISPLAY", raising=False)
    out = tmp_path / "demos"
    assert cli.main(["teleop", "--task", "panda-lift", "--device", "scripted", "--out", str(out),
                     "--camera", "scene", "--json"]) == 0
    data = load_dataset(out)
    frames = data.video_frames(0, "observation.images.scene")
    assert frames.shape == (data.num_frames, 120, 160, 3) and frames.std() > 1  # an image, not a blank


def test_keyboard_restores_the_terminal_on_error():
    env = sim.make_env("panda-lift", num_envs=1, play=True)
    master, slave = pty.openpty()
    try:
        mode_before = termios.tcgetattr(slave)
        with pytest.raises(RuntimeError, match="boom"):
            with KeyboardTeleop(env, fd=slave):
                assert termios.tcgetattr(slave) != mode_before  # cbreak while connected
                raise RuntimeError("boom")
        assert termios.tcgetattr(slave) == mode_before
    finally:
        os.close(master)
        os.close(slave)


def test_keyboard_needs_a_terminal(tmp_path):
    env = sim.make_env("panda-lift", num_envs=1, play=True)
    with open(tmp_path / "keys.txt", "w") as not_a_tty:
        with pytest.raises(ValueError, match="needs a terminal"):
            KeyboardTeleop(env, fd=not_a_tty.fileno()).connect()


@pytest.mark.parametrize("args, message", [
    (["--task", "panda-lift", "--device", "gamepad"], "unknown device 'gamepad'; known devices: keyboard, scripted"),
    (["--task", "panda-lif", "--device", "scripted"], "unknown task 'panda-lif'"),
    (["--task", "go2-walk", "--device", "keyboard"], "needs a policy"),
    (["--task", "go2-walk", "--device", "scripted"], "--device scripted: unknown expert 'go2-walk'"),
])
def test_bad_device_or_task_is_a_clear_error(tmp_path, capsys, args, message):
    assert cli.main(["teleop", *args, "--out", str(tmp_path / "demos")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "demos").exists()


def test_keys_set_the_go2_velocity_command():
    env = sim.make_env("go2-walk", num_envs=1, play=True)
    master, slave = pty.openpty()
    try:
        mode_before = termios.tcgetattr(slave)
        with KeyboardTeleop(env, fd=slave) as keyboard:
            os.write(master, b"www" + b"\x1b[A" + b"dq")  # an arrow key's escape sequence is ignored
            time.sleep(0.05)
            keyboard.apply_command(env)
            assert env.command[0].tolist() == pytest.approx([0.3, -0.1, 0.2])
            assert keyboard.events() == []
        assert termios.tcgetattr(slave) == mode_before
    finally:
        os.close(master)
        os.close(slave)


def test_parse_keys_drops_escape_sequences_and_keeps_esc():
    assert parse_keys("a\x1b[Ab\x1bOPc\x1b") == ["a", "b", "c", "\x1b"]
