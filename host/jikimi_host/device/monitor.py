"""`jikimi monitor`: follow a board's console and show its structured log.

The firmware prints one `J {json}` line per event (`t` ms since boot, `k` kind, `msg`, fields:
firmware/jikimi/app.py `log`). This shows each readable (time, kind, message, fields), or as
one JSON object per line (`--json`, for scripts), or every line untouched (`--raw`). Other
console lines (tracebacks, the REPL) are shown dimmed, or skipped with `--json`.

The port stays followed across board resets: a USB-serial adapter keeps its port, a chip's
native USB port disappears and comes back, a network port drops; the last two are reopened
until they answer again. Ctrl-C ends it (exit 0).
"""

from __future__ import annotations

import json
import sys
import time
from typing import Callable, TextIO

import serial
from rich.console import Console
from rich.text import Text

from jikimi_host.device.log_line import parse_log_line
from jikimi_host.errors import UsageError
from jikimi_host.records import Record

READ_TIMEOUT_S = 0.2
REOPEN_EVERY_S = 0.5


class MonitorError(UsageError):
    """The port cannot be followed (exit 2)."""


_KIND_STYLES = {"ready": "bold green", "boot": "green", "core": "cyan", "ble": "blue",
                "config_error": "bold red", "task_error": "bold red", "tc_error": "red"}


def format_record(record: Record) -> Text:
    """`  12.345  kind         message  key=value ...`"""
    t_ms = record.get("t")
    kind = str(record.get("k", "?"))
    line = Text()
    line.append(f"{t_ms / 1000:10.3f}  " if isinstance(t_ms, (int, float)) else f"{'?':>10}  ", "dim")
    line.append(f"{kind:<12} ", _KIND_STYLES.get(kind, "red" if "error" in kind else "magenta"))
    if "msg" in record:
        line.append(str(record["msg"]))
    for key, value in record.items():
        if key not in ("t", "k", "msg"):
            line.append(f"  {key}=", "dim")
            line.append(json.dumps(value))
    return line


class LinePrinter:
    """How each console line is shown, per output mode."""

    def __init__(self, out: TextIO, as_json: bool = False, raw: bool = False) -> None:
        self.out = out
        self.as_json = as_json
        self.raw = raw
        # soft_wrap: long log lines stay one line (a terminal wraps them, a pipe keeps them)
        self.console = Console(file=out, soft_wrap=True, highlight=False)

    def line(self, text: str) -> None:
        if self.raw:
            self.out.write(text + "\n")
            self.out.flush()
            return
        record = parse_log_line(text)
        if self.as_json:
            if record is not None:
                self.out.write(json.dumps(record) + "\n")
                self.out.flush()
        elif record is not None:
            self.console.print(format_record(record))
        elif text.strip():
            self.console.print(Text(text, style="dim"))


def open_port(port: str) -> serial.SerialBase:
    link = serial.serial_for_url(port, do_not_open=True, baudrate=115200, timeout=READ_TIMEOUT_S)
    # DTR and RTS low before opening: on ESP32 boards they drive EN and GPIO0 through the
    # auto-reset circuit, and watching a board must not reset it into its bootloader.
    link.dtr = False
    link.rts = False
    link.open()
    return link


def follow(port: str, printer: LinePrinter, status: Callable[[str], None],
           should_stop: Callable[[], bool] = lambda: False) -> None:
    """Print the console of `port` line by line until interrupted (or `should_stop()`).
    The first open must work (MonitorError); later losses of the port are retried."""
    try:
        link = open_port(port)
    except (serial.SerialException, OSError, ValueError) as err:
        raise MonitorError(f"cannot open {port}: {err}") from err
    status(f"monitoring {port}; Ctrl-C to exit")
    try:
        while not should_stop():
            _read_until_lost(link, printer, should_stop)
            if should_stop():
                break
            link.close()
            status(f"{port}: the port went away (board reset?); reopening")
            link = _reopen(port, should_stop)
            if link is None:
                break
            status(f"{port}: reopened")
    finally:
        if link is not None:
            link.close()


def _read_until_lost(link: serial.SerialBase, printer: LinePrinter,
                     should_stop: Callable[[], bool]) -> None:
    pending = b""
    while not should_stop():
        try:
            data = link.read(4096)
        except (serial.SerialException, OSError):
            if pending:
                printer.line(pending.decode(errors="replace").rstrip("\r"))
            return
        if not data:
            if pending and not printer.as_json:  # a prompt or a line without its end: show it
                printer.line(pending.decode(errors="replace").rstrip("\r"))
                pending = b""
            continue
        *lines, pending = (pending + data).split(b"\n")
        for line in lines:
            printer.line(line.decode(errors="replace").rstrip("\r"))


def _reopen(port: str, should_stop: Callable[[], bool]) -> serial.SerialBase | None:
    while not should_stop():
        try:
            return open_port(port)
        except (serial.SerialException, OSError, ValueError):
            time.sleep(REOPEN_EVERY_S)
    return None


def run_monitor(port: str, as_json: bool = False, raw: bool = False,
                out: TextIO | None = None) -> int:
    """The `jikimi monitor` command: 0 on Ctrl-C; MonitorError if the port cannot be opened."""
    printer = LinePrinter(out or sys.stdout, as_json=as_json, raw=raw)

    def status(message: str) -> None:  # to stderr: stdout is the log (and JSON with --json)
        print(message, file=sys.stderr, flush=True)

    try:
        follow(port, printer, status)
    except KeyboardInterrupt:
        status("stopped")
    return 0
