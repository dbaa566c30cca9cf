"""``robostack data convert``: a bag recorded on a robot (``recorder_node``) as an episode of a dataset, in the
feature schema simulated data uses (``robostack.data.features``), so both merge and train together.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from robostack import registry, sim
from robostack.config import ConfigError
from robostack.data.dataset import INTERVENTION, Dataset, DatasetError, DatasetWriter, load_dataset
from robostack.data.features import (BASE_ACTION, BASE_STATE, FREE_BODY_STATE, TASK_ACTION, action_names, command_names,
                                     free_bodies, state_names, vector_feature)
from robostack.real.bag import BagError, read_messages, read_metadata
from robostack.real.bag_recovery import inspect_bag
from robostack.real.deploy_config import INTERNAL, load_deploy_config
from robostack.real.graph import SIM_EPISODE
from robostack.real.messages import action_rows, get_field
from robostack.real.state import OBJECT_FRAME, StateListener, primary_source
from robostack.specs import RobotSpec


class _BagSubscriptions:
    """Stands in for an rclpy node: collects ``StateListener``'s callbacks by topic so that bag messages
    can be fed to the same code that reads the live topics, on a clock that reads each message's log time
    (when the recorder received it: stamps are judged as they were live)."""

    def __init__(self) -> None:
        self.callbacks: dict[str, Callable[[Any], None]] = {}
        self.nanoseconds = 0  # the log time of the message being fed

    def create_subscription(self, _msg_type: Any, topic: str, callback: Callable[[Any], None], _qos: Any) -> None:
        self.callbacks[topic] = callback

    def get_clock(self) -> _BagSubscriptions:
        return self

    def now(self) -> _BagSubscriptions:
        return self


def _resolve(topic: str, namespace: str) -> str:
    return topic if topic.startswith("/") else f"{namespace}/{topic}"


def _bag_robot(bag: Path, topics: set[str], robot: str | None, namespace: str | None,
               sim_task: str | None = None) -> tuple[Any, str]:
    """The deploy config of the robot whose state, driver and task-command topics the bag has (with ``sim_task``'s
    section: its task command, object and fixtures), and the namespace they were recorded under (found from the
    driver command topic unless given)."""
    candidates = [robot] if robot else [spec.name for spec in registry.registered(RobotSpec)]
    matches, problems = [], []
    for name in candidates:
        try:
            cfg = load_deploy_config(name, task=sim_task)
        except ConfigError as exc:
            problems.append(f"{name}: {exc}")
            continue
        driver = cfg.topics.driver_command.topic
        found = [namespace] if namespace is not None else \
            [t[:len(t) - len(driver) - 1] for t in topics if t == _resolve(driver, "") or t.endswith("/" + driver)]
        for ns in found:
            wanted = [_resolve(getattr(cfg.topics, part).topic, ns) for part in
                      ("joint_states", "imu", "odometry", "driver_command", "task_command")
                      if getattr(cfg.topics, part) is not None]
            missing = [t for t in wanted if t not in topics]
            if missing:
                problems.append(f"{name} (namespace {ns or '/'}): no {missing}")
            else:
                matches.append((cfg, ns))
        if not found:
            problems.append(f"{name}: no driver command topic {driver!r}")
    if len(matches) != 1:
        why = "several robots match: " + ", ".join(f"{c.robot} in {ns or '/'}" for c, ns in matches) if matches \
            else "no robot's deploy config matches: " + "; ".join(problems)
        raise DatasetError(f"{bag}: {why} (bag topics: {sorted(topics)}); give the robot (and namespace)")
    return matches[0]


def _state_vector(state: Any, object_name: str = OBJECT_FRAME) -> tuple[list[str], np.ndarray]:
    """``observation.state`` names and values of a ``RobotState`` (see ``state_names``; its object, where it has one,
    named ``object_name``)."""
    joints = list(state.joint_position)
    velocities = bool(joints) and set(joints) <= set(state.joint_velocity)
    base = [field for field in BASE_STATE if getattr(state, field) is not None]
    values = [state.joint_position[j] for j in joints]
    values += [state.joint_velocity[j] for j in joints] if velocities else []
    values += [float(v) for field in base for v in getattr(state, field)]
    body = state.object
    if body is not None:  # BodyState's fields are FREE_BODY_STATE's, in its order
        values += [float(v) for field in FREE_BODY_STATE for v in getattr(body, field)]
    objects = [object_name] if body is not None else []
    return state_names(joints, velocities, base, objects), np.array(values, dtype=np.float64)


def _object_name(sim_task: str | None) -> str:
    """The name of the task's manipulated object's body (how simulated datasets name its state), else ``object``."""
    if sim_task is None:
        return OBJECT_FRAME
    model = sim.task(sim_task).build(sim.load_task_config(sim_task, play=True)).model
    _, objects = free_bodies(model)
    return model.body(int(model.jnt_bodyid[objects[0]])).name if objects else OBJECT_FRAME


def convert_bag(bag_dir: str | os.PathLike, out: str | os.PathLike, *, robot: str | None = None,
                fps: int | None = None, task: str | None = None, sim_task: str | None = None,
                namespace: str | None = None, success: bool | None = None) -> Dataset:
    """Turn a bag recorded by ``recorder_node`` (``robostack deploy --record``) into episodes of the dataset at
    ``out`` (created, or appended to when it has the same features).

    A robot's bag is one episode: a takeover is kept in context (what the policy did before the human stepped
    in and after). A simulated robot's bag (``--sim``) has sim_robot_node's report at every episode end
    (``sim/episode``, published just before the state the reset left): each report ends an episode, its
    ``success`` the report's, which runs from the previous report's reset state (the first state after it, or the
    first frame) to the frame before its own; the frames from the last reset state on (an episode that the
    deployment's end cut short) are one more, its outcome unknown, unless fewer than 2. ``success``, if given, is
    every episode's.
    ``complementary_info.intervention`` marks the frames between ``teleop/intervention`` "start" and "end"
    (``complementary_info.takeover_start`` the first of each takeover, or an episode's first frame when a
    takeover goes on into it). ``source`` is ``teleop`` if the human was in control on every frame of the
    episode, ``intervention`` if on some, else ``rollout``.

    Frames are on a clock of ``fps`` (default: the rate of the robot's primary state topic) from the first
    moment both a state and a driver command exist to the last state: each frame holds the latest state
    (joint states, IMU, odometry as the deploy config of ``robot`` reads them, through the same
    ``StateListener`` the nodes use; the task's object where the bag has its topic, named as ``sim_task``'s model
    names its body), the latest task command, and as action the last driver command sent
    before the next frame (the one in effect when the next state was measured). Where the policy published its
    actions (``policy/action``, as ``robostack deploy --record`` has it), ``action.task`` holds the action in the
    task's action space behind that command (a joint-level takeover's, ``teleop/action``, on the human's frames) and
    ``action.base`` the policy's base's proposal: what learning a correction of a chunk or end-effector policy
    reads, since controls do not determine its actions. Rewards are 0 and
    ``next.done`` marks each episode's last frame. ``robot`` and ``namespace`` are found from the bag's topics
    unless given; ``sim_task`` (a RoboStack task of that robot) is stored for ``replay``.

    A bag that a recorder is still writing, or one with a file cut short (a recorder killed in the middle of
    a flush), is refused (``DatasetError``; the latter names ``robostack data recover``, which rewrites files
    and so is not run unasked). A bag whose recorder was killed between flushes is read as it is: every
    flush leaves it readable (``robostack.real.bag``).
    """
    bag = Path(bag_dir)
    try:
        topics = {t["topic_metadata"]["name"] for t in read_metadata(bag)["topics_with_message_count"]}
    except (OSError, KeyError, TypeError) as exc:
        raise DatasetError(f"{bag}: not a rosbag2 bag with a metadata.yaml ({exc})") from None
    try:
        refusal = inspect_bag(bag).refusal(f"robostack data recover {bag}")
    except BagError as exc:
        refusal = str(exc)
    if refusal:
        raise DatasetError(refusal)
    if sim_task is not None:
        try:
            task_robot = sim.task(sim_task).robot
        except KeyError as exc:
            raise DatasetError(f"sim_task: {exc.args[0]}") from None
        if robot not in (None, task_robot):
            raise DatasetError(f"sim_task {sim_task!r} is for robot {task_robot!r}, not {robot!r}")
        robot = task_robot
    cfg, namespace = _bag_robot(bag, topics, robot, namespace, sim_task)
    subscriptions = _BagSubscriptions()
    with_object = cfg.topics.object is not None and _resolve(cfg.topics.object.topic, namespace) in topics
    listener = StateListener(subscriptions, cfg, with_object=with_object)
    object_name = _object_name(sim_task) if with_object else OBJECT_FRAME
    state_topics = {_resolve(topic, namespace): callback for topic, callback in subscriptions.callbacks.items()}
    primary = _resolve(getattr(cfg.topics, primary_source(cfg)).topic, namespace)
    driver = _resolve(cfg.topics.driver_command.topic, namespace)
    command_cfg = cfg.topics.task_command
    command_topic = _resolve(command_cfg.topic, namespace) if command_cfg else None
    intervention = _resolve(INTERNAL["intervention"][0], namespace)
    episode_ends = _resolve(SIM_EPISODE[0], namespace)
    acted = {_resolve(INTERNAL[key][0], namespace): [] for key in ("policy_action", "teleop_action")}
    wanted = [t for t in (*state_topics, driver, command_topic, intervention, episode_ends, *acted) if t in topics]

    names: list[str] | None = None
    states: list[tuple[int, np.ndarray]] = []
    commands: list[tuple[int, np.ndarray]] = []
    task_commands: list[tuple[int, np.ndarray]] = []
    events: list[tuple[int, bool]] = []
    reports: list[tuple[int, bool]] = []  # log time and success of each simulated episode
    for message in sorted(read_messages(bag, topics=wanted), key=lambda m: m.log_time):
        if message.topic in state_topics:
            subscriptions.nanoseconds = message.log_time
            state_topics[message.topic](message.msg)
            if message.topic == primary and listener.ready():
                current, values = _state_vector(listener.state(), object_name)
                if names is not None and current != names:
                    raise DatasetError(f"{bag}: the state changed layout at t={message.log_time} ns: {current} "
                                       f"instead of {names}")
                names = current
                states.append((message.log_time, values))
        elif message.topic == driver:
            commands.append((message.log_time, np.asarray(get_field(message.msg, cfg.topics.driver_command.data),
                                                          dtype=np.float64)))
        elif message.topic == command_topic:
            task_commands.append((message.log_time, np.array([float(get_field(message.msg, f))
                                                              for f in command_cfg.fields])))
        elif message.topic == episode_ends:
            reports.append((message.log_time, _reported_success(message.msg.data, f"{bag}: {episode_ends}")))
        elif message.topic in acted:
            try:
                acted[message.topic].append((message.log_time, action_rows(message.msg)))
            except ValueError as exc:
                raise DatasetError(f"{bag}: {message.topic} at t={message.log_time} ns: {exc}") from None
        else:
            events.append((message.log_time, message.msg.data == "start"))
    if len(states) < 2 or not commands:
        raise DatasetError(f"{bag}: needs at least two complete states on {primary} and one driver command on "
                           f"{driver}; has {len(states)} states and {len(commands)} commands")
    if len({len(c) for _, c in commands}) != 1:
        raise DatasetError(f"{bag}: driver commands on {driver} change length: {sorted({len(c) for _, c in commands})}")
    state_times = np.array([t for t, _ in states])
    if fps is None:
        period = float(np.median(np.diff(state_times)))
        if period <= 0:
            raise DatasetError(f"{bag}: states on {primary} share timestamps; give the frame rate (fps)")
        fps = round(1e9 / period)
    step = round(1e9 / fps)
    command_times = np.array([t for t, _ in commands])
    start = max(state_times[0], command_times[0])
    if start > state_times[-1]:
        raise DatasetError(f"{bag}: no state was recorded after the first driver command")
    times = np.arange(start, state_times[-1] + 1, step)

    frames: dict[str, Any] = {
        "observation.state": np.stack([states[i][1] for i in _latest(states, times)]),
        "action": np.stack([commands[i][1] for i in _latest(commands, times + step, "left")]),
        INTERVENTION: np.array([i >= 0 and events[i][1] for i in _latest(events, times)], dtype=bool)}
    joints = [name[:-len(".pos")] for name in names if name.endswith(".pos")]
    features = {"observation.state": vector_feature(names),
                "action": vector_feature(action_names(joints, len(commands[0][1])))}
    policy_actions, human_actions = acted.values()
    if policy_actions:
        frames.update(_task_actions(policy_actions, human_actions, frames[INTERVENTION], times + step, bag))
        features.update({key: vector_feature([f"{key}_{i}" for i in range(frames[key].shape[1])])
                         for key in (TASK_ACTION, BASE_ACTION)})
    if command_cfg is not None:
        default = np.asarray(command_cfg.default, dtype=np.float64)
        frames["observation.command"] = np.stack([task_commands[i][1] if i >= 0 else default
                                                  for i in _latest(task_commands, times)])
        features["observation.command"] = vector_feature(command_names(len(command_cfg.fields)))
    # sim_robot_node publishes the report, then the reset state (so a policy starts its episode over before it acts
    # on that state): an episode's frames end before the first state received after its report
    after = np.searchsorted(state_times, [t for t, _ in reports], side="right")
    resets = np.where(after < len(state_times), state_times[np.minimum(after, len(state_times) - 1)],
                      state_times[-1] + 1)
    ends = np.searchsorted(times, resets)
    pieces = [(first, end, outcome) for first, end, (_, outcome) in zip([0, *ends], ends, reports) if end > first]
    rest = ends[-1] if reports else 0
    if len(times) - rest >= 2 or not pieces:  # after the last report: an episode cut short, its outcome unknown
        pieces.append((rest, len(times), None))
    writer = DatasetWriter(out, fps, features, cfg.robot, sim_task=sim_task)
    for first, end, outcome in pieces:
        flags = frames[INTERVENTION][first:end]
        source = "teleop" if flags.all() else "intervention" if flags.any() else "rollout"
        writer.add_episode({key: values[first:end] for key, values in frames.items()},
                           task or f"{cfg.robot}: recorded deployment", source=source,
                           success=outcome if success is None else success)
    return load_dataset(out)


def _latest(stamped: Sequence[tuple[int, Any]], at: np.ndarray, side: str = "right") -> np.ndarray:
    """For each time of ``at``, the index of the last of ``stamped`` (log time, value) at or before it (``side``
    "left": before it), -1 where none is."""
    return np.searchsorted([t for t, _ in stamped], at, side=side) - 1


def _task_actions(policy: list[tuple[int, np.ndarray]], human: list[tuple[int, np.ndarray]], flags: np.ndarray,
                  until: np.ndarray, bag: Path) -> dict[str, np.ndarray]:
    """Each frame's action in the task's action space (``TASK_ACTION``: the human's joint-level takeover's on a
    flagged frame where it sent one, else the policy's) and the policy's base's proposal (``BASE_ACTION``), both the
    last sent before ``until`` (the frame's driver command's deadline); frames before the policy's first take it."""
    if len({rows.shape for _, rows in policy}) != 1 or policy[0][1].shape[0] != 2:
        raise DatasetError(f"{bag}: {INTERNAL['policy_action'][0]} must hold two rows (executed, base) of one size "
                           f"throughout; has shapes {sorted({rows.shape for _, rows in policy})}")
    n = policy[0][1].shape[1]
    if any(rows.shape != (1, n) for _, rows in human):
        raise DatasetError(f"{bag}: {INTERNAL['teleop_action'][0]} must hold one row of the policy's {n} actions")
    rows = np.stack([r for _, r in policy])[np.maximum(_latest(policy, until, "left"), 0)]
    executed = rows[:, 0].copy()
    if human:
        latest = _latest(human, until, "left")
        taken = flags & (latest >= 0)
        executed[taken] = np.stack([r[0] for _, r in human])[latest[taken]]
    return {TASK_ACTION: executed, BASE_ACTION: rows[:, 1]}


def _reported_success(report: str, where: str) -> bool:
    """``success`` of a ``sim_robot_node`` episode report (JSON)."""
    try:
        return bool(json.loads(report)["success"])
    except (ValueError, KeyError, TypeError) as exc:
        raise DatasetError(f"{where}: an episode report without a success ({exc}): {report[:200]!r}") from None
