"""Location figures: the cost of `latest()` (the alarm path's read: it must be a memory read, so
ns per call, p50/p99), and the time from gpsd getting a new NMEA fix to `latest()` returning it,
through the real gpsd fed by gpsfake (p50/p99 over N fixes).

    .venv/bin/python bench/bench_location.py [--calls N] [--fixes N] [--cycle-s S]

The gpsd figure: gpsfake (`-l`) prints each sentence just before writing it to gpsd's pty; the
clock starts when this process reads that line for an epoch's first sentence (GGA, which carries
the position) and stops when `latest()` holds that epoch. It covers gpsd reading the pty, its
JSON report over TCP and our client; one sentence every `--cycle-s` (three per epoch). Then
`latest()` is timed in batches of 1,000 calls (one call is shorter than the clock's own cost) on
that GpsdSource, holding its last fix (seconds old, so fresh), and on the FallbackSource (gpsd,
then the fixed point) the config builds when both are given. Needs gpsd and gpsfake: apt-get
install gpsd gpsd-clients.

Last, the relay's location-update check (`RelayStore.location_update`, run every few seconds per
live alarm): its cost when nothing is due (the common case: too soon, or she has not moved), and
when it queues an update for three guardians, on a real SQLite file (`--updates` of each).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import tempfile
import threading
import time
from pathlib import Path

from jikimi import protocol as p
from jikimi_host.relay import config as rc
from jikimi_host.relay.location import FallbackSource, FixedSource, GpsdSource
from jikimi_host.relay.messages import Location
from jikimi_host.relay.store import RelayStore
from jikimi_host.rig.gps import GPSFAKE_MISSING, GpsFake, free_port, gpsfake_missing, track_log
from stats import pct

BATCH = 1000
START = (37.56650, 126.97800)
_GGA_TIME = re.compile(r"\$GPGGA,(\d{6})\.")


def latest_ns(source: GpsdSource | FallbackSource, calls: int) -> list[float]:
    """ns per call of source.latest(), one figure per batch of BATCH calls."""
    per_call = []
    latest = source.latest
    for _ in range(max(1, calls // BATCH)):
        started = time.perf_counter_ns()
        for _ in range(BATCH):
            latest()
        per_call.append((time.perf_counter_ns() - started) / BATCH)
    return per_call


def read_costs(gpsd: GpsdSource, calls: int) -> tuple[list[float], list[float]]:
    fallback = FallbackSource([gpsd, FixedSource(Location(*START, 25))])
    if gpsd.latest() is None or fallback.latest() is not gpsd.latest():
        raise SystemExit(f"bench_location: no fresh fix left from gpsd to read; status: {gpsd.status}")
    return latest_ns(gpsd, calls), latest_ns(fallback, calls)


async def gpsd_to_latest(fixes: int, cycle_s: float) -> tuple[list[float], GpsdSource]:
    """ms from gpsfake writing an epoch's GGA to latest() holding that epoch, for `fixes` epochs.

    Only epochs written after the first fix count: before it gpsd is still opening its pty and
    probing it, and the first fix of a session has no time (a GGA before gpsd's first valid RMC:
    no date yet), so nothing says which epoch it is. gpsfake plays the walk over and over until
    enough have come through."""
    with tempfile.TemporaryDirectory(prefix="bench-location-") as folder:
        log = Path(folder) / "walk.nmea"
        lead_in = 8  # no-fix epochs while gpsd opens the pty and our client watches
        epochs = [None] * lead_in + [(START[0] + i * 0.0001, START[1]) for i in range(max(fixes, 10))]
        times = track_log(log, epochs)
        fake = GpsFake(log, free_port(), cycle_s=cycle_s, linedump=True)
        source = GpsdSource("127.0.0.1", fake.port, reconnect_min_s=0.05, reconnect_max_s=0.2)
        written: dict[float, float] = {}  # epoch (Unix s) -> when its GGA went to gpsd
        held: dict[float, float] = {}  # epoch -> when latest() first held it
        day_start = times[0] - times[0] % 86400

        def read_dump() -> None:
            assert fake.process is not None and fake.process.stdout is not None
            for raw in fake.process.stdout:
                now = time.perf_counter()
                match = _GGA_TIME.search(raw.decode("ascii", "replace"))
                if match is None or source.fixes == 0:
                    continue
                hms = match.group(1)
                epoch = day_start + int(hms[:2]) * 3600 + int(hms[2:4]) * 60 + int(hms[4:6])
                if epoch < times[0]:
                    epoch += 86400  # the walk crossed midnight UTC
                if epoch not in held:  # (held already: its GGA went out before we counted)
                    written.setdefault(epoch, now)

        def measured() -> list[float]:
            return [(held[epoch] - at) * 1000 for epoch, at in list(written.items()) if epoch in held]

        await source.start()
        fake.start()
        reader = threading.Thread(target=read_dump, daemon=True)
        reader.start()
        deadline = time.monotonic() + 60 + fixes * 3 * cycle_s * 3
        try:
            while len(measured()) < fixes and time.monotonic() < deadline:
                await source.changed(0.5)
                fix = source.latest()
                if fix is not None and fix.time is not None and fix.time not in held:
                    held[fix.time] = time.perf_counter()
        finally:
            await source.close()
            fake.stop()
            reader.join(timeout=5)
        latencies = measured()[:fixes]
        if len(latencies) < fixes:
            raise SystemExit(f"bench_location: {len(latencies)} of {fixes} fixes came through gpsd in time; "
                             f"status: {source.status}; gpsfake: {fake.stderr()}")
        return latencies, source


def update_check_costs(updates: int) -> tuple[list[float], list[float]]:
    """ms per location_update call: nothing due, then due (3 guardians' texts queued)."""
    config = rc.parse({"owner": "김지은", "location": {"source": "gpsd", "lat": START[0], "lon": START[1]},
                       "guardians": [{"name": f"g{i}", "number": f"010-0000-000{i}"} for i in (1, 2, 3)],
                       "devices": [{"name": "bell", "passkey": "093514"}]})
    idle, due = [], []
    with tempfile.TemporaryDirectory() as tmp, RelayStore(Path(tmp) / "relay.sqlite", config) as store:
        now = time.time()
        for seq in range(1, updates + 1):
            alarm = p.Message(p.ALARM_RAISED, epoch=1, seq=seq, time=0, mode=p.MODE_LOUD, trigger=p.TRIGGER_HOLD,
                              battery_pct=80)
            here = Location(START[0], START[1], 10, fixed_at=now)
            incident = store.record_event("C0:98:E5:49:00:01", alarm, now, device_name="bell", location=here).incident_id
            moved = Location(START[0] + 0.01, START[1], 10, fixed_at=now + 200)
            start = time.perf_counter()
            queued = store.location_update(incident, here, now + 200, 120)  # she has not moved
            idle.append((time.perf_counter() - start) * 1000)
            start = time.perf_counter()
            queued = store.location_update(incident, moved, now + 200, 120)
            due.append((time.perf_counter() - start) * 1000)
            assert len(queued) == 3, queued
    return idle, due


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=1_000_000, help="latest() calls to time")
    parser.add_argument("--fixes", type=int, default=50, help="fixes through gpsd to time")
    parser.add_argument("--cycle-s", type=float, default=0.05, help="gpsfake's pause before each sentence")
    parser.add_argument("--updates", type=int, default=200, help="location-update checks to time")
    args = parser.parse_args()
    if gpsfake_missing():
        raise SystemExit(f"bench_location: {GPSFAKE_MISSING}")

    latencies, gpsd = asyncio.run(gpsd_to_latest(args.fixes, args.cycle_s))
    print(f"new NMEA fix written to gpsd -> latest() returns it: {pct(latencies, 0.5):.2f} ms (p50), "
          f"{pct(latencies, 0.99):.2f} ms (p99), max {max(latencies):.2f} ms, {len(latencies)} fixes")
    # the same source, holding gpsd's last fix (seconds old: fresh)
    gpsd_ns, fallback_ns = read_costs(gpsd, args.calls)
    print(f"latest() on GpsdSource holding a fresh fix: {pct(gpsd_ns, 0.5):.0f} ns per call (p50), "
          f"{pct(gpsd_ns, 0.99):.0f} ns (p99), {len(gpsd_ns) * BATCH:,} calls")
    print(f"latest() on FallbackSource(gpsd, fixed): {pct(fallback_ns, 0.5):.0f} ns per call (p50), "
          f"{pct(fallback_ns, 0.99):.0f} ns (p99)")
    idle, due = update_check_costs(args.updates)
    print(f"location-update check, nothing due: {pct(idle, 0.5):.2f} ms (p50), {pct(idle, 0.99):.2f} ms (p99); "
          f"queueing 3 guardians' updates: {pct(due, 0.5):.2f} ms (p50), {pct(due, 0.99):.2f} ms (p99), "
          f"{len(due)} of each")
    return 0


if __name__ == "__main__":
    sys.exit(main())
