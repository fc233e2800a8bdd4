"""The fake BlueZ itself: a Bumble host stack on the virtual radio's HCI transport, and org.bluez
on D-Bus made of its parts (agents, adapter, devices, links, GATT)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bumble import hci
from bumble.device import Device
from bumble.keys import JsonKeyStore
from bumble.transport import open_transport
from dbus_fast import NameFlag
from dbus_fast.aio import MessageBus
from dbus_fast.constants import RequestNameReply

from jikimi_host.sim.bluez.adapter import ADAPTER_ADDRESS, Adapter
from jikimi_host.sim.bluez.agent import Agents
from jikimi_host.sim.bluez.dbus_api import AGENT_MANAGER, BLUEZ, BLUEZ_PATH
from jikimi_host.sim.bluez.device import Devices
from jikimi_host.sim.bluez.gatt import Gatt
from jikimi_host.sim.bluez.link import Links
from jikimi_host.sim.bluez.objects import ObjectTree
from jikimi_host.sim.bluez.tasks import Tasks


class FakeBlueZ:
    """org.bluez on the bus at `bus_address`, over the HCI transport `transport`, with its bonds
    kept in the JSON key store `bonds` (like /var/lib/bluetooth)."""

    def __init__(self, bus_address: str, transport: str, bonds: Path) -> None:
        self.bus_address = bus_address
        self.transport_name = transport
        self.bonds = Path(bonds)
        self.bus: MessageBus | None = None
        self.device: Device | None = None  # the controller, once started
        self.keystore = JsonKeyStore(ADAPTER_ADDRESS, str(self.bonds))
        self.tasks = Tasks()
        self.tree = ObjectTree(self.tasks)
        self._transport: Any = None

    async def start(self) -> None:
        """Power the controller on, load the bonds, export the objects, own `org.bluez`."""
        self._transport = await open_transport(self.transport_name)
        device = Device.with_hci("bluez", hci.Address(ADAPTER_ADDRESS), self._transport.source,
                                 self._transport.sink)
        device.keystore = self.keystore
        self.device = device
        # the parts register their methods and their interest in clients leaving, in this order
        devices = Devices(self.tree, discovering=lambda: adapter.discovering())
        adapter = Adapter(self.tree, self.tasks, device, devices)
        agents = Agents(self.tree)
        gatt = Gatt(self.tree, self.tasks)
        Links(self.tree, self.tasks, device, self.keystore, devices, adapter, agents, gatt)
        device.pairing_config_factory = agents.pairing_config
        await device.power_on()

        self.bus = await self.tree.connect(self.bus_address)
        self.tree.export(BLUEZ_PATH, {AGENT_MANAGER: {}})
        adapter.export()
        for name, keys in await self.keystore.get_all():  # bonded devices, as from /var/lib/bluetooth
            address_type = keys.address_type if keys.address_type is not None else hci.Address.RANDOM_DEVICE_ADDRESS
            devices.add(hci.Address(name, address_type), bonded=True)
        reply = await self.bus.request_name(BLUEZ, NameFlag.DO_NOT_QUEUE)
        if reply != RequestNameReply.PRIMARY_OWNER:
            raise RuntimeError(f"could not own {BLUEZ}: {reply!r}")

    async def close(self) -> None:
        await self.tasks.cancel_all()
        await self.tree.disconnect()
        if self._transport is not None:
            await self._transport.close()  # the dongle is unplugged: links drop
