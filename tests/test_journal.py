"""The crash-safe journal: power cuts at every byte, damaged bytes, trimming, the full policy."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jikimi import protocol as p
from jikimi.journal import KIND_EVENT, KIND_TRIM, Journal, parse

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
    records, _, _ = parse(data)
    pending, highest = set(), 0
    for kind, payload in records:
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
    assert p.decode(dict(again.pending())[4]).to_dict()["seq"] == 4


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
