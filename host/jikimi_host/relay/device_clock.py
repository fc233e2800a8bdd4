"""The device clock as the protocol counts it: event `time` fields and SET_TIME are seconds since
2000-01-01 00:00:00 UTC (MicroPython's epoch, PROTOCOL.md §4); this is where the host converts."""

from __future__ import annotations

DEVICE_EPOCH_UNIX = 946684800  # 2000-01-01 UTC in Unix seconds
