"""Alarm, door, battery, siren and the device core's handling of the phone's commands."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from jikimi import config as cfg
from jikimi import protocol as p
from jikimi import siren as sn
from jikimi.alarm import Alarm, PanicAlarm
from jikimi.battery import Battery
from jikimi.device import CLOCK_SLACK_S, Device
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


# -- after a reboot: an alarm not yet cancelled is active again (CORE.md, "After a reboot") ----

CLOCK = 817905600  # the phone's time, s since 2000


def booted(tmp_path, now, roles=("panic",), clock_s=None, levels=None, **config):
    """The device on the same flash after a reboot at `now` (clock_s: the kept clock, if any)."""
    settings_ = {"passkey": "000001", "board": "sim", "roles": list(roles)}
    settings_.update(config)
    conf, errors = cfg.validate(settings_)
    assert not errors
    journal = Journal(str(tmp_path / "journal.bin"), new_epoch=lambda: 0x1234)
    lines: list[str] = []
    device = Device(conf, journal, now, levels or {}, (1, 2, 3), trace=lines.append, clock_s=clock_s)
    return device, lines


def hold(device, at):
    """A 3 s hold from `at` (more than boot_window_ms after the boot)."""
    device.input("button", 1, at)
    device.poll(at + 3100)
    device.input("button", 0, at + 3200)


def names(device):
    return [p.decode(f).name for _, f in device.journal.pending()]


def loud_alarm_at(tmp_path, clock=True, **config):
    """A loud alarm raised at tick 103005, at wall clock CLOCK + 3 if the phone set the clock."""
    device, _ = booted(tmp_path, 90000, **config)  # 10 s after power-up: no power-up press
    if clock:
        assert command(device, p.SET_TIME, 100000, time=CLOCK) == p.E_OK
    device.input("button", 1, 100000)
    device.poll(103100)
    assert device.panic.alarm.active and device.panic.alarm.siren_on
    return device


def test_alarm_restore_counts_the_window_and_the_siren_from_the_alarms_age():
    rec = Recorder()
    alarm = Alarm(rec, cancel_window_ms=20000, max_siren_ms=60000)
    alarm.restore(7, p.MODE_LOUD, p.TRIGGER_HOLD, True, False, 5000, 0)
    assert (alarm.active, alarm.seq, alarm.acked, alarm.siren_on) == (True, 7, True, True)
    assert alarm.in_cancel_window(14999) and not alarm.in_cancel_window(15000)
    alarm.poll(55000)
    assert not alarm.siren_on and rec.names() == ["siren_silenced"]  # 60 s from the alarm, not the boot
    unknown = Alarm(rec, cancel_window_ms=20000, max_siren_ms=60000)
    unknown.restore(8, p.MODE_LOUD, p.TRIGGER_HOLD, False, False, None, 0)
    assert not unknown.in_cancel_window(0) and unknown.siren_on  # age unknown: window over, full siren
    assert unknown.deadline() == 60000
    for mode, silenced, elapsed in ((p.MODE_SILENT, False, 0), (p.MODE_LOUD, True, 0), (p.MODE_LOUD, False, 60000)):
        quiet = Alarm(rec, cancel_window_ms=20000, max_siren_ms=60000)
        quiet.restore(9, mode, p.TRIGGER_HOLD, False, silenced, elapsed, 0)
        assert quiet.active and not quiet.siren_on
    assert rec.names() == ["siren_silenced"]  # restoring journals nothing


def test_after_a_power_cut_the_alarm_is_active_the_phone_cancels_it_and_a_hold_only_silences(tmp_path):
    loud_alarm_at(tmp_path)
    device, lines = booted(tmp_path, 5000)  # power cut: no clock kept
    alarm = device.panic.alarm
    assert (alarm.active, alarm.seq, alarm.siren_on) == (True, 1, True)
    assert device.output(5100)[1] > 0  # the siren is back at once
    assert "restored alarm seq=1 mode=1 trigger=1 acked=0 silenced=0 age_ms=-1 siren=1 window=0" in lines
    assert device.status(5100).flags & p.FLAG_ALARM_ACTIVE
    hold(device, 8000)  # 3 s after the boot: the window is taken as over
    assert names(device) == ["alarm_raised", "siren_silenced"] and alarm.active
    assert command(device, p.CANCEL_ALARM, 12000, epoch=0x1234, alarm_seq=2) == p.E_WRONG_STATE
    assert command(device, p.CANCEL_ALARM, 12000, epoch=0x1234, alarm_seq=1) == p.E_OK
    assert names(device)[-1] == "alarm_cancelled" and not alarm.active
    again, _ = booted(tmp_path, 20000)
    assert not again.panic.alarm.active  # cancelled stays cancelled
    assert command(again, p.CANCEL_ALARM, 20000, epoch=0x1234, alarm_seq=1) == p.E_WRONG_STATE


def test_after_a_reset_with_the_clock_kept_a_hold_cancels_inside_the_alarms_own_window(tmp_path):
    loud_alarm_at(tmp_path)  # raised at CLOCK + 3
    device, lines = booted(tmp_path, 0, clock_s=CLOCK + 8)  # reset 5 s after the alarm, clock kept
    assert lines[0].endswith("age_ms=%d siren=1 window=1" % ((5 + CLOCK_SLACK_S) * 1000))
    hold(device, 2500)  # fires at 5505: 5 + 2 + 5.5 s < 20 s
    assert names(device)[-1] == "alarm_cancelled"
    assert p.decode(device.journal.pending()[-1][1]).source == p.SOURCE_DEVICE


def test_after_a_reset_a_hold_past_the_alarms_window_only_silences_even_right_after_the_boot(tmp_path):
    loud_alarm_at(tmp_path)
    device, lines = booted(tmp_path, 0, clock_s=CLOCK + 16)  # 13 s later: 15 s with the slack
    assert lines[0].endswith("window=1")
    hold(device, 2500)  # fires at 5505: past the alarm's 20 s
    assert names(device)[-1] == "siren_silenced" and device.panic.alarm.active


def test_a_silent_alarm_restores_silent_and_a_silenced_one_stays_silenced(tmp_path):
    device, _ = booted(tmp_path, 90000)
    for at in (100000, 100500, 101000):
        device.input("button", 1, at)
        device.input("button", 0, at + 100)
    assert device.panic.alarm.active and device.panic.alarm.mode == p.MODE_SILENT
    device, _ = booted(tmp_path, 0)
    assert device.panic.alarm.active and device.output(100) == sn.SILENT
    assert command(device, p.LOCATE, 100) == p.E_WRONG_STATE  # still never gives it away
    assert command(device, p.CANCEL_ALARM, 200, epoch=0x1234, alarm_seq=1) == p.E_OK

    tmp = tmp_path / "silenced"
    tmp.mkdir()
    device = loud_alarm_at(tmp, clock=False)
    assert command(device, p.SILENCE_SIREN, 104000) == p.E_OK
    device, _ = booted(tmp, 0)
    assert device.panic.alarm.active and not device.panic.alarm.siren_on
    assert device.output(100) == sn.SILENT


def test_a_loud_alarm_resumes_for_what_is_left_of_the_siren_time_when_the_clock_tells(tmp_path):
    loud_alarm_at(tmp_path)
    device, _ = booted(tmp_path, 0, clock_s=CLOCK + 3 + 170)  # 170 s (+2) of the 180 s gone
    assert device.panic.alarm.siren_on
    device.poll(7999)
    assert device.panic.alarm.siren_on
    device.poll(8000)
    assert not device.panic.alarm.siren_on and names(device)[-1] == "siren_silenced"
    device, _ = booted(tmp_path, 0, clock_s=CLOCK + 3 + 600)  # ran out while the power was off
    assert device.panic.alarm.active and not device.panic.alarm.siren_on


def test_a_pull_pin_still_out_at_boot_sounds_the_restored_alarm_not_a_new_one(tmp_path):
    device, _ = booted(tmp_path, 0, roles=("panic", "pull_pin"))
    device.input("pull_pin", 1, 1000)
    device.poll(1100)
    assert names(device) == ["alarm_raised"]
    assert command(device, p.SILENCE_SIREN, 2000) == p.E_OK
    device, _ = booted(tmp_path, 0, roles=("panic", "pull_pin"), levels={"pull_pin": 1})
    assert device.panic.alarm.siren_on and device.panic.alarm.seq == 1
    assert [n for n in names(device) if n == "alarm_raised"] == ["alarm_raised"]


def test_the_door_intrusion_alarm_is_restored_and_only_the_phone_ends_it(tmp_path):
    device, _ = booted(tmp_path, 0, roles=("door",))
    assert command(device, p.ARM, 0) == p.E_OK
    device.input("door", 1, 31000)
    device.poll(47000)  # past the 15 s entry delay
    assert device.door.state == p.ARM_ALARM
    seq = device.door.alarm.seq
    device, lines = booted(tmp_path, 0, roles=("door",))
    assert device.door.state == p.ARM_ALARM and device.door.alarm.siren_on
    assert "trigger=%d" % p.TRIGGER_DOOR_INTRUSION in lines[0]
    assert device.door.toggle(p.SOURCE_DEVICE, 100) == p.E_WRONG_STATE  # the intruder's double press
    assert command(device, p.CANCEL_ALARM, 200, epoch=0x1234, alarm_seq=seq) == p.E_OK
    assert names(device)[-2:] == ["alarm_cancelled", "disarmed"]
    assert device.door.state == p.ARM_DISARMED and not device.door.alarm.active
    device, _ = booted(tmp_path, 0, roles=("door",))
    assert device.door.state == p.ARM_DISARMED


@settings(max_examples=60, deadline=None)
@given(age_s=st.integers(0, 40), kept_behind_s=st.integers(0, CLOCK_SLACK_S), hold_at=st.integers(2100, 30000))
def test_a_hold_after_a_reset_never_cancels_past_the_alarms_true_window(tmp_path_factory, age_s, kept_behind_s,
                                                                         hold_at):
    tmp_path = tmp_path_factory.mktemp("j")
    loud_alarm_at(tmp_path)  # raised at CLOCK + 3 (its event time; the true time is up to 1 s later)
    # the kept clock may run up to CLOCK_SLACK_S behind the true one
    device, _ = booted(tmp_path, 0, clock_s=CLOCK + 3 + age_s - kept_behind_s)
    hold(device, hold_at)
    cancelled = names(device)[-1] == "alarm_cancelled"
    true_age_ms = (age_s - 1) * 1000 + hold_at + 3000  # the least it can be
    if cancelled:
        assert true_age_ms < 20000
    else:
        assert names(device)[-1] == "siren_silenced"


def test_status_counts_the_shells_drops_saturating_at_16_bits(tmp_path):
    device, _ = make_device(tmp_path)
    assert device.status(100000).dropped == 0
    device.count_dropped(40)
    device.count_dropped(2)
    assert device.status(100000).dropped == 42
    device.count_dropped(0x10000)
    assert device.status(100000).dropped == 0xFFFF
    assert len(p.encode(device.status(100000))) == p.MAX_FRAME


def test_a_resynced_button_neither_alarms_on_chatter_nor_misses_the_hold_after_it(tmp_path):
    """The app's edge ring overflowed during a burst of chatter: the device gets the edges that
    fitted, then the level the app read (resync_input)."""
    device, lines = make_device(tmp_path)
    for burst in (101000, 101400, 101800):  # three bursts: taken as presses, a false TRIPLE
        for i in range(31):  # the edges that fitted: 1, 0, ..., 1 (the last one kept closes)
            device.input("button", 1 - i % 2, burst + i)
        device.resync_input("button", 0, burst + 100)  # released, when the app read it
    device.poll(110000)
    assert not device.journal.pending() and not [line for line in lines if line.startswith("gesture")]
    for i in range(31):  # a real press that starts with chatter and loses edges too
        device.input("button", 1 - i % 2, 120000 + i)
    device.resync_input("button", 1, 120050)  # held
    device.poll(120050 + 3000 + 5)  # hold_ms (3 s) after the press accepted at the resync + 5 ms
    assert "gesture hold" in lines
    (_, frame), = device.journal.pending()
    assert p.decode(frame).type == p.ALARM_RAISED
