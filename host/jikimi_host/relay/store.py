"""The relay's state in SQLite: events, incidents, the outbox, what the sim "sent", the audit log.

The promise: a relay killed at any point and restarted never loses and never duplicates a
guardian's message. How:

1. Receiving an event is ONE transaction (`record_event`): the event row (UNIQUE(device, epoch,
   seq): a duplicate delivery is a no-op that says "already had it") and every outbox row the
   policy derives from it (each with a UNIQUE dedup key). The relay acks the event to the device
   only after this commit; a relay killed before the commit stored nothing, so the device's
   resend (it keeps unacked events) is new again. Killed after the commit but before the ack:
   the resend is a duplicate and is acked without new rows.
2. Sending: `due()` -> `begin_attempt()` (commit: state 'sending', attempts+1) -> hand to the
   backend -> `mark_sent()` or `mark_failed()`. A failure never ends a message: it is due again
   after a capped backoff, whatever the error, until it is sent or made moot (a 112 report of a
   cancelled alarm, a row that follows one that will never be sent). Rows not sent long after
   they were due are `overdue()`: the relay reports them, and goes on trying.
   * The `sim` backend records what it "sent" into this database: `mark_sent(..., delivered=)`
     writes the outbox state and the `delivered` row in one transaction, so a kill leaves either
     both or neither: exactly once.
   * A real modem has an in-doubt window: the modem accepted the SMS or placed the call, and the
     relay was killed before `mark_sent` committed. The row is still 'sending'; on restart
     `resume_in_doubt()` makes it due again and it is re-sent (at-least-once: an alarm must reach
     the guardian; a second copy is the lesser harm). Such a resend shows in the audit as an
     `attempt` with attempt > 1 after an `in_doubt` entry.
3. The owner's cancel (typed on the phone) is stored before it is acted on: `owner_cancel` is
   ONE transaction that cancels the incident, applies the policy (112 report/call withdrawn or
   followed by a cancellation text, each guardian's "cancelled" text queued) and marks the
   device's CANCEL_ALARM pending (`incidents.device_cancel`). The relay sends it only after
   that commit, and again after a restart or reconnection until the device answers
   (`device_cancel_answered`: OK -> 'confirmed', WRONG_STATE/BAD_FIELD -> 'not_active') or
   reports the alarm cancelled itself (-> 'confirmed'; the policy sends nothing twice). The
   incident stays cancelled whatever the device says, or if it never answers.
4. Every timestamp is passed in (`now`, float Unix seconds); nothing here reads the clock, so
   tests control time.

Several processes may open the same file (the relay restarted while a test or a CLI reads it):
WAL lets readers run beside the writer, writers take the lock up front (BEGIN IMMEDIATE) and
wait for each other (busy timeout), and `synchronous=FULL` makes each commit durable.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from jikimi import protocol as p
from jikimi import protocol_json as pj
from jikimi_host.relay import policy
from jikimi_host.relay.dbfile import StoreError, check_before_open, check_integrity, described
from jikimi_host.relay.config import RelayConfig
from jikimi_host.relay.device_clock import DEVICE_EPOCH_UNIX
from jikimi_host.relay.messages import Location

SCHEMA_VERSION = 4
# How long an attempt may take before the row is due again (a backend that hung or a relay
# that died mid-send). resume_in_doubt() skips the wait after a restart.
DEFAULT_SEND_LEASE_S = 120.0

_SCHEMA_V1 = (
    """CREATE TABLE devices (
        address TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        role TEXT,
        first_seen REAL NOT NULL,
        last_seen REAL NOT NULL,
        battery_low INTEGER NOT NULL DEFAULT 0,  -- inside a low-battery episode
        unreachable_since REAL                   -- guardians told; cleared when heard from
    )""",
    """CREATE TABLE events (
        id INTEGER PRIMARY KEY,
        device TEXT NOT NULL REFERENCES devices(address),
        epoch INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        type INTEGER NOT NULL,
        name TEXT NOT NULL,
        fields TEXT NOT NULL,      -- JSON: protocol_json.to_dict(message)
        device_time REAL,          -- Unix seconds; NULL when the device clock was not set
        received_at REAL NOT NULL,
        UNIQUE (device, epoch, seq)
    )""",
    """CREATE TABLE incidents (
        id INTEGER PRIMARY KEY,
        device TEXT NOT NULL REFERENCES devices(address),
        epoch INTEGER NOT NULL,
        alarm_seq INTEGER NOT NULL,
        event_id INTEGER NOT NULL REFERENCES events(id),
        kind TEXT NOT NULL,        -- the trigger: hold, triple_press, pull_pin, door_intrusion, ...
        mode INTEGER,
        trigger INTEGER,
        battery_pct INTEGER,
        occurred_at REAL NOT NULL, -- when it happened (device clock, else receive time)
        raised_at REAL NOT NULL,   -- when the relay learned of it; the cancel window starts here
        cancelled_at REAL,
        cancel_source INTEGER,
        state TEXT NOT NULL CHECK (state IN ('active', 'cancelled')),
        UNIQUE (device, epoch, alarm_seq)
    )""",
    """CREATE TABLE outbox (
        id INTEGER PRIMARY KEY,
        dedup_key TEXT NOT NULL UNIQUE,
        incident_id INTEGER REFERENCES incidents(id),
        event_id INTEGER REFERENCES events(id),
        after_id INTEGER REFERENCES outbox(id),  -- send only after this row was sent
        kind TEXT NOT NULL,
        channel TEXT NOT NULL CHECK (channel IN ('sms', 'call')),
        recipient TEXT NOT NULL,
        recipient_kind TEXT NOT NULL CHECK (recipient_kind IN ('guardian', 'emergency')),
        language TEXT NOT NULL,
        text TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('pending', 'sending', 'sent', 'failed', 'cancelled')),
        attempts INTEGER NOT NULL DEFAULT 0,
        not_before REAL NOT NULL,
        next_attempt_at REAL NOT NULL,
        last_error TEXT,
        created_at REAL NOT NULL,
        sent_at REAL,
        backend_ref TEXT
    )""",
    "CREATE INDEX outbox_due ON outbox (state, next_attempt_at)",
    "CREATE INDEX outbox_incident ON outbox (incident_id)",
    "CREATE INDEX outbox_after ON outbox (after_id)",
    """CREATE TABLE delivered (
        id INTEGER PRIMARY KEY,
        outbox_id INTEGER NOT NULL UNIQUE REFERENCES outbox(id),
        channel TEXT NOT NULL,
        recipient TEXT NOT NULL,
        text TEXT NOT NULL,
        at REAL NOT NULL
    )""",
    """CREATE TABLE audit (
        id INTEGER PRIMARY KEY,
        at REAL NOT NULL,
        action TEXT NOT NULL,
        device TEXT,
        incident_id INTEGER,
        outbox_id INTEGER,
        attempt INTEGER,
        detail TEXT
    )""",
)

# The owner's cancel (the relay's `cancel` command) must reach the device so that its siren
# stops, also after a restart or when the device was out of reach: the incident remembers it.
_SCHEMA_V2 = (
    # NULL: nothing to tell the device (not cancelled by the owner); 'pending': CANCEL_ALARM
    # still to send or unanswered; 'confirmed': the device answered OK or reported the alarm
    # cancelled; 'not_active': the device had no such active alarm (WRONG_STATE, a reboot).
    "ALTER TABLE incidents ADD COLUMN device_cancel TEXT"
    " CHECK (device_cancel IN ('pending', 'confirmed', 'not_active'))",
    "ALTER TABLE incidents ADD COLUMN device_cancel_at REAL",  # when the device answered
    "CREATE INDEX incidents_device_cancel ON incidents (device_cancel)",
)

# Up to version 2 a message could end 'failed' (attempts used up, or an error called permanent):
# nobody would ever try it again. A live incident's failed messages are due again at once; those
# of an incident that is over (and messages of no incident) stay as they were, as history.
_SCHEMA_V3 = (
    "INSERT INTO audit (at, action, incident_id, outbox_id, detail)"
    " SELECT CAST(strftime('%s', 'now') AS REAL), 'revived', incident_id, id,"
    " 'failed for good by an older relay while its alarm is live: trying again' FROM outbox"
    " WHERE state = 'failed' AND incident_id IN (SELECT id FROM incidents WHERE state = 'active')",
    "UPDATE outbox SET state = 'pending', next_attempt_at = 0 WHERE state = 'failed'"
    " AND incident_id IN (SELECT id FROM incidents WHERE state = 'active')",
)

# While an alarm is live the guardians get the owner's new position (policy.location_update): the
# incident remembers what they were last given, so that a restart neither repeats nor skips one.
_SCHEMA_V4 = (
    "ALTER TABLE incidents ADD COLUMN location_sent TEXT",  # JSON (messages.Location); NULL: none
    "ALTER TABLE incidents ADD COLUMN location_sent_at REAL",  # when it was queued
    "ALTER TABLE incidents ADD COLUMN location_updates INTEGER NOT NULL DEFAULT 0",
    "UPDATE incidents SET location_sent_at = raised_at",
)

# version -> statements that bring the schema from version-1 to version. Add a migration by
# appending to this dict and raising SCHEMA_VERSION; never edit a released one.
MIGRATIONS: dict[int, tuple[str, ...]] = {1: _SCHEMA_V1, 2: _SCHEMA_V2, 3: _SCHEMA_V3, 4: _SCHEMA_V4}

_ROLE_NAMES = ((p.ROLE_PANIC, "panic"), (p.ROLE_DOOR, "door"), (p.ROLE_PULL_PIN, "pull_pin"))


@dataclass(frozen=True)
class RecordResult:
    new: bool  # False: a duplicate delivery ("already had it"); ack it again, nothing else
    incident_id: int | None
    outbox_ids: tuple[int, ...]
    event_id: int | None = None
    device_cancel_confirmed: bool = False  # it confirmed an owner's cancel the device had not answered


@dataclass(frozen=True)
class DeliveredRecord:
    """What a backend that records into this database (the sim) delivered."""

    channel: str
    recipient: str
    text: str


@dataclass(frozen=True)
class Delivered:
    id: int
    outbox_id: int
    channel: str
    recipient: str
    text: str
    at: float


@dataclass(frozen=True)
class OutboxRow:
    id: int
    dedup_key: str
    incident_id: int | None
    event_id: int | None
    after_id: int | None
    kind: str
    channel: str
    recipient: str
    recipient_kind: str
    language: str
    text: str
    state: str
    attempts: int
    not_before: float
    next_attempt_at: float
    last_error: str | None
    created_at: float
    sent_at: float | None
    backend_ref: str | None


@dataclass(frozen=True)
class IncidentRow:
    id: int
    device: str
    epoch: int
    alarm_seq: int
    event_id: int
    kind: str
    mode: int | None
    trigger: int | None
    battery_pct: int | None
    occurred_at: float
    raised_at: float
    cancelled_at: float | None
    cancel_source: int | None
    state: str
    device_cancel: str | None = None  # the owner's CANCEL_ALARM to the device, see _SCHEMA_V2
    device_cancel_at: float | None = None
    location_sent: str | None = None  # the guardians' last location (JSON), see _SCHEMA_V4
    location_sent_at: float | None = None
    location_updates: int = 0

    @property
    def location(self) -> Location | None:
        """The location the guardians were last given (None: "unavailable")."""
        return _location_from_json(self.location_sent)


@dataclass(frozen=True)
class OwnerCancel:
    """What `owner_cancel` did: the incident is cancelled at the relay (committed) either way."""

    incident_id: int
    device: str
    epoch: int
    alarm_seq: int
    new: bool  # False: it was already cancelled (by the device or an earlier cancel)
    outbox_ids: tuple[int, ...]  # the "cancelled" texts (and a 112 cancellation) it queued
    device_cancel: str | None  # 'pending' until the device answers


@dataclass(frozen=True)
class EventRow:
    id: int
    device: str
    epoch: int
    seq: int
    type: int
    name: str
    fields: dict
    device_time: float | None
    received_at: float


@dataclass(frozen=True)
class AuditEntry:
    id: int
    at: float
    action: str
    device: str | None
    incident_id: int | None
    outbox_id: int | None
    attempt: int | None
    detail: str | None


@dataclass(frozen=True)
class UnreachableDevice:
    address: str
    name: str
    last_seen: float
    newly: bool  # found silent by this call: its guardians were texted now
    outbox_ids: tuple[int, ...]


class RelayStore:
    """The relay's database. One instance per process (or thread); many may share a file."""

    def __init__(self, path: str | Path, config: RelayConfig, *, send_lease_s: float = DEFAULT_SEND_LEASE_S) -> None:
        self.path = Path(path)
        self.config = config
        self.send_lease_s = send_lease_s
        self._lock = threading.RLock()
        check_before_open(self.path)  # an emptied or overwritten file is never taken for a new one
        try:
            # isolation_level=None: we issue BEGIN ourselves, so every transaction is explicit.
            self._db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as err:
            raise described(self.path, err) from None
        self._db.row_factory = sqlite3.Row
        try:
            check_integrity(self.path, self._db)
            self._db.execute("PRAGMA busy_timeout = 30000")
            mode = self._db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise StoreError(f"{self.path}: cannot switch to WAL journaling (got {mode!r})")
            self._db.execute("PRAGMA synchronous = FULL")
            self._db.execute("PRAGMA foreign_keys = ON")
            self._migrate()
        except sqlite3.Error as err:
            self._db.close()
            raise described(self.path, err) from None
        except BaseException:
            self._db.close()
            raise

    # --- lifecycle -------------------------------------------------------------------------

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> RelayStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction; the write lock is taken at BEGIN so two relays never interleave."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                except BaseException:
                    if self._db.in_transaction:
                        self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            except sqlite3.Error as err:
                # disk full, read-only, an I/O error: nothing of this transaction is kept
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise described(self.path, err) from None

    def _migrate(self) -> None:
        with self._transaction() as db:
            db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = db.execute("SELECT version FROM schema_version").fetchone()
            current = row[0] if row else 0
            if current > SCHEMA_VERSION:
                raise StoreError(
                    f"{self.path}: schema version {current} is newer than this relay's {SCHEMA_VERSION}; update the relay"
                )
            for version in range(current + 1, SCHEMA_VERSION + 1):
                for statement in MIGRATIONS[version]:
                    db.execute(statement)
            if row is None:
                db.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
            elif current != SCHEMA_VERSION:
                db.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION,))

    def schema_version(self) -> int:
        with self._lock:
            return self._db.execute("SELECT version FROM schema_version").fetchone()[0]

    # --- receiving -------------------------------------------------------------------------

    def record_event(
        self,
        device: str,
        msg: p.Message,
        now: float,
        *,
        device_name: str | None = None,
        location: Location | None = None,
    ) -> RecordResult:
        """Store event `msg` from `device` and everything it causes, in one transaction.

        Ack the event to the device only after this returns. `location`: the phone's current
        fix (default: the config's fixed location, which stands in for GPS in the sim).
        """
        if msg.klass != "event":
            raise ValueError(f"only events are recorded, not {msg.name}")
        device_time = msg.time + DEVICE_EPOCH_UNIX if getattr(msg, "time", 0) else None
        with self._transaction() as db:
            state = self._touch_device(db, device, now, device_name)
            cursor = db.execute(
                "INSERT OR IGNORE INTO events (device, epoch, seq, type, name, fields, device_time, received_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (device, msg.epoch, msg.seq, msg.type, msg.name, json.dumps(pj.to_dict(msg), sort_keys=True),
                 device_time, now),
            )
            if cursor.rowcount == 0:
                self._audit(db, now, "duplicate_event", device=device, detail=f"{msg.name} epoch {msg.epoch} seq {msg.seq}")
                incident = db.execute(
                    "SELECT id FROM incidents WHERE device = ? AND epoch = ? AND alarm_seq = ?",
                    (device, msg.epoch, msg.seq),
                ).fetchone()
                return RecordResult(False, incident[0] if incident else None, ())
            event_id = cursor.lastrowid
            self._audit(db, now, "event", device=device, detail=f"{msg.name} epoch {msg.epoch} seq {msg.seq}")
            incident = None
            confirmed = False
            if msg.type == p.ALARM_CANCELLED:
                incident = self._incident_state(db, device, msg.epoch, msg.alarm_seq)
                if incident is not None:
                    # the device's alarm is over: an owner's cancel needs sending no more
                    cursor = db.execute(
                        "UPDATE incidents SET device_cancel = 'confirmed', device_cancel_at = ?"
                        " WHERE id = ? AND device_cancel IN ('pending', 'not_active')", (now, incident.id))
                    if cursor.rowcount:
                        confirmed = True
                        self._audit(db, now, "device_cancel", device=device, incident_id=incident.id,
                                    detail="alarm_cancelled from the device: confirmed")
            context = policy.EventContext(
                device=device,
                device_name=state.name,
                message=msg,
                occurred_at=device_time if device_time is not None else now,
                occurred_at_is_receive_time=device_time is None,
                received_at=now,
                location=location if location is not None else self.config.location,
            )
            decision = policy.decide(context, self.config, state, incident)
            incident_id = incident.id if incident else None
            if decision.open_incident is not None:
                opened = decision.open_incident
                incident_id = db.execute(
                    "INSERT INTO incidents (device, epoch, alarm_seq, event_id, kind, mode, trigger, battery_pct,"
                    " occurred_at, raised_at, state, location_sent, location_sent_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'active', ?, ?)",
                    (device, msg.epoch, msg.seq, event_id, opened.kind, opened.mode, opened.trigger,
                     opened.battery_pct, opened.occurred_at, opened.raised_at, _location_json(context.location),
                     now),
                ).lastrowid
                self._audit(db, now, "incident_opened", device=device, incident_id=incident_id, detail=opened.kind)
            outbox_ids = self._apply(db, decision, now, device, incident_id, event_id)
            return RecordResult(True, incident_id, outbox_ids, event_id, confirmed)

    def guardian_texts_of(self, device: str, msg: p.Message, now: float, device_name: str,
                          location: Location | None) -> list[policy.NewRow]:
        """The guardians' texts a new alarm `msg` causes, decided without the database (nothing is
        read or written): for when it cannot be written (service.py sends them from memory)."""
        if msg.type != p.ALARM_RAISED:
            return []
        device_time = msg.time + DEVICE_EPOCH_UNIX if getattr(msg, "time", 0) else None
        context = policy.EventContext(
            device=device, device_name=device_name, message=msg,
            occurred_at=device_time if device_time is not None else now,
            occurred_at_is_receive_time=device_time is None, received_at=now,
            location=location if location is not None else self.config.location,
        )
        return [row for row in policy.raise_alarm(context, self.config).enqueue if row.recipient_kind == "guardian"]

    def owner_cancel(self, incident_id: int, now: float) -> OwnerCancel:
        """The owner typed `cancel`: cancel the incident HERE, in one transaction, before the
        device is told (a relay killed right after still has it cancelled when it restarts).

        The policy's consequences are in the same commit: pending 112 report/call rows are
        withdrawn, each guardian's "cancelled" text is queued (a 112 cancellation text too if
        112 was already told). The incident is marked `device_cancel = 'pending'`: the relay
        sends CANCEL_ALARM whenever the device is connected until it answers
        (`device_cancel_answered`) or reports the alarm cancelled itself. Cancelling an incident
        that is already cancelled queues nothing again (new=False); the device's own
        `alarm_cancelled` arriving later changes nothing either.
        """
        with self._transaction() as db:
            row = db.execute("SELECT * FROM incidents WHERE id = ?", (incident_id,)).fetchone()
            if row is None:
                raise KeyError(f"no incident {incident_id}")
            was_active = row["state"] == "active"
            incident = self._incident_state(db, row["device"], row["epoch"], row["alarm_seq"])
            assert incident is not None
            decision = policy.cancel_alarm(incident, self.config, cancelled_at=now, now=now, source=p.SOURCE_PHONE)
            ids = self._apply(db, decision, now, row["device"], incident_id, None)
            device_cancel = row["device_cancel"]
            if was_active:
                device_cancel = "pending"
                db.execute("UPDATE incidents SET device_cancel = 'pending', device_cancel_at = NULL WHERE id = ?",
                           (incident_id,))
                self._audit(db, now, "owner_cancel", device=row["device"], incident_id=incident_id,
                            detail="recorded; CANCEL_ALARM to the device pending")
            return OwnerCancel(incident_id, row["device"], row["epoch"], row["alarm_seq"], was_active, ids,
                               device_cancel)

    def location_update(self, incident_id: int, fix: Location, now: float, every_s: float) -> tuple[int, ...]:
        """Queue the guardians' `location_update` texts for a live incident if it is due one
        (policy.location_update with the latest current `fix`), and remember the location they
        are given, in one transaction. Returns the new outbox ids (none: nothing was due)."""
        with self._transaction() as db:
            row = db.execute("SELECT device, epoch, alarm_seq FROM incidents WHERE id = ?", (incident_id,)).fetchone()
            if row is None:
                raise KeyError(f"no incident {incident_id}")
            incident = self._incident_state(db, row["device"], row["epoch"], row["alarm_seq"])
            assert incident is not None
            decision = policy.location_update(incident, self.config, fix, now, every_s)
            if not decision.enqueue:
                return ()
            ids = self._apply(db, decision, now, row["device"], incident_id, None)
            db.execute("UPDATE incidents SET location_sent = ?, location_sent_at = ?,"
                       " location_updates = location_updates + 1 WHERE id = ?", (_location_json(fix), now, incident_id))
            self._audit(db, now, "location_update", device=row["device"], incident_id=incident_id,
                        detail=f"{fix.lat:.5f},{fix.lon:.5f} to {len(ids)} guardian(s)")
            return ids

    def report_where_she_is_now(self, outbox_id: int, location: Location, now: float) -> str:
        """Before the FIRST attempt of 112's report (claimed: 'sending', attempts 1), rewrite it
        with `location`, her current measured fix (policy.emergency_report_at_send). Returns the
        text to send: the new one, or the row's own for any other row (a resend after a failure
        or a restart sends the words already tried)."""
        with self._transaction() as db:
            row = db.execute("SELECT o.*, i.device, i.epoch, i.alarm_seq FROM outbox o LEFT JOIN incidents i"
                             " ON i.id = o.incident_id WHERE o.id = ?", (outbox_id,)).fetchone()
            if row is None:
                raise KeyError(f"no outbox row {outbox_id}")
            if row["kind"] != "emergency_report" or row["state"] != "sending" or row["attempts"] != 1:
                return row["text"]
            incident = self._incident_state(db, row["device"], row["epoch"], row["alarm_seq"])
            assert incident is not None
            text = policy.emergency_report_at_send(incident, self.config, row["language"], location)
            if text != row["text"]:
                db.execute("UPDATE outbox SET text = ? WHERE id = ?", (text, outbox_id))
                self._audit(db, now, "report_location", device=row["device"], incident_id=row["incident_id"],
                            outbox_id=outbox_id, detail=f"where she is now: {location.lat:.5f},{location.lon:.5f}")
            return text

    def active_incidents(self) -> list[IncidentRow]:
        return [IncidentRow(**r) for r in self._select("incidents", "state = 'active'")]

    def active_incident(self, device: str) -> IncidentRow | None:
        """The device's latest incident that is still active (the one `cancel` means)."""
        rows = self._select("incidents", "device = ? AND state = 'active'", (device,))
        return IncidentRow(**rows[-1]) if rows else None

    def pending_device_cancels(self, device: str | None = None) -> list[IncidentRow]:
        """Incidents the owner cancelled whose device has not answered CANCEL_ALARM yet."""
        if device is None:
            rows = self._select("incidents", "device_cancel = 'pending'")
        else:
            rows = self._select("incidents", "device_cancel = 'pending' AND device = ?", (device,))
        return [IncidentRow(**r) for r in rows]

    def device_cancel_answered(self, device: str, epoch: int, alarm_seq: int, code: int, now: float) -> str | None:
        """The device's RESULT to CANCEL_ALARM for this alarm. Returns the new `device_cancel`
        ('confirmed' for E_OK; 'not_active' for WRONG_STATE or BAD_FIELD: it has no such active
        alarm, e.g. after a reboot), or None: nothing changed (another code: sent again later;
        or the answer was already known). The incident stays cancelled at the relay either way.
        """
        if code == p.E_OK:
            state = "confirmed"
        elif code in (p.E_WRONG_STATE, p.E_BAD_FIELD):
            state = "not_active"
        else:
            return None
        with self._transaction() as db:
            row = db.execute(
                "SELECT id FROM incidents WHERE device = ? AND epoch = ? AND alarm_seq = ? AND device_cancel = 'pending'",
                (device, epoch, alarm_seq),
            ).fetchone()
            if row is None:
                return None
            db.execute("UPDATE incidents SET device_cancel = ?, device_cancel_at = ? WHERE id = ?", (state, now, row[0]))
            self._audit(db, now, "device_cancel", device=device, incident_id=row[0],
                        detail=f"{p.error_name(code)}: {state}")
            return state

    def find_incident(self, device: str, epoch: int, alarm_seq: int) -> IncidentRow | None:
        with self._lock:
            row = self._db.execute(
                "SELECT * FROM incidents WHERE device = ? AND epoch = ? AND alarm_seq = ?", (device, epoch, alarm_seq)
            ).fetchone()
        return IncidentRow(**dict(row)) if row else None

    # --- heartbeat -------------------------------------------------------------------------

    def mark_contact(self, device: str, now: float, *, name: str | None = None, roles: int | None = None) -> None:
        """The device was heard from (a STATUS heartbeat, a connection). Ends an unreachable spell."""
        with self._transaction() as db:
            self._touch_device(db, device, now, name)
            if roles is not None:
                role = ",".join(label for bit, label in _ROLE_NAMES if roles & bit) or None
                db.execute("UPDATE devices SET role = ? WHERE address = ?", (role, device))

    def unreachable_devices(self, now: float) -> list[UnreachableDevice]:
        """Devices silent for longer than `unreachable_after_s`.

        The first call that finds a device silent enqueues ONE `unreachable` text per guardian
        (same transaction) and marks it; later calls list it with `newly=False` and send nothing
        until `mark_contact`/`record_event` hears from it again.
        """
        out = []
        with self._transaction() as db:
            rows = db.execute(
                "SELECT * FROM devices WHERE last_seen < ? ORDER BY address", (now - self.config.unreachable_after_s,)
            ).fetchall()
            for row in rows:
                if row["unreachable_since"] is not None:
                    out.append(UnreachableDevice(row["address"], row["name"], row["last_seen"], False, ()))
                    continue
                db.execute("UPDATE devices SET unreachable_since = ? WHERE address = ?", (now, row["address"]))
                self._audit(db, now, "unreachable", device=row["address"], detail=f"silent since {row['last_seen']}")
                state = policy.DeviceState(row["address"], row["name"], bool(row["battery_low"]))
                decision = policy.Decision(enqueue=policy.unreachable(state, row["last_seen"], self.config, now))
                ids = self._apply(db, decision, now, row["address"], None, None)
                out.append(UnreachableDevice(row["address"], row["name"], row["last_seen"], True, ids))
        return out

    # --- sending ---------------------------------------------------------------------------

    def due(self, now: float, limit: int = 10) -> list[OutboxRow]:
        """Rows to send now: guardian texts first (they matter most and are cheap), then by age.

        A row waits for its `not_before` (the cancel window), its `next_attempt_at` (backoff or
        an attempt in flight), and its `after_id` row being sent (a cancellation never overtakes
        its alarm).
        """
        with self._lock:
            rows = self._db.execute(
                """SELECT o.* FROM outbox o
                   WHERE o.state IN ('pending', 'sending') AND o.not_before <= ? AND o.next_attempt_at <= ?
                     AND (o.after_id IS NULL OR (SELECT a.state FROM outbox a WHERE a.id = o.after_id) = 'sent')
                   ORDER BY CASE WHEN o.recipient_kind = 'guardian' AND o.channel = 'sms' THEN 0 ELSE 1 END, o.id
                   LIMIT ?""",
                (now, now, limit),
            ).fetchall()
        return [OutboxRow(**dict(row)) for row in rows]

    def begin_attempt(self, outbox_id: int, now: float) -> bool:
        """Claim a due row for one attempt (commit before handing it to the backend).

        False if it is no longer sendable (cancelled or sent meanwhile): do not send it.
        """
        with self._transaction() as db:
            cursor = db.execute(
                "UPDATE outbox SET state = 'sending', attempts = attempts + 1, next_attempt_at = ?"
                " WHERE id = ? AND state IN ('pending', 'sending')",
                (now + self.send_lease_s, outbox_id),
            )
            if cursor.rowcount == 0:
                return False
            attempts = db.execute("SELECT attempts FROM outbox WHERE id = ?", (outbox_id,)).fetchone()[0]
            self._audit(db, now, "attempt", outbox_id=outbox_id, attempt=attempts,
                        detail="resend" if attempts > 1 else None)
            return True

    def mark_sent(
        self, outbox_id: int, now: float, backend_ref: str | None = None, delivered: DeliveredRecord | None = None
    ) -> bool:
        """The backend sent the row. `delivered` (sim backend) is recorded in the same transaction.

        False if it was already marked sent (nothing recorded twice).
        """
        with self._transaction() as db:
            row = db.execute("SELECT state, attempts FROM outbox WHERE id = ?", (outbox_id,)).fetchone()
            if row is None:
                raise KeyError(f"no outbox row {outbox_id}")
            if row["state"] == "sent":
                return False
            db.execute(
                "UPDATE outbox SET state = 'sent', sent_at = ?, backend_ref = ?, last_error = NULL WHERE id = ?",
                (now, backend_ref, outbox_id),
            )
            if delivered is not None:
                db.execute(
                    "INSERT INTO delivered (outbox_id, channel, recipient, text, at) VALUES (?, ?, ?, ?, ?)",
                    (outbox_id, delivered.channel, delivered.recipient, delivered.text, now),
                )
            detail = backend_ref
            if row["state"] != "sending":
                detail = f"{backend_ref or ''} (was {row['state']})".strip()
            self._audit(db, now, "sent", outbox_id=outbox_id, attempt=row["attempts"], detail=detail)
            return True

    def mark_failed(self, outbox_id: int, now: float, error: str, retryable: bool = True) -> str:
        """The attempt failed. Returns the row's new state: 'pending', or 'cancelled' for a 112 row
        of a cancelled incident (never sent now; rows following it are cancelled too).

        Nothing else ends a message: it is due again after min(retry_base_s * 2**(attempts-1),
        retry_max_s), or after retry_max_s at once when the backend says retrying will not help
        (`retryable` False: no SIM, a refused number, a PDU it rejects). Such a cause can be
        mended while the incident is live, and the owner learns of it from `overdue()`.
        """
        retry = self.config.retry
        with self._transaction() as db:
            row = db.execute(
                "SELECT o.state, o.attempts, o.kind, o.recipient_kind, i.state AS incident_state FROM outbox o"
                " LEFT JOIN incidents i ON i.id = o.incident_id WHERE o.id = ?",
                (outbox_id,),
            ).fetchone()
            if row is None:
                raise KeyError(f"no outbox row {outbox_id}")
            if row["state"] not in ("pending", "sending"):
                self._audit(db, now, "late_failure", outbox_id=outbox_id, detail=f"{error} (row is {row['state']})")
                return row["state"]
            attempts = row["attempts"]
            moot = row["recipient_kind"] == "emergency" or row["kind"] == "location_update"
            if moot and row["incident_state"] == "cancelled":
                self._audit(db, now, "cancelled", outbox_id=outbox_id, attempt=attempts,
                            detail=f"{error}; not retried: the alarm was cancelled")
                db.execute("UPDATE outbox SET state = 'cancelled', last_error = ? WHERE id = ?", (error, outbox_id))
                self._cancel_followers(db, outbox_id, now)
                return "cancelled"
            delay = retry.delay_s(attempts) if retryable else retry.max_s
            db.execute(
                "UPDATE outbox SET state = 'pending', next_attempt_at = ?, last_error = ? WHERE id = ?",
                (now + delay, error, outbox_id),
            )
            why = "" if retryable else " (the backend calls it permanent: the longest wait, not an end)"
            self._audit(db, now, "retry", outbox_id=outbox_id, attempt=attempts,
                        detail=f"{error}; next in {delay:g} s{why}")
            return "pending"

    def owner_stop(self, outbox_id: int, now: float) -> str:
        """The owner stops the relay trying one message (`stop N`: a guardian's number that no
        longer works, say). A pending row is cancelled, with what was to follow it (its
        "cancelled" text). Returns the row's state before: 'pending' (now stopped), 'sending' (in
        flight: nothing changed), or 'sent'/'cancelled'/'failed' (nothing to stop). KeyError: no
        such message."""
        with self._transaction() as db:
            row = db.execute("SELECT state, incident_id FROM outbox WHERE id = ?", (outbox_id,)).fetchone()
            if row is None:
                raise KeyError(f"no message {outbox_id}")
            if row["state"] == "pending":
                db.execute("UPDATE outbox SET state = 'cancelled' WHERE id = ?", (outbox_id,))
                self._audit(db, now, "stopped", incident_id=row["incident_id"], outbox_id=outbox_id,
                            detail="the owner stopped it")
                self._cancel_followers(db, outbox_id, now)
            return row["state"]

    def overdue(self, now: float) -> list[OutboxRow]:
        """Rows still not sent `retry.overdue_after_s` after they were due (failing, or waiting on
        one that fails), oldest first. They are still retried; this is what to tell the owner."""
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM outbox WHERE state IN ('pending', 'sending') AND not_before <= ? ORDER BY not_before, id",
                (now - self.config.retry.overdue_after_s,),
            ).fetchall()
        return [OutboxRow(**dict(row)) for row in rows]

    def resume_in_doubt(self, now: float) -> list[int]:
        """Call once at start-up: rows left 'sending' by a killed relay are due again at once.

        With the sim backend nothing was delivered (delivery commits with mark_sent). With a
        modem the text may have gone out: it is re-sent (at-least-once) and the audit shows it.
        """
        with self._transaction() as db:
            ids = [r[0] for r in db.execute("SELECT id FROM outbox WHERE state = 'sending' ORDER BY id")]
            for outbox_id in ids:
                db.execute("UPDATE outbox SET next_attempt_at = ? WHERE id = ?", (now, outbox_id))
                self._audit(db, now, "in_doubt", outbox_id=outbox_id,
                            detail="relay stopped during an attempt; will resend (possible duplicate)")
            return ids

    # --- reading ---------------------------------------------------------------------------

    def outbox(self, state: str | None = None) -> list[OutboxRow]:
        return [OutboxRow(**r) for r in self._select("outbox", "state = ?" if state else None, (state,) if state else ())]

    def outbox_row(self, outbox_id: int) -> OutboxRow:
        rows = self._select("outbox", "id = ?", (outbox_id,))
        if not rows:
            raise KeyError(f"no outbox row {outbox_id}")
        return OutboxRow(**rows[0])

    def incidents(self) -> list[IncidentRow]:
        return [IncidentRow(**r) for r in self._select("incidents")]

    def events(self) -> list[EventRow]:
        return [EventRow(**{**r, "fields": json.loads(r["fields"])}) for r in self._select("events")]

    def delivered(self) -> list[Delivered]:
        return [Delivered(**r) for r in self._select("delivered")]

    def audit_log(self) -> list[AuditEntry]:
        return [AuditEntry(**r) for r in self._select("audit")]

    def devices(self) -> list[dict]:
        return self._select("devices")

    def _select(self, table: str, where: str | None = None, args: tuple = ()) -> list[dict]:
        sql = f"SELECT * FROM {table}" + (f" WHERE {where}" if where else "") + " ORDER BY rowid"
        with self._lock:
            return [dict(row) for row in self._db.execute(sql, args).fetchall()]

    # --- inside transactions ---------------------------------------------------------------

    def _touch_device(self, db: sqlite3.Connection, address: str, now: float, name: str | None) -> policy.DeviceState:
        row = db.execute("SELECT * FROM devices WHERE address = ?", (address,)).fetchone()
        name = name or self.config.device_name(address) or (row["name"] if row else None) or address
        if row is None:
            db.execute(
                "INSERT INTO devices (address, name, first_seen, last_seen) VALUES (?, ?, ?, ?)",
                (address, name, now, now),
            )
            self._audit(db, now, "device_seen", device=address, detail=name)
            return policy.DeviceState(address, name, False)
        db.execute(
            "UPDATE devices SET name = ?, last_seen = MAX(last_seen, ?), unreachable_since = NULL WHERE address = ?",
            (name, now, address),
        )
        if row["unreachable_since"] is not None:
            self._audit(db, now, "contact_restored", device=address)
        return policy.DeviceState(address, name, bool(row["battery_low"]))

    def _incident_state(self, db: sqlite3.Connection, device: str, epoch: int, alarm_seq: int) -> policy.IncidentState | None:
        row = db.execute(
            "SELECT i.*, d.name AS device_name, e.device_time IS NULL AS at_receive_time FROM incidents i"
            " JOIN devices d ON d.address = i.device JOIN events e ON e.id = i.event_id"
            " WHERE i.device = ? AND i.epoch = ? AND i.alarm_seq = ?",
            (device, epoch, alarm_seq),
        ).fetchone()
        if row is None:
            return None
        rows = tuple(
            policy.OutboxState(r["id"], r["kind"], r["channel"], r["recipient"], r["recipient_kind"], r["language"], r["state"])
            for r in db.execute("SELECT * FROM outbox WHERE incident_id = ? ORDER BY id", (row["id"],))
        )
        return policy.IncidentState(
            row["id"], device, row["device_name"], epoch, alarm_seq, row["mode"], row["trigger"],
            row["occurred_at"], row["state"], rows, _location_from_json(row["location_sent"]),
            row["location_sent_at"], row["location_updates"], row["battery_pct"], bool(row["at_receive_time"]),
        )

    def _apply(
        self, db: sqlite3.Connection, decision: policy.Decision, now: float, device: str,
        incident_id: int | None, event_id: int | None,
    ) -> tuple[int, ...]:
        """Write what the policy decided; the ids of the outbox rows it inserted."""
        if decision.cancel_incident and incident_id is not None:
            db.execute(
                "UPDATE incidents SET state = 'cancelled', cancelled_at = ?, cancel_source = ? WHERE id = ?",
                (now, decision.cancel_source, incident_id),
            )
            self._audit(db, now, "incident_cancelled", device=device, incident_id=incident_id,
                        detail=f"source {decision.cancel_source}")
        for outbox_id in decision.cancel_row_ids:
            cursor = db.execute("UPDATE outbox SET state = 'cancelled' WHERE id = ? AND state = 'pending'", (outbox_id,))
            if cursor.rowcount:
                self._audit(db, now, "cancelled", device=device, incident_id=incident_id, outbox_id=outbox_id,
                            detail=decision.cancel_reason)
                self._cancel_followers(db, outbox_id, now)
        ids = []
        for row in decision.enqueue:
            cursor = db.execute(
                "INSERT OR IGNORE INTO outbox (dedup_key, incident_id, event_id, after_id, kind, channel, recipient,"
                " recipient_kind, language, text, state, attempts, not_before, next_attempt_at, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending', 0, ?, ?, ?)",
                (row.dedup_key, incident_id, event_id, row.after_id, row.kind, row.channel, row.recipient,
                 row.recipient_kind, row.language, row.text, row.not_before, row.not_before, now),
            )
            if cursor.rowcount:
                ids.append(cursor.lastrowid)
                self._audit(db, now, "enqueued", device=device, incident_id=incident_id, outbox_id=cursor.lastrowid,
                            detail=row.dedup_key)
            else:
                self._audit(db, now, "already_enqueued", device=device, incident_id=incident_id, detail=row.dedup_key)
        if decision.battery_low is not None:
            db.execute("UPDATE devices SET battery_low = ? WHERE address = ?", (int(decision.battery_low), device))
            self._audit(db, now, "battery_low" if decision.battery_low else "battery_recovered", device=device)
        for note in decision.notes:
            self._audit(db, now, "note", device=device, incident_id=incident_id, detail=note)
        return tuple(ids)

    def _cancel_followers(self, db: sqlite3.Connection, outbox_id: int, now: float) -> None:
        """Rows waiting on `outbox_id`, which will now never be sent, are cancelled too."""
        followers = [r[0] for r in db.execute("SELECT id FROM outbox WHERE after_id = ? AND state = 'pending'", (outbox_id,))]
        for follower in followers:
            db.execute("UPDATE outbox SET state = 'cancelled' WHERE id = ?", (follower,))
            self._audit(db, now, "cancelled", outbox_id=follower, detail=f"row {outbox_id} it follows will not be sent")
            self._cancel_followers(db, follower, now)

    def _audit(
        self, db: sqlite3.Connection, now: float, action: str, *, device: str | None = None,
        incident_id: int | None = None, outbox_id: int | None = None, attempt: int | None = None,
        detail: str | None = None,
    ) -> None:
        db.execute(
            "INSERT INTO audit (at, action, device, incident_id, outbox_id, attempt, detail) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (now, action, device, incident_id, outbox_id, attempt, detail),
        )


def _location_json(location: Location | None) -> str | None:
    return None if location is None else json.dumps(dataclasses.asdict(location), sort_keys=True)


def _location_from_json(text: str | None) -> Location | None:
    return None if text is None else Location(**json.loads(text))
