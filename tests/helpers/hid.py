"""HID input reports as a SpaceMouse sends them."""
from __future__ import annotations

import struct


def hid_report(report_id: int, *values: int) -> bytes:
    return bytes([report_id]) + struct.pack(f"<{len(values)}h", *values)
