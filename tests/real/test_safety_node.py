"""safety_node over real DDS with a hovering cf2's state: a command reaches the driver when it arrives, not at
the next tick, and ``safety/override`` says what changes instead of repeating itself every period.

The node runs as its own process; this process publishes the state (``robostack.real.state.state_messages``
of the model's hovering keyframe) and the policy's commands, and monitors the driver topic and the overrides
with the middleware's receive stamps. Discovery stays on this host, in a domain picked from the pid and a
namespace per test. The state and command watchdogs get 0.5 s here: these tests are about forwarding and
reporting, and this loaded 2-core machine can pause a publisher for longer than the shipped 50 ms.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import yaml

os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ.setdefault("ROS_DOMAIN_ID", str(101 + os.getpid() % 100))

rclpy = pytest.importorskip("rclpy")

from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from std_msgs.msg import Float64MultiArray, String  # noqa: E402

from robostack import registry  # noqa: E402
from robostack.config import load_yaml  # noqa: E402
from robostack.real.bench import home_state  # noqa: E402
from robostack.real.deploy_config import load_deploy_config  # noqa: E402
from robostack.real.safety_node import OVERRIDE_HEARTBEAT_S  # noqa: E402
from robostack.real.state import state_messages  # noqa: E402

# rclpy's type support imports rosidl_parser -> lark, which imports the deprecated sre_* modules
pytestmark = pytest.mark.filterwarnings("ignore:module 'sre_:DeprecationWarning")

ROOT = Path(__file__).resolve().parents[2]
STATE_RATE_HZ = 100.0


def cf2_config(tmp_path: Path, rate_hz: float) -> Path:
    """The shipped cf2 deploy config at another safety rate, with 0.5 s watchdogs."""
    data = load_yaml(ROOT / "configs/deploy/cf2.yaml")
    data["state_timeout_s"] = 0.5
    data["safety"].update(rate_hz=rate_hz, command_timeout_s=0.5)
    path = tmp_path / "cf2.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


class Cf2Rig:
    """The safety node's surroundings: its state (a thread at STATE_RATE_HZ), the policy's command publisher
    and a monitor of the driver topic and ``safety/override`` (receive stamps, ns)."""

    def __init__(self, namespace: str):
        self.cfg = load_deploy_config("cf2")
        self.hovering = home_state(registry.robot("cf2").build_model(), [])
        self.context = rclpy.Context()
        rclpy.init(context=self.context, args=["--ros-args", "-r", f"__ns:={namespace}"])
        node = self.node = rclpy.create_node("safety_node_test", context=self.context)
        topics = self.cfg.topics
        self.state_publishers = {name: node.create_publisher(type(msg), getattr(topics, name).topic, 10)
                                 for name, msg in self._state_messages()}
        self.policy = node.create_publisher(Float64MultiArray, "policy/command", 10)
        self.driver: list[tuple[int, np.ndarray]] = []
        self.overrides: list[tuple[int, dict]] = []
        node.create_subscription(Float64MultiArray, topics.driver_command.topic,
                                 lambda m, i: self.driver.append((i["received_timestamp"], np.array(m.data))), 5000)
        node.create_subscription(String, "safety/override",
                                 lambda m, i: self.overrides.append((i["received_timestamp"], json.loads(m.data))), 1000)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(node)
        self.running = True
        self.threads = [threading.Thread(target=self.executor.spin, daemon=True),
                        threading.Thread(target=self._publish_state, daemon=True)]
        for thread in self.threads:
            thread.start()

    def _state_messages(self):
        return state_messages(self.cfg, self.hovering, self.node.get_clock().now().to_msg(), [])

    def _publish_state(self) -> None:
        while self.running:
            for name, msg in self._state_messages():
                self.state_publishers[name].publish(msg)
            time.sleep(1.0 / STATE_RATE_HZ)

    def command(self, values) -> int:
        """Publish a policy command; returns when it went out (ns, the receive stamps' clock)."""
        sent = time.time_ns()
        self.policy.publish(Float64MultiArray(data=[float(v) for v in values]))
        return sent

    def until_passed(self, values, node: subprocess.Popen) -> None:
        """Command ``values`` every 20 ms until the driver gets them (discovery done, commands passing)."""
        def passed() -> bool:
            self.command(values)
            time.sleep(0.02)
            return any(np.allclose(v, values, rtol=0, atol=1e-12) for _, v in self.driver[-20:])

        wait_for(passed, 30, "the policy's command on the driver topic", node)

    def close(self) -> None:
        self.running = False
        self.threads[1].join()
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)


def start_safety_node(namespace: str, config: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "robostack.real.safety_node", "--ros-args", "-r",
                             f"__ns:={namespace}", "-p", "robot:=cf2", "-p", f"config:={config}"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for(condition, timeout: float, what: str, proc: subprocess.Popen) -> None:
    end = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"{what}: the safety node exited:\n{proc.communicate()[0]}")
        if time.monotonic() > end:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.01)


def stop(proc: subprocess.Popen) -> str:
    proc.send_signal(15)  # SIGTERM: at once (SIGINT would first land the fake drone, which never comes down)
    try:
        return proc.communicate(timeout=10)[0]
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.communicate()[0]


def test_a_command_reaches_the_driver_on_arrival_not_at_the_next_tick(tmp_path):
    """At a 10 Hz safety rate a command forwarded at the next tick would wait 50 ms on average (up to 100);
    forwarded on arrival it takes a few ms. And the tick does not send it a second time."""
    namespace = f"/forward_test_{uuid.uuid4().hex[:6]}"
    rig = Cf2Rig(namespace)
    node = start_safety_node(namespace, cf2_config(tmp_path, rate_hz=10.0))
    try:
        rig.until_passed([0.05] * 4, node)
        commands = 0.06 + 0.001 * np.arange(30)  # distinct, inside the motors' range
        sent = []
        for thrust in commands:
            sent.append(rig.command([thrust] * 4))
            time.sleep(0.05)  # 20 Hz: every tick interval has commands in it
        time.sleep(0.3)
    finally:
        output = stop(node)
        rig.close()
    assert node.returncode == 0, output
    delays_ms, copies = [], []
    for thrust, sent_ns in zip(commands, sent):
        arrivals = [t for t, values in rig.driver if np.allclose(values, thrust, rtol=0, atol=1e-12)]
        assert arrivals, f"command {thrust} never reached the driver"
        delays_ms.append((arrivals[0] - sent_ns) * 1e-6)
        copies.append(len(arrivals))
    delays_ms = np.array(delays_ms)
    # tolerant of a loaded machine: the next tick would give a median of 50 ms and 40% of delays over 40 ms
    assert np.median(delays_ms) < 20 and np.mean(delays_ms < 40) >= 0.8, np.round(delays_ms, 1)
    # a tick repeats a command only if none came in its period (after the last one: every tick)
    assert sum(copies[:-1]) <= len(commands) - 1 + 3, copies


def test_a_persisting_fallback_is_reported_on_change_and_as_a_heartbeat_not_every_period(tmp_path):
    namespace = f"/override_test_{uuid.uuid4().hex[:6]}"
    rig = Cf2Rig(namespace)
    node = start_safety_node(namespace, cf2_config(tmp_path, rate_hz=500.0))
    try:
        rig.until_passed([0.07] * 4, node)  # passed unchanged: no override
        stopped = time.time_ns()  # the command goes stale after 0.5 s: the fallback hovers for 2 s
        time.sleep(2.0)
        window_end = time.time_ns()
        for _ in range(10):  # commands again: the override ends
            rig.command([0.07] * 4)
            time.sleep(0.02)
        time.sleep(0.2)
    finally:
        output = stop(node)
        rig.close()
    assert node.returncode == 0, output
    during = [o for t, o in rig.overrides if stopped < t <= window_end]
    assert during and all(o["reasons"][0] == "fallback: hover" for o in during), during
    assert during[0]["reasons"][1].startswith("command stale:")
    # 1.5 s of fallback at 500 Hz: the change, and a heartbeat every OVERRIDE_HEARTBEAT_S (3), not 750
    assert 2 <= len(during) <= 1 + 1.5 / OVERRIDE_HEARTBEAT_S + 3, [o["reasons"] for o in during]
    fallback_outputs = [t for t, _ in rig.driver if stopped + 600_000_000 < t <= window_end]
    assert len(fallback_outputs) > 0.5 * 500 * 1.4  # the driver still gets the fallback at the safety rate
    assert rig.overrides[-1][1]["reasons"] == []  # and hears when commands pass unchanged again
