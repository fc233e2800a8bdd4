"""A phone for the virtual radio, in this process: a Bumble central that pairs by typing a
passkey, bonds, and reads, writes and subscribes. The rig and the tests use it; the relay
(`jikimi_host.relay.radio_bumble`) has its own central; both pair with the same passkey delegate."""

from __future__ import annotations

import asyncio
from typing import Callable

from bumble import hci
from bumble.core import UUID
from bumble.device import Connection, Device, Peer
from bumble.gatt import Characteristic
from bumble.pairing import PairingConfig

from jikimi_host.relay.pairing import Passkey
from jikimi_host.sim.radio import VirtualRadio


class Phone:
    def __init__(self, radio: VirtualRadio, name: str = "phone") -> None:
        self.device: Device = radio.phone_device(name)
        self.passkey = 0
        self.device.pairing_config_factory = lambda connection: PairingConfig(
            sc=True, mitm=True, bonding=True, delegate=Passkey(self.passkey)
        )
        self.connection: Connection | None = None
        self.peer: Peer | None = None
        self._drops: dict[int, int] = {}

    async def start(self) -> "Phone":
        await self.device.power_on()
        # every link's end, by handle (a failed establishment can end it before connect returns)
        self.device.host.on("disconnection", lambda handle, reason: self._drops.__setitem__(handle, reason))
        return self

    async def connect(self, address: str | hci.Address, timeout_s: float = 30.0, attempts: int = 5) -> Connection:
        """Connect to a peripheral by address (its identity address: an RPA is resolved
        with the bond's IRK, by scanning). A connection that fails to be established (the
        peripheral stopped advertising just then) is tried again, as a phone's OS does."""
        for _ in range(attempts):
            connection = await self._connect_once(address, timeout_s)
            await asyncio.sleep(0.05)  # a failed establishment is reported at once
            if self._drops.pop(connection.handle, None) != hci.HCI_CONNECTION_FAILED_TO_BE_ESTABLISHED_ERROR:
                return connection
        raise ConnectionError(f"connection to {address} failed to be established {attempts} times")

    async def _connect_once(self, address: str | hci.Address, timeout_s: float) -> Connection:
        target = address if isinstance(address, hci.Address) else hci.Address(address)
        if self.device.address_resolver is not None and self.device.address_resolver.can_resolve_to(target):
            target = await asyncio.wait_for(self.device.find_peer_by_identity_address(target), timeout_s)
        self.connection = await asyncio.wait_for(
            self.device.connect(target, transport=hci.PhysicalTransport.LE), timeout_s
        )
        self.peer = Peer(self.connection)
        connection = self.connection

        @connection.on(connection.EVENT_DISCONNECTION)
        def _(reason: int) -> None:
            if self.connection is connection:
                self.connection = self.peer = None

        @connection.on(connection.EVENT_SECURITY_REQUEST)
        def _(auth_req: int) -> None:
            # What a phone's OS does when a peripheral asks for security: encrypt with the bond
            # if there is one, else pair.
            asyncio.ensure_future(self._secure(connection))

        return connection

    @property
    def connected(self) -> bool:
        return self.connection is not None

    async def _secure(self, connection: Connection) -> None:
        keys = await self.device.keystore.get(str(connection.peer_address)) if self.device.keystore else None
        try:
            if keys is not None:
                await connection.encrypt()
            else:
                await connection.pair()
        except Exception:  # the link dropped or pairing failed: the peripheral sees it
            pass

    async def pair(self, passkey: int, timeout_s: float = 60.0) -> None:
        self.passkey = passkey
        assert self.connection is not None
        await asyncio.wait_for(self.connection.pair(), timeout_s)

    async def encrypt(self, timeout_s: float = 30.0) -> None:
        """Re-encrypt with the stored bond (no pairing)."""
        assert self.connection is not None
        await asyncio.wait_for(self.connection.encrypt(), timeout_s)

    async def characteristic(self, uuid: str) -> Characteristic:
        assert self.peer is not None
        await self.peer.discover_services()
        for service in self.peer.services:
            await service.discover_characteristics()
        found = self.peer.get_characteristics_by_uuid(UUID(uuid))
        if not found:
            raise LookupError(f"no characteristic {uuid} on the peer")
        return found[0]

    async def subscribe(self, characteristic, on_value: Callable[[bytes], None], indicate: bool = False) -> None:
        await characteristic.discover_descriptors()
        await characteristic.subscribe(on_value, prefer_notify=not indicate)

    async def disconnect(self) -> None:
        if self.connection is not None:
            try:
                await self.connection.disconnect()
            except Exception:
                pass
        self.connection = self.peer = None
