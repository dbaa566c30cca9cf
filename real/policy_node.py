"""``policy_node``: runs an exported policy bundle on a robot, at the bundle's control rate or on every state.

Run::

    python -m robostack.real.policy_node --ros-args -p bundle:=bundles/go2-walk

(or the ``policy_node`` console script, ``ros2 run robostack policy_node``). Everything about the policy
comes from the bundle: its task (whose own observation terms build the observation, see
``robostack.real.observation``), joint order, action mapping and control rate. An actor-critic bundle maps
the observation vector to an action; a chunk (diffusion) bundle reads the measured state as its dataset
recorded it and executes action chunks (history, query period and temporal ensembling from its metadata,
``robostack.policies.diffusion.ChunkExecutor``); a residual bundle corrects its base chunk bundle's action.
Tasks with an object (panda-lift) also need its pose on ``topics.object``, tasks that place fixed bodies
per episode (panda-insert's hole) their poses on ``topics.fixtures``. The robot's topics come
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
import time
from typing import Any

import numpy as np
import torch

from robostack import registry
from robostack.bundle import BundleError, ChunkPolicyBundle, PolicyBundle, ResidualPolicyBundle, load_bundle
from robostack.policies.diffusion import STATE_KEY, ChunkExecutor
from robostack.real.bundle_fit import check_bundle_fits, check_bundle_task
from robostack.real.deploy_config import INTERNAL, load_deploy_config
from robostack.real.executor import spin, stop_on_signals
from robostack.real.messages import get_field, message_type
from robostack.real.observation import ObservationBuilder, ObservationError
from robostack.real.safety import safety_config
from robostack.real.state import StateListener, primary_source, qos_profile
from robostack.sim.joint_limits import TargetBounds

TRIGGERS = ("timer", "state")
WATCHDOG_PERIOD_S = 0.5  # acting per state: how often it checks that states still come, and says so if not


class VectorActor:
    """An actor-critic bundle: the observation vector in, the action out."""

    writes_controls = False  # it writes the task's actions

    def __init__(self, bundle: PolicyBundle, builder: ObservationBuilder):
        self.bundle, self.builder = bundle, builder
        self.builders = [builder]  # every view of the measured state it reads: each gets every update

    def act(self) -> np.ndarray:
        return self.bundle.act(self.builder.observation())

    def reset(self) -> None:
        pass


class ChunkActor:
    """A chunk (diffusion) bundle: the measured state as its dataset recorded it, action chunks executed by
    ``ChunkExecutor`` with the bundle's history, query period and temporal ensembling."""

    def __init__(self, bundle: ChunkPolicyBundle, builder: ObservationBuilder, seed: int = 0):
        if bundle.image_shapes:
            raise BundleError(f"bundle {bundle.path} reads camera images ({', '.join(bundle.image_shapes)}); "
                              "policy_node runs chunk bundles with state observations only")
        chunk = bundle.metadata["chunk"]
        self.builder, self.keys = builder, [term["name"] for term in bundle.metadata["observation"]["terms"]]
        self.executor = ChunkExecutor(bundle, 1, chunk.get("query_every"), chunk.get("ensemble_coef", 0.01), seed)
        self.writes_controls = bundle.metadata["action"].get("kind") == "controls"  # else the task's actions
        self.builders = [builder]

    def act(self) -> np.ndarray:
        features = self.builder.features()
        state = np.concatenate([features[key] for key in self.keys], axis=1)
        return self.executor.step({STATE_KEY: state})[0]

    def reset(self) -> None:
        self.executor.reset()


class ResidualActor:
    """A residual bundle: its base chunk bundle's action, corrected from the policy observation and that action."""

    def __init__(self, bundle: ResidualPolicyBundle, builder: ObservationBuilder):
        self.bundle, self.builder = bundle, builder
        self.base = ChunkActor(bundle.base, ObservationBuilder(bundle.base.metadata))
        self.writes_controls = False  # load_bundle checked that the base acts in the task's actions
        self.builders = [builder, *self.base.builders]

    def act(self) -> np.ndarray:
        base = self.base.act()
        correction = self.bundle.act(np.concatenate([self.builder.observation(), base]))
        return self.bundle.executed(base, correction)

    def reset(self) -> None:
        self.base.reset()


class PolicyRunner:
    """The node's logic without ROS: state in, controls out (or None and the reason it will not act)."""

    def __init__(self, bundle_path: str, config_path: str | None = None):
        self.bundle = load_bundle(bundle_path)
        robot = registry.robot(check_bundle_task(self.bundle.metadata, bundle_path))
        source = str(config_path or robot.deploy_config_file)
        self.deploy = load_deploy_config(robot.name, source, task=self.bundle.task)
        robot_config = check_bundle_fits(self.bundle.metadata, bundle_path, robot, self.deploy, source)
        self.primary = primary_source(self.deploy)  # the state source whose arrival is a new state
        self.builder = ObservationBuilder(self.bundle.metadata)
        joint_limits = safety_config(self.deploy, source).joints
        if joint_limits is not None:
            self.builder.follow_safety_limits(TargetBounds.for_robot(robot, robot_config, self.builder.model,
                                                                     joint_limits))
        if self.builder.has_object and self.deploy.topics.object is None:
            raise ValueError(f"task {self.bundle.task!r} needs its object's pose, but the deploy config of robot "
                             f"{self.bundle.robot!r} has no topics.object")
        unmeasured = [name for name in self.builder.task.fixtures if name not in self.deploy.topics.fixtures]
        if unmeasured:
            raise ValueError(f"task {self.bundle.task!r} places {unmeasured} per episode, but the deploy config of "
                             f"robot {self.bundle.robot!r} has no topics.fixtures for them (their poses)")
        if isinstance(self.bundle, ChunkPolicyBundle):
            self.actor: VectorActor | ChunkActor | ResidualActor = ChunkActor(self.bundle, self.builder)
        elif isinstance(self.bundle, ResidualPolicyBundle):
            self.actor = ResidualActor(self.bundle, self.builder)
        else:
            self.actor = VectorActor(self.bundle, self.builder)
        self.fresh_episode = True
        if self.deploy.topics.task_command is not None:
            self.set_command(self.deploy.topics.task_command.default)

    @torch.inference_mode()  # as tick: its tensors are inference tensors, changed in place here
    def set_command(self, command: list[float]) -> None:
        for builder in self.actor.builders:
            builder.set_command(command)

    @torch.inference_mode()
    def reset(self) -> None:
        for builder in self.actor.builders:
            builder.reset()
        self.actor.reset()
        self.fresh_episode = True

    def _own_controls(self, controls: np.ndarray) -> np.ndarray:
        """Controls a chunk bundle wrote itself (trained on the recorded actuator controls), checked."""
        values = np.asarray(controls, dtype=np.float64)
        if values.shape != (self.builder.model.nu,) or not np.isfinite(values).all():
            raise ObservationError(f"the policy's controls must be {self.builder.model.nu} finite values, got "
                                   f"{values.tolist()}")
        return values

    @torch.inference_mode()
    def tick(self, listener: StateListener, now: float | None = None) -> tuple[np.ndarray | None, str]:
        """Controls for this tick, or (None, why not). In inference mode: the task's term functions run on
        tensors of one robot, where autograd's bookkeeping is a noticeable part of each small operation."""
        stale = listener.staleness(time.monotonic() if now is None else now, self.deploy.state_timeout_s)
        if stale:
            return None, stale
        try:
            state = listener.state()
            for builder in self.actor.builders:
                builder.update(state)
            if not self.fresh_episode:  # as in training: integrals advance after each step, not before the first
                self.builder.integrate()
            action = self.actor.act()
            controls = self._own_controls(action) if self.actor.writes_controls else self.builder.controls(action)
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

    listener = StateListener(node, runner.deploy, depth=1 if per_state else None, on_update=on_state if per_state else None,
                             with_object=runner.builder.has_object, fixtures=runner.builder.task.fixtures)
    topic, type_ = INTERNAL["policy_command"]
    publisher = node.create_publisher(message_type(type_), topic, 10)
    task = runner.deploy.topics.task_command
    if task is not None:
        def on_task_command(msg: Any) -> None:
            try:
                runner.set_command([float(get_field(msg, f)) for f in task.fields])
            except ObservationError as exc:
                node.get_logger().error(f"ignoring task command on {task.topic}: {exc}", throttle_duration_sec=1.0)

        node.create_subscription(message_type(task.type), task.topic, on_task_command, qos_profile(task.qos))
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

        def watchdog() -> None:  # no message taken, no tick: still say why it does not act
            stale = listener.staleness(time.monotonic(), runner.deploy.state_timeout_s)
            if stale:
                node.get_logger().error(f"not acting: {stale}", throttle_duration_sec=1.0)

        node.create_timer(WATCHDOG_PERIOD_S, watchdog)
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
            except (BundleError, ValueError, KeyError, FileNotFoundError) as exc:
                print(f"policy_node: error: {exc.args[0] if isinstance(exc, KeyError) else exc}", file=sys.stderr)
                return 2
            start(node, runner, trigger, rate_hz)
            spin(node, stop)
            return 0
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    sys.exit(main())
