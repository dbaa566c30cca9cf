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
``StreamReader``; nothing is hand-encoded. The one place below a public API is the CDR check
(last section): it calls the functions rosbags generates per type (``Msgdef.getsize_cdr_to_ros1``
/ ``deserialize_cdr_be``) because the public ``Typestore.deserialize_cdr`` raises on exactly
the trailing bytes it has to measure.

Crash safety
------------
Three pieces, so that a bag is readable right after a SIGKILL *and* loses at most the last
``flush_period_s`` once recovered:

* Flush: at the latest ``0.75 * flush_period_s`` after the first unflushed message (checked on
  every ``write()`` and on every ``poll()``, which the recorder calls >= ten times per flush
  period), the chunk in progress is finalized (``mcap.Writer.flush()``: chunk + message
  indexes) and the file object is flushed to the OS. A SIGKILL of the process therefore loses
  only messages received in the last ``0.85 * flush_period_s`` plus the time a callback waits
  (``os.fsync`` is not called: a power cut can lose what the kernel has not written yet).
* Split: ``split_period_s`` (default 60 s; 0 = never) after a file's first message, the file is
  finished (summary, footer), the next one starts with the next message, and ``metadata.yaml``
  is rewritten atomically (write to a temp file, ``os.replace``). While recording,
  ``metadata.yaml`` lists *only finished files*, so after a crash the bag opens with
  both ``rosbags`` and ``mcap`` straight away, just without the file that was being written.
  Its ``custom_data`` has ``robostack.bag_state: recording`` (``closed`` after a clean close,
  ``recovered`` after ``recover()``), so a crashed bag can be recognised.
* ``recover(path)`` (or ``python -m robostack.real.bag recover PATH``) then does what
  ``ros2 bag reindex`` does for rosbag2: every ``.mcap`` file in the directory without a valid
  footer/summary is rebuilt from its complete, CRC-checked chunks (a partly written trailing
  chunk is dropped), written next to it and moved over it with ``os.replace``, and
  ``metadata.yaml`` is regenerated from all files. It is idempotent; on a cleanly closed bag it
  only rewrites ``metadata.yaml``. It needs the whole directory (the unlisted
  ``<bag>_<n>.mcap`` files are found by name), the ``mcap`` package and chunk CRCs (this
  writer always sets them). Messages that were still in the unflushed chunk are gone, by
  design. The writer holds an ``flock`` on the file it is writing, so ``recover()`` refuses
  (``BagError``) to touch the file of a recorder that is still alive.

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

import argparse
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
from mcap.records import Channel, Footer, Header, Message, Schema
from mcap.stream_reader import StreamReader
from mcap.writer import CompressionType, Writer
from rosbags.typesys import Stores, get_types_from_msg, get_typestore
from rosbags.typesys.base import Nodetype

try:
    import fcntl
except ImportError:  # not POSIX: no protection against recovering a bag that is still being written
    fcntl = None

if not hasattr(Writer, "flush"):  # mcap < 1.6: no way to finish a chunk without finishing the file
    raise ImportError("robostack.real.bag needs mcap>=1.6 (mcap.Writer.flush)")

ROSBAG2_VERSION = 9  # rosbag2 metadata version of ROS 2 Jazzy (QoS profiles as a YAML list)
ROS_DISTRO = "jazzy"
STATE_KEY = "robostack.bag_state"
FLUSH_FRACTION = 0.75  # flush when the oldest unflushed message is this fraction of the period old
_COMPRESSION = {"zstd": CompressionType.ZSTD, "lz4": CompressionType.LZ4, "none": CompressionType.NONE}
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
    text = yaml.safe_dump(_metadata_dict(files, topics, custom), sort_keys=False, default_flow_style=False)
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


@dataclasses.dataclass
class _OpenFile:
    info: FileInfo
    stream: Any
    writer: Writer
    opened_at: float
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
        self._save_metadata("recording")
        self._open_file()

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
        """Finish the chunk in progress and hand everything written so far to the OS."""
        cur = self._cur
        if cur is not None:
            cur.writer.flush()
            cur.first_unflushed = None

    def close(self) -> None:
        """Finish the current file and write the final ``metadata.yaml``. Idempotent."""
        if self.closed:
            return
        if self._cur is not None:
            self._finish_file()
        self.closed = True
        self._save_metadata("closed")

    def __enter__(self) -> BagWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def files(self) -> list[str]:
        """Finished files (the ones listed in metadata.yaml)."""
        return [f.path for f in self._files]

    # -- internals ----------------------------------------------------------------------------
    def _open_file(self) -> _OpenFile:
        name = f"{self.path.name}_{self._next_index}.mcap"
        self._next_index += 1
        stream = open(self.path / name, "xb")  # noqa: SIM115 - closed in _finish_file
        if fcntl is not None:  # held while the file is open; the kernel drops it when the process dies
            fcntl.flock(stream.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        writer = Writer(stream, chunk_size=self._chunk_size, compression=self._compression)
        writer.start(profile="ros2", library="robostack.real.bag (mcap-python)")
        stream.flush()
        self._cur = _OpenFile(FileInfo(name), stream, writer, time.monotonic())
        return self._cur

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
        cur.writer.finish()
        cur.stream.close()
        self._files.append(cur.info)

    def _save_metadata(self, state: str) -> None:
        _write_metadata(self.path, self._files, list(self._topics.values()), {**self._custom, STATE_KEY: state})


# ---------------------------------------------------------------------------------------------
# Recovery
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class RecoveredFile:
    path: str
    messages: int
    stopped_at: str  # why reading stopped: the error at the truncation point


@dataclasses.dataclass
class RecoveryReport:
    files: list[str]  # all files now listed in metadata.yaml
    rebuilt: list[RecoveredFile]
    message_count: int


def _file_order(bag: Path, name: str) -> tuple:
    m = re.fullmatch(re.escape(bag.name) + r"_(\d+)\.mcap", name)
    return (0, int(m.group(1)), name) if m else (1, 0, name)


def _summary_info(path: Path, rel: str) -> tuple[FileInfo, list[Channel], dict[int, Schema]] | None:
    """Stats of a complete MCAP file from its summary; None if it has no valid footer/summary."""
    try:
        with open(path, "rb") as fh:
            summary = make_reader(fh).get_summary()
    except Exception:  # noqa: BLE001 - no footer / bad summary: needs a rebuild
        return None
    if summary is None or summary.statistics is None:
        return None
    st = summary.statistics
    info = FileInfo(rel)
    info.message_count = st.message_count
    if st.message_count:
        info.start_ns, info.end_ns = st.message_start_time, st.message_end_time
    for cid, n in st.channel_message_counts.items():
        if cid in summary.channels:
            topic = summary.channels[cid].topic
            info.topic_counts[topic] = info.topic_counts.get(topic, 0) + n
    return info, list(summary.channels.values()), dict(summary.schemas)


def _lock(fh, path: Path) -> None:
    if fcntl is None:
        return
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise BagError(f"{path} is still being written by a live recorder (or recovered by another process); "
                       "stop it before recover()") from None


def _check_not_live(path: Path) -> None:
    with open(path, "rb") as fh:
        _lock(fh, path)


def _rebuild(path: Path, rel: str) -> tuple[FileInfo, list[Channel], dict[int, Schema], str]:
    """Rewrite a truncated MCAP file from its complete chunks, like ``ros2 bag reindex``."""
    info = FileInfo(rel)
    channels: list[Channel] = []
    schemas: dict[int, Schema] = {}
    tmp = path.with_name(path.name + ".recovering")
    with open(path, "rb") as src:
        _lock(src, path)  # held while rebuilding: keeps a second recover() out
        with open(tmp, "wb") as dst:
            stopped = _copy_complete_records(src, dst, info, channels, schemas)
    os.replace(tmp, path)
    return info, channels, schemas, stopped


def _copy_complete_records(src, dst, info: FileInfo, channels: list[Channel], schemas: dict[int, Schema]) -> str:
    """Copy schemas, channels and messages of ``src`` up to the first unreadable record; returns why it stopped."""
    writer = Writer(dst, compression=CompressionType.ZSTD)
    started = False
    stopped = "end of file"
    schema_map: dict[int, int] = {}
    channel_map: dict[int, int] = {}
    channel_topics: dict[int, str] = {}
    try:
        # emit_chunks=False: a chunk's records come out only once the whole chunk has been read
        # and its CRC checked, so a half-written chunk yields nothing.
        for rec in StreamReader(src, skip_magic=False, validate_crcs=True).records:
            if isinstance(rec, Header):
                writer.start(profile=rec.profile or "ros2", library=rec.library or "robostack.real.bag")
                started = True
            elif isinstance(rec, Schema) and rec.id not in schema_map:
                schema_map[rec.id] = writer.register_schema(rec.name, rec.encoding, rec.data)
                schemas[schema_map[rec.id]] = rec
            elif isinstance(rec, Channel) and rec.id not in channel_map:
                channel_map[rec.id] = writer.register_channel(
                    rec.topic, rec.message_encoding, schema_map.get(rec.schema_id, 0), dict(rec.metadata))
                channel_topics[rec.id] = rec.topic
                channels.append(rec)
            elif isinstance(rec, Message) and rec.channel_id in channel_map:
                writer.add_message(channel_map[rec.channel_id], rec.log_time, rec.data, rec.publish_time,
                                   rec.sequence)
                info.add(channel_topics[rec.channel_id], rec.log_time)
            elif isinstance(rec, Footer):
                break
    except Exception as exc:  # noqa: BLE001 - the truncation point shows up as some read error
        detail = f"{type(exc).__module__}.{type(exc).__name__}" + (f": {exc}" if str(exc) else "")
        stopped = f"truncated or corrupt record ({detail})"
    if not started:
        writer.start(profile="ros2", library="robostack.real.bag")
    writer.finish()
    return stopped


def recover(path: str | os.PathLike) -> RecoveryReport:
    """Make a bag whose recorder died readable again, losing only its unflushed last chunk.

    Rebuilds every ``.mcap`` file of the bag directory that lacks a valid footer/summary from
    its complete chunks, then rewrites ``metadata.yaml`` listing all files (in split order)
    with counts and times taken from the files themselves. Topic QoS and type hashes come from
    the old ``metadata.yaml`` and the MCAP channel metadata. Safe to run more than once.
    """
    bag = Path(path)
    if not bag.is_dir():
        raise BagError(f"bag directory {str(bag)!r} does not exist")
    names = sorted((p.name for p in bag.glob("*.mcap") if p.is_file()), key=lambda n: _file_order(bag, n))
    for name in names:  # touch nothing while a recorder is still writing here
        _check_not_live(bag / name)
    for stale in [*bag.glob("*.recovering"), *bag.glob("metadata.yaml.tmp")]:  # from a process that died
        stale.unlink()
    try:
        old = read_metadata(bag)
    except (OSError, KeyError, TypeError, yaml.YAMLError):
        old = {}
    files: list[FileInfo] = []
    rebuilt: list[RecoveredFile] = []
    topics: dict[str, TopicInfo] = {}
    for entry in old.get("topics_with_message_count") or []:
        tm = entry["topic_metadata"]
        qos = tm.get("offered_qos_profiles") or []
        topics[tm["name"]] = TopicInfo(tm["name"], tm["type"], tm.get("type_description_hash", ""),
                                       yaml.safe_load(qos) if isinstance(qos, str) else list(qos))
    for name in names:
        found = _summary_info(bag / name, name)
        if found is None:
            info, channels, schemas, stopped = _rebuild(bag / name, name)
            rebuilt.append(RecoveredFile(name, info.message_count, stopped))
        else:
            info, channels, schemas = found
        files.append(info)
        for ch in channels:
            if ch.topic not in topics:
                schema = schemas.get(ch.schema_id)
                qos_text = ch.metadata.get("offered_qos_profiles", "")
                topics[ch.topic] = TopicInfo(ch.topic, schema.name if schema else "",
                                             ch.metadata.get("topic_type_hash", ""),
                                             (yaml.safe_load(qos_text) or []) if qos_text else [])
    custom = dict(old.get("custom_data") or {})
    custom[STATE_KEY] = "recovered"
    _write_metadata(bag, files, list(topics.values()), custom)
    return RecoveryReport([f.path for f in files], rebuilt, sum(f.message_count for f in files))


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


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m robostack.real.bag", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("recover", help="rebuild a bag whose recorder was killed (like ros2 bag reindex)")
    p.add_argument("bag")
    p = sub.add_parser("info", help="print counts per topic from metadata.yaml")
    p.add_argument("bag")
    args = parser.parse_args(argv)
    if args.cmd == "recover":
        report = recover(args.bag)
        for r in report.rebuilt:
            print(f"rebuilt {r.path}: {r.messages} messages kept (stopped at: {r.stopped_at})")
        print(f"{args.bag}: {len(report.files)} files, {report.message_count} messages")
    else:
        meta = read_metadata(args.bag)
        state = (meta.get("custom_data") or {}).get(STATE_KEY, "?")
        print(f"{args.bag}: {meta['message_count']} messages in {len(meta['relative_file_paths'])} files, "
              f"{meta['duration']['nanoseconds'] / 1e9:.3f} s, state {state}")
        for t in meta["topics_with_message_count"]:
            print(f"  {t['topic_metadata']['name']:<40} {t['topic_metadata']['type']:<40} {t['message_count']}")
    return 0


if __name__ == "__main__":
    sys.exit(_main())
