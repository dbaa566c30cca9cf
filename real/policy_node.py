"""``policy_node``: runs an exported policy bundle on a robot, at the bundle's control rate or on every state.

Run::

    python -m robostack.real.policy_node --ros-args -p bundle:=bundles/go2-walk

(or the ``policy_node`` console script, ``ros2 run robostack policy_node``). Everything about the policy
comes from the bundle: its task (whose own observation terms build the observation, see
``robostack.real.observation``), joint order, action mapping and control rate. The robot's topics come
from ``configs/deploy/<robot>.yaml`` (parameter ``config`` to use another file).

Each control tick it reads the latest measured state, builds the observation, runs the ONNX policy and
publishes the actuator controls on ``policy/command`` for the safety layer (``safety_node``), which alone
talks to the driver. The tick comes from a timer at the control rate (``trigger:=timer``), or from the
driver (``trigger:=state``): every message of the primary state topic
(``robostack.real.state.primary_source``: joint states, else odometry, else the IMU) is acted on at once,
which is how a low-latency deployment runs; the driver's state rate is then the control rate (the bundle's,
for the policy's integrals and action history to mean what they meant in training), and only the newest
state is kept, never a queue. Missing or stale inputs (any state topic older than ``state_timeout_s``) stop
it from acting: it publishes nothing, so the safety layer's command watchdog takes over, and it logs which
topic is missing or how old the state is. A new task command (``topics.task_command``: a velocity, a target)
is used from the next tick; ``sim/episode`` (published by ``sim_robot_node`` when a rehearsal episode ends)
starts a new episode of the policy's own state (past actions, integrals).

Parameters: ``bundle`` (required), ``config`` (deploy YAML, default ``configs/deploy/<robot>.yaml``),
``trigger`` (``timer``, the default, or ``state``), ``rate_hz`` (the timer's; 0 = the bundle's control rate).
"""
from __future__ import annotations

import sys
from typing import Any

import numpy as np

from robostack.bundle import BundleError, load_bundle
from robostack.real.deploy_config import INTERNAL, load_deploy_config
from robostack.real.executor import spin, stop_on_signals
from robostack.real.messages import get_field, message_type
from robostack.real.observation import ObservationBuilder, ObservationError
from robostack.real.state import StateListener, primary_source

TRIGGERS = ("timer", "state")


class PolicyRunner:
    """The node's logic without ROS: state in, controls out (or None and the reason it will not act)."""

    def __init__(self, bundle_path: str, config_path: str | None = None):
        self.bundle = load_bundle(bundle_path)
        self.deploy = load_deploy_config(self.bundle.robot, config_path or None)
        self.primary = primary_source(self.deploy)  # the state source whose arrival is a new state
        self.builder = ObservationBuilder(self.bundle.metadata)
        self.fresh_episode = True
        if self.deploy.topics.task_command is not None:
            self.builder.set_command(self.deploy.topics.task_command.default)

    def reset(self) -> None:
        self.builder.reset()
        self.fresh_episode = True

    def tick(self, listener: StateListener, now: float | None = None) -> tuple[np.ndarray | None, str]:
        """Controls for this tick, or (None, why not)."""
        if not listener.ready():
            return None, f"waiting for state topics {listener.missing()}"
        age = listener.age(now)
        if age > self.deploy.state_timeout_s:
            return None, f"state is stale: {age * 1000:.0f} ms old (limit {self.deploy.state_timeout_s * 1000:.0f} ms)"
        try:
            self.builder.update(listener.state())
            if not self.fresh_episode:  # as in training: integrals advance after each step, not before the first
                self.builder.integrate()
            action = self.bundle.act(self.builder.observation())
            controls = self.builder.controls(action)
        except (ObservationError, BundleError) as exc:
            return None, f"cannot act: {exc}"
        self.fresh_episode = False
        return controls, "ok"


def start(node: Any, runner: PolicyRunner, trigger: str, rate_hz: float) -> None:
    """Wire ``runner`` to the node's topics and start acting on the timer or on every primary state."""
    import std_msgs.msg

    per_state = trigger == "state"

    def on_state(source: str) -> None:
        if source == runner.primary:
            on_tick()

    listener = StateListener(node, runner.deploy, qos=1 if per_state else 10, on_update=on_state if per_state else None)
    topic, type_ = INTERNAL["policy_command"]
    publisher = node.create_publisher(message_type(type_), topic, 10)
    task = runner.deploy.topics.task_command
    if task is not None:
        def on_task_command(msg: Any) -> None:
            try:
                runner.builder.set_command([float(get_field(msg, f)) for f in task.fields])
            except ObservationError as exc:
                node.get_logger().error(f"ignoring task command on {task.topic}: {exc}", throttle_duration_sec=1.0)

        node.create_subscription(message_type(task.type), task.topic, on_task_command, 10)
    node.create_subscription(std_msgs.msg.String, "sim/episode", lambda _msg: runner.reset(), 10)

    def on_tick() -> None:
        controls, why = runner.tick(listener)
        if controls is None:
            node.get_logger().error(f"not acting: {why}", throttle_duration_sec=1.0)
            return
        msg = std_msgs.msg.Float64MultiArray()
        msg.data = controls.tolist()
        publisher.publish(msg)

    if per_state:
        pace = f"on every {getattr(runner.deploy.topics, runner.primary).topic} message"
    else:
        period = 1.0 / (rate_hz or runner.bundle.control_rate_hz)
        node.create_timer(period, on_tick)
        pace = f"at {1 / period:.0f} Hz"
    node.get_logger().info(f"policy_node: {runner.bundle.task} on {runner.bundle.robot} {pace}, publishing {topic}")


def main(args: list[str] | None = None) -> int:
    import rclpy
    from rclpy.node import Node
    from rclpy.signals import SignalHandlerOptions

    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)  # see robostack.real.executor
    node = Node("policy_node")
    try:
        with stop_on_signals() as stop:
            try:
                bundle_path = node.declare_parameter("bundle", "").value
                config_path = node.declare_parameter("config", "").value
                rate_hz = float(node.declare_parameter("rate_hz", 0.0).value)
                trigger = node.declare_parameter("trigger", "timer").value
                if not bundle_path:
                    raise BundleError("parameter 'bundle' is required (a policy bundle directory)")
                if trigger not in TRIGGERS:
                    raise ValueError(f"parameter 'trigger' must be one of {list(TRIGGERS)}, got {trigger!r}")
                runner = PolicyRunner(bundle_path, config_path)
            except (BundleError, ValueError, FileNotFoundError) as exc:
                print(f"policy_node: error: {exc}", file=sys.stderr)
                return 2
            start(node, runner, trigger, rate_hz)
            spin(node, stop)
            return 0
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    sys.exit(main())
