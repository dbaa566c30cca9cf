"""Crash-safe rosbag2 bags in MCAP: a writer, ``recover()``, and small read helpers.

Layout
------
A bag is a directory, like the ones ``ros2 bag record -s mcap`` writes::

    my_bag/
      metadata.yaml        rosbag2 metadata, version 9 (the ROS 2 Jazzy format)
      my_bag_0.mcap        MCAP, ``ros2`` profile: ``ros2msg`` schemas, ``cdr`` channels
      my_bag_1.mcap        ... one more file every ``split_period_s``

Each input message is the raw CDR bytes of a ROS 2 message, its type string
(``sensor_msgs/msg/JointState``), its topic and a timestamp in ns (the receive time,
written as the MCAP ``log_time``; ``publish_time`` is the sender's stamp when known).

The MCAP records are written with the ``mcap`` library's own ``Writer`` (chunked, zstd,
with chunk and message indexes and a summary) and read back in ``recover()`` with its
``StreamReader``; nothing is hand-encoded. Two places go below a public API: the CDR check
(last section) calls the functions rosbags generates per type (``Msgdef.getsize_cdr_to_ros1``
/ ``deserialize_cdr_be``) because the public ``Typestore.deserialize_cdr`` raises on exactly
the trailing bytes it has to measure; and the footer check (``_tail_intact``) computes the
summary CRC of the MCAP spec itself, because mcap's readers never check it.

Crash safety
------------
Goal: after a SIGKILL at any moment (outside the one ``write()`` call of a flush), both
``rosbags`` and ``mcap`` read the bag as it is, with every message flushed before the kill, and
``metadata.yaml`` says what the files hold. No recovery step is needed; ``recover()`` remains
for the rare file cut in the middle of a flush.

* Flush: at the latest ``0.75 * flush_period_s`` after the first unflushed message (checked on
  every ``write()`` and on every ``poll()``, which the recorder calls >= ten times per flush
  period), and whenever the writer has closed a full chunk (``chunk_size``), the chunk in
  progress is finalized and written to the file *followed by a provisional tail*: DataEnd,
  summary (schemas, channels, statistics, chunk indexes), footer and end magic. A SIGKILL
  therefore loses only messages received in the last ``0.85 * flush_period_s`` plus the time a
  callback waits (``os.fsync`` is not called: a power cut can lose what the kernel has not
  written yet).
* How the tail is made and replaced, with the ``mcap`` public API and ``copy.deepcopy`` (the
  ``Writer`` holds plain Python state only, so a copy is exact; the tests would catch a release
  where it is not): the ``Writer`` writes into ``_StagedOutput``, an in-memory stream whose
  ``tell()`` is the file offset where the data section ends, so nothing reaches the file behind
  ``BagWriter``'s back (even a chunk the writer closes on its own for ``chunk_size`` is only
  staged). At a flush, ``Writer.flush()`` stages the chunk and its message indexes; ``finish()``
  on ``copy.deepcopy(writer, {id(staged): staged})`` (a copy sharing only the staging stream)
  stages a complete tail after them, while the real writer stays open. Chunk + tail then go to
  the file in one ``write()`` (unbuffered file) at the offset where the previous tail began, and
  the staging stream restarts where the new tail begins, so the next flush writes its chunk over
  this tail. Each flush's bytes are longer than the tail they replace (one more chunk, one more
  chunk index), so the file always ends in the tail just written; it is truncated only if a
  final tail is shorter. A kill can only hurt while that one ``write()`` is in progress.
  Chosen over a footer-less file that only ``recover()`` makes readable (the design before:
  readers saw nothing of the file being written) and over appending a new tail after each
  chunk (an MCAP file has one data section: readers would stop at the first footer).
  Cost, measured on 6 JointState topics at 500 Hz (2,250 messages per flush, a 2-core machine):
  a flush takes ~4.5 ms (median; ~1.8 ms before provisional tails): ~1.8 ms to compress the
  chunk (as before), ~1 ms for the tail (copy + summary; it grows with the chunks in the file,
  ~1.5 ms at the end of a 60 s file), 0.1 ms to write, ~1 ms for ``metadata.yaml`` (libyaml's
  dumper when installed). That is under 1% of a core at one flush per 0.75 s.
* ``metadata.yaml`` is rewritten atomically (temp file, ``os.replace``) after every flush and
  split, listing every file of the bag, the one being written with its counts so far (all of
  them flushed at that point), so its counts, files and duration match what the readers return
  (for the instant between a flush's ``write()`` and its ``os.replace`` the files hold one flush
  more than it says). Its ``custom_data`` has ``robostack.bag_state: recording`` until a clean
  close (``closed``; ``recovered`` after ``recover()`` of a bag that was not closed), so a bag
  whose recorder died is still recognisable. A file is valid from its creation on (header +
  empty tail before the first message).
* Split: ``split_period_s`` (default 60 s; 0 = never) after a file's first message, the file is
  finished (final summary and footer), the next one starts with the next message.
* Locks: the writer holds an exclusive ``flock`` on the bag directory for the whole recording
  and on the file it is writing; the kernel drops them when the process dies. ``is_live()``
  probes them, ``inspect_bag()`` tells a tool whether a bag is live, unclean but readable, or
  has a damaged file (``BagStatus.refusal()`` / ``.note``: ``robostack data convert`` refuses a
  live or damaged bag and reads an unclean one with a one-line note), and ``recover()`` refuses
  (``BagError``) to touch a live bag.
* ``recover(path)`` (``robostack data recover PATH``; ``robostack.real.bag_recovery``) does what
  ``ros2 bag reindex`` does for rosbag2: every ``.mcap`` file in the
  directory without a valid footer/summary (the summary CRC and the DataEnd record before the
  summary are checked too) is rebuilt from its complete, CRC-checked chunks (a partly written
  trailing chunk and a torn tail are dropped), written next to it and moved over it with
  ``os.replace``, and ``metadata.yaml`` is regenerated from all files. Files that end in a
  valid footer are not touched, so it is a no-op on the files of a bag killed between flushes,
  and idempotent. It needs the whole directory (files are found by name), the ``mcap`` package
  and chunk CRCs (this writer always sets them). It also rebuilds bags written before
  provisional tails existed (their last file was listed nowhere and had no footer). Messages
  that were still in the unflushed chunk are gone, by design.

Schemas
-------
Message definitions come from the ``rosbags`` type store for ROS 2 Jazzy
(``get_typestore(Stores.ROS2_JAZZY)``, ``generate_msgdef(type, ros_version=2)``), because the
writer needs that same store anyway to check the CDR bytes against the type (next section):
the definition stored in the bag is then exactly the one the bytes were validated against,
and it is in the concatenated ``ros2msg`` form both ``rosbags`` and ``mcap_ros2`` parse. A type
the store does not know (e.g. a custom message package) is loaded from the ``.msg`` files the
installed interface package ships (``<prefix>/share/<pkg>/msg/<Type>.msg``, prefixes from
``AMENT_PREFIX_PATH`` and ``sys.prefix``), with its dependencies, and registered in the store.
The RIHS01 type hash comes from the same store.

CDR normalisation (the ``rosbags`` empty-array trap)
----------------------------------------------------
Measured with the Jazzy wheels: ``rclpy.serialization.serialize_message`` sizes its buffer with
an estimate that counts alignment padding for *empty* sequences of 8-byte elements, and returns
the whole buffer, so a message with such an empty sequence (``JointState`` with an empty
``effort``, an empty ``Float64MultiArray``) ends in up to 4 junk bytes per empty sequence after its
last field. ``rosbags`` rejects a message with more than 3 trailing bytes ("CDR message size
mismatch"); ``mcap_ros2`` and ``rclpy`` ignore them. Messages a node *publishes as objects*
arrive over DDS (raw subscription) with their exact length and are not affected; messages
published as *pre-serialized bytes* (relays, players, anything calling ``serialize_message``)
carry the junk over the wire and into the bag.

So every message is walked with the type store's CDR code (``Msgdef.getsize_cdr_to_ros1``, the
size pass of its CDR-to-ROS1 converter, which builds no objects: about 6 us for a 12-joint
``JointState``; big-endian CDR goes through ``deserialize_cdr_be``) to find where its last
field ends; if more than 3 bytes follow, they are cut off. Nothing else is changed (field
bytes and the padding inside the message stay as received) and the result still deserializes
with ``rclpy``. Messages that do not parse as their type are written unchanged and counted in
``BagWriter.unparsed``; ``BagWriter.trimmed`` counts the normalised ones per topic. Pass
``normalize_cdr=False`` to store bytes exactly as received.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import re
import sys
import time
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml
from mcap.reader import make_reader
from mcap.writer import CompressionType, Writer
from rosbags.typesys import Stores, get_types_from_msg, get_typestore
from rosbags.typesys.base import Nodetype

try:
    import fcntl
except ImportError:  # not POSIX: no protection against recovering a bag that is still being written
    fcntl = None  # robostack.real.bag_recovery follows the same choice

if not hasattr(Writer, "flush"):  # mcap < 1.6: no way to finish a chunk without finishing the file
    raise ImportError("robostack.real.bag needs mcap>=1.6 (mcap.Writer.flush)")

ROSBAG2_VERSION = 9  # rosbag2 metadata version of ROS 2 Jazzy (QoS profiles as a YAML list)
ROS_DISTRO = "jazzy"
STATE_KEY = "robostack.bag_state"
FLUSH_FRACTION = 0.75  # flush when the oldest unflushed message is this fraction of the period old
_COMPRESSION = {"zstd": CompressionType.ZSTD, "lz4": CompressionType.LZ4, "none": CompressionType.NONE}
_YAML_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
_TYPE_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*/msg/[A-Za-z][A-Za-z0-9_]*$")


class BagError(RuntimeError):
    """A bag could not be written, read or recovered."""


class UnknownMessageTypeError(BagError, ValueError):
    """A message type has no definition in the type store nor in any installed package."""


# ---------------------------------------------------------------------------------------------
# Message types: definitions, hashes, CDR checks
# ---------------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def default_typestore():
    """The shared ROS 2 Jazzy type store (extended at run time with types loaded from .msg files)."""
    return get_typestore(Stores.ROS2_JAZZY)


def _share_dirs() -> list[Path]:
    prefixes = [p for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p]
    prefixes.append(sys.prefix)
    return [Path(p) / "share" for p in dict.fromkeys(prefixes)]


def _referenced_types(desc: tuple) -> Iterator[str]:
    node, rest = desc
    if node == Nodetype.NAME:
        yield rest
    elif node in (Nodetype.ARRAY, Nodetype.SEQUENCE):
        yield from _referenced_types(rest[0])


class MessageTypes:
    """Definitions, type hashes and CDR normalisation for message types, backed by a rosbags store."""

    def __init__(self, typestore=None):
        self.store = typestore if typestore is not None else default_typestore()
        self._defs: dict[str, tuple[str, str]] = {}

    def _load_from_share(self, msgtype: str, chain: tuple[str, ...] = ()) -> None:
        if msgtype in self.store.fielddefs:
            return
        pkg, _, name = msgtype.split("/")
        for share in _share_dirs():
            msgfile = share / pkg / "msg" / f"{name}.msg"
            if msgfile.is_file():
                break
        else:
            via = f" (needed by {' -> '.join(chain)})" if chain else ""
            raise UnknownMessageTypeError(
                f"unknown message type {msgtype!r}{via}: not in the rosbags ROS 2 Jazzy type store and "
                f"no {pkg}/msg/{name}.msg under {', '.join(str(s) for s in _share_dirs())}")
        types = get_types_from_msg(msgfile.read_text(encoding="utf-8"), msgtype)
        for _, fields in types.values():
            for _, desc in fields:
                for dep in _referenced_types(desc):
                    self._load_from_share(dep, chain + (msgtype,))
        self.store.register(types)

    def definition(self, msgtype: str) -> tuple[str, str]:
        """``(ros2msg definition text, RIHS01 hash)`` for ``pkg/msg/Type``; loads unknown types."""
        if msgtype not in self._defs:
            if not _TYPE_RE.match(msgtype):
                raise UnknownMessageTypeError(
                    f"bad message type {msgtype!r}: expected 'package/msg/Type', e.g. 'std_msgs/msg/Bool'")
            self._load_from_share(msgtype)
            text, _ = self.store.generate_msgdef(msgtype, ros_version=2)
            self._defs[msgtype] = (text, self.store.hash_rihs01(msgtype))
        return self._defs[msgtype]

    def cdr_end(self, msgtype: str, data: bytes | memoryview) -> int:
        """Byte offset just after the last field of a CDR message (incl. its 4-byte header)."""
        msgdef = self.store.get_msgdef(msgtype)
        view = memoryview(data)
        if view[1]:  # little endian: rosbags' byte-level CDR walker (no objects built, ~2x faster)
            pos, _ = msgdef.getsize_cdr_to_ros1(view[4:], 0, None, 0, self.store)
        else:
            _, pos = msgdef.deserialize_cdr_be(view[4:], 0, msgdef.cls, self.store)
        if pos + 4 > len(view):
            raise ValueError("message shorter than its fields")
        return pos + 4

    def normalize(self, msgtype: str, data: bytes) -> tuple[bytes, str]:
        """Cut trailing junk that ``rosbags`` would reject; returns ``(data, 'ok'|'trimmed'|'unparsed')``."""
        try:
            end = self.cdr_end(msgtype, data)
        except Exception:  # noqa: BLE001 - any parse failure: keep the bytes as received
            return data, "unparsed"
        if len(data) - end > 3:  # rosbags accepts up to 3 bytes of final padding
            return bytes(data[:end]), "trimmed"
        return data, "ok"


# ---------------------------------------------------------------------------------------------
# metadata.yaml
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class TopicInfo:
    name: str
    msgtype: str
    type_hash: str = ""
    offered_qos: list[dict] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class FileInfo:
    path: str  # relative to the bag directory
    start_ns: int = 0
    end_ns: int = 0
    message_count: int = 0
    topic_counts: dict[str, int] = dataclasses.field(default_factory=dict)

    def add(self, topic: str, log_time: int) -> None:
        if self.message_count == 0:
            self.start_ns = self.end_ns = log_time
        else:
            self.start_ns = min(self.start_ns, log_time)
            self.end_ns = max(self.end_ns, log_time)
        self.message_count += 1
        self.topic_counts[topic] = self.topic_counts.get(topic, 0) + 1


def qos_to_dict(qos: Any) -> dict:
    """An ``rclpy.qos.QoSProfile`` as a rosbag2 v9 ``offered_qos_profiles`` entry."""

    def dur(d: Any) -> dict:
        ns = int(getattr(d, "nanoseconds", d))
        return {"sec": ns // 1_000_000_000, "nsec": ns % 1_000_000_000}

    return {
        "history": qos.history.name.lower(),
        "depth": int(qos.depth),
        "reliability": qos.reliability.name.lower(),
        "durability": qos.durability.name.lower(),
        "deadline": dur(qos.deadline),
        "lifespan": dur(qos.lifespan),
        "liveliness": qos.liveliness.name.lower(),
        "liveliness_lease_duration": dur(qos.liveliness_lease_duration),
        "avoid_ros_namespace_conventions": bool(qos.avoid_ros_namespace_conventions),
    }


def _metadata_dict(files: list[FileInfo], topics: list[TopicInfo], custom: dict[str, str]) -> dict:
    counted = [f for f in files if f.message_count]
    start = min((f.start_ns for f in counted), default=0)
    end = max((f.end_ns for f in counted), default=0)
    return {"rosbag2_bagfile_information": {
        "version": ROSBAG2_VERSION,
        "storage_identifier": "mcap",
        "duration": {"nanoseconds": end - start},
        "starting_time": {"nanoseconds_since_epoch": start},
        "message_count": sum(f.message_count for f in files),
        "topics_with_message_count": [
            {"topic_metadata": {"name": t.name, "type": t.msgtype, "serialization_format": "cdr",
                                "offered_qos_profiles": t.offered_qos, "type_description_hash": t.type_hash},
             "message_count": sum(f.topic_counts.get(t.name, 0) for f in files)}
            for t in topics],
        "compression_format": "",
        "compression_mode": "",
        "relative_file_paths": [f.path for f in files],
        "files": [{"path": f.path, "starting_time": {"nanoseconds_since_epoch": f.start_ns},
                   "duration": {"nanoseconds": f.end_ns - f.start_ns}, "message_count": f.message_count}
                  for f in files],
        "custom_data": dict(custom),
        "ros_distro": ROS_DISTRO,
    }}


def _write_metadata(bag: Path, files: list[FileInfo], topics: list[TopicInfo], custom: dict[str, str]) -> None:
    # libyaml's dumper when there is one: ~0.5 ms instead of ~3 ms, and this runs at every flush
    text = yaml.dump(_metadata_dict(files, topics, custom), Dumper=_YAML_DUMPER, sort_keys=False,
                     default_flow_style=False)
    tmp = bag / "metadata.yaml.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
    os.replace(tmp, bag / "metadata.yaml")  # atomic: readers see the old or the new file, never half


def read_metadata(path: str | os.PathLike) -> dict:
    """The ``rosbag2_bagfile_information`` mapping of a bag's ``metadata.yaml``."""
    with open(Path(path) / "metadata.yaml", encoding="utf-8") as fh:
        return yaml.safe_load(fh)["rosbag2_bagfile_information"]


def _qos_yaml(qos: list[dict]) -> str:
    return yaml.safe_dump(qos, sort_keys=False, default_flow_style=False).strip() if qos else ""


# ---------------------------------------------------------------------------------------------
# Writer
# ---------------------------------------------------------------------------------------------


class _StagedOutput:
    """The output stream the ``mcap.Writer`` writes into: bytes are only staged in memory.

    ``tell()`` is the file offset the staged bytes will land at (``base`` + what is staged), so the
    offsets the writer puts into its chunk indexes are the file's. Nothing reaches the file until
    ``BagWriter`` commits the staged bytes with one positioned write (``_commit``); that is what lets
    a provisional tail be replaced without the writer ever knowing it was there.
    """

    def __init__(self) -> None:
        self.base = 0  # file offset of the first staged byte: where the data section ends in the file
        self.buf = bytearray()

    def write(self, data: bytes) -> int:
        self.buf += data
        return len(data)

    def tell(self) -> int:
        return self.base + len(self.buf)

    def flush(self) -> None:
        """The writer's ``flush()`` calls this; committing is ``BagWriter``'s job."""


@dataclasses.dataclass
class _OpenFile:
    info: FileInfo
    stream: Any  # the .mcap file, unbuffered (io.FileIO): a commit is one write() call
    writer: Writer
    staged: _StagedOutput
    opened_at: float
    size: int = 0  # bytes in the file after the last commit
    schema_ids: dict[str, int] = dataclasses.field(default_factory=dict)
    channel_ids: dict[str, int] = dataclasses.field(default_factory=dict)
    first_unflushed: float | None = None


class BagWriter:
    """Writes raw CDR messages into a new rosbag2/MCAP bag directory (see the module docstring).

    >>> bag = BagWriter("out_bag")
    >>> bag.add_topic("/joint_states", "sensor_msgs/msg/JointState")
    >>> bag.write("/joint_states", cdr_bytes, log_time_ns)
    >>> bag.close()

    Not thread-safe: call it from one thread (the recorder calls it from its executor only).
    Call ``poll()`` periodically (every ~``flush_period_s / 10``) so that flushes and splits also
    happen while no messages arrive.
    """

    def __init__(self, path: str | os.PathLike, *, flush_period_s: float = 1.0, split_period_s: float = 60.0,
                 compression: str = "zstd", chunk_size: int = 4 << 20, normalize_cdr: bool = True,
                 typestore=None, custom_data: dict[str, str] | None = None):
        self.path = Path(path)
        if not flush_period_s > 0:
            raise ValueError(f"flush_period_s must be > 0, got {flush_period_s}")
        if compression not in _COMPRESSION:
            raise ValueError(f"compression must be one of {sorted(_COMPRESSION)}, got {compression!r}")
        if self.path.exists():
            raise FileExistsError(f"bag output {str(self.path)!r} already exists; refusing to overwrite it "
                                  "(pass a directory that does not exist yet)")
        self.flush_period_s = float(flush_period_s)
        self.split_period_s = float(split_period_s)
        self._flush_after = FLUSH_FRACTION * self.flush_period_s
        self._compression = _COMPRESSION[compression]
        self._chunk_size = int(chunk_size)
        self._normalize = normalize_cdr
        self.types = MessageTypes(typestore)
        self._custom = dict(custom_data or {})
        self._topics: dict[str, TopicInfo] = {}
        self._files: list[FileInfo] = []
        self._cur: _OpenFile | None = None
        self._next_index = 0
        self.counts: dict[str, int] = {}
        self.trimmed: dict[str, int] = {}
        self.unparsed: dict[str, int] = {}
        self.closed = False
        self.path.mkdir(parents=True)
        self._dir_fd: int | None = None
        if fcntl is not None:  # "a recorder is alive here" for the whole recording, across splits
            self._dir_fd = os.open(self.path, os.O_RDONLY)
            fcntl.flock(self._dir_fd, fcntl.LOCK_EX)  # a new directory: only a probe can hold it, briefly
        self._open_file()
        self._save_metadata("recording")

    # -- topics -------------------------------------------------------------------------------
    def add_topic(self, topic: str, msgtype: str, offered_qos: list[dict] | None = None) -> None:
        """Declare a topic; raises ``UnknownMessageTypeError`` for a type without a definition."""
        if topic in self._topics:
            raise BagError(f"topic {topic!r} was already added")
        _, type_hash = self.types.definition(msgtype)
        self._topics[topic] = TopicInfo(topic, msgtype, type_hash, list(offered_qos or []))
        self.counts[topic] = 0

    def set_offered_qos(self, topic: str, offered_qos: list[dict]) -> None:
        """Set a topic's publisher QoS list; files opened later (and metadata.yaml) carry it."""
        self._topics[topic].offered_qos = list(offered_qos)

    # -- writing ------------------------------------------------------------------------------
    def write(self, topic: str, data: bytes, log_time_ns: int, publish_time_ns: int | None = None,
              sequence: int = 0) -> None:
        """Append one serialized message (CDR bytes incl. the 4-byte encapsulation header)."""
        if self.closed:
            raise BagError("bag is closed")
        try:
            tinfo = self._topics[topic]
        except KeyError:
            raise BagError(f"topic {topic!r} was not added to the bag") from None
        if self._normalize:
            data, status = self.types.normalize(tinfo.msgtype, data)
            if status != "ok":
                counter = self.trimmed if status == "trimmed" else self.unparsed
                counter[topic] = counter.get(topic, 0) + 1
        cur = self._cur or self._open_file()
        cid = cur.channel_ids.get(topic) or self._register_channel(cur, tinfo)
        log_time_ns = int(log_time_ns)
        now = time.monotonic()
        if cur.info.message_count == 0:
            cur.opened_at = now  # a file's split period runs from its first message
        cur.writer.add_message(channel_id=cid, log_time=log_time_ns, data=data,
                               publish_time=int(publish_time_ns if publish_time_ns is not None else log_time_ns),
                               sequence=int(sequence) & 0xFFFFFFFF)
        cur.info.add(topic, log_time_ns)
        self.counts[topic] += 1
        if cur.first_unflushed is None:
            cur.first_unflushed = now
        if cur.staged.buf:  # the writer closed a full chunk (chunk_size): commit it now, not in RAM for long
            self.flush()
        else:
            self.poll(now)

    def poll(self, now: float | None = None) -> None:
        """Flush (and split) if due. Cheap; call it from a timer."""
        cur = self._cur
        if cur is None or self.closed:
            return
        now = time.monotonic() if now is None else now
        if self.split_period_s > 0 and cur.info.message_count and now - cur.opened_at >= self.split_period_s:
            self._finish_file()
            self._save_metadata("recording")
        elif cur.first_unflushed is not None and now - cur.first_unflushed >= self._flush_after:
            self.flush()

    def flush(self) -> None:
        """Make everything written so far readable: chunk + provisional tail to the OS, then metadata.yaml.

        A no-op when nothing was written since the last flush.
        """
        cur = self._cur
        if cur is None or self.closed or (cur.first_unflushed is None and not cur.staged.buf):
            return
        self._commit(cur)
        cur.first_unflushed = None
        self._save_metadata("recording")

    def close(self) -> None:
        """Finish the current file and write the final ``metadata.yaml``. Idempotent."""
        if self.closed:
            return
        if self._cur is not None:
            self._finish_file()
        self.closed = True
        self._save_metadata("closed")
        if self._dir_fd is not None:
            os.close(self._dir_fd)  # releases the directory lock: the bag is no longer being recorded
            self._dir_fd = None

    def __enter__(self) -> BagWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def files(self) -> list[str]:
        """Files of the bag so far, the one being written included (as listed in metadata.yaml)."""
        return [f.path for f in self._listed()]

    # -- internals ----------------------------------------------------------------------------
    def _open_file(self) -> _OpenFile:
        name = f"{self.path.name}_{self._next_index}.mcap"
        self._next_index += 1
        stream = open(self.path / name, "xb", buffering=0)  # noqa: SIM115 - closed in _finish_file
        if fcntl is not None:  # held while the file is open; the kernel drops it when the process dies
            fcntl.flock(stream.fileno(), fcntl.LOCK_EX)  # a new file: only a probe can hold it, briefly
        staged = _StagedOutput()
        writer = Writer(staged, chunk_size=self._chunk_size, compression=self._compression)
        writer.start(profile="ros2", library="robostack.real.bag (mcap-python)")
        self._cur = _OpenFile(FileInfo(name), stream, writer, staged, time.monotonic())
        self._commit(self._cur)  # header + empty summary: a valid MCAP file from the start
        return self._cur

    def _commit(self, cur: _OpenFile, final: bool = False) -> None:
        """Write the staged chunk(s) and a fresh tail over the previous provisional tail.

        The tail (DataEnd, summary, footer, magic) comes from ``finish()`` on a deep copy of the
        writer that shares only the staging stream, so it describes every chunk written so far and
        the real writer stays open. Chunk and tail go to the file in one write at the offset where
        the data section ends; the staging stream then restarts at the new end of the data section
        (where this tail begins), so the next chunk lands over this tail. The new bytes are always
        longer than the tail they replace (one more chunk and one more chunk index), so the file
        never ends in stale bytes.
        """
        if final:
            cur.writer.finish()
            data_len = len(cur.staged.buf)
        else:
            cur.writer.flush()  # chunk + message indexes, into the staging buffer
            data_len = len(cur.staged.buf)
            copy.deepcopy(cur.writer, {id(cur.staged): cur.staged}).finish()
        try:
            cur.stream.seek(cur.staged.base)
            with memoryview(cur.staged.buf) as view:
                done = 0
                while done < len(view):  # one write() in practice: short only on disk full or a fatal signal
                    done += cur.stream.write(view[done:])
        except BaseException:  # e.g. disk full: keep the chunk staged for the next try, never a tail before it
            cur.staged.buf = cur.staged.buf[:data_len]  # a copy: the traceback may still hold a view
            raise
        end = cur.staged.base + len(cur.staged.buf)
        if end < cur.size:  # only if a final tail is shorter than the provisional one was
            cur.stream.truncate(end)
        cur.size = end
        cur.staged.base += data_len
        cur.staged.buf = bytearray()

    def _register_channel(self, cur: _OpenFile, tinfo: TopicInfo) -> int:
        sid = cur.schema_ids.get(tinfo.msgtype)
        if sid is None:
            text, _ = self.types.definition(tinfo.msgtype)
            sid = cur.writer.register_schema(name=tinfo.msgtype, encoding="ros2msg", data=text.encode())
            cur.schema_ids[tinfo.msgtype] = sid
        cid = cur.writer.register_channel(
            topic=tinfo.name, message_encoding="cdr", schema_id=sid,
            metadata={"offered_qos_profiles": _qos_yaml(tinfo.offered_qos), "topic_type_hash": tinfo.type_hash})
        cur.channel_ids[tinfo.name] = cid
        return cid

    def _finish_file(self) -> None:
        cur, self._cur = self._cur, None
        # Channels of topics without messages in this file still go into its summary.
        for tinfo in self._topics.values():
            if tinfo.name not in cur.channel_ids:
                self._register_channel(cur, tinfo)
        self._commit(cur, final=True)
        cur.stream.close()
        self._files.append(cur.info)

    def _listed(self) -> list[FileInfo]:
        """Finished files plus the one being written (its counts are the file's right after a commit,
        which is when metadata.yaml is written)."""
        return self._files if self._cur is None else [*self._files, self._cur.info]

    def _save_metadata(self, state: str) -> None:
        _write_metadata(self.path, self._listed(), list(self._topics.values()), {**self._custom, STATE_KEY: state})


# ---------------------------------------------------------------------------------------------
# Reading (for tests and tools)
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class BagMessage:
    topic: str
    msgtype: str
    log_time: int
    msg: Any


def read_messages(path: str | os.PathLike, backend: str = "rosbags", topics: list[str] | None = None
                  ) -> Iterator[BagMessage]:
    """Decoded messages of a bag, in log-time order per file, with either reader.

    ``backend="rosbags"``: ``rosbags.rosbag2.Reader`` + the Jazzy type store (message objects are
    rosbags dataclasses, arrays are numpy). ``backend="mcap"``: every file listed in
    ``metadata.yaml`` through ``mcap.reader.make_reader`` with ``mcap_ros2``'s decoder (dynamic
    message classes built from the schemas stored in the file).
    """
    bag = Path(path)
    if backend == "rosbags":
        from rosbags.rosbag2 import Reader

        store = default_typestore()
        with Reader(bag) as reader:
            conns = [c for c in reader.connections if topics is None or c.topic in topics]
            for conn, stamp, raw in reader.messages(connections=conns):
                yield BagMessage(conn.topic, conn.msgtype, stamp, store.deserialize_cdr(raw, conn.msgtype))
    elif backend == "mcap":
        from mcap_ros2.decoder import DecoderFactory

        for rel in read_metadata(bag)["relative_file_paths"]:
            with open(bag / rel, "rb") as fh:
                reader = make_reader(fh, decoder_factories=[DecoderFactory()])
                for schema, channel, message, decoded in reader.iter_decoded_messages(topics=topics):
                    yield BagMessage(channel.topic, schema.name if schema else "", message.log_time, decoded)
    else:
        raise ValueError(f"backend must be 'rosbags' or 'mcap', got {backend!r}")
