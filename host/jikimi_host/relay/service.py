"""The relay: the BLE central's events → the SQLite store (one transaction, then the ack) → the
outbox sender → telephony; plus the device-unreachable check. Every step is restartable: kill
the process anywhere and start it again, and each guardian still gets each message once (the
store's dedup keys; the device resends what was not acked; `resume_in_doubt` at start).

Output: one readable line per step, or with `as_json` one JSON object per line.

Commands (the owner's taps in the phone app) come as lines on stdin: `COMMAND DEVICE`, where
COMMAND is one of cancel, silence, arm, disarm, locate, status and DEVICE a configured name.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from dataclasses import dataclass
from typing import Any

from jikimi import protocol as p
from jikimi_host.relay.central import Central
from jikimi_host.relay.config import RelayConfig
from jikimi_host.relay.keystore import SqliteKeyStore
from jikimi_host.relay.store import DeliveredRecord, OutboxRow, RelayStore
from jikimi_host.relay.telephony import Telephony, TelephonyError

SEND_POLL_S = 0.2
UNREACHABLE_CHECK_S = 30.0
COMMANDS = {"cancel": p.CANCEL_ALARM, "silence": p.SILENCE_SIREN, "arm": p.ARM, "disarm": p.DISARM,
            "locate": p.LOCATE, "status": p.REQUEST_STATUS}
CALL_RING_S = 60.0
# Fault injection for the crash tests: the process ends at once (os._exit, as a SIGKILL would)
# at the named step, the Nth time it gets there (JIKIMI_RELAY_CRASH_AT=step[:N]).
CRASH_ENV = "JIKIMI_RELAY_CRASH_AT"


class SimTelephony:
    """The default backend: sends nothing; the relay records each message as delivered in the
    store, in the same transaction that marks it sent (exactly once)."""

    name = "sim"

    async def send_sms(self, number: str, text: str) -> str:
        return "sim"

    async def call(self, number: str, ring_s: float) -> str:
        return "sim"

    async def close(self) -> None:
        pass


@dataclass
class Crash:
    step: str | None
    after: int = 1

    @classmethod
    def from_env(cls) -> "Crash":
        spec = os.environ.get(CRASH_ENV)
        if not spec:
            return cls(None)
        step, _, count = spec.partition(":")
        return cls(step, int(count or 1))

    def at(self, step: str) -> None:
        if step == self.step:
            self.after -= 1
            if self.after <= 0:
                sys.stdout.flush()
                os._exit(70)


class Relay:
    def __init__(self, config: RelayConfig, transport: str, telephony: Telephony, as_json: bool = False) -> None:
        self.config = config
        self.transport = transport
        self.telephony = telephony
        self.as_json = as_json
        self.store = RelayStore(config.database, config)
        self.keystore = SqliteKeyStore(config.database)
        self.crash = Crash.from_env()
        self._wake_sender = asyncio.Event()
        if not config.devices:
            raise ValueError("the relay config lists no devices")
        self.central = Central(transport, self.keystore, config.devices, self._on_event, self._on_contact,
                               self.emit)

    # -- output ---------------------------------------------------------------------------

    def emit(self, kind: str, text: str, **fields: Any) -> None:
        if self.as_json:
            print(json.dumps({"t": round(time.time(), 3), "kind": kind, "text": text, **fields},
                             ensure_ascii=False), flush=True)
        else:
            stamp = time.strftime("%H:%M:%S", time.localtime()) + f".{int(time.time() * 1000) % 1000:03d}"
            print(f"{stamp}  {kind:<9} {text}", flush=True)

    # -- events ---------------------------------------------------------------------------

    async def _on_event(self, address: str, name: str, message: p.Message) -> None:
        result = self.store.record_event(address, message, time.time(), device_name=name)
        if result.new:
            self.emit("event", f"{message.name} from {name} (seq {message.seq})", device=name, address=address,
                      event=message.to_dict(), queued=len(result.outbox_ids))
        else:
            self.emit("duplicate", f"{message.name} seq {message.seq} from {name} again: already stored",
                      device=name, address=address)
        self.crash.at("stored")
        self._wake_sender.set()

    def _on_contact(self, address: str, name: str) -> None:
        self.store.mark_contact(address, time.time(), name=name)

    # -- sending --------------------------------------------------------------------------

    async def sender(self) -> None:
        """Send what is due. Texts go one after another; a call (up to CALL_RING_S) runs in a task
        of its own, one at a time, so texts keep going out while it is up."""
        call: asyncio.Task | None = None
        try:
            while True:
                progressed = False
                for row in self.store.due(time.time()):
                    if row.channel == "call" and call is not None and not call.done():
                        continue  # one call at a time: this one is placed when the current one ends
                    if not self.store.begin_attempt(row.id, time.time()):
                        continue
                    progressed = True
                    if row.channel == "call":
                        call = asyncio.create_task(self._deliver(row))
                        call.add_done_callback(lambda _: self._wake_sender.set())
                    else:
                        await self._deliver(row)
                if progressed:
                    continue  # more may be due at once
                self._wake_sender.clear()
                try:
                    await asyncio.wait_for(self._wake_sender.wait(), SEND_POLL_S)
                except asyncio.TimeoutError:
                    pass
        finally:
            if call is not None:
                call.cancel()

    async def _deliver(self, row: OutboxRow) -> None:
        """One claimed outbox row: send it, then mark it sent or failed."""
        self.crash.at("attempt")
        try:
            if row.channel == "sms":
                reference = await self.telephony.send_sms(row.recipient, row.text)
            else:
                reference = await self.telephony.call(row.recipient, CALL_RING_S)
        except TelephonyError as err:
            state = self.store.mark_failed(row.id, time.time(), err.message, err.retryable)
            self.emit("failed", f"{row.channel} to {row.recipient}: {err.message} → {state}",
                      outbox_id=row.id, error=err.message, state=state)
            return
        delivered = None
        if self.telephony.name == "sim":
            delivered = DeliveredRecord(row.channel, row.recipient, row.text)
        self.store.mark_sent(row.id, time.time(), f"{self.telephony.name}:{reference}", delivered)
        label = "SMS" if row.channel == "sms" else "call"
        self.emit(row.channel, f"{label} → {row.recipient} ({row.recipient_kind}, {row.kind}): {row.text}",
                  outbox_id=row.id, to=row.recipient, recipient_kind=row.recipient_kind,
                  message_kind=row.kind, message=row.text)
        self.crash.at("sent")

    async def unreachable_check(self) -> None:
        while True:
            for device in self.store.unreachable_devices(time.time()):
                if device.newly:
                    self.emit("unreachable", f"{device.name or device.address} silent since "
                              f"{time.strftime('%H:%M:%S', time.localtime(device.last_seen))}",
                              device=device.address)
                    self._wake_sender.set()
            await asyncio.sleep(min(UNREACHABLE_CHECK_S, self.config.unreachable_after_s / 5))

    async def owner_commands(self) -> None:
        """Read `COMMAND DEVICE` lines from stdin until it closes."""
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        try:
            await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        except (OSError, ValueError):
            return  # no usable stdin (a terminal that is not a pipe is fine; nothing else to do)
        while line := await reader.readline():
            words = line.decode(errors="replace").split()
            if words:
                await self.command(words[0], " ".join(words[1:]))

    async def command(self, name: str, device: str) -> None:
        kind = COMMANDS.get(name)
        paired = dict((entry, identity) for identity, entry in self.keystore.paired_devices())
        if kind is None:
            self.emit("error", f"unknown command {name!r} (commands: {', '.join(COMMANDS)})")
            return
        if device not in paired:
            self.emit("error", f"unknown or unpaired device {device!r} (paired: {', '.join(sorted(paired)) or 'none'})")
            return
        identity = paired[device]
        fields: dict[str, int] = {}
        if kind == p.CANCEL_ALARM:
            active = [i for i in self.store.incidents() if i.device == identity and i.state == "active"]
            if not active:
                self.emit("error", f"{device} has no active alarm to cancel")
                return
            fields = {"epoch": active[-1].epoch, "alarm_seq": active[-1].alarm_seq}
        elif kind == p.LOCATE:
            fields = {"seconds": 10}
        try:
            await self.central.command(identity, kind, **fields)
        except ConnectionError as err:
            self.emit("error", f"{name} {device}: {err}; try again when it is connected")
            return
        self.emit("command", f"{name} → {device}", device=device, command=name)

    async def run(self) -> None:
        resumed = self.store.resume_in_doubt(time.time())
        if resumed:
            self.emit("resume", f"{len(resumed)} message(s) in doubt from before a restart: sending again")
        await self.central.start()
        self.emit("ready", f"relay up: {len(self.config.guardians)} guardian(s), backend {self.telephony.name}, "
                  f"transport {self.transport}")
        tasks = [asyncio.create_task(self.central.run()), asyncio.create_task(self.sender()),
                 asyncio.create_task(self.unreachable_check()), asyncio.create_task(self.owner_commands())]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.central.close()
            await self.telephony.close()
            self.store.close()
            self.keystore.close()
