"""The relay's two radios side by side, through the real firmware on a virtual board: a command
round trip (write REQUEST_STATUS with response → its RESULT notification back in the relay) over

- Bumble (`radio_bumble.py`), the relay's own host stack on the virtual radio: the baseline;
- the OS stack (`radio_os.py`): adafruit_ble → `_bleio` → bleak → D-Bus → the fake BlueZ (a
  separate process, like bluetoothd) → its Bumble host on the same virtual radio.

    .venv/bin/python bench/bench_radios.py [--round-trips N]

The OS figure is an upper bound for the relay's own share on a real BlueZ: it includes the fake
BlueZ's Python D-Bus handling, and `radio_os.POLL_S` (the notification poll) on every reply.
Needs `dbus-daemon`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import tempfile
import time
from pathlib import Path

from dbus_fast.aio import MessageBus

from jikimi import protocol as p
from jikimi_host.processes import stop_process
from jikimi_host.relay.radio import Link
from jikimi_host.relay.config import DeviceEntry
from jikimi_host.relay.keystore import SqliteKeyStore
from jikimi_host.relay.radio_bumble import BumbleRadio
from jikimi_host.rig.firmware import CONFIG, PASSKEY, expect_log, firmware_board
from jikimi_host.sim.hands import hold_button_through_power_up
from jikimi_host.rig.os_stack import BlueZProcess, Owner, find_in_pairing_window
from jikimi_host.sim.bluez import ADAPTER_PATH, start_system_bus
from jikimi_host.sim.radio import VirtualRadio
from stats import pct

ENTRY = DeviceEntry("비상벨", f"{PASSKEY:06d}")


def show(label: str, values: list[float]) -> None:
    print(f"  {label:<40} p50 {pct(values, 0.5):7.2f} ms   p99 {pct(values, 0.99):7.2f} ms   (n={len(values)})")


async def round_trips(link: Link, count: int) -> list[float]:
    times = []
    for counter in range(1, count + 1):
        started = time.perf_counter()
        await link.write(p.encode(p.Message(p.REQUEST_STATUS, counter=counter)))
        while True:
            frame = await asyncio.wait_for(link.next_frame(), 10)
            assert frame is not None, "the link dropped"
            message = p.decode(frame)
            if message.type == p.RESULT and message.counter == counter:
                assert message.code == p.E_OK, p.error_name(message.code)
                break
        times.append((time.perf_counter() - started) * 1000)
    return times


async def over_bumble(tmp: Path, radio: VirtualRadio, bell, count: int) -> list[float]:
    keystore = SqliteKeyStore(tmp / "relay.sqlite")
    bumble = BumbleRadio(await radio.serve_hci(), keystore, lambda *args, **kwargs: None)
    await bumble.start()
    try:
        await hold_button_through_power_up(bell, CONFIG["gestures"]["pairing_hold_ms"])
        paired = await asyncio.wait_for(bumble.pair_new([ENTRY]), 60)
        assert paired is not None, "Bumble did not pair"
        _, _, link = paired
        try:
            await expect_log(bell, "core", msg="pairing closed")
            return await round_trips(link, count)
        finally:
            await link.close()
    finally:
        await bumble.close()
        keystore.close()


async def over_the_os_stack(tmp: Path, radio: VirtualRadio, bell, count: int) -> list[float]:
    from jikimi_host.relay.radio_os import OsRadio  # imports _bleio, which starts bleak's thread

    bus_process, bus = await start_system_bus(tmp / "dbus")
    os.environ["DBUS_SYSTEM_BUS_ADDRESS"] = bus  # where bleak finds "the system bus"
    bluez = BlueZProcess(bus, await radio.serve_hci(), tmp)
    try:
        await bluez.start()
        owner = Owner(await MessageBus(bus_address=bus).connect())
        await owner.register_agent()
        owner.agent.passkey = PASSKEY
        await bell.power_cut()
        path, _ = await find_in_pairing_window(owner, bell)
        await owner.pair(path)
        await owner.call(ADAPTER_PATH, "org.bluez.Adapter1", "StopDiscovery")
        await owner.call(path, "org.bluez.Device1", "Disconnect")
        identity = (await owner.objects())[path]["org.bluez.Device1"]["Address"]
        owner.bus.disconnect()
        os_radio = OsRadio(lambda *args, **kwargs: None)
        await os_radio.start()
        link = await os_radio.connect(identity, ENTRY)
        try:
            return await round_trips(link, count)
        finally:
            await link.close()
    finally:
        await bluez.stop()
        await stop_process(bus_process)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--round-trips", type=int, default=100)
    args = parser.parse_args()
    logging.disable(logging.WARNING)  # bleak's "no bluetoothctl" and teardown notices: not figures
    with tempfile.TemporaryDirectory(prefix="jikimi-bench-") as tmp_name:
        tmp = Path(tmp_name)
        radio = VirtualRadio()
        try:
            async for bell in firmware_board(tmp / "bell", radio, CONFIG):
                bumble = await over_bumble(tmp, radio, bell, args.round_trips)
                os_stack = await over_the_os_stack(tmp, radio, bell, args.round_trips)
        finally:
            await radio.close()
    print("Relay command round trip (REQUEST_STATUS → RESULT) through the firmware on a virtual board:")
    show("Bumble radio (baseline)", bumble)
    show("OS stack: adafruit_ble → bleak → BlueZ", os_stack)
    print(f"  the OS path costs {pct(os_stack, 0.5) - pct(bumble, 0.5):+.2f} ms at p50 "
          f"({pct(os_stack, 0.5) / pct(bumble, 0.5):.1f}x)")


if __name__ == "__main__":
    asyncio.run(main())
