"""The virtual radio: one Bumble LocalLink that every virtual board and phone is on.

- Boards attach a controller per boot (jikimi_host.sim.ble).
- A phone in this process gets a Bumble Device on the link directly (`phone_device`).
- A phone or relay in another process opens an HCI transport the way it would open a USB
  dongle: `serve_hci()` listens on a TCP port (H4 framing) and returns the transport name to
  give Bumble, e.g. "tcp-client:127.0.0.1:40123". Each client gets a fresh controller on the
  link (a dongle plugged in); when the client goes away (the relay was killed), its controller
  leaves the air and its peers see a supervision timeout, as with a phone that died.
"""

from __future__ import annotations

import asyncio
import socket

from bumble import hci, ll
from bumble.controller import Controller
from bumble.device import Device, DeviceConfiguration
from bumble.host import Host
from bumble.link import LocalLink
from bumble.transport.common import AsyncPipeSink, StreamPacketSource

POWER_LOSS_REASON = hci.HCI_CONNECTION_TIMEOUT_ERROR  # what a peer sees when a board dies


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class RadioLink(LocalLink):
    """Bumble's LocalLink, plus two things a real radio does: a central whose CONNECT_IND
    reaches no advertiser (the peripheral stopped advertising a moment before, e.g. to change
    its data) sees the connection fail to be established (0x3E) instead of hanging half-open;
    and a controller taken off the link (a board without power) sends nothing any more."""

    def send_advertising_pdu(self, sender_controller: Controller, packet: ll.AdvertisingPdu) -> None:
        if sender_controller not in self.controllers:
            # A board that lost power is off the air: a late HCI command from its old host
            # (an advertising restart in flight at the power cut) must not make it a ghost.
            return
        super().send_advertising_pdu(sender_controller, packet)
        if isinstance(packet, ll.ConnectInd):
            # runs after the deliveries that super() queued
            asyncio.get_running_loop().call_soon(self._check_connect, sender_controller, packet)

    def _check_connect(self, central: Controller, packet: ll.ConnectInd) -> None:
        for controller in self.controllers:
            accepted = controller.le_connections.get(packet.initiator_address)
            if controller is not central and accepted is not None and accepted.self_address == packet.advertiser_address:
                return
        connection = central.le_connections.pop(packet.advertiser_address, None)
        if connection is not None:
            central.send_hci_packet(hci.HCI_Disconnection_Complete_Event(
                status=hci.HCI_SUCCESS, connection_handle=connection.handle,
                reason=hci.HCI_CONNECTION_FAILED_TO_BE_ESTABLISHED_ERROR))


class VirtualRadio:
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

    def attach(self, name: str, public_address: hci.Address | None = None) -> Controller:
        return Controller(name, link=self.link, public_address=public_address)

    def detach(self, controller: Controller) -> None:
        """Take a controller off the air at once (power loss): stop advertising, and every
        peer sees its connection drop with a supervision timeout."""
        controller.le_legacy_advertiser.stop()
        for advertising_set in controller.advertising_sets.values():
            if advertising_set.timer_handle is not None:
                advertising_set.timer_handle.cancel()
            advertising_set.enabled = False
        for connection in list(controller.le_connections.values()):
            try:
                connection.send_ll_control_pdu(ll.TerminateInd(POWER_LOSS_REASON))
            except Exception:  # the peer is gone too
                pass
        controller.le_connections.clear()
        if controller in self.link.controllers:
            self.link.remove_controller(controller)

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
                self.detach(controller)
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
