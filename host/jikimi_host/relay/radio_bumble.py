"""The relay's radio on Bumble, a Bluetooth host stack in this process, over any of Bumble's
HCI transports (the virtual radio in CI, a USB or UART controller on a bench).

- Pairing: while a configured device has no bond, the radio watches for a device advertising the
  Jikimi service (only done in its pairing window) and pairs with the passkey of the first
  unpaired entry; if that fails (another device's passkey), the next entry is tried on the next
  attempt. The bond goes to the relay's SQLite key store.
- Connecting: a bonded device's private address is resolved with the bond's IRK; the link is
  encrypted with the bond (or paired with the entry's passkey for a device configured by address
  and not bonded yet); then Events is subscribed on every connection.
"""

from __future__ import annotations

import asyncio

from bumble import hci
from bumble.core import UUID, AdvertisingData
from bumble.device import Connection, Device, Peer
from bumble.pairing import PairingConfig
from bumble.transport import open_transport
from bumble.transport.common import TransportSpecError

from jikimi import protocol as p
from jikimi_host.relay.config import DeviceEntry
from jikimi_host.relay.keystore import SqliteKeyStore
from jikimi_host.relay.pairing import Passkey
from jikimi_host.relay.radio import TRANSPORT_FORMS, Link, Report, TransportNameError

RELAY_ADDRESS = "C2:4A:49:4B:49:4D"  # the relay's own static random address
FIND_TIMEOUT_S = 60.0
CONNECT_TIMEOUT_S = 20.0
# Service discovery and the subscription, all of it: each GATT request has Bumble's own 30 s, but
# a link whose peer has stopped answering is worth dropping for a fresh connection sooner.
OPEN_TIMEOUT_S = 30.0


class BumbleLink:
    def __init__(self, connection: Connection, commands) -> None:
        self.connection = connection
        self.commands = commands
        self.frames: asyncio.Queue[bytes] = asyncio.Queue()
        self.closed = asyncio.Event()
        connection.on("disconnection", lambda reason: self.closed.set())

    async def next_frame(self) -> bytes | None:
        if not self.frames.empty():
            return self.frames.get_nowait()
        getter = asyncio.ensure_future(self.frames.get())
        closing = asyncio.ensure_future(self.closed.wait())
        try:
            done, _ = await asyncio.wait({getter, closing}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            getter.cancel()
            closing.cancel()
        return getter.result() if getter in done else None

    async def write(self, frame: bytes) -> None:
        if self.closed.is_set():
            raise ConnectionError("the link is down")
        await self.commands.write_value(frame, with_response=True)

    async def close(self) -> None:
        if not self.closed.is_set():
            try:
                await self.connection.disconnect()
            except Exception:  # already going down
                pass


class BumbleRadio:
    can_pair = True

    def __init__(self, transport: str, keystore: SqliteKeyStore, report: Report) -> None:
        self.transport_name = transport
        self.keystore = keystore
        self.report = report
        self.device: Device | None = None
        self._passkey = 0
        # A controller takes one LE connection attempt at a time (HCI LE Create Connection):
        # attempts queue here instead of failing with "connection already pending".
        self._connecting = asyncio.Lock()
        self._transport = None

    async def start(self) -> None:
        name = self.transport_name
        try:
            self._transport = await open_transport(name)
        except (TransportSpecError, AssertionError) as err:  # Bumble asserts a spec for usb:, file:
            raise TransportNameError(f"transport {name!r} is not one the relay knows "
                                     f"({str(err) or 'it needs a device after the colon'}): give {TRANSPORT_FORMS}") from None
        except OSError as err:  # serial, TCP: already says what went wrong
            raise OSError(f"cannot open the HCI transport {name!r}: {err}") from None
        except Exception as err:  # libusb, "device not found": Bumble's own, or its backends'
            raise OSError(f"cannot open the HCI transport {name!r} ({type(err).__name__}: {str(err) or 'no detail'}); "
                          f"is the controller plugged in? The relay takes {TRANSPORT_FORMS}") from None
        self.device = Device.with_hci("jikimi-relay", hci.Address(RELAY_ADDRESS),
                                      self._transport.source, self._transport.sink)
        self.device.keystore = self.keystore
        self.device.pairing_config_factory = lambda connection: PairingConfig(
            sc=True, mitm=True, bonding=True, delegate=Passkey(self._passkey))
        await self.device.power_on()
        # Always scanning, so that every session's search and the pairing watch see adverts.
        await self.device.start_scanning(filter_duplicates=False)

    async def close(self) -> None:
        if self._transport is not None:
            await self._transport.close()

    async def lost(self) -> None:
        assert self._transport is not None
        await self._transport.source.terminated
        # Bumble cannot take the controller back: stop, and let the supervisor (systemd) start
        # the relay again, which then waits for the controller (the database keeps everything).
        raise OSError(f"the HCI transport {self.transport_name} closed (controller unplugged or reset?)")

    # -- pairing ---------------------------------------------------------------------------

    async def _pairing_advertiser(self) -> hci.Address:
        """The next device advertising the Jikimi service: its pairing window is open."""
        assert self.device is not None
        found: asyncio.Future[hci.Address] = asyncio.get_running_loop().create_future()
        service = UUID(p.uuid(p.UUID_SERVICE))

        def known(address: hci.Address) -> bool:
            # A device keeps advertising while connected (its pairing window may still be open
            # a moment after it bonded with us): never mistake it for the next one to pair.
            for connection in self.device.connections.values():
                if address in (connection.peer_address, connection.peer_resolvable_address):
                    return True
            resolver = self.device.address_resolver
            return resolver is not None and resolver.resolve(address) is not None

        def on_advertisement(advertisement) -> None:
            uuids = advertisement.data.get(AdvertisingData.COMPLETE_LIST_OF_128_BIT_SERVICE_CLASS_UUIDS) or []
            if service in uuids and not found.done() and not known(advertisement.address):
                found.set_result(advertisement.address)

        self.device.on("advertisement", on_advertisement)
        try:
            return await found
        finally:
            self.device.remove_listener("advertisement", on_advertisement)

    async def pair_new(self, unpaired: list[DeviceEntry]) -> tuple[str, DeviceEntry, Link] | None:
        assert self.device is not None
        address = await self._pairing_advertiser()
        connection = await self._connect(address)
        for entry in unpaired:
            self._passkey = int(entry.passkey)
            self.report("link", f"pairing {entry.name} with its passkey", device=entry.name)
            try:
                await asyncio.wait_for(connection.pair(), 30)
            except Exception as err:
                self.report("link", f"pairing as {entry.name} failed: {err!r}", device=entry.name)
                if connection.handle not in self.device.connections:
                    return None  # the device dropped us: wait for its next advert
                continue
            return str(connection.peer_address), entry, await self._open(connection)
        await connection.disconnect()
        return None

    # -- connecting -------------------------------------------------------------------------

    async def _advertising(self, identity: hci.Address) -> hci.Address:
        """The address the device with `identity` advertises from, once it does (itself, or a
        resolvable address that resolves to it). Connecting only to a device just heard means one
        that is away (switched off, out of range) holds no connection attempt, so it cannot keep
        the controller from the devices that are here."""
        assert self.device is not None
        found: asyncio.Future[hci.Address] = asyncio.get_running_loop().create_future()

        def on_advertisement(advertisement) -> None:
            address = advertisement.address
            resolver = self.device.address_resolver if self.device is not None else None
            if found.done():
                return
            if address == identity or (address.is_resolvable and resolver is not None
                                       and resolver.resolve(address) == identity):
                found.set_result(address)

        self.device.on("advertisement", on_advertisement)
        try:
            return await found
        finally:
            self.device.remove_listener("advertisement", on_advertisement)

    async def _connect(self, address: hci.Address) -> Connection:
        assert self.device is not None
        async with self._connecting:
            return await asyncio.wait_for(self.device.connect(address, transport=hci.PhysicalTransport.LE),
                                          CONNECT_TIMEOUT_S)

    async def connect(self, identity: str, entry: DeviceEntry) -> Link:
        assert self.device is not None
        self.report("link", f"looking for {entry.name}", device=entry.name)
        target = await asyncio.wait_for(self._advertising(hci.Address(identity)), FIND_TIMEOUT_S)
        self.report("link", f"connecting to {entry.name} at {target}", device=entry.name)
        connection = await self._connect(target)
        if not connection.is_encrypted:
            try:
                if await self.keystore.get(str(connection.peer_address)) is not None:
                    await asyncio.wait_for(connection.encrypt(), 20)
                else:  # configured by address, not bonded yet
                    self._passkey = int(entry.passkey)
                    await asyncio.wait_for(connection.pair(), 60)
            except BaseException:
                await BumbleLink(connection, None).close()
                raise
        return await self._open(connection)

    async def _open(self, connection: Connection) -> BumbleLink:
        """Discover the Jikimi service and subscribe to Events (on every connection), within
        OPEN_TIMEOUT_S."""
        try:
            return await asyncio.wait_for(self._discover(connection), OPEN_TIMEOUT_S)
        except BaseException:
            await BumbleLink(connection, None).close()
            raise

    async def _discover(self, connection: Connection) -> BumbleLink:
        peer = Peer(connection)
        await peer.discover_services([UUID(p.uuid(p.UUID_SERVICE))])
        for service in peer.services:
            await service.discover_characteristics()
        (events,) = peer.get_characteristics_by_uuid(UUID(p.uuid(p.UUID_EVENTS)))
        (commands,) = peer.get_characteristics_by_uuid(UUID(p.uuid(p.UUID_COMMANDS)))
        link = BumbleLink(connection, commands)
        await events.discover_descriptors()
        await events.subscribe(link.frames.put_nowait, prefer_notify=True)
        return link
