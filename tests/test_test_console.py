"""The rig's test console over the board's serial port (pyserial on the virtual board's console
pty, as a rig would use a real board's USB serial port)."""

from __future__ import annotations

import asyncio

import pytest
from jikimi import protocol as p
from jikimi_host.rig.firmware import (
    CONFIG,
    events_logged,
    expect_log,
    firmware_board,
)
from jikimi_host.device.testconsole import TestConsoleClient, TestConsoleError
from jikimi_host.wait import until

pytestmark = pytest.mark.micropython


@pytest.fixture
async def rig_bell(tmp_path, radio):
    async for board in firmware_board(tmp_path / "flash", radio, dict(CONFIG, test_console=True)):
        await board.start()
        await expect_log(board, "test_console", msg="ready")
        client = await asyncio.to_thread(TestConsoleClient, board.console.path)
        try:
            yield board, client
        finally:
            await asyncio.to_thread(client.close)


async def test_a_rig_holds_the_button_through_the_console_and_reads_the_siren_back(rig_bell):
    board, console = rig_bell
    assert await asyncio.to_thread(console.outputs) == (0, 0, 0)
    await asyncio.to_thread(console.set_input, "button", 1)
    await until(lambda: events_logged(board, "alarm_raised"), what="the alarm")
    hz, duty, _ = await asyncio.to_thread(console.outputs)
    assert hz >= 2000 and duty > 0  # the siren sweeps 2-4 kHz
    status = await asyncio.to_thread(console.status)
    assert status["flags"] & p.FLAG_ALARM_ACTIVE and status["flags"] & p.FLAG_SIREN_ON
    await asyncio.to_thread(console.set_input, "button", 0)
    assert any(o.value for o in board.pwm_history("buzzer"))  # the real (virtual) PWM pin agrees

    # One command: the board reads 3300 mV from now on (its own ADC says 4000), confirmed at once
    await asyncio.to_thread(console.command, "battery 3300")
    await until(lambda: events_logged(board, "battery"), timeout_s=30, what="the low-battery event")


@pytest.mark.parametrize("line, message", [
    ("in doorbell 1", "unknown input 'doorbell'"),
    ("in button 2", "LEVEL must be 0 or 1"),
    ("battery lots", "MV must be an integer"),
    ("reboot", "unknown command 'reboot'"),
])
async def test_bad_console_commands_get_a_precise_error_and_the_bell_still_alarms(rig_bell, line, message):
    board, console = rig_bell
    with pytest.raises(TestConsoleError, match=message):
        await asyncio.to_thread(console.command, line)
    await board.press("button", hold_s=2.0)
    await until(lambda: events_logged(board, "alarm_raised"), what="the alarm after a bad command", log=board.console.tail)


async def test_without_test_console_in_the_config_the_console_drives_nothing(tmp_path, radio):
    async for board in firmware_board(tmp_path / "flash", radio, CONFIG):
        await board.start()
        await expect_log(board, "ready")
        board.console.write(b"in button 1\n")
        await asyncio.sleep(2.0)  # longer than hold_ms (1 s): a working console would alarm by now
        assert not events_logged(board)
        assert "test_console" not in board.console.text()
