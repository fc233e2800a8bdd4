"""Virtual board figures: boot to script running, side-channel round trip, bounce-train timing
as the firmware's IRQ handler sees it, and BLE notify -> phone latency, beside a baseline of
the same notifications between two Bumble devices with no MicroPython in between.

    .venv/bin/python bench/bench_sim.py [--notifications N]

Device and host share CLOCK_MONOTONIC (MicroPython's ticks_us on the Unix port), so the
latencies are one-way. Figures are from this machine, not an ESP32.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import struct
import tempfile
import time
from pathlib import Path

from bumble import gatt
from bumble.core import UUID

from jikimi_host.sim.board import VirtualBoard
from jikimi_host.sim.phone import Phone
from jikimi_host.sim.radio import VirtualRadio
from stats import pct

HERE = Path(__file__).parent


def show(label: str, values: list[float], unit: str = "us") -> None:
    print(f"  {label:<48} p50 {pct(values, 0.5):9.1f} {unit}   p99 {pct(values, 0.99):9.1f} {unit}   (n={len(values)})")


async def board_with(tmp: Path, name: str, *args: str, radio: VirtualRadio | None = None) -> VirtualBoard:
    board = VirtualBoard(tmp / name, radio=radio)
    board.deploy_sim_board()
    board.deploy({"main.py": HERE / "sim_device.py"})
    await board.start(args=args)
    return board


async def boot_times(tmp: Path, runs: int) -> list[float]:
    times = []
    board = await board_with(tmp, "boot", "ready")
    try:
        for _ in range(runs):
            await board.power_cut()
            mark = len(board.console.text())
            started = time.monotonic()
            await board.start(args=["ready"])
            await board.console.expect("ready", start=mark)
            times.append((time.monotonic() - started) * 1000)
    finally:
        await board.stop()
    return times


async def rtt(tmp: Path, count: int) -> list[float]:
    board = await board_with(tmp, "rtt", "rtt", str(count))
    try:
        line = (await board.console.expect(r"^rtt (.*)\n", timeout_s=120)).group(1)
    finally:
        await board.stop()
    return [float(v) for v in line.split()]


async def edge_errors(tmp: Path, trains: int) -> list[float]:
    board = await board_with(tmp, "edges", "edges", str(trains * 8))
    rng = random.Random(5)
    errors: list[float] = []
    try:
        await board.console.expect("ready")
        requested: list[int] = []
        for _ in range(trains):
            gaps = [rng.randint(500, 5000) for _ in range(6)]
            level = 1 - board.levels[board.pin("button")]
            board.bounce("button", level, gaps)
            requested.append(0)
            requested.extend(gaps)
            board.bounce("button", 1 - level)  # one more edge, 50 ms later
            await asyncio.sleep(0.05)
            requested.append(-1)
        line = (await board.console.expect(r"^edges (.*)\n", timeout_s=60)).group(1)
        seen = [int(v) for v in line.split()]
        for i in range(1, len(seen)):
            if requested[i] > 0:  # a gap inside a train
                errors.append(abs((seen[i] - seen[i - 1]) - requested[i]))
    finally:
        await board.stop()
    return errors


async def notify_latency(tmp: Path, radio: VirtualRadio, count: int, gap_ms: int) -> list[float]:
    board = await board_with(tmp, "notify", "notify", radio=radio)
    latencies: list[float] = []
    done = asyncio.Event()
    try:
        await board.console.expect("ready")
        phone = await Phone(radio, "bench-phone").start()
        await phone.connect(board.ble.identity_address)

        def received(value: bytes) -> None:
            index, sent_us = struct.unpack("<Iq", value)
            latencies.append(time.monotonic_ns() / 1000 - sent_us)
            if index == count - 1:
                done.set()

        await phone.subscribe(await phone.characteristic("fff1"), received)
        await (await phone.characteristic("fff2")).write_value(f"go:{count}:{gap_ms}".encode(), with_response=True)
        await asyncio.wait_for(done.wait(), 300)
    finally:
        await board.stop()
    return latencies


async def bumble_baseline(radio: VirtualRadio, count: int, gap_ms: int) -> list[float]:
    """The same notifications, Bumble peripheral to Bumble phone: the stack's own cost."""
    peripheral = radio.phone_device("baseline-peripheral", "C2:00:00:00:00:01")
    value = gatt.Characteristic(UUID("fff1"), gatt.Characteristic.Properties.NOTIFY, gatt.Characteristic.READABLE, b"")
    peripheral.add_service(gatt.Service(UUID("fff0"), [value]))
    await peripheral.power_on()
    await peripheral.start_advertising(advertising_interval_min=20, advertising_interval_max=20)
    phone = await Phone(radio, "baseline-phone").start()
    await phone.connect("C2:00:00:00:00:01")
    latencies: list[float] = []
    await phone.subscribe(await phone.characteristic("fff1"),
                          lambda v: latencies.append(time.monotonic_ns() / 1000 - struct.unpack("<Iq", v)[1]))
    connection = next(iter(peripheral.connections.values()))
    for i in range(count):
        await peripheral.notify_subscriber(connection, value, struct.pack("<Iq", i, time.monotonic_ns() // 1000), force=True)
        await asyncio.sleep(gap_ms / 1000)
    await asyncio.sleep(0.2)
    return latencies


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--notifications", type=int, default=1000)
    parser.add_argument("--gap-ms", type=int, default=2, help="pause between notifications")
    args = parser.parse_args()
    radio = VirtualRadio()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        print("virtual board (MicroPython Unix port + Bumble) on this machine:")
        show("boot -> script running (start() to 'ready')", await boot_times(tmp, 20), "ms")
        show("side-channel round trip (device call)", await rtt(tmp, 1000))
        show("bounce-train gap error seen by the IRQ handler", await edge_errors(tmp, 40))
        latencies = await notify_latency(tmp, radio, args.notifications, args.gap_ms)
        show("gatts_notify on device -> phone callback", latencies)
        baseline = await bumble_baseline(radio, args.notifications, args.gap_ms)
        show("baseline: Bumble peripheral -> phone callback", baseline)
        print(f"  sim overhead at p50: {pct(latencies, 0.5) - pct(baseline, 0.5):.1f} us")
    await radio.close()


if __name__ == "__main__":
    asyncio.run(main())
