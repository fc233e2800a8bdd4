"""`jikimi sim`: one virtual board with the firmware on its flash, until interrupted."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path

from jikimi_host.paths import FIRMWARE_DIR
from jikimi_host.sim.board import VirtualBoard
from jikimi_host.sim.radio import VirtualRadio


def deploy_firmware(board: VirtualBoard) -> None:
    """The firmware package and the sim board's modules onto the flash, as `jikimi flash`
    puts them on a real board (sources here; the build's .mpy files on hardware)."""
    board.deploy_sim_board()
    for source in (FIRMWARE_DIR / "jikimi").glob("*.py"):
        board.deploy({f"lib/jikimi/{source.name}": source})
    main = FIRMWARE_DIR / "main.py"
    if main.exists():
        board.deploy({"main.py": main})


async def run_sim(script: Path | None, args: list[str], flash: Path | None, echo: bool,
                  config: dict | None = None) -> int:
    radio = VirtualRadio()
    board = VirtualBoard(flash, radio=radio)
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
        print(f"pty: {board.console.path}", flush=True)
        print(f"hci: {hci}", flush=True)
        print(f"ble address: {board.ble.identity_address}", flush=True)
        print(f"flash: {board.flash}", flush=True)
        print(f"console log: {board.console.log_path}", flush=True)
        print("running; Ctrl-C to stop", flush=True)
        shown = 0
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), 0.2)
            except TimeoutError:
                pass
            if echo:
                text = board.console.text()
                if len(text) > shown:
                    sys.stdout.write("".join(f"| {line}\n" for line in text[shown:].splitlines()))
                    sys.stdout.flush()
                    shown = len(text)
    finally:
        await board.stop()
        await radio.close()
    print("stopped", flush=True)
    return 0
