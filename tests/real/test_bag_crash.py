"""Crash safety of recorded bags: the provisional tail written at every flush, a flush torn by a kill, and
``robostack data convert`` / ``recover`` on a bag whose recorder was SIGKILLed (a real process).

The recorder node itself is SIGKILLed over DDS in ``test_recorder.py``; here the writer runs in-process or in
a plain Python process, so each case takes well under a second.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytest.importorskip("rclpy")
pytest.importorskip("mcap_ros2")
pytest.importorskip("rosbags")

from mcap.reader import make_reader  # noqa: E402
from mcap.records import DataEnd, Footer, Header  # noqa: E402
from mcap.stream_reader import StreamReader  # noqa: E402
from rclpy.serialization import serialize_message  # noqa: E402
from std_msgs.msg import Float64MultiArray, Int32  # noqa: E402

from robostack import cli  # noqa: E402
from robostack.data.dataset import load_dataset  # noqa: E402
from robostack.real.bag import STATE_KEY, BagWriter, read_messages, read_metadata  # noqa: E402
from robostack.real.bag_recovery import inspect_bag, recover  # noqa: E402

# rclpy's type support imports rosidl_parser -> lark, which imports the deprecated sre_* modules
pytestmark = pytest.mark.filterwarnings("ignore:module 'sre_:DeprecationWarning")

TESTS = Path(__file__).resolve().parents[1]  # helpers/ lives here


def read_both(bag: Path) -> dict[str, list[tuple[str, int]]]:
    """(topic, value) of every message, per reader, in the order the reader returns them."""
    return {backend: [(m.topic, int(m.msg.data)) for m in read_messages(bag, backend)]
            for backend in ("rosbags", "mcap")}


def record_kinds(path: Path) -> list[str]:
    """The top-level record types of an MCAP file, read front to back with CRCs checked."""
    with open(path, "rb") as fh:
        return [type(r).__name__ for r in StreamReader(fh, skip_magic=False, emit_chunks=True,
                                                       validate_crcs=True).records]


def test_provisional_tail_is_replaced_across_flushes_and_a_split(tmp_path):
    bag_dir = tmp_path / "bag"
    bag = BagWriter(bag_dir, flush_period_s=3600, split_period_s=0.3)  # flushes only when asked to
    bag.add_topic("/a", "std_msgs/msg/Int32")
    bag.add_topic("/b", "std_msgs/msg/Int32")
    assert read_metadata(bag_dir)["relative_file_paths"] == ["bag_0.mcap"]  # listed and valid from the start
    assert read_both(bag_dir) == {"rosbags": [], "mcap": []}
    written: list[tuple[str, int]] = []
    stamp = 1_000
    for flush in range(7):
        if flush == 4:  # the split is due: the next write goes into bag_0, finishes it, and bag_1 starts
            time.sleep(0.35)
        for i in range(20):
            topic = "/a" if i % 3 else "/b"
            value = 100 * flush + i
            bag.write(topic, serialize_message(Int32(data=value)), stamp)
            written.append((topic, value))
            stamp += 1_000
        files = sorted(bag_dir.glob("*.mcap"))
        before = {p.name: p.read_bytes() for p in files}
        bag.write("/a", serialize_message(Int32(data=-1)), stamp)  # nothing reaches a file between flushes
        assert {p.name: p.read_bytes() for p in files} == before
        written.append(("/a", -1))
        stamp += 1_000
        bag.flush()

        # What a SIGKILL right now would leave: every message so far, once, in order, with both readers.
        got = read_both(bag_dir)
        assert got["rosbags"] == got["mcap"] == written, flush
        meta = read_metadata(bag_dir)
        assert meta["custom_data"][STATE_KEY] == "recording"
        assert meta["relative_file_paths"] == [f"bag_{n}.mcap" for n in range(1 + (flush >= 4))]
        assert meta["message_count"] == len(written) == sum(f["message_count"] for f in meta["files"])
        counts = {t["topic_metadata"]["name"]: t["message_count"] for t in meta["topics_with_message_count"]}
        assert counts == {t: sum(1 for w, _ in written if w == t) for t in ("/a", "/b")}
        assert meta["duration"]["nanoseconds"] == stamp - 1_000 - 1_000
        for path in sorted(bag_dir.glob("*.mcap")):  # the tail replaced the previous one: one data section
            kinds = record_kinds(path)
            assert kinds[0] == Header.__name__ and kinds[-1] == Footer.__name__, (flush, path.name)
            assert kinds.count(DataEnd.__name__) == kinds.count(Footer.__name__) == 1, (flush, path.name)
    assert [f["message_count"] for f in meta["files"]] == [4 * 21 + 1, 3 * 21 - 1]
    bag.close()
    assert read_both(bag_dir)["rosbags"] == written and read_metadata(bag_dir)["custom_data"][STATE_KEY] == "closed"


def test_full_chunks_are_committed_at_once(tmp_path):
    """A writer that closes a chunk on its own (chunk_size) must not write behind the tail: it is flushed."""
    bag = BagWriter(tmp_path / "bag", flush_period_s=3600, split_period_s=0, chunk_size=2_000)
    bag.add_topic("/arr", "std_msgs/msg/Float64MultiArray")
    for i in range(200):
        bag.write("/arr", serialize_message(Float64MultiArray(data=[float(i)] * 8)), 1_000 + i)
    meta = read_metadata(tmp_path / "bag")
    for backend in ("rosbags", "mcap"):
        values = [m.msg.data[0] for m in read_messages(tmp_path / "bag", backend)]
        assert values == list(range(len(values))) and len(values) == meta["message_count"] > 150, backend


def test_a_flush_torn_by_a_kill_is_refused_then_recovered(tmp_path):
    """Every way the one write() of a flush can be cut short: detected (summary CRC), and recover() keeps
    every complete chunk."""
    src = tmp_path / "src"
    bag = BagWriter(src, flush_period_s=3600, split_period_s=0)
    bag.add_topic("/n", "std_msgs/msg/Int32")
    snapshots = []
    for flush in range(4):
        for i in range(10):
            bag.write("/n", serialize_message(Int32(data=10 * flush + i)), 1_000 + 10 * flush + i)
        bag.flush()
        snapshots.append(((src / "src_0.mcap").read_bytes(), (src / "metadata.yaml").read_bytes()))
    (old, meta_old), (new, _) = snapshots[2], snapshots[3]
    with open(src / "src_0.mcap", "rb") as fh:
        last = make_reader(fh).get_summary().chunk_indexes[-1]
    start, chunk_end = last.chunk_start_offset, last.chunk_start_offset + last.chunk_length
    assert new[:start] == old[:start] and len(new) > len(old)  # the flush rewrote only from the old tail on

    for written in sorted(set(range(start, len(new) + 1, 23)) | {start, start + 1, chunk_end - 1, chunk_end,
                                                                  len(old), len(new) - 1, len(new)}):
        dst = tmp_path / f"torn{written}"
        dst.mkdir()
        (dst / f"torn{written}_0.mcap").write_bytes(new[:written] + old[written:])  # the write stopped there
        (dst / "metadata.yaml").write_bytes(meta_old.replace(b"src_0", f"torn{written}_0".encode()))
        status = inspect_bag(dst)
        intact = written in (start, len(new))  # the whole write, or none of it
        assert bool(status.damaged) == (not intact) and not status.live, written
        if intact:
            assert status.note and status.refusal("x") is None
        else:
            assert "run `robostack data recover" in status.refusal(f"robostack data recover {dst}")
        report = recover(dst)
        kept = 40 if written >= chunk_end else 30  # the new chunk counts once it is complete
        got = read_both(dst)
        assert got["rosbags"] == got["mcap"] == [("/n", v) for v in range(kept)], written
        assert report.message_count == read_metadata(dst)["message_count"] == kept, written
        assert bool(report.rebuilt) == (not intact), written
        assert not inspect_bag(dst).damaged
        shutil.rmtree(dst)
    bag.close()


# A go2 bag as helpers.bags.write_go2_bag records it (30 steps of state + driver command at 50 Hz), written by
# a process that flushes after the driver commands of steps 9 and 19 and is SIGKILLed where the bag would
# have been closed: steps 20..29 were never flushed.
KILLED_WRITER = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    sys.path.insert(0, {tests!r})
    from robostack.real import bag as B
    from helpers.bags import write_go2_bag

    init, write, driver = B.BagWriter.__init__, B.BagWriter.write, []
    def patched_init(self, *args, **kwargs):
        init(self, *args, **{{**kwargs, "flush_period_s": 3600}})  # only the flushes below
    def patched_write(self, topic, *args, **kwargs):
        write(self, topic, *args, **kwargs)
        if self._topics[topic].msgtype == "std_msgs/msg/Float64MultiArray":  # the driver command, once a step
            driver.append(topic)
            if len(driver) in (10, 20):
                self.flush()
    B.BagWriter.__init__, B.BagWriter.write = patched_init, patched_write
    B.BagWriter.close = lambda self: os.kill(os.getpid(), signal.SIGKILL)
    write_go2_bag(Path(sys.argv[1]), "/robot1", steps=30)
""")


@pytest.fixture(scope="module")
def killed_go2_bag(tmp_path_factory) -> Path:
    bag = tmp_path_factory.mktemp("killed") / "bag"
    proc = subprocess.run([sys.executable, "-c", KILLED_WRITER.format(tests=str(TESTS)), str(bag)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr  # SIGKILL
    return bag


def test_convert_a_killed_recording_reads_what_was_flushed(killed_go2_bag, tmp_path, capsys):
    bag = tmp_path / "bag"
    shutil.copytree(killed_go2_bag, bag)
    meta = read_metadata(bag)
    assert meta["custom_data"][STATE_KEY] == "recording" and meta["message_count"] > 0
    assert cli.main(["data", "convert", str(bag), str(tmp_path / "d"), "--sim-task", "go2-walk", "--json"]) == 0
    captured = capsys.readouterr()
    assert captured.err == (f"robostack: note: {bag} was not closed cleanly (recorder killed?); reading the "
                            f"{meta['message_count']} messages flushed before that\n")
    assert json.loads(captured.out)["episodes"] == 1
    episode = load_dataset(tmp_path / "d").episode(0, images=False)
    # states and commands of steps 0..19 were flushed: frames from the first command to the state of step 19
    assert len(episode["action"]) == 19 and episode["action"][:, 0].tolist() == list(range(19))


def test_convert_refuses_a_torn_file_until_recovered(killed_go2_bag, tmp_path, capsys):
    bag = tmp_path / "bag"
    shutil.copytree(killed_go2_bag, bag)
    path = bag / "bag_0.mcap"
    with open(path, "rb") as fh:
        second = make_reader(fh).get_summary().chunk_indexes[1]
    with open(path, "r+b") as fh:  # a kill in the middle of the second flush's write
        fh.truncate(second.chunk_start_offset + second.chunk_length // 2)
    out = tmp_path / "d"
    assert cli.main(["data", "convert", str(bag), str(out), "--sim-task", "go2-walk"]) == 2
    err = capsys.readouterr().err
    assert err == (f"robostack: error: {bag} was not closed cleanly: bag_0.mcap ends without a valid footer/summary "
                   f"(cut during a write?); run `robostack data recover {bag}` to rebuild the bag from its complete "
                   "chunks\n")
    assert not out.exists()

    assert cli.main(["data", "recover", str(bag)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("rebuilt bag_0.mcap: ") and "messages kept" in lines[0]
    kept = read_metadata(bag)["message_count"]
    assert f"1 files, {kept} messages" in lines[-1] and read_metadata(bag)["custom_data"][STATE_KEY] == "recovered"
    assert cli.main(["data", "recover", str(bag), "--json"]) == 0  # a second run rebuilds nothing
    assert json.loads(capsys.readouterr().out)["rebuilt"] == []

    assert cli.main(["data", "convert", str(bag), str(out), "--sim-task", "go2-walk"]) == 0
    assert capsys.readouterr().err == ""  # recovered: nothing to warn about
    episode = load_dataset(out).episode(0, images=False)
    assert episode["action"][:, 0].tolist() == list(range(9))  # the first flush: steps 0..9


def test_recover_cli_errors(tmp_path, capsys):
    assert cli.main(["data", "recover", str(tmp_path / "nothing")]) == 2
    assert capsys.readouterr().err == f"robostack: error: bag directory {str(tmp_path / 'nothing')!r} does not exist\n"
    assert cli.main(["data", "convert", str(tmp_path), str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("robostack: error: ") and err.count("\n") == 1 and "metadata.yaml" in err
    assert os.listdir(tmp_path) == []
