"""An alarm survives a reset (issue 12): the real firmware on the virtual board, a Bumble phone.

After a power cut, a watchdog or soft reset, an alarm that was raised and not cancelled is active
again from the journal, with its own seq: the phone's CANCEL_ALARM and SILENCE_SIREN work on it,
and the siren follows the rule in firmware/CORE.md ("After a reboot"): a loud alarm that was
sounding sounds again, the cancel window counts from the alarm's own time where the kept clock
tells it (a reset), and is over where it does not (a power cut).
"""

from __future__ import annotations

import time

import pytest
from jikimi import protocol as p
from jikimi_host.relay.device_clock import DEVICE_EPOCH_UNIX
from jikimi_host.rig.firmware import (
    CONFIG,
    PhoneApp,
    events_logged,
    expect_event,
    firmware_board,
    log_records,
    pair_at_power_up,
    records_since,
)
from jikimi_host.wait import until

pytestmark = pytest.mark.micropython
RESETTABLE = dict(CONFIG, test_console=True, alarm={"cancel_window_ms": 60000})


@pytest.fixture
async def resettable_bell(tmp_path, radio):
    """The bell with the rig's test console, whose `reset` is machine.reset() (RTC memory kept)."""
    async for board in firmware_board(tmp_path / "flash", radio, RESETTABLE):
        yield board


def now_s() -> int:
    return int(time.time()) - DEVICE_EPOCH_UNIX


def siren_on_since(board, mark: int) -> bool:
    return any(o.value for o in board.pwm_history("buzzer")[mark:])


def siren_off(board) -> bool:
    history = board.pwm_history("buzzer")
    return bool(history) and history[-1].value == 0


async def status_now(app: PhoneApp) -> object:
    """A STATUS answering this REQUEST_STATUS (not a heartbeat sent earlier)."""
    before = len(app.frames)
    assert await result_of(app, p.REQUEST_STATUS) == p.E_OK
    found = await until(lambda: [m for m in app.frames[before:] if m.type == p.STATUS], what="status")
    return found[-1]




async def reboot_seen(board, mark: int) -> dict:
    await until(lambda: records_since(board, mark, "ready"), what="the reboot")
    return records_since(board, mark, "boot")[0]


async def reconnect(app: PhoneApp, board) -> None:
    """The bonded phone comes back: no pairing, it re-subscribes (CCCDs are not kept)."""
    await app.phone.connect(board.ble.identity_address)
    await app.phone.encrypt()
    app.frames.clear()
    await app.open()


async def result_of(app: PhoneApp, kind: int, **fields: int) -> int:
    await app.send(kind, **fields)
    counter = app.counter
    found = await until(lambda: [r for r in app.of(p.RESULT) if r.counter == counter], what=f"RESULT of {kind}")
    return found[0].code


async def test_an_alarm_cut_off_by_a_power_loss_is_active_again_and_the_phone_cancels_it(bell, radio):
    app = await pair_at_power_up(bell, radio)
    assert await result_of(app, p.SET_TIME, time=now_s()) == p.E_OK
    await app.phone.disconnect()  # the phone is away: the alarm cannot be acked
    await bell.press("button", hold_s=2.0)
    raised = await expect_event(bell, "alarm_raised seq=1 mode=1 trigger=1")
    await until(lambda: siren_on_since(bell, 0), what="the siren")

    await bell.power_cut()  # a brown-out, a battery knocked loose: no ack yet
    mark, sound_mark = len(log_records(bell)), len(bell.pwm_history("buzzer"))
    await bell.start()
    boot = await reboot_seen(bell, mark)
    assert boot["journal"]["pending"] == 1 and boot["journal"]["alarms"] == 1
    assert not records_since(bell, mark, "clock")  # a power cut takes the clock with it
    restored = [r["msg"] for r in records_since(bell, mark, "core") if r["msg"].startswith("restored")]
    # loud and not silenced: the siren comes back; no clock: the device's cancel window is over
    assert restored == ["restored alarm seq=1 mode=1 trigger=1 acked=0 silenced=0 age_ms=-1 siren=1 window=0"]
    await until(lambda: siren_on_since(bell, sound_mark), what="the siren again after the reboot")

    await reconnect(app, bell)
    await until(lambda: app.of(p.ALARM_RAISED), what="the alarm, redelivered")
    alarm = app.of(p.ALARM_RAISED)[0]
    assert (alarm.seq, alarm.mode, alarm.trigger) == (1, p.MODE_LOUD, p.TRIGGER_HOLD), raised
    assert alarm.time > 0  # raised with the phone's clock, before the power cut

    # A hold on the device now (coerced?) only silences: the window is not known to be open.
    await bell.press("button", hold_s=2.0)
    await until(lambda: app.of(p.SIREN_SILENCED), what="siren_silenced")
    assert app.of(p.SIREN_SILENCED)[0].source == p.SOURCE_DEVICE
    assert not events_logged(bell, "alarm_cancelled")

    # The owner's phone still can: the false alarm is taken back before 112 is called.
    assert await result_of(app, p.CANCEL_ALARM, epoch=alarm.epoch, alarm_seq=alarm.seq) == p.E_OK
    await until(lambda: app.of(p.ALARM_CANCELLED), what="alarm_cancelled")
    cancelled = app.of(p.ALARM_CANCELLED)[0]
    assert (cancelled.alarm_seq, cancelled.source) == (1, p.SOURCE_PHONE)
    await until(lambda: siren_off(bell), what="the siren off")
    assert not (await status_now(app)).flags & (p.FLAG_ALARM_ACTIVE | p.FLAG_SIREN_ON)


async def test_an_acked_alarm_survives_a_reset_and_the_phone_silences_then_cancels_it(resettable_bell, radio):
    bell = resettable_bell
    app = await pair_at_power_up(bell, radio)
    assert await result_of(app, p.SET_TIME, time=now_s()) == p.E_OK
    await bell.press("button", hold_s=2.0)
    await until(lambda: app.of(p.ALARM_RAISED), what="the alarm")
    alarm = app.of(p.ALARM_RAISED)[0]
    assert await result_of(app, p.ACK, epoch=alarm.epoch, seq=alarm.seq) == p.E_OK
    await until(lambda: app.of(p.ALARM_ACKED), what="alarm_acked")
    acked = app.of(p.ALARM_ACKED)[0]
    assert await result_of(app, p.ACK, epoch=acked.epoch, seq=acked.seq) == p.E_OK
    assert (await status_now(app)).journal_depth == 0  # every event acked, and trimmed

    mark, sound_mark = len(log_records(bell)), len(bell.pwm_history("buzzer"))
    bell.console.write(b"reset\n")  # machine.reset(): RTC memory, and so the clock, is kept
    boot = await reboot_seen(bell, mark)
    assert boot["journal"]["pending"] == 0 and boot["journal"]["alarms"] == 1
    assert records_since(bell, mark, "clock")  # kept over the reset
    restored = [r["msg"] for r in records_since(bell, mark, "core") if r["msg"].startswith("restored")]
    assert len(restored) == 1 and restored[0].startswith("restored alarm seq=1 mode=1 trigger=1 acked=1 silenced=0")
    assert restored[0].endswith("siren=1 window=1"), restored  # a minute's window, counted from the alarm
    await until(lambda: siren_on_since(bell, sound_mark), what="the siren again after the reset")

    await reconnect(app, bell)
    status = await status_now(app)
    assert status.flags & p.FLAG_ALARM_ACTIVE and status.flags & p.FLAG_SIREN_ON
    assert status.journal_depth == 0 and not app.of(p.ALARM_RAISED)  # acked: not sent again

    assert await result_of(app, p.SILENCE_SIREN) == p.E_OK
    await until(lambda: app.of(p.SIREN_SILENCED), what="siren_silenced")
    assert (app.of(p.SIREN_SILENCED)[0].alarm_seq, app.of(p.SIREN_SILENCED)[0].source) == (1, p.SOURCE_PHONE)
    await until(lambda: siren_off(bell), what="the siren off")
    assert await result_of(app, p.CANCEL_ALARM, epoch=alarm.epoch, alarm_seq=alarm.seq) == p.E_OK
    await until(lambda: app.of(p.ALARM_CANCELLED), what="alarm_cancelled")
    assert app.of(p.ALARM_CANCELLED)[0].alarm_seq == 1
    assert await result_of(app, p.CANCEL_ALARM, epoch=alarm.epoch, alarm_seq=alarm.seq) == p.E_WRONG_STATE


async def test_after_a_reset_a_hold_inside_the_alarms_own_cancel_window_cancels_it(resettable_bell, radio):
    bell = resettable_bell
    app = await pair_at_power_up(bell, radio)
    assert await result_of(app, p.SET_TIME, time=now_s()) == p.E_OK
    await bell.press("button", hold_s=2.0)
    await expect_event(bell, "alarm_raised seq=1")
    mark = len(log_records(bell))
    bell.console.write(b"reset\n")
    await reboot_seen(bell, mark)
    restored = [r["msg"] for r in records_since(bell, mark, "core") if r["msg"].startswith("restored")]
    assert len(restored) == 1 and restored[0].endswith("window=1"), restored
    await bell.press("button", hold_s=2.0)  # the owner, a false alarm: inside the minute
    await expect_event(bell, "alarm_cancelled seq=2 alarm_seq=1 source=1")
    await until(lambda: siren_off(bell), what="the siren off")
