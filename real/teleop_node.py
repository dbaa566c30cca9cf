"""``teleop_node``: a human takes over from the policy with a gamepad or a Twist stream, through the safety layer.

Run::

    python -m robostack.real.teleop_node --ros-args -p robot:=panda            # a gamepad (the joy driver)
    python -m robostack.real.teleop_node --ros-args -p robot:=go2 -p input:=twist

(or the ``teleop_node`` console script). Start the gamepad's driver beside it (``ros2 run joy joy_node``,
with its default 20 Hz autorepeat, so a held button keeps arriving).

The deadman: with ``input:=joy`` the human is in control while button ``deadman_button`` is held in the
latest ``sensor_msgs/Joy``; with ``input:=twist`` (``geometry_msgs/Twist``, e.g. teleop_twist_keyboard), while
Twists keep arriving. Either way, input older than ``input_timeout_s`` ends the takeover: a gamepad that
dies or unplugs with the button held must not keep control. A message that cannot be read (too few axes or
buttons, NaN or inf) is dropped with a throttled error, as if it had not come.

What the human commands depends on the robot's kind (its ``robostack.specs.RobotSpec``):

* arm (panda): the end effector's velocity (x, y, z in the base frame, and yaw about the vertical),
  integrated into an end-effector target that starts at the measured pose when the takeover starts (so
  the arm does not jump) and stays within ``ARM_LEAD`` of the measured pose (a blocked arm does not wind up).
  The pose error becomes the deployed task's own end-effector actions, issued through that task's action map
  at the measured joints (its IK site, damping, step sizes and gripper, as the policy's actions are;
  ``robostack.teleop.takeovers.ArmTakeover``); where the task has a gripper, the gripper buttons close or open
  it. The result is a full actuator control vector in MuJoCo actuator order, the one the policy sends, on
  ``teleop/command``; ``teleop/active`` tells the safety layer to take it instead of the policy's.
* quadruped (go2) and drone (cf2): the human does not drive joints or motors (no one can balance a
  quadruped or fly a quadrotor motor by motor); the human's command replaces the *task command* the
  policy follows, on the deploy config's ``topics.task_command``: go2 the velocity (vx, vy, yaw rate) from
  the sticks, cf2 a position setpoint the sticks move from the task's setpoint in effect when the takeover
  started (the topic's last message from another node, else the config's default), so they offset what the
  policy was asked to do.
  The policy keeps running and the safety layer keeps filtering its output, so ``teleop/active`` is not
  published: true would make the safety layer wait for joint commands that never come. When the takeover
  ends, one last task command with the sticks centred is sent (go2: stand still; cf2: hold the setpoint),
  so the policy is not left running on the human's last stick position. Another source of task commands
  must yield meanwhile (``sim_robot_node``'s simulated operator does, on ``teleop/intervention``; on a
  robot, e.g. a twist_mux that gives this node priority).

For every kind ``teleop/intervention`` carries ``start`` and ``end`` (once each per takeover) and
``teleop/active`` (arm only) is published on every change and at ``ACTIVE_PERIOD_S``, for late joiners.
Commands go out at ``rate_hz`` while the human is in control, and only through the safety layer: never to
the driver's topic. Nothing is sent without a fresh measured state (the arm's IK and the drone's setpoint
start from it); a takeover does not start without one. On shutdown a takeover in progress is ended.

Parameters: ``robot`` (required: panda, go2, cf2), ``bundle`` (the policy bundle deployed: it must fit the
robot, and the arm takeover acts through its task), ``task`` (without a bundle: the task whose action map the arm
takeover uses, as its YAML file configures it), ``config`` (deploy YAML, default
``configs/deploy/<robot>.yaml``), ``input`` (``joy`` or ``twist``), ``input_topic`` (default ``joy`` or
``teleop/twist``), ``deadman_button`` (4: LB), ``axes`` and ``scales`` (per commanded component, below),
``gripper_open_button`` (1: B), ``gripper_close_button`` (0: A), ``rate_hz`` (0: the task's control rate),
``input_timeout_s`` (0.5).

Defaults per kind (``robostack.teleop.mapping.TAKEOVER_MAPPINGS``; axes and buttons as the joy driver numbers an
Xbox pad: axis 0/1 left stick left/up, 3/4 right stick left/up, positive toward left and up). A full stick gives
``scales``; a Twist's value is clipped to it:

==========  ====================================  ==========  ===================  ======================
kind        components                            axes        scales               Twist fields
==========  ====================================  ==========  ===================  ======================
arm         x, y, z (m/s), yaw (rad/s)            1, 0, 4, 3  0.1, 0.1, 0.1, 0.5   linear.x/y/z, angular.z
quadruped   vx, vy (m/s), yaw rate (rad/s)        1, 0, 3     1.0, 0.5, 1.0        linear.x/y, angular.z
drone       x, y, z setpoint velocity (m/s)       1, 0, 4     0.5, 0.5, 0.5        linear.x/y/z
==========  ====================================  ==========  ===================  ======================

The quadruped's scales are the go2-walk training ranges: the policy never saw faster commands.
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import rclpy
from geometry_msgs.msg import Twist
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.duration import Duration
from rclpy.exceptions import ParameterException
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from sensor_msgs.msg import Joy
from std_msgs.msg import Bool, Float64MultiArray, String

from robostack import registry, sim
from robostack.bundle import read_metadata
from robostack.real.bundle_fit import check_bundle_fits
from robostack.real.deploy_config import INTERNAL, DeployConfig, TaskCommandTopic, load_deploy_config
from robostack.real.executor import init_ros, spin, stop_on_signals
from robostack.real.messages import action_message, get_field, message_type, set_field
from robostack.real.observation import build_task
from robostack.real.robot_state import RobotState
from robostack.real.safety import safety_config
from robostack.real.state import StateListener, qos_profile
from robostack.sim.measured_task import MeasuredTask
from robostack.specs import RobotSpec
from robostack.teleop import TeleopError
from robostack.teleop.mapping import TAKEOVER_DEADMAN_BUTTON, TAKEOVER_GRIPPER_BUTTONS, TAKEOVER_MAPPINGS
from robostack.teleop.takeovers import ArmTakeover, SetpointTakeover, VelocityTakeover

ACTIVE_PERIOD_S = 0.1  # teleop/active is repeated this often, so the safety layer and late joiners know
ERROR_THROTTLE_S = 1.0
# How far a target may run ahead of the measured pose: a blocked robot does not wind up, and it stops soon
# after the stick is let go. Arm: about 0.5 s at full stick (m, rad); drone: 1 s (m).
ARM_LEAD = (0.05, 0.3)
DRONE_LEAD = 0.5


@dataclass
class TeleopSettings:
    input: str = "joy"  # "joy" | "twist"
    deadman_button: int = TAKEOVER_DEADMAN_BUTTON
    axes: Sequence[int] = ()  # () = the kind's default
    scales: Sequence[float] = ()
    gripper_open_button: int = TAKEOVER_GRIPPER_BUTTONS[0]
    gripper_close_button: int = TAKEOVER_GRIPPER_BUTTONS[1]
    rate_hz: float = 0.0  # 0 = the robot's control rate
    input_timeout_s: float = 0.5


@dataclass
class HumanInput:
    """The latest readable input: a velocity per component (scaled, clipped), the buttons held, when."""

    velocity: np.ndarray
    buttons: frozenset[int]
    deadman: bool
    received: float  # monotonic s


@dataclass
class TeleopStep:
    """What one tick decided: intervention events to publish, whether the human is in control, the command
    (None: send nothing) and, if something stops it, why."""

    events: list[str] = field(default_factory=list)
    active: bool = False
    command: np.ndarray | None = None
    problem: str = ""
    action: np.ndarray | None = None  # a joint-level takeover's command as the task's action, for the logs


def control_rate_hz(robot: str) -> float:
    """The rate the robot's policies act at (its tasks' control rate; the fastest, should they differ)."""
    tasks = [spec for spec in sim.tasks() if spec.robot == robot]
    rates = [1.0 / (cfg.sim.timestep * cfg.sim.decimation) for cfg in (sim.load_task_config(t.name) for t in tasks)]
    if not rates:
        raise TeleopError(f"no task is registered for robot {robot!r}: give rate_hz")
    return max(rates)


def takeover_for(robot: RobotSpec, robot_config: Any, deploy: DeployConfig, settings: TeleopSettings,
                 task: Any = None):
    """The robot kind's takeover. The arm's acts through ``task``'s action map (a ``TaskDefinition``: the deployed
    bundle's); a task-level one checks that the deploy config has a task command to replace."""
    mapping = TAKEOVER_MAPPINGS[robot.kind]
    if robot.kind == "arm":
        if task is None:
            raise TeleopError(f"an arm takeover acts through its task's action map: give the bundle deployed on the "
                              f"{robot.name} (or the task)")
        return ArmTakeover(MeasuredTask(task), ARM_LEAD, (settings.gripper_open_button, settings.gripper_close_button))
    command = deploy.topics.task_command
    if command is None or len(command.fields) != len(mapping.components):
        raise TeleopError(f"deploy config for {robot.name}: a {robot.kind} takeover replaces the task command "
                          f"({', '.join(mapping.components)}), but topics.task_command is "
                          f"{'missing' if command is None else f'{len(command.fields)} fields'}")
    return VelocityTakeover(len(mapping.components)) if robot.kind == "quadruped" else SetpointTakeover(DRONE_LEAD)


# ----------------------------------------------------------------------------------------- the logic


class TeleopRunner:
    """The node's logic without ROS: human input and measured state in, takeover events and commands out."""

    def __init__(self, robot: str, settings: TeleopSettings, config: str | None = None, bundle: str | None = None,
                 task: str | None = None):
        """``robot``'s deploy config (``config``, default its own file); ``bundle``, the bundle deployed, which must
        fit the robot and whose task an arm takeover acts through (without a bundle: ``task``, as its YAML file
        configures it)."""
        metadata = read_metadata(bundle) if bundle else None
        robot_spec = registry.robot(robot)
        source = config or str(robot_spec.deploy_config_file)
        self.robot = robot
        self.deploy = load_deploy_config(robot, source, task=metadata["task"] if metadata else None)
        robot_config = (check_bundle_fits(metadata, bundle, robot_spec, self.deploy, source) if metadata
                        else robot_spec.load_config())
        self.kind = robot_spec.kind
        safety = safety_config(self.deploy, source)
        if getattr(safety, self.kind) is None:
            raise TeleopError(f"{source}: the {robot} is a {self.kind}, but its safety section has no '{self.kind}' "
                              "settings")
        spec = TAKEOVER_MAPPINGS[self.kind]
        if settings.input not in ("joy", "twist"):
            raise TeleopError(f"input must be 'joy' or 'twist', got {settings.input!r}")
        self.settings = settings
        self.axes = [int(a) for a in (settings.axes or spec.axes)]
        self.scales = np.asarray(settings.scales or spec.scales, dtype=np.float64)
        self.twist_fields = spec.twist_fields
        if len(self.axes) != len(spec.components) or len(self.scales) != len(spec.components):
            raise TeleopError(f"axes and scales need one value per component of a {self.kind} command "
                              f"({', '.join(spec.components)}), got {self.axes} and {self.scales.tolist()}")
        if min(self.axes) < 0 or not np.all(self.scales > 0):
            raise TeleopError(f"axes must be >= 0 and scales > 0, got {self.axes} and {self.scales.tolist()}")
        self.buttons = [settings.deadman_button] + (
            [settings.gripper_open_button, settings.gripper_close_button] if self.kind == "arm" else [])
        if min(self.buttons) < 0:
            raise TeleopError(f"button indices must be >= 0, got {self.buttons}")
        if not settings.input_timeout_s > 0:
            raise TeleopError(f"input_timeout_s must be > 0, got {settings.input_timeout_s}")
        if metadata is not None:
            definition = build_task(metadata)
        elif task is not None:
            definition = sim.task(task).build(sim.load_task_config(task, play=True))
        else:
            definition = None
        if definition is not None and sim.task(definition.name).robot != robot:
            raise TeleopError(f"task {definition.name!r} is not a task of the {robot}")
        rate = 1.0 / (definition.sim.timestep * definition.sim.decimation) if definition is not None else 0.0
        self.rate_hz = float(settings.rate_hz) or rate or control_rate_hz(robot)
        if not (self.rate_hz > 0 and math.isfinite(self.rate_hz)):
            raise TeleopError(f"rate_hz must be > 0, got {settings.rate_hz}")
        self.takeover = takeover_for(robot_spec, robot_config, self.deploy, settings, definition)
        self.latest: HumanInput | None = None
        self.active = False
        command = self.task_command
        # the task's command in effect (its topic's last message, else the config's default): a takeover starts from it
        self.task_setpoint = None if command is None else np.asarray(command.default, dtype=np.float64)

    @property
    def task_command(self) -> TaskCommandTopic | None:
        """Where the human's command goes for a task-level takeover (None: joint level, ``teleop/command``)."""
        return None if self.takeover.joint_level else self.deploy.topics.task_command

    # ----- input
    def take_joy(self, axes: Sequence[float], buttons: Sequence[int], now: float) -> str | None:
        """Keep a Joy message as the latest input, or return why it cannot be used."""
        if len(axes) <= max(self.axes) or len(buttons) <= max(self.buttons):
            return (f"Joy with {len(axes)} axes and {len(buttons)} buttons: the {self.kind} mapping reads axes "
                    f"{self.axes} and buttons {self.buttons}")
        values = np.array([axes[a] for a in self.axes], dtype=np.float64)
        if not np.all(np.isfinite(values)):
            return f"Joy axes {[a for a, v in zip(self.axes, values) if not math.isfinite(v)]} are not finite"
        held = frozenset(i for i, b in enumerate(buttons) if b)
        self.latest = HumanInput(np.clip(values, -1.0, 1.0) * self.scales, held,
                                 self.settings.deadman_button in held, now)
        return None

    def take_twist(self, values: Sequence[float], now: float) -> str | None:
        """Keep a Twist (its ``twist_fields`` in order) as the latest input, or return why it cannot be used."""
        velocity = np.asarray(values, dtype=np.float64)
        if not np.all(np.isfinite(velocity)):
            return f"Twist {dict(zip(self.twist_fields, velocity.tolist()))} is not finite"
        self.latest = HumanInput(np.clip(velocity, -self.scales, self.scales), frozenset(), True, now)
        return None

    def take_task_command(self, values: Sequence[float]) -> str | None:
        """Keep the task's command in effect (its topic, which a task-level takeover publishes on too: heard from
        whoever sets it, never the node's own while the human is in control), or return why it cannot be used."""
        if self.task_setpoint is None:
            return f"a {self.kind} takeover does not replace a task command"
        if self.active:
            return None
        command = np.asarray(values, dtype=np.float64)
        if command.shape != self.task_setpoint.shape or not np.all(np.isfinite(command)):
            return f"task command {command.tolist()}: needs {self.task_setpoint.size} finite values"
        self.task_setpoint = command
        return None

    def deadman_held(self, now: float) -> bool:
        latest = self.latest
        return latest is not None and latest.deadman and now - latest.received <= self.settings.input_timeout_s

    # ----- one tick
    def tick(self, state: RobotState | None, now: float, no_state_reason: str = "no state") -> TeleopStep:
        """Start, continue or end the takeover; ``state`` is the fresh measured state or None (then
        ``no_state_reason`` says why)."""
        step = TeleopStep()
        held = self.deadman_held(now)
        if self.active and not held:
            return self.end()
        if not held:
            return step
        problem = no_state_reason if state is None else self.takeover.state_problem(state)
        if problem:
            step.active, step.problem = self.active, f"deadman held, but no command: {problem}"
            return step
        if not self.active:
            self.takeover.begin(state, self.task_setpoint)
            self.active = True
            step.events.append("start")
        step.active = True
        command = self.takeover.command(self.latest.velocity, self.latest.buttons, state, 1.0 / self.rate_hz)
        if np.all(np.isfinite(command)):
            step.command = command
            step.action = getattr(self.takeover, "action", None)
        else:
            step.problem = f"no command: the {self.kind} mapping gave non-finite values {command.tolist()}"
        return step

    def end(self) -> TeleopStep:
        """End the takeover now (released, timed out or shutting down); nothing if none is in progress."""
        if not self.active:
            return TeleopStep()
        self.active = False
        release = self.takeover.release()
        if release is not None and self.task_setpoint is not None:
            self.task_setpoint = release.copy()  # the human's last command holds until the task's next
        return TeleopStep(events=["end"], command=release)


def fresh_state(listener: StateListener, timeout_s: float, now: float) -> tuple[RobotState | None, str]:
    """The listener's state if every topic is younger than ``timeout_s``, else (None, why not)."""
    stale = listener.staleness(now, timeout_s)
    return (None, stale) if stale else (listener.state(), "")


# ----------------------------------------------------------------------------------------- the node


def arrival(info: dict) -> float:
    """When a message reached this machine, on the monotonic clock: input that waited in a queue behind a
    busy executor is that much older, so a backlog cannot hold (or restart) a takeover."""
    received_ns = info.get("received_timestamp") or time.time_ns()  # system clock, set by the middleware
    return time.monotonic() - max(0, time.time_ns() - received_ns) * 1e-9


DEFAULTS = TeleopSettings()
PARAMETERS = {"robot": "", "bundle": "", "task": "", "config": "", "input": DEFAULTS.input, "input_topic": "",
              "deadman_button": DEFAULTS.deadman_button, "axes": None, "scales": None,
              "gripper_open_button": DEFAULTS.gripper_open_button,
              "gripper_close_button": DEFAULTS.gripper_close_button, "rate_hz": DEFAULTS.rate_hz,
              "input_timeout_s": DEFAULTS.input_timeout_s}


class TeleopNode(Node):
    """Topics around one ``TeleopRunner``: the runner decides, the node only carries."""

    def __init__(self, **kwargs: Any):
        super().__init__("teleop_node", **kwargs)
        dynamic = ParameterDescriptor(dynamic_typing=True)  # "scales:=[1, 2]" (ints) or "rate_hz:=50" too
        p = {name: self.declare_parameter(name, default, dynamic).value for name, default in PARAMETERS.items()}
        if not p["robot"]:
            raise TeleopError("parameter 'robot' is required (panda, go2 or cf2)")
        try:
            settings = TeleopSettings(
                input=str(p["input"]), deadman_button=int(p["deadman_button"]), axes=[int(a) for a in p["axes"] or []],
                scales=[float(s) for s in p["scales"] or []], gripper_open_button=int(p["gripper_open_button"]),
                gripper_close_button=int(p["gripper_close_button"]), rate_hz=float(p["rate_hz"]),
                input_timeout_s=float(p["input_timeout_s"]))
        except (TypeError, ValueError) as exc:
            raise TeleopError(f"a numeric parameter is not a number: {exc}") from None
        self.runner = runner = TeleopRunner(str(p["robot"]), settings, p["config"] or None, p["bundle"] or None,
                                            p["task"] or None)
        self.listener = StateListener(self, runner.deploy)
        self.intervention_publisher = self.create_publisher(String, INTERNAL["intervention"][0], 10)
        self.active_publisher = (self.create_publisher(Bool, INTERNAL["teleop_active"][0], 10)
                                 if runner.task_command is None else None)
        if runner.task_command is None:
            self.command_type, command_topic, qos = Float64MultiArray, INTERNAL["teleop_command"][0], 10
        else:
            self.command_type, command_topic = message_type(runner.task_command.type), runner.task_command.topic
            qos = qos_profile(runner.task_command.qos)
        self.command_publisher = self.create_publisher(self.command_type, command_topic, qos)
        self.action_publisher = (self.create_publisher(Float64MultiArray, INTERNAL["teleop_action"][0], 10)
                                 if runner.takeover.joint_level else None)  # what the human does as the task's action
        if runner.task_command is not None:
            self.create_subscription(self.command_type, command_topic, self._on_task_command, qos)
        if settings.input == "joy":
            input_topic = p["input_topic"] or "joy"
            self.create_subscription(Joy, input_topic, self._on_joy, 10)
        else:
            input_topic = p["input_topic"] or "teleop/twist"
            self.create_subscription(Twist, input_topic, self._on_twist, 10)
        self.create_timer(1.0 / runner.rate_hz, self._tick)
        if self.active_publisher is not None:
            self.create_timer(ACTIVE_PERIOD_S, self._publish_active)
        deadman = f"button {settings.deadman_button}" if settings.input == "joy" else "Twists arriving"
        self.get_logger().info(
            f"{runner.kind} teleop for the {runner.robot}: {settings.input} on {self.resolve_topic_name(input_topic)} "
            f"(deadman: {deadman}, input timeout {settings.input_timeout_s:g} s) -> "
            f"{self.resolve_topic_name(command_topic)} at {runner.rate_hz:g} Hz while the human is in control")

    def _on_joy(self, msg: Joy, info: dict) -> None:
        self._complain(self.runner.take_joy(list(msg.axes), list(msg.buttons), arrival(info)))

    def _on_twist(self, msg: Twist, info: dict) -> None:
        values = [float(get_field(msg, path)) for path in self.runner.twist_fields]
        self._complain(self.runner.take_twist(values, arrival(info)))

    def _on_task_command(self, msg: Any) -> None:
        values = [float(get_field(msg, path)) for path in self.runner.task_command.fields]
        problem = self.runner.take_task_command(values)
        if problem:
            self.get_logger().error(f"ignored: {problem}", throttle_duration_sec=ERROR_THROTTLE_S)

    def _complain(self, problem: str | None) -> None:
        if problem:
            self.get_logger().error(f"input ignored: {problem}", throttle_duration_sec=ERROR_THROTTLE_S)

    def _tick(self) -> None:
        now = time.monotonic()
        state, why = fresh_state(self.listener, self.runner.deploy.state_timeout_s, now)
        self.publish(self.runner.tick(state, now, why))

    def publish(self, step: TeleopStep) -> None:
        """In the order the safety layer needs: a takeover's first command before ``teleop/active`` true
        (else it would take an old one), ``teleop/active`` false before ``end``."""
        if step.problem:
            self.get_logger().error(step.problem, throttle_duration_sec=ERROR_THROTTLE_S)
        if "start" in step.events:
            self.intervention_publisher.publish(String(data="start"))
            self.get_logger().info("takeover: the human is in control")
        if step.action is not None and self.action_publisher is not None:  # before the command, as policy_node does
            self.action_publisher.publish(action_message(step.action))
        if step.command is not None:
            self.command_publisher.publish(self._command_message(step.command))
        if step.events:
            self._publish_active()
        if "end" in step.events:
            self.intervention_publisher.publish(String(data="end"))
            self.get_logger().info("takeover over: the policy is in control")

    def _command_message(self, command: np.ndarray) -> Any:
        msg = self.command_type()
        task = self.runner.task_command
        if task is None:
            msg.data = command.tolist()
            return msg
        if hasattr(msg, "header"):
            msg.header.stamp = self.get_clock().now().to_msg()
        for path, value in zip(task.fields, command):
            set_field(msg, path, float(value))
        return msg

    def _publish_active(self) -> None:
        if self.active_publisher is not None:
            self.active_publisher.publish(Bool(data=self.runner.active))

    def finish(self) -> None:
        """On shutdown: end a takeover in progress, and wait (briefly) until that is delivered."""
        self.publish(self.runner.end())
        for publisher in (self.intervention_publisher, self.active_publisher, self.command_publisher):
            if publisher is not None:
                publisher.wait_for_all_acked(Duration(seconds=0.5))


def main(args: list[str] | None = None) -> int:
    # SIGINT/SIGTERM only set a flag the loop checks, so a takeover's end is still published on the way out.
    init_ros(args)
    node = None
    try:
        with stop_on_signals() as stop:
            try:
                node = TeleopNode()
            except (ValueError, KeyError, ParameterException) as exc:  # bad parameters, config or robot
                print(f"teleop_node: error: {exc.args[0] if isinstance(exc, KeyError) else exc}", file=sys.stderr)
                return 2
            spin(node, stop, SingleThreadedExecutor())
            node.finish()
            return 0
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()

if __name__ == "__main__":
    sys.exit(main())
