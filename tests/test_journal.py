"""The crash-safe journal: power cuts at every byte, damaged bytes, trimming, the full policy."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jikimi import protocol as p
from jikimi import protocol_json as pj
from jikimi.journal import (
    ACKED,
    CANCELLED,
    KIND_ALARM,
    KIND_EPOCH,
    KIND_EVENT,
    KIND_TRIM,
    SILENCED,
    SLOT_DOOR,
    SLOT_PANIC,
    Journal,
    record,
    slot_of,
)
from jikimi.recovery import scan

EPOCH = 0x1234
FIELDS = {
    p.ALARM_RAISED: {"mode": 1, "trigger": 1, "battery_pct": 90},
    p.ALARM_CANCELLED: {"alarm_seq": 1, "source": 2},
    p.DOOR_OPENED: {"arm_state": 0},
    p.DOOR_CLOSED: {"arm_state": 0},
    p.BATTERY: {"battery_mv": 3300, "battery_pct": 5, "low": 1},
    p.ARMED: {"source": 1},
}


def open_journal(path: Path, **kwargs) -> Journal:
    return Journal(str(path), new_epoch=lambda: EPOCH, **kwargs)


def records_in(data: bytes) -> list[tuple[int, bytes]]:
    """Every valid record of a journal file, in order."""
    records: list[tuple[int, bytes]] = []
    scan(data, lambda kind, payload: records.append((kind, bytes(payload))))
    return records


def pending_seqs(journal: Journal) -> list[int]:
    return [seq for seq, _ in journal.pending()]


# A history: ("append", type) or ("ack", index of an earlier append)
histories = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.sampled_from(sorted(FIELDS))),
        st.tuples(st.just("ack"), st.integers(0, 30)),
    ),
    min_size=1,
    max_size=25,
)


def play(journal: Journal, history) -> list[int]:
    appended = []
    for op, arg in history:
        if op == "append":
            appended.append(journal.append(arg, FIELDS[arg], 0))
        elif appended:
            journal.ack(appended[arg % len(appended)])
    return appended


def model_after(data: bytes) -> tuple[set[int], int]:
    """What a prefix of the file holds: (pending seqs, highest event seq)."""
    pending, highest = set(), 0
    for kind, payload in records_in(data):
        if kind == KIND_EVENT:
            seq = p.decode(payload).seq
            pending.add(seq)
            highest = max(highest, seq)
        elif kind == KIND_TRIM:
            pending.discard(int.from_bytes(payload, "little"))
    return pending, highest


def test_events_get_consecutive_sequence_numbers_that_survive_reboot(tmp_path):
    journal = open_journal(tmp_path / "j")
    assert [journal.append(p.ARMED, {"source": 1}) for _ in range(3)] == [1, 2, 3]
    journal.ack(2)
    again = open_journal(tmp_path / "j")
    assert again.epoch == EPOCH
    assert pending_seqs(again) == [1, 3]
    assert again.append(p.ARMED, {"source": 1}) == 4
    assert pj.to_dict(p.decode(dict(again.pending())[4]))["seq"] == 4


def test_sequence_survives_when_everything_was_acknowledged_and_compacted(tmp_path):
    journal = open_journal(tmp_path / "j", max_bytes=512)
    for _ in range(60):
        journal.ack(journal.append(p.DOOR_OPENED, {"arm_state": 0}))
    assert os.path.getsize(tmp_path / "j") <= 512
    assert open_journal(tmp_path / "j").append(p.ARMED, {"source": 1}) == 61


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(history=histories)
def test_a_power_cut_at_any_byte_loses_at_most_the_record_being_written(tmp_path, history):
    path = tmp_path / "j"
    path.unlink(missing_ok=True)
    journal = open_journal(path, max_bytes=1 << 16)
    play(journal, history)
    full = path.read_bytes()
    for cut in range(len(full) + 1):
        path.write_bytes(full[:cut])
        expected, highest = model_after(full[:cut])
        recovered = open_journal(path, max_bytes=1 << 16)
        assert set(pending_seqs(recovered)) == expected, f"cut at {cut}"
        assert recovered.next_seq > highest  # never reuses a number
        # and the rewritten file holds the same thing
        assert set(pending_seqs(open_journal(path, max_bytes=1 << 16))) == expected


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(history=histories, flip=st.integers(1, 255))
def test_a_damaged_byte_anywhere_loses_only_its_own_record(tmp_path, history, flip):
    path = tmp_path / "j"
    path.unlink(missing_ok=True)
    journal = open_journal(path, max_bytes=1 << 16)
    play(journal, history)
    full = path.read_bytes()
    before, highest = model_after(full)
    next_seq = journal.next_seq
    for at in range(len(full)):
        damaged = bytearray(full)
        damaged[at] ^= flip
        path.write_bytes(bytes(damaged))
        recovered = open_journal(path, max_bytes=1 << 16)
        got = set(pending_seqs(recovered))
        lost = before - got
        assert len(lost) <= 1, f"byte {at}: lost {lost}"
        # an extra event can only come back if the damaged record was its TRIM (resent: fine)
        assert len(got - before) <= 1
        assert recovered.next_seq >= next_seq, f"byte {at}: sequence went back"


def test_an_unfinished_compaction_is_ignored(tmp_path):
    journal = open_journal(tmp_path / "j")
    journal.append(p.ALARM_RAISED, FIELDS[p.ALARM_RAISED])
    (tmp_path / "j.new").write_bytes(b"\x4a\x01half a comp")
    again = open_journal(tmp_path / "j")
    assert pending_seqs(again) == [1]
    assert not (tmp_path / "j.new").exists()


def test_an_unreadable_journal_starts_a_new_epoch(tmp_path):
    (tmp_path / "j").write_bytes(os.urandom(300))
    journal = Journal(str(tmp_path / "j"), new_epoch=lambda: 0x7777)
    assert journal.epoch == 0x7777
    assert journal.depth == 0
    assert journal.recovered["new_epoch"]
    assert journal.recovered["damaged_bytes"] == 300


def test_full_journal_drops_the_oldest_low_priority_event_first(tmp_path):
    journal = open_journal(tmp_path / "j", capacity=8)
    alarm = journal.append(p.ALARM_RAISED, FIELDS[p.ALARM_RAISED])
    doors = [journal.append(p.DOOR_OPENED, {"arm_state": 0}) for _ in range(7)]
    battery = journal.append(p.BATTERY, FIELDS[p.BATTERY])
    assert doors[0] not in pending_seqs(journal)
    assert alarm in pending_seqs(journal) and battery in pending_seqs(journal)
    assert journal.depth == 8
    assert pending_seqs(open_journal(tmp_path / "j", capacity=8)) == pending_seqs(journal)


def test_an_unacknowledged_alarm_is_never_dropped(tmp_path):
    journal = open_journal(tmp_path / "j", capacity=8)
    alarms = [journal.append(p.ALARM_RAISED, FIELDS[p.ALARM_RAISED]) for _ in range(8)]
    assert journal.append(p.BATTERY, FIELDS[p.BATTERY]) == 0  # no room: the new one goes
    assert journal.append(p.DOOR_OPENED, {"arm_state": 0}) == 0
    more = [journal.append(p.ALARM_RAISED, FIELDS[p.ALARM_RAISED]) for _ in range(40)]
    assert pending_seqs(journal) == alarms + more  # past capacity, none lost
    assert journal.ram_only == 48 - 32  # beyond 4 x capacity: kept in RAM, still sent
    assert len(pending_seqs(open_journal(tmp_path / "j", capacity=8))) == 32


def test_a_failing_flash_does_not_stop_an_alarm(tmp_path):
    journal = open_journal(tmp_path / "j")
    (tmp_path / "j").unlink()
    (tmp_path / "j").mkdir()  # every write to the journal file now fails, even as root
    seq = journal.append(p.ALARM_RAISED, FIELDS[p.ALARM_RAISED])
    assert seq == 1 and pending_seqs(journal) == [1]  # still there to be sent
    assert journal.write_errors == 1


def test_ack_of_an_unknown_seq_is_harmless(tmp_path):
    journal = open_journal(tmp_path / "j")
    journal.append(p.ARMED, {"source": 1})
    assert journal.ack(99) is False
    assert journal.ack(1) is True
    assert journal.ack(1) is False
    assert journal.depth == 0


@pytest.mark.micropython
def test_micropython_recovers_exactly_like_cpython(tmp_path, micropython):
    script = Path(__file__).parent / "mpy" / "journal_recovery.py"
    (tmp_path / "c").mkdir()
    (tmp_path / "m").mkdir()
    on_cpython = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "c")], capture_output=True, text=True, check=True
    ).stdout
    on_micropython = micropython.script("journal_recovery.py", str(tmp_path / "m")).check().stdout
    assert on_cpython.count("\n") > 300
    assert on_micropython == on_cpython


# -- live alarms: an alarm stays restorable until it is cancelled ------------------------------

def live(journal: Journal) -> list[tuple[int, int, int]]:
    return [(slot, p.decode(frame).seq, state) for slot, frame, state in journal.live_alarms()]


def raise_alarm(journal: Journal, trigger: int = p.TRIGGER_HOLD) -> int:
    return journal.append(p.ALARM_RAISED, {"mode": 1, "trigger": trigger, "battery_pct": 90}, 0)


def test_an_acked_alarm_stays_live_through_trims_and_compactions_until_cancelled(tmp_path):
    path = tmp_path / "j"
    journal = open_journal(path, max_bytes=512)
    seq = raise_alarm(journal)
    journal.ack(seq)
    journal.ack(journal.append(p.ALARM_ACKED, {"alarm_seq": seq}))
    for _ in range(60):  # a long quiet time of door events, every one acked: many compactions
        journal.ack(journal.append(p.DOOR_OPENED, {"arm_state": 0}))
    assert os.path.getsize(path) <= 512 and journal.depth == 0
    again = open_journal(path, max_bytes=512)
    assert live(again) == [(SLOT_PANIC, seq, ACKED)]
    assert again.recovered["alarms"] == 1
    again.append(p.SIREN_SILENCED, {"alarm_seq": seq, "source": 2})
    assert live(open_journal(path, max_bytes=512)) == [(SLOT_PANIC, seq, ACKED | SILENCED)]
    open_journal(path, max_bytes=512).append(p.ALARM_CANCELLED, {"alarm_seq": seq, "source": 2})
    assert live(open_journal(path, max_bytes=512)) == []


def test_a_cancelled_alarm_whose_cancel_the_phone_acked_stays_cancelled_after_compaction(tmp_path):
    # found by the power-cut property below: the raise still pending, its cancel trimmed, then a
    # compaction (a torn record at boot, or the file growing) wrote the raise alone and revived it
    path = tmp_path / "j"
    journal = open_journal(path, capacity=8, max_bytes=512)
    seq = raise_alarm(journal)
    journal.ack(journal.append(p.ALARM_CANCELLED, {"alarm_seq": seq, "source": 2}))
    for _ in range(30):  # a quiet time of door events, every one acked: many compactions
        journal.ack(journal.append(p.DOOR_OPENED, {"arm_state": 0}))
    assert [s for s, _ in journal.pending()] == [seq]  # the phone never acked the raise itself
    assert live(journal) == [] and live(open_journal(path, capacity=8, max_bytes=512)) == []


def test_one_live_alarm_per_slot_and_events_of_other_alarms_change_nothing(tmp_path):
    journal = open_journal(tmp_path / "j")
    old = raise_alarm(journal)
    journal.append(p.ALARM_CANCELLED, {"alarm_seq": old, "source": 1})
    panic = raise_alarm(journal, p.TRIGGER_TRIPLE_PRESS)
    door = raise_alarm(journal, p.TRIGGER_DOOR_INTRUSION)
    journal.append(p.ALARM_CANCELLED, {"alarm_seq": old, "source": 2})  # an old one again: no effect
    journal.append(p.SIREN_SILENCED, {"alarm_seq": 999, "source": 2})
    journal.append(p.SIREN_SILENCED, {"alarm_seq": door, "source": 2})
    assert live(journal) == [(SLOT_PANIC, panic, 0), (SLOT_DOOR, door, SILENCED)]
    assert live(open_journal(tmp_path / "j")) == live(journal)
    assert (slot_of(p.TRIGGER_TAMPER), slot_of(p.TRIGGER_PULL_PIN)) == (SLOT_DOOR, SLOT_PANIC)


def test_alarm_state_that_a_full_journal_cannot_take_as_an_event_is_kept_as_a_record(tmp_path):
    journal = open_journal(tmp_path / "j", capacity=8)
    seq = raise_alarm(journal)
    for _ in range(8):
        journal.append(p.TAMPER, {"tampered": 1})  # critical: nothing can make room
    assert journal.append(p.SIREN_SILENCED, {"alarm_seq": seq, "source": 1}) == 0  # not journaled...
    assert live(open_journal(tmp_path / "j", capacity=8)) == [(SLOT_PANIC, seq, SILENCED)]  # ...kept


def test_a_cancel_kept_in_ram_only_still_ends_the_live_alarm_on_flash(tmp_path):
    journal = open_journal(tmp_path / "j", capacity=8, max_bytes=1 << 16)
    seq = raise_alarm(journal)
    while journal.depth <= 4 * 8:
        journal.append(p.TAMPER, {"tampered": 1})
    assert journal.ram_only
    journal.append(p.ALARM_CANCELLED, {"alarm_seq": seq, "source": 2})
    assert journal.ram_only == 2  # the cancel itself is RAM only...
    assert live(open_journal(tmp_path / "j", capacity=8, max_bytes=1 << 16)) == []  # ...its effect is not


def test_a_live_alarm_of_another_epoch_is_not_restored(tmp_path):
    journal = open_journal(tmp_path / "j")
    seq = raise_alarm(journal)
    frame = dict(journal.pending())[seq]  # an alarm of epoch 0x1234
    other = record(KIND_EPOCH, struct.pack("<HI", 0x5555, 1)) + record(KIND_ALARM, bytes((0,)) + frame)
    (tmp_path / "j").write_bytes(other)
    recovered = open_journal(tmp_path / "j")
    assert recovered.epoch == 0x5555 and live(recovered) == []  # its seq means nothing in this epoch
    (tmp_path / "j").write_bytes(b"\xff" * 40)  # nothing recoverable: a new epoch, nothing live
    assert live(Journal(str(tmp_path / "j"), new_epoch=lambda: 0x4321)) == []


ALARM_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("raise"), st.sampled_from([p.TRIGGER_HOLD, p.TRIGGER_DOOR_INTRUSION])),
        st.tuples(st.sampled_from(["acked", "silenced", "cancelled"]), st.integers(0, 5)),
        st.tuples(st.just("ack"), st.integers(0, 30)),
        st.tuples(st.just("door"), st.just(0)),
    ),
    min_size=1,
    max_size=20,
)
_STATE_EVENTS = {"acked": p.ALARM_ACKED, "silenced": p.SIREN_SILENCED, "cancelled": p.ALARM_CANCELLED}


def play_alarms(journal: Journal, ops) -> None:
    raised, appended = [], []
    for op, arg in ops:
        if op == "raise":
            raised.append(raise_alarm(journal, arg))
            appended.append(raised[-1])
        elif op in _STATE_EVENTS and raised:
            fields = {"alarm_seq": raised[arg % len(raised)]}
            if op != "acked":
                fields["source"] = 2
            appended.append(journal.append(_STATE_EVENTS[op], fields))
        elif op == "ack" and appended:
            journal.ack(appended[arg % len(appended)])
        elif op == "door":
            appended.append(journal.append(p.DOOR_OPENED, {"arm_state": 0}))


def live_model(data: bytes) -> list[tuple[int, int, int]]:
    """The live alarms a prefix of the file says: the rule of journal.py, replayed."""
    alarms: dict[int, list[int]] = {}
    bits = {p.ALARM_ACKED: ACKED, p.SIREN_SILENCED: SILENCED, p.ALARM_CANCELLED: CANCELLED}
    for kind, payload in records_in(data):
        if kind == KIND_EVENT:
            event = p.decode(payload)
            if event.type == p.ALARM_RAISED:
                alarms[slot_of(event.trigger)] = [event.seq, 0]
            elif event.type in bits:
                for slot, entry in list(alarms.items()):
                    if entry[0] == event.alarm_seq:
                        entry[1] |= bits[event.type]
                        if entry[1] & CANCELLED:
                            del alarms[slot]
        elif kind == KIND_ALARM:
            alarm = p.decode(payload[1:])
            slot = slot_of(alarm.trigger)
            if payload[0] & CANCELLED:
                if slot in alarms and alarms[slot][0] == alarm.seq:
                    del alarms[slot]
            else:
                alarms[slot] = [alarm.seq, payload[0]]
    return sorted((slot, seq, state) for slot, (seq, state) in alarms.items())


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=ALARM_OPS, max_bytes=st.sampled_from([512, 1 << 16]))
def test_a_power_cut_at_any_byte_keeps_the_live_alarms_of_what_was_written(tmp_path, ops, max_bytes):
    path = tmp_path / "j"
    path.unlink(missing_ok=True)
    journal = open_journal(path, capacity=8, max_bytes=max_bytes)
    play_alarms(journal, ops)
    assert live(open_journal(path, capacity=8, max_bytes=max_bytes)) == live(journal)  # a clean reboot
    full = path.read_bytes()
    for cut in range(len(full) + 1):
        path.write_bytes(full[:cut])
        recovered = open_journal(path, capacity=8, max_bytes=max_bytes)
        assert live(recovered) == live_model(full[:cut]), f"cut at {cut}"
        assert all(seq < recovered.next_seq for _, seq, _ in live(recovered))
        assert live(open_journal(path, capacity=8, max_bytes=max_bytes)) == live(recovered)  # rewritten
