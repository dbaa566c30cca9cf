"""Recovering and inspecting a bag whose recorder did not close it (``robostack data recover``, ``robostack data
convert``): which files are whole, which are live, which were cut mid-write, and rebuilding those from their
complete chunks, as ``ros2 bag reindex`` does for rosbag2 (the behaviour is described in ``robostack.real.bag``).
"""
from __future__ import annotations

import dataclasses
import io
import os
import re
import zlib
from pathlib import Path

import yaml
from mcap.opcode import Opcode
from mcap.reader import make_reader
from mcap.records import Channel, Footer, Header, Message, Schema
from mcap.stream_reader import StreamReader
from mcap.writer import CompressionType, Writer

from robostack.real.bag import STATE_KEY, BagError, FileInfo, TopicInfo, _write_metadata, fcntl, read_metadata

_MAGIC = b"\x89MCAP0\r\n"  # MCAP spec: first and last 8 bytes of a file
_FOOTER_SIZE = 1 + 8 + 8 + 8 + 4  # MCAP spec: opcode, record length, summary_start, summary_offset_start, CRC
_DATA_END_SIZE = 1 + 8 + 4  # MCAP spec: opcode, record length, data section CRC


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


def _tail_intact(fh) -> bool:
    """Whether the summary section + footer at the end of ``fh`` are intact (their CRC matches).

    mcap-python's readers do not check the footer's ``summary_crc``, and a tail that a torn write
    partly overwrote can still end in the old footer + magic, whose summary offset then points into
    new chunk bytes. The footer is read with mcap's ``StreamReader``; the CRC covers the bytes from
    ``summary_start`` up to the footer's CRC field (MCAP spec, Footer record). Files without a
    summary CRC pass on the footer alone.
    """
    size = fh.seek(0, os.SEEK_END)
    if size < len(_MAGIC) * 2 + _FOOTER_SIZE:
        return False
    fh.seek(size - len(_MAGIC) - _FOOTER_SIZE)
    end = fh.read()
    if end[-len(_MAGIC):] != _MAGIC or end[0] != Opcode.FOOTER:  # checked first: garbage could claim any length
        return False
    footer = next(StreamReader(io.BytesIO(end[:_FOOTER_SIZE]), skip_magic=True).records)
    if footer.summary_crc == 0 or footer.summary_start == 0:  # no CRC written / no summary to check
        return True
    crc_end = size - len(_MAGIC) - 4
    if not len(_MAGIC) + _DATA_END_SIZE <= footer.summary_start <= crc_end:
        return False
    # The data section ends in a DataEnd record right before the summary: a write torn just after the
    # old tail's first bytes leaves the old summary intact but not that record.
    fh.seek(footer.summary_start - _DATA_END_SIZE)
    data_end = fh.read(_DATA_END_SIZE)
    if data_end[0] != Opcode.DATA_END or int.from_bytes(data_end[1:9], "little") != _DATA_END_SIZE - 9:
        return False
    return zlib.crc32(fh.read(crc_end - footer.summary_start)) == footer.summary_crc


def _summary_info(path: Path, rel: str) -> tuple[FileInfo, list[Channel], dict[int, Schema]] | None:
    """Stats of a complete MCAP file from its summary; None if it has no valid footer/summary."""
    try:
        with open(path, "rb") as fh:
            if not _tail_intact(fh):
                return None
            fh.seek(0)
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


def _locked_by_other(path: Path) -> bool:
    """Whether another process holds the ``flock`` of ``path`` (a file or the bag directory).

    Probes with a shared lock that is dropped at once; the writer takes its exclusive locks
    blocking, so a probe that overlaps its start only delays it.
    """
    if fcntl is None:
        return False
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # gone meanwhile, or a directory this platform cannot open: not held by a writer we know
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _mcap_names(bag: Path) -> list[str]:
    return sorted((p.name for p in bag.glob("*.mcap") if p.is_file()), key=lambda n: _file_order(bag, n))


def is_live(path: str | os.PathLike) -> bool:
    """Whether a live ``BagWriter`` (a running recorder) still holds the lock of the bag or one of its files."""
    bag = Path(path)
    return _locked_by_other(bag) or any(_locked_by_other(bag / n) for n in _mcap_names(bag))


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

    Rebuilds every ``.mcap`` file of the bag directory that lacks a valid footer/summary (or
    whose summary CRC does not match) from its complete chunks, then rewrites ``metadata.yaml``
    listing all files (in split order) with counts and times taken from the files themselves;
    files that end in a valid footer are not touched. Topic QoS and type hashes come from the
    old ``metadata.yaml`` and the MCAP channel metadata. The state becomes ``recovered`` (a
    cleanly closed bag stays ``closed``). Safe to run more than once.
    """
    bag = Path(path)
    if not bag.is_dir():
        raise BagError(f"bag directory {str(bag)!r} does not exist")
    if _locked_by_other(bag):
        raise BagError(f"{bag} is still being written by a live recorder (it holds the bag's lock); stop the "
                       "recorder first")
    names = _mcap_names(bag)
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
    if rebuilt or custom.get(STATE_KEY) != "closed":  # a cleanly closed bag stays "closed"
        custom[STATE_KEY] = "recovered"
    _write_metadata(bag, files, list(topics.values()), custom)
    return RecoveryReport([f.path for f in files], rebuilt, sum(f.message_count for f in files))


@dataclasses.dataclass
class BagStatus:
    """What a tool should know before reading a bag (``inspect_bag``)."""

    path: Path
    state: str  # custom_data robostack.bag_state: recording, closed, recovered ('' if not a robostack bag)
    live: bool  # a recorder still holds the bag's lock: it is being recorded right now
    message_count: int = 0  # messages the listed files hold (what the readers will return)
    damaged: dict[str, str] = dataclasses.field(default_factory=dict)  # file -> why it cannot be read as is
    unlisted: list[str] = dataclasses.field(default_factory=list)  # files with messages metadata.yaml lacks

    @property
    def unclean(self) -> bool:
        """The recorder did not close the bag (killed, or still running) and it was not recovered."""
        return self.state == "recording"

    def refusal(self, recover_command: str) -> str | None:
        """One line saying why the bag must not be read as it is, or None.

        ``recover_command`` is how the caller's user runs ``recover()`` (e.g. ``robostack data recover BAG``).
        """
        if self.live:
            return f"{self.path} is still being recorded (a live recorder holds its lock); stop the recorder first"
        if self.damaged:
            what = "; ".join(f"{name} {why}" for name, why in self.damaged.items())
            where = f"{self.path} was not closed cleanly:" if self.unclean else f"{self.path}:"
            return f"{where} {what}; run `{recover_command}` to rebuild the bag from its complete chunks"
        if self.unlisted:
            return (f"{self.path}: metadata.yaml does not list {', '.join(self.unlisted)}, which hold messages; "
                    f"run `{recover_command}` to list them")
        return None

    @property
    def note(self) -> str | None:
        """One line for a readable bag whose recorder did not close it, or None."""
        if self.unclean and not (self.live or self.damaged or self.unlisted):
            return (f"{self.path} was not closed cleanly (recorder killed?); reading the {self.message_count} "
                    "messages flushed before that")
        return None


def inspect_bag(path: str | os.PathLike) -> BagStatus:
    """Check a bag before reading it: is a recorder still writing it, was it closed, can every file be read?

    Reads only locks, ``metadata.yaml`` and each file's footer and summary (milliseconds). Raises
    ``BagError`` if ``path`` is not a bag directory with a readable ``metadata.yaml``.
    """
    bag = Path(path)
    try:
        meta = read_metadata(bag)
        listed = list(meta["relative_file_paths"])
    except (OSError, KeyError, TypeError, yaml.YAMLError) as exc:
        raise BagError(f"{bag}: not a rosbag2 bag with a readable metadata.yaml ({exc})") from None
    state = str((meta.get("custom_data") or {}).get(STATE_KEY, ""))
    status = BagStatus(bag, state, is_live(bag))
    if status.live:
        return status
    names = _mcap_names(bag)
    for rel in listed:
        if not (bag / rel).is_file():
            status.damaged[rel] = "is missing"
    for name in names:
        found = _summary_info(bag / name, name)
        if found is None:
            status.damaged[name] = "ends without a valid footer/summary (cut during a write?)"
        elif name in listed:
            status.message_count += found[0].message_count
        elif found[0].message_count:
            status.unlisted.append(name)
    return status
