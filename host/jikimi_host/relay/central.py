"""The relay's BLE central, whatever the Bluetooth stack: keeps one session per device that hands
each event to the relay, acknowledges it only after the relay has stored it, sends commands with a
persisted counter, and reconnects with backoff. The stack is a `Radio` (`radio.py`), which the
caller picks (`radios.open_radio`, from the transport name):

- `os`: the operating system's Bluetooth stack through adafruit_ble (BlueZ on Linux,
  `radio_os.py`). It cannot pair: the owner pairs each device with the OS first and puts its
  address in the config.
- anything else is a Bumble transport name (`radio_bumble.py`): `tcp-client:127.0.0.1:PORT` (the
  virtual radio, see `VirtualRadio.serve_hci`), `usb:0` or `serial:/dev/ttyUSB0,1000000` (a real
  HCI controller). Bumble pairs on first use with the passkey from the device's label.

Sessions: each known device (bonded, or configured with an address) has a task: connect (the
radio finds it, secures the link with its bond and subscribes to Events, PROTOCOL.md §2.2, on
every connection), set its clock, relay its frames until the link drops, wait, start again.
"""

from __future__ import annotations

import asyncio
import time
from typing import Awaitable, Callable

from jikimi import protocol as p
from jikimi import protocol_json as pj
from jikimi_host.relay.config import DeviceEntry
from jikimi_host.relay.dbfile import StoreWriteError
from jikimi_host.relay.device_clock import DEVICE_EPOCH_UNIX
from jikimi_host.relay.keystore import SqliteKeyStore
from jikimi_host.relay.radio import Link, Radio, Report

BACKOFF_S = (1, 2, 5, 10, 30)


class EventNotStored(Exception):
    """Raised by the event handler when it could not store an event: it is not acknowledged, and
    the link stays up (the device sends the event again)."""


EventHandler = Callable[[str, str, p.Message], Awaitable[None]]
# (identity, name, the RESULT, the command it answers as (kind, fields) if this relay sent it)
ResultHandler = Callable[[str, str, p.Message, "tuple[int, dict[str, int]] | None"], None]


class Central:
    def __init__(self, radio: Radio, keystore: SqliteKeyStore, entries: tuple[DeviceEntry, ...],
                 on_event: EventHandler, on_contact: Callable[[str, str], None], report: Report,
                 on_result: ResultHandler | None = None,
                 on_connected: Callable[[str, str], Awaitable[None]] | None = None) -> None:
        self.keystore = keystore
        self.entries = {entry.name: entry for entry in entries}
        self.on_event = on_event
        self.on_contact = on_contact
        self.on_result = on_result
        self.on_connected = on_connected  # after SET_TIME, before any frame is handled
        self.report = report
        self.radio = radio
        if not self.radio.can_pair:
            missing = [entry.name for entry in entries if not entry.address]
            if missing:
                raise ValueError(
                    f"device {missing[0]!r} has no address: the OS Bluetooth stack cannot pair from the relay. "
                    "Pair it with the OS first (bluetoothctl: scan on, pair ADDRESS, type the passkey from "
                    "its label) and put that address in its [[devices]] entry")
        self.links: dict[str, Link] = {}  # identity -> its link, while connected
        self._sessions: dict[str, asyncio.Task] = {}
        self._sent: dict[tuple[str, int], tuple[int, dict[str, int]]] = {}

    async def start(self) -> None:
        await self.radio.start()

    async def close(self) -> None:
        for task in self._sessions.values():
            task.cancel()
        await asyncio.gather(*self._sessions.values(), return_exceptions=True)
        await self.radio.close()

    async def run(self) -> None:
        """Sessions and pairing until the relay stops; OSError if the radio is lost for good."""
        for identity, name in self.keystore.paired_devices():
            if name in self.entries:
                self._start_session(identity, name)
        for entry in self.entries.values():  # configured with a fixed address: no search needed
            if entry.address and entry.name not in self.keystore.paired_names():
                self._start_session(entry.address, entry.name)
        lost = asyncio.ensure_future(self.radio.lost())
        pairing = asyncio.ensure_future(self._pair_new_devices())
        try:
            done, _ = await asyncio.wait({lost, pairing}, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()  # the radio's OSError
        finally:
            lost.cancel()
            pairing.cancel()
            await asyncio.gather(lost, pairing, return_exceptions=True)

    async def _pair_new_devices(self) -> None:
        while True:
            unpaired = [e for e in self.entries.values()
                        if e.name not in self.keystore.paired_names() and not e.address]
            if not unpaired or not self.radio.can_pair:
                await asyncio.sleep(5)
                continue
            try:
                paired = await self.radio.pair_new(unpaired)
            except asyncio.CancelledError:
                if cancelling():
                    raise
                self.report("link", "pairing failed: the link dropped")
                paired = None
            except Exception as err:  # the stack's own errors, foreseen or not: keep watching
                self.report("link", f"pairing failed: {err!r}")
                paired = None
            if paired is None:
                await asyncio.sleep(1)
                continue
            identity, entry, link = paired
            self.keystore.remember_device(identity, entry.name)
            self.report("link", f"paired {entry.name} ({identity})", device=entry.name)
            self._start_session(identity, entry.name, link)

    # -- sessions ---------------------------------------------------------------------------

    def _start_session(self, identity: str, name: str, link: Link | None = None) -> None:
        task = self._sessions.get(identity)
        if task is None or task.done():
            self._sessions[identity] = asyncio.create_task(self._session_loop(identity, name, link))

    async def _session_loop(self, identity: str, name: str, link: Link | None) -> None:
        attempt = 0
        while True:
            try:
                if link is None:
                    link = await self.radio.connect(identity, self.entries[name])
                await self._serve(link, identity, name)
                attempt = 0
            except asyncio.CancelledError:
                if cancelling():
                    raise  # the relay is stopping
                # Bumble cancels a pending operation when the link drops under it
                self.report("link", f"{name}: the link dropped mid-operation", device=name)
            except Exception as err:  # timeouts, link and protocol errors, the stack's own: try again
                self.report("link", f"{name}: {err!r}", device=name)
            finally:
                if link is not None:
                    await link.close()  # also when the relay stops: do not leave the OS holding it
                    link = None
            await asyncio.sleep(BACKOFF_S[min(attempt, len(BACKOFF_S) - 1)])
            attempt += 1

    async def _serve(self, link: Link, identity: str, name: str) -> None:
        if identity not in dict(self.keystore.paired_devices()):
            try:
                self.keystore.remember_device(identity, name)  # paired by the OS: known from now on
            except StoreWriteError as err:
                self.report("link", f"{name}: cannot note it as paired: {err}", device=name)
        self.links[identity] = link
        try:
            self.report("link", f"connected to {name} ({identity})", device=name)
            self.on_contact(identity, name)
            try:
                await self.command(identity, p.SET_TIME, time=int(time.time()) - DEVICE_EPOCH_UNIX)
            except StoreWriteError as err:  # no counter can be committed: its events still come
                self.report("link", f"{name}: cannot set its clock: {err}", device=name)
            if self.on_connected is not None:
                await self.on_connected(identity, name)  # e.g. an owner's cancel it has not had yet
            while (frame := await link.next_frame()) is not None:
                await self._frame(identity, name, frame)
        finally:
            self.links.pop(identity, None)
            self.report("link", f"disconnected from {name}", device=name)

    async def _frame(self, identity: str, name: str, frame: bytes) -> None:
        try:
            message = p.decode(frame)
        except p.ProtocolError as err:
            if err.code == p.E_BAD_VERSION:
                # Another major version (PROTOCOL.md §11): logged, and the owner told what to update.
                which = "the relay" if frame[0] > p.VERSION else "the device's firmware"
                self.report("link", f"{name} speaks protocol version {frame[0]}, this relay {p.VERSION}: "
                            f"update {which}", device=name)
                return
            self.report("link", f"{name}: bad frame {frame.hex()}: {err}", device=name)
            return
        if message.klass == "event":
            # stored (committed; that also counts as contact) before the ack goes out
            try:
                await self.on_event(identity, name, message)
            except EventNotStored:
                return  # no ack: the device keeps the event and sends it again (PROTOCOL.md §5)
            try:
                await self.command(identity, p.ACK, epoch=message.epoch, seq=message.seq)
            except StoreWriteError as err:  # stored, not acked: its resend is a duplicate, acked then
                self.report("link", f"{name}: cannot ack {message.name} seq {message.seq}: {err}", device=name)
            return
        self.on_contact(identity, name)  # a heartbeat or a reply: the device is alive
        if message.type != p.RESULT:
            if message.type == p.STATUS:
                self.report("status", f"{name}: battery {message.battery_pct}%, {message.journal_depth} unacked",
                            device=name, status=pj.to_dict(message))
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
            if self.on_result is not None:
                self.on_result(identity, name, message, pending)

    def link(self, identity: str) -> Link | None:
        """The device's current link, if it is connected (a new object for each connection)."""
        return self.links.get(identity)

    async def command(self, identity: str, kind: int, **fields: int) -> None:
        """Send a command to a connected device (ConnectionError if it is not connected)."""
        link = self.links.get(identity)
        if link is None:
            raise ConnectionError(f"{identity} is not connected")
        counter = self.keystore.next_counter(identity)
        frame = p.encode(p.Message(kind, counter=counter, **fields))
        self._sent[(identity, counter)] = (kind, fields)  # until its RESULT: resent if REPLAYED
        if len(self._sent) > 64:
            self._sent.pop(next(iter(self._sent)))
        await link.write(frame)


def cancelling() -> bool:
    """True if this task itself is being cancelled (not an operation the stack cancelled)."""
    task = asyncio.current_task()
    return task is not None and getattr(task, "cancelling", lambda: 1)() > 0
