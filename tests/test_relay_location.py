"""Where the owner is, in the texts (issue 15): the relay's first guardian texts carry the latest
fix of its location source (here the real gpsd, fed by gpsfake), with its accuracy and age; with
no current fix they say so and give the last known one with its time; the 112 report carries it
as an AML-style line. The lookup is a memory read on the alarm path (bench/bench_relay.py)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from jikimi import protocol as p
from jikimi_host.relay import config as rc
from jikimi_host.relay.location import GpsdSource
from jikimi_host.relay.service import Relay, SimTelephony
from jikimi_host.rig.gps import GPSFAKE_MISSING, GpsFake, free_port, gpsfake_missing, track_log

BELL = "C0:98:E5:49:00:01"
WALK = [(37.56650 + i * 2e-5, 126.97800) for i in range(30)]  # up a street, about 2 m a second


def relay_config(tmp_path: Path, port: int, cancel_window_s: int = 5,
                 location: dict[str, Any] | None = None) -> rc.RelayConfig:
    """A relay on gpsd at `port`; `location`: more [location] keys (default stale_after_s = 3)."""
    path = rc.write_config(tmp_path / "relay.toml", {
        "owner": "김지은", "database": "relay.sqlite", "cancel_window_s": cancel_window_s,
        "location": {"source": "gpsd", "gpsd": f"127.0.0.1:{port}",
                     **({"stale_after_s": 3} if location is None else location)},
        "guardians": [{"name": "어머니", "number": "010-0000-0001"},
                      {"name": "Alex", "number": "010-0000-0002", "language": "en"}],
        "devices": [{"name": "비상벨", "passkey": "093514"}],
    })
    return rc.load(path)


@pytest.fixture
async def walking_owner(tmp_path):
    if gpsfake_missing():
        pytest.fail(GPSFAKE_MISSING, pytrace=False)
    log = tmp_path / "walk.nmea"
    track_log(log, WALK)
    fake = GpsFake(log, free_port()).start()
    try:
        await fake.listening()
        yield fake
    finally:
        fake.stop()


async def until_fix(source: GpsdSource, timeout_s: float = 30.0) -> None:
    """Until gpsd has a fix with its accuracy: its very first TPV of a session may come before
    the DOPs (then the text rightly gives no accuracy)."""
    deadline = time.monotonic() + timeout_s
    while (fix := source.latest()) is None or fix.accuracy_m is None:
        assert time.monotonic() < deadline, f"no fix from gpsd: {source.status}"
        await asyncio.sleep(0.05)


def alarm(seq: int) -> p.Message:
    return p.Message(p.ALARM_RAISED, epoch=7, seq=seq, time=0, mode=p.MODE_LOUD, trigger=p.TRIGGER_HOLD, battery_pct=80)


async def test_the_guardians_first_text_carries_gpsds_latest_fix_and_112_gets_it_as_an_aml_line(tmp_path, walking_owner):
    relay = Relay(relay_config(tmp_path, walking_owner.port), "tcp-client:127.0.0.1:9", SimTelephony(), as_json=True)
    await relay.location.start()
    try:
        await until_fix(relay.location)  # type: ignore[arg-type]
        fix = relay.location.latest()
        await relay._on_event(BELL, "비상벨", alarm(1))
        texts = {row.recipient: row.text for row in relay.store.outbox() if row.kind in ("alarm", "emergency_report")
                 and row.channel == "sms"}
        assert fix is not None and any(abs(fix.lat - lat) < 1e-6 for lat, _ in WALK)
        link = f"https://maps.google.com/?q={fix.lat:.5f},{fix.lon:.5f}"
        assert f"{link} ±" in texts["+821000000001"] and "(방금)" in texts["+821000000001"]
        assert f"{link} +/-" in texts["+821000000002"] and "(just now)" in texts["+821000000002"]
        assert f"LOC:{fix.lat:.5f},{fix.lon:.5f} ACC:" in texts["112"] and " TOP:" in texts["112"]
    finally:
        await relay.location.close()
        relay.store.close()
        relay.keystore.close()


async def test_with_gpsd_gone_the_text_says_location_unavailable_and_gives_the_last_known_fix(tmp_path, walking_owner):
    relay = Relay(relay_config(tmp_path, walking_owner.port), "tcp-client:127.0.0.1:9", SimTelephony(), as_json=True)
    await relay.location.start()
    try:
        await until_fix(relay.location)  # type: ignore[arg-type]
        walking_owner.stop()  # the receiver is gone (unplugged, no sky)
        deadline = time.monotonic() + 30
        while relay.location.latest() is not None:  # stale after 3 s
            assert time.monotonic() < deadline, relay.location.status
            await asyncio.sleep(0.1)
        last = relay.location.last_known()
        await relay._on_event(BELL, "비상벨", alarm(1))
        texts = {row.recipient: row.text for row in relay.store.outbox() if row.kind == "alarm"}
        assert last is not None
        assert "위치 확인 불가. 마지막 위치(" in texts["+821000000001"]
        assert "Location unavailable; last " in texts["+821000000002"]
        assert f"q={last.lat:.5f},{last.lon:.5f}" in texts["+821000000002"]
    finally:
        await relay.location.close()
        relay.store.close()
        relay.keystore.close()
