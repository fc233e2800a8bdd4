"""What a stranger in radio range gets out of the bell (PROTOCOL.md §2.3), on the virtual board
with the real firmware:

- passkey guessing: how many real pairing attempts one pairing window gives an attacker who
  tries wrong passkeys as fast as he can, how many of his tries are refused outright during the
  lockouts, and the seconds between attempts the bell lets through;
- alarm → the owner's phone with 0, 1 and 4 strangers connecting and idling: the bell raises
  an alarm while the owner's phone is away; the phone then connects (retrying as a phone's OS
  does), re-encrypts with its bond, subscribes and sets the clock, as the relay does. Timed from the alarm's log line to the frame
  at the phone (both stamped with this machine's monotonic clock), so the reconnection is in it.

    .venv/bin/python bench/bench_attacks.py [--alarms N] [--lockout-ms MS] [--strangers 0,1,4]

The 0-stranger run is the baseline for the others, in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
import time
from pathlib import Path

from bumble.pairing import PairingConfig

from jikimi import protocol as p
from jikimi_host.relay.device_clock import DEVICE_EPOCH_UNIX
from jikimi_host.relay.pairing import Passkey
from jikimi_host.rig.firmware import (CONFIG, PASSKEY, expect_log, firmware_board, log_records, pair_at_power_up, records_since, timed_log_records)
from jikimi_host.sim.hands import hold_button_through_power_up
from jikimi_host.sim.phone import Phone
from jikimi_host.sim.radio import VirtualRadio
from jikimi_host.wait import until
from stats import pct


async def guessing(tmp: Path, lockout_ms: int) -> None:
    radio = VirtualRadio()
    config = dict(CONFIG, ble={"pairing_lockout_ms": lockout_ms})
    async for bell in firmware_board(tmp / "guess", radio, config):
        await hold_button_through_power_up(bell, CONFIG["gestures"]["pairing_hold_ms"])
        await expect_log(bell, "core", msg="pairing open")
        tries = 0
        started = time.monotonic()
        while not records_since(bell, 0, "ble", msg="pairing_window_closed"):
            guesser = Phone(radio, name=f"guesser-{tries}")
            wrong = (PASSKEY + 1 + tries) % 1000000
            guesser.device.pairing_config_factory = lambda connection, wrong=wrong: PairingConfig(
                sc=True, mitm=True, bonding=True, delegate=Passkey(wrong))
            await guesser.start()
            with contextlib.suppress(Exception):
                await guesser.connect(bell.ble.on_air_address, attempts=3)
                await asyncio.wait_for(guesser.connection.pair(), 30)
            tries += 1
            await guesser.device.power_off()
            if time.monotonic() - started > 120:
                raise SystemExit("the pairing window never closed")
        # the bell's own times (ms since boot) of the attempts it let through
        attempts = [r["t"] for r in records_since(bell, 0, "ble", msg="pairing")]
        gaps = [(b - a) / 1000 for a, b in zip(attempts, attempts[1:])]
        print(f"  passkey guessing, lockout {lockout_ms} ms doubling (ble.pairing_lockout_ms)")
        print(f"    real attempts in one pairing window          {len(attempts)}"
              f"   (then the window closed; the passkey is retired at 3 in all)")
        print(f"    tries refused outright (lockout, no answer)  {len(records_since(bell, 0, 'ble', msg='pairing_refused'))}"
              f" of {tries} tries in {time.monotonic() - started:.1f} s")
        print("    seconds between real attempts               "
              + ", ".join(f"{gap:.1f} s" for gap in gaps))


async def alarm_with_strangers(tmp: Path, strangers: int, alarms: int) -> list[float]:
    radio = VirtualRadio()
    latencies = []
    async for bell in firmware_board(tmp / f"strangers-{strangers}", radio, CONFIG):
        owner = await pair_at_power_up(bell, radio)
        lurkers = [await Phone(radio, name=f"stranger-{n}").start() for n in range(strangers)]
        stop = asyncio.Event()

        async def lurk(phone: Phone) -> None:
            while not stop.is_set():  # connect, idle until dropped, connect again
                with contextlib.suppress(Exception):
                    if not phone.connected:
                        await phone.connect(bell.ble.on_air_address, timeout_s=5, attempts=1)
                await asyncio.sleep(0.2)

        epoch = records_since(bell, 0, "boot")[0]["epoch"]
        tasks = [asyncio.ensure_future(lurk(phone)) for phone in lurkers]
        try:
            for n in range(alarms):
                await owner.phone.disconnect()
                owner.frames.clear()
                mark = len(log_records(bell))
                await bell.press("button", hold_s=1.3)
                raised = await until(lambda: [(at, r) for at, r in timed_log_records(bell)[mark:]
                                              if r.get("msg", "").startswith("event alarm_raised")], 10)
                at, record = raised[0]
                seq = int(record["msg"].split("seq=")[1].split()[0])
                await owner.phone.connect(bell.ble.identity_address, timeout_s=10, attempts=20)
                await owner.phone.encrypt()
                arrived: list[float] = []
                await owner.phone.subscribe(await owner.phone.characteristic(p.uuid(p.UUID_EVENTS)), lambda value: (
                    arrived.append(time.monotonic()) if p.decode(value).type == p.ALARM_RAISED else None))
                owner.commands = await owner.phone.characteristic(p.uuid(p.UUID_COMMANDS))
                await owner.send(p.SET_TIME, time=int(time.time()) - DEVICE_EPOCH_UNIX)  # as the relay does
                await until(lambda: arrived, 20, "the alarm at the owner's phone")
                latencies.append((arrived[0] - at) * 1000)
                await owner.send(p.ACK, epoch=epoch, seq=seq)
                await owner.send(p.CANCEL_ALARM, epoch=epoch, alarm_seq=seq)
                await until(lambda: any(r.get("msg", "").startswith("event alarm_cancelled")
                                        for r in log_records(bell)[mark:]), 10, "the cancel")
        finally:
            stop.set()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    return latencies


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--alarms", type=int, default=20, help="alarms per stranger count")
    parser.add_argument("--lockout-ms", type=int, default=5000, help="ble.pairing_lockout_ms")
    parser.add_argument("--strangers", default="0,1,4", help="stranger counts, the first one the baseline")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        print("Attacks on the bell (virtual board, real firmware)")
        await guessing(Path(tmp), args.lockout_ms)
        baseline = None
        for strangers in [int(n) for n in args.strangers.split(",")]:
            values = await alarm_with_strangers(Path(tmp), strangers, args.alarms)
            p50 = pct(values, 0.5)
            baseline = baseline or p50
            print(f"  alarm -> owner's phone (reconnecting), {strangers} strangers    "
                  f"p50 {p50:7.1f} ms   p99 {pct(values, 0.99):7.1f} ms   max {max(values):7.1f} ms"
                  f"   ({p50 / baseline:.2f}x the first run's p50, n={len(values)})")


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
