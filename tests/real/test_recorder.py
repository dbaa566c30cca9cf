"""Recorder tests: the bag writer offline, then recorder_node over real DDS in separate processes.

The recorder always runs as its own process (``python -m robostack.real.recorder_node``); the
test process publishes with rclpy. Discovery is kept on this host
(``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST``) in a domain picked from the pid, and topics carry
a per-run prefix, so parallel runs do not see each other.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
import warnings
from pathlib import Path

import pytest

os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ.setdefault("ROS_DOMAIN_ID", str(60 + os.getpid() % 40))

rclpy = pytest.importorskip("rclpy")
pytest.importorskip("mcap_ros2")
pytest.importorskip("rosbags")

from geometry_msgs.msg import Twist  # noqa: E402
from mcap.reader import make_reader  # noqa: E402
from rclpy.serialization import deserialize_message, serialize_message  # noqa: E402
from rosbags.rosbag2 import Reader as RosbagsReader  # noqa: E402
from rosbags.typesys import Stores, get_typestore  # noqa: E402
from sensor_msgs.msg import JointState  # noqa: E402
from std_msgs.msg import Bool, Float64MultiArray  # noqa: E402

from robostack import cli  # noqa: E402
from robostack.real.bag import (  # noqa: E402
    STATE_KEY, BagError, BagWriter, MessageTypes, read_messages, read_metadata)
from robostack.real.bag_recovery import inspect_bag, recover  # noqa: E402

with warnings.catch_warnings():  # the module warns that it is deprecated, but it is the documented reader
    warnings.simplefilter("ignore", DeprecationWarning)
    from mcap_ros2.reader import read_ros2_messages  # noqa: E402

# rclpy's type support imports rosidl_parser -> lark, which imports the deprecated sre_* modules
pytestmark = pytest.mark.filterwarnings("ignore:module 'sre_:DeprecationWarning")

JAZZY = get_typestore(Stores.ROS2_JAZZY)
RUN = uuid.uuid4().hex[:6]


# ------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------


def rosbags_read(bag: Path) -> dict[str, list]:
    """All messages per topic through rosbags' rosbag2 Reader (directory + metadata.yaml)."""
    out: dict[str, list] = {}
    with RosbagsReader(bag) as reader:
        for conn, stamp, raw in reader.messages():
            out.setdefault(conn.topic, []).append((stamp, JAZZY.deserialize_cdr(raw, conn.msgtype)))
    return out


def mcap_read(bag: Path) -> dict[str, list]:
    """All messages per topic through mcap_ros2, file by file as listed in metadata.yaml."""
    out: dict[str, list] = {}
    for rel in read_metadata(bag)["relative_file_paths"]:
        for m in read_ros2_messages(str(bag / rel)):
            out.setdefault(m.channel.topic, []).append((m.log_time_ns, m.ros_msg))
    return out


def joint_state(i: int, empty_effort: bool) -> JointState:
    js = JointState()
    js.header.stamp.sec = i
    js.name = ["j0", "j1", "j2"]
    js.position = [float(i), 0.5, -0.5]
    js.velocity = [0.1 * i, 0.0, 0.0]
    js.effort = [] if empty_effort else [1.0, 2.0, float(i)]
    return js


def start_recorder(out: Path, topics: list[str], *params: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "robostack.real.recorder_node", "--ros-args",
           "-p", f"topics:={topics!r}", "-p", f"output:={out}"]
    for p in params:
        cmd += ["-p", p]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.fixture()
def ros():
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    node = rclpy.create_node(f"recorder_test_{RUN}", context=ctx)
    try:
        yield node
    finally:
        node.destroy_node()
        rclpy.try_shutdown(context=ctx)


def wait_matched(pubs, proc: subprocess.Popen, timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while any(p.get_subscription_count() < 1 for p in pubs):
        if proc.poll() is not None:
            pytest.fail(f"recorder exited early:\n{proc.stdout.read()}")
        if time.monotonic() > end:
            proc.kill()
            pytest.fail(f"recorder did not subscribe within {timeout} s:\n{proc.communicate()[0]}")
        time.sleep(0.02)
    time.sleep(0.1)  # matching is seen by the publisher first; give the reader side a moment


# ------------------------------------------------------------------------------------------
# offline: writer, CDR normalisation, schemas, recovery
# ------------------------------------------------------------------------------------------


def test_rclpy_empty_array_trap_is_normalised(tmp_path):
    raw = serialize_message(joint_state(3, empty_effort=True))
    with pytest.raises(Exception, match="size mismatch"):  # the trap itself, so we notice if it goes away
        JAZZY.deserialize_cdr(raw, "sensor_msgs/msg/JointState")
    bag = BagWriter(tmp_path / "b", split_period_s=0)
    bag.add_topic("/js", "sensor_msgs/msg/JointState")
    bag.add_topic("/arr", "std_msgs/msg/Float64MultiArray")
    bag.write("/js", raw, 10)
    bag.write("/js", serialize_message(joint_state(4, empty_effort=False)), 11)
    bag.write("/arr", serialize_message(Float64MultiArray()), 12)
    bag.close()
    assert bag.trimmed == {"/js": 1, "/arr": 1} and not bag.unparsed
    for backend in ("rosbags", "mcap"):
        msgs = list(read_messages(tmp_path / "b", backend))
        assert [len(m.msg.effort) for m in msgs if m.topic == "/js"] == [0, 3]
    with open(tmp_path / "b" / "b_0.mcap", "rb") as fh:  # trimmed bytes still deserialize in rclpy
        first = next(m for _, c, m in make_reader(fh).iter_messages() if c.topic == "/js")
    assert list(deserialize_message(first.data, JointState).position) == [3.0, 0.5, -0.5]
    # big-endian CDR takes the other code path
    be = bytes(JAZZY.serialize_cdr(JAZZY.deserialize_cdr(bytes(first.data), "sensor_msgs/msg/JointState"),
                                   "sensor_msgs/msg/JointState", little_endian=False))
    fixed, status = MessageTypes().normalize("sensor_msgs/msg/JointState", be + bytes(8))
    assert status == "trimmed" and fixed == be


def test_definitions_from_msg_files_match_typestore():
    empty = MessageTypes(get_typestore(Stores.EMPTY))  # forces loading .msg files from the ros wheels
    for t in ("sensor_msgs/msg/JointState", "std_msgs/msg/Float64MultiArray", "geometry_msgs/msg/Twist"):
        assert empty.definition(t) == MessageTypes().definition(t)
    with pytest.raises(ValueError, match="nonexistent_msgs/msg/Nope"):
        MessageTypes().definition("nonexistent_msgs/msg/Nope")


def test_existing_output_refused(tmp_path):
    with pytest.raises(FileExistsError, match="already exists"):
        BagWriter(tmp_path)


def test_recover_any_truncation(tmp_path):
    bag = BagWriter(tmp_path / "src", split_period_s=0)
    bag.add_topic("/arr", "std_msgs/msg/Float64MultiArray")
    for i in range(40):
        bag.write("/arr", serialize_message(Float64MultiArray(data=[float(i)] * (i % 5))), 1000 + i)
        if i % 10 == 9:
            bag.flush()
    data = (tmp_path / "src" / "src_0.mcap").read_bytes()  # never closed: as after a SIGKILL
    meta = read_metadata(tmp_path / "src")  # the file being written is listed, with what it holds
    assert meta["relative_file_paths"] == ["src_0.mcap"] and meta["message_count"] == 40
    with open(tmp_path / "src" / "src_0.mcap", "rb") as fh:  # where each flush's chunk record ends
        chunk_ends = [c.chunk_start_offset + c.chunk_length for c in make_reader(fh).get_summary().chunk_indexes]
    assert len(chunk_ends) == 4
    for cut in sorted(set(range(0, len(data) + 1, 61)) | set(chunk_ends) | {e - 1 for e in chunk_ends}):
        dst = tmp_path / f"cut{cut}"
        shutil.copytree(tmp_path / "src", dst)
        (dst / "src_0.mcap").rename(dst / f"cut{cut}_0.mcap")
        with open(dst / f"cut{cut}_0.mcap", "r+b") as fh:
            fh.truncate(cut)
        report = recover(dst)
        kept = 10 * sum(1 for e in chunk_ends if e <= cut)  # every chunk complete before the cut survives
        rb, mc = rosbags_read(dst).get("/arr", []), mcap_read(dst).get("/arr", [])
        assert len(rb) == len(mc) == report.message_count == kept, cut
        assert [len(m.data) for _, m in mc] == [i % 5 for i in range(len(mc))]  # a clean prefix
        assert bool(report.rebuilt) == (cut < len(data)), cut  # an uncut file (valid footer) is not touched
        shutil.rmtree(dst)
    with pytest.raises(BagError, match="still being written"):  # the live writer holds a lock
        recover(tmp_path / "src")
    bag._cur.stream.close()  # what a SIGKILL does to the writer's file and its lock on the directory
    os.close(bag._dir_fd)
    for _ in range(2):  # the file ends in the last flush's tail: nothing to rebuild, twice
        report = recover(tmp_path / "src")
        assert not report.rebuilt and report.message_count == 40
    assert (tmp_path / "src" / "src_0.mcap").read_bytes() == data
    assert read_metadata(tmp_path / "src")["custom_data"][STATE_KEY] == "recovered"


# ------------------------------------------------------------------------------------------
# over DDS, recorder in its own process
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM])
def test_record_roundtrip_both_readers(ros, tmp_path, stop_signal):
    out = tmp_path / "bag"
    js_t, arr_t, flag_t, tw_t = (f"/rec_{RUN}_{int(stop_signal)}/{n}" for n in ("joint_states", "cmd", "flag", "twist"))
    proc = start_recorder(out, [f"{js_t}:sensor_msgs/msg/JointState", f"{arr_t}:std_msgs/msg/Float64MultiArray",
                                f"{flag_t}:std_msgs/msg/Bool", f"{tw_t}:geometry_msgs/msg/Twist"])
    pubs = {t: ros.create_publisher(c, t, 50) for t, c in
            ((js_t, JointState), (arr_t, Float64MultiArray), (flag_t, Bool), (tw_t, Twist))}
    wait_matched(pubs.values(), proc)
    n = 40
    t_start = time.time_ns()
    for i in range(n):
        js = joint_state(i, empty_effort=i % 2 == 1)
        # every other pair goes out pre-serialized by rclpy: those bytes carry the empty-array junk
        pubs[js_t].publish(serialize_message(js) if i % 4 >= 2 else js)
        pubs[arr_t].publish(Float64MultiArray(data=[] if i % 3 == 0 else [float(i)] * (i % 7)))
        pubs[flag_t].publish(Bool(data=i % 2 == 0))
        tw = Twist()
        tw.linear.x, tw.angular.z = float(i), -float(i)
        pubs[tw_t].publish(tw)
        time.sleep(0.005)
    time.sleep(0.5)
    proc.send_signal(stop_signal)
    log = proc.communicate(timeout=20)[0]
    assert proc.returncode == 0, log
    assert f"wrote {4 * n} messages" in log and f"{js_t}: {n}" in log, log
    assert f"stopping ({signal.Signals(stop_signal).name})" in log, log

    meta = read_metadata(out)
    assert meta["custom_data"][STATE_KEY] == "closed" and meta["message_count"] == 4 * n
    for entry in meta["topics_with_message_count"]:
        assert entry["message_count"] == n
        # the publishers' QoS, as rosbag2 stores it (DDS discovery does not carry history/depth)
        qos = entry["topic_metadata"]["offered_qos_profiles"]
        assert qos and qos[0]["reliability"] == "reliable" and qos[0]["durability"] == "volatile"

    t_end = time.time_ns()
    for name, got in (("rosbags", rosbags_read(out)), ("mcap_ros2", mcap_read(out))):
        assert {t: len(v) for t, v in got.items()} == {t: n for t in pubs}, name
        for t, v in got.items():
            stamps = [s for s, _ in v]
            assert stamps == sorted(stamps) and t_start <= stamps[0] and stamps[-1] <= t_end, (name, t)
        for i, (_, m) in enumerate(got[js_t]):
            assert list(m.name) == ["j0", "j1", "j2"] and m.header.stamp.sec == i
            assert list(m.position) == [float(i), 0.5, -0.5] and list(m.velocity) == pytest.approx([0.1 * i, 0, 0])
            assert list(m.effort) == ([] if i % 2 else [1.0, 2.0, float(i)]), (name, i)
        assert [list(m.data) for _, m in got[arr_t]] == [[] if i % 3 == 0 else [float(i)] * (i % 7) for i in range(n)]
        assert [bool(m.data) for _, m in got[flag_t]] == [i % 2 == 0 for i in range(n)]
        assert [(m.linear.x, m.angular.z) for _, m in got[tw_t]] == [(float(i), -float(i)) for i in range(n)]


def test_sigkill_loses_at_most_the_last_second(ros, tmp_path, capsys):
    out = tmp_path / "bag"
    topic = f"/rec_{RUN}/kill/joint_states"
    proc = start_recorder(out, [f"{topic}:sensor_msgs/msg/JointState"], "flush_period_s:=1.0", "split_period_s:=2.0")
    pub = ros.create_publisher(JointState, topic, 100)
    wait_matched([pub], proc)
    # While the recorder lives, robostack data refuses to read or recover its bag, in one line.
    for argv in (["convert", str(out), str(tmp_path / "ds")], ["recover", str(out)]):
        assert cli.main(["data", *argv]) == 2, argv
        err = capsys.readouterr().err
        assert err == f"robostack: error: {out} is still being recorded (a live recorder holds its lock); " \
                      "stop the recorder first\n", argv
    sent: list[float] = []  # monotonic publish time of message i
    t0 = time.monotonic()
    t_kill = None
    # Files split at 2 s after their first message and flush 0.75 s after their first unflushed one,
    # so a kill at 3.4 s lands 0.65 s after the second file's first flush: close to the worst case.
    while time.monotonic() - t0 < 3.7:
        if t_kill is None and time.monotonic() - t0 >= 3.4:
            proc.kill()  # SIGKILL: no handler, no close
            t_kill = time.monotonic()
        pub.publish(joint_state(len(sent), empty_effort=True))
        sent.append(time.monotonic())
        time.sleep(max(0.0, t0 + len(sent) / 200.0 - time.monotonic()))  # ~200 Hz
    proc.communicate(timeout=10)
    assert proc.returncode == -signal.SIGKILL

    # Straight after the crash, with no recovery: both readers read every message up to the last flush,
    # including those of the file that was being written, and metadata.yaml counts exactly those.
    meta = read_metadata(out)
    assert meta["custom_data"][STATE_KEY] == "recording" and len(meta["relative_file_paths"]) == 2
    status = inspect_bag(out)
    assert not status.live and not status.damaged and status.message_count == meta["message_count"]
    must_have = sum(1 for t in sent if t < t_kill - 1.0 - 0.25)  # 1 s + discovery/latency margin
    for name, got in (("rosbags", rosbags_read(out)), ("mcap_ros2", mcap_read(out))):
        seqs = [m.header.stamp.sec for _, m in got[topic]]
        assert seqs == list(range(len(seqs))), name  # a gap-free prefix
        assert len(seqs) == meta["message_count"] == meta["topics_with_message_count"][0]["message_count"], name
        assert len(seqs) >= must_have, (name, len(seqs), must_have)
        lost_s = t_kill - sent[len(seqs) - 1]
        print(f"{name}: {len(seqs)} of {sum(1 for t in sent if t < t_kill)} messages sent before the kill "
              f"survived; the newest one was sent {lost_s:.2f} s before the kill")
        assert all(len(m.effort) == 0 for _, m in got[topic])
    per_file = [f["message_count"] for f in meta["files"]]
    assert per_file[0] >= 300 and per_file[1] > 0, per_file  # the 2 s file, and the flushes of the open one
    assert meta["duration"]["nanoseconds"] == got[topic][-1][0] - got[topic][0][0]

    report = recover(out)  # nothing to rebuild: every file ends in a valid footer
    assert report.rebuilt == [] and report.message_count == len(seqs), report


def test_config_errors_are_clear(tmp_path):
    existing = tmp_path / "already_there"
    existing.mkdir()
    (existing / "keep.txt").write_text("x")
    cases = {
        "exists": (existing, ["/a:std_msgs/msg/Bool"], ["already exists", str(existing)]),
        "bad_name": (tmp_path / "o1", ["/a:std_msgs/msg/Boool"], ["std_msgs/msg/Boool", "no message 'Boool'"]),
        "bad_pkg": (tmp_path / "o2", ["/a:no_such_msgs/msg/Foo"], ["no_such_msgs/msg/Foo", "cannot import"]),
        "bad_form": (tmp_path / "o3", ["/a:Bool"], ["'Bool'", "pkg/msg/Type"]),
    }
    procs = {k: start_recorder(out, topics) for k, (out, topics, _) in cases.items()}  # in parallel
    for key, proc in procs.items():
        log = proc.communicate(timeout=30)[0]
        out, _, needles = cases[key]
        assert proc.returncode == 2, (key, log)
        for needle in needles:
            assert needle in log, (key, needle, log)
        assert "Traceback" not in log, (key, log)
        if key != "exists":
            assert not out.exists(), key  # nothing is created on a bad configuration
    assert [p.name for p in existing.iterdir()] == ["keep.txt"]
