"""The virtual radio: one Bumble LocalLink that every virtual board and phone is on.

- Boards attach a controller per boot (jikimi_host.sim.ble).
- A phone in this process gets a Bumble Device on the link directly (`phone_device`).
- A phone or relay in another process opens an HCI transport the way it would open a USB
  dongle: `serve_hci()` puts a controller on the link behind a Bumble `tcp-server` transport and
  returns the transport name to give Bumble, e.g. "tcp-client:127.0.0.1:40123".
"""

from __future__ import annotations

import socket

from bumble import hci, ll
from bumble.controller import Controller
from bumble.device import Device, DeviceConfiguration
from bumble.host import Host
from bumble.link import LocalLink
from bumble.transport import Transport, open_transport
from bumble.transport.common import AsyncPipeSink

POWER_LOSS_REASON = hci.HCI_CONNECTION_TIMEOUT_ERROR  # what a peer sees when a board dies


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class VirtualRadio:
    def __init__(self) -> None:
        self.link = LocalLink()
        self._transports: list[Transport] = []
        self._count = 0

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
        """A controller on the link behind an HCI TCP server; returns the transport name a
        Bumble app in another process opens to use it."""
        port = port or _free_port()
        transport = await open_transport(f"tcp-server:127.0.0.1:{port}")
        self._transports.append(transport)
        Controller(f"hci-{port}", host_source=transport.source, host_sink=transport.sink, link=self.link)
        return f"tcp-client:127.0.0.1:{port}"

    async def close(self) -> None:
        for transport in self._transports:
            await transport.close()
        self._transports.clear()
