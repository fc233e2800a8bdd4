"""Alarm, door, battery, siren and the device core's handling of the phone's commands."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from jikimi import config as cfg
from jikimi import protocol as p
from jikimi import siren as sn
from jikimi.alarm import Alarm, PanicAlarm
from jikimi.battery import Battery
from jikimi.device import Device
from jikimi.door import DoorAlarm
from jikimi.gestures import HOLD, TRIPLE
from jikimi.journal import Journal


class Recorder:
    """Stands in for the journal's append: records (name, fields) and numbers them."""

    def __init__(self):
        self.events: list[tuple[str, dict]] = []

    def __call__(self, type_code, fields):
        self.events.append((p.type_name(type_code), dict(fields)))
        return len(self.events)

    def names(self):
        return [name for name, _ in self.events]


# -- alarm ----------------------------------------------------------------------------------


def test_silencing_never_cancels_and_the_ack_is_journaled_once():
    rec = Recorder()
    alarm = Alarm(rec, cancel_window_ms=20000, max_siren_ms=60000)
    assert alarm.raise_alarm(p.MODE_LOUD, p.TRIGGER_HOLD, 80, 0)
    assert alarm.siren_on
    alarm.ack(1)
    alarm.ack(1)
    assert alarm.silence(p.SOURCE_PHONE)
    assert alarm.active and not alarm.siren_on
    assert rec.names() == ["alarm_raised", "alarm_acked", "siren_silenced"]
    assert not alarm.raise_alarm(p.MODE_LOUD, p.TRIGGER_HOLD, 80, 10)  # one at a time


def test_the_siren_stops_after_the_maximum_time_but_the_alarm_stays():
    rec = Recorder()
    alarm = Alarm(rec, max_siren_ms=10000)
    alarm.raise_alarm(p.MODE_LOUD, p.TRIGGER_HOLD, 80, 5)
    assert alarm.deadline() == 10005
    alarm.poll(10004)
    assert alarm.siren_on
    alarm.poll(10005)
    assert not alarm.siren_on and alarm.active
    assert rec.events[-1] == ("siren_silenced", {"alarm_seq": 1, "source": p.SOURCE_TIMEOUT})


def test_a_device_hold_cancels_only_inside_the_cancel_window():
    rec = Recorder()
    panic = PanicAlarm(rec, cancel_window_ms=20000)
    panic.gesture(HOLD, 80, 0)
    panic.gesture(HOLD, 80, 19999)
    assert rec.names() == ["alarm_raised", "alarm_cancelled"]
    panic.gesture(TRIPLE, 80, 30000)
    panic.gesture(HOLD, 80, 50000)  # silent alarm, window over: nothing to silence, no cancel
    assert rec.names() == ["alarm_raised", "alarm_cancelled", "alarm_raised"]
    assert panic.alarm.active and panic.alarm.mode == p.MODE_SILENT


def test_a_silent_alarm_makes_no_sound_until_the_ring_is_pulled():
    rec = Recorder()
    panic = PanicAlarm(rec)
    panic.gesture(TRIPLE, 80, 0)
    assert not panic.alarm.siren_on
    panic.pull_pin(True, 80, 100)
    assert panic.alarm.siren_on
    panic.pull_pin(False, 80, 200)
    assert panic.alarm.active and not panic.alarm.siren_on
    assert rec.names() == ["alarm_raised", "siren_silenced"]


def test_the_alarm_sounds_even_if_recording_it_fails():
    def broken_journal(type_code, fields):
        raise OSError("flash")

    alarm = Alarm(broken_journal)
    try:
        alarm.raise_alarm(p.MODE_LOUD, p.TRIGGER_HOLD, 80, 0)
    except OSError:
        pass
    assert alarm.active and alarm.siren_on


# -- door -----------------------------------------------------------------------------------


def door(rec, **kw):
    return DoorAlarm(rec, False, 0, exit_delay_ms=1000, entry_delay_ms=2000, **kw)


def test_door_arming_entry_delay_and_alarm():
    rec = Recorder()
    d = door(rec)
    assert d.arm(p.SOURCE_PHONE, 0) == p.E_OK
    assert d.state == p.ARM_EXIT_DELAY
    d.door(True, 80, 500)  # leaving during the exit delay: fine
    d.door(False, 80, 600)
    d.poll(1000, 80)
    assert d.state == p.ARM_ARMED
    d.door(True, 80, 5000)
    assert d.state == p.ARM_ENTRY_DELAY
    assert d.disarm(p.SOURCE_DEVICE, 6000) == p.E_WRONG_STATE  # not on the device
    d.poll(7000, 80)
    assert d.state == p.ARM_ALARM and d.alarm.siren_on
    assert rec.events[-1] == ("alarm_raised", {"mode": 1, "trigger": p.TRIGGER_DOOR_INTRUSION, "battery_pct": 80})
    assert d.disarm(p.SOURCE_PHONE, 8000) == p.E_OK
    assert rec.names()[-2:] == ["alarm_cancelled", "disarmed"]
    assert d.state == p.ARM_DISARMED and not d.alarm.active


def test_door_open_at_the_end_of_the_exit_delay_starts_the_entry_delay():
    rec = Recorder()
    d = door(rec)
    d.arm(p.SOURCE_DEVICE, 0)
    d.door(True, 80, 100)
    d.poll(1000, 80)
    assert d.state == p.ARM_ENTRY_DELAY
    d.poll(2999, 80)
    assert d.state == p.ARM_ENTRY_DELAY
    d.poll(3000, 80)
    assert d.state == p.ARM_ALARM


def test_tamper_is_reported_always_and_alarms_only_when_armed():
    rec = Recorder()
    d = door(rec)
    d.tamper(True, 80, 0)
    d.tamper(False, 80, 10)
    assert rec.names() == ["tamper", "tamper"] and d.state == p.ARM_DISARMED
    d.arm(p.SOURCE_PHONE, 20)
    d.tamper(True, 80, 30)
    assert d.state == p.ARM_ALARM
    assert rec.events[-1][1]["trigger"] == p.TRIGGER_TAMPER


def test_door_events_while_disarmed_are_reported_but_quiet():
    rec = Recorder()
    d = door(rec)
    d.door(True, 80, 0)
    d.door(False, 80, 100)
    assert rec.events == [("door_opened", {"arm_state": 0}), ("door_closed", {"arm_state": 0})]
    assert not d.alarm.siren_on and d.deadline() is None


# -- battery --------------------------------------------------------------------------------


@given(st.lists(st.integers(3401, 3549), max_size=200))
def test_readings_between_the_thresholds_never_change_the_flag(readings):
    for start_low in (False, True):
        battery = Battery()
        battery.low = start_low
        assert not any(battery.reading(mv) for mv in readings)
        assert battery.low is start_low


@given(st.lists(st.sampled_from([3300, 3600]), max_size=200))
def test_the_low_flag_needs_three_readings_in_a_row(readings):
    battery = Battery(confirm=3)
    changes = sum(battery.reading(mv) for mv in readings)
    assert changes * 3 <= len(readings)


def test_battery_percentage_is_clamped():
    battery = Battery()
    for mv, pct in ((5000, 100), (4200, 100), (3750, 50), (3300, 0), (2500, 0)):
        battery.reading(mv)
        assert battery.pct == pct


# -- siren ----------------------------------------------------------------------------------


def test_the_alarm_sweep_rises_and_falls_between_2_and_4_khz():
    siren = sn.Siren()
    hz = [siren.output(sn.ALARM, t)[0] for t in range(0, 1000, 10)]
    assert min(hz) >= 2000 and max(hz) <= 4000
    assert hz[:50] == sorted(hz[:50]) and hz[50:] == sorted(hz[50:], reverse=True)
    assert max(hz) - min(hz) >= 1900
    assert all(siren.output(sn.ALARM, t)[1] == 32767 for t in range(0, 5000, 7))


def test_one_shot_patterns_end_and_quiet_patterns_are_quiet():
    siren = sn.Siren()
    for pattern in (sn.CONFIRM, sn.CANCELLED):
        length = sn.duration_ms(pattern)
        assert 0 < length < 1000
        assert siren.output(pattern, 0)[1] > 0
        assert siren.output(pattern, length) == sn.SILENT
    assert all(siren.output(sn.OFF, t) == sn.SILENT for t in range(0, 3000, 50))
    assert all(siren.output(sn.PAIRING, t)[:2] == (0, 0) for t in range(0, 3000, 50))
    assert sn.duration_ms(sn.ALARM) is None


# -- device core and the phone's commands ---------------------------------------------------


def make_device(tmp_path, roles=("panic",)):
    config, errors = cfg.validate({"passkey": "000001", "board": "sim", "roles": list(roles)})
    assert not errors
    journal = Journal(str(tmp_path / "journal.bin"), new_epoch=lambda: 0x1234)
    lines: list[str] = []
    return Device(config, journal, 100000, {}, (1, 2, 3), trace=lines.append), lines


def command(device, kind, now, **fields):
    return device.command(p.Message(kind, counter=1, **fields), now)


def test_commands_that_need_a_role_the_device_lacks(tmp_path):
    device, _ = make_device(tmp_path)
    assert command(device, p.ARM, 0) == p.E_NOT_SUPPORTED
    assert command(device, p.DISARM, 0) == p.E_NOT_SUPPORTED
    assert command(device, p.SILENCE_SIREN, 0) == p.E_WRONG_STATE
    assert command(device, p.CANCEL_ALARM, 0, epoch=0x1234, alarm_seq=1) == p.E_WRONG_STATE


def test_acks_and_cancels_must_name_the_current_epoch(tmp_path):
    device, _ = make_device(tmp_path)
    device.input("button", 1, 110000)
    device.poll(113100)
    assert device.journal.depth == 1
    assert command(device, p.ACK, 113200, epoch=0x9999, seq=1) == p.E_BAD_FIELD
    assert command(device, p.CANCEL_ALARM, 113200, epoch=0x9999, alarm_seq=1) == p.E_BAD_FIELD
    assert command(device, p.ACK, 113300, epoch=0x1234, seq=1) == p.E_OK
    assert [p.decode(f).name for _, f in device.journal.pending()] == ["alarm_acked"]
    assert command(device, p.CANCEL_ALARM, 113400, epoch=0x1234, alarm_seq=1) == p.E_OK


def test_events_carry_the_clock_once_the_phone_set_it(tmp_path):
    device, _ = make_device(tmp_path)
    assert command(device, p.SET_TIME, 100000, time=817905600) == p.E_OK
    device.input("button", 1, 110000)
    device.poll(113100)  # the hold fired at 113005
    (_, frame), = device.journal.pending()
    assert p.decode(frame).time == 817905600 + 13
    assert device.status(113100).flags & p.FLAG_CLOCK_SET


def test_status_reports_state_roles_and_journal_depth(tmp_path):
    device, _ = make_device(tmp_path, roles=("panic", "door"))
    assert command(device, p.ARM, 0) == p.E_OK
    status = device.status(130000)
    assert status.roles == p.ROLE_PANIC | p.ROLE_DOOR
    assert status.flags & p.FLAG_ARMED
    assert (status.fw_major, status.fw_minor, status.fw_patch) == (1, 2, 3)
    assert status.journal_depth == 1 and status.epoch == 0x1234
    assert status.uptime_s == 30


def test_locate_chirps_and_silence_stops_it(tmp_path):
    device, _ = make_device(tmp_path)
    assert command(device, p.LOCATE, 100000, seconds=2) == p.E_OK
    assert device.output(100050)[0] == 3500
    assert device.output(102000) == sn.SILENT
    assert command(device, p.LOCATE, 103000, seconds=0) == p.E_OK  # 0 = the default, 10 s
    assert device.pattern(112000)[0] == sn.LOCATE
    assert command(device, p.SILENCE_SIREN, 112100) == p.E_WRONG_STATE  # no alarm, but...
    assert device.pattern(112100)[0] == sn.OFF  # ...the chirping stopped


# -- waking from deep sleep, and when the device may sleep ------------------------------------


def woken_device(tmp_path, levels, wake="pin"):
    config, errors = cfg.validate({"passkey": "000001", "board": "sim", "roles": ["panic"]})
    assert not errors
    journal = Journal(str(tmp_path / "journal.bin"), new_epoch=lambda: 0x1234)
    return Device(config, journal, 5000, levels, (1, 2, 3), wake=wake)


def test_a_button_held_through_a_wake_up_alarms_after_hold_ms_not_after_the_pairing_time(tmp_path):
    device = woken_device(tmp_path, {"button": 1})
    device.poll(7999)
    assert device.journal.depth == 0
    device.poll(8000)  # 3 s after the wake-up, still held: HOLD, no power-up deferral
    assert [p.decode(f).name for _, f in device.journal.pending()] == ["alarm_raised"]
    assert not device.pairing_open


def test_the_press_that_woke_the_device_counts_toward_a_triple_press(tmp_path):
    device = woken_device(tmp_path, {})  # woken by the button, already let go during boot
    for at in (5300, 5700):
        device.input("button", 1, at)
        device.input("button", 0, at + 100)
    device.poll(6000)
    alarm = p.decode(device.journal.pending()[0][1])
    assert (alarm.name, alarm.mode, alarm.trigger) == ("alarm_raised", p.MODE_SILENT, p.TRIGGER_TRIPLE_PRESS)


def test_a_timer_wake_up_is_no_press_and_the_device_may_sleep_only_when_nothing_is_going_on(tmp_path):
    device = woken_device(tmp_path, {}, wake="timer")
    device.poll(20000)
    assert device.quiet()
    device.input("button", 1, 20000)
    assert not device.quiet()  # a press in progress
    device.input("button", 0, 20100)
    device.poll(22000)
    assert device.quiet() and device.journal.depth == 0  # a single short press: nothing
    device.input("button", 1, 30000)
    device.poll(33100)
    device.input("button", 0, 33200)
    device.poll(40000)
    assert not device.quiet()  # an alarm is active and unacknowledged
