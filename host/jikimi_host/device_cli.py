"""`jikimi flash`, `jikimi provision`, `jikimi monitor`: put the firmware and a config on a real
board (or the virtual board's pty) with mpremote, and follow its structured log.

Exit codes: 0 done; 1 a failure on the way (build, no REPL, verify); 2 bad arguments (no such
port, unknown board, invalid config, another board on the device without --force).
Logic lives in jikimi_host.deploy and jikimi_host.monitor; this module parses and prints.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn

from jikimi_host.argtypes import timeout_s
from jikimi_host.deploy import (
    DEFAULT_TIMEOUT_S,
    DeployError,
    DeviceSession,
    FlashProgress,
    ImageFile,
    board_dir,
    built_image,
    check_board_matches,
    check_port,
    config_bytes,
    device_config,
    flash_image,
    generate_passkey,
    heap_warning,
    known_boards,
    passkey_label,
    wait_for_repl,
    write_config,
    write_micropython,
)


def _stdout() -> Console:
    # Made per call, not at import: tests (and callers) may have replaced sys.stdout.
    return Console(file=sys.stdout, soft_wrap=True, highlight=False)


def _fail(err: DeployError) -> int:
    print(f"error: {err.message}", file=sys.stderr)
    return err.exit_code


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
        raise DeployError(err.errors[0], 2) from None
    _, errors = cfg.validate(data, boards=known_boards())
    if errors:
        raise DeployError(f"{path} is not valid:\n" + "\n".join(f"  {e}" for e in errors), 2)
    if data.get("board") != board:
        raise DeployError(f"{path}: board is {data.get('board')!r}, but --board is {board!r}", 2)
    return data


def cmd_flash(args: argparse.Namespace) -> int:
    out = _stdout()
    try:
        board_dir(args.board)  # unknown board: named, with the known ones
        extra = {}  # the files given are checked first: what the user typed, before any port
        if args.config is not None:
            extra["config.json"] = config_bytes(_read_config_file(args.config, args.board))
        if args.micropython_bin is not None and not args.micropython_bin.is_file():
            raise DeployError(f"no such MicroPython firmware file: {args.micropython_bin}", 2)
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
    except DeployError as err:
        return _fail(err)
    return 0


def cmd_provision(args: argparse.Namespace) -> int:
    out = _stdout()
    roles = [r.strip() for r in args.roles.split(",") if r.strip()]
    passkey = args.passkey if args.passkey is not None else generate_passkey()
    try:
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
                    raise DeployError(f"no board.py on {port}: flash the firmware first "
                                      f"(jikimi flash --board NAME) or pass --board", 2)
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
    except DeployError as err:
        return _fail(err)
    return 0


def cmd_monitor(args: argparse.Namespace) -> int:
    from jikimi_host.monitor import run_monitor

    try:
        port = check_port(args.port)
        return run_monitor(port, as_json=args.json, raw=args.raw)
    except DeployError as err:  # MonitorError too
        return _fail(err)


def add_device_commands(sub: argparse._SubParsersAction) -> None:
    """Register the device commands on the `jikimi` parser."""
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
