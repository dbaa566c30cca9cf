"""Teleop devices and mappings (``robostack.teleop``): the keyboard through a pseudo-terminal, pad mappings
through the deadzone, the SpaceMouse's HID reports, a gamepad that is not there, and the arm takeover issuing the
task's own actions through its action map."""
from __future__ import annotations

import os
import pty
import sys
import termios
import time

import numpy as np
import pytest

from helpers.hid import hid_report
from robostack import sim
from robostack.sim.measured_task import MeasuredTask
from robostack.sim.robots.panda import model as panda
from robostack.teleop import TeleopError
from robostack.teleop.devices import GamepadTeleop, KeyboardTeleop, parse_keys
from robostack.teleop.mapping import GAMEPAD_MAPPING, JOY_MAPPING, TAKEOVER_MAPPINGS, XBOX_AXES, pad_motion
from robostack.teleop.spacemouse import SpaceMouseTeleop, parse_spacemouse_report, spacemouse_motion
from robostack.teleop.takeovers import ArmTakeover


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


def test_pad_motion_maps_sticks_through_a_deadzone():
    # SDL (pygame) reports a stick pushed down or right as positive; the joy driver flips both
    sdl = {1: -1.0, 0: 0.05, 4: 0.55, 3: 1.0}  # left stick fully up, barely left; right stick half down, full right
    expected = [1.0, 0.0, -0.5, 0.0, 0.0, -1.0]  # +x, no y (deadzone), -z, clockwise yaw
    assert pad_motion(sdl, GAMEPAD_MAPPING) == pytest.approx(expected)
    assert pad_motion({axis: -value for axis, value in sdl.items()}, JOY_MAPPING) == pytest.approx(expected)
    assert pad_motion({1: float("nan"), 4: 3.0}, GAMEPAD_MAPPING) == pytest.approx([0, 0, -1, 0, 0, 0])
    assert pad_motion({}, GAMEPAD_MAPPING).tolist() == [0.0] * 6  # axes never reported are centred


def test_gamepad_without_a_pad_is_a_clear_error(pygame_events):
    env = sim.make_env("panda-lift", num_envs=1, play=True)
    with pytest.raises(TeleopError, match="no gamepad found"):
        GamepadTeleop(env).connect()
    assert pygame_events.joystick.get_init() is False  # nothing left open


def test_spacemouse_reports_parse_in_both_layouts():
    older = [parse_spacemouse_report(hid_report(1, 100, -200, 350)),
             parse_spacemouse_report(hid_report(2, -5, 6, -32768))]
    assert older[0].translation.tolist() == [100, -200, 350] and older[0].rotation is None
    assert older[1].rotation.tolist() == [-5, 6, -32768] and older[1].translation is None
    newer = parse_spacemouse_report(list(hid_report(1, 1, 2, 3, -4, -5, -6)))  # hidapi returns a list of ints
    assert newer.translation.tolist() == [1, 2, 3] and newer.rotation.tolist() == [-4, -5, -6]
    assert parse_spacemouse_report(bytes([3, 0b10, 0])).buttons == 0b10
    assert parse_spacemouse_report(bytes([3, 0, 1])).buttons == 0x100  # little-endian bitmask
    assert parse_spacemouse_report(bytes([0x17, 80])) == (None, None, None)  # battery level: nothing for us
    assert parse_spacemouse_report(b"") == (None, None, None)
    assert parse_spacemouse_report(bytes([1, 5, 0])) == (None, None, None)  # too short to be axes


def test_spacemouse_counts_become_a_motion_in_the_task_frame():
    # HID: x right, y toward the user, z down; the cap pushed away, twisted counter-clockwise (from above)
    motion = spacemouse_motion(np.array([0, -350, 20, 0, 0, -175]))
    assert motion == pytest.approx([1.0, 0.0, 0.0, 0.0, 0.0, 4 / 9])  # z inside the deadzone; (0.5-0.1)/0.9
    assert spacemouse_motion(np.array([700, 0, -700, -350, 350, 0])) == pytest.approx([0, -1, 1, -1, 1, 0])


def test_spacemouse_names_what_is_missing(monkeypatch):
    env = sim.make_env("panda-lift", num_envs=1, play=True)
    monkeypatch.setitem(sys.modules, "hid", None)  # hidapi not installed
    with pytest.raises(TeleopError, match=r"needs the hidapi package: pip install hidapi"):
        SpaceMouseTeleop(env).connect()
    monkeypatch.delitem(sys.modules, "hid")
    with pytest.raises(TeleopError, match="no 3Dconnexion SpaceMouse found"):  # hidapi here, no device
        SpaceMouseTeleop(env).connect()


# ------------------------------------------------------------------------------------------ takeovers


def task_actions(task: str) -> MeasuredTask:
    return MeasuredTask(sim.task(task).build(sim.load_task_config(task, play=True)))


class Joints:
    """A measured state of the panda's joints (what a takeover reads)."""

    def __init__(self, positions):
        self.joint_position = dict(zip(panda.JOINT_NAMES, map(float, positions)))


def test_the_arm_takeover_and_the_recording_devices_share_one_pad_mapping():
    assert TAKEOVER_MAPPINGS["arm"].axes == XBOX_AXES == GAMEPAD_MAPPING.axes == JOY_MAPPING.axes


def test_the_arm_takeover_issues_the_tasks_own_actions():
    """The controls it sends are what the task's action map makes of an end-effector action from the measured
    joints: the same IK site, damping, step size and gripper as the policy's actions."""
    home = panda.SPEC.load_config().home_joint_pos()
    takeover = ArmTakeover(task_actions("panda-lift"), (0.05, 0.3), (1, 0))
    takeover.begin(Joints(home))
    command = takeover.command(np.array([0.1, 0.0, 0.0, 0.0]), frozenset({0}), Joints(home), 0.02)
    reference = task_actions("panda-lift")  # the task's map, fed the action by hand
    qpos = np.concatenate([home, reference.model.qpos0[len(home):]])[None]
    reference.set_state(qpos, np.zeros((1, reference.model.nv)))
    reference.ctrl_target[0] = reference.joint_pos[0]
    action = np.zeros(reference.action_dim)
    action[0] = 0.1 * 0.02 / reference.task_cfg.ee_step[0]  # 2 mm forward, in units of the task's step
    action[-1] = 1.0  # A held: the task's gripper closes
    np.testing.assert_allclose(command, reference.controls(action), atol=1e-6)
    assert command[7:].tolist() == [0.0, 0.0]  # the task's closed gripper


def test_a_task_whose_actions_are_not_end_effector_steps_cannot_carry_an_arm_takeover():
    with pytest.raises(TeleopError, match="do not move an end effector"):
        ArmTakeover(task_actions("go2-walk"), (0.05, 0.3), (1, 0))
