"""``robostack bench deploy``: the state-to-command latency through policy and safety layer, and the control
rate the deployment sustains.

``policy_node`` (acting on every state, ``trigger:=state``) and ``safety_node`` run as processes, as in a
deployment (``robostack.real.graph``); this process is the robot's driver. It publishes the robot's state topics
(``configs/deploy/<robot>.yaml``, the primary source last, see ``robostack.real.state.primary_source``) in a
closed loop at ``rate_hz``: state k goes out at its deadline start + k / rate, or when the answer to state
k - 1 arrives if that is later. The answer is the first driver command that the safety node sent after the
policy sent its command for state k (the first on ``policy/command`` sent after the state), as told by the
senders' stamps. Driver commands in between are the safety node's own beat, not answers: a watchdog repeat,
or for a jointed robot the old command clamped around the new state (10% of panda-reach cycles), which can
even equal the answer, so values cannot tell them apart. (A beat between the policy's sending and the safety
node's taking the command would be taken for the answer, early by at most that transit.) The latency of
cycle k is the answer's arrival (the middleware's receive stamp) minus the time state k went out; no answer
within ``LOST_AFTER_S`` and the cycle is lost. Each answered cycle also splits in two legs: the state to the
policy's command (the policy's stamp), and that command to the answer's arrival (safety layer and transit).
A state that goes out more than a period late restarts the schedule from then, so the loop never bursts to
catch up.

The state is the robot model's home keyframe (the arm at home, the quadruped standing, the drone hovering)
with a little noise, drawn anew for each of ``STATE_POOL`` states built before the loop starts and cycled
through (consecutive states differ; none repeats within 2 s at 500 Hz). In the loop the driver only stamps
and publishes, as a real driver with its readings in hand would, instead of spending 16-90 µs of each cycle
building messages on the cores the nodes need. The nodes and this driver run in a namespace of their own,
and discovery stays on this machine unless ``ROS_AUTOMATIC_DISCOVERY_RANGE`` says otherwise: fake states must
not reach a real robot's nodes.
"""
from __future__ import annotations

import dataclasses
import os
import platform
import time
from pathlib import Path
from typing import Any, Callable

import mujoco
import numpy as np

from robostack import registry
from robostack.bundle import load_bundle
from robostack.real.graph import node_graph, started_graph
from robostack.real.bundle_fit import bundle_robot_config
from robostack.real.deploy_config import INTERNAL, DeployConfig, load_deploy_config
from robostack.real.messages import message_type
from robostack.real.robot_state import RobotState
from robostack.real.state import primary_source, state_messages

SHIPPED_BUNDLES = Path(__file__).resolve().parents[1] / "bundles"  # in a source checkout
DEFAULT_TASKS = ("go2-walk", "panda-reach", "cf2-hover")  # the first one with a shipped bundle is benched
BENCHED_NODES = ("policy_node", "safety_node")
LOST_AFTER_S = 0.05
STARTUP_TIMEOUT_S = 60.0  # the nodes import torch, MuJoCo and onnxruntime: slow on a loaded machine
STATE_NOISE = 1e-3  # rad, m, rad/s, m/s of noise on the home state
STATE_POOL = 1000  # noisy states the driver cycles through: 2 s at 500 Hz


def resolve_bundle(task: str | None, policy: str | os.PathLike | None) -> Path:
    """The bundle to bench: ``policy``, else the shipped bundle of ``task``, else of the first of
    ``DEFAULT_TASKS`` that has one. A ``task`` that disagrees with the bundle's is an error."""
    if policy is not None:
        bundle_task = load_bundle(policy).task
        if task is not None and bundle_task != task:
            raise ValueError(f"policy {policy} was trained for task {bundle_task!r}, not {task!r}")
        return Path(policy)
    candidates = [task] if task is not None else list(DEFAULT_TASKS)
    for name in candidates:
        if (SHIPPED_BUNDLES / name).is_dir():
            return SHIPPED_BUNDLES / name
    raise FileNotFoundError(f"no shipped bundle for {' or '.join(candidates)} in {SHIPPED_BUNDLES}: "
                            "give one with --policy")


def home_state(model: mujoco.MjModel, joint_names: list[str]) -> RobotState:
    """The robot at rest as its model's home keyframe has it, velocities zero."""
    data = mujoco.MjData(model)
    mujoco.mj_resetDataKeyframe(model, data, 0)
    positions = {name: float(data.qpos[model.jnt_qposadr[model.joint(name).id]]) for name in joint_names}
    base = {}
    if model.njnt and model.jnt_type[0] == mujoco.mjtJoint.mjJNT_FREE:
        base = dict(base_position=data.qpos[0:3].copy(), base_orientation=data.qpos[3:7].copy(),
                    base_linear_velocity=np.zeros(3), base_angular_velocity=np.zeros(3))
    return RobotState(joint_position=positions, joint_velocity=dict.fromkeys(joint_names, 0.0), **base)


def jittered(state: RobotState, rng: np.random.Generator) -> RobotState:
    """``state`` with ``STATE_NOISE`` on every value (the orientation kept a unit quaternion)."""
    def noisy(values: np.ndarray | None) -> np.ndarray | None:
        return None if values is None else values + rng.normal(0.0, STATE_NOISE, len(values))

    def noisy_joints(values: dict[str, float]) -> dict[str, float]:
        return dict(zip(values, noisy(np.fromiter(values.values(), dtype=np.float64, count=len(values)))))

    orientation = noisy(state.base_orientation)
    return RobotState(
        joint_position=noisy_joints(state.joint_position), joint_velocity=noisy_joints(state.joint_velocity),
        base_position=noisy(state.base_position),
        base_orientation=None if orientation is None else orientation / np.linalg.norm(orientation),
        base_linear_velocity=noisy(state.base_linear_velocity),
        base_angular_velocity=noisy(state.base_angular_velocity))


def cpu_model() -> str:
    """The processor's name (Linux /proc/cpuinfo; else what ``platform`` knows): figures move with it."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclasses.dataclass
class Cycles:
    """What one run of the closed loop measured."""

    latencies_ns: list[int] = dataclasses.field(default_factory=list)
    policy_ns: list[int] = dataclasses.field(default_factory=list)  # of each answered cycle: state to policy command
    sent: int = 0
    lost: int = 0
    driver_commands: int = 0  # answers and the safety node's own beats
    wall_s: float = 0.0


def _unused(msg: Any) -> None:
    """The callback of a subscription whose messages are taken by hand."""


class ClosedLoopDriver:
    """This process as the robot's driver: state out, then wait for the driver command that answers it."""

    def __init__(self, cfg: DeployConfig, model: mujoco.MjModel, joint_names: list[str], namespace: str,
                 seed: int = 0):
        import rclpy
        from rclpy.impl.implementation_singleton import rclpy_implementation
        from rclpy.qos import qos_profile_sensor_data

        self.rclpy = rclpy
        self.context = rclpy.Context()
        rclpy.init(context=self.context, args=["--ros-args", "-r", f"__ns:={namespace}"])
        self.node = rclpy.create_node("bench_driver", context=self.context)
        topics = cfg.topics
        # as robot drivers publish their state: best effort (rclpy's sensor data profile)
        self.publishers = {name: self.node.create_publisher(message_type(getattr(topics, name).type),
                                                            getattr(topics, name).topic, qos_profile_sensor_data)
                           for name in ("joint_states", "imu", "odometry") if getattr(topics, name) is not None}
        rest, rng = home_state(model, joint_names), np.random.default_rng(seed)
        stamp = self.node.get_clock().now().to_msg()  # restamped as each goes out
        self.states = [state_messages(cfg, jittered(rest, rng), stamp, joint_names) for _ in range(STATE_POOL)]
        self.stamped = [[msg for _, msg in messages if hasattr(msg, "header")] for messages in self.states]
        self.next_state = 0
        # Taken by _wait, never by an executor: the callbacks given to rclpy do not run.
        driver = topics.driver_command
        topic, type_ = INTERNAL["policy_command"]
        self.takers = [(self.node.create_subscription(message_type(driver.type), driver.topic, _unused, 10),
                        self._on_command),
                       (self.node.create_subscription(message_type(type_), topic, _unused, 10), self._on_policy_command)]
        self.wait_set = rclpy_implementation.WaitSet(len(self.takers), 0, 0, 0, 0, 0, self.context.handle)
        self.sent_ns = 0  # when this cycle's state went out (system clock, as the middleware's stamps)
        self.policy_ns: int | None = None  # when the policy sent its command for it
        self.candidates: list[tuple[int, int]] = []  # (sent, received) of driver commands since the state
        self.answer_ns: int | None = None
        self.awaiting = False
        self.driver_commands = 0

    def close(self) -> None:
        self.node.destroy_node()
        self.rclpy.try_shutdown(context=self.context)

    def _on_policy_command(self, msg: Any, info: Any) -> None:
        if self.awaiting and self.policy_ns is None and info["source_timestamp"] >= self.sent_ns:
            self.policy_ns = info["source_timestamp"]
            self._settle()

    def _on_command(self, msg: Any, info: Any) -> None:
        self.driver_commands += 1
        if self.awaiting and info["received_timestamp"] >= self.sent_ns:
            self.candidates.append((info["source_timestamp"], info["received_timestamp"]))
            self._settle()

    def _settle(self) -> None:
        """The answer, once the policy's command and a driver command sent after it are both in (the
        driver may take them in either order)."""
        if self.policy_ns is not None:
            self.answer_ns = next((received for sent, received in self.candidates if sent >= self.policy_ns), None)
            self.awaiting = self.answer_ns is None

    def _wait(self, timeout_s: float) -> None:
        """Wait up to ``timeout_s`` for a command, then take every command that is in. A wait set of its own,
        not an executor: rclpy's single-threaded executor rebuilds its wait set and walks every entity in
        Python on each spin, which put this process at 55% of a core at 500 Hz against 32% (BENCHMARKS.md),
        and the events executor, as the nodes use, cannot give the message info with the senders' stamps
        that the answer is told by."""
        self.wait_set.clear_entities()
        for subscription, _ in self.takers:
            self.wait_set.add_subscription(subscription.handle)
        self.wait_set.wait(max(0, int(timeout_s * 1e9)))
        ready = self.wait_set.get_ready_entities("subscription")
        for subscription, handler in self.takers:
            if subscription.handle.pointer in ready:
                while (taken := subscription.handle.take_message(subscription.msg_type, False)) is not None:
                    handler(*taken)

    def _spin_until(self, deadline: float) -> None:
        while (remaining := deadline - time.monotonic()) > 0:
            self._wait(remaining)

    def _publish_state(self) -> None:
        """The next state of the pool, stamped now."""
        k, self.next_state = self.next_state, (self.next_state + 1) % STATE_POOL
        messages, stamp = self.states[k], self.node.get_clock().now().to_msg()
        for msg in self.stamped[k]:
            msg.header.stamp = stamp
        for source, msg in messages[:-1]:
            self.publishers[source].publish(msg)
        source, msg = messages[-1]  # the primary: the state is complete, the policy acts now
        self.answer_ns, self.policy_ns, self.candidates, self.awaiting = None, None, [], True
        self.sent_ns = time.time_ns()  # the clock of the middleware's receive stamps
        self.publishers[source].publish(msg)

    def run(self, rate_hz: float, seconds: float, until: Callable[[Cycles], bool] = lambda cycles: False) -> Cycles:
        """Closed-loop cycles for ``seconds`` (or until ``until(cycles)`` is true)."""
        period, cycles = 1.0 / rate_hz, Cycles()
        driver_commands_before = self.driver_commands
        start = deadline = time.monotonic()
        while deadline - start < seconds and not until(cycles):
            self._spin_until(deadline)
            sent = time.monotonic()
            self._publish_state()
            if sent > deadline + period:  # over a period late: a new schedule from now, not a burst
                deadline = sent
            deadline += period
            lost_at = sent + LOST_AFTER_S
            while self.answer_ns is None and (remaining := lost_at - time.monotonic()) > 0:
                self._wait(remaining)
            self.awaiting = False
            cycles.sent += 1
            if self.answer_ns is None:
                cycles.lost += 1
            else:
                cycles.latencies_ns.append(self.answer_ns - self.sent_ns)
                cycles.policy_ns.append(self.policy_ns - self.sent_ns)
        self._spin_until(deadline)  # the last cycle lasts its period too
        cycles.wall_s = time.monotonic() - start
        cycles.driver_commands = self.driver_commands - driver_commands_before
        return cycles


def percentiles(values_ms: np.ndarray) -> dict[str, float] | None:
    """p50, p90, p99 and max in ms, or None for no values."""
    if not values_ms.size:
        return None
    return ({f"p{q}": round(float(np.percentile(values_ms, q)), 3) for q in (50, 90, 99)}
            | {"max": round(float(values_ms.max()), 3)})


def bench_deploy(task: str | None = None, policy: str | os.PathLike | None = None, rate_hz: float = 500.0,
                 duration_s: float = 10.0, warmup_s: float = 1.0, log_dir: Path | None = None) -> dict[str, Any]:
    """Run the closed loop (see the module docstring) and report latency percentiles, achieved rate, lost
    cycles, each process's CPU share and the machine."""
    bundle_path = resolve_bundle(task, policy)
    bundle = load_bundle(bundle_path)
    robot = registry.robot(bundle.robot)
    cfg = load_deploy_config(robot.name)
    primary = primary_source(cfg)
    nodes = [spec for spec in node_graph(bundle_path) if spec.name in BENCHED_NODES]
    nodes = [dataclasses.replace(spec, parameters={**spec.parameters, "trigger": "state"})
             if spec.name == "policy_node" else spec for spec in nodes]
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")  # read by this process's rclpy too
    namespace = f"/robostack_bench_{os.getpid()}"
    model = robot.build_model(bundle_robot_config(bundle.metadata, robot, str(bundle_path)))
    driver = ClosedLoopDriver(cfg, model, list(bundle.metadata["joint_names"]), namespace)
    try:
        with started_graph(nodes, log_dir=log_dir, namespace=namespace) as procs:
            def exit_codes() -> dict[str, int | None]:
                return {name: proc.poll() for name, proc in procs.items()}

            def node_exited() -> bool:
                return any(code is not None for code in exit_codes().values())

            started = driver.run(rate_hz, STARTUP_TIMEOUT_S, until=lambda c: node_exited() or bool(c.latencies_ns))
            if not started.latencies_ns or node_exited():
                raise RuntimeError(f"the nodes did not answer the driver within {STARTUP_TIMEOUT_S:g} s (exit codes "
                                   f"{exit_codes()}{f', logs: {log_dir}' if log_dir else ''})")
            driver.run(rate_hz, warmup_s)
            pids = {**{name: proc.pid for name, proc in procs.items()}, "driver": os.getpid()}
            cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
            cycles = driver.run(rate_hz, duration_s)
            cpu = {name: round(100 * (cpu_seconds(pid) - cpu_before[name]) / cycles.wall_s, 1)
                   for name, pid in pids.items()}
            if node_exited():
                raise RuntimeError(f"a node exited during the measurement (exit codes {exit_codes()})")
    finally:
        driver.close()
    latency_ms = np.array(cycles.latencies_ns) * 1e-6
    policy_ms = np.array(cycles.policy_ns) * 1e-6
    return {
        "task": bundle.task, "robot": bundle.robot, "policy": str(bundle_path),
        "state_topic": getattr(cfg.topics, primary).topic, "driver_topic": cfg.topics.driver_command.topic,
        "rate_hz": rate_hz, "duration_s": duration_s, "achieved_rate_hz": round(cycles.sent / cycles.wall_s, 2),
        "cycles": cycles.sent, "lost": cycles.lost, "driver_commands": cycles.driver_commands,
        "latency_ms": percentiles(latency_ms),
        # the two legs of each answered cycle: the state's transit and the policy, then the policy command's
        # transit, the safety layer and the driver command's transit
        "stages_ms": {"policy": percentiles(policy_ms), "safety": percentiles(latency_ms - policy_ms)},
        "cpu_percent": cpu,
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "load_1min": round(os.getloadavg()[0], 2)},
        **({"logs": str(log_dir)} if log_dir else {}),
    }
