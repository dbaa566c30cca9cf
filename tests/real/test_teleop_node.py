"""Teleop tests: ``TeleopRunner`` (deadman, timeout, bad input, each robot kind's mapping) with plain numbers
and MuJoCo kinematics, then ``teleop_node`` over real DDS in separate processes: a recorded panda takeover
through the safety layer and a simulated robot, and a go2 takeover of the task command.

The DDS tests keep discovery on this host (``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST``), in a domain picked
from the pid and a namespace per run, so parallel runs do not see each other.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import mujoco
import numpy as np
import pytest

os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ.setdefault("ROS_DOMAIN_ID", str(140 + os.getpid() % 60))

from robostack.real.graph import recorded_topics  # noqa: E402
from robostack.real.bag import read_messages  # noqa: E402
from robostack.real.robot_state import RobotState  # noqa: E402
from robostack.real.teleop_node import DRONE_LEAD, TeleopError, TeleopRunner, TeleopSettings  # noqa: E402
from robostack.sim.robots.panda import model as panda  # noqa: E402

# rclpy's type support imports rosidl_parser -> lark, which imports the deprecated sre_* modules
pytestmark = pytest.mark.filterwarnings("ignore:module 'sre_:DeprecationWarning")

PANDA_MODEL = panda.SPEC.build_model()
PANDA_HOME = panda.SPEC.load_config().home_joint_pos()
DEADMAN, OPEN, CLOSE = 4, 1, 0  # the defaults: LB, B, A
LEFT_UP, LEFT_LEFT, RIGHT_LEFT, RIGHT_UP = 1, 0, 3, 4  # Xbox axes as the joy driver numbers them


def joy(now: float, runner: TeleopRunner, deadman: bool = True, sticks: dict[int, float] | None = None,
        pressed: tuple[int, ...] = ()) -> str | None:
    axes, buttons = [0.0] * 8, [0] * 11
    for axis, value in (sticks or {}).items():
        axes[axis] = value
    for button in pressed + ((DEADMAN,) if deadman else ()):
        buttons[button] = 1
    return runner.take_joy(axes, buttons, now)


def panda_state(joints=PANDA_HOME) -> RobotState:
    return RobotState(joint_position=dict(zip(panda.JOINT_NAMES, map(float, joints))))


def tcp_pose(joints) -> tuple[np.ndarray, float]:
    """The TCP's position and yaw at ``joints`` (MuJoCo forward kinematics, independent of the runner)."""
    data = mujoco.MjData(PANDA_MODEL)
    data.qpos[:] = joints
    mujoco.mj_kinematics(PANDA_MODEL, data)
    site = data.site(panda.EE_SITE)
    return site.xpos.copy(), float(np.arctan2(site.xmat[3], site.xmat[0]))


def drive_arm(runner: TeleopRunner, sticks: dict[int, float], ticks: int, pressed: tuple[int, ...] = ()):
    """Hold the deadman and ``sticks`` for ``ticks`` control periods on an arm that tracks every command
    exactly; returns the last command."""
    joints, now, command = PANDA_HOME.copy(), 0.0, None
    for _ in range(ticks):
        now += 1.0 / runner.rate_hz
        assert joy(now, runner, sticks=sticks, pressed=pressed) is None
        command = runner.tick(panda_state(joints), now).command
        joints = command
    return command


# ------------------------------------------------------------------------------------------ the arm


@pytest.mark.parametrize("axis, sign, moved", [(LEFT_UP, 1, 0), (LEFT_UP, -1, 0), (LEFT_LEFT, 1, 1),
                                               (RIGHT_UP, 1, 2), (RIGHT_UP, -1, 2)])
def test_arm_ik_moves_the_tcp_the_way_the_stick_points(axis, sign, moved):
    runner = TeleopRunner("panda", TeleopSettings(), task="panda-reach")
    assert runner.rate_hz == 50.0  # the panda-reach control rate
    start, yaw = tcp_pose(PANDA_HOME)
    command = drive_arm(runner, {axis: sign * 1.0}, ticks=25)  # 0.5 s at the full 0.1 m/s
    end, end_yaw = tcp_pose(command)
    displacement = end - start
    assert sign * displacement[moved] == pytest.approx(0.05, abs=0.005)
    assert np.abs(np.delete(displacement, moved)).max() < 0.003  # the other axes stay
    assert abs(end_yaw - yaw) < 0.01  # and so does the orientation


def test_arm_yaw_stick_turns_the_tcp_about_the_vertical_in_place():
    runner = TeleopRunner("panda", TeleopSettings(), task="panda-reach")
    start, yaw = tcp_pose(PANDA_HOME)
    end, end_yaw = tcp_pose(drive_arm(runner, {RIGHT_LEFT: 1.0}, ticks=25))
    assert end_yaw - yaw == pytest.approx(0.25, abs=0.02)  # 0.5 rad/s for 0.5 s
    assert np.abs(end - start).max() < 0.003


def test_arm_takeover_starts_at_the_measured_pose_and_drives_the_tasks_gripper():
    """Sticks centred, the first command is the measured pose (float32, as the task's action map computes); the
    gripper buttons close and open the fingers as the task's gripper action does, and a task without one
    (panda-reach) leaves them where they were found."""
    measured = PANDA_HOME + 0.05
    measured[7:] = 0.03
    for task in ("panda-reach", "panda-lift"):
        runner = TeleopRunner("panda", TeleopSettings(), task=task)
        joy(0.0, runner)
        step = runner.tick(panda_state(measured), 0.0)
        assert step.events == ["start"] and step.active
        expected = measured.copy()
        expected[7:] = 0.03 if task == "panda-reach" else 0.04  # lift: the open gripper (0.03 is nearer open)
        np.testing.assert_allclose(step.command, expected, atol=1e-6)  # no jump
        assert len(step.command) == PANDA_MODEL.nu  # every actuator, as the policy sends
    closed = drive_arm(runner, {}, ticks=2, pressed=(CLOSE,))
    np.testing.assert_array_equal(closed[7:], [0.0, 0.0])
    assert runner.takeover.action[-1] == 1.0 and np.abs(runner.takeover.action).max() <= 1.0  # the task's action
    opened = drive_arm(runner, {}, ticks=2, pressed=(OPEN,))
    np.testing.assert_allclose(opened[7:], [0.04, 0.04], atol=1e-6)
    held = drive_arm(runner, {}, ticks=2)
    np.testing.assert_allclose(held[7:], [0.04, 0.04], atol=1e-6)  # the gripper stays as last commanded


def test_an_arm_takeover_says_which_task_action_it_issued_and_a_command_takeover_none():
    """The logs of a deployment keep the human's step as the task's action (``teleop/action``), which the controls
    of an end-effector task do not give back; a quadruped's or drone's human moves the task command instead."""
    import std_msgs.msg
    from robostack.real.messages import action_message, action_rows

    runner = TeleopRunner("panda", TeleopSettings(), task="panda-lift")
    joy(0.0, runner, sticks={LEFT_UP: 1.0}, pressed=(CLOSE,))
    step = runner.tick(panda_state(PANDA_HOME), 0.0)
    assert step.action is not None and step.action.shape == (7,) and step.action[-1] == 1.0
    assert step.action[0] != 0.0 or step.action[1] != 0.0 or step.action[2] != 0.0  # the stick moved the TCP
    np.testing.assert_array_equal(action_rows(action_message(step.action)), step.action[None])
    np.testing.assert_array_equal(action_rows(action_message(np.ones((2, 3)))), np.ones((2, 3)))
    with pytest.raises(ValueError, match="not an action message"):
        action_rows(std_msgs.msg.Float64MultiArray(data=[1.0, 2.0]))
    quadruped = TeleopRunner("go2", TeleopSettings())
    joy(0.0, quadruped, sticks={LEFT_UP: 1.0})
    step = quadruped.tick(RobotState(), 0.0)
    assert step.command is not None and step.action is None


def test_an_arm_takeover_needs_the_task_it_acts_for():
    with pytest.raises(TeleopError, match="acts through its task's action map: give the bundle"):
        TeleopRunner("panda", TeleopSettings())
    with pytest.raises(TeleopError, match="is not a task of the panda"):
        TeleopRunner("panda", TeleopSettings(), task="go2-walk")


def test_arm_target_stays_near_a_blocked_arm():
    """A stick held while the arm does not move (blocked, or the safety layer holding it) must not wind
    the target up: the commanded joints stay within the lead of the measured ones."""
    runner = TeleopRunner("panda", TeleopSettings(), task="panda-reach")
    for k in range(200):  # 4 s of full stick; 0.4 m if it wound up
        joy(k * 0.02, runner, sticks={LEFT_UP: 1.0})
        command = runner.tick(panda_state(), k * 0.02).command
    moved, _ = tcp_pose(command)
    assert np.linalg.norm(moved - tcp_pose(PANDA_HOME)[0]) < 0.06


# ------------------------------------------------------------------------------------------ deadman, timeout, bad input


def test_deadman_starts_and_ends_the_takeover_once_each():
    runner = TeleopRunner("panda", TeleopSettings(), task="panda-reach")
    state, steps = panda_state(), []
    script = [False, False, True, True, True, False, False, True, False]  # deadman per tick
    for k, held in enumerate(script):
        joy(k * 0.02, runner, deadman=held, sticks={LEFT_UP: 0.5})
        steps.append(runner.tick(state, k * 0.02))
    assert [s.events for s in steps] == [[], [], ["start"], [], [], ["end"], [], ["start"], ["end"]]
    assert [s.active for s in steps] == script
    assert [s.command is not None for s in steps] == script  # commands only while the human holds it


def test_silent_input_ends_the_takeover_after_the_timeout():
    runner = TeleopRunner("panda", TeleopSettings(input_timeout_s=0.3), task="panda-reach")
    joy(0.0, runner, sticks={LEFT_UP: 1.0})
    assert runner.tick(panda_state(), 0.0).events == ["start"]
    assert runner.tick(panda_state(), 0.29).active  # the gamepad went quiet with the button held
    step = runner.tick(panda_state(), 0.31)
    assert step.events == ["end"] and not step.active and step.command is None


def test_input_that_waited_in_a_queue_counts_from_its_arrival():
    from robostack.real.teleop_node import arrival

    runner = TeleopRunner("panda", TeleopSettings(input_timeout_s=0.5), task="panda-reach")
    late = arrival({"received_timestamp": time.time_ns() - 2_000_000_000})  # taken 2 s after it arrived
    assert late == pytest.approx(time.monotonic() - 2.0, abs=0.05)
    joy(late, runner)
    assert runner.tick(panda_state(), time.monotonic()).events == []  # too old to start a takeover


def test_twist_deadman_is_a_twist_within_the_timeout_and_values_are_clipped():
    runner = TeleopRunner("go2", TeleopSettings(input="twist"))
    assert runner.tick(None, 0.0).events == []  # no Twist yet
    assert runner.take_twist([0.3, -2.0, 0.2], 0.0) is None
    step = runner.tick(RobotState(), 0.01)
    assert step.events == ["start"]
    np.testing.assert_allclose(step.command, [0.3, -0.5, 0.2])  # vy within the go2-walk range
    assert runner.tick(RobotState(), 0.49).active
    step = runner.tick(RobotState(), 0.51)
    assert step.events == ["end"]
    np.testing.assert_array_equal(step.command, [0.0, 0.0, 0.0])  # told to stand still, not left walking


@pytest.mark.parametrize("axes, buttons, message", [
    ([0.0] * 4, [0] * 11, "Joy with 4 axes and 11 buttons"),
    ([0.0] * 8, [0] * 3, "Joy with 8 axes and 3 buttons"),
    ([0.0, float("nan"), 0.0, 0.0, 0.0, 0.0], [0] * 4 + [1], "Joy axes [1] are not finite"),
    ([0.0, 0.0, 0.0, float("inf"), 0.0], [0] * 4 + [1], "Joy axes [3] are not finite"),
])
def test_unreadable_joy_is_refused_and_commands_nothing(axes, buttons, message):
    runner = TeleopRunner("panda", TeleopSettings(), task="panda-reach")
    assert message in runner.take_joy(axes, buttons, 0.0)
    step = runner.tick(panda_state(), 0.0)
    assert step.events == [] and step.command is None


def test_unreadable_joy_does_not_keep_a_takeover_alive():
    runner = TeleopRunner("panda", TeleopSettings(input_timeout_s=0.3), task="panda-reach")
    joy(0.0, runner)
    runner.tick(panda_state(), 0.0)
    nan_axes, events = [float("nan")] * 8, {}
    for k in range(1, 20):
        assert runner.take_joy(nan_axes, [0] * 4 + [1] + [0] * 6, k * 0.02) is not None
        step = runner.tick(panda_state(), k * 0.02)
        assert step.command is None or np.all(np.isfinite(step.command))
        events.update({event: k * 0.02 for event in step.events})
    assert list(events) == ["end"] and events["end"] == pytest.approx(0.32)  # the timeout, as a silent gamepad


def test_non_finite_twist_is_refused():
    runner = TeleopRunner("go2", TeleopSettings(input="twist"))
    assert "not finite" in runner.take_twist([0.1, float("nan"), 0.0], 0.0)
    assert runner.tick(RobotState(), 0.0).events == []


def test_no_takeover_without_a_usable_state():
    runner = TeleopRunner("panda", TeleopSettings(), task="panda-reach")
    joy(0.0, runner)
    step = runner.tick(None, 0.0, "waiting for state topics ['joint_states']")
    assert not step.active and step.command is None and "['joint_states']" in step.problem
    partial = RobotState(joint_position=dict(zip(panda.JOINT_NAMES[:7], PANDA_HOME)))
    step = runner.tick(partial, 0.02)
    assert not step.active and "finger_joint1" in step.problem
    nan = PANDA_HOME.copy()
    nan[2] = np.nan
    assert "joint3" in runner.tick(panda_state(nan), 0.04).problem
    assert runner.tick(panda_state(), 0.06).events == ["start"]
    step = runner.tick(None, 0.08, "state is stale: 80 ms old (limit 50 ms)")  # while in control
    assert step.active and step.command is None and "stale" in step.problem


# ------------------------------------------------------------------------------------------ quadruped and drone


def test_drone_setpoint_starts_at_the_tasks_setpoint_and_follows_the_sticks():
    runner = TeleopRunner("cf2", TeleopSettings())
    assert runner.rate_hz == 100.0 and runner.task_command.topic == "target_position"
    position = np.array([0.3, -0.2, 1.1])
    state = RobotState(base_position=position)
    assert "needs 3 finite values" in runner.take_task_command([0.0, 0.0])
    assert runner.take_task_command([0.4, -0.2, 1.2]) is None  # the task's setpoint, 0.14 m from the drone
    joy(0.0, runner)
    first = runner.tick(state, 0.0)
    np.testing.assert_allclose(first.command, [0.4, -0.2, 1.2])  # the sticks offset what the policy flies to
    assert runner.take_task_command([9.0, 9.0, 9.0]) is None  # its own messages while in control are not taken
    np.testing.assert_allclose(runner.task_setpoint, [0.4, -0.2, 1.2])
    joy(0.005, runner, deadman=False)
    runner.tick(state, 0.005)
    runner.take_task_command([0.3, -0.2, 1.1])  # the task puts the setpoint at the drone again
    joy(0.0, runner)
    first = runner.tick(state, 0.0)
    np.testing.assert_allclose(first.command, position)
    for k in range(1, 51):  # 0.5 s: +x at full stick, down at half
        joy(k * 0.01, runner, sticks={LEFT_UP: 1.0, RIGHT_UP: -0.5})
        step = runner.tick(RobotState(base_position=position + [0.25 * k / 50, 0.0, 0.0]), k * 0.01)
    np.testing.assert_allclose(step.command, position + [0.25, 0.0, -0.125], atol=1e-9)
    for k in range(51, 400):  # the drone stops following: the setpoint stays within the lead
        joy(k * 0.01, runner, sticks={LEFT_UP: 1.0})
        step = runner.tick(state, k * 0.01)
    assert np.linalg.norm(step.command - position) == pytest.approx(DRONE_LEAD)
    joy(4.0, runner, deadman=False)
    release = runner.tick(state, 4.0)
    assert release.events == ["end"]
    np.testing.assert_array_equal(release.command, step.command)  # it holds where the human left it
    assert runner.tick(None, 4.01, "no odometry").problem == ""  # nothing wanted without the deadman
    np.testing.assert_array_equal(runner.task_setpoint, step.command)  # the next takeover starts from it
    far = TeleopRunner("cf2", TeleopSettings())  # the config's default setpoint, [0, 0, 1], 1.6 m off: the lead
    joy(0.0, far)
    np.testing.assert_allclose(far.tick(RobotState(base_position=np.array([0.0, 0.0, 2.6])), 0.0).command,
                               [0.0, 0.0, 2.6 - DRONE_LEAD])


def test_quadruped_and_drone_do_not_take_the_joints():
    for robot in ("go2", "cf2"):
        runner = TeleopRunner(robot, TeleopSettings())
        assert not runner.takeover.joint_level and runner.task_command is not None
    arm = TeleopRunner("panda", TeleopSettings(), task="panda-reach")
    assert arm.task_command is None and "does not replace a task command" in arm.take_task_command([0.0])


@pytest.mark.parametrize("settings, message", [
    (TeleopSettings(axes=[1, 0]), "axes and scales need one value per component"),
    (TeleopSettings(scales=[1.0, 0.0, 1.0]), "scales > 0"),
    (TeleopSettings(input="keyboard"), "input must be 'joy' or 'twist'"),
    (TeleopSettings(input_timeout_s=0.0), "input_timeout_s must be > 0"),
    (TeleopSettings(deadman_button=-1), "button indices must be >= 0"),
])
def test_bad_settings_are_refused_with_the_reason(settings, message):
    with pytest.raises(TeleopError, match=message):
        TeleopRunner("go2", settings)


# ------------------------------------------------------------------------------------------ over DDS


class Monitor:
    """The test's own rclpy node in its own context, spun in a thread: publishers for the human's input and
    an independent record of what arrives, as (receive time ns, message)."""

    def __init__(self, namespace: str, topics: dict[str, type], publish: dict[str, type]):
        import rclpy
        from rclpy.executors import SingleThreadedExecutor

        self.rclpy = rclpy
        self.context = rclpy.Context()
        rclpy.init(context=self.context, args=["--ros-args", "-r", f"__ns:={namespace}"])
        self.node = rclpy.create_node("teleop_test_monitor", context=self.context)
        self.received: dict[str, list] = {topic: [] for topic in topics}
        for topic, msg_type in topics.items():
            self.node.create_subscription(msg_type, topic, lambda m, i, t=topic: self.received[t].append(
                (i["received_timestamp"], m)), 1000)
        self.publishers = {topic: self.node.create_publisher(msg_type, topic, 10)
                           for topic, msg_type in publish.items()}
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.spinner = threading.Thread(target=self.executor.spin, daemon=True)
        self.spinner.start()

    def values(self, topic: str) -> list:
        return [m.data for _, m in list(self.received[topic])]

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        self.rclpy.try_shutdown(context=self.context)


def start_node(module: str, namespace: str, *params: str) -> subprocess.Popen:
    args = [sys.executable, "-m", f"robostack.real.{module}", "--ros-args", "-r", f"__ns:={namespace}"]
    for param in params:
        args += ["-p", param]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for(condition, timeout: float, what: str, procs=()) -> None:
    end = time.monotonic() + timeout
    while not condition():
        for proc in procs:
            if proc.poll() is not None:
                pytest.fail(f"{what}: a node exited early:\n{proc.communicate()[0]}")
        if time.monotonic() > end:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def stop(proc: subprocess.Popen) -> str:
    proc.send_signal(signal.SIGINT)
    try:
        return proc.communicate(timeout=15)[0]
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.communicate()[0]


def recorded_so_far(bag: Path) -> set[str]:
    """Topics with a message in the chunks a running recorder has flushed (the chunk in progress ends the read)."""
    from mcap.records import Channel, Message
    from mcap.stream_reader import StreamReader

    topics, found = {}, set()
    for path in bag.glob("*.mcap"):
        with open(path, "rb") as stream:
            try:
                for record in StreamReader(stream, skip_magic=False).records:
                    if isinstance(record, Channel):
                        topics[record.id] = record.topic
                    elif isinstance(record, Message):
                        found.add(topics[record.channel_id])
            except Exception:  # noqa: BLE001 - the truncation point shows up as some read error
                pass
    return found


class Gamepad:
    """A gamepad as the joy driver sends it: the sticks and buttons held now, repeated at 20 Hz."""

    def __init__(self, publisher):
        self.publisher = publisher
        self.axes, self.buttons = [0.0] * 8, [0] * 11
        self.running = True
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def hold(self, deadman: bool, sticks: dict[int, float] | None = None) -> None:
        axes, buttons = [0.0] * 8, [0] * 11
        for axis, value in (sticks or {}).items():
            axes[axis] = value
        buttons[DEADMAN] = int(deadman)
        self.axes, self.buttons = axes, buttons

    def _run(self) -> None:
        from sensor_msgs.msg import Joy

        while self.running:
            self.publisher.publish(Joy(axes=self.axes, buttons=self.buttons))
            time.sleep(0.05)

    def close(self) -> None:
        self.running = False
        self.thread.join()


def test_recorded_panda_takeover_moves_the_arm_through_the_safety_layer(tmp_path):
    """teleop_node, safety_node, sim_robot_node (panda) and recorder_node, each its own process; the test
    holds the deadman with the left stick forward for a second, then lets go. The monitor must see the
    takeover start and end, teleop/active rise and fall, the safety layer pass the human's joint targets
    to the driver and the arm's TCP move forward; the bag, read by both readers, must hold it in order."""
    from sensor_msgs.msg import Joy, JointState
    from std_msgs.msg import Bool, Float64MultiArray, String

    namespace = f"/teleop_test_{uuid.uuid4().hex[:6]}"
    driver = "forward_position_controller/commands"
    monitor = Monitor(namespace, {"teleop/intervention": String, "teleop/active": Bool,
                                  "teleop/command": Float64MultiArray, driver: Float64MultiArray,
                                  "joint_states": JointState, "safety/override": String}, {"joy": Joy})
    bag = tmp_path / "takeover"
    procs = [
        start_node("sim_robot_node", namespace, "task:=panda-reach", "randomize:=false",
                   "overrides:=[sim.episode_length_s=60]"),  # no episode reset during the test
        start_node("safety_node", namespace, "robot:=panda"),
        start_node("recorder_node", namespace, f"topics:={recorded_topics('panda')!r}", f"output:={bag}",
                   "flush_period_s:=0.2"),
    ]
    gamepad = Gamepad(monitor.publishers["joy"])
    try:
        # The teleop joins a running deployment: the safety layer holds the arm, the recorder listens.
        wait_for(lambda: len(monitor.received[driver]) > 50, 60, "the safety layer's hold", procs)
        procs.append(start_node("teleop_node", namespace, "robot:=panda", "task:=panda-reach"))
        # Discovery between processes on this loaded machine can take seconds, so wait for proof that the
        # monitor and the recorder hear the teleop (its periodic teleop/active, in the bag too)...
        wait_for(lambda: monitor.received["teleop/active"] and f"{namespace}/teleop/active" in recorded_so_far(bag),
                 60, "teleop/active at the monitor and in the bag", procs)
        time.sleep(0.5)
        # ... and that the safety layer does: the human holds the deadman with the stick forward until the
        # driver gets the human's targets, then for a second more.
        gamepad.hold(deadman=True, sticks={LEFT_UP: 1.0})
        wait_for(lambda: monitor.received["teleop/command"] and any(
            np.array_equal(m.data, monitor.received["teleop/command"][-1][1].data)
            for _, m in monitor.received[driver][-20:]), 30, "the human's targets at the driver", procs)
        passing_since, before = time.time_ns(), monitor.received["joint_states"][-1][1].position
        time.sleep(1.0)
        gamepad.hold(deadman=False)
        wait_for(lambda: "end" in monitor.values("teleop/intervention"), 5, "the takeover's end", procs)
        after = monitor.received["joint_states"][-1][1].position  # before the safety layer's hold sags
        time.sleep(0.3)
    finally:
        gamepad.close()
        outputs = [stop(proc) for proc in reversed(procs)]
        monitor.close()
    log = "\n".join(outputs)
    assert [proc.returncode for proc in procs] == [0, 0, 0, 0], log
    overrides = {reason for m in monitor.values("safety/override") for reason in json.loads(m)["reasons"]}

    assert monitor.values("teleop/intervention") == ["start", "end"], log
    active = monitor.values("teleop/active")
    assert [value for i, value in enumerate(active) if i == 0 or value != active[i - 1]] == [False, True, False]
    teleop = monitor.received["teleop/command"]
    assert len(teleop) > 25, log  # about 50 in the second at 50 Hz
    values = np.array([m.data for _, m in teleop])
    assert values.shape[1] == PANDA_MODEL.nu and np.all(np.isfinite(values))
    last = teleop[-1][0]
    assert last - teleop[0][0] > 0.9e9  # for (at least) the second the deadman was held
    # Meanwhile the driver gets the human's targets: many pass the safety layer unchanged (each one until
    # the next arrives), the rest are its clamps of them, within the effort bound's lead (0.019 rad) of them
    # (the hold would fall behind: the human's targets move 0.1 m in the second).
    during = [np.array(m.data) for t, m in monitor.received[driver] if passing_since < t < last]
    distance_to_human = np.array([np.abs(values - command).max(axis=1).min() for command in during])
    assert len(during) > 100 and np.mean(distance_to_human == 0.0) > 0.2 and \
        np.percentile(distance_to_human, 90) < 0.02, (np.percentile(distance_to_human, [50, 90]), overrides, log)
    # The TCP moved forward (x), about as far as commanded (0.1 m/s for a second, plus up to the 5 cm the
    # target may lead the arm while the safety layer had not heard the teleop yet), and not sideways.
    (x0, y0, z0), _ = tcp_pose(before)
    (x1, y1, z1), _ = tcp_pose(after)
    assert 0.05 < x1 - x0 < 0.16, (x1 - x0, y1 - y0, z1 - z0, overrides)
    assert abs(y1 - y0) < 0.01 and abs(z1 - z0) < 0.03, (x1 - x0, y1 - y0, z1 - z0, overrides)

    for backend in ("rosbags", "mcap"):
        recorded: dict[str, list] = {}
        for m in read_messages(bag, backend):
            recorded.setdefault(m.topic.removeprefix(namespace + "/"), []).append((m.log_time, m.msg))
        events = recorded["teleop/intervention"]
        assert [m.data for _, m in events] == ["start", "end"], backend
        start_ns, end_ns = events[0][0], events[1][0]
        commands = [t for t, _ in recorded["teleop/command"]]
        assert len(commands) > 25 and start_ns <= commands[0] and commands[-1] <= end_ns, backend
        flags = [(t, bool(m.data)) for t, m in recorded["teleop/active"]]
        raised = [t for t, value in flags if value]
        assert raised and start_ns <= raised[0] and raised[-1] <= end_ns, backend
        assert any(not value and t >= end_ns - 10_000_000 for t, value in flags), backend  # false again at the end
        assert len(recorded["joint_states"]) > 50 and len(recorded[driver]) > 500, backend


def test_go2_takeover_replaces_the_simulated_operators_velocity_command():
    """teleop_node (Twist input) and sim_robot_node (go2), each its own process: while Twists arrive, cmd_vel
    carries the human's velocity (clipped to the training range) and the simulated operator stays quiet;
    when they stop, the takeover ends with a stand-still command and the operator resumes. teleop/active
    is never raised: the policy keeps the joints."""
    from geometry_msgs.msg import Twist
    from std_msgs.msg import Bool, String

    namespace = f"/teleop_test_{uuid.uuid4().hex[:6]}"
    monitor = Monitor(namespace, {"cmd_vel": Twist, "teleop/intervention": String, "teleop/active": Bool},
                      {"teleop/twist": Twist})
    procs = [start_node("sim_robot_node", namespace, "task:=go2-walk", "randomize:=false"),
             start_node("teleop_node", namespace, "robot:=go2", "input:=twist")]
    human = Twist()
    human.linear.x, human.linear.y, human.angular.z = 2.0, -0.2, 0.4
    sending = threading.Event()

    def send() -> None:  # a Twist stream at 20 Hz while `sending` is set
        while sending.wait():
            monitor.publishers["teleop/twist"].publish(human)
            time.sleep(0.05)

    threading.Thread(target=send, daemon=True).start()
    try:
        wait_for(lambda: monitor.received["cmd_vel"] and monitor.publishers["teleop/twist"].get_subscription_count()
                 and monitor.node.count_subscribers(f"{namespace}/teleop/intervention") >= 2, 60,
                 "the simulated operator's cmd_vel and teleop_node", procs)
        time.sleep(1.0)  # the other nodes' readers match too
        sending.set()
        wait_for(lambda: "start" in monitor.values("teleop/intervention"), 30, "the takeover's start", procs)
        time.sleep(1.5)
        sending.clear()
        wait_for(lambda: "end" in monitor.values("teleop/intervention"), 5, "the takeover's end", procs)
        time.sleep(0.5)
    finally:
        outputs = [stop(proc) for proc in procs]
        monitor.close()
    log = "\n".join(outputs)
    assert [proc.returncode for proc in procs] == [0, 0], log
    assert monitor.values("teleop/intervention") == ["start", "end"], log
    assert monitor.received["teleop/active"] == []
    end_at = monitor.received["teleop/intervention"][1][0]
    commands = [(t, (m.linear.x, m.linear.y, m.angular.z)) for t, m in monitor.received["cmd_vel"]]
    from_human = [t for t, value in commands if np.allclose(value, (1.0, -0.2, 0.4))]  # vx clipped to 1 m/s
    assert len(from_human) > 50, log  # 1.5 s at 50 Hz
    # Once the operator has heard of the takeover (a message of its may have been on the way; the teleop
    # started it only once it had the robot's state, so the two nodes had discovered each other), only the
    # human's command arrives, until the stand-still that ends it.
    window = [value for t, value in commands if from_human[0] + 300_000_000 < t <= from_human[-1]]
    assert window and all(np.allclose(value, (1.0, -0.2, 0.4)) for value in window)
    after = [value for t, value in commands if t > from_human[-1]]
    assert after[0] == (0.0, 0.0, 0.0), after[:3]
    assert len([t for t, _ in commands if t > end_at + 150_000_000]) >= 2  # the operator again, at 10 Hz


def test_drone_takeover_starts_from_the_setpoint_another_node_set():
    """teleop_node (cf2, joy) in its own process hears the task's setpoint on ``target_position`` from another node
    (this test, as a planner would) and starts the takeover's setpoint there, not where the drone is; when the
    human lets go, that setpoint holds. The test plays the drone's estimator (odometry and IMU, stamped now)."""
    from geometry_msgs.msg import PointStamped
    from nav_msgs.msg import Odometry
    from sensor_msgs.msg import Imu, Joy
    from std_msgs.msg import String

    namespace = f"/teleop_test_{uuid.uuid4().hex[:6]}"
    monitor = Monitor(namespace, {"target_position": PointStamped, "teleop/intervention": String},
                      {"target_position": PointStamped, "odom": Odometry, "imu": Imu, "joy": Joy})
    proc = start_node("teleop_node", namespace, "robot:=cf2")
    estimating = threading.Event()
    estimating.set()

    def estimator() -> None:  # a drone hovering at (0.3, 0, 1) with the clock's stamps, at 100 Hz
        while estimating.is_set():
            stamp = monitor.node.get_clock().now().to_msg()
            odometry, imu = Odometry(), Imu()
            odometry.header.stamp = imu.header.stamp = stamp
            odometry.pose.pose.position.x, odometry.pose.pose.position.z = 0.3, 1.0
            odometry.pose.pose.orientation.w = imu.orientation.w = 1.0
            monitor.publishers["odom"].publish(odometry)
            monitor.publishers["imu"].publish(imu)
            time.sleep(0.01)

    threading.Thread(target=estimator, daemon=True).start()
    pad = Gamepad(monitor.publishers["joy"])
    try:
        wait_for(lambda: monitor.publishers["target_position"].get_subscription_count() >= 1
                 and monitor.publishers["joy"].get_subscription_count() >= 1, 60, "teleop_node", [proc])
        setpoint = PointStamped()
        setpoint.point.x, setpoint.point.y, setpoint.point.z = 0.5, 0.1, 1.2  # 0.3 m from the drone
        for _ in range(10):
            monitor.publishers["target_position"].publish(setpoint)
            time.sleep(0.05)
        heard = len(monitor.received["target_position"])
        pad.hold(True)
        wait_for(lambda: "start" in monitor.values("teleop/intervention"), 10, "the takeover's start", [proc])
        time.sleep(0.3)
        pad.hold(False)
        wait_for(lambda: "end" in monitor.values("teleop/intervention"), 5, "the takeover's end", [proc])
        time.sleep(0.2)
    finally:
        pad.close()
        estimating.clear()
        output = stop(proc)
        monitor.close()
    assert proc.returncode == 0, output
    from_teleop = [(m.point.x, m.point.y, m.point.z) for _, m in monitor.received["target_position"][heard:]]
    assert len(from_teleop) >= 20, output  # 0.3 s at 100 Hz, and the hold on release
    np.testing.assert_allclose(from_teleop, [(0.5, 0.1, 1.2)] * len(from_teleop), atol=1e-9)  # sticks centred


def test_policy_node_freezes_its_command_correction_while_a_human_holds_the_command(tmp_path):
    """policy_node with a command correction, in its own process, hears ``teleop/intervention`` from another node:
    while a takeover holds the command the correction's offset is frozen, after the hand-back it moves again."""
    from std_msgs.msg import String

    from tests.workflows.test_command_correction import pilot_bundle

    bundle = pilot_bundle(tmp_path / "cc")
    namespace = f"/correction_test_{uuid.uuid4().hex[:6]}"
    monitor = Monitor(namespace, {}, {"teleop/intervention": String})
    proc = start_node("policy_node", namespace, f"bundle:={bundle}")
    try:
        wait_for(lambda: monitor.publishers["teleop/intervention"].get_subscription_count() >= 1, 60, "policy_node",
                 [proc])
        for event in ("start", "end"):
            monitor.publishers["teleop/intervention"].publish(String(data=event))
            time.sleep(0.5)
    finally:
        output = stop(proc)
        monitor.close()
    held, handed_back = "a human holds the task command: the command correction's offset is frozen", \
        "the human handed back"
    assert held in output and handed_back in output, output
    assert output.index(held) < output.index(handed_back)
