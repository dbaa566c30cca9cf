"""``recorder_node``: records ROS 2 topics into a crash-safe rosbag2/MCAP bag.

Run::

    python -m robostack.real.recorder_node --ros-args \\
        -p "topics:=['/joint_states:sensor_msgs/msg/JointState', '/cmd_vel:geometry_msgs/msg/Twist']" \\
        -p output:=runs/bags/trial_3 -p flush_period_s:=1.0

(or the ``recorder_node`` console script, or ``ros2 run robostack recorder_node`` in a colcon
install).

Parameters
    ``topics`` (string array, required): ``"/topic_name:pkg/msg/Type"`` entries. Relative names
        are resolved against the node namespace; the bag stores the resolved name.
    ``output`` (string): bag directory; it must not exist yet (an existing path is refused).
        Default: ``rosbag2_YYYY_MM_DD-HH_MM_SS`` in the working directory, as ``ros2 bag record``.
    ``flush_period_s`` (1.0): a SIGKILL loses at most about this much of the latest messages; the
        bag stays readable as it is after every flush, no recovery step needed (see "Crash safety"
        in ``robostack.real.bag``; ``robostack data recover OUTPUT`` is only for a file cut in the
        middle of a flush).
    ``split_period_s`` (60.0): start a new ``.mcap`` file this often. 0 keeps one file.
    ``qos_depth`` (1000): keep-last depth of each subscription (2 s of a 500 Hz topic).
    ``qos_reliability`` (``reliable``): or ``best_effort``, for every topic. A reliable subscription
        does not match best-effort publishers (ROS logs an "incompatible QoS" warning); record those
        topics with ``best_effort``, or list them in:
    ``best_effort_topics`` (string array, default none): topics (as written in ``topics``, without the
        type) subscribed best effort whatever ``qos_reliability`` says: robot drivers publish state
        with the sensor-data profile (best effort), which a best-effort subscription hears (and a
        reliable publisher's messages too), while the nodes' own commands stay reliable.
    ``compression`` (``zstd``): MCAP chunk compression, ``zstd``, ``lz4`` or ``none``.

It says which of its topics it hears (has discovered a publisher of) on ``recorder/status`` (std_msgs/String,
JSON ``{"heard": [topics as written in 'topics']}``, transient-local, on every change): a simulated rehearsal
(``sim_robot_node``'s ``await_recorded``) starts only once the recorder hears the nodes whose first messages
matter, so a takeover that starts early is not missing from the bag.

Subscriptions are ``raw=True``: the serialized bytes go to the bag without being deserialized
(only checked, see "CDR normalisation" in ``robostack.real.bag``). The message class is imported
at run time from the type string only to create the subscription. Each message is stored with
its receive time as ``log_time``: the middleware's receive stamp when the node runs on system
time, the node clock (``use_sim_time``) otherwise; ``publish_time`` is the sender's source stamp.

SIGINT and SIGTERM stop the node cleanly: the bag is closed with a complete summary and
``metadata.yaml``, and the number of messages written per topic is logged. The handlers only set
a flag (no exception is raised inside a half-done write); the spin loop checks it every 0.1 s.
"""

from __future__ import annotations

import importlib
import json
import signal
import sys
from datetime import datetime
from pathlib import Path

import rclpy
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.exceptions import ParameterException
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

from std_msgs.msg import String

from robostack.real.bag import BagWriter, MessageTypes, UnknownMessageTypeError, qos_to_dict
from robostack.real.deploy_config import INTERNAL
from robostack.real.executor import init_ros, spin, stop_on_signals

HEARD_QOS = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL)  # a late joiner gets the latest


class RecorderConfigError(ValueError):
    """Bad recorder parameters (the message says which one and why)."""


def parse_topic_spec(spec: str) -> tuple[str, str]:
    """``"/topic:pkg/msg/Type"`` -> ``("/topic", "pkg/msg/Type")``."""
    topic, sep, msgtype = spec.strip().rpartition(":")
    if not sep or not topic or not msgtype:
        raise RecorderConfigError(
            f"bad topics entry {spec!r}: expected '/topic_name:pkg/msg/Type', "
            "e.g. '/joint_states:sensor_msgs/msg/JointState'")
    return topic.strip(), msgtype.strip()


def load_message_class(msgtype: str, topic: str = "") -> type:
    """Import the rclpy message class for ``pkg/msg/Type`` (clear errors that name the type)."""
    where = f" for topic {topic!r}" if topic else ""
    parts = msgtype.split("/")
    if len(parts) != 3 or parts[1] != "msg" or not all(parts):
        raise RecorderConfigError(
            f"bad message type {msgtype!r}{where}: expected 'pkg/msg/Type', e.g. 'std_msgs/msg/Bool'")
    pkg, _, name = parts
    try:
        module = importlib.import_module(f"{pkg}.msg")
    except ImportError as exc:
        raise RecorderConfigError(
            f"unknown message type {msgtype!r}{where}: cannot import {pkg}.msg ({exc}); is the interface package "
            f"{pkg!r} installed?") from None
    cls = getattr(module, name, None)
    if not isinstance(cls, type) or not hasattr(cls, "_TYPE_SUPPORT"):
        raise RecorderConfigError(
            f"unknown message type {msgtype!r}{where}: package {pkg!r} has no message {name!r}")
    return cls


class RecorderNode(Node):
    """Subscribes (raw) to the configured topics and writes every message to a ``BagWriter``."""

    def __init__(self, **kwargs):
        super().__init__("recorder_node", **kwargs)
        # Dynamic typing: "flush_period_s:=1" (an int) or "topics:=/a:std_msgs/msg/Bool" (one string)
        # are accepted and converted below instead of failing inside rclpy with a type error.
        dynamic = ParameterDescriptor(dynamic_typing=True)
        self.declare_parameter("topics", None, dynamic)
        self.declare_parameter("output", "")
        self.declare_parameter("flush_period_s", 1.0, dynamic)
        self.declare_parameter("split_period_s", 60.0, dynamic)
        self.declare_parameter("qos_depth", 1000)
        self.declare_parameter("qos_reliability", "reliable")
        self.declare_parameter("best_effort_topics", None, dynamic)
        self.declare_parameter("compression", "zstd")
        self.bag: BagWriter | None = None
        specs = self.get_parameter("topics").value or []
        if isinstance(specs, str):
            specs = [specs]
        if not specs or not all(isinstance(x, str) for x in specs):
            raise RecorderConfigError("parameter 'topics' is missing or not a list of strings: give e.g. "
                                      "-p \"topics:=['/joint_states:sensor_msgs/msg/JointState']\"")
        output = self.get_parameter("output").value or datetime.now().strftime("rosbag2_%Y_%m_%d-%H_%M_%S")
        try:
            flush_period_s = float(self.get_parameter("flush_period_s").value)
            split_period_s = float(self.get_parameter("split_period_s").value)
        except (TypeError, ValueError) as exc:
            raise RecorderConfigError(f"flush_period_s and split_period_s must be numbers ({exc})") from None
        depth = int(self.get_parameter("qos_depth").value)
        reliability = str(self.get_parameter("qos_reliability").value)
        compression = str(self.get_parameter("compression").value)
        if flush_period_s <= 0:
            raise RecorderConfigError(f"flush_period_s must be > 0, got {flush_period_s}")
        if depth < 1:
            raise RecorderConfigError(f"qos_depth must be >= 1, got {depth}")
        if reliability not in ("reliable", "best_effort"):
            raise RecorderConfigError(f"qos_reliability must be 'reliable' or 'best_effort', got {reliability!r}")
        best_effort = self.get_parameter("best_effort_topics").value or []
        best_effort = [best_effort] if isinstance(best_effort, str) else list(best_effort)
        listed = {parse_topic_spec(spec)[0] for spec in specs}
        strays = [t for t in best_effort if t not in listed]
        if strays:
            raise RecorderConfigError(f"best_effort_topics {strays} are not in 'topics'")

        # Validate everything before the bag directory is created.
        self._listed: list[tuple[str, str]] = []  # (as written in 'topics', resolved)
        types = MessageTypes()
        wanted: list[tuple[str, str, type]] = []
        for spec in specs:
            topic, msgtype = parse_topic_spec(spec)
            cls = load_message_class(msgtype, topic)
            try:
                types.definition(msgtype)
            except UnknownMessageTypeError as exc:
                raise RecorderConfigError(f"topic {topic!r}: {exc}") from None
            try:
                resolved = self.resolve_topic_name(topic)
            except Exception as exc:  # noqa: BLE001 - rclpy raises several validation errors
                raise RecorderConfigError(f"bad topic name {topic!r} in topics entry {spec!r}: {exc}") from None
            if any(resolved == w[0] for w in wanted):
                raise RecorderConfigError(f"topic {resolved!r} is listed twice in 'topics'")
            wanted.append((resolved, msgtype, cls))
            self._listed.append((topic, resolved))
        if Path(output).exists():
            raise RecorderConfigError(f"output {output!r} already exists; the recorder never overwrites or appends "
                                      "to a bag, choose a new directory")

        try:
            self.bag = BagWriter(output, flush_period_s=flush_period_s, split_period_s=split_period_s,
                                 compression=compression)
        except (ValueError, FileExistsError) as exc:
            raise RecorderConfigError(str(exc)) from None
        self._use_rmw_stamp = not self.get_parameter("use_sim_time").value
        qos = {kind: QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth, durability=DurabilityPolicy.VOLATILE,
                                reliability=policy)
               for kind, policy in (("reliable", ReliabilityPolicy.RELIABLE),
                                    ("best_effort", ReliabilityPolicy.BEST_EFFORT))}
        best_effort_resolved = {self.resolve_topic_name(t) for t in best_effort}
        self._qos_pending: set[str] = set()
        for topic, msgtype, cls in wanted:
            self.bag.add_topic(topic, msgtype)
            self._qos_pending.add(topic)
            self.create_subscription(cls, topic, self._make_callback(topic),
                                     qos["best_effort" if topic in best_effort_resolved else reliability], raw=True)
        self.create_timer(min(0.1, flush_period_s / 10.0), self.bag.poll)
        self._heard_publisher = self.create_publisher(String, INTERNAL["recorder_status"][0], HEARD_QOS)
        self._heard: list[str] | None = None
        self.create_timer(0.2, self._say_what_it_hears)
        self.get_logger().info(
            f"recording {len(wanted)} topics to {output} (flush every {flush_period_s:g} s, "
            f"split every {split_period_s:g} s): " + ", ".join(f"{t} [{m}]" for t, m, _ in wanted))

    def _say_what_it_hears(self) -> None:
        heard = [topic for topic, resolved in self._listed if self.count_publishers(resolved)]
        if heard != self._heard:
            self._heard = heard
            self._heard_publisher.publish(String(data=json.dumps({"heard": heard})))

    def _make_callback(self, topic: str):
        bag = self.bag
        clock = self.get_clock()

        def on_message(data: bytes, info: dict) -> None:
            stamp = info.get("received_timestamp") if self._use_rmw_stamp else None
            if not stamp:
                stamp = clock.now().nanoseconds
            if topic in self._qos_pending:  # publisher QoS goes into the channel + metadata.yaml
                self._qos_pending.discard(topic)
                pubs = self.get_publishers_info_by_topic(topic)
                bag.set_offered_qos(topic, [qos_to_dict(p.qos_profile) for p in pubs])
            bag.write(topic, data, stamp, info.get("source_timestamp") or None,
                      info.get("publication_sequence_number") or 0)

        return on_message

    def close_bag(self) -> None:
        """Close the bag (complete summary + metadata.yaml) and log what was written."""
        bag, self.bag = self.bag, None
        if bag is None:
            return
        bag.close()
        total = sum(bag.counts.values())
        per_topic = ", ".join(f"{t}: {n}" for t, n in bag.counts.items())
        self.get_logger().info(f"closed bag {bag.path} ({len(bag.files)} files): wrote {total} messages; {per_topic}")
        if bag.trimmed:
            self.get_logger().info(f"trimmed trailing CDR padding (rosbags compatibility) on {bag.trimmed}")
        if bag.unparsed:
            self.get_logger().warning(f"messages that did not parse as their type (stored unchanged): {bag.unparsed}")


def main(args: list[str] | None = None) -> int:
    """Console-script entry point; returns the process exit code."""
    init_ros(args)
    node = None
    try:
        with stop_on_signals() as stop:  # a signal only sets a flag: never interrupts a write half way
            try:
                node = RecorderNode()
            except (RecorderConfigError, ParameterException) as exc:
                print(f"recorder_node: error: {exc}", file=sys.stderr, flush=True)
                return 2
            spin(node, stop, SingleThreadedExecutor())
            node.get_logger().info(f"stopping ({signal.Signals(stop[0]).name if stop else 'shutdown'})")
            return 0
    finally:
        if node is not None:
            node.close_bag()
            node.destroy_node()
        rclpy.try_shutdown()

if __name__ == "__main__":
    sys.exit(main())
