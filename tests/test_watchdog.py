"""A bell whose firmware hangs is reset by its watchdog and comes back with its alarm (issue 14).

The app's watchdog task feeds machine.WDT (8 s, app.WATCHDOG_MS) only while the ticker, which
runs the alarm path (and the battery reading), has run in time; on the virtual board the host
half enforces the WDT (jikimi_host.sim.board). Three ways to hang: the ticker or the watchdog
task stops while the loop runs on (the test console's `hang`, as a task stuck awaiting for
good), or the whole loop stops (the interpreter stopped with SIGSTOP, as a task that never
yields). Each way nothing feeds the watchdog and it resets the board. The alarm raised before
the hang is journaled, so after the reset it is active again (CORE.md, "After a reboot"): the
siren sounds, the phone gets it and can cancel it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest
from jikimi import protocol as p
from jikimi_host.relay.device_clock import DEVICE_EPOCH_UNIX
from jikimi_host.rig.firmware import CONFIG, expect_event, firmware_board, log_records, pair_at_power_up
from jikimi_host.sim.board import WDT_RESET
from jikimi_host.sim.hands import console_tail
from jikimi_host.device.testconsole import TestConsoleClient, TestConsoleError
from jikimi_host.wait import until

pytestmark = pytest.mark.micropython

WATCHED = dict(CONFIG, test_console=True)


@pytest.fixture
async def watched_bell(tmp_path, radio):
    async for board in firmware_board(tmp_path / "flash", radio, WATCHED):
        yield board


async def hang_task(bell, name: str) -> None:
    console = await asyncio.to_thread(TestConsoleClient, bell.console.path)
    try:
        await asyncio.to_thread(console.command, f"hang {name}", 30)
    finally:
        await asyncio.to_thread(console.close)


async def watchdog_reset(bell, boots: int, mark: int) -> dict:
    """The reset the watchdog made, and the boot record after it."""
    await until(lambda: len(bell.boots) > boots, 60, "the watchdog's reset")
    assert bell.boot.reset_cause == WDT_RESET
    (boot, *_) = await until(lambda: [r for r in log_records(bell)[mark:] if r.get("k") == "boot"], 30, "the reboot")
    assert boot["reset_cause"] == WDT_RESET
    return boot


async def alarm_with_the_phone_away(bell, radio):
    app = await pair_at_power_up(bell, radio)
    await app.send(p.SET_TIME, time=int(time.time()) - DEVICE_EPOCH_UNIX)
    await app.phone.disconnect()  # the phone is away when the alarm is raised
    await bell.press("button", hold_s=2.0)
    await expect_event(bell, "alarm_raised")
    return app


async def the_alarm_is_back_and_reaches_the_phone(bell, app, boot: dict, siren_from: int) -> None:
    assert boot["journal"]["alarms"] == 1
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


async def test_a_hung_ticker_is_caught_while_the_loop_runs_on_and_the_alarm_still_reaches_the_phone(watched_bell, radio):
    bell = watched_bell
    app = await alarm_with_the_phone_away(bell, radio)
    boots, mark = len(bell.boots), len(log_records(bell))
    siren_from = len(bell.pwm_history("buzzer"))

    await hang_task(bell, "ticker")  # the alarm path's task stops; the watchdog task runs on
    (hung, *_) = await until(lambda: [r for r in log_records(bell)[mark:] if r.get("k") == "task_hung"], 30,
                             "the watchdog to see the ticker hung", log=lambda: console_tail(bell))
    assert hung["msg"] == "ticker" and hung["idle_ms"] >= 4000  # WATCHDOG_MS / 2 without running
    boot = await watchdog_reset(bell, boots, mark)
    await the_alarm_is_back_and_reaches_the_phone(bell, app, boot, siren_from)


async def test_a_hung_watchdog_task_resets_the_bell_too(watched_bell):
    bell = watched_bell
    await bell.start()
    await until(lambda: records_of(bell, "test_console"), 30, "the test console")
    boots, mark = len(bell.boots), len(log_records(bell))
    await hang_task(bell, "watchdog")  # the ticker runs on, but nothing feeds the watchdog
    await watchdog_reset(bell, boots, mark)


async def test_hang_names_the_tasks_when_given_one_the_app_has_not(watched_bell):
    bell = watched_bell
    await bell.start()
    await until(lambda: records_of(bell, "test_console"), 30, "the test console")
    console = await asyncio.to_thread(TestConsoleClient, bell.console.path)
    try:
        with pytest.raises(TestConsoleError, match="no task 'tickr'.*ticker"):
            await asyncio.to_thread(console.command, "hang tickr", 30)
    finally:
        await asyncio.to_thread(console.close)


async def test_a_stalled_loop_is_reset_by_the_watchdog_and_its_alarm_still_reaches_the_phone(bell, radio):
    app = await alarm_with_the_phone_away(bell, radio)
    boots, mark = len(bell.boots), len(log_records(bell))
    siren_from = len(bell.pwm_history("buzzer"))

    os.kill(bell.boot.process.pid, signal.SIGSTOP)  # the firmware hangs: its loop runs no more
    boot = await watchdog_reset(bell, boots, mark)
    await the_alarm_is_back_and_reaches_the_phone(bell, app, boot, siren_from)


def records_of(bell, kind: str) -> list[dict]:
    return [r for r in log_records(bell) if r.get("k") == kind]
