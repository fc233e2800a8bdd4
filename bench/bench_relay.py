"""Relay figures: an alarm frame arriving → the first guardian SMS handed to the backend
(p50/p99 over N alarms), without a location source and with gpsd's latest fix on the path (the
real gpsd fed by gpsfake: the lookup is a memory read, never a wait for a new fix), and outbox
throughput with SQLite on this machine, each beside its floor: one bare SQLite commit with the
same durability settings (WAL, synchronous=FULL).

    .venv/bin/python bench/bench_relay.py [--alarms N]

Runs the relay's own code in this process (store, policy, sender loop, the sim backend); the BLE
central is not involved (its latency is the virtual board's notify figure in bench_sim.py).
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import tempfile
import time
from pathlib import Path

from jikimi import protocol as p
from jikimi_host.relay.config import parse
from jikimi_host.relay.location import GpsdSource, LocationSource
from jikimi_host.relay.service import Relay, SimTelephony
from jikimi_host.rig.gps import GPSFAKE_MISSING, GpsFake, free_port, gpsfake_missing, track_log
from stats import pct

GUARDIANS = [{"name": f"보호자{i}", "number": f"010-0000-000{i}"} for i in range(1, 6)]
DEVICE = "E4:6F:28:00:00:01"


class TimedSim(SimTelephony):
    def __init__(self) -> None:
        self.handed: list[tuple[str, float]] = []

    async def send_sms(self, number: str, text: str) -> str:
        self.handed.append((number, time.perf_counter()))
        return "sim"


def relay_in(folder: Path, telephony: TimedSim, location: LocationSource | None = None) -> Relay:
    config = parse({"owner": "김지은", "guardians": GUARDIANS, "emergency_call": False, "emergency_sms": False,
                    "devices": [{"name": "비상벨", "passkey": "123456"}], "database": str(folder / "relay.sqlite")},
                   "bench")
    relay = Relay(config, "none", telephony, as_json=True, location=location)
    relay.emit = lambda *args, **kwargs: None  # type: ignore[method-assign]  # measure, don't print
    return relay


async def alarm_to_sms(folder: Path, alarms: int, location: LocationSource | None = None) -> list[float]:
    telephony = TimedSim()
    relay = relay_in(folder, telephony, location)
    sender = asyncio.create_task(relay.sender())
    latencies = []
    try:
        for seq in range(1, alarms + 1):
            frame = p.encode(p.Message(p.ALARM_RAISED, epoch=7, seq=seq, time=0, mode=1, trigger=1, battery_pct=80))
            before = len(telephony.handed)
            arrived = time.perf_counter()
            await relay._on_event(DEVICE, "비상벨", p.decode(frame))
            while len(telephony.handed) == before:
                await asyncio.sleep(0)
            latencies.append((telephony.handed[before][1] - arrived) * 1000)
            while len(telephony.handed) < before + len(GUARDIANS):  # let this alarm's texts go
                await asyncio.sleep(0)
    finally:
        sender.cancel()
        relay.store.close()
    return latencies


async def outbox_throughput(folder: Path, alarms: int) -> tuple[int, float]:
    telephony = TimedSim()
    relay = relay_in(folder, telephony)
    for seq in range(1, alarms + 1):  # queue first, then drain: the sender's own rate
        relay.store.record_event(DEVICE, p.Message(p.ALARM_RAISED, epoch=9, seq=seq, time=0, mode=1, trigger=1,
                                                   battery_pct=80), time.time())
    total = alarms * len(GUARDIANS)
    started = time.perf_counter()
    sender = asyncio.create_task(relay.sender())
    while len(telephony.handed) < total:
        await asyncio.sleep(0.001)
    elapsed = time.perf_counter() - started
    sender.cancel()
    relay.store.close()
    return total, elapsed


async def with_gpsd(folder: Path, alarms: int) -> list[float]:
    """alarm_to_sms with the real gpsd's fix (gpsfake playing a fix in Seoul) as the location."""
    log = folder / "track.nmea"
    track_log(log, [(37.5665 + i * 1e-5, 126.978) for i in range(20)])
    with GpsFake(log, free_port()) as fake:
        source = GpsdSource("127.0.0.1", fake.port)
        await source.start()
        try:
            deadline = time.monotonic() + 30
            while source.latest() is None:
                if time.monotonic() > deadline:
                    raise SystemExit(f"bench_relay: no fix from gpsd in 30 s ({source.status}): {fake.stderr()}")
                await asyncio.sleep(0.05)
            return await alarm_to_sms(folder, alarms, source)
        finally:
            await source.close()


def bare_commits(folder: Path, count: int) -> float:
    """The floor: seconds per INSERT + COMMIT with the store's durability settings."""
    db = sqlite3.connect(folder / "bare.sqlite", isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    started = time.perf_counter()
    for i in range(count):
        db.execute("BEGIN IMMEDIATE")
        db.execute("INSERT INTO t (v) VALUES (?)", (str(i),))
        db.execute("COMMIT")
    elapsed = time.perf_counter() - started
    db.close()
    return elapsed / count


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--alarms", type=int, default=200)
    args = parser.parse_args()
    if gpsfake_missing():
        raise SystemExit(f"bench_relay: {GPSFAKE_MISSING}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for name in ("a", "b", "c"):
            (folder / name).mkdir()
        floor_ms = bare_commits(folder, 500) * 1000
        latencies = await alarm_to_sms(folder / "a", args.alarms)
        located = await with_gpsd(folder / "c", args.alarms)
        total, elapsed = await outbox_throughput(folder / "b", args.alarms)
    print(f"Relay on this machine (SQLite {sqlite3.sqlite_version}, WAL, synchronous=FULL; 5 guardians):")
    print(f"  alarm frame arrives → first guardian SMS handed to the backend   "
          f"p50 {pct(latencies, 0.5):6.2f} ms   p99 {pct(latencies, 0.99):6.2f} ms   (n={len(latencies)})")
    print(f"  ... with gpsd's latest fix in the texts                          "
          f"p50 {pct(located, 0.5):6.2f} ms   p99 {pct(located, 0.99):6.2f} ms   "
          f"({pct(located, 0.5) - pct(latencies, 0.5):+.2f} ms at p50)")
    print(f"  outbox throughput (claim + send + mark sent, sim backend)        "
          f"{total / elapsed:8.0f} messages/s   ({total} messages)")
    print(f"  baseline: one bare INSERT + COMMIT                               {floor_ms:6.2f} ms"
          f"   = {1000 / floor_ms:8.0f} commits/s")


if __name__ == "__main__":
    asyncio.run(main())
