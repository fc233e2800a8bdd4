"""The relay's radio on the operating system's Bluetooth stack, through adafruit_ble (on a PC,
adafruit-blinka-bleio's `_bleio`, which drives BlueZ over D-Bus with bleak on Linux).

The OS stack cannot pair from here (`_bleio` has no pairing), so the owner pairs each device with
the OS first, typing the passkey from its label (`bluetoothctl`: `scan on`, `pair ADDRESS`), and
puts the address the OS shows in the device's `[[devices]]` entry. The OS keeps the bond, resolves
the device's private addresses and encrypts the link with the bond when it connects.

adafruit_ble's API blocks (`_bleio` runs bleak on a thread of its own), so each call runs in a
worker thread. Notifications land in a `_bleio.PacketBuffer`, one frame per packet; it has no way
to wait, so the link polls it every `POLL_S`.
"""

from __future__ import annotations

import asyncio
import time

import _bleio
from adafruit_ble import BLEConnection, BLERadio
from adafruit_ble.characteristics import Characteristic, ComplexCharacteristic
from adafruit_ble.services import Service
from adafruit_ble.uuid import VendorUUID

from jikimi import protocol as p
from jikimi_host.relay.config import DeviceEntry
from jikimi_host.relay.radio import Link, Report

CONNECT_TIMEOUT_S = 20.0
POLL_S = 0.02  # notification latency this adds, at most
# With no frame for this long, a read of Info proves the OS still has the link: if bluetoothd
# crashed, nothing says the link is gone, and alarms would wait for a relay that never reconnects.
LIVENESS_S = 15.0
PACKETS_BUFFERED = 64  # Events frames held between polls (the oldest goes first if it overflows)


class EventPackets(ComplexCharacteristic):
    """Events, as whole notifications (a byte stream would lose the frame boundaries);
    subscribed when bound, which happens once per connection."""

    uuid = VendorUUID(p.uuid(p.UUID_EVENTS))

    def bind(self, service: Service) -> _bleio.PacketBuffer:
        characteristic = super().bind(service)
        packets = _bleio.PacketBuffer(characteristic, buffer_size=PACKETS_BUFFERED)
        characteristic.set_cccd(notify=True)
        return packets


class JikimiService(Service):
    uuid = VendorUUID(p.uuid(p.UUID_SERVICE))
    events = EventPackets(properties=Characteristic.NOTIFY)
    info = Characteristic(uuid=VendorUUID(p.uuid(p.UUID_INFO)), properties=Characteristic.READ)


class OsLink:
    def __init__(self, connection: BLEConnection, service: JikimiService) -> None:
        self.connection = connection
        self.service = service
        self.packets: _bleio.PacketBuffer = service.events
        self.buffer = bytearray(self.packets.incoming_packet_length)

    async def next_frame(self) -> bytes | None:
        quiet_since = time.monotonic()
        while True:
            size = self.packets.readinto(self.buffer)
            if size > 0:
                return bytes(self.buffer[:size])
            if not self.connection.connected:
                return None
            if time.monotonic() - quiet_since >= LIVENESS_S:
                if not await self._alive():
                    return None
                quiet_since = time.monotonic()
            await asyncio.sleep(POLL_S)

    async def _alive(self) -> bool:
        try:
            await asyncio.wait_for(asyncio.to_thread(getattr, self.service, "info"), CONNECT_TIMEOUT_S)
            return True
        except Exception:  # the OS stack is gone, or the link with it
            return False

    async def write(self, frame: bytes) -> None:
        if not self.connection.connected:
            raise ConnectionError("the link is down")
        try:
            await asyncio.to_thread(self._write_with_response, frame)
        except Exception as err:  # bleak's and D-Bus's errors: the write did not reach the device
            raise ConnectionError(f"writing a command failed: {err}") from err

    def _write_with_response(self, frame: bytes) -> None:
        # Not `service.commands = frame`: _bleio picks "with response" by testing its WRITE bit
        # (0x10) in properties it built from bleak's flags, where 0x10 is notify, so a write-only
        # characteristic like Commands would go without response, which the device refuses
        # (adafruit-blinka-bleio 4.1.2). The connection's own bleak client does it right.
        client = self.connection._bleio_connection._bleak_client
        _bleio.adapter.await_bleak(client.write_gatt_char(p.uuid(p.UUID_COMMANDS), bytearray(frame), response=True))

    async def close(self) -> None:
        try:
            if self.connection.connected:
                await asyncio.to_thread(self.connection.disconnect)
        except Exception:  # already going down
            pass


class OsRadio:
    can_pair = False

    def __init__(self, report: Report) -> None:
        self.report = report
        self.radio: BLERadio | None = None

    async def start(self) -> None:
        self.radio = BLERadio()
        try:  # a short scan: the only way _bleio offers to find out that the stack is there
            await asyncio.to_thread(lambda: list(self.radio.start_scan(timeout=0.3)))
        except Exception as err:
            raise OSError(f"the OS Bluetooth stack is not reachable ({type(err).__name__}: {err or 'no detail'}); "
                          "is bluetoothd running with an adapter (`bluetoothctl show`)? Or give a Bumble "
                          "transport for a controller of the relay's own (--transport usb:0)") from err

    async def close(self) -> None:
        pass  # the links close themselves (Central stops its sessions first)

    async def lost(self) -> None:
        await asyncio.Event().wait()  # never: the sessions ride out a bluetoothd restart

    async def pair_new(self, unpaired: list[DeviceEntry]) -> tuple[str, DeviceEntry, Link] | None:
        raise NotImplementedError("the OS Bluetooth stack cannot pair from the relay: pair with the OS first")

    async def connect(self, identity: str, entry: DeviceEntry) -> Link:
        assert self.radio is not None
        radio = self.radio
        self.report("link", f"connecting to {entry.name} at {identity} (OS stack)", device=entry.name)

        def open_link() -> OsLink:
            connection = radio.connect(_bleio.Address(string=identity.upper()), timeout=CONNECT_TIMEOUT_S)
            try:
                if JikimiService not in connection:
                    raise ConnectionError(f"{identity} does not offer the Jikimi service: is it {entry.name}?")
                service = connection[JikimiService]
                return OsLink(connection, service)
            except BaseException:
                connection.disconnect()
                raise

        return await asyncio.to_thread(open_link)
