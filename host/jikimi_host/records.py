"""A record: one JSON object read from a line of output (the device's log, its test console's
replies, the relay's `--json` lines). Named once so that every reader means the same thing."""

from __future__ import annotations

from typing import Any

Record = dict[str, Any]
