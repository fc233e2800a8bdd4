"""The escalation policy: which texts and calls an event causes. Pure functions, no I/O.

The store calls these *inside* the transaction that records the event, and inserts what they
return in that same transaction: an event is never stored without its consequences, nor the
other way round. Every outbox row gets a dedup key naming its cause and its recipient
(`alarm:<device>:<epoch>:<seq>:sms:<number>`), so no cause can text anyone twice.

Rules (the timings come from config.py):

- `alarm_raised` (loud or silent, any trigger): at once an SMS to every guardian in their
  language (`door_intrusion` wording for a door intrusion, `alarm` otherwise); a 112 text report
  (if `emergency_sms`) and a 112 voice call (if `emergency_call`), both held until
  `raised_at + cancel_window_s`. The SMS and the call are independent rows: one failing never
  stops the other.
- `alarm_cancelled` (from the device, or the phone via `cancel`): the incident is cancelled.
  * Guardians: every guardian whose alarm text was sent *or is still pending* gets a
    `cancelled` text, held until their alarm text has gone out (`after_id`). We do not withdraw
    a pending alarm text: it may already be in flight (in doubt) and a guardian who gets a
    "cancelled" must have had the alarm first. (No text fails for good: the outbox retries it
    until it is sent. A 'failed' row, left by an older relay, is history: no cancellation
    follows it.)
  * 112: pending report/call rows are cancelled, so nothing reaches 112. If a report or call
    was already sent, or is in flight (in doubt), 112 gets an `emergency_cancelled` text after
    it. That text goes as SMS even when `emergency_sms` is off: it is the only channel left.
- while the bell's alarm is live (`location_update`, called by the relay every few seconds with
  the latest measured fix): once `location.update_every_s` has passed since the last location the
  guardians were given, and the owner is now farther from it than the new fix's accuracy, every
  guardian whose alarm text was sent or is pending gets a `location_update` text, after that
  alarm text. When they were given no measured current location (none, only a last known one,
  or the config's fixed point), the first measured fix goes at once. A newer update supersedes
  an older one still pending (only the newest position matters); a cancel withdraws a pending
  one. A door intrusion gets none: it happens at the door, wherever her phone is.
- `battery` with `low=1`: a `low_battery` text to guardians, once per low episode (the episode
  ends with a `battery` event with `low=0`). Nothing goes to 112.
- a device silent longer than `unreachable_after_s`: one `unreachable` text per guardian until
  it is heard from again. Nothing goes to 112.
- `door_opened`/`door_closed` (an intrusion comes as `alarm_raised`), `armed`, `disarmed`,
  `alarm_acked`, `siren_silenced`, `tamper` (unless it comes as an alarm), unknown events: stored
  only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from jikimi import protocol as p
from jikimi_host.relay.config import RelayConfig
from jikimi_host.relay.messages import Facts, Location, render

# Outbox row states that mean "this text may have reached (or will reach) its recipient".
_WILL_REACH = ("pending", "sending", "sent")
_MAY_HAVE_REACHED = ("sending", "sent")

_TRIGGER_NAMES = {
    p.TRIGGER_HOLD: "hold",
    p.TRIGGER_TRIPLE_PRESS: "triple_press",
    p.TRIGGER_PULL_PIN: "pull_pin",
    p.TRIGGER_DOOR_INTRUSION: "door_intrusion",
    p.TRIGGER_TAMPER: "tamper",
}


@dataclass(frozen=True)
class EventContext:
    """A new (not duplicate) event, as the store hands it to the policy."""

    device: str  # the device's identity address
    device_name: str
    message: p.Message
    occurred_at: float  # the device clock, or the receive time if the device clock was not set
    occurred_at_is_receive_time: bool
    received_at: float
    location: Location | None


@dataclass(frozen=True)
class DeviceState:
    address: str
    name: str
    battery_low: bool = False


@dataclass(frozen=True)
class OutboxState:
    id: int
    kind: str
    channel: str
    recipient: str
    recipient_kind: str
    language: str
    state: str


@dataclass(frozen=True)
class IncidentState:
    """An alarm the store knows, with the outbox rows it caused."""

    id: int
    device: str
    device_name: str
    epoch: int
    alarm_seq: int
    mode: int | None
    trigger: int | None
    occurred_at: float
    state: str  # 'active' | 'cancelled'
    rows: tuple[OutboxState, ...] = ()
    # the location the guardians were last given (None: "unavailable"), when, and how many
    # updates followed the alarm text
    location_sent: Location | None = None
    location_sent_at: float | None = None
    location_updates: int = 0
    battery_pct: int | None = None
    occurred_at_is_receive_time: bool = False


@dataclass(frozen=True)
class NewRow:
    """An outbox row to insert. `after_id`: an existing row that must be sent first."""

    dedup_key: str
    kind: str
    channel: str  # 'sms' | 'call'
    recipient: str
    recipient_kind: str  # 'guardian' | 'emergency'
    language: str
    text: str
    not_before: float
    after_id: int | None = None


@dataclass(frozen=True)
class NewIncident:
    kind: str  # the trigger's name
    mode: int | None
    trigger: int | None
    battery_pct: int | None
    occurred_at: float
    raised_at: float  # when the relay learned of it: the cancel window starts here


@dataclass
class Decision:
    open_incident: NewIncident | None = None
    cancel_incident: bool = False
    cancel_source: int | None = None
    enqueue: list[NewRow] = field(default_factory=list)
    cancel_row_ids: list[int] = field(default_factory=list)
    cancel_reason: str = "alarm cancelled before it was sent"  # the audit's word for cancel_row_ids
    battery_low: bool | None = None  # the device's new low-battery episode flag, if it changes
    notes: list[str] = field(default_factory=list)  # for the audit log


def trigger_name(trigger: int | None) -> str:
    return _TRIGGER_NAMES.get(trigger, f"trigger_{trigger}") if trigger is not None else "unknown"


def decide(ctx: EventContext, config: RelayConfig, device: DeviceState, incident: IncidentState | None) -> Decision:
    """What a new event causes. `incident`: for `alarm_cancelled`, the alarm it names, if known."""
    msg = ctx.message
    if msg.type == p.ALARM_RAISED:
        return raise_alarm(ctx, config)
    if msg.type == p.ALARM_CANCELLED:
        if incident is None:
            return Decision(notes=[f"cancel of unknown alarm seq {msg.alarm_seq}: stored only"])
        return cancel_alarm(incident, config, cancelled_at=ctx.occurred_at, now=ctx.received_at, source=msg.source)
    if msg.type == p.BATTERY:
        return _battery(ctx, config, device)
    return Decision()


def raise_alarm(ctx: EventContext, config: RelayConfig) -> Decision:
    msg = ctx.message
    trigger = getattr(msg, "trigger", None)
    mode = getattr(msg, "mode", None)
    now = ctx.received_at
    facts = _alarm_facts(config, ctx.device_name, ctx.occurred_at, ctx.occurred_at_is_receive_time, mode, trigger,
                         getattr(msg, "battery_pct", None), ctx.location)
    cause = f"alarm:{ctx.device}:{msg.epoch}:{msg.seq}"
    guardian_kind = "door_intrusion" if trigger == p.TRIGGER_DOOR_INTRUSION else "alarm"
    decision = Decision(
        open_incident=NewIncident(trigger_name(trigger), mode, trigger, facts.battery_pct, ctx.occurred_at, now)
    )
    for guardian in config.guardians:
        decision.enqueue.append(
            NewRow(
                f"{cause}:sms:{guardian.number}", guardian_kind, "sms", guardian.number, "guardian",
                guardian.language, render(guardian_kind, guardian.language, facts), not_before=now,
            )
        )
    report = render("emergency_report", config.emergency_language, facts)
    report_at = now + config.cancel_window_s
    number = config.emergency_number
    if config.emergency_sms:
        decision.enqueue.append(
            NewRow(f"{cause}:sms:{number}", "emergency_report", "sms", number, "emergency",
                   config.emergency_language, report, not_before=report_at)
        )
    if config.emergency_call:
        # The call carries no text; the report is stored with it for the audit (and a future
        # text-to-speech backend).
        decision.enqueue.append(
            NewRow(f"{cause}:call:{number}", "emergency_report", "call", number, "emergency",
                   config.emergency_language, report, not_before=report_at)
        )
    return decision


def cancel_alarm(
    incident: IncidentState, config: RelayConfig, cancelled_at: float, now: float, source: int | None
) -> Decision:
    """Cancel an alarm (see the module docstring). A second cancel of the same alarm does nothing."""
    if incident.state == "cancelled":
        return Decision(notes=[f"incident {incident.id} was already cancelled"])
    decision = Decision(cancel_incident=True, cancel_source=source)
    emergency = [row for row in incident.rows if row.recipient_kind == "emergency" and row.kind == "emergency_report"]
    reached = [row for row in emergency if row.state in _MAY_HAVE_REACHED]
    decision.cancel_row_ids = [row.id for row in emergency if row.state == "pending"]
    # where she was a minute ago no longer matters once the alarm is off
    decision.cancel_row_ids += [row.id for row in incident.rows if row.kind == "location_update" and row.state == "pending"]
    facts = Facts(
        owner=config.owner,
        device=incident.device_name,
        at=cancelled_at,
        mode=incident.mode,
        trigger=incident.trigger,
        alarm_at=incident.occurred_at,
        cancel_source=source,
        emergency_reported=bool(reached),
    )
    cause = f"cancel:{incident.device}:{incident.epoch}:{incident.alarm_seq}"
    for row in incident.rows:
        if row.recipient_kind == "guardian" and row.kind in ("alarm", "door_intrusion") and row.state in _WILL_REACH:
            decision.enqueue.append(
                NewRow(f"{cause}:sms:{row.recipient}", "cancelled", "sms", row.recipient, "guardian",
                       row.language, render("cancelled", row.language, facts), not_before=now, after_id=row.id)
            )
    if reached:
        # Prefer a row known to be sent; else follow one in flight (cancelled with it if it fails).
        first = next((row for row in reached if row.state == "sent"), reached[0])
        language = config.emergency_language
        decision.enqueue.append(
            NewRow(f"{cause}:sms:{first.recipient}", "emergency_cancelled", "sms", first.recipient, "emergency",
                   language, render("emergency_cancelled", language, facts), not_before=now, after_id=first.id)
        )
    else:
        decision.notes.append("cancelled inside the window: nothing goes to the emergency number")
    return decision


def _alarm_facts(config: RelayConfig, device_name: str, at: float, at_is_receive_time: bool, mode: int | None,
                 trigger: int | None, battery_pct: int | None, location: Location | None) -> Facts:
    """What an alarm's texts (the guardians' and 112's report) say."""
    return Facts(owner=config.owner, device=device_name, at=at, at_is_receive_time=at_is_receive_time, mode=mode,
                 trigger=trigger, battery_pct=battery_pct, location=location, guardians_notified=len(config.guardians))


def emergency_report_at_send(incident: IncidentState, config: RelayConfig, language: str, location: Location) -> str:
    """112's report as it goes out for the first time, with where she is then: the report was
    rendered at the alarm, and by the end of the cancel window she may be far from there (the
    store rewrites the row before its first attempt, so what is sent is what the audit shows)."""
    facts = _alarm_facts(config, incident.device_name, incident.occurred_at, incident.occurred_at_is_receive_time,
                         incident.mode, incident.trigger, incident.battery_pct, location)
    return render("emergency_report", language, facts)


UNKNOWN_ACCURACY_M = 50  # a fix that gives no accuracy is taken as this rough


def distance_m(a: Location, b: Location) -> float:
    """Great-circle distance (haversine, mean Earth radius): ample for "has she moved"."""
    lat1, lat2 = math.radians(a.lat), math.radians(b.lat)
    h = (math.sin((lat2 - lat1) / 2) ** 2
         + math.cos(lat1) * math.cos(lat2) * math.sin(math.radians(b.lon - a.lon) / 2) ** 2)
    return 2 * 6_371_000 * math.asin(min(1.0, math.sqrt(h)))


def measured_now(location: Location | None) -> bool:
    """A current fix that was measured: not "unavailable", not a last known one, not the
    config's fixed point (which has no fix time)."""
    return location is not None and location.current and location.fixed_at is not None


def has_moved(last: Location | None, fix: Location) -> bool:
    """Whether a current fix tells the guardians something new: they had no location, only a last
    known one or the config's fixed point (never measured), or she is now farther from it than
    the fix's accuracy."""
    if not measured_now(last):
        return True
    accuracy = fix.accuracy_m if fix.accuracy_m is not None else UNKNOWN_ACCURACY_M
    return distance_m(last, fix) > accuracy


def location_update(incident: IncidentState, config: RelayConfig, fix: Location, now: float,
                    every_s: float) -> Decision:
    """Texts with where the owner is now, if her live alarm is due one (see the module docstring).
    `fix`: the latest current fix."""
    if incident.state != "active" or not measured_now(fix):
        return Decision()  # only a measured fix: never the config's fixed point as if she were there
    if not has_moved(incident.location_sent, fix):
        return Decision()
    since = incident.location_sent_at if incident.location_sent_at is not None else incident.occurred_at
    if measured_now(incident.location_sent) and now - since < every_s:
        return Decision()  # a first real fix after "location unavailable" goes at once
    number = incident.location_updates + 1
    facts = Facts(owner=config.owner, device=incident.device_name, at=now, mode=incident.mode,
                  trigger=incident.trigger, location=fix, alarm_at=incident.occurred_at)
    cause = f"location:{incident.device}:{incident.epoch}:{incident.alarm_seq}:{number}"
    decision = Decision(cancel_reason="superseded by a newer location update")
    decision.cancel_row_ids = [row.id for row in incident.rows if row.kind == "location_update" and row.state == "pending"]
    for row in incident.rows:
        # the bell's alarm only: a door intrusion happens at the door, wherever her phone is
        if row.recipient_kind == "guardian" and row.kind == "alarm" and row.state in _WILL_REACH:
            decision.enqueue.append(
                NewRow(f"{cause}:sms:{row.recipient}", "location_update", "sms", row.recipient, "guardian",
                       row.language, render("location_update", row.language, facts), not_before=now,
                       after_id=row.id)
            )
    return decision


def _battery(ctx: EventContext, config: RelayConfig, device: DeviceState) -> Decision:
    msg = ctx.message
    if not msg.low:
        return Decision(battery_low=False) if device.battery_low else Decision()
    if device.battery_low:
        return Decision(notes=["still in the same low-battery episode: guardians already told"])
    facts = Facts(owner=config.owner, device=ctx.device_name, at=ctx.occurred_at,
                  at_is_receive_time=ctx.occurred_at_is_receive_time, battery_pct=msg.battery_pct)
    cause = f"low_battery:{ctx.device}:{msg.epoch}:{msg.seq}"
    rows = [
        NewRow(f"{cause}:sms:{g.number}", "low_battery", "sms", g.number, "guardian", g.language,
               render("low_battery", g.language, facts), not_before=ctx.received_at)
        for g in config.guardians
    ]
    return Decision(enqueue=rows, battery_low=True)


def unreachable(device: DeviceState, last_seen: float, config: RelayConfig, now: float) -> list[NewRow]:
    """The texts for a device found silent since `last_seen` (the store calls this once per silence)."""
    facts = Facts(owner=config.owner, device=device.name, at=now, last_seen=last_seen)
    cause = f"unreachable:{device.address}:{int(last_seen * 1000)}"
    return [
        NewRow(f"{cause}:sms:{g.number}", "unreachable", "sms", g.number, "guardian", g.language,
               render("unreachable", g.language, facts), not_before=now)
        for g in config.guardians
    ]
