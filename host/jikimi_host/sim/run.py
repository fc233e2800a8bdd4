"""`jikimi sim`: a virtual bell (and a door alarm) with the firmware on its flash, until
interrupted, with a person's controls (sim/controls.py) on its standard input and on a control
socket, and what a phone or a relay in another process connects to printed at start."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from jikimi_host.device.image import source_layout
from jikimi_host.rig.relay import RelayProcess
from jikimi_host.sim.board import SIM_BOARD, VirtualBoard
from jikimi_host.sim.controls import Bench, BenchBoard, serve_lines
from jikimi_host.sim.hands import hold_button_through_power_up
from jikimi_host.sim.labgrid_export import PowerSwitch, place_resources, write_exporter_config
from jikimi_host.sim.radio import VirtualRadio
from jikimi_host.sim.ui.server import BenchUI

UNIX_PATH_MAX = 100  # sun_path is 108 bytes on Linux; keep clear of it


def deploy_firmware(board: VirtualBoard) -> None:
    """The firmware and the sim board's modules onto the flash, where `jikimi flash` puts them
    on a real board (jikimi_host.device.image: sources here, the build's .mpy files there)."""
    board.deploy(source_layout(SIM_BOARD))


@dataclass
class SimOptions:
    script: Path | None = None  # run as main.py instead of the firmware's
    args: list[str] = field(default_factory=list)  # the script's sys.argv[1:]
    flash: Path | None = None  # kept; None: a temporary folder
    echo: bool = True  # the device consoles on stdout
    config: dict | None = None  # the bell's config.json
    door_config: dict | None = None  # a door alarm beside it, on the same radio
    labgrid_place: str | None = None
    labgrid_exporter: Path | None = None
    pairing: bool = False  # power the bell up with its button held until its pairing window opens
    control: Path | None = None  # the control socket; None: beside the flash folder
    commands: bool = True  # read commands on stdin
    relay_config: Path | None = None  # also run `jikimi relay` with this config on the boards' radio
    ui: bool = False  # serve the bench page (sim/ui) on loopback
    ui_port: int = 0  # 0: any free port


def control_path(flash: Path, wanted: Path | None) -> Path:
    if wanted is not None:
        return wanted
    path = flash.parent / f"{flash.name}.control.sock"
    if len(str(path)) > UNIX_PATH_MAX:  # a deep temporary folder: a short one of its own
        path = Path(tempfile.mkdtemp(prefix="jikimi-sim-")) / "control.sock"
    return path


async def serve_stdin(bench: Bench) -> None:
    """Commands from standard input, answered in words on stdout, until it ends (then the
    boards run on: stdin may be /dev/null under a supervisor)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    try:
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    except ValueError:  # a regular file (`jikimi sim < commands.txt`): read without waiting
        reader.feed_data(sys.stdin.buffer.read())
        reader.feed_eof()
    except OSError:  # no stdin at all
        return

    async def write(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    await serve_lines(bench, reader, write, as_json=False)


async def run_sim(options: SimOptions) -> int:
    """A virtual board (and with `door_config` a virtual door alarm beside it, on the same
    radio) until SIGINT/SIGTERM; prints what a user connects to. With `labgrid_place`, each
    board is also offered as a labgrid place (sim/labgrid_export.py): its power switch is
    served and `labgrid_exporter` gets the exporter config (the door alarm's place is
    `<name>-door`)."""
    radio = VirtualRadio()
    board = VirtualBoard(options.flash, radio=radio)
    door = None
    switches: list[PowerSwitch] = []
    servers: list[asyncio.AbstractServer] = []
    tasks: list[asyncio.Task] = []
    socket_path: Path | None = None
    relay: RelayProcess | None = None
    ui: BenchUI | None = None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        deploy_firmware(board)
        if options.script is not None:
            board.deploy({"main.py": options.script})
        if options.config is not None:
            board.deploy({"config.json": json.dumps(options.config)})
        hci = await radio.serve_hci()
        main_script = "main.py" if (board.flash / "main.py").exists() else None

        async def bell_on() -> None:
            await board.start(main_script, options.args)

        if options.pairing:
            print("holding the bell's button through power-up (pairing)...", flush=True)
            await hold_button_through_power_up(board)
            print("bell: pairing window open", flush=True)
        else:
            await bell_on()
        boards = [("", board)]
        bench_boards = [BenchBoard("bell", board, bell_on, tuple((options.config or {}).get("roles", ["panic"])))]
        if options.door_config is not None:
            door = VirtualBoard(board.flash.parent / f"{board.flash.name}-door", radio=radio)
            deploy_firmware(door)
            door.deploy({"config.json": json.dumps(options.door_config)})
            await door.start()
            boards.append(("door ", door))
            bench_boards.append(BenchBoard("door", door, door.start, tuple(options.door_config.get("roles", ["door"]))))
        bench = Bench(bench_boards)
        for label, each in boards:
            print(f"{label}pty: {each.console.path}", flush=True)
        print(f"hci: {hci}", flush=True)
        if options.labgrid_place is not None and options.labgrid_exporter is not None:
            groups = {}
            for (label, each), bench_board in zip(boards, bench_boards):
                switch = PowerSwitch(each, bench_board.power_on)
                switches.append(switch)
                await switch.start()
                name = options.labgrid_place + ("-door" if label else "")
                groups[name] = place_resources(each.console.path, switch.url, hci)
                print(f"{label}power: {switch.url}", flush=True)
            write_exporter_config(options.labgrid_exporter, groups)
            print(f"labgrid exporter config: {options.labgrid_exporter} (place{'s' if len(groups) > 1 else ''} "
                  f"{', '.join(groups)})", flush=True)
        for label, each in boards:
            print(f"{label}ble address: {each.ble.identity_address}", flush=True)
            print(f"{label}flash: {each.flash}", flush=True)
            print(f"{label}console log: {each.console.log_path}", flush=True)
        if options.relay_config is not None:
            relay = await RelayProcess(options.relay_config, hci).start()
            print(f"relay: jikimi relay --config {options.relay_config} --transport {hci} (its texts below)", flush=True)
        if options.ui:
            names = device_names(options.relay_config, bench_boards)
            ui = BenchUI(bench, relay, options.ui_port, names)
            print(f"ui: {await ui.start()}", flush=True)
        socket_path = control_path(board.flash, options.control)
        servers.append(await serve_control_socket(bench, socket_path))
        print(f"control: {socket_path}", flush=True)
        if options.commands:
            tasks.append(asyncio.create_task(serve_stdin(bench)))
        where = "typed here and on the control socket" if options.commands else "on the control socket"
        print(f"commands: {where}, one per line (the socket answers each in JSON); `help` lists them", flush=True)
        print("running; Ctrl-C to stop", flush=True)
        shown = {id(each): 0 for _, each in boards}
        relay_shown = 0
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.2)
            if relay is not None:
                for record in relay.records[relay_shown:]:
                    if (line := relay_line(record)) is not None:
                        print(f"relay| {line}", flush=True)
                relay_shown = len(relay.records)
            if options.echo:
                for label, each in boards:
                    text = each.console.text()
                    if len(text) > shown[id(each)]:
                        prefix = f"{label.strip() or 'bell'}| " if door is not None else "| "
                        sys.stdout.write("".join(f"{prefix}{line}\n" for line in text[shown[id(each)]:].splitlines()))
                        sys.stdout.flush()
                        shown[id(each)] = len(text)
    finally:
        for task in tasks:
            task.cancel()
        if ui is not None:
            await ui.close()
        if relay is not None:
            await relay.stop()
        for server in servers:
            server.close()
            await server.wait_closed()
        if socket_path is not None:
            with contextlib.suppress(OSError):
                os.unlink(socket_path)
        for switch in switches:
            await switch.close()
        await board.stop()
        if door is not None:
            await door.stop()
        await radio.close()
    print("stopped", flush=True)
    return 0


def relay_line(record: dict) -> str | None:
    """A relay record worth a line in `jikimi sim`'s output: what was sent, links, events."""
    kind = record.get("kind")
    if kind in ("sms", "call"):
        return f"{kind.upper()} to {record['to']}: " + " / ".join(record["message"].splitlines())
    if kind in ("link", "cancel", "error", "ready", "output"):
        return str(record.get("text", kind))
    if kind == "event":
        return f"{record['device']}: {record['event']['type']}"
    return None


def device_names(relay_config: Path | None, boards: list[BenchBoard]) -> dict[str, str]:
    """Each board's name in the relay's config (by passkey), for the page's owner controls."""
    if relay_config is None:
        return {}
    from jikimi_host.relay.config import load

    by_passkey = {device.passkey: device.name for device in load(relay_config).devices}
    names = {}
    for entry in boards:
        try:
            passkey = json.loads((entry.board.flash / "config.json").read_text(encoding="utf-8")).get("passkey")
        except (OSError, ValueError, AttributeError):
            continue
        if passkey in by_passkey:
            names[entry.name] = by_passkey[passkey]
    return names


async def serve_control_socket(bench: Bench, path: Path) -> asyncio.AbstractServer:
    """The bench's commands on a Unix socket for scripts: a line in, a JSON answer out."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()  # a socket left by a sim that was killed

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async def write(text: str) -> None:
            writer.write(text.encode())
            await writer.drain()

        try:
            await serve_lines(bench, reader, write, as_json=True)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    return await asyncio.start_unix_server(client, path=str(path))
