"""Low power on the virtual board: the firmware deep-sleeps when nothing is going on and wakes
on the button, the door, the pull-pin or its heartbeat timer, straight into the alarm path."""

from __future__ import annotations

import asyncio
import time

import pytest
from jikimi import protocol as p
from jikimi_host.relay.device_clock import DEVICE_EPOCH_UNIX
from jikimi_host.rig.firmware import (
    CONFIG,
    events_logged,
    expect_event,
    expect_log,
    firmware_board,
    log_records,
    pair_at_power_up,
)
from jikimi_host.wait import until

pytestmark = pytest.mark.micropython
SLEEPY = dict(CONFIG, power={"idle_sleep_s": 1}, ble={"heartbeat_s": 3600})


def boots(board) -> list[dict]:
    return [r for r in log_records(board) if r.get("k") == "boot"]


async def asleep(board, count: int = 1) -> None:
    await until(lambda: len([r for r in log_records(board) if r.get("k") == "sleep"]) >= count
                and board.asleep, what="deep sleep")


@pytest.fixture
async def sleepy_bell(tmp_path, radio):
    async for board in firmware_board(tmp_path / "flash", radio, SLEEPY):
        yield board


async def test_an_idle_bell_sleeps_and_a_held_button_wakes_it_into_the_alarm(sleepy_bell):
    bell = sleepy_bell
    await bell.start()
    await asleep(bell)
    assert not any(o.value for o in bell.pwm_history("buzzer"))

    bell.set_pin("button", 0)  # pressed (active low), and held
    await until(lambda: len(boots(bell)) == 2, what="the wake-up")
    assert boots(bell)[-1]["wake"] == "pin"
    # HOLD fires after hold_ms while still held: no power-up pairing deferral after a wake-up
    await expect_log(bell, "core", msg="gesture hold")  # the button is still down here
    await until(lambda: any(o.value for o in bell.pwm_history("buzzer")), what="the siren")
    await expect_event(bell, "alarm_raised seq=1 mode=1 trigger=1")
    bell.release("button")
    await asyncio.sleep(1.5)  # longer than idle_sleep_s: an alarm keeps the bell awake
    assert not bell.asleep


# The triple press's window at its widest (5 s, not 1.5 s): the two presses after the wake-up come
# when the host has seen the bell boot, which a loaded host may see late (a fresh-clone run).
WIDE_TRIPLE = dict(SLEEPY, gestures=dict(CONFIG["gestures"], multi_window_ms=5000))


@pytest.fixture
async def sleepy_bell_wide_triple(tmp_path, radio):
    async for board in firmware_board(tmp_path / "flash", radio, WIDE_TRIPLE):
        yield board


async def test_a_triple_press_from_sleep_counts_the_press_that_woke_the_bell(sleepy_bell_wide_triple):
    bell = sleepy_bell_wide_triple
    await bell.start()
    await asleep(bell)
    await bell.press("button", hold_s=0.02)  # the wake-up press, over before the board booted
    await until(lambda: len([r for r in log_records(bell) if r.get("k") == "ready"]) == 2, what="awake")
    for _ in range(2):
        # Quarter-second presses, well inside the 5 s window: a board process that a loaded host
        # leaves unscheduled for longer than a short press reads its two edges together, closer
        # than the 20 ms debounce, and rightly takes them for a bounce.
        await bell.press("button", hold_s=0.25)
        await asyncio.sleep(0.25)
    await expect_log(bell, "core", msg="gesture triple")
    await expect_event(bell, "alarm_raised seq=1 mode=2 trigger=2")
    assert not any(o.value for o in bell.pwm_history("buzzer"))  # silent


async def test_the_heartbeat_timer_wakes_the_bell_which_sleeps_again(tmp_path, radio):
    config = dict(SLEEPY, ble={"heartbeat_s": 10})
    async for bell in firmware_board(tmp_path / "flash", radio, config):
        await bell.start()
        await asleep(bell)
        await until(lambda: len(boots(bell)) == 2, timeout_s=30, what="the timer wake-up")
        assert boots(bell)[-1]["wake"] == "timer"
        await asleep(bell, count=2)
        assert not events_logged(bell)


async def test_a_bonded_phone_gets_an_alarm_raised_from_sleep_with_the_time_it_happened(tmp_path, radio):
    config = dict(SLEEPY, power={"idle_sleep_s": 2})
    async for bell in firmware_board(tmp_path / "flash", radio, config):
        app = await pair_at_power_up(bell, radio)
        clock_s = int(time.time()) - DEVICE_EPOCH_UNIX
        await app.send(p.SET_TIME, time=clock_s)  # as the relay does on every connection
        await until(lambda: [r for r in app.of(p.RESULT) if r.command == p.SET_TIME], what="SET_TIME's result")
        await asleep(bell)  # the bell dropped the phone and sleeps
        await until(lambda: not app.phone.connected, what="the phone dropped")

        await bell.press("button", hold_s=2.0)
        await expect_log(bell, "core", msg="gesture hold")
        await app.phone.connect(bell.ble.identity_address)  # the relay reconnects when it sees it
        await app.phone.encrypt()
        app.frames.clear()
        await app.open()
        (alarm,) = await until(lambda: app.of(p.ALARM_RAISED), what="the alarm frame")
        # the clock was kept over the sleep: the alarm says when it happened (not 0, "unknown")
        assert clock_s + 2 <= alarm.time <= int(time.time()) - DEVICE_EPOCH_UNIX


async def test_an_armed_door_alarm_stays_awake_and_a_disarmed_one_wakes_when_the_door_opens(tmp_path, radio):
    config = dict(SLEEPY, roles=["door"], door={"exit_delay_ms": 0, "entry_delay_ms": 2000})
    async for door in firmware_board(tmp_path / "flash", radio, config):
        await door.start()
        await asleep(door)
        door.set_pin("reed", 1)  # opened while disarmed: wakes, logs, no alarm
        await until(lambda: len(boots(door)) == 2, what="the wake-up")
        await expect_event(door, "door_opened seq=1 arm_state=0")
        door.set_pin("reed", 0)
        await asyncio.sleep(2.0)
        assert not door.asleep  # the door_opened event waits for a phone to acknowledge it
        assert not events_logged(door, "alarm_raised")
