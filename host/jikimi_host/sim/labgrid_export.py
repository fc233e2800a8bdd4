"""A virtual board as a labgrid place, on the exporter's side (`jikimi sim --labgrid-place NAME
--labgrid-exporter FILE`): what a real bench has next to an ESP32, offered the way labgrid's
exporter takes it.

- console: the board's pty as a `RawSerialPort`; the exporter serves it with ser2net (RFC 2217)
  as a `NetworkSerialPort`, as it serves a USB serial adapter;
- power: a `NetworkPowerPort` of labgrid's `simplerest` model (its `NetworkPowerDriver` sends
  GET .../power/1 and .../power/0, and reads GET .../power), served here on loopback; on means the
  board boots (a power-on reset), off means its power is cut;
- radio: a `BumbleHCITransport` (labgrid has no resource for an HCI transport; its exporter passes
  an unknown resource through as it is): the Bumble transport of the radio the phone side uses
  (`jikimi_host.rig.labgrid_resources` registers the class for labgrid's own Python API).

Loopback only: the power switch and the virtual radio listen on 127.0.0.1, so the virtual place
serves clients on the exporter's own machine (CI); a real bench's exporter config (README, "A
shared bench with labgrid") names the host's address instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Awaitable, Callable

import yaml
from aiohttp import web

from jikimi_host.sim.board import BoardError, VirtualBoard

CONSOLE_BAUD = 115200  # what ser2net sets on the pty; a pty ignores it, a UART would not


class PowerSwitch:
    """labgrid's simplerest power protocol for one virtual board."""

    def __init__(self, board: VirtualBoard, power_on: Callable[[], Awaitable[object]]) -> None:
        self.board = board
        self._power_on = power_on
        self._runner: web.AppRunner | None = None
        self.url = ""  # the simplerest host template, once started

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        app = web.Application()
        app.router.add_get("/power", self._get)
        app.router.add_get("/power/{value}", self._set)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        bound = self._runner.addresses[0][1]
        self.url = f"http://{host}:{bound}/power/{{value}}"
        return self.url

    async def _get(self, request: web.Request) -> web.Response:
        return web.Response(text="1" if self.board.running or self.board.asleep else "0")

    async def _set(self, request: web.Request) -> web.Response:
        value = request.match_info["value"]
        if value not in ("0", "1"):
            return web.Response(status=400, text=f"power value must be 0 or 1, got {value!r}")
        try:
            if value == "0":
                await self.board.power_cut()
            elif not (self.board.running or self.board.asleep):
                await self._power_on()
        except (BoardError, OSError) as err:
            return web.Response(status=500, text=f"the virtual board could not switch {'on' if value == '1' else 'off'}: {err}")
        return web.Response(text=value)

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


def place_resources(console_path: str, power_url: str, hci_transport: str) -> dict[str, dict[str, object]]:
    """One exporter group: the resources of one place."""
    return {
        "RawSerialPort": {"port": console_path, "speed": CONSOLE_BAUD},
        "NetworkPowerPort": {"model": "simplerest", "host": power_url, "index": 0},
        "BumbleHCITransport": {"transport": hci_transport},
    }


def write_exporter_config(path: Path, groups: dict[str, dict[str, dict[str, object]]]) -> None:
    """labgrid-exporter's YAML: group name (the place's name by convention) -> resources."""
    path.write_text(yaml.safe_dump(groups, sort_keys=False))
