"""`jikimi sim`: one virtual board with the firmware on its flash, until interrupted."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path

from jikimi_host.device.image import source_layout
from jikimi_host.sim.board import SIM_BOARD, VirtualBoard
from jikimi_host.sim.labgrid_export import PowerSwitch, place_resources, write_exporter_config
from jikimi_host.sim.radio import VirtualRadio


def deploy_firmware(board: VirtualBoard) -> None:
    """The firmware and the sim board's modules onto the flash, where `jikimi flash` puts them
    on a real board (jikimi_host.device.image: sources here, the build's .mpy files there)."""
    board.deploy(source_layout(SIM_BOARD))


async def run_sim(script: Path | None, args: list[str], flash: Path | None, echo: bool,
                  config: dict | None = None, door_config: dict | None = None,
                  labgrid_place: str | None = None, labgrid_exporter: Path | None = None) -> int:
    """A virtual board (and with `door_config` a virtual door alarm beside it, on the same
    radio) until SIGINT/SIGTERM; prints what a user connects to. With `labgrid_place`, each
    board is also offered as a labgrid place (sim/labgrid_export.py): its power switch is
    served and `labgrid_exporter` gets the exporter config (the door alarm's place is
    `<name>-door`)."""
    radio = VirtualRadio()
    board = VirtualBoard(flash, radio=radio)
    door = None
    switches: list[PowerSwitch] = []
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        deploy_firmware(board)
        if script is not None:
            board.deploy({"main.py": script})
        if config is not None:
            board.deploy({"config.json": json.dumps(config)})
        hci = await radio.serve_hci()
        entry = "main.py" if (board.flash / "main.py").exists() else None
        await board.start(entry, args)
        boards = [("", board)]
        if door_config is not None:
            door = VirtualBoard(board.flash.parent / f"{board.flash.name}-door", radio=radio)
            deploy_firmware(door)
            door.deploy({"config.json": json.dumps(door_config)})
            await door.start()
            boards.append(("door ", door))
        for label, each in boards:
            print(f"{label}pty: {each.console.path}", flush=True)
        print(f"hci: {hci}", flush=True)
        if labgrid_place is not None and labgrid_exporter is not None:
            groups = {}
            power_on = {id(board): lambda: board.start(entry, args), id(door): lambda: door.start()}
            for label, each in boards:
                switch = PowerSwitch(each, power_on[id(each)])
                switches.append(switch)
                await switch.start()
                name = labgrid_place + ("-door" if label else "")
                groups[name] = place_resources(each.console.path, switch.url, hci)
                print(f"{label}power: {switch.url}", flush=True)
            write_exporter_config(labgrid_exporter, groups)
            print(f"labgrid exporter config: {labgrid_exporter} (place{'s' if len(groups) > 1 else ''} "
                  f"{', '.join(groups)})", flush=True)
        for label, each in boards:
            print(f"{label}ble address: {each.ble.identity_address}", flush=True)
            print(f"{label}flash: {each.flash}", flush=True)
            print(f"{label}console log: {each.console.log_path}", flush=True)
        print("running; Ctrl-C to stop", flush=True)
        shown = {id(each): 0 for _, each in boards}
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), 0.2)
            except TimeoutError:
                pass
            if echo:
                for label, each in boards:
                    text = each.console.text()
                    if len(text) > shown[id(each)]:
                        prefix = f"{label.strip() or 'bell'}| " if door is not None else "| "
                        sys.stdout.write("".join(f"{prefix}{line}\n" for line in text[shown[id(each)]:].splitlines()))
                        sys.stdout.flush()
                        shown[id(each)] = len(text)
    finally:
        for switch in switches:
            await switch.close()
        await board.stop()
        if door is not None:
            await door.stop()
        await radio.close()
    print("stopped", flush=True)
    return 0
