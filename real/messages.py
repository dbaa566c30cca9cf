"""ROS message types named by their type string and fields named by dotted paths, both from YAML.

A robot whose driver speaks other messages (PX4's, Crazyswarm2's, a vendor's) is wired up by naming its
types and fields in ``configs/deploy/<robot>.yaml``; no code changes. Types load at run time:
``"sensor_msgs/msg/JointState"`` -> ``sensor_msgs.msg.JointState``.
"""
from __future__ import annotations

import functools
import importlib
from typing import Any, Sequence

import numpy as np


class MessageConfigError(ValueError):
    """A message type or field named in a deploy config does not exist."""


@functools.cache  # drivers build messages by type name every cycle: one import lookup per type, not per message
def message_type(type_string: str) -> type:
    """The message class for ``pkg/msg/Name`` (``pkg/Name`` is accepted too)."""
    parts = type_string.strip().split("/")
    if len(parts) == 2:
        parts = [parts[0], "msg", parts[1]]
    if len(parts) != 3 or not all(parts) or parts[1] not in ("msg", "srv"):
        raise MessageConfigError(f"message type {type_string!r} is not of the form package/msg/Name")
    try:
        module = importlib.import_module(f"{parts[0]}.{parts[1]}")
    except ImportError:
        raise MessageConfigError(f"message type {type_string!r}: package {parts[0]!r} is not installed") from None
    try:
        return getattr(module, parts[2])
    except AttributeError:
        raise MessageConfigError(f"message type {type_string!r}: {parts[0]}.{parts[1]} has no {parts[2]!r}") from None


def check_field(msg_type: type, path: str) -> None:
    """Raise ``MessageConfigError`` unless ``path`` (dotted) names a field of ``msg_type``."""
    node: Any = msg_type()
    walked = []
    for part in path.split("."):
        walked.append(part)
        if not hasattr(type(node), "get_fields_and_field_types") or part not in node.get_fields_and_field_types():
            fields = sorted(node.get_fields_and_field_types()) if hasattr(node, "get_fields_and_field_types") else []
            raise MessageConfigError(f"{msg_type.__module__}.{msg_type.__name__} has no field "
                                     f"{'.'.join(walked)!r} (fields there: {fields})")
        node = getattr(node, part)


def get_field(msg: Any, path: str) -> Any:
    for part in path.split("."):
        msg = getattr(msg, part)
    return msg


def set_field(msg: Any, path: str, value: Any) -> None:
    *head, last = path.split(".")
    for part in head:
        msg = getattr(msg, part)
    setattr(msg, last, value)


def read_vector(msg: Any, path: str, keys: Sequence[str] = ("x", "y", "z")) -> np.ndarray:
    """A geometry_msgs Vector3 / Point / Quaternion-like field as an array, in ``keys`` order."""
    node = get_field(msg, path)
    return np.array([float(getattr(node, k)) for k in keys], dtype=np.float64)


def write_vector(msg: Any, path: str, values: Sequence[float], keys: Sequence[str] = ("x", "y", "z")) -> None:
    node = get_field(msg, path)
    for k, v in zip(keys, values):
        setattr(node, k, float(v))


ACTION_ROWS = "rows"  # the first dimension's label of an action message (``action_message``)


def action_message(rows: np.ndarray) -> Any:
    """A ``std_msgs/Float64MultiArray`` holding ``rows`` [R, n] of actions in a task's action space, its layout saying
    so (``rows`` then ``action``), as ``policy/action`` and ``teleop/action`` carry them."""
    import std_msgs.msg

    rows = np.atleast_2d(np.asarray(rows, dtype=np.float64))
    msg = std_msgs.msg.Float64MultiArray()
    r, n = rows.shape
    msg.layout.dim = [std_msgs.msg.MultiArrayDimension(label=ACTION_ROWS, size=r, stride=r * n),
                      std_msgs.msg.MultiArrayDimension(label="action", size=n, stride=n)]
    msg.data = rows.reshape(-1).tolist()
    return msg


def action_rows(msg: Any) -> np.ndarray:
    """The rows [R, n] of an ``action_message`` (from a live message or one read from a bag); ``ValueError`` if its
    layout does not say two dimensions that its data fills."""
    dims = list(msg.layout.dim)
    data = np.asarray(msg.data, dtype=np.float64)
    if len(dims) != 2 or dims[0].label != ACTION_ROWS or int(dims[0].size) * int(dims[1].size) != data.size:
        raise ValueError(f"not an action message: layout {[(d.label, d.size) for d in dims]}, {data.size} values")
    return data.reshape(int(dims[0].size), int(dims[1].size))
