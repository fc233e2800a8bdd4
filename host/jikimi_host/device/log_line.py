"""The firmware's structured log line, `J {json}` (firmware/jikimi/app.py `log`): one record per
event, `t` ms since boot, `k` its kind, `msg`, and fields. Read by `jikimi monitor`, the test
console's client and the rig."""

from __future__ import annotations

import json

from jikimi_host.records import Record

LOG_PREFIX = "J {"


def parse_log_line(line: str) -> Record | None:
    """The record of a structured log line, or None for any other line (and for a J line cut
    short by a reset)."""
    text = line.strip()
    if not text.startswith(LOG_PREFIX):
        return None
    try:
        record = json.loads(text[2:])
    except ValueError:
        return None
    return record if isinstance(record, dict) else None
