"""The `jikimi` command: each group of subcommands in a module of its own (firmware, sim, relay,
device); main() runs one and is the one place a JikimiError becomes its message on stderr and
its exit code (jikimi_host.errors)."""

from __future__ import annotations

import argparse
import sys

from jikimi_host.cli import device, firmware, relay, sim
from jikimi_host.errors import JikimiError


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="jikimi", description="Jikimi firmware and relay tools")
    sub = top.add_subparsers(dest="command", required=True)
    for group in (firmware, sim, relay, device):
        group.add_commands(sub)
    return top


def report(error: JikimiError) -> None:
    """`error: ` before each line of the message but its indented details."""
    for line in error.message.splitlines() or [""]:
        print(line if line[:1].isspace() else f"error: {line}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.run(args))
    except JikimiError as error:
        report(error)
        return error.exit_code

