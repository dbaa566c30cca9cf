"""sim_robot_node over real DDS: the node runs as its own process (``python -m robostack.real.sim_robot_node``)
and this process talks to it with rclpy, as a policy node would.

Discovery stays on this host (``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST``) and every node gets its own
namespace, so parallel runs do not see each other's topics.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
# 215-232: valid on Linux and unused by the other ROS tests here, whose nodes would crowd our discovery
os.environ.setdefault("ROS_DOMAIN_ID", str(215 + os.getpid() % 18))

rclpy = pytest.importorskip("rclpy")

from geometry_msgs.msg import PointStamped, Twist  # noqa: E402
from nav_msgs.msg import Odometry  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.qos import DurabilityPolicy, QoSProfile  # noqa: E402
from rclpy.serialization import serialize_message  # noqa: E402
from rosbags.typesys import Stores, get_typestore  # noqa: E402
from sensor_msgs.msg import Imu, JointState  # noqa: E402
from std_msgs.msg import Float64MultiArray, String  # noqa: E402

from robostack.bundle import METADATA_FILE, content_hash  # noqa: E402
from robostack.config import config_path, load_yaml  # noqa: E402

# rclpy's type support imports rosidl_parser -> lark, which imports the deprecated sre_* modules
pytestmark = pytest.mark.filterwarnings("ignore:module 'sre_:DeprecationWarning")

ROOT = Path(__file__).resolve().parents[2]
RUN = uuid.uuid4().hex[:6]
GO2_JOINTS = [f"{leg}_{part}_joint" for leg in ("FR", "FL", "RR", "RL") for part in ("hip", "thigh", "calf")]
GO2_HOME = [0.0, 0.9, -1.8] * 4
PANDA_JOINTS = [f"joint{i}" for i in range(1, 8)] + ["finger_joint1", "finger_joint2"]
DRIVER_COMMAND = "forward_position_controller/commands"


def start_node(namespace: str, *params: str) -> subprocess.Popen:
    args = [sys.executable, "-m", "robostack.real.sim_robot_node", "--ros-args", "-r", f"__ns:={namespace}"]
    for param in params:
        args += ["-p", param]
    return subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@contextlib.contextmanager
def running_node(namespace: str, *params: str) -> Iterator[subprocess.Popen]:
    """``start_node``, killed on the way out if the test left it running."""
    proc = start_node(namespace, *params)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def stop_node(proc: subprocess.Popen, timeout: float = 10.0) -> tuple[int, str, str]:
    """SIGINT (a clean stop), then the exit code, stdout and stderr."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def assert_bag_readable(msg, typename: str) -> None:
    """rosbags rejects rclpy-serialized messages with empty arrays; every published message must pass."""
    get_typestore(Stores.ROS2_JAZZY).deserialize_cdr(serialize_message(msg), typename)


def summary_of(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


class Probe:
    """This process's side of the conversation: subscriptions that keep (arrival time, message)."""

    def __init__(self, node, executor):
        self.node = node
        self.executor = executor
        self.received: dict[str, list] = {}

    def listen(self, msg_type, topic: str, qos=10) -> list:
        messages = self.received.setdefault(topic, [])
        self.node.create_subscription(msg_type, topic, lambda msg: messages.append((time.monotonic(), msg)), qos)
        return messages

    def spin_for(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.executor.spin_once(timeout_sec=0.01)

    def spin_until(self, condition, timeout: float, proc: subprocess.Popen | None = None) -> None:
        end = time.monotonic() + timeout
        while not condition():
            if proc is not None and proc.poll() is not None:
                _, err = proc.communicate()
                pytest.fail(f"sim_robot_node exited with {proc.returncode}: {err[-2000:]}")
            assert time.monotonic() < end, "timed out waiting for sim_robot_node"
            self.executor.spin_once(timeout_sec=0.01)


@pytest.fixture(scope="module")
def probe():
    context = rclpy.Context()
    rclpy.init(context=context)
    node = rclpy.create_node(f"sim_robot_probe_{RUN}", context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    yield Probe(node, executor)
    executor.shutdown()
    node.destroy_node()
    rclpy.shutdown(context=context)


@pytest.fixture(scope="module")
def go2_namespace():
    """One go2 node for the state test and the bad-command test (starting one costs seconds)."""
    namespace = f"/sim_go2_{RUN}"
    with running_node(namespace, "task:=go2-walk", "seed:=3") as proc:
        yield namespace, proc


def test_go2_publishes_driver_topics_at_the_control_rate_and_stands(probe, go2_namespace):
    namespace, proc = go2_namespace
    joints = probe.listen(JointState, f"{namespace}/joint_states")
    imu = probe.listen(Imu, f"{namespace}/imu")
    odom = probe.listen(Odometry, f"{namespace}/odom")
    cmd_vel = probe.listen(Twist, f"{namespace}/cmd_vel")
    probe.spin_until(lambda: joints and imu and odom, timeout=30, proc=proc)
    start = time.monotonic()
    probe.spin_for(1.0)
    window = [m for t, m in joints if t >= start]
    assert 40 <= len(window) <= 60, f"{len(window)} joint states in 1 s, expected 50 (50 Hz control)"
    assert abs(len([1 for t, _ in odom if t >= start]) - len(window)) <= 2

    msg = joints[-1][1]
    assert list(msg.name) == GO2_JOINTS
    assert len(msg.position) == len(msg.velocity) == len(msg.effort) == 12
    assert np.allclose(msg.position, GO2_HOME, atol=0.35)
    assert any(abs(e) > 0.1 for e in msg.effort), "the servos hold the robot up"
    assert msg.header.stamp.sec > 0
    q = imu[-1][1].orientation
    assert math.isclose(q.x ** 2 + q.y ** 2 + q.z ** 2 + q.w ** 2, 1.0, rel_tol=1e-6)
    assert imu[-1][1].linear_acceleration.z > 8.0, "an accelerometer at rest reads +g"
    assert odom[-1][1].header.frame_id == "odom" and odom[-1][1].child_frame_id == "base_link"
    heights = [m.pose.pose.position.z for t, m in odom if t >= start]
    assert 0.2 < min(heights) and max(heights) < 0.33, f"base height {min(heights):.3f}..{max(heights):.3f} m"
    assert cmd_vel, "the operator's velocity command is published"
    for message, typename in ((msg, "sensor_msgs/msg/JointState"), (imu[-1][1], "sensor_msgs/msg/Imu"),
                              (odom[-1][1], "nav_msgs/msg/Odometry")):
        assert_bag_readable(message, typename)


def test_bad_driver_commands_are_ignored_and_the_last_good_one_is_held(probe, go2_namespace):
    namespace, proc = go2_namespace
    joints = probe.received[f"{namespace}/joint_states"]
    publisher = probe.node.create_publisher(Float64MultiArray, f"{namespace}/{DRIVER_COMMAND}", 10)
    probe.spin_until(lambda: publisher.get_subscription_count() > 0, timeout=10, proc=proc)
    good = list(GO2_HOME)
    good[0] = 0.25  # FR hip out
    for _ in range(3):  # a policy streams commands; a few cover a first one sent before the match completed
        publisher.publish(Float64MultiArray(data=good))
        probe.spin_for(0.02)
    probe.spin_for(0.5)
    held = joints[-1][1].position[0]
    assert held > 0.08, f"the FR hip moved out to {held:.3f} rad (the PD servo sags under the robot's weight)"

    wrong_length = [-0.3] * 11
    not_finite = list(good)
    not_finite[0], not_finite[5] = float("nan"), float("inf")
    for _ in range(5):
        publisher.publish(Float64MultiArray(data=wrong_length))
        publisher.publish(Float64MultiArray(data=not_finite))
        probe.spin_for(0.05)
    probe.spin_for(0.4)
    assert joints[-1][1].position[0] > 0.08, "still the good command's hip target, not the wrong-length -0.3"
    assert all(math.isfinite(p) for p in joints[-1][1].position)

    code, out, err = stop_node(proc)
    assert code == 0, err[-2000:]
    summary = summary_of(out)
    assert summary["rejected_commands"] == 10
    assert summary["task"] == "go2-walk" and summary["episodes"] == 0
    complaints = [line for line in err.splitlines() if "driver command ignored" in line]
    assert any("wrong length: 11 values, expected 12" in line for line in complaints)
    assert any("non-finite values (NaN or inf) at indices [0, 5]" in line for line in complaints)
    assert len(complaints) <= 4, "errors are throttled per kind of problem"


def test_a_paused_panda_starts_when_driven_and_moves_to_a_held_target_after_the_latency(probe):
    """Started paused, the robot publishes its still initial state and drops driver commands until the
    policy has spoken and a driver command follows (the safety layer is up); that command then moves the
    joint after the injected latency."""
    namespace = f"/sim_panda_{RUN}"
    latency_s = 0.3
    with running_node(namespace, "task:=panda-reach", "randomize:=false", f"latency_s:={latency_s}",
                      "overrides:=[sim.episode_length_s=30]", "start_paused:=true") as proc:
        joints = probe.listen(JointState, f"{namespace}/joint_states")
        publisher = probe.node.create_publisher(Float64MultiArray, f"{namespace}/{DRIVER_COMMAND}", 10)
        policy = probe.node.create_publisher(Float64MultiArray, f"{namespace}/policy/command", 10)
        probe.spin_until(lambda: joints and publisher.get_subscription_count() > 0
                         and policy.get_subscription_count() > 0, timeout=30, proc=proc)
        first = joints[-1][1]
        assert list(first.name) == PANDA_JOINTS and len(first.effort) == 9
        home = np.array(first.position)
        target = home.copy()
        target[0] += 0.4
        paused_from = len(joints)
        publisher.publish(Float64MultiArray(data=target.tolist()))  # dropped: no policy yet (a fallback)
        probe.spin_for(0.2)
        policy.publish(Float64MultiArray(data=target.tolist()))  # the policy speaks; no driver command yet
        probe.spin_for(latency_s + 0.3)
        paused = [np.array(m.position) for _, m in joints[paused_from:]]
        assert len(paused) >= 30, "a paused robot still publishes its state at the control rate"
        assert all(np.array_equal(q, home) for q in paused), "paused: the state does not move"
        sent = time.monotonic()
        for _ in range(3):  # then silence: the driver holds the last command
            publisher.publish(Float64MultiArray(data=target.tolist()))
            probe.spin_for(0.02)
        probe.spin_until(lambda: joints[-1][1].position[0] > home[0] + 0.02, timeout=3, proc=proc)
        delay = joints[-1][0] - sent
        assert latency_s - 0.05 <= delay <= latency_s + 0.3, f"the joint started moving {delay:.3f} s after the command"
        probe.spin_until(lambda: abs(joints[-1][1].position[0] - target[0]) < 0.03, timeout=3, proc=proc)
        assert np.allclose(joints[-1][1].position[1:7], home[1:7], atol=0.05), "the other joints hold"
        code, out, err = stop_node(proc)
        assert code == 0, err[-2000:]
        assert summary_of(out)["rejected_commands"] == 0


def test_a_paused_rehearsal_waits_until_the_recorder_hears_what_it_awaits(probe):
    """``await_recorded``: while the recorder (here the test, on ``recorder/status``) does not yet hear the awaited
    topic, the robot publishes no state (a policy would act on a robot dropping its commands) and commands do not
    start the simulation; once it does, the state comes and the next command starts it. So a bag never misses an
    episode's first takeover to slow discovery."""
    namespace = f"/sim_await_{RUN}"
    with running_node(namespace, "task:=panda-reach", "randomize:=false", "start_paused:=true",
                      "await_recorded:=[teleop/intervention]") as proc:
        joints = probe.listen(JointState, f"{namespace}/joint_states")
        driver = probe.node.create_publisher(Float64MultiArray, f"{namespace}/{DRIVER_COMMAND}", 10)
        policy = probe.node.create_publisher(Float64MultiArray, f"{namespace}/policy/command", 10)
        recorder = probe.node.create_publisher(String, f"{namespace}/recorder/status",
                                               QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL))
        found = (driver.get_subscription_count, policy.get_subscription_count, recorder.get_subscription_count,
                 lambda: probe.node.count_publishers(f"{namespace}/joint_states"))
        probe.spin_until(lambda: all(count() > 0 for count in found), timeout=30, proc=proc)
        target = [0.4] + [0.0] * 8

        def drive(seconds: float) -> None:
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                policy.publish(Float64MultiArray(data=target))
                driver.publish(Float64MultiArray(data=target))
                probe.spin_for(0.02)

        recorder.publish(String(data=json.dumps({"heard": ["policy/command"]})))  # not yet the takeovers
        drive(0.6)
        assert not joints, "the recorder does not hear it all: no state yet"
        recorder.publish(String(data=json.dumps({"heard": ["policy/command", "teleop/intervention"]})))
        probe.spin_until(lambda: joints, timeout=3, proc=proc)
        home = np.array(joints[0][1].position)
        drive(0.6)
        probe.spin_until(lambda: joints[-1][1].position[0] > home[0] + 0.02, timeout=3, proc=proc)
        code, _, err = stop_node(proc)
        assert code == 0, err[-2000:]
        assert "waiting for the recorder to hear ['teleop/intervention']" in err, err[-2000:]


@pytest.fixture
def short_cf2_bundle(tmp_path):
    """The shipped cf2-hover bundle, its task config changed to 2 s episodes that start still at the target
    (so hover thrust alone holds them there to the end), content hash redone. Two episodes outlast a slow
    discovery (seen here: up to ~2.5 s), and their reports are transient-local, so none is missed."""
    shipped = ROOT / "bundles" / "cf2-hover"
    if not shipped.is_dir():
        pytest.skip("bundles/cf2-hover is not shipped")
    bundle = tmp_path / "cf2-short"
    shutil.copytree(shipped, bundle)
    metadata = json.loads((bundle / METADATA_FILE).read_text())
    task_config = load_yaml(config_path("tasks", "cf2-hover.yaml"))
    task_config["sim"]["episode_length_s"] = 2.0
    task_config["start"] = {key: 0.0 for key in task_config["start"]}
    metadata["task_config"] = task_config
    metadata["content_hash"] = content_hash(bundle, metadata)
    (bundle / METADATA_FILE).write_text(json.dumps(metadata))
    return bundle


def test_a_run_of_episodes_ends_with_a_json_summary(probe, short_cf2_bundle):
    namespace = f"/sim_cf2_{RUN}"
    episodes = probe.listen(String, f"{namespace}/sim/episode",
                            QoSProfile(depth=10, durability=DurabilityPolicy.TRANSIENT_LOCAL))
    targets = probe.listen(PointStamped, f"{namespace}/target_position")
    with running_node(namespace, f"bundle:={short_cf2_bundle}", "episodes:=2", "randomize:=false") as proc:
        probe.spin_until(lambda: proc.poll() is not None, timeout=40)  # it stops by itself
        out, err = proc.communicate(timeout=5)
    assert proc.returncode == 0, err[-2000:]
    summary = summary_of(out)
    assert summary["task"] == "cf2-hover" and summary["episodes"] == 2
    assert summary["mean_length"] == 200, "episodes follow the bundle's task config (2 s at 100 Hz)"
    assert summary["success_rate"] == 1.0, "hover thrust holds a still start at the target"
    assert summary["steps"] == 400 and summary["control_rate_hz"] == pytest.approx(100.0)
    probe.spin_until(lambda: len(episodes) == 2, timeout=5)
    reports = [json.loads(m.data) for _, m in episodes]
    assert [r["episode"] for r in reports] == [0, 1]
    assert {"success", "return", "length"} <= set(reports[0])
    assert set(reports[0]["metrics"]) == set(summary["metrics"]) == {"position_error"}
    assert targets and targets[-1][1].header.frame_id == "odom"
    assert [targets[-1][1].point.x, targets[-1][1].point.y, targets[-1][1].point.z] == [0.0, 0.0, 1.0]
    assert err.count("episode end") == 2


def test_a_takeover_held_across_an_episodes_end_does_not_drive_the_next_episode(probe, short_cf2_bundle):
    """A human in control when an episode ends (the simulated one lets go a tick later) still sends that episode's
    commands: the next episode holds its reset controls until the human lets go. Here the human cuts the motors:
    the drone falls in the first episode and hovers through the second (2 s episodes starting still at the
    target: hover thrust holds them)."""
    namespace = f"/sim_stale_{RUN}"
    with running_node(namespace, f"bundle:={short_cf2_bundle}", "episodes:=2", "randomize:=false") as proc:
        intervention = probe.node.create_publisher(String, f"{namespace}/teleop/intervention", 10)
        human = probe.node.create_publisher(Float64MultiArray, f"{namespace}/teleop/command", 10)
        driver = probe.node.create_publisher(Float64MultiArray, f"{namespace}/motor_controller/commands", 10)
        probe.spin_until(lambda: min(intervention.get_subscription_count(), human.get_subscription_count(),
                                     driver.get_subscription_count()) > 0, timeout=30, proc=proc)
        intervention.publish(String(data="start"))
        probe.spin_for(0.1)
        while proc.poll() is None:  # the human holds on, motors off, to the end
            human.publish(Float64MultiArray(data=[0.0] * 4))
            driver.publish(Float64MultiArray(data=[0.0] * 4))
            probe.spin_for(0.01)
        out, err = proc.communicate(timeout=5)
    assert proc.returncode == 0, err[-2000:]
    episodes = [json.loads(line.split("episode end: ", 1)[1]) for line in err.splitlines() if "episode end: " in line]
    assert [e["success"] for e in episodes] == [False, True], episodes


def test_a_bad_bundle_or_task_exits_2_with_one_line(tmp_path):
    missing = start_node(f"/sim_bad_{RUN}", f"bundle:={tmp_path / 'no-such-bundle'}")
    unknown = start_node(f"/sim_bad_{RUN}", "task:=no-such-task")
    for proc, expected in ((missing, "no such directory"), (unknown, "unknown task 'no-such-task'")):
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 2
        assert out == ""
        assert len(err.strip().splitlines()) == 1 and expected in err, err
