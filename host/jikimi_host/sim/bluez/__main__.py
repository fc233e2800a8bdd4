"""`python -m jikimi_host.sim.bluez`: the fake BlueZ as its own process, like bluetoothd; prints
`ready` once it owns org.bluez and the controller is powered, exits cleanly on SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
from pathlib import Path

from jikimi_host.sim.bluez.fake import FakeBlueZ


async def serve(bus: str, transport: str, bonds: Path) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    bluez = FakeBlueZ(bus, transport, bonds)
    try:
        await bluez.start()
        print("ready", flush=True)
        await stop.wait()
    finally:
        await bluez.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m jikimi_host.sim.bluez",
                                     description="A fake BlueZ (org.bluez on D-Bus) over a Bumble host stack, for CI.")
    parser.add_argument("--bus", default=os.environ.get("DBUS_SYSTEM_BUS_ADDRESS"),
                        help="the D-Bus address to own org.bluez on (default: $DBUS_SYSTEM_BUS_ADDRESS)")
    parser.add_argument("--transport", required=True, help="Bumble HCI transport, e.g. tcp-client:127.0.0.1:PORT")
    parser.add_argument("--bonds", required=True, type=Path, help="the bond store (JSON), kept across restarts")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    if not args.bus:
        parser.error("--bus is required when DBUS_SYSTEM_BUS_ADDRESS is not set")
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    # JIKIMI_BLUEZ_DEBUG=bumble.smp,bumble.device: those loggers at DEBUG, to see a rare failure
    for name in filter(None, os.environ.get("JIKIMI_BLUEZ_DEBUG", "").split(",")):
        logging.getLogger(name.strip()).setLevel(logging.DEBUG)
    asyncio.run(serve(args.bus, args.transport, args.bonds))


if __name__ == "__main__":
    main()
