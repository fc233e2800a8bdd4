"""The relay's BLE central (Bumble): finds its devices, pairs each on first use with the passkey
from its label, re-encrypts with the bond afterwards, subscribes to Events on every connection
(PROTOCOL.md §2.2), hands each event to the relay, acknowledges it only after the relay has
stored it, sends commands with a persisted counter, and reconnects with backoff.

- Pairing: while a configured device has no bond, the central watches for a device advertising
  the Jikimi service (only done in its pairing window) and pairs with the passkey of the first
  unpaired entry; if that fails (another device's passkey), the next entry is tried on the next
  attempt. The bonded identity address is remembered with the entry's name.
- Each bonded device has its own session task: find it (its private address resolved with the
  bond's IRK), connect, encrypt, subscribe, relay; on any failure wait and start again.

Transports are Bumble's names: `tcp-client:127.0.0.1:PORT` (the virtual radio, see
`VirtualRadio.serve_hci`), `usb:0` or `serial:/dev/ttyUSB0,1000000` (a real HCI controller).
"""

from __future__ import annotations

import asyncio
import time
from typing import Awaitable, Callable

from bumble import hci
from bumble.core import UUID, AdvertisingData
from bumble.device import Connection, Device, Peer
from bumble.pairing import PairingConfig, PairingDelegate
from bumble.transport import open_transport

from jikimi import protocol as p
from jikimi_host.relay.config import DeviceEntry
from jikimi_host.relay.keystore import SqliteKeyStore

RELAY_ADDRESS = "C2:4A:49:4B:49:4D"  # the relay's own static random address
BACKOFF_S = (1, 2, 5, 10, 30)
FIND_TIMEOUT_S = 60.0
DEVICE_EPOCH_UNIX = 946684800  # 2000-01-01 UTC, the protocol's time origin

EventHandler = Callable[[str, str, p.Message], Awaitable[None]]


class Passkey(PairingDelegate):
    """The owner types the passkey from the device's label."""

    def __init__(self, passkey: int) -> None:
        super().__init__(io_capability=PairingDelegate.IoCapability.KEYBOARD_INPUT_ONLY)
        self.passkey = passkey

    async def get_number(self) -> int | None:
        return self.passkey


class Central:
    def __init__(self, transport: str, keystore: SqliteKeyStore, entries: tuple[DeviceEntry, ...],
                 on_event: EventHandler, on_contact: Callable[[str, str], None],
                 report: Callable[..., None]) -> None:
        self.transport_name = transport
        self.keystore = keystore
        self.entries = {entry.name: entry for entry in entries}
        self.on_event = on_event
        self.on_contact = on_contact
        self.report = report
        self.device: Device | None = None
        self.commands: dict[str, object] = {}  # identity -> the Commands characteristic, while connected
        self._passkey = 0
        self._sessions: dict[str, asyncio.Task] = {}
        self._sent: dict[tuple[str, int], tuple[int, dict[str, int]]] = {}
        self._transport = None

    async def start(self) -> None:
        self._transport = await open_transport(self.transport_name)
        self.device = Device.with_hci("jikimi-relay", hci.Address(RELAY_ADDRESS),
                                      self._transport.source, self._transport.sink)
        self.device.keystore = self.keystore
        self.device.pairing_config_factory = lambda connection: PairingConfig(
            sc=True, mitm=True, bonding=True, delegate=Passkey(self._passkey))
        await self.device.power_on()
        # Always scanning, so that every session's search and the pairing watch see adverts.
        await self.device.start_scanning(filter_duplicates=False)

    async def close(self) -> None:
        for task in self._sessions.values():
            task.cancel()
        await asyncio.gather(*self._sessions.values(), return_exceptions=True)
        if self._transport is not None:
            await self._transport.close()

    async def run(self) -> None:
        for identity, name in self.keystore.paired_devices():
            if name in self.entries:
                self._start_session(identity, name)
        for entry in self.entries.values():  # configured with a fixed address: no search needed
            if entry.address and entry.name not in self.keystore.paired_names():
                self._start_session(entry.address, entry.name)
        while True:
            unpaired = [e for e in self.entries.values()
                        if e.name not in self.keystore.paired_names() and not e.address]
            if not unpaired:
                await asyncio.sleep(5)
                continue
            try:
                await self._pair_one(unpaired)
            except (asyncio.TimeoutError, hci.HCI_Error, ConnectionError, OSError) as err:
                self.report("link", f"pairing failed: {err!r}")
                await asyncio.sleep(1)
            except asyncio.CancelledError:
                if _cancelling():
                    raise
                self.report("link", "pairing failed: the link dropped")
                await asyncio.sleep(1)
            except Exception as err:  # a Bumble error we did not foresee: keep watching
                self.report("link", f"pairing failed: {err!r}")
                await asyncio.sleep(1)

    # -- pairing ---------------------------------------------------------------------------

    async def _pairing_advertiser(self) -> hci.Address:
        """The next device advertising the Jikimi service: its pairing window is open."""
        assert self.device is not None
        found: asyncio.Future[hci.Address] = asyncio.get_running_loop().create_future()
        service = UUID(p.SERVICE_UUID)

        def on_advertisement(advertisement) -> None:
            uuids = advertisement.data.get(AdvertisingData.COMPLETE_LIST_OF_128_BIT_SERVICE_CLASS_UUIDS) or []
            if service in uuids and not found.done():
                found.set_result(advertisement.address)

        self.device.on("advertisement", on_advertisement)
        try:
            return await found
        finally:
            self.device.remove_listener("advertisement", on_advertisement)

    async def _pair_one(self, unpaired: list[DeviceEntry]) -> None:
        assert self.device is not None
        address = await self._pairing_advertiser()
        connection = await asyncio.wait_for(self.device.connect(address, transport=hci.PhysicalTransport.LE), 20)
        for entry in unpaired:
            self._passkey = int(entry.passkey)
            self.report("link", f"pairing {entry.name} with its passkey", device=entry.name)
            try:
                await asyncio.wait_for(connection.pair(), 30)
            except Exception as err:
                self.report("link", f"pairing as {entry.name} failed: {err!r}", device=entry.name)
                if connection.handle not in self.device.connections:
                    return  # the device dropped us: wait for its next advert
                continue
            identity = str(connection.peer_address)
            self.keystore.remember_device(identity, entry.name)
            self.report("link", f"paired {entry.name} ({identity})", device=entry.name)
            self._start_session(identity, entry.name, connection)
            return
        await connection.disconnect()

    # -- sessions ---------------------------------------------------------------------------

    def _start_session(self, identity: str, name: str, connection: Connection | None = None) -> None:
        task = self._sessions.get(identity)
        if task is None or task.done():
            self._sessions[identity] = asyncio.create_task(self._session_loop(identity, name, connection))

    async def _session_loop(self, identity: str, name: str, connection: Connection | None) -> None:
        attempt = 0
        while True:
            try:
                if connection is None:
                    connection = await self._connect(identity, name)
                await self._serve(connection, identity, name)
                attempt = 0
            except (asyncio.TimeoutError, hci.HCI_Error, ConnectionError, p.ProtocolError, OSError) as err:
                self.report("link", f"{name}: {err!r}", device=name)
            except asyncio.CancelledError:
                if _cancelling():
                    raise  # the relay is stopping
                # Bumble cancels a pending operation when the link drops under it
                self.report("link", f"{name}: the link dropped mid-operation", device=name)
            except Exception as err:  # a Bumble error we did not foresee: keep trying
                self.report("link", f"{name}: {err!r}", device=name)
            connection = None
            await asyncio.sleep(BACKOFF_S[min(attempt, len(BACKOFF_S) - 1)])
            attempt += 1

    async def _connect(self, identity: str, name: str) -> Connection:
        assert self.device is not None
        target = hci.Address(identity)
        resolver = self.device.address_resolver
        if resolver is not None and resolver.can_resolve_to(target):
            self.report("link", f"looking for {name}", device=name)
            target = await asyncio.wait_for(self.device.find_peer_by_identity_address(target), FIND_TIMEOUT_S)
        self.report("link", f"connecting to {name} at {target}", device=name)
        return await asyncio.wait_for(self.device.connect(target, transport=hci.PhysicalTransport.LE), 20)

    async def _serve(self, connection: Connection, identity: str, name: str) -> None:
        closed = asyncio.Event()
        connection.on("disconnection", lambda reason: closed.set())
        try:
            if not connection.is_encrypted:
                if await self.keystore.get(str(connection.peer_address)) is not None:
                    await asyncio.wait_for(connection.encrypt(), 20)
                else:
                    self._passkey = int(self.entries[name].passkey)
                    await asyncio.wait_for(connection.pair(), 60)
                    self.keystore.remember_device(identity, name)
            peer = Peer(connection)
            await peer.discover_services([UUID(p.SERVICE_UUID)])
            for service in peer.services:
                await service.discover_characteristics()
            (events,) = peer.get_characteristics_by_uuid(UUID(p.EVENTS_UUID))
            (commands,) = peer.get_characteristics_by_uuid(UUID(p.COMMANDS_UUID))
            queue: asyncio.Queue[bytes] = asyncio.Queue()
            await events.discover_descriptors()
            await events.subscribe(queue.put_nowait, prefer_notify=True)  # on every connection
            self.commands[identity] = commands
            self.report("link", f"connected to {name} ({identity})", device=name)
            self.on_contact(identity, name)
            await self.command(identity, p.SET_TIME, time=int(time.time()) - DEVICE_EPOCH_UNIX)
            closing = asyncio.ensure_future(closed.wait())
            try:
                while True:
                    getter = asyncio.ensure_future(queue.get())
                    done, _ = await asyncio.wait({getter, closing}, return_when=asyncio.FIRST_COMPLETED)
                    if getter not in done:
                        getter.cancel()
                        return
                    await self._frame(identity, name, getter.result())
            finally:
                closing.cancel()
        finally:
            self.commands.pop(identity, None)
            if not closed.is_set():
                try:
                    await connection.disconnect()
                except Exception:
                    pass
            self.report("link", f"disconnected from {name}", device=name)

    async def _frame(self, identity: str, name: str, frame: bytes) -> None:
        try:
            message = p.decode(frame)
        except p.ProtocolError as err:
            self.report("link", f"{name}: bad frame {frame.hex()}: {err}", device=name)
            return
        if message.klass == "event":
            # stored (committed; that also counts as contact) before the ack goes out
            await self.on_event(identity, name, message)
            await self.command(identity, p.ACK, epoch=message.epoch, seq=message.seq)
            return
        self.on_contact(identity, name)  # a heartbeat or a reply: the device is alive
        if message.type != p.RESULT:
            if message.type == p.STATUS:
                self.report("status", f"{name}: battery {message.battery_pct}%, {message.journal_depth} unacked",
                            device=name, status=message.to_dict())
            return
        pending = self._sent.pop((identity, message.counter), None)
        if message.code == p.E_REPLAYED:
            # This relay's counter is behind the device's (a new database, a restored phone):
            # continue above the device's value and send the command again (PROTOCOL.md §7.1).
            self.keystore.raise_counter(identity, message.detail)
            if pending is not None:
                self.report("link", f"{name}: counter behind the device's ({message.detail}); resending",
                            device=name)
                await self.command(identity, pending[0], **pending[1])
        elif message.command != p.ACK:
            self.report("result", f"{name}: {p.type_name(message.command)} → {p.error_name(message.code)}",
                        device=name, command=p.type_name(message.command), code=p.error_name(message.code))

    async def command(self, identity: str, kind: int, **fields: int) -> None:
        """Send a command to a connected device (ConnectionError if it is not connected)."""
        commands = self.commands.get(identity)
        if commands is None:
            raise ConnectionError(f"{identity} is not connected")
        counter = self.keystore.next_counter(identity)
        frame = p.encode(p.Message(kind, counter=counter, **fields))
        self._sent[(identity, counter)] = (kind, fields)  # until its RESULT: resent if REPLAYED
        if len(self._sent) > 64:
            self._sent.pop(next(iter(self._sent)))
        await commands.write_value(frame, with_response=True)  # type: ignore[attr-defined]


def _cancelling() -> bool:
    """True if this task itself is being cancelled (not an operation Bumble cancelled)."""
    task = asyncio.current_task()
    return task is not None and getattr(task, "cancelling", lambda: 1)() > 0
