"""`jikimi flash`, `jikimi provision`, `jikimi monitor`: put the firmware and a config on a real
board (or the virtual board's pty) with mpremote, and follow its structured log."""

from __future__ import annotations

import argparse


def add_device_commands(sub: argparse._SubParsersAction) -> None:
    """Register the device commands on the `jikimi` parser."""
