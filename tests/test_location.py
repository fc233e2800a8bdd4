"""The relay's location sources (relay/location.py): the real gpsd fed by gpsfake with NMEA logs
made here, the modem's GNSS through the fake modem (relay/fake_modem.py), the fixed point, the
parsers (with hypothesis), and the config factory.

gpsd and gpsfake come from Debian (`apt-get install gpsd gpsd-clients`; .ci/run installs them).
Without them the gpsd tests fail, saying so: they are never skipped.
"""

from __future__ import annotations

import asyncio
import math
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jikimi_host.relay import config as rc
from jikimi_host.relay.fake_modem import FakeModem, GnssPoint, cgpsinfo_line, qgpsloc_line
from jikimi_host.relay.location import (
    H_UERE_M,
    FallbackSource,
    Fix,
    FixedSource,
    GpsdSource,
    LocationParseError,
    ModemGnssSource,
    NoSource,
    location_source,
    parse_cgpsinfo,
    parse_qgpsloc,
    parse_tpv,
)
from jikimi_host.relay.messages import Location
from jikimi_host.relay.modem import Modem, ModemError
from jikimi_host.rig.gps import GPSFAKE_MISSING, GpsFake, free_port, gpsfake_missing, track_log

GUARDIAN = "+821000000008"  # fictional (010-0000 block); only the fake modem "sends"
SEOUL_CITY_HALL = (37.56650, 126.97800)


def gpsfake_tools() -> None:
    """Fail (never skip) when gpsd or gpsfake is missing."""
    if gpsfake_missing():
        pytest.fail(GPSFAKE_MISSING, pytrace=False)


@pytest.fixture
def gpsfake(tmp_path: Path) -> Iterator[Callable[..., GpsFake]]:
    """Start gpsfakes: `gpsfake(epochs, port=None)`; all stopped at teardown, even on failure."""
    gpsfake_tools()
    started: list[GpsFake] = []

    def start(epochs: Sequence[tuple[float, float] | None], port: int | None = None, **kwargs: Any) -> GpsFake:
        log = tmp_path / f"track{len(started)}.nmea"
        fake = GpsFake(log, port or free_port(), **kwargs)
        fake.times = track_log(log, epochs)
        started.append(fake)
        return fake.start()

    yield start
    for fake in started:
        fake.stop()


async def wait_until(source: Any, predicate: Callable[[], bool], what: str, timeout_s: float = 30.0) -> None:
    """Wait for `predicate` (woken by the source's changes, and at least every 0.2 s for ages)."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"{what}: not within {timeout_s:g} s; status: {source.status}")
        await source.changed(min(remaining, 0.2))


def gpsd_source(port: int, **kwargs: Any) -> GpsdSource:
    return GpsdSource("127.0.0.1", port, reconnect_min_s=0.1, reconnect_max_s=0.5, **kwargs)


def near(fix: Fix | None, lat: float, lon: float, tolerance: float = 1e-6) -> bool:
    return fix is not None and abs(fix.lat - lat) < tolerance and abs(fix.lon - lon) < tolerance


# --- gpsd, the real one, fed by gpsfake --------------------------------------------------------


async def test_a_fix_from_gpsd(gpsfake: Callable[..., GpsFake]) -> None:
    port = free_port()
    source = gpsd_source(port)
    await source.start()  # before gpsd is up: it keeps trying until gpsd answers
    fake = gpsfake([None] * 4 + [SEOUL_CITY_HALL] * 40, port=port)
    try:
        # Not the first: until gpsd has seen a GSA and an RMC it may lack the error and the date.
        await wait_until(source, lambda: source.fixes >= 3, "3 fixes")
        fix = source.latest()
        assert fix is not None and near(fix, *SEOUL_CITY_HALL)
        assert fix.source == "gpsd"
        # gpsd's eph from the 1.2 HDOP (its error model, 95 %); said in whole metres, rounded up
        assert fix.accuracy_m == pytest.approx(1.2 * H_UERE_M, abs=0.05)
        assert fix.to_location() == Location(*SEOUL_CITY_HALL, math.ceil(1.2 * H_UERE_M), fixed_at=fix.time)
        assert fix.time in fake.times  # the receiver's own time, from the NMEA
        assert source.last_known() == fix
        assert source.status.startswith("fix ") and source.status.endswith(" s old")
        assert source.connections == 1 and source.bad_reports == 0
    finally:
        await source.close()
        fake.stop()
    assert source.status.startswith("gpsd 127.0.0.1:") and "closed" in source.status


async def test_no_fix_from_gpsd(gpsfake: Callable[..., GpsFake]) -> None:
    source = gpsd_source(gpsfake([None] * 60).port)
    await source.start()
    try:
        await wait_until(source, lambda: source.reports >= 6, "6 TPV reports")
        assert source.latest() is None and source.last_known() is None
        assert source.status == "no fix yet (the receiver is searching)"
    finally:
        await source.close()


async def test_a_fix_goes_stale_but_stays_the_last_known(gpsfake: Callable[..., GpsFake]) -> None:
    # The owner walks into a basement: a few fixes, then the receiver searches (for 15 s).
    port = free_port()
    source = gpsd_source(port, stale_after_s=1.0)
    await source.start()
    gpsfake([None] * 10 + [SEOUL_CITY_HALL] * 6 + [None] * 100, port=port)
    try:
        await wait_until(source, lambda: source.latest() is not None, "a fix")
        fix = source.latest()
        await wait_until(source, lambda: source.latest() is None, "the fix going stale", timeout_s=10)
        last = source.last_known()
        assert near(last, *SEOUL_CITY_HALL) and fix is not None and last is not None and last.time >= fix.time  # type: ignore[operator]
        assert last.to_location(current=False) == Location(*SEOUL_CITY_HALL, math.ceil(1.2 * H_UERE_M),
                                                           fixed_at=last.time, current=False)
        assert source.status.startswith("no recent fix (the last is ")
    finally:
        await source.close()


async def test_the_latest_fix_follows_a_moving_owner(gpsfake: Callable[..., GpsFake]) -> None:
    # 30 epochs walking north, ~11 m each; then the log starts over (gpsfake cycles it).
    track = [(SEOUL_CITY_HALL[0] + i * 0.0001, SEOUL_CITY_HALL[1]) for i in range(30)]
    port = free_port()
    source = gpsd_source(port)
    seen: list[float] = []

    def note() -> bool:
        fix = source.latest()
        if fix is not None and (not seen or seen[-1] != fix.lat):
            seen.append(fix.lat)
        return near(fix, *track[-1])

    await source.start()  # first, so that it watches from gpsd's start: the walk from its beginning
    gpsfake([None] * 10 + track, port=port)
    try:
        await wait_until(source, note, "the end of the track", timeout_s=60)
    finally:
        await source.close()
    # Never back, and the steps in between seen (not one jump to the end).
    assert seen == sorted(seen) and len(seen) >= 5, seen
    assert all(any(abs(lat - point[0]) < 1e-6 for point in track) for lat in seen)


async def test_gpsd_going_away_and_coming_back(gpsfake: Callable[..., GpsFake]) -> None:
    elsewhere = (35.17960, 129.07560)  # Busan City Hall
    first = gpsfake([SEOUL_CITY_HALL] * 60)
    source = gpsd_source(first.port)
    await source.start()
    try:
        await wait_until(source, lambda: source.latest() is not None, "a fix from the first gpsd")
        first.stop()  # gpsd goes away
        await wait_until(source, lambda: "unreachable" in source.status, "noticing gpsd went away")
        assert near(source.latest(), *SEOUL_CITY_HALL)  # not stale yet: still the owner's position
        assert source.status.startswith(f"gpsd 127.0.0.1:{first.port} unreachable: ")
        second = gpsfake([elsewhere] * 60, port=first.port)  # and comes back, on the same port
        await wait_until(source, lambda: near(source.latest(), *elsewhere), "a fix from the gpsd that came back")
        assert source.connections == 2 and source.status.startswith("fix ")
        second.stop()
    finally:
        await source.close()


async def test_no_gpsd_at_all_is_a_status_not_an_error() -> None:
    source = gpsd_source(free_port())
    await source.start()
    try:
        await wait_until(source, lambda: "connection refused" in source.status, "the refusal", timeout_s=10)
        assert source.latest() is None and source.last_known() is None
        assert source.status.endswith("; no fix yet")
    finally:
        await source.close()


async def test_a_server_that_is_not_gpsd_is_survived() -> None:
    """Garbage, a TPV that makes no sense, a line over the limit: counted, reconnected, no raise."""
    sessions = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal sessions
        sessions += 1
        await reader.readline()  # the WATCH
        writer.write(b"hello\n[1, 2]\n" + b'{"class":"TPV","mode":3,"lat":"north"}\n')
        writer.write(b'{"class":"TPV","mode":3,"lat":37.5,"lon":127.0,"epx":3.0,"epy":4.0}\n')
        writer.write(b"x" * 300_000 + b"\n")
        await writer.drain()
        await asyncio.sleep(0.5)
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    source = gpsd_source(port)
    try:
        await source.start()
        await wait_until(source, lambda: sessions >= 2, "a second session after the junk")
        assert source.bad_reports >= 2
        fix = source.last_known()
        assert fix is not None and fix.accuracy_m == pytest.approx(5.0)  # hypot(epx, epy)
    finally:
        await source.close()
        server.close()
        await server.wait_closed()


# --- the TPV parser ----------------------------------------------------------------------------

TPV = {"class": "TPV", "device": "/dev/pts/19", "mode": 3, "time": "2026-12-02T10:15:03.000Z", "ept": 0.005,
       "lat": 37.5673, "lon": 126.978, "altHAE": 58.0, "epv": 27.6, "eph": 17.1, "sep": 28.5}


def test_a_tpv_report_is_a_fix() -> None:
    fix = parse_tpv(TPV, received_at=0)
    assert fix == Fix(37.5673, 126.978, 17.1, 1796206503.0, "gpsd")


@pytest.mark.parametrize("changes, accuracy", [
    ({}, 17.1),
    ({"eph": None, "epx": 6.0, "epy": 8.0}, 10.0),
    ({"eph": None}, None),
    ({"eph": float("nan")}, None),
    ({"eph": None, "epx": 6.0}, None),
])
def test_tpv_accuracy(changes: dict[str, Any], accuracy: float | None) -> None:
    report = {k: v for k, v in {**TPV, **changes}.items() if v is not None}
    fix = parse_tpv(report, received_at=0)
    assert fix is not None and fix.accuracy_m == (None if accuracy is None else pytest.approx(accuracy))


@pytest.mark.parametrize("mode", [0, 1])
def test_a_tpv_without_a_fix(mode: int) -> None:
    assert parse_tpv({"class": "TPV", "mode": mode, "time": TPV["time"]}, received_at=0) is None
    assert parse_tpv({"class": "TPV"}, received_at=0) is None  # no mode yet


def test_a_tpv_without_a_position_is_no_fix() -> None:
    # what gpsd 3.22 sends first in a session at times: the error estimates, no position
    assert parse_tpv({"class": "TPV", "device": "/dev/pts/4", "mode": 3, "epv": 36.8, "eph": 22.8}, 0) is None


def test_a_tpv_without_a_time_gets_the_receive_time() -> None:
    report = dict(TPV)
    del report["time"]
    assert parse_tpv(report, received_at=1234.5).time == 1234.5  # type: ignore[union-attr]


@pytest.mark.parametrize("changes, message", [
    ({"lat": None}, "TPV with mode 3 but lat None"),
    ({"lat": True}, "TPV with mode 3 but lat True"),
    ({"lat": 91.0}, "latitude must be -90..90 degrees, got 91.0"),
    ({"lon": "east"}, "TPV with mode 3 but lat 37.5673, lon 'east'"),
    ({"mode": 7}, "TPV mode must be 0..3, got 7"),
    ({"mode": True}, "TPV mode must be 0..3, got True"),
    ({"time": "yesterday"}, "TPV time is not ISO 8601: 'yesterday'"),
])
def test_a_tpv_that_makes_no_sense_is_an_error(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(LocationParseError, match=re.escape(message)):
        parse_tpv({**TPV, **changes}, received_at=0)


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=8,
)
_TPV_VALUES = {
    "mode": st.integers(-2, 5) | _JSON,
    "lat": st.floats() | st.integers() | _JSON,
    "lon": st.floats() | st.integers(-10**400, 10**400) | _JSON,
    "eph": st.floats() | _JSON,
    "epx": st.floats() | _JSON,
    "epy": st.floats() | _JSON,
    "time": st.text(max_size=30) | st.floats() | st.datetimes().map(lambda d: d.isoformat() + "Z") | _JSON,
}


@settings(max_examples=500, deadline=None)
@given(st.fixed_dictionaries({}, optional=_TPV_VALUES))
def test_fuzzed_tpv_reports_are_a_fix_none_or_a_clear_error(report: dict[str, Any]) -> None:
    try:
        fix = parse_tpv({"class": "TPV", **report}, received_at=1e9)
    except LocationParseError as exc:
        assert str(exc)
        return
    assert fix is None or (isinstance(fix, Fix) and math.isfinite(fix.lat) and math.isfinite(fix.lon))


# --- the modem's AT answers --------------------------------------------------------------------


def test_simcom_cgpsinfo() -> None:
    # SIMCom's manual example: 31°13.343286' N, 121°21.234064' E, 2011-03-25 07:28:09.3 UTC
    fix = parse_cgpsinfo("+CGPSINFO: 3113.343286,N,12121.234064,E,250311,072809.3,44.1,0.0,0")
    assert fix is not None
    assert fix.lat == pytest.approx(31 + 13.343286 / 60) and fix.lon == pytest.approx(121 + 21.234064 / 60)
    assert fix.time == pytest.approx(1301038089.3)
    assert fix.accuracy_m is None and fix.source == "modem:simcom"
    south_west = parse_cgpsinfo("+CGPSINFO: 3352.128000,S,07037.800000,W,010126,000000.0,10.0,0.0,0")
    assert south_west is not None and south_west.lat < 0 and south_west.lon < 0
    assert parse_cgpsinfo("+CGPSINFO: ,,,,,,,,") is None
    assert parse_cgpsinfo("+CGPSINFO:,,,,,,,,") is None


def test_quectel_qgpsloc() -> None:
    # Quectel's GNSS manual example, in mode 2 (decimal degrees)
    fix = parse_qgpsloc("+QGPSLOC: 080256.000,31.21882,121.62851,1.1,46.0,3,0.00,0.0,0.0,110315,08")
    assert fix is not None and (fix.lat, fix.lon, fix.time, fix.source) == (31.21882, 121.62851, 1426060976.0,
                                                                            "modem:quectel")
    assert fix.accuracy_m == pytest.approx(1.1 * H_UERE_M)  # HDOP in metres, as gpsd has it
    assert parse_qgpsloc("+QGPSLOC: 080256.000,-33.86,-70.63,2.0,46.0,2,0.00,0.0,0.0,110315,05").lat == -33.86  # type: ignore
    assert parse_qgpsloc("+QGPSLOC: 080256.000,31.21882,121.62851,1.1,46.0,1,0.00,0.0,0.0,110315,02") is None


@pytest.mark.parametrize("line, message", [
    ("+CGPSINFO: 3113.343286,N", "+CGPSINFO needs lat, N/S, lon, E/W, date, time"),
    ("+CGPSINFO: 3113.343286,N,,E,250311,072809.3,44.1,0.0,0", "longitude must be dddmm.mmmmmm, got ''"),
    ("+CGPSINFO: 3113.343286,X,12121.234064,E,250311,072809.3,44.1,0.0,0", "latitude hemisphere must be N or S"),
    ("+CGPSINFO: 3113.343286,,12121.234064,E,250311,072809.3,44.1,0.0,0", "latitude hemisphere must be N or S"),
    ("+CGPSINFO: 3163.343286,N,12121.234064,E,250311,072809.3,44.1,0.0,0", "latitude '3163.343286' is not a position"),
    ("+CGPSINFO: 9100.000000,N,12121.234064,E,250311,072809.3,44.1,0.0,0", "latitude '9100.000000' is not a position"),
    ("+CGPSINFO: 3113.343286,N,12121.234064,E,320311,072809.3,44.1,0.0,0", "is not a time"),
    ("+CGPSINFO: 3113.343286,N,12121.234064,E,250311,7:28,44.1,0.0,0", "date/time must be ddmmyy and hhmmss.s"),
    ("+CGPSINFO: ٣113.343286,N,12121.234064,E,250311,072809.3,44.1,0.0,0", "latitude must be ddmm.mmmmmm"),
    ("+QGPSLOC: 080256.000,31.21882,121.62851,1.1,46.0,3", "+QGPSLOC needs at least"),
    ("+QGPSLOC: 080256.000,3113.3,121.62851,1.1,46.0,3,0.00,0.0,0.0,110315,08", "latitude must be -90..90"),
    ("+QGPSLOC: 080256.000,31.2N,121.62851,1.1,46.0,3,0.00,0.0,0.0,110315,08", "latitude must be decimal degrees"),
    ("+QGPSLOC: 080256.000,31.21882,121.62851,nan,46.0,3,0.00,0.0,0.0,110315,08", "hdop must be 0..99.99"),
    ("+QGPSLOC: 080256.000,31.21882,121.62851,1.1,46.0,x,0.00,0.0,0.0,110315,08", "<fix> must be a number"),
    ("+CGPS: 1,1", "expected +QGPSLOC: ..., got '+CGPS: 1,1'"),
])
def test_a_bad_answer_is_a_clear_error(line: str, message: str) -> None:
    parse = parse_cgpsinfo if line.startswith("+CGPSINFO") else parse_qgpsloc
    with pytest.raises(LocationParseError) as err:
        parse(line)
    assert message in str(err.value)


_AT_FIELD = st.text(st.sampled_from("0123456789.,-+NSEW :٣²x"), max_size=14)


@settings(max_examples=1000, deadline=None)
@given(st.sampled_from(["+CGPSINFO:", "+QGPSLOC:", "+CGPS:", ""]),
       st.lists(_AT_FIELD | st.text(max_size=8), max_size=12),
       st.sampled_from([parse_cgpsinfo, parse_qgpsloc]))
def test_fuzzed_answers_are_a_fix_none_or_a_clear_error(prefix: str, fields: list[str],
                                                        parse: Callable[[str], Fix | None]) -> None:
    try:
        fix = parse(prefix + " " + ",".join(fields))
    except LocationParseError as exc:
        assert str(exc)
        return
    assert fix is None or (isinstance(fix, Fix) and -90 <= fix.lat <= 90 and -180 <= fix.lon <= 180)


_GOOD = {
    parse_cgpsinfo: "+CGPSINFO: 3113.343286,N,12121.234064,E,250311,072809.3,44.1,0.0,0",
    parse_qgpsloc: "+QGPSLOC: 080256.000,31.21882,121.62851,1.1,46.0,3,0.00,0.0,0.0,110315,08",
}


@settings(max_examples=1000, deadline=None)
@given(st.sampled_from(sorted(_GOOD, key=lambda parse: parse.__name__)), st.data())
def test_fuzzed_near_misses_are_a_fix_none_or_a_clear_error(parse: Callable[[str], Fix | None],
                                                             data: st.DataObject) -> None:
    """A good answer with a field or two replaced: the parsers' every check, one at a time."""
    prefix, _, rest = _GOOD[parse].partition(" ")
    fields = rest.split(",")
    for _ in range(data.draw(st.integers(1, 2))):
        fields[data.draw(st.integers(0, len(fields) - 1))] = data.draw(_AT_FIELD | st.text(max_size=8))
    try:
        fix = parse(prefix + " " + ",".join(fields))
    except LocationParseError as exc:
        assert str(exc)
        return
    assert fix is None or (isinstance(fix, Fix) and -90 <= fix.lat <= 90 and -180 <= fix.lon <= 180
                           and fix.time is not None and math.isfinite(fix.time))


@settings(max_examples=300, deadline=None)
@given(st.floats(-89.999, 89.999), st.floats(-179.999, 179.999), st.floats(0, 99.9),
       st.floats(946684800, 4102444799))
def test_the_fake_modems_answers_parse_back(lat: float, lon: float, hdop: float, at: float) -> None:
    point = GnssPoint(0, lat, lon, hdop)
    simcom = parse_cgpsinfo(cgpsinfo_line(point, at))
    quectel = parse_qgpsloc(qgpsloc_line(point, at))
    assert simcom is not None and quectel is not None
    assert simcom.lat == pytest.approx(lat, abs=1e-7) and simcom.lon == pytest.approx(lon, abs=1e-7)
    assert quectel.lat == pytest.approx(lat, abs=1e-5) and quectel.lon == pytest.approx(lon, abs=1e-5)
    assert simcom.time == pytest.approx(at, abs=0.11) and quectel.time == pytest.approx(at, abs=0.0011)
    assert quectel.accuracy_m == pytest.approx(round(hdop, 1) * H_UERE_M)


# --- the modem's GNSS through the fake modem ---------------------------------------------------


@pytest.fixture
def fake_modem(tmp_path: Path) -> Iterator[Callable[..., FakeModem]]:
    started: list[FakeModem] = []

    def start(track: Sequence[GnssPoint] = ()) -> FakeModem:
        fake = FakeModem(tmp_path / f"net{len(started)}.jsonl", gnss_track=track)
        fake.start()
        started.append(fake)
        return fake

    yield start
    for fake in started:
        fake.stop()


@pytest.fixture
def modems() -> Iterator[list[Modem]]:
    opened: list[Modem] = []
    yield opened
    for modem in opened:
        modem.close()


def modem_for(fake: FakeModem, modems: list[Modem]) -> Modem:
    modem = Modem(fake.path or "", command_timeout_s=2.0, sim_wait_s=1, registration_wait_s=1, poll_s=0.05,
                  retries=1, backoff_s=0.05)
    modems.append(modem)
    return modem


@pytest.mark.parametrize("dialect", ["simcom", "quectel"])
async def test_the_modems_gnss_fix_no_fix_and_a_move(dialect: str, fake_modem: Callable[..., FakeModem],
                                                      modems: list[Modem]) -> None:
    fake = fake_modem()  # no fix to begin with
    source = ModemGnssSource(modem_for(fake, modems), dialect, poll_s=0.05, stale_after_s=1.0)
    await source.start()
    try:
        await wait_until(source, lambda: source.status.endswith("(the modem's GNSS is searching)"), "no fix yet")
        assert source.latest() is None and source.last_known() is None
        turn_on = "AT+CGPS=1" if dialect == "simcom" else "AT+QGPS=1"
        assert fake.commands.count(turn_on) == 1  # it was off after power-up: turned on once
        fake.set_gnss_fix(*SEOUL_CITY_HALL)
        await wait_until(source, lambda: near(source.latest(), *SEOUL_CITY_HALL), "the fix")
        fix = source.latest()
        assert fix is not None and fix.source == f"modem:{dialect}" and abs(fix.time - time.time()) < 5  # type: ignore
        assert fix.accuracy_m == (None if dialect == "simcom" else pytest.approx(0.9 * H_UERE_M))
        fake.set_gnss_fix(37.5700, 126.9820)
        await wait_until(source, lambda: near(source.latest(), 37.5700, 126.9820), "the new position")
        fake.set_gnss_fix(None)  # lost: the last fix holds until stale, then only last_known
        await wait_until(source, lambda: "lost it since" in source.status, "the modem losing the fix")
        await wait_until(source, lambda: source.latest() is None, "the fix going stale", timeout_s=10)
        assert near(source.last_known(), 37.5700, 126.9820)
    finally:
        await source.close()


@pytest.mark.parametrize("dialect", ["simcom", "quectel"])
async def test_a_modem_restart_turns_the_gnss_off_and_the_source_on_again(
        dialect: str, fake_modem: Callable[..., FakeModem], modems: list[Modem]) -> None:
    fake = fake_modem([GnssPoint(0, *SEOUL_CITY_HALL)])
    source = ModemGnssSource(modem_for(fake, modems), dialect, poll_s=0.05, recheck_on_s=0.3)
    await source.start()
    try:
        await wait_until(source, lambda: source.latest() is not None, "a fix")
        fixes = source.fixes
        fake.reboot()  # RDY: the modem forgot ATE0, CMEE... and its GNSS is off
        fake.wait_ready()
        turn_on = "AT+CGPS=1" if dialect == "simcom" else "AT+QGPS=1"
        await wait_until(source, lambda: fake.commands.count(turn_on) == 2, "the GNSS turned on again")
        await wait_until(source, lambda: source.fixes > fixes + 2, "fixes again")
    finally:
        await source.close()


async def test_the_gnss_shares_the_modem_with_texts(fake_modem: Callable[..., FakeModem], modems: list[Modem]) -> None:
    fake = fake_modem([GnssPoint(0, *SEOUL_CITY_HALL)])
    modem = modem_for(fake, modems)
    source = ModemGnssSource(modem, "quectel", poll_s=0.0)  # polling as fast as it can
    await source.start()
    try:
        await wait_until(source, lambda: source.latest() is not None, "a fix")
        texts = [f"[지키미] 테스트 {i}: " + "위치 " * 30 for i in range(3)]  # 2 UCS-2 segments each
        for text in texts:
            await asyncio.to_thread(modem.send_sms, GUARDIAN, text)
        polls = source.polls
        await wait_until(source, lambda: source.polls > polls + 3, "polls after the texts")
        assert source.status.startswith("fix ")
    finally:
        await source.close()
    assert [event["text"] for event in fake.events if event["kind"] == "sms"] == texts


async def test_a_modem_that_cannot_start_a_session_is_a_status(fake_modem: Callable[..., FakeModem], modems: list[Modem]) -> None:
    fake = fake_modem()
    fake.faults.no_sim = True  # no session can start: every poll fails
    source = ModemGnssSource(modem_for(fake, modems), "simcom", poll_s=0.05, poll_max_s=0.2)
    await source.start()
    try:
        await wait_until(source, lambda: "SIM" in source.status, "the modem's error")
        assert source.status.startswith("modem GNSS (simcom): ") and source.latest() is None
    finally:
        await source.close()


def test_modem_query_returns_the_information_lines(fake_modem: Callable[..., FakeModem], modems: list[Modem]) -> None:
    fake = fake_modem([GnssPoint(0, *SEOUL_CITY_HALL)])
    modem = modem_for(fake, modems)
    assert modem.query("AT+QGPS?", expect="+QGPS:") == ["+QGPS: 0"]
    assert modem.query("AT+QGPS=1") == []
    with pytest.raises(ModemError) as err:
        modem.query("AT+QGPS=1")
    assert err.value.code == "CME 504"
    [line] = modem.query("AT+QGPSLOC=2", expect="+QGPSLOC:")
    assert near(parse_qgpsloc(line), *SEOUL_CITY_HALL, tolerance=1e-5)


@pytest.mark.parametrize("command", ["AT+CGPSINFO;D112;", "AT\rATD112;", "ATD112;", "CGPSINFO", "AT+X\n", "AT" + "I" * 61])
def test_modem_query_refuses_anything_but_one_command(command: str, fake_modem: Callable[..., FakeModem],
                                                      modems: list[Modem]) -> None:
    fake = fake_modem()
    modem = modem_for(fake, modems)
    with pytest.raises(ModemError) as err:
        modem.query(command)
    assert err.value.code == "COMMAND" and not err.value.retryable
    assert fake.commands == []  # nothing reached the modem


def test_the_fake_modem_process_plays_a_gnss_track(tmp_path: Path, modems: list[Modem]) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "jikimi_host.relay.fake_modem", "--log", str(tmp_path / "net.jsonl"),
         "--gnss-track", "0=none 0.5=37.5665,126.978,1.5"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert process.stdout is not None
        path = process.stdout.readline().strip()
        modem = Modem(path, command_timeout_s=5.0)
        modems.append(modem)
        modem.query("AT+CGPS=1")
        deadline = time.monotonic() + 20
        fix = None
        while fix is None and time.monotonic() < deadline:
            [line] = modem.query("AT+CGPSINFO", expect="+CGPSINFO:")
            fix = parse_cgpsinfo(line)
        assert near(fix, *SEOUL_CITY_HALL, tolerance=1e-6)
        # the same receiver asked the Quectel way (the fake speaks both): with the track's HDOP
        [line] = modem.query("AT+QGPSLOC=2", expect="+QGPSLOC:")
        quectel = parse_qgpsloc(line)
        assert near(quectel, *SEOUL_CITY_HALL, tolerance=1e-5) and quectel.accuracy_m == pytest.approx(1.5 * H_UERE_M)  # type: ignore[union-attr]
    finally:
        process.terminate()
        process.wait(timeout=10)


# --- the fixed point, the fallback, the config -------------------------------------------------


async def test_the_fixed_point() -> None:
    source = FixedSource(Location(*SEOUL_CITY_HALL, 25))
    await source.start()
    fix = source.latest()
    assert fix == Fix(*SEOUL_CITY_HALL, 25, None, "fixed") and source.last_known() == fix
    assert fix.to_location() == Location(*SEOUL_CITY_HALL, 25)
    assert source.status == "the config's fixed point 37.56650,126.97800"
    await source.close()


class _Manual:
    """A source whose fixes a test sets, with its own clock."""

    name = "manual"

    def __init__(self) -> None:
        self.now = 0.0
        self.fix: Fix | None = None
        self.at = 0.0
        self.status = "manual"

    async def start(self) -> None:
        pass

    def latest(self) -> Fix | None:
        return self.fix if self.fix is not None and self.now - self.at <= 60 else None

    def last_known(self) -> Fix | None:
        return self.fix

    async def close(self) -> None:
        pass


async def test_the_fallback_takes_the_first_fresh_fix() -> None:
    primary, fixed = _Manual(), FixedSource(Location(*SEOUL_CITY_HALL, 25))
    source = FallbackSource([primary, fixed])
    await source.start()
    assert source.latest() == fixed.latest() == source.last_known()
    primary.fix = Fix(35.1796, 129.0756, 10, 1.0, "gpsd")
    assert source.latest() == primary.fix == source.last_known()
    primary.now = 61  # gone stale: the fixed point now, but the gpsd fix is still the last known
    assert source.latest() == fixed.latest() and source.last_known() == primary.fix
    assert source.status == "manual: manual | fixed: the config's fixed point 37.56650,126.97800"
    await source.close()


def test_fix_refuses_a_position_that_is_none() -> None:
    with pytest.raises(LocationParseError, match="latitude must be -90..90"):
        Fix(float("nan"), 0, None, None, "gpsd")
    with pytest.raises(LocationParseError, match="longitude must be -180..180"):
        Fix(0, 180.5, None, None, "gpsd")
    with pytest.raises(LocationParseError, match="accuracy must be a distance"):
        Fix(0, 0, -1, None, "gpsd")


MINIMAL = {"owner": "김지은", "guardians": [{"name": "어머니", "number": "010-0000-0001"}]}


def test_the_factory_builds_what_the_config_says() -> None:
    assert isinstance(location_source(rc.parse(MINIMAL)), NoSource)
    fixed = location_source(rc.parse({**MINIMAL, "location": {"lat": 37.5665, "lon": 126.978}}))
    assert isinstance(fixed, FixedSource) and fixed.latest() == Fix(37.5665, 126.978, None, None, "fixed")
    gpsd = location_source(rc.parse({**MINIMAL, "location": {"source": "gpsd", "gpsd": "10.0.0.7:2948",
                                                              "stale_after_s": 30}}))
    assert isinstance(gpsd, GpsdSource) and (gpsd.host, gpsd.port) == ("10.0.0.7", 2948)
    assert gpsd._holder.stale_after_s == 30
    both = location_source(rc.parse({**MINIMAL, "location": {"source": "gpsd", "lat": 37.5665, "lon": 126.978}}))
    assert isinstance(both, FallbackSource)
    assert [type(s) for s in both.sources] == [GpsdSource, FixedSource]
    modem_config = rc.parse({**MINIMAL, "backend": "modem", "modem": {"port": "/dev/ttyUSB2"},
                             "location": {"source": "modem", "modem_gnss": "quectel"}})
    with pytest.raises(ValueError, match="needs the relay's Modem"):
        location_source(modem_config)
    modem = Modem("/dev/null-modem")
    gnss = location_source(modem_config, modem)
    assert isinstance(gnss, ModemGnssSource) and gnss.modem is modem and gnss.dialect.name == "quectel"
