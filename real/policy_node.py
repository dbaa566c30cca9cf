"""``policy_node``: runs an exported policy bundle on a robot, at the bundle's control rate or on every state.

Run::

    python -m robostack.real.policy_node --ros-args -p bundle:=bundles/go2-walk

(or the ``policy_node`` console script, ``ros2 run robostack policy_node``). Everything about the policy
comes from the bundle: its task (whose own observation terms build the observation, see
``robostack.real.observation``), joint order, action mapping and control rate. An actor-critic bundle maps
the observation vector to an action; a chunk (diffusion) bundle reads the measured state as its dataset
recorded it and executes action chunks (history, query period and temporal ensembling from its metadata,
``robostack.bundle.chunks.ChunkExecutor``); a residual bundle corrects the action of the bundle in its
``base/``; a command correction moves the task command its base follows, its offset frozen while a human's
takeover holds the command (``teleop/intervention``). Each kind acts through its own actor (``robostack.bundle.kinds``), the one
evaluation in simulation runs too.
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

Its commands reach the driver only through the safety layer, which says on ``safety/status`` (latched) whose
commands it passes. Until it passes this node's (it has not found this node yet: discovery between processes
takes seconds on a loaded machine; it runs a fallback; a human is in control), nothing the policy commands is
executed: before anything of the episode was, the policy starts the episode over at every tick; after, the
targets of a relative or end-effector action map follow the measured joints. So it never integrates commands
the robot did not get, and is not pushed off course when the safety layer passes it again.

Parameters: ``bundle`` (required), ``config`` (deploy YAML, default ``configs/deploy/<robot>.yaml``),
``trigger`` (``timer``, the default, or ``state``), ``rate_hz`` (the timer's; 0 = the bundle's control rate),
``exploration_std`` (0: none): Gaussian noise of that standard deviation on every action the bundle chooses (in
its [-1, 1] action space, then clipped; the safety layer filters the result as any command), so that logs of the
deployment hold actions to compare for learning from them, as HIL-SERL's actor samples on the robot
(``robostack improve``); refused for a bundle that writes actuator controls itself. ``publish_action`` (false):
also publish each tick's action in the task's action space and its base's proposal on ``policy/action`` (a
residual's base, else the action before exploration), which a recording keeps for learning a correction of the
base from the logs.
"""
from __future__ import annotations

import json
import sys
import time
from typing import Any

import numpy as np
import torch

from robostack import registry
from robostack.bundle import ACTOR_CRITIC, BundleError, load_bundle
from robostack.real.bundle_fit import check_bundle_fits, check_bundle_task
from robostack.real.deploy_config import INTERNAL, load_deploy_config
from robostack.real.executor import init_ros, spin, stop_on_signals
from robostack.real.messages import action_message, get_field, message_type
from robostack.real.observation import ObservationBuilder, ObservationError
from robostack.real.safety import safety_config
from robostack.real.state import StateListener, status_qos, primary_source, qos_profile
from robostack.sim.joint_limits import TargetBounds

TRIGGERS = ("timer", "state")
WATCHDOG_PERIOD_S = 0.5  # acting per state: how often it checks that states still come, and says so if not


class PolicyRunner:
    """The node's logic without ROS: state in, controls out (or None and the reason it will not act)."""

    def __init__(self, bundle_path: str, config_path: str | None = None, exploration_std: float = 0.0):
        if not 0.0 <= exploration_std < 1.0:
            raise ValueError(f"parameter 'exploration_std' must be in [0, 1) (of the action range), got "
                             f"{exploration_std}")
        self.exploration_std = exploration_std
        self.exploration = np.random.default_rng()
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
        kind = registry.bundle_kind(self.bundle.metadata.get("kind", ACTOR_CRITIC))
        # every view of the measured state the actor reads (a residual's chunk base reads the state as its dataset
        # recorded it; an actor-critic base reads the residual's own observation): each gets every update
        self.builders = [self.builder]
        base_source = None
        if kind.has_base and self.bundle.base.metadata.get("kind", ACTOR_CRITIC) != ACTOR_CRITIC:
            base_source = ObservationBuilder(self.bundle.base.metadata)
            self.builders.append(base_source)
        self.actor = kind.actor(self.bundle, self.builder, num_envs=1, seed=0, base_source=base_source)
        if exploration_std and self.actor.writes_controls:
            raise ValueError("parameter 'exploration_std': this bundle writes actuator controls, not actions in "
                             "[-1, 1]")
        self.fresh_episode = True
        # Whether the safety layer passes this node's commands (``safety/status``), the only way they reach a
        # driver. While it does not (it has not found this node yet, it runs a fallback, a human is in control),
        # what the policy commands is not executed: before anything of this episode was, the episode starts
        # over at every tick (no integrals or past actions of commands the robot never got); after, the
        # targets of a relative or end-effector action map follow the measured joints (no wind-up, no jump
        # when the policy is passed again).
        self.executed = False
        self.executed_this_episode = False
        # the last tick's action in the task's action space and its base's proposal (the action itself without a
        # base, before exploration): what ``policy/action`` logs for learning a correction of the base
        self.action: np.ndarray | None = None
        self.base_action: np.ndarray | None = None
        if self.deploy.topics.task_command is not None:
            self.set_command(self.deploy.topics.task_command.default)

    @torch.inference_mode()  # as tick: its tensors are inference tensors, changed in place here
    def set_command(self, command: list[float]) -> None:
        for builder in self.builders:
            builder.set_command(command)

    @torch.inference_mode()
    def reset(self) -> None:
        for builder in self.builders:
            builder.reset()
        self.actor.reset()
        self.fresh_episode = True
        self.executed_this_episode = False

    def controls_for(self, action: np.ndarray) -> np.ndarray:
        """The actuator controls of the actor's output: through the task's action map (recording the action in
        the policy's state), or as they are, checked, where the bundle writes controls itself (a chunk bundle
        trained on the recorded actuator controls)."""
        if not self.actor.writes_controls:
            return self.builder.controls(action)
        values = np.asarray(action, dtype=np.float64)
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
            if not self.executed and not self.executed_this_episode:
                self.reset()
            self.executed_this_episode |= self.executed
            for builder in self.builders:
                builder.update(state)
            if not self.executed:
                self.builder.anchor_targets()
            if not self.fresh_episode:  # as in training: integrals advance after each step, not before the first
                self.builder.integrate()
            action = self.actor.act()[0]
            base = getattr(self.actor, "base_action", None)
            self.base_action = action if base is None else base[0]
            if self.exploration_std:
                action = np.clip(action + self.exploration.normal(0.0, self.exploration_std, action.shape), -1.0, 1.0)
            controls = self.controls_for(action)
            self.action = action
        except (ObservationError, BundleError) as exc:
            return None, f"cannot act: {exc}"
        self.fresh_episode = False
        return controls, "ok"


def start(node: Any, runner: PolicyRunner, trigger: str, rate_hz: float, publish_action: bool = False) -> None:
    """Wire ``runner`` to the node's topics and start acting on the timer or on every primary state; with
    ``publish_action`` (and a bundle acting in the task's actions) each tick's action and its base's proposal go out
    on ``policy/action`` too, before the command."""
    import std_msgs.msg

    per_state = trigger == "state"

    def on_state(source: str) -> None:
        if source == runner.primary:
            on_tick()

    listener = StateListener(node, runner.deploy, depth=1 if per_state else None, on_update=on_state if per_state else None,
                             with_object=runner.builder.has_object, fixtures=runner.builder.task.fixtures)
    topic, type_ = INTERNAL["policy_command"]
    publisher = node.create_publisher(message_type(type_), topic, 10)
    action_publisher = None
    if publish_action and not runner.actor.writes_controls:
        action_topic, action_type = INTERNAL["policy_action"]
        action_publisher = node.create_publisher(message_type(action_type), action_topic, 10)
    task = runner.deploy.topics.task_command
    if task is not None:
        def on_task_command(msg: Any) -> None:
            try:
                runner.set_command([float(get_field(msg, f)) for f in task.fields])
            except ObservationError as exc:
                node.get_logger().error(f"ignoring task command on {task.topic}: {exc}", throttle_duration_sec=1.0)

        node.create_subscription(message_type(task.type), task.topic, on_task_command, qos_profile(task.qos))
    node.create_subscription(std_msgs.msg.String, "sim/episode", lambda _msg: runner.reset(), 10)
    if hasattr(runner.actor, "holding"):  # a command correction: frozen while a human holds the command
        def on_intervention(msg: Any) -> None:
            runner.actor.holding = msg.data == "start"
            node.get_logger().info("a human holds the task command: the command correction's offset is frozen until "
                                   "they hand back" if runner.actor.holding else "the human handed back: the command "
                                   "correction moves the offset again")

        node.create_subscription(std_msgs.msg.String, INTERNAL["intervention"][0], on_intervention, 10)

    def on_safety_status(msg: Any) -> None:
        try:
            status = json.loads(msg.data)
            executed = status.get("passes") == "policy" and not status.get("recovering", False)
        except (ValueError, AttributeError):
            return
        if not executed and runner.executed:
            node.get_logger().info(f"the safety layer does not pass policy commands ({msg.data}): the policy "
                                   "starts over from the measured state at every tick until it does")
        runner.executed = executed

    node.create_subscription(std_msgs.msg.String, INTERNAL["status"][0], on_safety_status, status_qos())

    def on_tick() -> None:
        controls, why = runner.tick(listener)
        if controls is None:
            node.get_logger().error(f"not acting: {why}", throttle_duration_sec=1.0)
            return
        if action_publisher is not None:
            action_publisher.publish(action_message(np.stack([runner.action, runner.base_action])))
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

    init_ros(args)
    node = Node("policy_node")
    try:
        with stop_on_signals() as stop:
            try:
                bundle_path = node.declare_parameter("bundle", "").value
                config_path = node.declare_parameter("config", "").value
                rate_hz = float(node.declare_parameter("rate_hz", 0.0).value)
                trigger = node.declare_parameter("trigger", "timer").value
                exploration_std = float(node.declare_parameter("exploration_std", 0.0).value)
                publish_action = bool(node.declare_parameter("publish_action", False).value)
                if not bundle_path:
                    raise BundleError("parameter 'bundle' is required (a policy bundle directory)")
                if trigger not in TRIGGERS:
                    raise ValueError(f"parameter 'trigger' must be one of {list(TRIGGERS)}, got {trigger!r}")
                runner = PolicyRunner(bundle_path, config_path, exploration_std)
            except (BundleError, ValueError, KeyError, FileNotFoundError) as exc:
                print(f"policy_node: error: {exc.args[0] if isinstance(exc, KeyError) else exc}", file=sys.stderr)
                return 2
            start(node, runner, trigger, rate_hz, publish_action)
            spin(node, stop)
            return 0
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    sys.exit(main())
