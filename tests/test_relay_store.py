"""The relay's store and escalation policy, told as incidents.

Time is passed in (T0 + seconds); the sim backend is modelled by `Sim`, which records into the
same database as the outbox (exactly once). Guardian numbers are in the 010-0000-xxxx block (no
one is reachable there); nothing is ever sent to them outside the sim/fake backends.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jikimi import protocol as p
from jikimi_host.relay import config as rc
from jikimi_host.relay.device_clock import DEVICE_EPOCH_UNIX
from jikimi_host.relay.store import _SCHEMA_V1, SCHEMA_VERSION, DeliveredRecord, RelayStore

T0 = 1_800_000_000.0
BELL = "C0:98:E5:49:00:01"
DOOR = "C0:98:E5:49:00:02"
MOM, ALEX, SIS = "+821000000001", "+821000000002", "+821000000003"
GUARDIANS = (MOM, ALEX, SIS)
BASE = {
    "owner": "김지은",
    "guardians": [
        {"name": "어머니", "number": "010-0000-0001"},
        {"name": "Alex", "number": "010-0000-0002", "language": "en"},
        {"name": "언니", "number": "010-0000-0003"},
    ],
    "location": {"lat": 37.5665, "lon": 126.978, "accuracy_m": 25},
    "devices": [
        {"name": "비상벨", "passkey": "093514", "address": BELL},
        {"name": "현관문", "passkey": "402981", "address": DOOR},
    ],
}


def make_config(**changes) -> rc.RelayConfig:
    return rc.parse({**BASE, **changes})


@pytest.fixture
def store(tmp_path):
    with RelayStore(tmp_path / "relay.sqlite", make_config()) as opened:
        yield opened


def device_time(at: float) -> int:
    return int(at - DEVICE_EPOCH_UNIX)


def alarm(seq, epoch=7, mode=p.MODE_LOUD, trigger=p.TRIGGER_HOLD, at=T0):
    return p.Message(p.ALARM_RAISED, epoch=epoch, seq=seq, time=device_time(at), mode=mode, trigger=trigger, battery_pct=80)


def cancel(seq, alarm_seq, epoch=7, source=p.SOURCE_DEVICE, at=T0):
    return p.Message(p.ALARM_CANCELLED, epoch=epoch, seq=seq, time=device_time(at), alarm_seq=alarm_seq, source=source)


def battery(seq, low, pct=9, epoch=7):
    return p.Message(p.BATTERY, epoch=epoch, seq=seq, time=0, battery_mv=3300, battery_pct=pct, low=low)


def reopened(store: RelayStore, path: Path, config, now: float) -> RelayStore:
    """The relay restarted: the store closed and opened again, sends in doubt due at once."""
    store.close()
    store = RelayStore(path, config)
    store.resume_in_doubt(now)
    return store


def send_due(store: RelayStore, now: float, fail: set[str] = frozenset(), kill: bool = False) -> list[int]:
    """One pass of the sim backend: send every due row; rows to numbers in `fail` fail (retryable).
    `kill`: the relay dies once the first attempt has begun (nothing delivered: the sim)."""
    sent = []
    for row in store.due(now, limit=100):
        if not store.begin_attempt(row.id, now):
            continue
        if kill:
            break
        if row.recipient in fail:
            store.mark_failed(row.id, now, "sim: no network", retryable=True)
            continue
        store.mark_sent(row.id, now, f"sim-{row.id}", DeliveredRecord(row.channel, row.recipient, row.text))
        sent.append(row.id)
    return sent


def to(store: RelayStore, recipient: str, channel: str = "sms") -> list[str]:
    """The texts (or call notes) delivered to `recipient`, in order."""
    return [d.text for d in store.delivered() if d.recipient == recipient and d.channel == channel]


def kinds_to(store: RelayStore, recipient: str) -> list[tuple[str, str]]:
    by_id = {row.id: row for row in store.outbox()}
    return [(by_id[d.outbox_id].kind, d.channel) for d in store.delivered() if d.recipient == recipient]


# --- incidents ---------------------------------------------------------------------------------


def test_the_owner_holds_the_bell_guardians_are_texted_at_once_and_112_twenty_seconds_later(store):
    result = store.record_event(BELL, alarm(1), T0)
    assert result.new and len(result.outbox_ids) == 5

    send_due(store, T0 + 1)
    for number in GUARDIANS:
        assert len(to(store, number)) == 1
    assert "김지은" in to(store, MOM)[0] and "비상벨" in to(store, MOM)[0]
    assert "button held" in to(store, ALEX)[0]  # Alex reads English
    assert to(store, "112") == []

    send_due(store, T0 + 19.9)
    assert to(store, "112") == [] and to(store, "112", "call") == []
    send_due(store, T0 + 20)
    assert len(to(store, "112")) == 1 and "[지키미 자동신고]" in to(store, "112")[0]
    assert len(to(store, "112", "call")) == 1
    assert "LOC:37.56650,126.97800 ACC:25m" in to(store, "112")[0]

    send_due(store, T0 + 600)
    assert len(store.delivered()) == 5  # nothing twice
    incident = store.incidents()[0]
    assert (incident.device, incident.epoch, incident.alarm_seq, incident.kind, incident.state) == (
        BELL, 7, 1, "hold", "active")


def test_cancelled_at_8_s_guardians_get_cancelled_and_112_gets_nothing(store):
    store.record_event(BELL, alarm(1), T0)
    send_due(store, T0 + 1)
    store.record_event(BELL, cancel(2, alarm_seq=1, at=T0 + 8), T0 + 8)
    send_due(store, T0 + 9)
    send_due(store, T0 + 600)
    for number in GUARDIANS:
        assert kinds_to(store, number) == [("alarm", "sms"), ("cancelled", "sms")]
    assert "112 신고 안 됨" in to(store, MOM)[1]
    assert [d for d in store.delivered() if d.recipient == "112"] == []
    assert {row.state for row in store.outbox() if row.recipient == "112"} == {"cancelled"}
    assert store.incidents()[0].state == "cancelled"


def test_cancelled_at_30_s_112_gets_the_cancellation_text(store):
    store.record_event(BELL, alarm(1), T0)
    send_due(store, T0 + 1)
    send_due(store, T0 + 20)
    store.record_event(BELL, cancel(2, alarm_seq=1, at=T0 + 30), T0 + 30)
    send_due(store, T0 + 31)
    assert kinds_to(store, "112") == [
        ("emergency_report", "sms"), ("emergency_report", "call"), ("emergency_cancelled", "sms")]
    assert "[자동신고 취소]" in to(store, "112")[1]
    assert "112에 취소 알림" in to(store, MOM)[1]
    assert "112 told of the cancel" in to(store, ALEX)[1]


def test_a_cancel_never_overtakes_its_alarm(store):
    store.record_event(BELL, alarm(1), T0)
    send_due(store, T0, fail={MOM})  # mom's alarm text fails once, retried after 5 s
    store.record_event(BELL, cancel(2, alarm_seq=1, at=T0 + 2), T0 + 2)
    send_due(store, T0 + 3)
    assert to(store, MOM) == []  # her cancellation waits for her alarm
    assert kinds_to(store, ALEX) == [("alarm", "sms"), ("cancelled", "sms")]
    send_due(store, T0 + 5)
    send_due(store, T0 + 6)
    assert kinds_to(store, MOM) == [("alarm", "sms"), ("cancelled", "sms")]


def test_a_guardian_whose_alarm_text_keeps_failing_gets_it_then_the_cancellation_once_the_network_takes_them(tmp_path):
    with RelayStore(tmp_path / "r.sqlite", make_config(retry_base_s=5, retry_max_s=60)) as store:
        store.record_event(BELL, alarm(1), T0)
        now = T0
        for _ in range(20):  # her network is down for an hour
            send_due(store, now, fail={MOM})
            now += 60
        store.record_event(BELL, cancel(2, alarm_seq=1, at=now), now)
        send_due(store, now, fail={MOM})
        assert to(store, MOM) == [] and {row.state for row in store.outbox() if row.recipient == MOM} == {"pending"}
        send_due(store, now + 60)  # back: the alarm first, then the cancellation
        send_due(store, now + 61)
        assert kinds_to(store, MOM) == [("alarm", "sms"), ("cancelled", "sms")]


def test_the_device_resends_an_event_it_had_no_ack_for_and_nothing_is_added(tmp_path):
    path = tmp_path / "r.sqlite"
    with RelayStore(path, make_config()) as store:
        first = store.record_event(BELL, alarm(1), T0)
        again = store.record_event(BELL, alarm(1), T0 + 1)
        assert (again.new, again.incident_id, again.outbox_ids) == (False, first.incident_id, ())
    with RelayStore(path, make_config()) as store:  # and after a restart
        assert store.record_event(BELL, alarm(1), T0 + 2).new is False
        assert len(store.outbox()) == 5 and len(store.events()) == 1 and len(store.incidents()) == 1
        assert [e.action for e in store.audit_log()].count("duplicate_event") == 2


def test_the_same_seq_in_a_new_epoch_is_a_new_alarm(store):
    store.record_event(BELL, alarm(1, epoch=7), T0)
    assert store.record_event(BELL, alarm(1, epoch=8), T0 + 60).new
    assert len(store.incidents()) == 2 and len(store.outbox()) == 10


def test_failures_back_off_up_to_the_cap_and_never_end_a_message(tmp_path):
    with RelayStore(tmp_path / "r.sqlite", make_config(retry_base_s=5, retry_max_s=30)) as store:
        store.record_event(BELL, alarm(1), T0)
        now, waits = T0, []
        mom_row = next(row for row in store.outbox() if row.recipient == MOM)
        for _ in range(50):
            send_due(store, now, fail={MOM})
            row = store.outbox_row(mom_row.id)
            assert row.state == "pending"
            waits.append(row.next_attempt_at - now)
            assert all(r.id != row.id for r in store.due(row.next_attempt_at - 0.1, 100))
            now = row.next_attempt_at
        assert waits[:5] == [5, 10, 20, 30, 30] and set(waits[4:]) == {30}
        assert (row.attempts, row.last_error) == (50, "sim: no network")
        assert not [e for e in store.audit_log() if e.action == "failed"]
        assert len(to(store, ALEX)) == 1  # others were not held up
        send_due(store, now)
        assert len(to(store, MOM)) == 1  # the 51st attempt got through


def test_an_error_the_backend_calls_permanent_waits_longest_but_is_tried_again(tmp_path):
    with RelayStore(tmp_path / "r.sqlite", make_config(retry_base_s=5, retry_max_s=300)) as store:
        store.record_event(BELL, alarm(1), T0)
        row = next(r for r in store.due(T0, 100) if r.recipient == MOM)
        store.begin_attempt(row.id, T0)
        assert store.mark_failed(row.id, T0, "modem: SIM not inserted (CME 10)", retryable=False) == "pending"
        assert store.outbox_row(row.id).next_attempt_at == T0 + 300
        send_due(store, T0 + 300)  # the owner put the SIM back in
        assert len(to(store, MOM)) == 1


def test_messages_not_sent_long_after_they_were_due_are_overdue_until_they_go(tmp_path):
    with RelayStore(tmp_path / "r.sqlite", make_config(overdue_after_s=120)) as store:
        store.record_event(BELL, alarm(1), T0)
        send_due(store, T0, fail={MOM})
        assert store.overdue(T0 + 119) == []
        (late,) = store.overdue(T0 + 121)  # the 112 rows are not due before the cancel window ends
        assert (late.recipient, late.kind, late.last_error) == (MOM, "alarm", "sim: no network")
        send_due(store, T0 + 121)
        assert [r.recipient for r in store.overdue(T0 + 200)] == []  # her text went; the 112 rows too


def test_a_live_alarms_message_an_older_relay_gave_up_on_is_tried_again_after_the_upgrade(tmp_path):
    path = tmp_path / "r.sqlite"
    with RelayStore(path, make_config()) as store:
        store.record_event(BELL, alarm(1), T0)
        store.record_event(DOOR, alarm(1), T0)
        store.record_event(DOOR, cancel(2, alarm_seq=1, at=T0 + 5), T0 + 5)
    db = sqlite3.connect(path)  # as a version-2 relay left it: every guardian text failed for good
    db.execute("UPDATE outbox SET state = 'failed', attempts = 10 WHERE recipient_kind = 'guardian'")
    for column in ("location_sent", "location_sent_at", "location_updates"):  # version 4's
        db.execute(f"ALTER TABLE incidents DROP COLUMN {column}")
    db.execute("UPDATE schema_version SET version = 2")
    db.commit()
    db.close()
    with RelayStore(path, make_config()) as store:
        assert store.schema_version() == SCHEMA_VERSION
        live = {i.id for i in store.incidents() if i.state == "active"}
        revived = [r for r in store.outbox() if r.recipient_kind == "guardian" and r.kind == "alarm"]
        assert {r.state for r in revived if r.incident_id in live} == {"pending"}
        assert {r.state for r in revived if r.incident_id not in live} == {"failed"}  # over: history
        assert sum(e.action == "revived" for e in store.audit_log()) == len(GUARDIANS)
        send_due(store, T0 + 10)
        assert all(len(to(store, g)) == 1 for g in GUARDIANS)


def test_a_failing_112_text_does_not_stop_the_112_call(store):
    store.record_event(BELL, alarm(1), T0)
    send_due(store, T0)
    for row in store.due(T0 + 20, 100):
        store.begin_attempt(row.id, T0 + 20)
        if row.channel == "sms":
            assert store.mark_failed(row.id, T0 + 20, "modem: +CMS ERROR: 500", retryable=False) == "pending"
        else:
            store.mark_sent(row.id, T0 + 20, "call-1", DeliveredRecord(row.channel, row.recipient, row.text))
    assert to(store, "112", "call") and not to(store, "112")


def test_a_112_text_in_flight_when_cancelled_is_followed_by_a_cancellation_or_dropped_with_it(store):
    store.record_event(BELL, alarm(1), T0)
    send_due(store, T0)
    report = next(r for r in store.due(T0 + 20) if r.channel == "sms" and r.recipient == "112")
    store.begin_attempt(report.id, T0 + 20)  # handed to the modem...
    store.record_event(BELL, cancel(2, alarm_seq=1, at=T0 + 21), T0 + 21)
    follow = next(r for r in store.outbox() if r.kind == "emergency_cancelled")
    assert follow.after_id == report.id
    # ...which then reports failure: the report is not retried, nor is its cancellation sent.
    assert store.mark_failed(report.id, T0 + 22, "modem: timeout") == "cancelled"
    assert store.outbox_row(follow.id).state == "cancelled"
    send_due(store, T0 + 600)
    assert [d for d in store.delivered() if d.recipient == "112"] == []


def test_a_cancel_on_the_phone_then_the_devices_own_cancel_sends_each_text_once(store):
    result = store.record_event(BELL, alarm(1), T0)
    send_due(store, T0)
    store.owner_cancel(result.incident_id, T0 + 5)
    assert store.record_event(BELL, cancel(2, alarm_seq=1, source=p.SOURCE_PHONE, at=T0 + 6), T0 + 6).outbox_ids == ()
    send_due(store, T0 + 600)
    assert kinds_to(store, MOM) == [("alarm", "sms"), ("cancelled", "sms")]
    assert "휴대폰에서 취소" in to(store, MOM)[1]


def test_a_silent_triple_press_is_reported_like_a_loud_alarm(store):
    store.record_event(BELL, alarm(1, mode=p.MODE_SILENT, trigger=p.TRIGGER_TRIPLE_PRESS), T0)
    send_due(store, T0 + 20)
    assert "무음신고" in to(store, MOM)[0] and "don't call" in to(store, ALEX)[0]
    assert "[지키미 무음신고]" in to(store, "112")[0] and to(store, "112", "call")


def test_an_intrusion_texts_guardians_about_the_door_and_reports_to_112(store):
    store.record_event(DOOR, alarm(1, trigger=p.TRIGGER_DOOR_INTRUSION), T0)
    send_due(store, T0 + 20)
    assert "[지키미 침입]" in to(store, MOM)[0] and "현관문" in to(store, MOM)[0]
    assert len(to(store, "112")) == 1 and store.incidents()[0].kind == "door_intrusion"


@pytest.mark.parametrize(
    "msg",
    [
        p.Message(p.DOOR_OPENED, epoch=7, seq=1, time=0, arm_state=p.ARM_DISARMED),
        p.Message(p.DOOR_CLOSED, epoch=7, seq=1, time=0, arm_state=p.ARM_DISARMED),
        p.Message(p.ARMED, epoch=7, seq=1, time=0, source=p.SOURCE_PHONE),
        p.Message(p.DISARMED, epoch=7, seq=1, time=0, source=p.SOURCE_PHONE),
        p.Message(p.TAMPER, epoch=7, seq=1, time=0, tampered=1),
        p.Message(p.ALARM_ACKED, epoch=7, seq=1, time=0, alarm_seq=1),
        p.Message(p.SIREN_SILENCED, epoch=7, seq=1, time=0, alarm_seq=1, source=p.SOURCE_PHONE),
        p.decode(bytes.fromhex("0130070001000000000000000a0b")),  # an event type only a newer device knows
    ],
)
def test_other_events_are_stored_and_tell_no_one(store, msg):
    result = store.record_event(DOOR, msg, T0)
    assert result.new and result.outbox_ids == ()
    assert store.events()[0].name == msg.name and store.outbox() == []


def test_the_device_clock_gives_the_time_and_an_unset_one_the_receive_time(store):
    store.record_event(BELL, alarm(1, at=T0 - 60), T0)
    assert store.events()[0].device_time == T0 - 60 and store.incidents()[0].occurred_at == T0 - 60
    store.record_event(BELL, p.Message(p.ALARM_RAISED, epoch=7, seq=2, time=0, mode=1, trigger=1, battery_pct=50), T0)
    assert store.events()[1].device_time is None and store.incidents()[1].occurred_at == T0
    assert "(수신)" in store.outbox()[-1].text


def test_the_112_rows_follow_the_config(tmp_path):
    with RelayStore(tmp_path / "a.sqlite", make_config(emergency_sms=False, cancel_window_s=60)) as store:
        store.record_event(BELL, alarm(1), T0)
        assert [(r.channel, r.not_before) for r in store.outbox() if r.recipient == "112"] == [("call", T0 + 60)]


def test_low_battery_is_texted_once_per_episode(store):
    assert len(store.record_event(BELL, battery(1, low=1), T0).outbox_ids) == 3
    assert store.record_event(BELL, battery(2, low=1, pct=7), T0 + 3600).outbox_ids == ()
    assert store.record_event(BELL, battery(3, low=0, pct=90), T0 + 7200).outbox_ids == ()
    assert len(store.record_event(BELL, battery(4, low=1), T0 + 90000).outbox_ids) == 3
    send_due(store, T0 + 90000)
    assert len(to(store, MOM)) == 2 and "배터리 부족(9%)" in to(store, MOM)[0]
    assert to(store, "112") == []


def test_a_silent_device_is_reported_unreachable_once_until_heard_from_again(store):
    silent = store.config.unreachable_after_s
    store.mark_contact(BELL, T0, roles=p.ROLE_PANIC)
    assert store.unreachable_devices(T0 + silent - 1) == []
    found = store.unreachable_devices(T0 + silent + 1)
    assert [(d.address, d.name, d.newly, len(d.outbox_ids)) for d in found] == [(BELL, "비상벨", True, 3)]
    again = store.unreachable_devices(T0 + silent + 2000)
    assert [(d.newly, d.outbox_ids) for d in again] == [(False, ())]
    send_due(store, T0 + silent + 2000)
    assert len(to(store, MOM)) == 1 and "연결 끊김" in to(store, MOM)[0] and to(store, "112") == []

    back = T0 + silent + 3000
    store.mark_contact(BELL, back)  # heard from again
    assert store.unreachable_devices(back + 1) == []
    assert [d.newly for d in store.unreachable_devices(back + silent + 1)] == [True]
    send_due(store, back + silent + 1)
    assert len(to(store, MOM)) == 2
    assert store.devices()[0]["role"] == "panic"


# --- restarts ----------------------------------------------------------------------------------


def test_a_send_in_doubt_is_resent_after_a_restart_and_the_audit_shows_it(tmp_path):
    path = tmp_path / "r.sqlite"
    store = RelayStore(path, make_config())
    store.record_event(BELL, alarm(1), T0)
    row = store.due(T0)[0]
    store.begin_attempt(row.id, T0)  # the modem took it, then the relay was killed
    store.close()
    with RelayStore(path, make_config()) as store:
        assert store.resume_in_doubt(T0 + 30) == [row.id]
        assert row.id in [r.id for r in store.due(T0 + 30, 100)]
        send_due(store, T0 + 30)
        assert store.outbox_row(row.id).attempts == 2
        actions = [(e.action, e.attempt) for e in store.audit_log() if e.outbox_id == row.id]
        assert actions == [("enqueued", None), ("attempt", 1), ("in_doubt", None), ("attempt", 2), ("sent", 2)]


def test_a_relay_killed_inside_the_receive_transaction_stored_nothing(tmp_path):
    """The device's resend after such a kill is new, and then produces every row."""
    path = tmp_path / "r.sqlite"
    RelayStore(path, make_config()).close()
    script = f"""
import os
from jikimi import protocol as p
from jikimi_host.relay import config as rc, policy, store as s
real = policy.decide
def decide_then_die(*args):
    real(*args)
    os._exit(9)  # killed after the event row was written, before the commit
policy.decide = decide_then_die
st = s.RelayStore({str(path)!r}, rc.parse({BASE!r}))
st.record_event({BELL!r}, p.Message(p.ALARM_RAISED, epoch=7, seq=1, time=0, mode=1, trigger=1, battery_pct=80), {T0})
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 9, done.stderr
    with RelayStore(path, make_config()) as store:
        assert store.events() == [] and store.outbox() == []
        assert store.record_event(BELL, alarm(1), T0 + 5).new
        assert len(store.outbox()) == 5


def test_two_processes_share_the_database(tmp_path):
    path = tmp_path / "r.sqlite"
    with RelayStore(path, make_config()) as relay, RelayStore(path, make_config()) as reader:
        relay.record_event(BELL, alarm(1), T0)
        assert len(reader.outbox()) == 5
        assert reader.record_event(BELL, alarm(1), T0).new is False  # dedup holds across connections
        assert reader.schema_version() == SCHEMA_VERSION


def test_the_database_is_durable_and_in_wal_mode(store):
    db = store._db
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert db.execute("PRAGMA foreign_keys").fetchone()[0] == 1


# --- the owner's cancel (typed on the phone): stored before it is acted on ---------------------

def test_the_owners_cancel_is_committed_with_its_consequences_before_the_device_is_told(tmp_path):
    path = tmp_path / "relay.sqlite"
    with RelayStore(path, make_config()) as store:
        result = store.record_event(BELL, alarm(1), T0)
        send_due(store, T0)
        cancelled = store.owner_cancel(result.incident_id, T0 + 5)
        assert cancelled.new and cancelled.device_cancel == "pending" and len(cancelled.outbox_ids) == 3
    # a relay killed right after that commit finds it all after its restart
    with RelayStore(path, make_config()) as store:
        incident = store.incidents()[0]
        assert (incident.state, incident.cancel_source, incident.device_cancel) == ("cancelled", p.SOURCE_PHONE, "pending")
        assert [i.id for i in store.pending_device_cancels()] == [incident.id]
        assert store.pending_device_cancels(DOOR) == [] and store.active_incident(BELL) is None
        assert {row.state for row in store.outbox() if row.recipient == "112"} == {"cancelled"}
        send_due(store, T0 + 600)
        for number in GUARDIANS:
            assert kinds_to(store, number) == [("alarm", "sms"), ("cancelled", "sms")]
        assert to(store, "112") == [] and to(store, "112", "call") == []
        assert "휴대폰에서 취소" in to(store, MOM)[1]


def test_a_relay_killed_inside_the_owners_cancel_transaction_stored_none_of_it(tmp_path):
    """All or nothing: never a cancelled incident whose 112 rows are still pending, or the reverse."""
    path = tmp_path / "r.sqlite"
    with RelayStore(path, make_config()) as store:
        incident_id = store.record_event(BELL, alarm(1), T0).incident_id
    script = f"""
import os
from jikimi_host.relay import config as rc, store as s
real = s.RelayStore._apply
def apply_then_die(self, *args):
    real(self, *args)
    os._exit(9)  # killed after the rows were written, before the commit
s.RelayStore._apply = apply_then_die
st = s.RelayStore({str(path)!r}, rc.parse({BASE!r}))
st.owner_cancel({incident_id}, {T0 + 5})
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 9, done.stderr
    with RelayStore(path, make_config()) as store:
        assert store.incidents()[0].state == "active" and store.incidents()[0].device_cancel is None
        assert {row.state for row in store.outbox()} == {"pending"} and len(store.outbox()) == 5


@pytest.mark.parametrize("code, state", [(p.E_OK, "confirmed"), (p.E_WRONG_STATE, "not_active"),
                                         (p.E_BAD_FIELD, "not_active"), (p.E_INTERNAL, "pending"),
                                         (p.E_NOT_AUTHENTICATED, "pending")])
def test_whatever_the_device_answers_the_incident_stays_cancelled_and_112_hears_nothing(store, code, state):
    result = store.record_event(BELL, alarm(1), T0)
    send_due(store, T0)
    store.owner_cancel(result.incident_id, T0 + 5)
    answered = store.device_cancel_answered(BELL, 7, 1, code, T0 + 6)
    assert answered == (None if state == "pending" else state)
    incident = store.incidents()[0]
    assert (incident.state, incident.device_cancel) == ("cancelled", state)
    assert [i.id for i in store.pending_device_cancels()] == ([incident.id] if state == "pending" else [])
    assert store.device_cancel_answered(BELL, 7, 1, p.E_OK, T0 + 7) == ("confirmed" if state == "pending" else None)
    send_due(store, T0 + 600)
    assert to(store, "112") == [] and to(store, "112", "call") == []
    for number in GUARDIANS:
        assert kinds_to(store, number) == [("alarm", "sms"), ("cancelled", "sms")]


def test_the_device_out_of_reach_the_cancel_still_stops_112_after_the_window(store):
    result = store.record_event(BELL, alarm(1), T0)
    store.owner_cancel(result.incident_id, T0 + 1)  # the device never answers
    for at in (T0 + 20, T0 + 21, T0 + 600):
        send_due(store, at)
    assert to(store, "112") == [] and to(store, "112", "call") == []
    assert store.incidents()[0].device_cancel == "pending"  # still to be told when it is back


@pytest.mark.parametrize("source", [p.SOURCE_PHONE, p.SOURCE_DEVICE])
def test_the_devices_own_cancel_arriving_later_confirms_and_texts_no_one_again(store, source):
    result = store.record_event(BELL, alarm(1), T0)
    send_due(store, T0)
    store.owner_cancel(result.incident_id, T0 + 5)
    store.device_cancel_answered(BELL, 7, 1, p.E_WRONG_STATE, T0 + 6)  # not_active, then the event
    recorded = store.record_event(BELL, cancel(2, alarm_seq=1, source=source, at=T0 + 5), T0 + 7)
    assert recorded.new and recorded.outbox_ids == () and recorded.device_cancel_confirmed
    assert store.incidents()[0].device_cancel == "confirmed"
    again = store.record_event(BELL, cancel(2, alarm_seq=1, source=source, at=T0 + 5), T0 + 8)
    assert not again.new and not again.device_cancel_confirmed
    send_due(store, T0 + 600)
    for number in GUARDIANS:
        assert kinds_to(store, number) == [("alarm", "sms"), ("cancelled", "sms")]


def test_cancelling_twice_or_after_the_device_did_queues_nothing_and_asks_the_device_nothing(store):
    first = store.record_event(BELL, alarm(1), T0)
    store.owner_cancel(first.incident_id, T0 + 5)
    again = store.owner_cancel(first.incident_id, T0 + 6)
    assert not again.new and again.outbox_ids == () and again.device_cancel == "pending"
    second = store.record_event(BELL, alarm(2), T0 + 60)
    store.record_event(BELL, cancel(3, alarm_seq=2, at=T0 + 61), T0 + 61)  # the owner's hold on the bell
    late = store.owner_cancel(second.incident_id, T0 + 62)
    assert not late.new and late.outbox_ids == () and late.device_cancel is None
    assert [i.alarm_seq for i in store.pending_device_cancels()] == [1]


def test_an_owners_cancel_after_112_was_told_texts_112_the_cancellation(store):
    result = store.record_event(BELL, alarm(1), T0)
    send_due(store, T0 + 20)
    store.owner_cancel(result.incident_id, T0 + 30)
    send_due(store, T0 + 31)
    assert [k for k, _ in kinds_to(store, "112")] == ["emergency_report", "emergency_report", "emergency_cancelled"]
    assert "112 told of the cancel" in to(store, ALEX)[1]


def test_a_version_1_database_is_migrated_and_keeps_its_incidents(tmp_path):
    import sqlite3
    path = tmp_path / "v1.sqlite"
    db = sqlite3.connect(path)
    for statement in _SCHEMA_V1:
        db.execute(statement)
    db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    db.execute("INSERT INTO schema_version VALUES (1)")
    db.execute("INSERT INTO devices (address, name, first_seen, last_seen) VALUES (?, 'b', ?, ?)", (BELL, T0, T0))
    db.execute("INSERT INTO events (device, epoch, seq, type, name, fields, received_at) VALUES (?, 7, 1, 1, 'a', '{}', ?)",
               (BELL, T0))
    db.execute("INSERT INTO incidents (device, epoch, alarm_seq, event_id, kind, occurred_at, raised_at, state)"
               " VALUES (?, 7, 1, 1, 'hold', ?, ?, 'active')", (BELL, T0, T0))
    db.commit()
    db.close()
    with RelayStore(path, make_config()) as store:
        assert store.schema_version() == SCHEMA_VERSION == 4
        assert store.active_incident(BELL).device_cancel is None
        # what its guardians were told of the location is not known: the first fix goes at once
        assert store.active_incident(BELL).location is None and store.active_incident(BELL).location_sent_at == T0
        assert store.owner_cancel(1, T0 + 1).device_cancel == "pending"


# --- the property ------------------------------------------------------------------------------

# Events the device journals, in seq order: two alarms, the first cancelled.
EVENTS = [alarm(1), alarm(2, trigger=p.TRIGGER_PULL_PIN), cancel(3, alarm_seq=1)]

operations = st.lists(
    st.one_of(
        st.tuples(st.just("deliver"), st.integers(0, len(EVENTS) - 1)),  # (re)delivery of one event
        st.tuples(st.just("restart"), st.none()),
        # one pass of the sim backend: all go through, texts to one guardian fail (retryable), or
        # the relay is killed after beginning the first attempt
        st.tuples(st.just("send"), st.sampled_from(["ok", "kill", *GUARDIANS])),
        st.tuples(st.just("wait"), st.integers(1, 40)),
    ),
    max_size=40,
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(operations)
def test_each_guardian_gets_each_alarm_exactly_once_whatever_happens(ops):
    config = make_config()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "relay.sqlite"
        store = RelayStore(path, config)
        now, delivered_upto = T0, 0
        try:
            for op, arg in ops:
                if op == "deliver":
                    # The device sends events in order and resends the unacked: deliver every
                    # event up to this one (those already stored are duplicates).
                    for msg in EVENTS[: max(arg + 1, delivered_upto)]:
                        store.record_event(BELL, msg, now)
                    delivered_upto = max(delivered_upto, arg + 1)
                elif op == "restart":
                    store = reopened(store, path, config, now)
                elif op == "send":
                    send_due(store, now, fail={arg}, kill=arg == "kill")
                else:
                    now += arg
            # Then the device finally gets through, and the relay runs to quiescence.
            for msg in EVENTS:
                store.record_event(BELL, msg, now)
            store = reopened(store, path, config, now)
            for _ in range(20):
                now += 400
                send_due(store, now)
            alarm_rows = {r.id: r for r in store.outbox() if r.kind == "alarm"}
            by_guardian: dict[str, list[int]] = {}
            for d in store.delivered():
                if d.outbox_id in alarm_rows:
                    by_guardian.setdefault(d.recipient, []).append(alarm_rows[d.outbox_id].incident_id)
            for number in GUARDIANS:
                assert sorted(by_guardian.get(number, [])) == [1, 2], number
            # Each guardian's cancellation arrives once, after the alarm it cancels (incident 1).
            rows = {r.id: r for r in store.outbox()}
            for number in GUARDIANS:
                mine = [rows[d.outbox_id] for d in store.delivered() if d.recipient == number]
                order = [(r.kind, r.incident_id) for r in mine]
                assert order.count(("cancelled", 1)) == 1, order
                assert order.index(("cancelled", 1)) > order.index(("alarm", 1)), order
            assert len({d.outbox_id for d in store.delivered()}) == len(store.delivered())
        finally:
            store.close()


# The owner's cancel, the device's answers and its own alarm_cancelled in any order, with kills.
OWNER_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("owner_cancel"), st.none()),
        st.tuples(st.just("answer"), st.sampled_from([p.E_OK, p.E_WRONG_STATE, p.E_BAD_FIELD, p.E_INTERNAL])),
        st.tuples(st.just("device_cancel"), st.sampled_from([p.SOURCE_PHONE, p.SOURCE_DEVICE])),
        st.tuples(st.just("restart"), st.none()),
        st.tuples(st.just("send"), st.sampled_from(["ok", "kill"])),
        st.tuples(st.just("wait"), st.integers(1, 15)),
    ),
    max_size=30,
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(OWNER_OPS)
def test_an_owners_cancel_texts_each_guardian_once_and_spares_112_whatever_the_device_answers(ops):
    config = make_config()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "relay.sqlite"
        store = RelayStore(path, config)
        now = T0
        incident_id = store.record_event(BELL, alarm(1), now).incident_id
        cancelled_at = None  # when the incident was first cancelled, by either side
        expected = None  # the model of incidents.device_cancel
        answer_states = {p.E_OK: "confirmed", p.E_WRONG_STATE: "not_active", p.E_BAD_FIELD: "not_active"}
        try:
            for op, arg in ops:
                if op == "owner_cancel":
                    if store.owner_cancel(incident_id, now).new:
                        cancelled_at, expected = now, "pending"
                elif op == "answer":
                    store.device_cancel_answered(BELL, 7, 1, arg, now)
                    if expected == "pending":
                        expected = answer_states.get(arg, "pending")
                elif op == "device_cancel":
                    if store.record_event(BELL, cancel(2, alarm_seq=1, source=arg, at=now), now).new:
                        cancelled_at = now if cancelled_at is None else cancelled_at
                        expected = "confirmed" if expected in ("pending", "not_active") else expected
                elif op == "restart":
                    store = reopened(store, path, config, now)
                elif op == "send":
                    send_due(store, now, kill=arg == "kill")
                else:
                    now += arg
            store = reopened(store, path, config, now)
            for _ in range(10):
                now += 400
                send_due(store, now)
            incident = store.incidents()[0]
            if cancelled_at is None:
                assert incident.state == "active" and incident.device_cancel is None
                return
            assert incident.state == "cancelled"
            for number in GUARDIANS:
                assert [k for k, _ in kinds_to(store, number)] == ["alarm", "cancelled"], number
            if cancelled_at < T0 + config.cancel_window_s:
                assert to(store, "112") == [] and to(store, "112", "call") == []
            else:
                told = [k for k, _ in kinds_to(store, "112")]
                assert told.count("emergency_cancelled") == (1 if told.count("emergency_report") else 0), told
            # None: the device cancelled it first, there is nothing to tell it
            assert incident.device_cancel == expected
            assert [i.id for i in store.pending_device_cancels()] == ([incident_id] if expected == "pending" else [])
        finally:
            store.close()
