"""``sim_robot_node``: a MuJoCo robot behind the same topics and message types as the real driver.

A deployment (policy node, safety layer, recorder) is rehearsed and tested end to end against it without
hardware: it subscribes to the driver command topic and publishes joint states, IMU and odometry as
``configs/deploy/<robot>.yaml`` says, plus the task command a simulated operator chose.

Run::

    python -m robostack.real.sim_robot_node --ros-args -p bundle:=bundles/cf2-hover -p episodes:=10
    python -m robostack.real.sim_robot_node --ros-args -p task:=go2-walk -p randomize:=false

(or the ``sim_robot_node`` console script).

Parameters
    ``bundle`` (string): a policy bundle directory; its metadata names the task and holds the exact task
        config the policy trained with, which is what gets simulated. Or:
    ``task`` (string): a task name, for use without a bundle (its YAML config).
    ``overrides`` (string array): ``key=value`` changes to that task config (e.g. ``sim.episode_length_s=2``).
    ``randomize`` (true): the training randomization (masses, friction, gains, pushes, wind...) runs on
        startup, reset and interval events; false simulates the play variant.
    ``latency_s`` (0.0): a received command takes effect this much simulated time later (a queue).
    ``seed`` (0), ``episodes`` (0: run until stopped), ``real_time_factor`` (1.0: simulated seconds per
        wall second; tests may run faster).
    ``start_paused`` (false): hold the first episode's initial state (publishing it at the control rate)
        until the policy node or a human is in control: the first driver command that arrives after a
        message on ``policy/command`` or ``teleop/command`` while the safety layer says it passes them
        (``safety/status``: ``passes``), i.e. once policy and safety layer are both up and have found each
        other. A real robot stands still until it is driven; so no episode is lost to nodes that start or
        discover each other slowly (seconds, on a loaded machine). Driver commands before that (the safety
        layer's fallback) are dropped.
    ``reset_safety`` (false): at every episode start, call the safety layer's ``safety/reset`` service,
        as an operator who puts the robot back clears a tripped envelope; so each episode is its own trial.
    ``intervener`` (false): a simulated human watches the robot (``robostack.teleop.intervener``: the task's
        rule on the simulator's privileged state) and, when it goes wrong, takes over on ``joy`` as a gamepad
        with a deadman would, for ``teleop_node`` (``input:=joy``) beside it; it hands back once the robot is
        back on track. A task without such a rule exits 2.
    ``await_recorded`` (string array, default none): with ``start_paused``, the robot publishes no state (and
        the simulation does not start) until the recorder says it hears these topics (as its ``topics`` names
        them, ``recorder/status``), so the bag holds the episode's first messages (a takeover's start, on a loaded
        machine where discovery takes seconds) and the policy acts on nothing before; after ``AWAIT_RECORDER_S``
        it starts anyway and names what the recorder does not hear.

Topics (relative: they follow the node's namespace)
    in: the driver command (``topics.driver_command``), one value per actuator in MuJoCo actuator order,
        clipped to the actuators' control ranges. A message with the wrong length or NaN/inf is not applied
        (the previous command is held) and a throttled error names the problem. Before the first command the
        task's default controls apply (the action offset: the home pose, the hover thrust); the latest
        command is held across episode resets, as the policy node keeps sending.
    out, after every control step, stamped with the node clock: ``topics.joint_states`` (names in actuator
        order, positions, velocities, efforts = the actuators' generalized forces); ``topics.imu``
        (orientation and body angular velocity of the floating base; linear acceleration from the model's
        first accelerometer, including gravity as a real IMU reads it, or covariance[0] = -1 "unknown" per
        REP 145 when the model has none; other covariances 0 = unknown); ``topics.odometry`` (pose in the
        ``odom`` frame, twist of ``base_link`` in the frame the config says, body by default per REP 105);
        ``topics.object`` for a task with an object (panda-lift's cube: its odometry, as a motion-capture
        system would report it) and ``topics.fixtures`` for the bodies it places per episode (panda-insert's
        hole: its pose); the primary source (``robostack.real.state.primary_source``) last, so a policy that
        acts on it sees the whole step.
    out: ``topics.task_command`` at every reset and every 0.1 s of simulated time, except while a human has
        taken over (between ``start`` and ``end`` on ``teleop/intervention``): the human's task command then
        replaces the simulated operator's (``teleop_node``); ``joy`` (sensor_msgs/Joy) with ``intervener``;
        ``sim/episode``
        (std_msgs/String, JSON: index, success, return, length, metrics) at every episode end, before the reset
        state (a policy starts its episode over first; the ended episode's commands are dropped, and the driver
        commands that come before the policy's or a human's next are the safety layer holding the ended
        episode's: ignored, the task's reset controls held instead; so are the driver commands of a takeover
        held across the episode's end, until the human lets go or takes over anew), transient-local
        (the last 100 reach a subscriber that joins late and asks for transient-local durability; before
        exiting the node waits up to 1 s for the reports to be acknowledged).

Unattended: once driven, a robot that gets no command on ``policy/command`` or ``teleop/command`` for
``UNATTENDED_S`` has lost its policy (or human): only the safety layer's fallback moves it, as on a real robot.
Physics goes on, but the task no longer judges, ends or resets the episode (no operator puts the robot back
while the fallback lands or lays it down); with commands again, the episode goes on.

Stepping: one ``TaskEnv.step_controls`` per control period on a wall-clock schedule (absolute deadlines;
subscription callbacks run while waiting). A step that ends after the next one was due is an overrun: it
is counted and the schedule restarts from now instead of bursting to catch up, as a real robot cannot.

After ``episodes`` episodes, or on SIGINT/SIGTERM, it prints one JSON summary line on stdout (success rate,
mean return, length and metrics, achieved step rate and overruns) and exits 0. A missing or corrupt bundle,
an unknown task or a bad parameter exits 2 with a one-line message on stderr.
"""
from __future__ import annotations

import json
import math
import sys
import time
from collections import deque
from typing import Any, Callable

import mujoco
import numpy as np
import rclpy
import torch
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.duration import Duration
from rclpy.exceptions import ParameterException
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile
from std_msgs.msg import String
from std_srvs.srv import Trigger

from robostack import registry, sim
from robostack.bundle import BundleError, read_metadata
from robostack.config import ConfigError
from robostack.real.executor import init_ros, stop_on_signals
from robostack.real.bundle_fit import check_bundle_fits, check_bundle_task
from robostack.real.deploy_config import INTERNAL, load_deploy_config
from robostack.real.messages import MessageConfigError, get_field, message_type, set_field
from robostack.real.observation import free_joints
from robostack.real.robot_state import BodyState, Pose, RobotState
from robostack.real.state import BASE_FRAME, FIXTURE, WORLD_FRAME, status_qos, stamp_header, state_messages
from robostack.sim.task_env import control_limits
from robostack.teleop.devices import TeleopError
from robostack.teleop.intervener import PadState, SimulatedHuman

TASK_COMMAND_PERIOD_S = 0.1
COMPLAINT_PERIOD_S = 1.0  # throttle of the bad-command error, per kind of problem
EPISODE_TOPIC = "sim/episode"
UNATTENDED_S = 0.5  # no policy or human command for this long: the robot is unattended
EPISODE_ACK_TIMEOUT_S = 1.0
EPISODE_QOS = QoSProfile(depth=100, durability=DurabilityPolicy.TRANSIENT_LOCAL)  # late joiners get past episodes
FULL_STATE = int(mujoco.mjtState.mjSTATE_FULLPHYSICS)
PARAMETERS = {"bundle": "", "task": "", "overrides": None, "randomize": True, "latency_s": 0.0, "seed": 0,
              "episodes": 0, "real_time_factor": 1.0, "start_paused": False,
              "reset_safety": False, "intervener": False, "await_recorded": None}
AWAIT_RECORDER_S = 30.0  # the longest a paused start waits for the recorder to hear its topics
# One env: mujoco.rollout splits work across envs, so more threads would only sit idle beside the policy node.
ONE_THREAD = "sim.num_threads=1"
INTERVENER_TOPIC = "joy"  # teleop_node's default gamepad input


class SimRobotError(ValueError):
    """Bad parameters: the message names the parameter and what is wrong."""


def actuated_joint_names(model: mujoco.MjModel) -> list[str]:
    """Joints driven by actuators, in actuator order (what a bundle's ``joint_names`` lists)."""
    return [model.joint(int(model.actuator_trnid[i, 0])).name for i in range(model.nu)
            if model.actuator_trntype[i] == mujoco.mjtTrn.mjTRN_JOINT]


def free_body(data: mujoco.MjData, qpos_adr: int, dof_adr: int) -> BodyState:
    """A free joint's state: position and orientation (w, x, y, z), linear velocity in the world frame,
    angular velocity in the body frame (MuJoCo's free-joint conventions)."""
    return BodyState(data.qpos[qpos_adr:qpos_adr + 3], data.qpos[qpos_adr + 3:qpos_adr + 7],
                     data.qvel[dof_adr:dof_adr + 3], data.qvel[dof_adr + 3:dof_adr + 6])


class SimRobotNode(Node):
    """One simulated robot; ``run`` paces it, ``summary`` reports it."""

    def __init__(self, **kwargs: Any):
        super().__init__("sim_robot_node", **kwargs)
        dynamic = ParameterDescriptor(dynamic_typing=True)  # accept "latency_s:=0" (an int) too
        for name, default in PARAMETERS.items():
            self.declare_parameter(name, default, dynamic)
        p = {name: self.get_parameter(name).value for name in PARAMETERS}
        try:
            self.latency_s = float(p["latency_s"])
            self.real_time_factor = float(p["real_time_factor"])
            self.episodes_wanted = int(p["episodes"])
            seed = int(p["seed"])
        except (TypeError, ValueError) as exc:
            raise SimRobotError(f"latency_s, real_time_factor, episodes and seed must be numbers ({exc})") from None
        if not (self.latency_s >= 0 and math.isfinite(self.latency_s)):
            raise SimRobotError(f"latency_s must be >= 0, got {p['latency_s']}")
        if not (self.real_time_factor > 0 and math.isfinite(self.real_time_factor)):
            raise SimRobotError(f"real_time_factor must be > 0, got {p['real_time_factor']}")
        if self.episodes_wanted < 0:
            raise SimRobotError(f"episodes must be >= 0 (0 runs forever), got {self.episodes_wanted}")
        overrides = [p["overrides"]] if isinstance(p["overrides"], str) else list(p["overrides"] or [])
        task, task_config, joint_names = self._resolve_task(str(p["bundle"]), str(p["task"]))
        self.env = sim.make_env(task, num_envs=1, seed=seed, overrides=[ONE_THREAD, *overrides],
                                play=not bool(p["randomize"]), config=task_config)
        self.env.reset(seed=seed)
        model = self.env.default_model
        self.cfg = load_deploy_config(self.env.task.robot, task=task)
        self.control_dt = self.env.control_dt
        self.joint_names = joint_names or actuated_joint_names(model)
        self._setup_physics_readout(model)
        self._check_layout(model)

        topics = self.cfg.topics
        self._topic_publishers = {
            name: self.create_publisher(message_type(getattr(topics, name).type), getattr(topics, name).topic, 10)
            for name in ("joint_states", "imu", "odometry", "task_command", "object")
            if getattr(topics, name) is not None}
        self._fixtures = {name: model.body(name).id for name in self.env.task.fixtures if name in topics.fixtures}
        for name in self._fixtures:
            self._topic_publishers[FIXTURE + name] = self.create_publisher(
                message_type(topics.fixtures[name].type), topics.fixtures[name].topic, 10)
        self._episode_publisher = self.create_publisher(String, EPISODE_TOPIC, EPISODE_QOS)
        self.create_subscription(message_type(topics.driver_command.type), topics.driver_command.topic,
                                 self._on_driver_command, 10)

        self.controls = self.env.ctrl_target[0].cpu().numpy().astype(np.float64)  # the task's default controls
        self._ctrl_range = control_limits(model)
        self._pending: deque[tuple[float, np.ndarray]] = deque()  # (sim time it takes effect, controls)
        self._last_complaint: dict[str, float] = {}
        self.rejected_commands = 0
        self.steps = 0
        self.overruns = 0
        self.wall_s = 0.0
        self.episode_stats: list[dict[str, Any]] = []
        self.paused = bool(p["start_paused"])
        self._commander_seen = False  # whether the policy or a human has spoken yet
        self._commanded_at = -math.inf  # monotonic s of the latest policy or human command
        self._reset_at = -math.inf  # monotonic s of the latest episode reset
        for key in ("policy_command", "teleop_command"):
            topic, type_ = INTERNAL[key]
            self.create_subscription(message_type(type_), topic, self._on_commander, 10)
        self._safety_reset = (self.create_client(Trigger, INTERNAL["reset_service"][0])
                              if p["reset_safety"] else None)
        self._human_in_control = False
        self._human_since = -math.inf  # monotonic s of the latest takeover's start
        self.create_subscription(String, INTERNAL["intervention"][0], self._on_intervention, 10)
        self._safety_passes: bool | None = None  # None: no safety layer has said (it runs without one)
        self.create_subscription(String, INTERNAL["status"][0], self._on_safety_status, status_qos())
        awaited = p["await_recorded"]
        self._await_recorded = [awaited] if isinstance(awaited, str) else [t for t in awaited or [] if t]
        self._recorder_heard: set[str] = set()
        self._awaiting_since = time.monotonic()
        if self._await_recorded:
            self.create_subscription(String, INTERNAL["recorder_status"][0], self._on_recorder_status,
                                     QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL))
        self._task_command_every = max(1, round(TASK_COMMAND_PERIOD_S / self.control_dt))
        self.human = None
        if p["intervener"]:
            try:
                self.human = SimulatedHuman(self.env, registry.robot(self.env.task.robot).kind)
            except TeleopError as exc:
                raise SimRobotError(str(exc)) from None
            self._joy_publisher = self.create_publisher(message_type("sensor_msgs/msg/Joy"), INTERVENER_TOPIC, 10)
        self._publish_task_command()
        self.get_logger().info(
            f"simulating {task} ({'randomized' if p['randomize'] else 'play'}, seed {seed}) at "
            f"{1 / self.control_dt:g} Hz x {self.real_time_factor:g} real time, command latency {self.latency_s:g} s; "
            f"commands on {topics.driver_command.topic} ({model.nu} actuators)")

    # ----- setup
    def _resolve_task(self, bundle_path: str, task: str) -> tuple[str, dict | None, list[str] | None]:
        """Task name, the bundle's task config and joint names (None without a bundle)."""
        if not bundle_path and not task:
            raise SimRobotError("give a policy bundle (-p bundle:=DIR) or a task (-p task:=NAME)")
        resolved: tuple[str, dict | None, list[str] | None] = (task, None, None)
        if bundle_path:
            metadata = read_metadata(bundle_path)
            if task and task != metadata["task"]:
                raise SimRobotError(f"bundle {bundle_path} is for task {metadata['task']!r}, not {task!r}")
            robot = registry.robot(check_bundle_task(metadata, bundle_path))
            check_bundle_fits(metadata, bundle_path, robot, load_deploy_config(robot.name, task=metadata["task"]),
                              str(robot.deploy_config_file))
            resolved = (metadata["task"], metadata["task_config"], list(metadata.get("joint_names") or []))
        try:
            sim.task(resolved[0])
        except KeyError as exc:
            raise SimRobotError(exc.args[0]) from None
        return resolved

    def _check_layout(self, model: mujoco.MjModel) -> None:
        """The deploy config and the model must agree, or every message would be wrong."""
        topics = self.cfg.topics
        if topics.joint_states is not None and len(self.joint_names) != model.nu:
            raise SimRobotError(f"{len(self.joint_names)} joint names for {model.nu} actuators: joint_states needs "
                                "one joint per actuator")
        if topics.task_command is not None and len(topics.task_command.fields) != self.env.task.command_dim:
            raise SimRobotError(f"deploy config {self.cfg.robot}: task_command has {len(topics.task_command.fields)} "
                                f"fields, the task's command has {self.env.task.command_dim} values")
        if (topics.imu is not None or topics.odometry is not None) and self._base_qpos is None:
            raise SimRobotError(f"deploy config {self.cfg.robot} wants IMU/odometry but the model has no floating base")

    def _setup_physics_readout(self, model: mujoco.MjModel) -> None:
        """Addresses of what gets published; one scratch MjData recomputes forces and sensors per step."""
        self._data = mujoco.MjData(model)
        self._joint_qpos = self.env.actuator_qpos_adr.cpu().numpy()
        self._joint_dof = self.env.actuator_dof_adr.cpu().numpy()
        base, obj = free_joints(model)
        self._base_qpos = int(model.jnt_qposadr[base]) if base is not None else None  # the floating base, if any
        self._base_dof = int(model.jnt_dofadr[base]) if base is not None else None
        # the task's object, published when the deploy config has a topic for it
        self._object = (int(model.jnt_qposadr[obj]), int(model.jnt_dofadr[obj])) if obj is not None else None
        accelerometers = [i for i in range(model.nsensor)
                          if model.sensor_type[i] == mujoco.mjtSensor.mjSENS_ACCELEROMETER]
        self._accelerometer = (None if not accelerometers else
                               slice(model.sensor_adr[accelerometers[0]], model.sensor_adr[accelerometers[0]] + 3))

    # ----- driver commands
    def _on_driver_command(self, msg: Any) -> None:
        values = np.asarray(get_field(msg, self.cfg.topics.driver_command.data), dtype=np.float64)
        nu = len(self.controls)
        if values.shape != (nu,):
            self._reject("length", f"wrong length: {values.size} values, expected {nu} (one per actuator)")
        elif not np.isfinite(values).all():
            bad = np.flatnonzero(~np.isfinite(values)).tolist()
            self._reject("finite", f"non-finite values (NaN or inf) at indices {bad}")
        elif self._ended_episodes_command():
            pass
        elif not self.paused:
            self._pending.append((self.steps * self.control_dt + self.latency_s, values))
        elif self._commander_seen and self._safety_passes is not False and self._recorder_hears_enough():
            self.paused = False
            self._pending.append((self.latency_s, values))
            self.get_logger().info("the policy (or a human) drives the robot now: the simulation starts")

    def _ended_episodes_command(self) -> bool:
        """Whether a driver command now is the ended episode's: the safety layer holding it until the policy or a
        human speaks in the new one, or a takeover held across the reset until the human lets go or takes over anew
        (its gripper, closed on a lifted cube, started the next episode closed on nothing)."""
        if self.unattended:
            return False
        return self._commanded_at < self._reset_at or (self._human_in_control and self._human_since < self._reset_at)

    def _on_commander(self, _msg: Any) -> None:
        self._commander_seen = True
        self._commanded_at = time.monotonic()

    @property
    def unattended(self) -> bool:
        """Driven once, but by neither the policy nor a human for ``UNATTENDED_S`` (one has died): only the
        safety layer's fallback moves the robot now, and no operator puts it back at an episode's end."""
        return self._commander_seen and time.monotonic() - self._commanded_at > UNATTENDED_S

    def _on_safety_status(self, msg: String) -> None:
        try:
            self._safety_passes = json.loads(msg.data).get("passes") is not None
        except (ValueError, AttributeError):
            self._safety_passes = None

    def _on_intervention(self, msg: String) -> None:
        self._human_in_control = msg.data == "start"
        if self._human_in_control:
            self._human_since = time.monotonic()

    def _on_recorder_status(self, msg: String) -> None:
        try:
            self._recorder_heard = set(json.loads(msg.data).get("heard", []))
        except (ValueError, AttributeError, TypeError):
            return

    def _recorder_hears_enough(self) -> bool:
        """Whether the recorder hears every topic of ``await_recorded`` (or has not for ``AWAIT_RECORDER_S``)."""
        missing = [topic for topic in self._await_recorded if topic not in self._recorder_heard]
        if not missing:
            return True
        waited = time.monotonic() - self._awaiting_since
        if waited >= AWAIT_RECORDER_S:
            self.get_logger().warning(f"the recorder does not hear {missing} after {waited:.0f} s: the simulation "
                                      "starts without them in the bag", throttle_duration_sec=60.0)
            return True
        self.get_logger().info(f"waiting for the recorder to hear {missing}", throttle_duration_sec=2.0)
        return False

    def _reject(self, kind: str, problem: str) -> None:
        self.rejected_commands += 1
        now = time.monotonic()
        if now - self._last_complaint.get(kind, -math.inf) >= COMPLAINT_PERIOD_S:
            self._last_complaint[kind] = now
            self.get_logger().error(f"driver command ignored, holding the previous one: {problem} "
                                    f"({self.rejected_commands} rejected so far)")

    def _due_controls(self) -> np.ndarray:
        """The newest received command whose latency has elapsed by this step (else the held one)."""
        now = self.steps * self.control_dt
        while self._pending and self._pending[0][0] <= now + 1e-9:
            self.controls = self._pending.popleft()[1]
        return self.controls

    # ----- stepping
    def step(self) -> None:
        if self.paused:  # the policy needs the state and the task command to start
            # ... once the recorder hears what it awaits: before, the policy would act on a robot that drops its
            # commands, and a relative action's targets wind up (panda-insert's end effector: 2 of 13 deploys failed)
            if self._recorder_hears_enough():
                self._publish_state()
                self._publish_task_command()
            return
        if self.unattended:  # physics goes on; the task does not judge, end or reset the episode
            self.env.sim.step(np.clip(self._due_controls(), *self._ctrl_range.T)[None],
                              np.zeros_like(self.env.external_force))
            self.steps += 1
            self._publish_state()
            return
        controls = torch.as_tensor(self._due_controls(), dtype=torch.float32)[None]
        _, _, _, _, info = self.env.step_controls(controls)
        self.steps += 1
        if "episode" in info:
            # the robot was put back: the ended episode's commands, held (here, and by the safety layer until the
            # policy or a human speaks again) or in flight, are not the new one's (a gripper closed on a lifted cube
            # closed again on nothing at panda-lift's next start); the report and the new task command go before
            # the reset state, so the policy starts its episode over before acting on it
            self._pending.clear()
            self.controls = self.env.ctrl_target[0].cpu().numpy().astype(np.float64)
            self._reset_at = time.monotonic()
            self._finish_episode(info["episode"])
            self._publish_task_command()  # the new episode's, before its first state too
        self._publish_state()
        if self.human is not None:
            self._publish_pad(self.human.tick(self.env))
        if "episode" not in info and self.steps % self._task_command_every == 0:
            self._publish_task_command()

    def done(self) -> bool:
        return 0 < self.episodes_wanted <= len(self.episode_stats)

    def run(self, executor: SingleThreadedExecutor, stop_requested: Callable[[], bool]) -> None:
        """Step on a wall-clock schedule until done, handling subscriptions while waiting."""
        period = self.control_dt / self.real_time_factor
        start = deadline = time.monotonic()
        while not self.done() and not stop_requested() and rclpy.ok():
            executor.spin_once(timeout_sec=0)
            while (remaining := deadline - time.monotonic()) > 0:
                executor.spin_once(timeout_sec=remaining)
            if self.paused:
                start = time.monotonic()  # the achieved rate counts simulated steps only
            self.step()
            deadline += period
            if time.monotonic() > deadline:
                self.overruns += 1
                deadline = time.monotonic()
            self.wall_s = time.monotonic() - start

    # ----- publishing
    def _publish_pad(self, pad: PadState | None) -> None:
        if pad is None:
            return
        msg = self._joy_publisher.msg_type(axes=pad.axes, buttons=pad.buttons)
        msg.header.stamp = self.get_clock().now().to_msg()
        self._joy_publisher.publish(msg)

    def _read_physics(self) -> mujoco.MjData:
        """An MjData at the current state with the applied controls: actuator forces and sensors filled in."""
        batch, data = self.env.sim, self._data
        mujoco.mj_setState(batch.models[0], data, batch.state[0], FULL_STATE)
        data.ctrl[:] = batch.ctrl[0]
        data.qfrc_applied[:] = self.env.external_force[0]  # pushes and wind show in the accelerometer
        mujoco.mj_forward(batch.models[0], data)
        return data

    def _publish_state(self) -> None:
        data = self._read_physics()
        base = {}
        if self._base_qpos is not None:
            body = free_body(data, self._base_qpos, self._base_dof)
            base = dict(base_position=body.position, base_orientation=body.orientation,
                        base_linear_velocity=body.linear_velocity, base_angular_velocity=body.angular_velocity)
        model = self.env.sim.models[0]  # this episode's: the task placed its fixtures in it
        state = RobotState(joint_position=dict(zip(self.joint_names, data.qpos[self._joint_qpos])),
                           joint_velocity=dict(zip(self.joint_names, data.qvel[self._joint_dof])),
                           object=free_body(data, *self._object) if self._object is not None else None,
                           fixtures={name: Pose(model.body_pos[body], model.body_quat[body])
                                     for name, body in self._fixtures.items()}, **base)
        accelerometer = None if self._accelerometer is None else data.sensordata[self._accelerometer]
        for source, msg in state_messages(self.cfg, state, self.get_clock().now().to_msg(), self.joint_names,
                                          data.qfrc_actuator[self._joint_dof], accelerometer):
            self._topic_publishers[source].publish(msg)

    def _publish_task_command(self) -> None:
        t = self.cfg.topics.task_command
        if t is None or self._human_in_control:
            return
        msg = self._topic_publishers["task_command"].msg_type()
        stamp_header(msg, self.get_clock().now().to_msg(), WORLD_FRAME if self._base_qpos is not None else BASE_FRAME)
        for path, value in zip(t.fields, self.env.command[0].tolist()):
            set_field(msg, path, float(value))
        self._topic_publishers["task_command"].publish(msg)

    def _finish_episode(self, episode: dict[str, Any]) -> None:
        stats = {"episode": len(self.episode_stats), "success": bool(episode["success"][0] > 0.5),
                 "return": float(episode["return"][0]), "length": int(episode["length"][0]),
                 "metrics": {k.removeprefix("metric/"): float(v[0]) for k, v in episode.items()
                             if k.startswith("metric/")}}
        self.episode_stats.append(stats)
        line = json.dumps(stats)
        self._episode_publisher.publish(String(data=line))
        self.get_logger().info(f"episode end: {line}")
        if self._safety_reset is not None and self._safety_reset.service_is_ready():
            self._safety_reset.call_async(Trigger.Request())

    def deliver_episode_reports(self) -> None:
        """Before exiting: a harness must get the last episode's report, so wait (briefly) for its ack."""
        self._episode_publisher.wait_for_all_acked(Duration(seconds=EPISODE_ACK_TIMEOUT_S))

    def summary(self) -> dict[str, Any]:
        episodes = self.episode_stats
        metric_names = episodes[0]["metrics"] if episodes else {}

        def mean(values: list) -> float | None:
            return float(np.mean(values)) if values else None

        return {
            "task": self.env.task.name, "episodes": len(episodes),
            "success_rate": mean([e["success"] for e in episodes]),
            "mean_return": mean([e["return"] for e in episodes]),
            "mean_length": mean([e["length"] for e in episodes]),
            "metrics": {name: mean([e["metrics"][name] for e in episodes]) for name in metric_names},
            "control_rate_hz": self.real_time_factor / self.control_dt,
            "steps": self.steps, "steps_per_s": self.steps / self.wall_s if self.wall_s else None,
            "overruns": self.overruns, "rejected_commands": self.rejected_commands,
        }


def main(args: list[str] | None = None) -> int:
    """Console-script entry point; returns the process exit code."""
    init_ros(args)
    node = None
    try:
        with stop_on_signals() as stop:  # a flag: the step in progress finishes
            try:
                node = SimRobotNode()
            except (SimRobotError, BundleError, ConfigError, MessageConfigError, ParameterException) as exc:
                print(f"sim_robot_node: error: {exc}", file=sys.stderr, flush=True)
                return 2
            executor = SingleThreadedExecutor()
            executor.add_node(node)
            try:
                node.run(executor, lambda: bool(stop))
            except ExternalShutdownException:
                pass
            node.deliver_episode_reports()
            print(json.dumps(node.summary()), flush=True)
            return 0
    finally:
        if node is not None:
            node.env.close()
            node.destroy_node()
        rclpy.try_shutdown()

if __name__ == "__main__":
    sys.exit(main())
