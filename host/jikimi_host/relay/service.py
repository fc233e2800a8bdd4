"""The relay: the BLE central's events → the SQLite store (one transaction, then the ack) → the
outbox sender → telephony; plus the device-unreachable check. Every step is restartable: kill
the process anywhere and start it again, and each guardian still gets each message once (the
store's dedup keys; the device resends what was not acked; `resume_in_doubt` at start).

Output: one readable line per step, or with `as_json` one JSON object per line.

Commands (the owner's taps in the phone app) come as lines on stdin: `COMMAND DEVICE`, where
COMMAND is one of cancel, silence, arm, disarm, locate, status and DEVICE a configured name; and
`stop N`, which stops the relay trying message N (the id an `overdue` line gives).

`cancel` is stored before it is acted on: `RelayStore.owner_cancel` cancels the incident here
(112 withdrawn, guardians' "cancelled" texts queued: one commit) and marks the device's
CANCEL_ALARM pending; only then is it sent. It is sent again on every connection and every
DEVICE_CANCEL_RETRY_S while the device has not answered, whatever happened in between (a kill,
the device out of reach or rebooted). The device's answer (OK, or WRONG_STATE: it had no such
alarm active) or its own `alarm_cancelled` ends that; the incident stays cancelled either way.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import sys
import time
from contextlib import closing
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from jikimi import protocol as p
from jikimi import protocol_json as pj
from jikimi_host.relay.central import Central, EventNotStored, cancelling
from jikimi_host.relay.config import RelayConfig
from jikimi_host.relay.dbfile import (KeysBackup, StoreError, StoreWriteError, check_before_open, check_integrity,
                                     move_aside, read_backup)
from jikimi_host.relay.keystore import SqliteKeyStore
from jikimi_host.relay.location import LocationSource, location_source
from jikimi_host.relay.messages import Location
from jikimi_host.relay.policy import NewRow, measured_now
from jikimi_host.relay.radios import open_radio
from jikimi_host.relay.store import DeliveredRecord, IncidentRow, OutboxRow, RelayStore
from jikimi_host.relay.telephony import Telephony, TelephonyError

SEND_POLL_S = 0.2
UNREACHABLE_CHECK_S = 30.0
OVERDUE_CHECK_S = 5.0
LOCATION_CHECK_S = 5.0  # how often a live alarm's location update is checked for (at most)
STORE_TROUBLE_EVERY_S = 30.0  # while the database cannot be written, said again this often
COMMANDS = {"cancel": p.CANCEL_ALARM, "silence": p.SILENCE_SIREN, "arm": p.ARM, "disarm": p.DISARM,
            "locate": p.LOCATE, "status": p.REQUEST_STATUS}
CALL_RING_S = 60.0
DEVICE_CANCEL_RETRY_S = 5.0  # an unanswered CANCEL_ALARM is sent again this often while connected
DEVICE_CANCEL_POLL_S = 0.5
COMMAND_WRITE_TIMEOUT_S = 15.0
# Fault injection for the crash tests: the process ends at once (os._exit, as a SIGKILL would)
# at the named step, the Nth time it gets there (JIKIMI_RELAY_CRASH_AT=step[:N]). Steps:
# stored (an event committed, not acked), attempt (a send claimed), sent (a send marked),
# cancel_recorded (the owner's cancel committed, CANCEL_ALARM not sent), cancel_sent (written
# to the device, its answer not read).
CRASH_ENV = "JIKIMI_RELAY_CRASH_AT"


class SimTelephony:
    """The default backend: sends nothing; the relay records each message as delivered in the
    store, in the same transaction that marks it sent (exactly once)."""

    name = "sim"
    reaches_emergency = True  # in the simulation only: nothing leaves the database

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
    def __init__(self, config: RelayConfig, transport: str, telephony: Telephony, as_json: bool = False,
                 location: LocationSource | None = None) -> None:
        self.config = config
        self.transport = transport
        self.telephony = telephony
        self.as_json = as_json
        # where the owner is: the config's [location] source (gpsd, the modem's GNSS, the fixed point)
        self.location = location or location_source(config, getattr(telephony, "modem", None))
        self.store = RelayStore(config.database, config)
        self.keystore = SqliteKeyStore(config.database)
        self.crash = Crash.from_env()
        self._wake_sender = asyncio.Event()
        self._wake_device_cancels = asyncio.Event()
        # incident id -> (the link its CANCEL_ALARM went on, time.monotonic() then)
        self._cancel_sent: dict[int, tuple[object, float]] = {}
        self._told_overdue: set[int] = set()  # outbox ids reported overdue (told again after a restart)
        self._store_failing: tuple[float, float, str] | None = None  # (since, last said, error) while writes fail
        # dedup key -> None while sending, then the text as it went: guardians' alarm texts sent
        # from memory while the database could not be written; marked sent when the device's
        # resend is stored (the sender leaves such a row alone until then)
        self._unrecorded: dict[str, str | None] = {}
        self._unrecorded_tasks: set[asyncio.Task] = set()
        if not config.devices:
            raise ValueError("the relay config lists no devices")
        radio = open_radio(transport, self.keystore, self.emit)
        self.central = Central(radio, self.keystore, config.devices, self._on_event, self._on_contact,
                               self.emit, on_result=self._on_result, on_connected=self._on_connected)

    # -- output ---------------------------------------------------------------------------

    def emit(self, kind: str, text: str, **fields: Any) -> None:
        if self.as_json:
            print(json.dumps({"t": round(time.time(), 3), "kind": kind, "text": text, **fields},
                             ensure_ascii=False), flush=True)
        else:
            stamp = time.strftime("%H:%M:%S", time.localtime()) + f".{int(time.time() * 1000) % 1000:03d}"
            print(f"{stamp}  {kind:<9} {text}", flush=True)

    def _store_trouble(self, err: StoreWriteError, what: str) -> None:
        """A write failed: said at once, then every STORE_TROUBLE_EVERY_S while it lasts."""
        now = time.time()
        if self._store_failing is not None and now - self._store_failing[1] < STORE_TROUBLE_EVERY_S:
            return
        since = self._store_failing[0] if self._store_failing is not None else now
        self._store_failing = (since, now, str(err))
        self.emit("store_error", f"THE DATABASE CANNOT BE WRITTEN ({err}) while {what}. Alarms are not lost: a "
                  "device keeps each event until the relay has stored it, and sends it again; a new alarm's "
                  "guardians are texted from memory meanwhile, but 112's report and call and any cancellation "
                  "wait until the database can be written. Free space or fix the file; the relay keeps trying.",
                  path=str(self.store.path), error=str(err), since=round(since, 3))

    def _store_works(self) -> None:
        if self._store_failing is not None:
            since = self._store_failing[0]
            self._store_failing = None
            self.emit("store_ok", f"the database can be written again (it could not for {_duration(time.time() - since)})",
                      path=str(self.store.path))

    # -- events ---------------------------------------------------------------------------

    async def _on_event(self, address: str, name: str, message: p.Message) -> None:
        where = self._where_now()
        try:
            result = self.store.record_event(address, message, time.time(), device_name=name, location=where)
        except StoreWriteError as err:
            self._store_trouble(err, f"storing {message.name} from {name}")
            self._text_unrecorded(address, name, message, where)
            raise EventNotStored(str(err)) from None  # not acked: the device sends it again
        self._store_works()
        self._settle_unrecorded(result.outbox_ids)
        if result.new:
            self.emit("event", f"{message.name} from {name} (seq {message.seq})", device=name, address=address,
                      event=pj.to_dict(message), queued=len(result.outbox_ids))
            if message.type == p.ALARM_RAISED:
                self._emergency_refused()  # the moment it matters most
        else:
            self.emit("duplicate", f"{message.name} seq {message.seq} from {name} again: already stored",
                      device=name, address=address)
        if result.device_cancel_confirmed:
            self.emit("cancel", f"{name} reports its alarm (seq {message.alarm_seq}) cancelled: the owner's "
                      "cancel is confirmed", device=name, incident=result.incident_id, recorded=True,
                      device_cancel="confirmed", device_confirmed=True, device_answer=message.name)
        self.crash.at("stored")
        self._wake_sender.set()

    def _where_now(self) -> Location | None:
        """Where the owner is for a text now: the latest fresh fix, else the last known one (said
        as such), else None ("location unavailable"). Read from memory: the alarm path never
        waits for a fix."""
        fix = self.location.latest()
        if fix is not None:
            return fix.to_location()
        last = self.location.last_known()
        return None if last is None else last.to_location(current=False)

    def _measured_now(self) -> Location | None:
        """The latest fresh fix that was measured (not the config's fixed point), else None."""
        fix = self.location.latest()
        where = None if fix is None else fix.to_location()
        return where if measured_now(where) else None

    def _text_unrecorded(self, address: str, name: str, message: p.Message, where: Location | None) -> None:
        """The database cannot take a new alarm: text its guardians from memory all the same (once
        per alarm in this process), rather than keep them waiting on a full disk. The rest (112
        after the cancel window, cancellations) needs the incident recorded: it waits for the
        store, as the device keeps the alarm until then. A restart in between may text twice."""
        for row in self.store.guardian_texts_of(address, message, time.time(), name, where):
            if row.dedup_key not in self._unrecorded:
                self._unrecorded[row.dedup_key] = None
                task = asyncio.create_task(self._send_unrecorded(row))
                self._unrecorded_tasks.add(task)
                task.add_done_callback(self._unrecorded_tasks.discard)

    async def _send_unrecorded(self, row: NewRow) -> None:
        try:
            await self.telephony.send_sms(row.recipient, row.text)
        except TelephonyError as err:
            del self._unrecorded[row.dedup_key]  # tried again at the device's next resend
            self.emit("failed", f"sms to {row.recipient} (not recorded: the database cannot be written): "
                      f"{err.message}; trying again when the device resends", error=err.message, state="unrecorded")
            return
        self._unrecorded[row.dedup_key] = row.text
        self._wake_sender.set()  # stored meanwhile? the sender settles it
        self.emit("sms", f"SMS → {row.recipient} ({row.recipient_kind}, {row.kind}), NOT RECORDED (the database "
                  f"cannot be written): {row.text}", to=row.recipient, recipient_kind=row.recipient_kind,
                  message_kind=row.kind, message=row.text, recorded=False)

    def _settle_unrecorded(self, outbox_ids: tuple[int, ...]) -> None:
        """The store took the event at last: its texts already sent from memory are marked sent
        (with the sim backend: delivered), so the sender does not send them again."""
        for outbox_id in outbox_ids:
            row = self.store.outbox_row(outbox_id)
            sent = self._unrecorded.get(row.dedup_key)
            if sent is None:
                continue  # not sent from memory, or still being sent: settled when that ends
            del self._unrecorded[row.dedup_key]
            # the words that went out (the row, rendered when stored, may give a later time)
            delivered = DeliveredRecord(row.channel, row.recipient, sent) if self.telephony.name == "sim" else None
            try:
                self.store.mark_sent(outbox_id, time.time(), f"{self.telephony.name}: sent while the database could "
                                     "not be written", delivered)
            except StoreWriteError as err:  # then the sender texts it again: a duplicate, the lesser harm
                self._store_trouble(err, f"recording the text to {row.recipient} sent meanwhile")

    def _on_contact(self, address: str, name: str) -> None:
        try:
            self.store.mark_contact(address, time.time(), name=name)
        except StoreWriteError as err:  # the unreachable check may then judge from an older contact
            self._store_trouble(err, f"noting contact with {name}")

    # -- sending --------------------------------------------------------------------------

    async def sender(self) -> None:
        """Send what is due. Texts go one after another; a call (up to CALL_RING_S) runs in a task
        of its own, one at a time, so texts keep going out while it is up."""
        call: asyncio.Task | None = None
        try:
            while True:
                progressed = False
                try:
                    for row in self.store.due(time.time()):
                        if row.dedup_key in self._unrecorded:  # texted from memory meanwhile
                            self._settle_unrecorded((row.id,))  # (once that send has ended)
                            continue
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
                except StoreWriteError as err:
                    # not claimed or not marked: the row is due again (in doubt if it was sent)
                    self._store_trouble(err, "sending the outbox")
                    await asyncio.sleep(1.0)
                    continue
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
        if row.kind == "emergency_report" and row.attempts == 0:
            where = self._measured_now()  # 112 gets where she is as the report goes, not where she was
            if where is not None:
                try:
                    row = replace(row, text=self.store.report_where_she_is_now(row.id, where, time.time()))
                except StoreWriteError as err:  # the report as rendered at the alarm, rather than none
                    self._store_trouble(err, "giving 112's report her current position")
        try:
            if row.channel == "sms":
                reference = await self.telephony.send_sms(row.recipient, row.text)
            else:
                reference = await self.telephony.call(row.recipient, CALL_RING_S)
        except TelephonyError as err:
            now = time.time()
            try:
                state = self.store.mark_failed(row.id, now, err.message, err.retryable)
            except StoreWriteError as store_err:  # still 'sending': due again when its lease ends
                self._store_trouble(store_err, f"noting a failed {row.channel} to {row.recipient}")
                return
            if state == "pending":
                wait = self.store.outbox_row(row.id).next_attempt_at - now
                outcome = f"trying again in {wait:.0f} s"
            else:
                outcome = "not sent: its alarm was cancelled"
            self.emit("failed", f"{row.channel} to {row.recipient}: {err.message}; {outcome}",
                      outbox_id=row.id, error=err.message, state=state)
            return
        delivered = None
        if self.telephony.name == "sim":
            delivered = DeliveredRecord(row.channel, row.recipient, row.text)
        try:
            self.store.mark_sent(row.id, time.time(), f"{self.telephony.name}:{reference}", delivered)
        except StoreWriteError as err:
            # Sent, but not recorded: still 'sending', so it goes again when its lease ends (a
            # duplicate, the lesser harm), as after a crash between the modem's OK and the commit.
            self._store_trouble(err, f"recording the {row.channel} to {row.recipient} as sent")
        label = "SMS" if row.channel == "sms" else "call"
        self.emit(row.channel, f"{label} → {row.recipient} ({row.recipient_kind}, {row.kind}): {row.text}",
                  outbox_id=row.id, to=row.recipient, recipient_kind=row.recipient_kind,
                  message_kind=row.kind, message=row.text)
        self.crash.at("sent")

    async def overdue_check(self) -> None:
        """Tell the owner of each message still not sent `overdue_after_s` after it was due (once
        per message; `status` lists them all). They are still retried."""
        while True:
            overdue = self.store.overdue(time.time())
            for row in overdue:
                if row.id not in self._told_overdue:
                    self._told_overdue.add(row.id)
                    self.emit("overdue", self._describe_overdue(row), outbox_id=row.id,
                              to=row.recipient, recipient_kind=row.recipient_kind, message_kind=row.kind,
                              attempts=row.attempts, error=row.last_error)
            self._told_overdue &= {row.id for row in overdue}
            await asyncio.sleep(OVERDUE_CHECK_S)

    def _describe_overdue(self, row: OutboxRow) -> str:
        label = "SMS" if row.channel == "sms" else "call"
        age = max(0.0, time.time() - row.not_before)
        why = f"last error: {row.last_error}" if row.last_error else "waiting for an earlier message"
        return (f"{label} to {row.recipient} ({row.recipient_kind}, {row.kind}) not sent {_duration(age)} after it "
                f"was due, {row.attempts} attempt(s); {why}; still trying (`stop {row.id}` stops it)")

    def _emergency_refused(self) -> None:
        """Say, in the owner's words, that 112 will not be reached: every start and every status."""
        if (self.config.emergency_sms or self.config.emergency_call) and not self.telephony.reaches_emergency:
            self.emit("no_112", f"112 WILL NOT BE TEXTED OR CALLED: the relay was started without --allow-emergency, "
                      f"so an alarm reaches the guardians only, not {self.config.emergency_number}. Restart it "
                      "with --allow-emergency to let it report alarms to 112.",
                      emergency_number=self.config.emergency_number, reaches_emergency=False)

    def _outbox_status(self) -> None:
        overdue = self.store.overdue(time.time())
        waiting = self.store.outbox("pending") + self.store.outbox("sending")
        if not waiting:
            self.emit("outbox", "every message has been sent", waiting=0, overdue=0)
            return
        self.emit("outbox", f"{len(waiting)} message(s) waiting to be sent, {len(overdue)} overdue (still trying)",
                  waiting=len(waiting), overdue=len(overdue))
        for row in overdue:
            self.emit("overdue", self._describe_overdue(row), outbox_id=row.id, to=row.recipient,
                      recipient_kind=row.recipient_kind, message_kind=row.kind, attempts=row.attempts,
                      error=row.last_error)

    async def unreachable_check(self) -> None:
        while True:
            try:
                for device in self.store.unreachable_devices(time.time()):
                    if device.newly:
                        self.emit("unreachable", f"{device.name or device.address} silent since "
                                  f"{time.strftime('%H:%M:%S', time.localtime(device.last_seen))}",
                                  device=device.address)
                        self._wake_sender.set()
            except StoreWriteError as err:
                self._store_trouble(err, "checking for silent devices")
            await asyncio.sleep(min(UNREACHABLE_CHECK_S, self.config.unreachable_after_s / 5))

    async def location_updates(self) -> None:
        """While an alarm is live, give its guardians the owner's new position when it is due
        (policy.location_update): checked every few seconds against the latest current fix."""
        settings = self.config.location_settings
        if settings is None or settings.source == "fixed":
            return  # the fixed point never moves
        every_s = settings.update_every_s
        while True:
            await asyncio.sleep(min(LOCATION_CHECK_S, every_s / 4))
            where = self._measured_now()
            if where is None:
                continue  # no measured fix now: nothing new to tell
            try:
                for incident in self.store.active_incidents():
                    ids = self.store.location_update(incident.id, where, time.time(), every_s)
                    if ids:
                        name = self._device_name(incident.device)
                        self.emit("location", f"{name}'s alarm (seq {incident.alarm_seq}) is live and the owner has "
                                  f"moved: {len(ids)} guardian(s) get where she is now ({where.map_link()})",
                                  device=name, incident=incident.id, queued=len(ids), lat=where.lat, lon=where.lon,
                                  accuracy_m=where.accuracy_m, update=True)
                        self._wake_sender.set()
            except StoreWriteError as err:
                self._store_trouble(err, "queueing a location update")

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
            if not words:
                continue
            try:
                await self.command(words[0], " ".join(words[1:]))
            except StoreWriteError as err:
                self._store_trouble(err, f"taking the owner's {words[0]}")
                self.emit("error", f"{' '.join(words)}: NOT DONE, the database cannot be written ({err}); "
                          "try again once it can")

    async def command(self, name: str, device: str) -> None:
        if name == "stop":
            self._owner_stop(device)
            return
        kind = COMMANDS.get(name)
        paired = dict((entry, identity) for identity, entry in self.keystore.paired_devices())
        if kind is None:
            self.emit("error", f"unknown command {name!r} (commands: {', '.join(COMMANDS)} DEVICE; stop N)")
            return
        if device not in paired:
            self.emit("error", f"unknown or unpaired device {device!r} (paired: {', '.join(sorted(paired)) or 'none'})")
            return
        identity = paired[device]
        fields: dict[str, int] = {}
        if kind == p.CANCEL_ALARM:
            self._owner_cancel(identity, device)
            return
        if kind == p.REQUEST_STATUS:
            self._incident_status(identity, device)  # what the relay knows, reachable or not
            self._outbox_status()
            self.emit("location", f"location ({self.location.name}): {self.location.status}",
                      source=self.location.name, status=self.location.status)
            self._emergency_refused()
            if self._store_failing is not None:
                since, _, error = self._store_failing
                self.emit("store_error", f"the database cannot be written since "
                          f"{time.strftime('%H:%M:%S', time.localtime(since))}: {error}; the relay keeps trying",
                          path=str(self.store.path), error=error, since=round(since, 3))
        elif kind == p.LOCATE:
            fields = {"seconds": 10}
        try:
            await self.central.command(identity, kind, **fields)
        except ConnectionError as err:
            self.emit("error", f"{name} {device}: {err}; try again when it is connected")
            return
        self.emit("command", f"{name} → {device}", device=device, command=name)

    def _owner_stop(self, argument: str) -> None:
        """`stop N`: the owner tells the relay to stop trying message N (its id in the `overdue`
        lines). Nothing else ever ends a message that has not gone out."""
        if not argument.isdigit():
            self.emit("error", f"stop needs the number of a message waiting to be sent (the N in an overdue "
                      f"line's `stop N`), got {argument!r}")
            return
        outbox_id = int(argument)
        try:
            before = self.store.owner_stop(outbox_id, time.time())
        except KeyError:
            self.emit("error", f"stop {outbox_id}: there is no message {outbox_id}")
            return
        row = self.store.outbox_row(outbox_id)
        what = f"{'SMS' if row.channel == 'sms' else 'call'} to {row.recipient} ({row.recipient_kind}, {row.kind})"
        if before == "pending":
            self._told_overdue.discard(outbox_id)
            warning = ""
            if row.kind in ("alarm", "door_intrusion", "emergency_report"):
                warning = " THE RELAY WILL NOT TELL THIS RECIPIENT OF THE ALARM."
            self.emit("stopped", f"{what}: stopped, as the owner asked; it will not be sent.{warning}",
                      outbox_id=outbox_id, to=row.recipient, recipient_kind=row.recipient_kind, message_kind=row.kind)
        elif before == "sending":
            self.emit("error", f"stop {outbox_id}: the {what} is being sent right now; if this attempt fails, "
                      f"say stop {outbox_id} again", outbox_id=outbox_id)
        else:
            self.emit("error", f"stop {outbox_id}: the {what} is {before} already: nothing to stop",
                      outbox_id=outbox_id, state=before)

    # -- the owner's cancel -----------------------------------------------------------------

    def _owner_cancel(self, identity: str, device: str) -> None:
        """Record the cancel (one commit with what it causes), then have it sent to the device."""
        incident = self.store.active_incident(identity)
        if incident is None:
            pending = self.store.pending_device_cancels(identity)
            if pending:
                self.emit("cancel", f"{device}: alarm seq {pending[-1].alarm_seq} is already cancelled here; "
                          "the device has not confirmed it yet (sent again whenever it is reachable)",
                          device=device, incident=pending[-1].id, recorded=True, device_cancel="pending",
                          device_confirmed=False)
            else:
                self.emit("error", f"{device} has no active alarm to cancel")
            return
        result = self.store.owner_cancel(incident.id, time.time())
        kinds = [self.store.outbox_row(i).kind for i in result.outbox_ids]
        police = ("112 had been told: it gets a cancellation text" if "emergency_cancelled" in kinds
                  else "112 will not be told")
        reach = ("telling the device now" if self.central.link(identity) is not None
                 else "the device is out of reach: it is told when it is back")
        self.emit("cancel", f"cancel of {device}'s alarm (seq {incident.alarm_seq}) recorded: "
                  f"{kinds.count('cancelled')} guardian(s) will be told, {police}; {reach}",
                  device=device, incident=incident.id, recorded=True, device_cancel="pending",
                  device_confirmed=False, queued=len(result.outbox_ids), emergency_told="emergency_cancelled" in kinds)
        self.crash.at("cancel_recorded")
        self._wake_sender.set()
        self._wake_device_cancels.set()

    def _device_name(self, identity: str) -> str:
        names = dict(self.keystore.paired_devices())
        return names.get(identity) or self.config.device_name(identity) or identity

    async def _send_cancel(self, incident: IncidentRow, retry_s: float | None = DEVICE_CANCEL_RETRY_S) -> None:
        """Send CANCEL_ALARM for a pending owner cancel if its device is connected and it was not
        sent on this link in the last `retry_s` (None: not at all on this link)."""
        link = self.central.link(incident.device)
        if link is None:
            return
        sent = self._cancel_sent.get(incident.id)
        now = time.monotonic()
        if sent is not None and sent[0] is link and (retry_s is None or now - sent[1] < retry_s):
            return
        self._cancel_sent[incident.id] = (link, now)
        name = self._device_name(incident.device)
        try:
            await asyncio.wait_for(
                self.central.command(incident.device, p.CANCEL_ALARM, epoch=incident.epoch,
                                     alarm_seq=incident.alarm_seq), COMMAND_WRITE_TIMEOUT_S)
        except asyncio.CancelledError:
            if cancelling():
                raise
            self.emit("link", f"cancel → {name}: the link dropped; sent again when it is back", device=name)
            return
        except Exception as err:  # link errors, timeouts: sent again on the next connection or retry
            self.emit("link", f"cancel → {name}: {err!r}; sent again when it is reachable", device=name)
            return
        self.emit("command", f"cancel → {name} (alarm seq {incident.alarm_seq}; waiting for its answer)",
                  device=name, command="cancel", incident=incident.id)
        self.crash.at("cancel_sent")

    async def _on_connected(self, identity: str, name: str) -> None:
        """A new connection: the owner's cancels it has not answered go first, before its frames."""
        for incident in self.store.pending_device_cancels(identity):
            await self._send_cancel(incident, retry_s=None)

    async def device_cancels(self) -> None:
        """Send each pending owner cancel to its device while it is connected, until it answers."""
        while True:
            for incident in self.store.pending_device_cancels():
                await self._send_cancel(incident)
            self._wake_device_cancels.clear()
            try:
                await asyncio.wait_for(self._wake_device_cancels.wait(), DEVICE_CANCEL_POLL_S)
            except asyncio.TimeoutError:
                pass

    def _on_result(self, identity: str, name: str, message: p.Message,
                   pending: tuple[int, dict[str, int]] | None) -> None:
        if message.command != p.CANCEL_ALARM or pending is None:
            return
        fields = pending[1]
        try:
            state = self.store.device_cancel_answered(identity, fields["epoch"], fields["alarm_seq"], message.code,
                                                      time.time())
        except StoreWriteError as err:  # the cancel stays pending here: sent again, answered again
            self._store_trouble(err, f"noting {name}'s answer to the owner's cancel")
            return
        incident = self.store.find_incident(identity, fields["epoch"], fields["alarm_seq"])
        common = dict(device=name, incident=incident.id if incident else None, recorded=True,
                      device_answer=p.error_name(message.code))
        if state == "confirmed":
            self.emit("cancel", f"{name} confirmed the cancel: its alarm is off", device_cancel=state,
                      device_confirmed=True, **common)
        elif state == "not_active":
            self.emit("cancel", f"{name} had no such alarm active ({p.error_name(message.code)}; it may have "
                      "restarted): the alarm stays cancelled here and 112 is not told", device_cancel=state,
                      device_confirmed=False, **common)
        elif incident is not None and incident.device_cancel == "pending":
            self.emit("cancel", f"{name} did not take the cancel ({p.error_name(message.code)}): it stays "
                      "cancelled here; sending it again", device_cancel="pending", device_confirmed=False, **common)

    def _incident_status(self, identity: str, device: str) -> None:
        # alarms the database could not take yet (their guardians texted from memory)
        prefix = f"alarm:{identity}:"
        for seq in sorted({int(key[len(prefix):].split(":")[1]) for key in self._unrecorded if key.startswith(prefix)}):
            self.emit("incident", f"{device}: alarm seq {seq} came while the database could not be written: its "
                      "guardians were texted from memory; it is recorded when the device sends it again",
                      device=device, incident=None, state="unrecorded", alarm_seq=seq)
        incidents = [i for i in self.store.incidents() if i.device == identity]
        if not incidents:
            self.emit("incident", f"{device}: no alarm on record", device=device, incident=None)
            return
        i = incidents[-1]
        raised = time.strftime("%H:%M:%S", time.localtime(i.raised_at))
        if i.state == "active":
            text = f"{device}: alarm seq {i.alarm_seq} ({i.kind}, {raised}) is active"
        else:
            by = "the owner" if i.cancel_source == p.SOURCE_PHONE else "the device"
            text = (f"{device}: alarm seq {i.alarm_seq} ({i.kind}, {raised}) cancelled by {by} at "
                    f"{time.strftime('%H:%M:%S', time.localtime(i.cancelled_at or 0))}")
            text += {"pending": "; the device has not confirmed yet",
                     "confirmed": "; the device confirmed",
                     "not_active": "; the device had no such alarm active"}.get(i.device_cancel or "", "")
        self.emit("incident", text, device=device, incident=i.id, state=i.state, device_cancel=i.device_cancel,
                  device_confirmed=i.device_cancel == "confirmed")

    async def run(self) -> None:
        resumed = self.store.resume_in_doubt(time.time())
        if resumed:
            self.emit("resume", f"{len(resumed)} message(s) in doubt from before a restart: sending again")
        unanswered = self.store.pending_device_cancels()
        if unanswered:
            self.emit("resume", f"{len(unanswered)} owner cancel(s) recorded but not yet confirmed by the device: "
                      "sent when it is reachable", incidents=[i.id for i in unanswered])
        try:
            self.keystore.backup()  # bonds, paired devices and counters, beside the database
        except StoreWriteError as err:
            self._store_trouble(err, "backing up the bonds and counters")
        await self.location.start()
        await self.central.start()
        self.emit("ready", f"relay up: {len(self.config.guardians)} guardian(s), backend {self.telephony.name}, "
                  f"transport {self.transport}")
        self._emergency_refused()
        tasks = [asyncio.create_task(self.central.run()), asyncio.create_task(self.sender()),
                 asyncio.create_task(self.unreachable_check()), asyncio.create_task(self.owner_commands()),
                 asyncio.create_task(self.device_cancels()), asyncio.create_task(self.overdue_check()),
                 asyncio.create_task(self.location_updates())]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.central.close()
            await self.location.close()
            await self.telephony.close()
            self.store.close()
            self.keystore.close()


def _duration(seconds: float) -> str:
    """"45 s", "12 min", "3 h 05 min": how long a message has waited, in words."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes = int(seconds // 60)
    if minutes < 90:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60:02d} min"


def restore_keys(database: Path) -> tuple[Path | None, KeysBackup]:
    """`jikimi relay --restore-keys`: move a damaged database aside (its history stays there), then
    start a new one from the backup of its bonds, pairings and counters (dbfile.py). Returns where
    the old file went (None if there was none) and what was restored. A sound database is left
    alone: StoreError."""
    backup = read_backup(database)
    moved = None
    if database.exists():
        if not database.is_file():
            raise StoreError(f"{database}: is not a file; set `database` in the config to a file (nothing restored)")
        try:
            check_before_open(database)
            with closing(sqlite3.connect(database)) as db:
                check_integrity(database, db)
        except StoreError:
            moved = move_aside(database, time.time())
        else:
            raise StoreError(f"{database}: is sound; --restore-keys only replaces a damaged or missing database "
                             "(move it away yourself if you mean to start from the backup)")
    keystore = SqliteKeyStore(database)
    try:
        keystore.restore(backup)
    finally:
        keystore.close()
    return moved, backup
