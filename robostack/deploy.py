"""The deployment node graph, described once: the ROS 2 launch files and ``robostack deploy`` both read it.

``node_graph`` says which RoboStack nodes run for a policy bundle (policy, safety, optionally a simulated
robot, a human takeover by gamepad or Twist and a recorder) with which parameters. ``launch_description``
turns it into a ROS 2 ``LaunchDescription`` (``launch/*.launch.py``); ``run_graph`` starts the same
processes directly, which is how ``robostack deploy`` works where the ROS 2 launch packages are not
installed (``started_graph`` hands the running processes to callers that work beside them: ``robostack
bench deploy``, tests).
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator

from robostack.bundle import load_bundle

# Launch-file robot kinds and the robot each one runs by default.
KIND_ROBOTS = {"arm": "panda", "quadruped": "go2", "drone": "cf2"}
TELEOP_INPUTS = ("joy", "twist")  # teleop_node's inputs: a gamepad (the joy driver) or a Twist stream


@dataclass
class NodeSpec:
    name: str  # ROS node name
    executable: str  # console script; also the module robostack.real.<executable>
    parameters: dict[str, Any] = field(default_factory=dict)


def recorded_topics(robot: str, task: str | None = None) -> list[str]:
    """``/topic:type`` entries the recorder takes: the robot's state and driver topics, the task command, object
    and fixture poses (of ``task``'s deploy settings) and everything the RoboStack nodes say to each other (policy and
    human commands, takeovers, overrides)."""
    from robostack.real.deploy_config import INTERNAL, load_deploy_config

    topics = load_deploy_config(robot, task=task).topics
    entries = [(t.topic, t.type) for t in (topics.joint_states, topics.imu, topics.odometry, topics.driver_command,
                                            topics.task_command, topics.object, *topics.fixtures.values())
               if t is not None]
    entries += [INTERNAL[k] for k in ("policy_command", "teleop_command", "teleop_active", "intervention", "override")]
    return [f"{topic}:{type_}" for topic, type_ in entries]


def node_graph(policy: str | os.PathLike, sim: bool = False, record: str | os.PathLike | None = None,
               randomize: bool = True, episodes: int = 0, seed: int = 0, teleop: str | None = None) -> list[NodeSpec]:
    """The nodes of one deployment of the bundle at ``policy``; ``sim`` adds the simulated robot driver,
    ``teleop`` ("joy" or "twist") a human takeover, ``record`` (a new bag directory) the recorder."""
    if teleop is not None and teleop not in TELEOP_INPUTS:
        raise ValueError(f"teleop must be one of {TELEOP_INPUTS} or None, got {teleop!r}")
    bundle = load_bundle(policy)
    policy = str(Path(policy).resolve())
    nodes = [
        # The simulated robot publishes its state at the control rate, so the policy acts on each one, as on a
        # driver that does; on a timer (a real driver's own rate) the safety layer's rate limit had only part of
        # a period to move the targets before the simulator's step took them (panda-lift: 0.4 vs 0.9, 10 episodes).
        NodeSpec("policy_node", "policy_node", {"bundle": policy, "trigger": "state" if sim else "timer"}),
        NodeSpec("safety_node", "safety_node", {"robot": bundle.robot, "task": bundle.task}),
    ]
    if sim:
        nodes.append(NodeSpec("sim_robot_node", "sim_robot_node",
                              {"bundle": policy, "randomize": randomize, "episodes": episodes, "seed": seed,
                               "start_paused": True, "reset_safety": True}))
    if teleop:
        nodes.append(NodeSpec("teleop_node", "teleop_node", {"robot": bundle.robot, "input": teleop}))
    if record:
        nodes.append(NodeSpec("recorder_node", "recorder_node",
                              {"topics": recorded_topics(bundle.robot, bundle.task),
                               "output": str(Path(record).resolve())}))
    return nodes


def launch_description(kind: str):
    """A ROS 2 ``LaunchDescription`` for a robot kind ("arm", "quadruped", "drone"): arguments ``robot``,
    ``policy`` (bundle), ``sim``, ``teleop`` (none|joy|twist) and ``record`` (true|false, into ``record_dir``),
    nodes from ``node_graph``."""
    from launch import LaunchDescription
    from launch.actions import DeclareLaunchArgument, OpaqueFunction
    from launch.substitutions import LaunchConfiguration
    from launch_ros.actions import Node

    robot = KIND_ROBOTS[kind]

    def nodes(context: Any) -> list[Any]:
        arg = {name: LaunchConfiguration(name).perform(context)
               for name in ("robot", "policy", "sim", "teleop", "record", "record_dir")}
        bundle = load_bundle(arg["policy"])
        if bundle.robot != arg["robot"]:
            raise ValueError(f"policy {arg['policy']} is for robot {bundle.robot!r}, not {arg['robot']!r}")
        record = arg["record_dir"] if arg["record"].lower() == "true" else None
        teleop = None if arg["teleop"].lower() == "none" else arg["teleop"].lower()
        return [Node(package="robostack", executable=spec.executable, name=spec.name,
                     parameters=[spec.parameters], output="screen")
                for spec in node_graph(arg["policy"], sim=arg["sim"].lower() == "true", record=record,
                                       teleop=teleop)]

    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return LaunchDescription([
        DeclareLaunchArgument("robot", default_value=robot, description="robot the policy runs on"),
        DeclareLaunchArgument("policy", description="policy bundle directory (robostack export)"),
        DeclareLaunchArgument("sim", default_value="false", description="true: a simulated robot driver"),
        DeclareLaunchArgument("teleop", default_value="none",
                              description="joy|twist: a human can take over (teleop_node); none: no takeover"),
        DeclareLaunchArgument("record", default_value="false", description="true: record a bag"),
        DeclareLaunchArgument("record_dir", default_value=f"bags/{robot}-{stamp}", description="the bag"),
        OpaqueFunction(function=nodes),
    ])


def ros_arguments(spec: NodeSpec, namespace: str | None = None) -> list[str]:
    """``--ros-args`` for a node: its name, namespace (if any) and parameters (YAML values, as ``ros2 run``
    takes them)."""
    args = ["--ros-args", "-r", f"__node:={spec.name}"] + (["-r", f"__ns:={namespace}"] if namespace else [])
    for key, value in spec.parameters.items():
        args += ["-p", f"{key}:={json.dumps(value)}"]
    return args


@contextlib.contextmanager
def started_graph(nodes: list[NodeSpec], env: dict[str, str] | None = None, log_dir: Path | None = None,
                  capture: str | None = None, namespace: str | None = None) -> Iterator[dict[str, subprocess.Popen]]:
    """Start ``nodes`` as processes (stdout and stderr to ``log_dir/<name>.log``; the stdout of node
    ``capture`` to a pipe instead) and yield them by name; on exit stop those still running: SIGINT, then
    SIGKILL after 5 s."""
    env = {**os.environ, **(env or {})}
    procs: dict[str, subprocess.Popen] = {}
    logs = {}
    try:
        for spec in nodes:
            log = open(log_dir / f"{spec.name}.log", "w") if log_dir else subprocess.DEVNULL
            logs[spec.name] = log
            procs[spec.name] = subprocess.Popen(
                [sys.executable, "-m", f"robostack.real.{spec.executable}", *ros_arguments(spec, namespace)],
                stdout=subprocess.PIPE if spec.name == capture else log, stderr=log, env=env, text=True)
        yield procs
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        deadline = time.monotonic() + 5.0
        for proc in procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for log in logs.values():
            if log is not subprocess.DEVNULL:
                log.close()


def run_graph(nodes: list[NodeSpec], duration: float | None = None, wait_for: str | None = None,
              env: dict[str, str] | None = None, log_dir: Path | None = None) -> dict[str, Any]:
    """Start ``nodes`` as processes; stop them all when ``duration`` has passed, when node ``wait_for``
    exits, or when any node fails. Returns exit codes and the stdout of ``wait_for``."""
    with started_graph(nodes, env, log_dir, capture=wait_for) as procs:
        start = time.monotonic()
        failed = None
        while True:
            if wait_for is not None and procs[wait_for].poll() is not None:
                break
            failed = next((n for n, p in procs.items() if p.poll() not in (None, 0)), None)
            if failed is not None or (duration is not None and time.monotonic() - start >= duration):
                break
            time.sleep(0.1)
        output = procs[wait_for].communicate()[0] if wait_for is not None and procs[wait_for].poll() is not None else ""
    return {"exit_codes": {n: p.returncode for n, p in procs.items()}, "failed": failed, "output": output}
