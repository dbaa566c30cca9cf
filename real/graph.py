"""The deployment node graph, described once: the ROS 2 launch files and ``robostack deploy`` both start it.

``node_graph`` checks the bundle against the robot and the task before anything starts (``preflight``) and
says which nodes run with which parameters: policy and safety, the robot's ``robot_state_publisher`` (its URDF,
for RViz and tf), optionally a simulated robot, a human takeover by gamepad or Twist and a recorder.
``launch_description`` turns it into a ROS 2 ``LaunchDescription`` (``launch/*.launch.py``); ``run_graph``
starts the same processes and supervises them, which is how ``robostack deploy`` works where the ROS 2 launch
packages are not installed; ``started_graph`` hands the running processes to callers that work beside them
(``robostack bench deploy``, tests).

Safety outlives every other node. ``run_graph`` treats any node that exits (or a commander that hangs: its
commands stale for ``HANG_S`` while it runs) as the end of the deployment: it reports that node in one line
(how it ended and its log), stops the commanders (policy, teleop) so the safety node's fallback takes the robot
to rest, waits until the safety node says the fallback is complete (its status file), then stops the other nodes
and the safety node last. The end of ``duration`` and Ctrl-C wind down the same way; a second Ctrl-C stops at
once. Every node runs in a session of its own, so a terminal's Ctrl-C reaches only the supervisor, which stops
them in that order. The launch files leave each node to itself (no shutdown tied to any node), and the safety
node finishes its fallback when it is stopped (``robostack.real.safety_node``).
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterator

from robostack import registry
from robostack.bundle import LoadedBundle, load_bundle
from robostack.real.bundle_fit import BundleMismatch, check_bundle_fits, check_bundle_task
from robostack.real.deploy_config import INTERNAL, load_deploy_config
from robostack.specs import ROBOT_KINDS, RobotSpec

PACKAGE = "robostack"
TELEOP_INPUTS = ("joy", "twist")  # teleop_node's inputs: a gamepad (the joy driver) or a Twist stream
SAFETY_NODE = "safety_node"
RECORDER_NODE = "recorder_node"
COMMANDERS = ("policy_node", "teleop_node")  # the nodes whose commands the safety layer passes
HANG_S = 2.0  # a running commander whose commands have been stale this long hangs
STOP_WAIT_S = 5.0  # SIGINT, then SIGKILL after this long
FALLBACK_WAIT_S = 30.0  # the longest a wind-down waits for the safety node's fallback to complete
POLL_S = 0.05
RECORD_TAIL_S = 0.5  # after the fallback completes, before the recorder stops: its last messages reach the bag
# sim_robot_node's report at every episode end (its EPISODE_TOPIC; JSON: episode, success, return, length, metrics)
SIM_EPISODE = ("sim/episode", "std_msgs/msg/String")


@dataclass
class NodeSpec:
    name: str  # ROS node name
    executable: str  # console script; for this package also the module robostack.real.<executable>
    parameters: dict[str, Any] = field(default_factory=dict)
    package: str = PACKAGE  # another package's node (robot_state_publisher) runs if that package is installed


def _driver_topics(robot: str, task: str | None) -> list[Any]:
    """The robot's topics as its deploy config (with ``task``'s section) wires them: state, driver command, task
    command, object and fixture poses."""
    topics = load_deploy_config(robot, task=task).topics
    return [t for t in (topics.joint_states, topics.imu, topics.odometry, topics.driver_command, topics.task_command,
                        topics.object, *topics.fixtures.values()) if t is not None]


def recorded_topics(robot: str, task: str | None = None, sim: bool = False) -> list[str]:
    """``/topic:type`` entries the recorder takes: the robot's topics (``_driver_topics``) and everything the
    RoboStack nodes say to each other (policy and human commands, takeovers, overrides, diagnostics); ``sim``: also
    the simulated robot's episode reports, where ``convert_bag`` cuts the bag into episodes."""
    entries = [(t.topic, t.type) for t in _driver_topics(robot, task)]
    entries += [INTERNAL[k] for k in ("policy_command", "policy_action", "teleop_command", "teleop_action",
                                      "teleop_active", "intervention", "override", "diagnostics")]
    entries += [SIM_EPISODE] if sim else []
    return [f"{topic}:{type_}" for topic, type_ in entries]


def best_effort_topics(robot: str, task: str | None = None) -> list[str]:
    """The recorded topics the deploy config subscribes best effort (the driver's state): the recorder must
    too, or it would not hear a driver that publishes them best effort."""
    return [t.topic for t in _driver_topics(robot, task) if t.qos.reliability == "best_effort"]


def preflight(policy: str | os.PathLike, robot: str | None = None) -> LoadedBundle:
    """The bundle at ``policy``, once it is known to fit: its task is known and runs on the robot the bundle
    names (and on ``robot``, if given), its joints, actuators and robot configuration are that robot's as its
    deploy config wires it, and the task rebuilt from the bundle drives and observes the robot as the metadata
    says. Refuses (``BundleError``, one line naming both sides) before any node starts."""
    from robostack.real.observation import ObservationBuilder, ObservationError

    bundle = load_bundle(policy)
    task_robot = check_bundle_task(bundle.metadata, policy)
    if robot is not None and robot != task_robot:
        raise BundleMismatch(f"bundle {policy} drives robot {task_robot!r} (task {bundle.task!r}), not {robot!r}")
    spec = registry.robot(task_robot)
    source = str(spec.deploy_config_file)
    deploy = load_deploy_config(spec.name, source, task=bundle.task)
    robot_config = check_bundle_fits(bundle.metadata, policy, spec, deploy, source)
    if "critic" in bundle.metadata:  # the safety node will run it: it loads and reads this robot's features
        from robostack.real.critic import bundle_critic
        from robostack.real.safety import safety_config

        bundle_critic(policy, bundle.metadata, spec, robot_config, safety_config(deploy, source).tcp_site)
    try:
        ObservationBuilder(bundle.metadata)
    except ObservationError as exc:
        raise BundleMismatch(f"bundle {policy}: {exc}") from None
    return bundle


def node_graph(policy: str | os.PathLike, sim: bool = False, record: str | os.PathLike | None = None,
               randomize: bool = True, episodes: int = 0, seed: int = 0, teleop: str | None = None,
               robot: str | None = None, disturbances: list[str] | None = None,
               intervener: bool = False, exploration_std: float = 0.0) -> list[NodeSpec]:
    """The nodes of one deployment of the bundle at ``policy`` (checked by ``preflight``, on ``robot`` if
    given); ``sim`` adds the simulated robot driver (``disturbances``: task-config overrides it simulates,
    e.g. stronger pushes; ``intervener``: a simulated human takes over when the robot goes wrong, through a
    joy ``teleop_node``), ``teleop`` ("joy" or "twist") a human takeover, ``record`` (a new bag directory) the
    recorder (and the policy's actions on ``policy/action`` for it); ``exploration_std`` the policy's action noise
    (``policy_node``)."""
    if teleop is not None and teleop not in TELEOP_INPUTS:
        raise ValueError(f"teleop must be one of {TELEOP_INPUTS} or None, got {teleop!r}")
    if intervener and (not sim or teleop == "twist"):
        raise ValueError("the simulated intervener needs the simulated robot (sim) and takes over with a gamepad "
                         "(teleop joy)")
    teleop = "joy" if intervener else teleop
    bundle = preflight(policy, robot)
    spec = registry.robot(bundle.robot)
    policy = str(Path(policy).resolve())
    nodes = [
        # The simulated robot publishes its state at the control rate, so the policy acts on each one, as on a
        # driver that does; on a timer (a real driver's own rate) the safety layer's rate limit had only part of
        # a period to move the targets before the simulator's step took them (panda-lift: 0.4 vs 0.9, 10 episodes).
        NodeSpec("policy_node", "policy_node", {"bundle": policy, "trigger": "state" if sim else "timer",
                                                **({"exploration_std": exploration_std} if exploration_std else {}),
                                                **({"publish_action": True} if record else {})}),
        NodeSpec(SAFETY_NODE, SAFETY_NODE, {"robot": spec.name, "task": bundle.task, "bundle": policy}),
        NodeSpec("robot_state_publisher", "robot_state_publisher",
                 {"robot_description": spec.urdf.read_text(encoding="utf-8")}, package="robot_state_publisher"),
    ]
    if sim:
        # recording, the rehearsal starts once the recorder hears those who speak first: the safety layer's driver
        # commands, the policy's, and a human's takeovers
        awaited = [load_deploy_config(spec.name, task=bundle.task).topics.driver_command.topic,
                   INTERNAL["policy_command"][0]] + ([INTERNAL["intervention"][0]] if teleop else [])
        if bundle.metadata["action"].get("kind") != "controls":  # it logs its actions too (policy/action)
            awaited.append(INTERNAL["policy_action"][0])
        nodes.append(NodeSpec("sim_robot_node", "sim_robot_node",
                              {"bundle": policy, "randomize": randomize, "episodes": episodes, "seed": seed,
                               "start_paused": True, "reset_safety": True, "intervener": intervener,
                               **({"overrides": list(disturbances)} if disturbances else {}),
                               **({"await_recorded": awaited} if record else {})}))
    if teleop:
        nodes.append(NodeSpec("teleop_node", "teleop_node", {"robot": spec.name, "bundle": policy, "input": teleop}))
    if record:
        nodes.append(NodeSpec(RECORDER_NODE, RECORDER_NODE,
                              {"topics": recorded_topics(spec.name, bundle.task, sim),
                               "best_effort_topics": best_effort_topics(spec.name, bundle.task),
                               "output": str(Path(record).resolve())}))
    return nodes


def launch_description(kind: str):
    """A ROS 2 ``LaunchDescription`` for a robot kind ("arm", "quadruped", "drone"): arguments ``robot``,
    ``policy`` (bundle), ``sim``, ``teleop`` (none|joy|twist), ``intervener`` (true|false, with ``sim``) and
    ``record`` (true|false, into ``record_dir``), nodes from ``node_graph``. No node's exit shuts the others down; the safety node is given time to finish its
    fallback when the launch is stopped."""
    from launch import LaunchDescription
    from launch.actions import DeclareLaunchArgument, OpaqueFunction
    from launch.substitutions import LaunchConfiguration
    from launch_ros.actions import Node

    if kind not in ROBOT_KINDS:
        raise ValueError(f"robot kind must be one of {ROBOT_KINDS}, got {kind!r}")
    of_kind = [spec.name for spec in registry.registered(RobotSpec) if spec.kind == kind]

    def nodes(context: Any) -> list[Any]:
        arg = {name: LaunchConfiguration(name).perform(context)
               for name in ("robot", "policy", "sim", "teleop", "intervener", "record", "record_dir")}
        if arg["robot"] not in of_kind:
            raise ValueError(f"robot {arg['robot']!r} is not a {kind} (this launch file starts {', '.join(of_kind)})")
        record = arg["record_dir"] if arg["record"].lower() == "true" else None
        teleop = None if arg["teleop"].lower() == "none" else arg["teleop"].lower()
        graph = node_graph(arg["policy"], sim=arg["sim"].lower() == "true", record=record, teleop=teleop,
                           robot=arg["robot"], intervener=arg["intervener"].lower() == "true")
        # launch SIGINTs every node at once (SIGTERM after sigterm_timeout): the safety node lands / stands
        # down before it exits
        stopping = {SAFETY_NODE: {"sigterm_timeout": str(FALLBACK_WAIT_S)}}
        return [Node(package=spec.package, executable=spec.executable, name=spec.name,
                     parameters=[spec.parameters], output="screen", **stopping.get(spec.name, {}))
                for spec in graph]

    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return LaunchDescription([
        DeclareLaunchArgument("robot", default_value=of_kind[0], description=f"the {kind} the policy runs on"),
        DeclareLaunchArgument("policy", description="policy bundle directory (robostack export)"),
        DeclareLaunchArgument("sim", default_value="false", description="true: a simulated robot driver"),
        DeclareLaunchArgument("teleop", default_value="none",
                              description="joy|twist: a human can take over (teleop_node); none: no takeover"),
        DeclareLaunchArgument("intervener", default_value="false",
                              description="true (with sim): a simulated human takes over when the robot goes wrong"),
        DeclareLaunchArgument("record", default_value="false", description="true: record a bag"),
        DeclareLaunchArgument("record_dir", default_value=f"bags/{kind}-{stamp}", description="the bag"),
        OpaqueFunction(function=nodes),
    ])


def ros_arguments(spec: NodeSpec, namespace: str | None = None) -> list[str]:
    """``--ros-args`` for a node: its name, namespace (if any) and parameters (YAML values, as ``ros2 run``
    takes them)."""
    args = ["--ros-args", "-r", f"__node:={spec.name}"] + (["-r", f"__ns:={namespace}"] if namespace else [])
    for key, value in spec.parameters.items():
        args += ["-p", f"{key}:={json.dumps(value)}"]
    return args


def _command(spec: NodeSpec) -> list[str] | None:
    """How to start a node: this package's as a module of this Python; another package's from where ament or
    colcon installed it (``<prefix>/lib/<package>/<executable>``), or None where it is not installed."""
    if spec.package == PACKAGE:
        return [sys.executable, "-m", f"robostack.real.{spec.executable}"]
    prefixes = [p for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p]
    for prefix in prefixes:
        path = Path(prefix) / "lib" / spec.package / spec.executable
        if path.is_file() and os.access(path, os.X_OK):
            return [str(path)]
    found = shutil.which(spec.executable)
    return [found] if found else None


def _stop(procs: dict[str, subprocess.Popen], names: list[str], wait_s: float = STOP_WAIT_S,
          at_once: bool = False) -> None:
    """SIGINT to those still running (``at_once``: SIGTERM, which tells the safety node not to finish its
    fallback first), then wait; SIGKILL whatever has not exited after ``wait_s``."""
    running = [procs[n] for n in names if n in procs and procs[n].poll() is None]
    for proc in running:
        proc.send_signal(signal.SIGTERM if at_once else signal.SIGINT)
    deadline = time.monotonic() + wait_s
    for proc in running:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def stop_order(names: list[str]) -> list[list[str]]:
    """Who stops first: the commanders, then everything else but the safety node, then the safety node."""
    return [[n for n in names if n in COMMANDERS], [n for n in names if n not in COMMANDERS and n != SAFETY_NODE],
            [n for n in names if n == SAFETY_NODE]]


@contextlib.contextmanager
def started_graph(nodes: list[NodeSpec], env: dict[str, str] | None = None, log_dir: Path | None = None,
                  capture: str | None = None, namespace: str | None = None,
                  status_file: Path | None = None) -> Iterator[dict[str, subprocess.Popen]]:
    """Start ``nodes`` as processes, each in a session of its own (stdout and stderr to ``log_dir/<name>.log``;
    the stdout of node ``capture`` to a pipe instead) and yield them by name; nodes of other packages that are
    not installed are skipped with a note on stderr. On exit stop those still running in ``stop_order``.
    ``status_file``: where the safety node writes its status."""
    env = {**os.environ, **(env or {})}
    procs: dict[str, subprocess.Popen] = {}
    logs = {}
    try:
        for spec in nodes:
            command = _command(spec)
            if command is None:
                print(f"{spec.name}: package {spec.package!r} is not installed; not started", file=sys.stderr)
                continue
            if spec.name == SAFETY_NODE and status_file is not None:
                spec = NodeSpec(spec.name, spec.executable, {**spec.parameters, "status_file": str(status_file)},
                                spec.package)
            log = open(log_dir / f"{spec.name}.log", "w") if log_dir else subprocess.DEVNULL
            logs[spec.name] = log
            procs[spec.name] = subprocess.Popen(
                [*command, *ros_arguments(spec, namespace)], stdout=subprocess.PIPE if spec.name == capture else log,
                stderr=log, env=env, text=True, start_new_session=True)
        yield procs
    finally:  # a graph that wound down (run_graph) has done its fallback; any other stops now
        for stage in stop_order(list(procs)):
            _stop(procs, stage, at_once=SAFETY_NODE in stage)
        for log in logs.values():
            if log is not subprocess.DEVNULL:
                log.close()


def exit_description(code: int) -> str:
    """How a process ended, from its return code (negative: the signal that killed it)."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"


class DeploymentError(RuntimeError):
    """A deployment that ended because a node died or hung; the message is the one line that says so."""


@dataclass
class GraphResult:
    exit_codes: dict[str, int | None]
    output: str  # the stdout of ``wait_for``
    failure: str | None  # what ended the deployment early, in one line (None: it ended as asked)
    interrupted: bool  # by SIGINT or SIGTERM
    rest: str  # how the robot was left: the safety node's last fallback phase, and whether it completed

    def summary(self) -> dict[str, Any]:
        """The JSON summary ``wait_for`` printed last (the simulated robot's episodes), or {} if none."""
        for line in reversed(self.output.splitlines()):
            if line.strip().startswith("{"):
                return json.loads(line)
        return {}


def _read_status(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def run_graph(nodes: list[NodeSpec], duration: float | None = None, wait_for: str | None = None,
              env: dict[str, str] | None = None, log_dir: Path | None = None,
              note: Callable[[str], None] | None = None) -> GraphResult:
    """Start ``nodes`` and supervise them (see the module docstring) until ``duration`` has passed, node
    ``wait_for`` has exited with code 0 (then everything stops at once: that node was the robot), a node dies
    or hangs, or SIGINT / SIGTERM. ``note`` gets what happens while the graph winds down (default: stderr)."""
    note = note or (lambda line: print(line, file=sys.stderr, flush=True))
    log_dir = Path(log_dir) if log_dir is not None else Path(os.environ.get("TMPDIR", "/tmp"))
    status_path = log_dir / "safety_status.json"
    status_path.unlink(missing_ok=True)
    signals: list[int] = []
    handlers = {s: signal.signal(s, lambda signum, _frame: signals.append(signum))
                for s in (signal.SIGINT, signal.SIGTERM)}
    failure, dead = None, None
    try:
        with started_graph(nodes, env, log_dir, capture=wait_for, status_file=status_path) as procs:
            log = {n: log_dir / f"{n}.log" for n in procs}
            start, stale_since = time.monotonic(), None
            while not signals and (duration is None or time.monotonic() - start < duration):
                time.sleep(POLL_S)
                dead = next((n for n, p in procs.items() if p.poll() is not None), None)
                if dead is not None:
                    if dead != wait_for or procs[dead].returncode != 0:
                        failure = f"{dead} {exit_description(procs[dead].returncode)} (log: {log[dead]})"
                    break
                status = _read_status(status_path)
                commander = "teleop_node" if status.get("source") == "teleop" else "policy_node"
                hanging = status.get("command_stale") and status.get("state_fresh") and commander in procs
                stale_since = (stale_since or time.monotonic()) if hanging else None
                if stale_since is not None and time.monotonic() - stale_since > HANG_S:
                    failure = (f"{commander} hangs: no command for {time.monotonic() - stale_since:.1f} s while the "
                               f"state is fresh; stopped it (log: {log[commander]})")
                    procs[commander].kill()
                    break
            robot_left = SAFETY_NODE in procs and dead not in (SAFETY_NODE, wait_for)
            interrupted = bool(signals)
            if failure is not None and robot_left:
                note(f"{failure}; the safety node brings the robot to rest (Ctrl-C to stop at once)")
            rest = _wind_down(procs, status_path, signals, note) if robot_left else ""
            output = procs[wait_for].communicate()[0] if wait_for is not None and procs[wait_for].poll() is not None \
                else ""
    finally:
        for s, handler in handlers.items():
            signal.signal(s, handler)
    return GraphResult({n: p.returncode for n, p in procs.items()}, output, failure, interrupted, rest)


def _wind_down(procs: dict[str, subprocess.Popen], status_path: Path, signals: list[int],
               note: Callable[[str], None]) -> str:
    """Stop the commanders, wait for the safety node's fallback to complete (a new signal ends the wait), then
    stop everything else, the safety node last; returns how the robot was left."""
    _stop(procs, [n for n in procs if n in COMMANDERS])
    seen, deadline = len(signals), time.monotonic() + FALLBACK_WAIT_S
    status = _read_status(status_path)
    while procs[SAFETY_NODE].poll() is None and status.get("commanded") and not status.get("complete"):
        if len(signals) > seen or time.monotonic() > deadline:
            note("not waiting for the safety node's fallback to complete any longer")
            break
        time.sleep(POLL_S)
        status = _read_status(status_path)
    if RECORDER_NODE in procs and procs[RECORDER_NODE].poll() is None:
        time.sleep(RECORD_TAIL_S)  # the fallback's last phase was just published (a CI run's bag once lacked it)
    for stage in stop_order(list(procs))[1:]:
        _stop(procs, stage, at_once=SAFETY_NODE in stage)
    if not status.get("commanded"):
        return "the safety node had driven nothing; it stopped last"
    completed = "completed" if status.get("complete") else "did not complete"
    return f"the safety node's fallback ({status.get('fallback') or 'none'}) {completed}; it stopped last"
