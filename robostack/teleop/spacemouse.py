"""A 3Dconnexion SpaceMouse over HID (hidapi) as a teleop device: its reports parsed, its six axes mapped to the
TCP's motion in the task frame, its two buttons to the gripper and the episode events."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from robostack.teleop.devices import DEFAULT_SPEED, MAX_READS_PER_POLL, ArmTeleop, TeleopError
from robostack.teleop.mapping import apply_deadzone

SPACEMOUSE_VENDOR = 0x256F  # 3Dconnexion: every product is a 6-DoF device
LOGITECH_VENDOR = 0x046D  # older SpaceMice carry Logitech's vendor id; these are their product ids
LOGITECH_SPACEMOUSE_PRODUCTS = frozenset({0xC603, 0xC605, 0xC606, 0xC621, 0xC623, 0xC625, 0xC626, 0xC627, 0xC628,
                                          0xC629, 0xC62B, 0xC640})
SPACEMOUSE_FULL_SCALE = 350.0  # counts at full deflection (the cap reports about ±350)
SPACEMOUSE_DEADZONE = 0.1
# HID axes 0-2: translation x (right), y (toward the user), z (down); 3-5: rotation about them. The
# operator stands behind the robot, facing +x. Action component i <- sign * HID axis: x forward = -y,
# y left = -x, z up = -z, and the same turn for rotations (rx = -ry, ry = -rx, yaw counter-clockwise = -rz).
SPACEMOUSE_AXES = ((1, -1.0), (0, -1.0), (2, -1.0), (4, -1.0), (3, -1.0), (5, -1.0))
SPACEMOUSE_LEFT, SPACEMOUSE_RIGHT = 0b01, 0b10  # bits of the buttons report
SPACEMOUSE_HELP = ("push/pull/lift and tilt/twist the cap to move and turn the TCP | left button gripper, "
                   "right button start (idle) or success (recording), both buttons discard (recording) or quit "
                   "(idle)")


class SpaceMouseReport(NamedTuple):
    """What one HID report of a SpaceMouse says; a field is None when the report does not carry it."""

    translation: np.ndarray | None  # raw counts x, y, z (int16)
    rotation: np.ndarray | None  # raw counts rx, ry, rz
    buttons: int | None  # bitmask, bit 0 the left button


def parse_spacemouse_report(report: bytes | Sequence[int]) -> SpaceMouseReport:
    """Parse one HID input report: id 1 is the translation (three little-endian int16), or all six axes in 12
    bytes on newer devices; id 2 the rotation; id 3 the buttons (a little-endian bitmask). Anything else
    (battery level, a short report) carries nothing for us."""
    data = bytes(report)
    report_id, payload = (data[0], data[1:]) if data else (None, b"")
    if report_id == 1 and len(payload) >= 12:
        axes = np.frombuffer(payload[:12], dtype="<i2").astype(np.float64)
        return SpaceMouseReport(axes[:3], axes[3:], None)
    if report_id in (1, 2) and len(payload) >= 6:
        axes = np.frombuffer(payload[:6], dtype="<i2").astype(np.float64)
        return SpaceMouseReport(axes, None, None) if report_id == 1 else SpaceMouseReport(None, axes, None)
    if report_id == 3 and payload:
        return SpaceMouseReport(None, None, int.from_bytes(payload, "little"))
    return SpaceMouseReport(None, None, None)


def spacemouse_motion(counts: np.ndarray, deadzone: float = SPACEMOUSE_DEADZONE) -> np.ndarray:
    """The TCP motion (x, y, z, rx, ry, rz in [-1, 1], task frame) for the cap's raw counts (HID x, y, z, rx,
    ry, rz), by ``SPACEMOUSE_AXES``."""
    normalized = apply_deadzone(np.asarray(counts, dtype=np.float64) / SPACEMOUSE_FULL_SCALE, deadzone)
    return np.array([sign * normalized[axis] for axis, sign in SPACEMOUSE_AXES])


def is_spacemouse(vendor_id: int, product_id: int) -> bool:
    return vendor_id == SPACEMOUSE_VENDOR or (vendor_id == LOGITECH_VENDOR
                                              and product_id in LOGITECH_SPACEMOUSE_PRODUCTS)


def open_spacemouse() -> Any:
    """The first SpaceMouse hidapi sees (its multi-axis controller interface), open for non-blocking reads."""
    try:
        import hid
    except ImportError:
        raise TeleopError("--device spacemouse needs the hidapi package: pip install hidapi (or pip install "
                          "'robostack[teleop]')") from None
    if not hasattr(hid, "device"):
        raise TeleopError(f"--device spacemouse: the 'hid' module at {hid.__file__} is not hidapi's "
                          "(pip uninstall hid, then pip install hidapi)")
    found = [info for info in hid.enumerate() if is_spacemouse(info["vendor_id"], info["product_id"])]
    if not found:
        raise TeleopError("--device spacemouse: no 3Dconnexion SpaceMouse found (HID vendor 0x256F, or a Logitech "
                          "0x046D SpaceMouse); plug one in, and on Linux check that this user may read its "
                          "/dev/hidraw* node (a udev rule)")
    found.sort(key=lambda info: (info.get("usage_page"), info.get("usage")) != (0x01, 0x08))  # multi-axis first
    device = hid.device()
    try:
        device.open_path(found[0]["path"])
    except OSError as exc:
        name = found[0].get("product_string") or "the SpaceMouse"
        raise TeleopError(f"--device spacemouse: cannot open {name} ({exc}); on Linux this user needs read "
                          "access to its /dev/hidraw* node (a udev rule)") from None
    device.set_nonblocking(1)
    return device


class SpaceMouseTeleop(ArmTeleop):
    """A 3Dconnexion SpaceMouse over HID (hidapi): six axes move and turn the TCP.

    It has two buttons, so a button acts when every button is up again, by what was pressed: the left alone
    toggles the gripper; the right alone starts an episode, or ends the one recording as a success; both
    together discard the one recording, or quit when none is.

    ``device``: an HID device already open, anything with hidapi's ``read(size)`` (a report's bytes, empty
    when none waits) and ``close()``; the caller keeps it. None: ``connect`` finds and opens a SpaceMouse."""

    help = SPACEMOUSE_HELP

    def __init__(self, env: Any, device: Any = None, speed: float = DEFAULT_SPEED,
                 deadzone: float = SPACEMOUSE_DEADZONE):
        super().__init__(env, speed)
        self.device = device
        self.deadzone = deadzone
        self.counts = np.zeros(6)  # the latest raw counts, HID x, y, z, rx, ry, rz
        self._own_device = device is None
        self._pressed = 0  # every button pressed since all were last up

    def connect(self) -> None:
        if self.device is None:
            self.device = open_spacemouse()

    def disconnect(self) -> None:
        if self._own_device and self.device is not None:
            self.device.close()
            self.device = None

    def poll(self) -> None:
        for _ in range(MAX_READS_PER_POLL):  # every report that waits, never blocking
            try:
                report = self.device.read(64)
            except OSError as exc:
                raise TeleopError(f"--device spacemouse: reading the SpaceMouse failed ({exc}); was it "
                                  "unplugged?") from None
            if not report:
                break
            parsed = parse_spacemouse_report(report)
            if parsed.translation is not None:
                self.counts[:3] = parsed.translation
            if parsed.rotation is not None:
                self.counts[3:] = parsed.rotation
            if parsed.buttons is not None:
                self._take_buttons(parsed.buttons)
        self.motion = spacemouse_motion(self.counts, self.deadzone)

    def _take_buttons(self, held: int) -> None:
        self._pressed |= held & (SPACEMOUSE_LEFT | SPACEMOUSE_RIGHT)
        if held or not self._pressed:
            return
        clicked, self._pressed = self._pressed, 0
        if clicked == SPACEMOUSE_LEFT:
            self.toggle_gripper()
        elif clicked == SPACEMOUSE_RIGHT:
            self._events.append("success" if self.recording else "start")
        else:
            self._events.append("discard" if self.recording else "quit")
