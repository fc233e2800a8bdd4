"""A bell whose firmware hangs is reset by its watchdog and comes back with its alarm (issue 14).

The app feeds machine.WDT (8 s, app.WATCHDOG_MS) from its ticker task; on the virtual board the
host half enforces it (jikimi_host.sim.board). Here the whole interpreter is stopped (SIGSTOP),
as a loop stuck in a task would stop the ticker: nothing feeds the watchdog, which resets the
board. The alarm raised before the hang is journaled, so after the watchdog reset it is active
again (CORE.md, "After a reboot"): the siren sounds, the phone gets it and can cancel it.
"""

from __future__ import annotations

import os
import signal
import time

import pytest
from jikimi import protocol as p
from jikimi_host.relay.central import DEVICE_EPOCH_UNIX
from jikimi_host.rig.firmware import expect_event, log_records, pair_at_power_up, until
from jikimi_host.sim.board import WDT_RESET

pytestmark = pytest.mark.micropython


async def test_a_hung_bell_is_reset_by_its_watchdog_and_its_alarm_still_reaches_the_phone(bell, radio):
    app = await pair_at_power_up(bell, radio)
    await app.send(p.SET_TIME, time=int(time.time()) - DEVICE_EPOCH_UNIX)
    await app.phone.disconnect()  # the phone is away when the alarm is raised
    await bell.press("button", hold_s=2.0)
    await expect_event(bell, "alarm_raised")
    boots = len(bell.boots)
    mark = len(log_records(bell))

    os.kill(bell.boot.process.pid, signal.SIGSTOP)  # the firmware hangs: its loop runs no more
    await until(lambda: len(bell.boots) > boots, 30, "the watchdog's reset")
    assert bell.boot.reset_cause == WDT_RESET
    boot = await until(lambda: [r for r in log_records(bell)[mark:] if r.get("k") == "boot"], 30, "the reboot")
    assert boot[0]["reset_cause"] == WDT_RESET and boot[0]["journal"]["alarms"] == 1
    siren_from = len(bell.pwm_history("buzzer"))
    await until(lambda: [o for o in bell.pwm_history("buzzer")[siren_from:] if o.value], 30, "the siren again")

    await app.phone.connect(bell.ble.identity_address, attempts=20)
    await app.phone.encrypt()
    app.frames.clear()
    await app.open()
    await app.send(p.SET_TIME, time=int(time.time()) - DEVICE_EPOCH_UNIX)  # as the relay does
    (alarm,) = await until(lambda: app.of(p.ALARM_RAISED), 30, "the alarm after the watchdog reset")
    await app.send(p.CANCEL_ALARM, epoch=alarm.epoch, alarm_seq=alarm.seq)
    await until(lambda: [r for r in app.of(p.RESULT) if r.command == p.CANCEL_ALARM], 30, "the cancel's result")
    (result,) = [r for r in app.of(p.RESULT) if r.command == p.CANCEL_ALARM]
    assert result.code == p.E_OK  # active again, so the owner's cancel works on it
