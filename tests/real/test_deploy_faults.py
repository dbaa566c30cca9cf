"""Deployment under faults a robot owner meets: a node that dies under ``robostack deploy`` (the safety node
finishes its fallback and stops last), a bundle that claims another robot (refused before anything starts),
a robot configuration edited after export (changes nothing), state whose header stamps are frozen, old or ahead
(stale), drivers that publish best effort (heard), and a stopped safety node (it lands / lies down first).

ROS 2 runs for real: separate processes over Fast DDS, discovery on this host only. Run as a script
(``python tests/real/test_deploy_faults.py fake-go2 NAMESPACE MODE``) this file is a fake go2 driver.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ.setdefault("ROS_DOMAIN_ID", str(200 + os.getpid() % 20))  # Fast DDS allows up to 232

from robostack import registry, sim  # noqa: E402, F401  (importing robostack.sim registers the robots)
from robostack.real.deploy_config import load_deploy_config  # noqa: E402
from robostack.bundle import HASHED_FILES, METADATA_FILE, ONNX_FILE, content_hash  # noqa: E402
from robostack.bundle.format import CRITIC_FILE  # noqa: E402
from robostack.bundle.write import embed_contract  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:module 'sre_:DeprecationWarning")

ROOT = Path(__file__).resolve().parents[2]
BUNDLES = ROOT / "bundles"
GO2 = registry.robot("go2")
GO2_STAND = GO2.load_config().home_joint_pos()


def resealed(tmp_path: Path, source: Path, name: str, edit) -> Path:
    """A copy of the bundle at ``source`` whose metadata ``edit`` changed, its hashes and embedded contract made
    to agree again: self-consistent, so only the checks against the robot can refuse it."""
    out = tmp_path / name
    shutil.copytree(source, out)
    meta = json.loads((out / METADATA_FILE).read_text())
    edit(meta)
    meta.pop("critic", None)  # the policy's graph changes below: a critic trained for the old one is not kept
    (out / CRITIC_FILE).unlink(missing_ok=True)
    embed_contract(out / ONNX_FILE, meta)
    meta["files"] = {f: hashlib.sha256((out / f).read_bytes()).hexdigest() for f in HASHED_FILES}
    meta["content_hash"] = content_hash(out, meta)
    (out / METADATA_FILE).write_text(json.dumps(meta, indent=2))
    return out


def children(pid: int) -> dict[str, int]:
    """The processes ``pid`` started, by the RoboStack node module they run (Linux /proc)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        module = next((a.decode() for a in argv if a.startswith(b"robostack.real.")), None)
        if ppid == pid and module:
            found[module.rsplit(".", 1)[1]] = int(entry.name)
    return found


# --------------------------------------------------------------------------- a node dies under robostack deploy


@pytest.mark.parametrize("task", ["cf2-hover", "go2-walk"])
def test_killing_the_policy_under_robostack_deploy_brings_the_robot_to_rest_and_stops_safety_last(task, tmp_path):
    """``robostack deploy --sim`` of a shipped bundle, recorded; once the policy drives, SIGKILL its process. The
    safety node's fallback runs to its end through ROS 2 (the drone hovers, lands and cuts its motors; the go2
    stands down, its base following the glide), the other nodes are stopped, the safety node last, and the command
    ends with one line that names the dead node, how it died and its log: exit code 1, no traceback."""
    env = {**os.environ, "ROS_DOMAIN_ID": str(221 + ["cf2-hover", "go2-walk"].index(task))}
    bag = tmp_path / "bag"
    deploy = subprocess.Popen([sys.executable, "-m", "robostack.cli", "deploy", "--task", task, "--policy",
                               str(BUNDLES / task), "--sim", "--duration", "120", "--record", str(bag)],
                              cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ended: dict[str, float] = {}
    try:
        deadline = time.monotonic() + 90
        while not list(tmp_path.glob("runs/deploy/*/sim_robot_node.log")) or "the simulation starts" not in \
                next(tmp_path.glob("runs/deploy/*/sim_robot_node.log")).read_text():
            assert deploy.poll() is None and time.monotonic() < deadline, deploy.communicate()
            time.sleep(0.1)
        time.sleep(3.0)  # the policy drives
        nodes = children(deploy.pid)
        assert {"policy_node", "safety_node", "sim_robot_node", "recorder_node"} <= set(nodes), nodes
        os.kill(nodes["policy_node"], signal.SIGKILL)
        killed = time.monotonic()
        while deploy.poll() is None and time.monotonic() < killed + 60:  # when each process ends
            for name, pid in nodes.items():
                if name not in ended and not Path(f"/proc/{pid}").exists():
                    ended[name] = time.monotonic() - killed
            time.sleep(0.01)
        out, err = deploy.communicate(timeout=30)
    finally:
        if deploy.poll() is None:
            deploy.kill()
    assert deploy.returncode == 1, err
    assert "Traceback" not in err, err
    line = err.strip().splitlines()[-1]
    assert line.startswith("robostack: deployment stopped: policy_node killed by SIGKILL (log: ") and \
        "policy_node.log)" in line and "fallback" in line and "completed; it stopped last" in line, err
    assert ended["safety_node"] >= max(t for name, t in ended.items() if name != "safety_node"), ended

    from robostack.real.bag import read_messages

    messages = list(read_messages(bag, "rosbags"))
    last_policy = max(m.log_time for m in messages if m.topic == "/policy/command")
    after = [m for m in messages if m.log_time > last_policy]
    phases = [json.loads(m.msg.data)["reasons"][0] for m in after if m.topic == "/safety/override"
              and json.loads(m.msg.data)["reasons"]]
    height = np.array([(m.log_time - last_policy, m.msg.pose.pose.position.z) for m in after if m.topic == "/odom"])
    driver = [m for m in after if m.topic in ("/motor_controller/commands", "/forward_position_controller/commands")]
    if task == "cf2-hover":
        order = [phases.index(p) for p in ("fallback: hover", "fallback: land", "fallback: motors off")]
        assert order == sorted(order), phases
        assert height[-1, 1] < 0.06 and np.all(np.asarray(driver[-1].msg.data) == 0.0)  # down, motors cut
    else:
        assert "fallback: stand down: support" in phases and "fallback: stand down" in phases
        assert height[-1, 1] < 0.12  # lying
        assert np.all(height[height[:, 0] < 0.9e9, 1] > 0.15)  # the base does not drop ahead of the glide
        np.testing.assert_allclose(driver[-1].msg.data, np.tile([0.0, 1.2, -2.7], 4), atol=1e-6)  # lying pose


# ------------------------------------------------------------------- a bundle made for another robot is refused


def one_error_line(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert "Traceback" not in err and len(lines) == 1, err
    return lines[0]


def test_a_bundle_that_claims_another_robot_is_refused_before_any_node_starts(tmp_path, capsys, monkeypatch):
    from robostack.cli import main
    from robostack.real.bundle_fit import BundleMismatch
    from robostack.real.graph import node_graph

    go2_walk = BUNDLES / "go2-walk"
    as_cf2 = resealed(tmp_path, go2_walk, "as-cf2", lambda m: m.update(robot="cf2"))
    as_cf2_hover = resealed(tmp_path, go2_walk, "as-cf2-hover", lambda m: m.update(robot="cf2", task="cf2-hover"))
    swapped = resealed(tmp_path, go2_walk, "swapped", lambda m: m.update(
        joint_names=m["joint_names"][3:6] + m["joint_names"][:3] + m["joint_names"][6:]))
    short = resealed(tmp_path, go2_walk, "short", lambda m: m.update(actuators=m["actuators"][:11]))
    monkeypatch.chdir(tmp_path)
    cases = [
        ("go2-walk", as_cf2, "says robot 'cf2', but its task 'go2-walk' runs on robot 'go2'"),
        ("cf2-hover", as_cf2_hover, "lists joints ['FR_hip_joint'"),
        ("go2-walk", swapped, "lists joints ['FL_hip_joint', 'FL_thigh_joint', 'FL_calf_joint', 'FR_hip_joint'"),
        ("go2-walk", short, "drives 11 actuators"),
    ]
    for task, bundle, why in cases:
        assert main(["deploy", "--task", task, "--policy", str(bundle), "--sim", "--episodes", "1"]) == 2
        line = one_error_line(capsys.readouterr().err)
        assert line.startswith("robostack: error: bundle ") and why in line, line
        if task == "cf2-hover":
            assert "but the cf2 has []" in line  # both sides named
    assert not (tmp_path / "runs").exists()  # nothing started
    with pytest.raises(BundleMismatch, match="drives robot 'go2'"):
        node_graph(go2_walk, robot="cf2")  # what a launch file's robot:=cf2 asks

    # each node refuses it on its own, before it publishes anything: one line, exit code 2
    env = {**os.environ, "ROS_DOMAIN_ID": "223"}
    runs = {
        "policy_node": ["-p", f"bundle:={as_cf2}"],
        "safety_node": ["-p", "robot:=go2", "-p", f"bundle:={as_cf2}"],
        "sim_robot_node": ["-p", f"bundle:={as_cf2}"],
        "teleop_node": ["-p", "robot:=go2", "-p", f"bundle:={as_cf2}"],
    }
    procs = {name: subprocess.Popen([sys.executable, "-m", f"robostack.real.{name}", "--ros-args", *args], env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name, args in runs.items()}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 2, (name, err)
        line = one_error_line(err)
        assert line.startswith(f"{name}: error: bundle {as_cf2}") and "'cf2'" in line and "'go2'" in line, line


# ------------------------------------------------------------ the robot configuration travels with the bundle


def test_editing_the_robot_yaml_after_export_changes_nothing_a_bundle_does(tmp_path, monkeypatch):
    """Gains and default pose edited in configs/robots/go2.yaml after export: the shipped bundle (which stores
    its robot configuration) gives the same commands for the same states; a bundle that stores none is
    refused, since the action map rebuilt from the edited file differs from its metadata."""
    import yaml

    from robostack import config
    from robostack.real.observation import ObservationError
    from robostack.real.policy_node import PolicyRunner

    class States:
        """A listener with a fixed sequence of fresh states."""

        def __init__(self):
            rng = np.random.default_rng(0)
            self.states = [dict(zip(GO2.joint_names, GO2_STAND + rng.normal(0, 0.05, 12))) for _ in range(5)]
            self.k = -1

        def staleness(self, now, timeout_s):
            return None

        def state(self):
            from robostack.real.robot_state import RobotState

            self.k += 1
            joints = self.states[self.k]
            return RobotState(joints, dict.fromkeys(joints, 0.1), np.array([0.0, 0.0, 0.28]),
                              np.array([1.0, 0.0, 0.0, 0.0]), np.array([0.2, 0.0, 0.0]), np.zeros(3))

    def commands(bundle: Path) -> np.ndarray:
        runner, states = PolicyRunner(str(bundle)), States()
        return np.array([runner.tick(states)[0] for _ in range(5)])

    legacy = resealed(tmp_path, BUNDLES / "go2-walk", "legacy", lambda m: m["task_config"].pop("robot"))
    before = commands(BUNDLES / "go2-walk")
    np.testing.assert_array_equal(commands(legacy), before)  # the same numbers while the file is unchanged

    edited = tmp_path / "configs"
    shutil.copytree(ROOT / "configs", edited)
    robot_yaml = edited / "robots" / "go2.yaml"
    robot = yaml.safe_load(robot_yaml.read_text())
    robot.update(kp=60.0, kd=1.0, default_leg_pos=[0.1, 0.8, -1.6])
    robot_yaml.write_text(yaml.safe_dump(robot))
    monkeypatch.setattr(config, "_config_roots", lambda: [edited])
    assert registry.robot("go2").load_config().kp == 60.0  # the edit is in effect
    np.testing.assert_array_equal(commands(BUNDLES / "go2-walk"), before)
    with pytest.raises(ObservationError, match="actuators, default_joint_pos, pd_gains, action differ from what the "
                                               "task rebuilt"):
        PolicyRunner(str(legacy))


# ------------------------------------------------------------------------- state freshness from header stamps


class FakeNode:
    """Stands in for an rclpy node: keeps the listener's callbacks; its clock reads ``now_ns``."""

    def __init__(self):
        self.callbacks, self.nanoseconds = {}, time.time_ns()

    def create_subscription(self, msg_type, topic, callback, qos):
        self.callbacks[topic] = callback

    def get_clock(self):
        return self

    def now(self):
        return self


def imu_odom(stamp_ns: int):
    from builtin_interfaces.msg import Time
    from nav_msgs.msg import Odometry
    from sensor_msgs.msg import Imu

    imu, odom = Imu(), Odometry()
    for msg in (imu, odom):
        msg.header.stamp = Time(sec=stamp_ns // 10**9, nanosec=stamp_ns % 10**9)
    imu.orientation.w = odom.pose.pose.orientation.w = 1.0
    return imu, odom


@pytest.mark.parametrize("fault, problem", [
    ("frozen", "header stamp repeated"),
    ("backwards", "header stamp went backwards"),
    ("old", None),
    ("ahead", "ahead of this machine's clock (tolerance 0.02 s): the clocks disagree"),
    ("zero", "header stamp is zero"),
])
def test_state_age_comes_from_header_stamps(fault, problem):
    """A drone's state arriving every 10 ms: fresh while its stamps advance with the clock; stale when they
    freeze, go backwards, are 10 s old or 1 s ahead of this clock (then no message of it is taken), or are zero
    (a driver that does not stamp), whatever the arrival times say; the reason names the topic."""
    from robostack.real.state import StateListener

    cfg = load_deploy_config("cf2")
    node = FakeNode()
    listener = StateListener(node, cfg)
    start = node.nanoseconds
    for k in range(5 * (fault != "old")):  # fresh (an old stamp after a fresh one would be a backward one)
        for msg, topic in zip(imu_odom(node.nanoseconds), ("imu", "odom")):
            node.callbacks[topic](msg)
    assert fault == "old" or listener.staleness(time.monotonic(), cfg.state_timeout_s) is None
    stamps = {"frozen": lambda k: start, "backwards": lambda k: start - k * 10**7,
              "old": lambda k: node.nanoseconds - 10 * 10**9 - k, "ahead": lambda k: node.nanoseconds + 10**9,
              "zero": lambda k: 0}[fault]
    for k in range(1, 11):  # 100 ms of messages arriving on time, each with the faulty stamp
        time.sleep(0.01)
        node.nanoseconds = time.time_ns()
        for msg, topic in zip(imu_odom(stamps(k)), ("imu", "odom")):
            node.callbacks[topic](msg)
    why = listener.staleness(time.monotonic(), cfg.state_timeout_s)
    assert why is not None and why.startswith("state is stale"), why
    if problem is not None:
        assert problem in why and "odom:" in why, why
    else:
        assert listener.age() > 9.0  # taken: its stamp says how old it is


def test_a_driver_that_does_not_stamp_is_read_by_arrival_when_configured(tmp_path):
    from dataclasses import replace

    from robostack.real.state import StateListener

    cfg = load_deploy_config("cf2")
    cfg.topics.imu = replace(cfg.topics.imu, stamp="arrival")
    cfg.topics.odometry = replace(cfg.topics.odometry, stamp="arrival")
    node = FakeNode()
    listener = StateListener(node, cfg)
    for msg, topic in zip(imu_odom(0), ("imu", "odom")):
        node.callbacks[topic](msg)
    assert listener.staleness(time.monotonic(), cfg.state_timeout_s) is None and not listener.problems


# ---------------------------------------------- a fake go2 driver over DDS: frozen stamps, QoS, stopping safety


def fake_go2(namespace: str, mode: str) -> None:
    """A go2 driver publishing best effort (the sensor data profile) at 200 Hz, standing; joint states follow
    the last command. ``mode`` "frozen": from SIGUSR1 on, every message carries the same stamp (a simulator that
    hung and replays its last sample)."""
    import rclpy
    from nav_msgs.msg import Odometry
    from rclpy.executors import ExternalShutdownException
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Imu, JointState
    from std_msgs.msg import Float64MultiArray

    rclpy.init(args=["--ros-args", "-r", f"__ns:={namespace}"])
    node = rclpy.create_node("fake_go2")
    positions = list(GO2_STAND)
    publishers = [node.create_publisher(t, name, qos_profile_sensor_data)
                  for t, name in ((Imu, "imu"), (Odometry, "odom"), (JointState, "joint_states"))]
    freeze, frozen = [], []
    signal.signal(signal.SIGUSR1, lambda *_: freeze.append(True))

    def publish() -> None:
        stamp = node.get_clock().now().to_msg()
        if mode == "frozen" and freeze:
            frozen[:] = frozen or [stamp]
            stamp = frozen[0]
        imu, odom = Imu(), Odometry()
        imu.orientation.w = odom.pose.pose.orientation.w = 1.0
        odom.pose.pose.position.z = 0.29
        joints = JointState(name=list(GO2.joint_names), position=list(positions), velocity=[0.0] * 12,
                            effort=[0.0] * 12)
        for publisher, msg in zip(publishers, (imu, odom, joints)):
            msg.header.stamp = stamp
            publisher.publish(msg)

    node.create_subscription(Float64MultiArray, "forward_position_controller/commands",
                             lambda msg: positions.__setitem__(slice(None), msg.data), 10)
    node.create_timer(0.005, publish)
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass


class Watch:
    """A node beside the graph: keeps the driver's and the policy's commands and the overrides with their
    receive times (s, monotonic here), and can publish policy commands."""

    def __init__(self, namespace: str):
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from std_msgs.msg import Float64MultiArray, String

        self.rclpy, self.context = rclpy, rclpy.Context()
        rclpy.init(context=self.context, args=["--ros-args", "-r", f"__ns:={namespace}"])
        self.node = rclpy.create_node("watch", context=self.context)
        self.driver, self.policy, self.overrides = [], [], []
        self.node.create_subscription(Float64MultiArray, "forward_position_controller/commands",
                                      lambda m: self.driver.append((time.monotonic(), np.array(m.data))), 1000)
        self.node.create_subscription(Float64MultiArray, "policy/command",
                                      lambda m: self.policy.append(time.monotonic()), 1000)
        self.node.create_subscription(String, "safety/override", lambda m: self.overrides.append(
            (time.monotonic(), json.loads(m.data)["reasons"])), 1000)
        self.command = self.node.create_publisher(Float64MultiArray, "policy/command", 10)
        self.Float64MultiArray = Float64MultiArray
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        threading.Thread(target=self.executor.spin, daemon=True).start()

    def close(self):
        self.executor.shutdown()
        self.node.destroy_node()
        self.rclpy.try_shutdown(context=self.context)


def wait(condition, timeout: float, what: str, procs=()) -> None:
    end = time.monotonic() + timeout
    while not condition():
        for proc in procs:
            assert proc.poll() is None, f"{what}: a process exited: {proc.communicate()}"
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.02)


def node(name: str, namespace: str, *params: str) -> subprocess.Popen:
    args = [sys.executable, "-m", f"robostack.real.{name}", "--ros-args", "-r", f"__ns:={namespace}"]
    for param in params:
        args += ["-p", param]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_frozen_stamps_stop_the_policy_and_the_safety_layer_falls_back_over_dds():
    """The shipped go2-walk bundle's policy_node and safety_node against a driver that publishes best effort
    (heard: policy commands flow), then freezes its stamps while still publishing at 200 Hz: the policy stops
    acting and says why, the safety layer falls back for a stale state, its diagnostics name the frozen stamps."""
    namespace = f"/frozen_{uuid.uuid4().hex[:6]}"
    watch = Watch(namespace)
    procs = [node("policy_node", namespace, f"bundle:={BUNDLES / 'go2-walk'}", "trigger:=state"),
             node("safety_node", namespace, "robot:=go2", f"bundle:={BUNDLES / 'go2-walk'}"),
             subprocess.Popen([sys.executable, __file__, "fake-go2", namespace, "frozen"])]
    try:
        wait(lambda: len(watch.policy) > 50, 60, "the policy acting on best-effort state", procs[:2])
        procs[2].send_signal(signal.SIGUSR1)
        frozen_at = time.monotonic()
        wait(lambda: any("state stale" in " ".join(r) for t, r in watch.overrides if t > frozen_at), 10,
             "the safety layer's stale-state fallback")
        time.sleep(1.6)  # the policy node checks every 0.5 s and says why once a second
        acted_after = [t for t in watch.policy if t > time.monotonic() - 1.5]
    finally:
        outputs = []
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
            outputs.append(proc.communicate(timeout=20)[0] or "")
        watch.close()
    assert not acted_after, len(acted_after)  # the policy no longer acts on a replayed sample
    assert "not acting: state is stale" in outputs[0] and "header stamp repeated" in outputs[0], outputs[0][-2000:]
    assert procs[1].returncode == 0, outputs[1]


def test_stopping_the_safety_node_stands_the_go2_down_first_sigterm_at_once():
    """SIGINT to a safety node that drives the go2: it takes no more commands, the stand-down runs to the
    lying pose, then it exits 0 (2.3 s of fallback); a second one told SIGTERM exits at once."""
    namespace = f"/stop_{uuid.uuid4().hex[:6]}"
    watch = Watch(namespace)
    driver = subprocess.Popen([sys.executable, __file__, "fake-go2", namespace, "normal"])
    safety = node("safety_node", namespace, "robot:=go2")
    limits = load_deploy_config("go2").safety["quadruped"]
    glide_s = limits["support_s"] + limits["stand_down_s"]
    try:
        for graceful in (True, False):
            pose = GO2_STAND + np.tile([0.0, 0.05, -0.05], 4)
            end = time.monotonic() + 60
            while not any(np.allclose(v, pose) for _, v in watch.driver[-5:]):
                watch.command.publish(watch.Float64MultiArray(data=pose.tolist()))
                assert time.monotonic() < end and safety.poll() is None, safety.communicate()
                time.sleep(0.01)
            stopped = time.monotonic()
            safety.send_signal(signal.SIGINT if graceful else signal.SIGTERM)
            while safety.poll() is None:  # the policy goes on commanding: not taken any more
                watch.command.publish(watch.Float64MultiArray(data=pose.tolist()))
                time.sleep(0.01)
            took = time.monotonic() - stopped
            out = safety.communicate()[0]
            assert safety.returncode == 0, out
            if graceful:
                assert glide_s - 0.1 < took < glide_s + 3.0, took
                np.testing.assert_allclose(watch.driver[-1][1], np.tile([0.0, 1.2, -2.7], 4), atol=1e-9)
                assert "finishing the fallback first" in out
                watch.driver.clear()
                safety = node("safety_node", namespace, "robot:=go2")
            else:
                assert took < 1.5, took
    finally:
        for proc in (safety, driver):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.communicate(timeout=20)
        watch.close()


def test_the_recorder_hears_best_effort_state_it_is_told_of(tmp_path):
    """A driver's best-effort topic: recorded when listed in best_effort_topics (as robostack deploy lists the
    state topics), unheard by the recorder's default reliable subscription."""
    import rclpy
    from rclpy.qos import qos_profile_sensor_data
    from std_msgs.msg import String

    from robostack.real.bag import read_messages

    namespace = f"/rec_{uuid.uuid4().hex[:6]}"
    recorders = [node("recorder_node", namespace, "topics:=['state:std_msgs/msg/String', "
                                                  "'other:std_msgs/msg/String']", f"output:={tmp_path / 'bag'}",
                      *(["best_effort_topics:=['state']"])),
                 node("recorder_node", namespace, "topics:=['state:std_msgs/msg/String']",
                      f"output:={tmp_path / 'deaf'}")]
    context = rclpy.Context()
    rclpy.init(context=context, args=["--ros-args", "-r", f"__ns:={namespace}"])
    talker = rclpy.create_node("talker", context=context)
    publisher = talker.create_publisher(String, "state", qos_profile_sensor_data)
    try:
        wait(lambda: talker.count_subscribers("state") >= 2, 60, "both recorders", recorders)
        for k in range(100):
            publisher.publish(String(data=str(k)))
            time.sleep(0.01)
        time.sleep(0.5)
    finally:
        for proc in recorders:
            proc.send_signal(signal.SIGINT)
            proc.communicate(timeout=20)
        talker.destroy_node()
        rclpy.try_shutdown(context=context)
    heard = [m for m in read_messages(tmp_path / "bag", "rosbags") if m.topic == f"{namespace}/state"]
    assert len(heard) >= 90
    assert not list(read_messages(tmp_path / "deaf", "rosbags"))


if __name__ == "__main__" and sys.argv[1:2] == ["fake-go2"]:
    fake_go2(sys.argv[2], sys.argv[3])


def test_subscribers_that_die_do_not_stall_the_safety_loop(tmp_path):
    """SIGKILL the recorder (it subscribes to every topic the safety node publishes), then the policy (the safety
    node's status reader): the safety node keeps sending driver commands at its rate, with no gap a dead reader's
    lost acknowledgements could cause (a reliable, transient-local writer once stalled it for 0.4-0.6 s)."""
    from robostack.real.graph import node_graph, started_graph

    namespace = f"/deadsub_{uuid.uuid4().hex[:6]}"
    watch = Watch(namespace)
    nodes = node_graph(ROOT / "bundles" / "go2-walk", sim=True, randomize=False, record=tmp_path / "bag")
    try:
        with started_graph(nodes, log_dir=tmp_path, namespace=namespace) as procs:
            wait(lambda: len(watch.policy) >= 100, 60, "2 s of the policy walking", procs.values())
            procs["recorder_node"].send_signal(signal.SIGKILL)
            time.sleep(1.0)
            procs["policy_node"].send_signal(signal.SIGKILL)
            killed = time.monotonic()
            time.sleep(2.0)
            assert procs["safety_node"].poll() is None
    finally:
        watch.close()
    times = np.array([t for t, _ in watch.driver])
    gaps = np.diff(times[times > killed - 1.5])
    assert len(gaps) > 1000 and gaps.max() < 0.05, (len(gaps), gaps.max())
    assert any("command stale" in " ".join(reasons) for t, reasons in watch.overrides if t > killed)
