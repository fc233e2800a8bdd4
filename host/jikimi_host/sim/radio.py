"""The virtual radio: one link (`jikimi_host.sim.controller.RadioLink`) that every virtual
board and phone is on.

- A board gets a controller per boot (`plug_board`, through jikimi_host.sim.chip): MicroPython's
  own `bluetooth` module (NimBLE) in the board process drives it over a pty, its HCI UART.
- A phone in this process gets a Bumble Device on the link directly (`phone_device`).
- A phone or relay in another process opens an HCI transport the way it would open a USB
  dongle: `serve_hci()` listens on a TCP port (H4 framing) and returns the transport name to
  give Bumble, e.g. "tcp-client:127.0.0.1:40123". Each client gets a fresh controller on the
  link (a dongle plugged in); when the client goes away (the relay was killed), its controller
  leaves the air and its peers see a supervision timeout, as with a phone that died.

`python -m jikimi_host.sim.radio --boards N` runs a radio in a process of its own with N board
ptys and the HCI server (MicroPython's two-device BLE tests run on it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import socket
import sys
from dataclasses import dataclass

from bumble import hci
from bumble.controller import Controller
from bumble.device import Device, DeviceConfiguration
from bumble.host import Host
from bumble.transport.common import AsyncPipeSink, StreamPacketSource

from jikimi_host.sim.controller import POWER_LOSS_REASON, BoardController, HciPty, RadioLink

__all__ = ["POWER_LOSS_REASON", "BoardRadio", "RadioLink", "VirtualRadio"]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class BoardRadio:
    """A board's radio chip: a controller on the link whose HCI UART is `pty`."""

    controller: BoardController
    pty: HciPty

    @property
    def path(self) -> str:
        return self.pty.path


class VirtualRadio:
    """The link, the phones and boards on it, and the HCI server for other processes."""

    def __init__(self) -> None:
        self.link = RadioLink()
        self._servers: list[asyncio.AbstractServer] = []
        self._clients: set[asyncio.Task] = set()
        self._count = 0
        self._boards = 0

    def next_unique_id(self) -> bytes:
        """A MAC for the next virtual board on this radio: 24:6F:28:00:00:01, :02, ..."""
        self._boards += 1
        return b"\x24\x6f\x28\x00\x00" + bytes([self._boards])

    def plug_board(self, public_address: str, name: str | None = None) -> BoardRadio:
        """A radio chip for a board running MicroPython's own `bluetooth` module (NimBLE):
        give the board `MICROPYBTUART=<BoardRadio.path>`; `unplug_board` takes it off the air."""
        pty = HciPty()
        controller = BoardController(name or f"board-{public_address}", self.link, public_address,
                                     host_source=pty.source, host_sink=pty)
        return BoardRadio(controller, pty)

    def unplug_board(self, board: BoardRadio) -> None:
        self.link.detach(board.controller)
        board.pty.close()

    def phone_device(self, name: str = "phone", address: str | None = None) -> Device:
        """A Bumble Device on the link, in this process (power it on before use)."""
        self._count += 1
        address = address or f"C0:00:00:00:00:{self._count:02X}"
        controller = Controller(f"{name}-controller", link=self.link)
        config = DeviceConfiguration(name=name, address=hci.Address(address))
        config.classic_enabled = False
        return Device(config=config, host=Host(controller, AsyncPipeSink(controller)))

    async def serve_hci(self, port: int | None = None) -> str:
        """An HCI TCP server whose clients each get a controller on the link; returns the
        transport name a Bumble app in another process opens to use it."""
        port = port or _free_port()

        async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self._clients.add(asyncio.current_task())
            self._count += 1
            source = StreamPacketSource()
            controller = Controller(f"hci-{port}-{self._count}", host_source=source,
                                    host_sink=_WriterSink(writer), link=self.link)
            try:
                while data := await reader.read(65536):
                    source.data_received(data)
            except ConnectionError:
                pass
            finally:
                self.link.detach(controller)
                writer.close()
                self._clients.discard(asyncio.current_task())

        self._servers.append(await asyncio.start_server(client, "127.0.0.1", port))
        return f"tcp-client:127.0.0.1:{port}"

    async def unplug_hci(self) -> None:
        """Drop every HCI client's connection, as if its USB controller were pulled out (the
        server keeps listening: plugging in again is connecting again)."""
        for task in list(self._clients):
            task.cancel()
        await asyncio.gather(*self._clients, return_exceptions=True)

    async def close(self) -> None:
        for server in self._servers:
            server.close()
        for task in list(self._clients):
            task.cancel()
        await asyncio.gather(*self._clients, return_exceptions=True)
        self._servers.clear()


class _WriterSink:
    """HCI packets from a controller to its host over TCP (H4: the packet type byte first)."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer

    def on_packet(self, packet: bytes) -> None:
        if not self.writer.is_closing():
            self.writer.write(packet)


async def _serve(boards: int, hci_port: int | None) -> None:
    """`python -m jikimi_host.sim.radio`: a radio in a process of its own (module docstring)."""
    radio = VirtualRadio()
    plugged = [radio.plug_board(f"24:6F:28:00:01:{number + 1:02X}") for number in range(boards)]
    transport = await radio.serve_hci(hci_port)
    print(json.dumps({"boards": [board.path for board in plugged], "hci": transport}), flush=True)
    stop = asyncio.get_running_loop().create_future()
    for signum in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(signum, lambda: stop.done() or stop.set_result(None))
    try:
        await stop
    finally:
        for board in plugged:
            radio.unplug_board(board)
        await radio.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jikimi_host.sim.radio", description=(
        "A virtual radio in its own process: BOARDS HCI ptys for MicroPython Unix-port processes "
        "(MICROPYBTUART) and an HCI TCP server for Bumble apps; prints them as JSON, runs until "
        "SIGTERM or Ctrl-C."))
    parser.add_argument("--boards", type=int, default=2, help="how many board ptys (default 2)")
    parser.add_argument("--hci-port", type=int, default=None, help="TCP port of the HCI server (default: a free one)")
    args = parser.parse_args(argv)
    if args.boards < 0:
        parser.error("--boards must be 0 or more")
    try:
        asyncio.run(_serve(args.boards, args.hci_port))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
