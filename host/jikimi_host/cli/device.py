"""`jikimi flash`, `provision`, `monitor`, `battery-life`: put the firmware and a config on a real
board (or the virtual board's pty) with mpremote, follow its structured log, and estimate its
battery life.

Exit codes: 0 done; 1 a failure on the way (build, no REPL, verify); 2 bad arguments (no such
port, unknown board, invalid config, another board on the device without --force).
Logic lives in jikimi_host.device; this module parses and prints.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn

from jikimi_host.cli.argtypes import number_in, timeout_s
from jikimi_host.device.boards import board_dir, heap_warning, known_boards
from jikimi_host.device.flash import FlashProgress, flash_image, write_micropython
from jikimi_host.device.image import ImageFile, built_image
from jikimi_host.device.provision import config_bytes, device_config, generate_passkey, passkey_label, write_config
from jikimi_host.device.session import (DEFAULT_TIMEOUT_S, DeviceSession, check_board_matches, check_port,
                                        wait_for_repl)
from jikimi_host.errors import UsageError


def _stdout() -> Console:
    # Made per call, not at import: tests (and callers) may have replaced sys.stdout.
    return Console(file=sys.stdout, soft_wrap=True, highlight=False)


class RichFlashProgress(FlashProgress):
    """One bar over the bytes to copy, on stderr; gone when done (the summary stays)."""

    def __init__(self) -> None:
        self.progress = Progress(TextColumn("{task.description:<32}"), BarColumn(), DownloadColumn(),
                                 console=Console(stderr=True), transient=True)
        self.task = None
        self.done_before: dict[str, int] = {}

    def start(self, files: list[ImageFile]) -> None:
        self.progress.start()
        self.task = self.progress.add_task("copying", total=sum(f.size for f in files) or 1)

    def advance(self, file: ImageFile, written: int) -> None:
        before = self.done_before.get(file.device_path, 0)
        self.done_before[file.device_path] = written
        self.progress.update(self.task, advance=written - before, description=file.device_path)

    def done(self) -> None:
        self.progress.stop()


def _read_config_file(path: Path, board: str) -> dict:
    from jikimi import config as cfg

    try:
        data = cfg.read(str(path))
    except cfg.ConfigError as err:
        raise UsageError(err.errors[0]) from None
    _, errors = cfg.validate(data, boards=known_boards())
    if errors:
        raise UsageError(f"{path} is not valid:\n" + "\n".join(f"  {e}" for e in errors))
    if data.get("board") != board:
        raise UsageError(f"{path}: board is {data.get('board')!r}, but --board is {board!r}")
    return data


def cmd_flash(args: argparse.Namespace) -> int:
    out = _stdout()
    board_dir(args.board)  # unknown board: named, with the known ones
    extra = {}  # the files given are checked first: what the user typed, before any port
    if args.config is not None:
        extra["config.json"] = config_bytes(_read_config_file(args.config, args.board))
    if args.micropython_bin is not None and not args.micropython_bin.is_file():
        raise UsageError(f"no such MicroPython firmware file: {args.micropython_bin}")
    port = check_port(args.port)
    with built_image(args.board) as image:  # built before the chip is touched: a build error costs nothing
        out.print(f"built the {args.board} image: {len(image.files)} files, {image.total_bytes} bytes")
        warning = heap_warning(args.board)
        if warning is not None:
            print(warning, file=sys.stderr, flush=True)
        if args.micropython_bin is not None:
            write_micropython(port, args.board, args.micropython_bin)
            session = wait_for_repl(port, max(args.timeout, 20.0))
        else:
            session = DeviceSession(port, timeout_s=args.timeout)
        with session:
            info = session.info
            out.print(f"{port}: MicroPython on {info.platform}, board "
                      f"{info.board or 'none yet'}"
                      + (" (its app was running: stopped it)" if info.app_was_running else ""))
            report = flash_image(session, image, extra, RichFlashProgress(), force=args.force,
                                 verify=not args.no_verify)
            for file in report.copied:
                out.print(f"  copied {file.device_path} ({file.size} bytes)")
            for path in report.removed:
                out.print(f"  removed {path} (stale: it would shadow the image)")
            checked = "" if args.no_verify else "; verified by sha256"
            out.print(f"flashed {args.board} to {port}: {len(report.copied)} file(s) copied "
                      f"({report.copied_bytes} bytes), {len(report.unchanged)} unchanged, "
                      f"{len(report.removed)} removed{checked}")
            if not args.no_reset:
                session.reset()
                out.print("reset: the board is booting")
    return 0


def cmd_provision(args: argparse.Namespace) -> int:
    out = _stdout()
    roles = [r.strip() for r in args.roles.split(",") if r.strip()]
    passkey = args.passkey if args.passkey is not None else generate_passkey()
    if args.board is not None:
        board_dir(args.board)
    # Everything the user typed is validated before the port is opened: opening it stops
    # the running app. Without --board, a stand-in board until the device says which.
    stand_in = args.board or known_boards()[0]
    config = device_config(stand_in, passkey, args.name, roles, args.set)
    port = check_port(args.port)
    with DeviceSession(port, timeout_s=args.timeout) as session:
        if args.board is None:
            if session.info.board is None:
                raise UsageError(f"no board.py on {port}: flash the firmware first "
                                 f"(jikimi flash --board NAME) or pass --board")
            config = device_config(session.info.board, passkey, args.name, roles, args.set)
        else:
            check_board_matches(session, args.board, args.force)
        write_config(session, config)
        if not args.no_reset:
            session.reset()
    label = passkey_label(args.name or config["board"], passkey)
    out.print(f"wrote config.json to {port} (board {config['board']}, roles {','.join(config['roles'])})")
    out.print(label)  # the one place the passkey is shown: it goes on the device's label
    if args.qr:
        import segno

        segno.make(label, error="m").terminal(out=sys.stdout, compact=True)
    if not args.no_reset:
        out.print("reset: the board is booting with its new config")
    return 0


def cmd_monitor(args: argparse.Namespace) -> int:
    from jikimi_host.device.monitor import run_monitor

    return run_monitor(check_port(args.port), as_json=args.json, raw=args.raw)


def cmd_battery_life(args: argparse.Namespace) -> int:
    import json

    from jikimi import config as device_config
    from jikimi_host.device.battery_life import Usage, estimate

    config = None
    if args.config is not None:
        try:
            config = device_config.load(str(args.config))
        except OSError as err:
            raise UsageError(f"cannot read {args.config}: {err.strerror}") from None
        except device_config.ConfigError as err:
            # load()'s own messages (cannot read, not JSON, not UTF-8) name the file already
            raise UsageError("\n".join(message if message.startswith(f"{args.config}: ") else f"{args.config}: {message}"
                                       for message in err.errors)) from None
    usage = Usage(presses_per_day=args.presses_per_day, alarms_per_month=args.alarms_per_month)
    result = estimate(args.board, args.capacity_mah, config, usage)
    if args.json:
        print(json.dumps(result.as_dict()))
        return 0
    print(f"{result.board}, {result.capacity_mah:g} mAh: about {result.days:.0f} days "
          f"({result.days / 30.4:.1f} months) at an average {result.average_ua:.0f} uA")
    for label, value in (("deep sleep (or always awake)", result.sleep_ua),
                         ("heartbeat wake-ups", result.heartbeat_ua),
                         ("button presses", result.presses_ua), ("alarms", result.alarms_ua),
                         ("self-discharge", result.self_discharge_ua)):
        print(f"  {label:<30} {value:9.1f} uA")
    print("Assumptions: firmware/POWER.md")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    port_help = "serial port: a device path (/dev/ttyUSB0), rfc2217://host:port, or a pty"
    timeout_help = f"seconds to wait for the board's REPL (default: {DEFAULT_TIMEOUT_S:g})"

    flash = sub.add_parser("flash", help="build the firmware and copy what changed onto a board (mpremote)")
    flash.add_argument("--port", help=port_help)
    flash.add_argument("--board", required=True, help=f"board folder: {', '.join(known_boards())}")
    flash.add_argument("--config", type=Path, help="also write this config.json (validated first)")
    flash.add_argument("--micropython-bin", type=Path, metavar="FILE",
                       help="first erase the chip and write this MicroPython firmware with esptool")
    flash.add_argument("--no-verify", action="store_true", help="skip hashing the files after copying")
    flash.add_argument("--no-reset", action="store_true", help="leave the board at its REPL afterwards")
    flash.add_argument("--force", action="store_true", help="replace a different board's firmware")
    flash.add_argument("--timeout", type=timeout_s, default=DEFAULT_TIMEOUT_S, help=timeout_help)
    flash.set_defaults(run=cmd_flash)

    provision = sub.add_parser("provision", help="write a device's config.json (passkey, name, roles)")
    provision.add_argument("--port", help=port_help)
    provision.add_argument("--name", default="", help="the device's name (on its label)")
    provision.add_argument("--roles", default="panic", help="comma-separated: panic, door, pull_pin (default: panic)")
    provision.add_argument("--passkey", help="6 digits (default: a random one, printed on the label line)")
    provision.add_argument("--board", help="board folder (default: the board.py on the device)")
    provision.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                           help="any other config field, e.g. --set gestures.hold_ms=3000 (repeatable)")
    provision.add_argument("--qr", action="store_true", help="also print the label as a QR code")
    provision.add_argument("--no-reset", action="store_true", help="do not reset the board afterwards")
    provision.add_argument("--force", action="store_true", help="write even if the device holds another board")
    provision.add_argument("--timeout", type=timeout_s, default=DEFAULT_TIMEOUT_S, help=timeout_help)
    provision.set_defaults(run=cmd_provision)

    monitor = sub.add_parser("monitor", help="follow a board's console and its structured log")
    monitor.add_argument("--port", help=port_help)
    mode = monitor.add_mutually_exclusive_group()
    mode.add_argument("--json", action="store_true", help="only the log records, one JSON object per line")
    mode.add_argument("--raw", action="store_true", help="every console line as it is")
    monitor.set_defaults(run=cmd_monitor)

    life = sub.add_parser("battery-life", help="estimate days per charge for a board and config")
    life.add_argument("--board", default="esp32_devkitc", help="board folder (default: esp32_devkitc)")
    life.add_argument("--capacity-mah", type=number_in(0, 1e6, above=True), default=1000.0,
                      help="battery capacity (default: 1000)")
    life.add_argument("--config", type=Path, help="the device's config.json (default: the defaults)")
    life.add_argument("--presses-per-day", type=number_in(0, 86400), default=5.0,
                      help="non-alarm presses (default: 5)")
    life.add_argument("--alarms-per-month", type=number_in(0, 10000), default=1.0, help="alarms (default: 1)")
    life.add_argument("--json", action="store_true", help="print the estimate as JSON")
    life.set_defaults(run=cmd_battery_life)
