"""A phone in another process: opens the virtual radio through an HCI transport, as it would
open a USB dongle, connects to a board and reads a characteristic. Used by the tests.

Usage: python hci_phone.py TRANSPORT BOARD_ADDRESS CHARACTERISTIC_UUID
"""

import asyncio
import sys

from bumble import hci
from bumble.core import UUID
from bumble.device import Device, Peer
from bumble.transport import open_transport


async def main(transport_name: str, address: str, uuid: str) -> None:
    async with await open_transport(transport_name) as transport:
        device = Device.with_hci("remote-phone", hci.Address("C1:00:00:00:00:0A"), transport.source, transport.sink)
        await device.power_on()
        connection = await asyncio.wait_for(device.connect(hci.Address(address)), 20)
        peer = Peer(connection)
        await peer.discover_services()
        for service in peer.services:
            await service.discover_characteristics()
        (characteristic,) = peer.get_characteristics_by_uuid(UUID(uuid))
        print("info", (await characteristic.read_value()).decode())
        await connection.disconnect()


asyncio.run(main(*sys.argv[1:4]))
