"""Where the owner is: the relay's location sources (gpsd, the modem's own GNSS, a fixed point).

A relay runs on a small Linux box with a cellular modem. Its position comes from gpsd (a GPS
receiver on USB or serial), from the modem's GNSS over AT commands, or from the config's fixed
point, the last fallback. Each is a `LocationSource`:

- `await start()` begins following the source in a task of its own; `await close()` stops it.
- `latest()` is the newest fix held in memory, or None when there is none newer than
  `stale_after_s`. It never waits and never does I/O: the alarm path calls it and must not wait
  for a fix.
- `last_known()` is the newest fix ever seen, however old (None before the first).
- `status` says in words what the source is doing ("fix 3 s old", "no fix yet",
  "gpsd 127.0.0.1:2947 unreachable: ...").

Nothing here raises into the caller: a gpsd that goes away, a modem that answers nonsense or
an error are a `status`, and the source keeps trying (gpsd: reconnect with backoff; the modem:
the next poll).

Age. A fix is as old as the time since the relay first received it (its own time stamp, `time`,
only goes into the text): a box whose clock is wrong cannot hide a live fix or keep a dead one
alive. A receiver that reports the same epoch again (gpsd's several TPVs per cycle, a modem that
repeats its last fix) does not make that fix younger.

gpsd's JSON protocol is line-delimited JSON over TCP; `GpsdSource` is a small asyncio client of
its own, because the Python clients on PyPI are blocking (`gpsdclient` 1.3.2, a socket loop;
`gps` 3.19, a 2019 snapshot of gpsd's own module with no asyncio), and a thread per source to
wrap one would be more code than the protocol: connect, send `?WATCH={"enable":true,"json":true}`,
read TPV reports.

The modem's GNSS (`ModemGnssSource`) is polled through the relay's one `Modem`, whose lock it
shares with SMS and calls: a poll waits for a text being sent, never the other way round (the
poll runs in a worker thread; `latest()` is still a memory read).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Protocol

from jikimi_host.relay.config import RelayConfig
from jikimi_host.relay.messages import Location
from jikimi_host.relay.modem import Modem, ModemError

log = logging.getLogger(__name__)

GPSD_PORT = 2947
GPSD_WATCH = b'?WATCH={"enable":true,"json":true}\n'
STALE_AFTER_S = 60.0
GNSS_DIALECTS = ("simcom", "quectel")
# gpsd's own error model turns a DOP into metres with this UERE (95 % confidence, no DGPS:
# gpsd.h H_UERE_NO_DGPS): 0.9 HDOP -> eph 17.1 m. The modem's HDOP gets the same, so that
# accuracies from gpsd and from a modem mean the same thing.
H_UERE_M = 19.0
# Quectel AT+QGPSLOC errors (+CME ERROR: <n>, GNSS AT commands manual): 516 not fixed now,
# 505 session not active (the GNSS is off: a modem that restarted turned it off).
QUECTEL_NO_FIX = "CME 516"
QUECTEL_NOT_ACTIVE = "CME 505"
_GPSD_LINE_LIMIT = 1 << 18  # a SKY report with every satellite is a few KiB


class LocationParseError(ValueError):
    """A receiver's answer that is neither a fix nor a clear "no fix"."""


@dataclass(frozen=True)
class Fix:
    """One position. `time` is the fix's own time (GNSS UTC, Unix s), or when the relay received
    it if the receiver gave none; None for the config's fixed point, which was never measured.
    `accuracy_m` is the 95 % horizontal error in metres, None if unknown. `source` names where it
    came from: "gpsd", "modem:simcom", "modem:quectel", "fixed"."""

    lat: float
    lon: float
    accuracy_m: float | None
    time: float | None
    source: str

    def __post_init__(self) -> None:
        if not (isinstance(self.lat, (int, float)) and math.isfinite(self.lat) and -90 <= self.lat <= 90):
            raise LocationParseError(f"latitude must be -90..90 degrees, got {self.lat!r}")
        if not (isinstance(self.lon, (int, float)) and math.isfinite(self.lon) and -180 <= self.lon <= 180):
            raise LocationParseError(f"longitude must be -180..180 degrees, got {self.lon!r}")
        if self.accuracy_m is not None and not (math.isfinite(self.accuracy_m) and self.accuracy_m >= 0):
            raise LocationParseError(f"accuracy must be a distance in metres, got {self.accuracy_m!r}")

    def to_location(self, *, current: bool = True) -> Location:
        """The message's Location; `current` False for a last known fix that is no longer fresh.
        Accuracy is rounded up: 17.1 m is said as 18 m, never better."""
        accuracy = None if self.accuracy_m is None else math.ceil(self.accuracy_m)
        return Location(self.lat, self.lon, accuracy, fixed_at=self.time, current=current)


class LocationSource(Protocol):
    name: str

    @property
    def status(self) -> str: ...

    async def start(self) -> None: ...

    def latest(self) -> Fix | None:
        """The newest fix not older than the source's stale_after_s; never waits."""
        ...

    def last_known(self) -> Fix | None:
        """The newest fix ever seen, however old."""
        ...

    async def close(self) -> None: ...


# --- holding fixes -----------------------------------------------------------------------------


class _FixHolder:
    """The newest fix, when it arrived, and a wake-up for whoever waits for a change."""

    def __init__(self, stale_after_s: float, monotonic: Callable[[], float]) -> None:
        self.stale_after_s = stale_after_s
        self._monotonic = monotonic
        self._fix: Fix | None = None
        self._received_at = 0.0  # monotonic: when this fix's epoch first arrived
        self.fixes = 0  # new epochs seen (a repeat of the same epoch is not counted)
        self._changed = asyncio.Event()

    def latest(self) -> Fix | None:
        if self._fix is None or self._monotonic() - self._received_at > self.stale_after_s:
            return None
        return self._fix

    def last_known(self) -> Fix | None:
        return self._fix

    def age_s(self) -> float | None:
        return None if self._fix is None else self._monotonic() - self._received_at

    def record(self, fix: Fix) -> None:
        previous = self._fix
        same_epoch = previous is not None and fix.time is not None and fix.time == previous.time
        self._fix = fix  # a second report of an epoch may say more (gpsd: mode 2, then 3 with eph)
        if not same_epoch:
            self._received_at = self._monotonic()
            self.fixes += 1
        self.notify()

    def notify(self) -> None:
        event, self._changed = self._changed, asyncio.Event()
        event.set()

    async def changed(self, timeout_s: float) -> bool:
        """Wait until the next new fix or change of status; False if `timeout_s` passed first."""
        event = self._changed
        try:
            await asyncio.wait_for(event.wait(), timeout_s)
        except asyncio.TimeoutError:
            return False
        return True

    def fix_words(self) -> str:
        age = self.age_s()
        if age is None:
            return "no fix yet"
        if age > self.stale_after_s:
            return f"no recent fix (the last is {age:.0f} s old, over {self.stale_after_s:g} s)"
        return f"fix {age:.0f} s old"


class FixedSource:
    """The config's fixed point ([location] lat/lon/accuracy_m): always there, never stale."""

    name = "fixed"

    def __init__(self, location: Location) -> None:
        self._fix = Fix(location.lat, location.lon, location.accuracy_m, None, "fixed")

    @property
    def status(self) -> str:
        return f"the config's fixed point {self._fix.lat:.5f},{self._fix.lon:.5f}"

    async def start(self) -> None:
        pass

    def latest(self) -> Fix | None:
        return self._fix

    def last_known(self) -> Fix | None:
        return self._fix

    async def close(self) -> None:
        pass


class NoSource:
    """A relay with no [location]: texts say "location unknown", as before."""

    name = "none"
    status = "no [location] in the config"

    async def start(self) -> None:
        pass

    def latest(self) -> Fix | None:
        return None

    def last_known(self) -> Fix | None:
        return None

    async def close(self) -> None:
        pass


class FallbackSource:
    """Sources in order of preference, e.g. gpsd then the fixed point: `latest()` is the first
    source's fresh fix, else the next one's; `last_known()` likewise (so a gpsd fix an hour old
    comes before the fixed point there). `sources` are there for a caller that wants to choose."""

    name = "fallback"

    def __init__(self, sources: Sequence[LocationSource]) -> None:
        self.sources = tuple(sources)

    @property
    def status(self) -> str:
        return " | ".join(f"{source.name}: {source.status}" for source in self.sources)

    async def start(self) -> None:
        for source in self.sources:
            await source.start()

    def latest(self) -> Fix | None:
        for source in self.sources:
            if (fix := source.latest()) is not None:
                return fix
        return None

    def last_known(self) -> Fix | None:
        for source in self.sources:
            if (fix := source.last_known()) is not None:
                return fix
        return None

    async def close(self) -> None:
        for source in self.sources:
            await source.close()


# --- gpsd --------------------------------------------------------------------------------------


def parse_tpv(report: dict[str, Any], received_at: float) -> Fix | None:
    """A fix from one of gpsd's TPV reports, or None when it has none: mode 0 or 1, no mode yet,
    or no lat/lon (gpsd sends a mode 3 TPV with only the error estimates at times). `received_at`
    (Unix s) stands in for a missing `time` (a GGA before the first RMC: no date yet). A lat or lon
    that is there but no position raises LocationParseError.

    Accuracy: gpsd's `eph` (horizontal, 95 %), else the diagonal of `epx` and `epy` (each axis,
    95 %), else unknown."""
    mode = report.get("mode")
    if mode is None:
        return None
    if mode not in (0, 1, 2, 3) or isinstance(mode, (bool, float)):
        raise LocationParseError(f"TPV mode must be 0..3, got {mode!r}")
    if mode < 2 or ("lat" not in report and "lon" not in report):
        return None
    lat, lon = _finite(report.get("lat")), _finite(report.get("lon"))
    if lat is None or lon is None:
        raise LocationParseError(f"TPV with mode {mode} but lat {report.get('lat')!r}, lon {report.get('lon')!r}")
    accuracy: float | None = None
    eph, epx, epy = (_finite(report.get(key)) for key in ("eph", "epx", "epy"))
    if eph is not None and eph >= 0:
        accuracy = eph
    elif epx is not None and epy is not None and epx >= 0 and epy >= 0:
        accuracy = math.hypot(epx, epy)
    return Fix(lat, lon, accuracy, _tpv_time(report.get("time"), received_at), "gpsd")


def _finite(value: Any) -> float | None:
    """A JSON number as a finite float; None for anything else (a string, NaN, 1e999, true)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:  # an integer too large for a float
        return None
    return number if math.isfinite(number) else None


def _tpv_time(value: Any, received_at: float) -> float:
    """TPV `time`: ISO 8601 UTC ("2026-05-09T05:03:27.000Z"); a number (Unix s) before protocol 3.9."""
    if (number := _finite(value)) is not None:
        return number
    if not isinstance(value, str):
        return received_at
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=timezone.utc)  # gpsd's times are UTC
        return parsed.timestamp()
    except (ValueError, OverflowError):
        raise LocationParseError(f"TPV time is not ISO 8601: {value!r}") from None


class _TaskSource:
    """What gpsd's and the modem's sources share: a background task that feeds a _FixHolder;
    `latest()`/`last_known()` read the holder (memory only)."""

    _holder: _FixHolder
    _task: asyncio.Task[None] | None
    _problem: str | None
    _starting = "starting"  # the status until the task has heard something

    def _task_name(self) -> str:
        raise NotImplementedError

    async def _run(self) -> None:
        raise NotImplementedError

    @property
    def fixes(self) -> int:
        return self._holder.fixes

    async def start(self) -> None:
        if self._task is None:
            self._problem = self._starting
            self._task = asyncio.create_task(self._run(), name=self._task_name())

    def latest(self) -> Fix | None:
        return self._holder.latest()

    def last_known(self) -> Fix | None:
        return self._holder.last_known()

    async def changed(self, timeout_s: float) -> bool:
        """Wait for the next new fix or change of status (tests, the benchmark, monitoring)."""
        return await self._holder.changed(timeout_s)

    async def _stop_task(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task  # a modem query already in its thread finishes there; its answer is dropped


class GpsdSource(_TaskSource):
    """A gpsd client: watches gpsd at host:port over TCP and keeps the newest TPV fix.

    gpsd going away (stopped, restarted, not yet up at boot) is a status; the source reconnects
    after `reconnect_min_s`, doubling up to `reconnect_max_s` while it stays away, and the fixes
    it had stay (`latest()` until stale, `last_known()` for good)."""

    name = "gpsd"

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = GPSD_PORT,
        *,
        stale_after_s: float = STALE_AFTER_S,
        reconnect_min_s: float = 0.5,
        reconnect_max_s: float = 30.0,
        connect_timeout_s: float = 5.0,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.host = host
        self.port = port
        self.reconnect_min_s = reconnect_min_s
        self.reconnect_max_s = reconnect_max_s
        self.connect_timeout_s = connect_timeout_s
        self._clock = clock
        self._holder = _FixHolder(stale_after_s, monotonic)
        self._task: asyncio.Task[None] | None = None
        self._connected = False
        self._problem = "not started"  # while not connected: what the status says after the address
        self._devices: set[str] = set()  # receivers gpsd says are active
        self._has_fix_now: bool | None = None  # what the last TPV said; None before the first
        self.connections = 0  # sessions that got as far as the WATCH
        self.reports = 0  # TPV reports received, fix or not
        self.bad_reports = 0  # lines that were not JSON, or a TPV that made no sense

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def status(self) -> str:
        fix = self._holder.fix_words()
        if not self._connected:
            return f"gpsd {self.address} {self._problem}; {fix}"
        if not self._devices:
            return f"gpsd has no GPS receiver; {fix}"
        if self._has_fix_now is False:
            if self._holder.latest() is not None:
                return f"{fix}; the receiver has lost it since"
            return f"{fix} (the receiver is searching)"
        return fix

    _starting = "connecting"

    def _task_name(self) -> str:
        return f"gpsd {self.address}"

    async def close(self) -> None:
        await self._stop_task()
        self._connected = False
        self._problem = "closed"

    async def _run(self) -> None:
        delay = self.reconnect_min_s
        while True:
            try:
                got_data = await self._session()
                problem = "gpsd closed the connection"
            except asyncio.CancelledError:
                raise
            except (OSError, asyncio.TimeoutError) as exc:
                got_data, problem = False, _describe_socket_error(exc)
            except Exception as exc:  # never into the caller: say it and try again
                log.exception("gpsd %s: unexpected error", self.address)
                got_data, problem = False, f"unexpected error: {exc!r}"
            if got_data:
                delay = self.reconnect_min_s  # it was up: this is a restart, not a gpsd still away
            self._connected = False
            self._problem = f"unreachable: {problem} (trying again in {delay:g} s)"
            self._holder.notify()
            log.info("gpsd %s: %s", self.address, self._problem)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.reconnect_max_s)

    async def _session(self) -> bool:
        """One connection: WATCH, then every report until gpsd closes it. True if any came."""
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(self.host, self.port, limit=_GPSD_LINE_LIMIT), self.connect_timeout_s
        )
        got_data = False
        try:
            writer.write(GPSD_WATCH)
            await writer.drain()
            self._connected = True
            self._devices = set()
            self._has_fix_now = None
            self.connections += 1
            self._holder.notify()
            while True:
                try:
                    line = await reader.readline()
                except ValueError:  # longer than the limit: not gpsd, or lost its way
                    raise OSError(f"a line over {_GPSD_LINE_LIMIT} bytes: is this gpsd?") from None
                if not line:
                    return got_data
                got_data = True
                self._on_line(line)
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    def _on_line(self, line: bytes) -> None:
        try:
            report = json.loads(line)
        except ValueError:
            self.bad_reports += 1
            log.warning("gpsd %s: not JSON: %r", self.address, line[:200])
            return
        if not isinstance(report, dict):
            return
        kind = report.get("class")
        if kind == "TPV":
            self.reports += 1
            try:
                fix = parse_tpv(report, self._clock())
            except LocationParseError as exc:
                self.bad_reports += 1
                log.warning("gpsd %s: %s", self.address, exc)
                return
            if isinstance(report.get("device"), str):
                self._devices.add(report["device"])  # a TPV comes from a receiver gpsd has open
            if fix is not None:
                self._has_fix_now = True
                self._holder.record(fix)
            else:
                if report.get("mode") in (0, 1):
                    self._has_fix_now = False  # (a mode 3 report without a position says neither)
                self._holder.notify()
        elif kind == "DEVICES" and isinstance(report.get("devices"), list):
            self._devices = {d["path"] for d in report["devices"]
                             if isinstance(d, dict) and isinstance(d.get("path"), str) and d.get("activated")}
            self._holder.notify()
        elif kind == "DEVICE" and isinstance(report.get("path"), str):
            # `activated` is a time stamp while the receiver is open, 0 once gpsd has let it go
            if report.get("activated"):
                self._devices.add(report["path"])
            else:
                self._devices.discard(report["path"])
            self._holder.notify()
        elif kind == "ERROR":
            log.warning("gpsd %s: %s", self.address, report.get("message"))


def _describe_socket_error(exc: BaseException) -> str:
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError)):  # (one class since 3.11)
        return "no answer to connect"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused, is gpsd running?"
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


# --- the modem's GNSS --------------------------------------------------------------------------


def parse_cgpsinfo(line: str) -> Fix | None:
    """A fix from SIMCom's `+CGPSINFO: <lat>,<N/S>,<lon>,<E/W>,<date>,<UTC time>,<alt>,<speed>,
    <course>` (lat ddmm.mmmmmm, lon dddmm.mmmmmm, date ddmmyy, time hhmmss.s), or None for
    `+CGPSINFO: ,,,,,,,,` (no fix). Anything else raises LocationParseError. SIMCom gives no
    accuracy."""
    fields = _fields(line, "+CGPSINFO:")
    if len(fields) < 6:
        raise LocationParseError(f"+CGPSINFO needs lat, N/S, lon, E/W, date, time: {line!r}")
    if not any(fields[:4]):
        return None  # no position: no fix (or the GNSS is off), whatever the time fields say
    lat = _degrees_minutes(fields[0], fields[1], "NS", 2, 90, "latitude", line)
    lon = _degrees_minutes(fields[2], fields[3], "EW", 3, 180, "longitude", line)
    at = _utc(fields[4], fields[5], line)
    return Fix(lat, lon, None, at, "modem:simcom")


def parse_qgpsloc(line: str) -> Fix | None:
    """A fix from Quectel's `+QGPSLOC: <UTC>,<lat>,<lon>,<hdop>,<alt>,<fix>,<cog>,<spkm>,<spkn>,
    <date>,<nsat>` (the answer to AT+QGPSLOC=2: decimal degrees, UTC hhmmss.sss, date ddmmyy), or
    None when <fix> says there is none (not 2 or 3). The modem answers `+CME ERROR: 516`
    when it has no fix, which never gets here. Accuracy: HDOP x H_UERE_M, as gpsd computes it."""
    fields = _fields(line, "+QGPSLOC:")
    if len(fields) < 10:
        raise LocationParseError(f"+QGPSLOC needs at least UTC, lat, lon, hdop, alt, fix, cog, spkm, spkn, date: {line!r}")
    if not _digits(fields[5]):
        raise LocationParseError(f"+QGPSLOC <fix> must be a number, got {fields[5]!r}: {line!r}")
    if int(fields[5]) not in (2, 3):
        return None
    lat = _decimal(fields[1], 90, "latitude", line)
    lon = _decimal(fields[2], 180, "longitude", line)
    try:
        hdop = float(fields[3])
    except ValueError:
        raise LocationParseError(f"+QGPSLOC hdop must be a number, got {fields[3]!r}: {line!r}") from None
    if not (math.isfinite(hdop) and 0 <= hdop <= 99.99):
        raise LocationParseError(f"+QGPSLOC hdop must be 0..99.99, got {fields[3]!r}: {line!r}")
    return Fix(lat, lon, hdop * H_UERE_M, _utc(fields[9], fields[0], line), "modem:quectel")


def _digits(text: str) -> bool:
    """Only 0-9 (str.isdigit also takes "²" and "٣", which int() and float() do not)."""
    return text.isascii() and text.isdigit()


def _fields(line: str, prefix: str) -> list[str]:
    if not line.startswith(prefix):
        raise LocationParseError(f"expected {prefix} ..., got {line!r}")
    return [field.strip() for field in line[len(prefix):].split(",")]


def _degrees_minutes(value: str, hemisphere: str, signs: str, degree_digits: int, limit: int, what: str,
                     line: str) -> float:
    """`3733.990000`, `N` -> 37.5665 (NMEA style: degrees, then minutes with a fraction)."""
    whole, dot, fraction = value.partition(".")
    if not (len(whole) == degree_digits + 2 and _digits(whole) and (not dot or _digits(fraction))):
        raise LocationParseError(f"{what} must be {'d' * degree_digits}mm.mmmmmm, got {value!r}: {line!r}")
    if hemisphere not in tuple(signs):
        raise LocationParseError(f"{what} hemisphere must be {' or '.join(signs)}, got {hemisphere!r}: {line!r}")
    degrees, minutes = int(whole[:degree_digits]), float(whole[degree_digits:] + dot + fraction)
    if minutes >= 60 or degrees + minutes / 60 > limit:
        raise LocationParseError(f"{what} {value!r} is not a position: {line!r}")
    result = degrees + minutes / 60
    return -result if hemisphere == signs[1] else result


def _decimal(value: str, limit: int, what: str, line: str) -> float:
    number = value[1:] if value[:1] in "+-" else value
    whole, dot, fraction = number.partition(".")
    if not (_digits(whole) and (not dot or _digits(fraction))):
        raise LocationParseError(f"{what} must be decimal degrees, got {value!r}: {line!r}")
    result = float(value)
    if abs(result) > limit:
        raise LocationParseError(f"{what} must be -{limit}..{limit}, got {value!r}: {line!r}")
    return result


def _utc(date: str, clock: str, line: str) -> float:
    """ddmmyy + hhmmss[.s...] (UTC) -> Unix s."""
    whole, dot, fraction = clock.partition(".")
    if not (len(date) == 6 and _digits(date) and len(whole) == 6 and _digits(whole) and (not dot or _digits(fraction))):
        raise LocationParseError(f"date/time must be ddmmyy and hhmmss.s, got {date!r} {clock!r}: {line!r}")
    try:
        moment = datetime(2000 + int(date[4:6]), int(date[2:4]), int(date[0:2]), int(whole[0:2]),
                          int(whole[2:4]), int(whole[4:6]), tzinfo=timezone.utc)
    except ValueError as exc:
        raise LocationParseError(f"date/time {date!r} {clock!r} is not a time ({exc}): {line!r}") from None
    return moment.timestamp() + (float("0." + fraction) if fraction else 0.0)


@dataclass(frozen=True)
class GnssDialect:
    """One vendor's GNSS commands."""

    name: str
    query_on: str  # asks whether the GNSS is on
    on_prefix: str
    turn_on: str
    locate: str  # asks for the fix
    fix_prefix: str
    parse: Callable[[str], Fix | None]


DIALECTS = {
    # SIMCom (SIM7600, SIM7500...): AT+CGPS? -> +CGPS: <on>,<mode>; AT+CGPS=1 answers ERROR when
    # it is on already, which is why the state is asked first.
    "simcom": GnssDialect("simcom", "AT+CGPS?", "+CGPS:", "AT+CGPS=1", "AT+CGPSINFO", "+CGPSINFO:",
                          parse_cgpsinfo),
    # Quectel (EG25, EC25, BG95...): AT+QGPS? -> +QGPS: <on>; AT+QGPS=1 would say CME 504.
    "quectel": GnssDialect("quectel", "AT+QGPS?", "+QGPS:", "AT+QGPS=1", "AT+QGPSLOC=2", "+QGPSLOC:",
                           parse_qgpsloc),
}


def gnss_is_on(info: list[str], prefix: str) -> bool | None:
    """From `+CGPS: 1,1` / `+QGPS: 1`: True if on, False if off, None if the answer has no such line."""
    for line in info:
        if line.startswith(prefix):
            first = line[len(prefix):].split(",")[0].strip()
            return first == "1"
    return None


class ModemGnssSource(_TaskSource):
    """The modem's own GNSS, polled every `poll_s` with the dialect's location command through the
    relay's shared `Modem`. It turns the GNSS on at start, and again when the modem says it is off
    (a modem that restarted) or it has had no fix for `recheck_on_s`.

    After a modem error the next poll waits twice as long, up to `poll_max_s`: a modem that
    rejects the command (the wrong `modem_gnss`) answers a bare ERROR, after which `Modem` starts
    its session over, and that must not happen every few seconds between the relay's texts."""

    def __init__(
        self,
        modem: Modem,
        dialect: str,
        *,
        poll_s: float = 5.0,
        poll_max_s: float = 300.0,
        stale_after_s: float = STALE_AFTER_S,
        recheck_on_s: float = 60.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if dialect not in DIALECTS:
            raise ValueError(f"modem GNSS must be one of {', '.join(DIALECTS)}, got {dialect!r}")
        self.modem = modem
        self.dialect = DIALECTS[dialect]
        self.name = f"modem:{dialect}"
        self.poll_s = poll_s
        self.poll_max_s = poll_max_s
        self.recheck_on_s = recheck_on_s
        self._monotonic = monotonic
        self._holder = _FixHolder(stale_after_s, monotonic)
        self._task: asyncio.Task[None] | None = None
        self._problem: str | None = "not started"
        self._has_fix_now: bool | None = None
        self._checked_on_at: float | None = None  # monotonic; None: ask before the next poll
        self.polls = 0

    @property
    def status(self) -> str:
        fix = self._holder.fix_words()
        if self._problem is not None:
            return f"modem GNSS ({self.dialect.name}): {self._problem}; {fix}"
        if self._has_fix_now is False:
            if self._holder.latest() is not None:
                return f"{fix}; the modem's GNSS has lost it since"
            return f"{fix} (the modem's GNSS is searching)"
        return fix

    def _task_name(self) -> str:
        return f"{self.name} GNSS"

    async def close(self) -> None:
        await self._stop_task()
        self._problem = "closed"

    async def _run(self) -> None:
        delay = self.poll_s
        while True:
            try:
                fix, has_fix_now, problem = await asyncio.to_thread(self._poll)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # never into the caller: say it, poll again
                log.exception("%s: unexpected error", self.name)
                fix, has_fix_now, problem = None, None, f"unexpected error: {exc!r}"
            # Back on the event loop: the holder (and its asyncio.Event) is only touched here.
            self._problem = problem
            if has_fix_now is not None:
                self._has_fix_now = has_fix_now
            if fix is not None:
                self._holder.record(fix)
            else:
                self._holder.notify()
            delay = self.poll_s if problem is None else min(delay * 2, self.poll_max_s)
            await asyncio.sleep(delay)

    def _poll(self) -> tuple[Fix | None, bool | None, str | None]:
        """One poll, in a worker thread (the modem's lock may be held by an SMS for a while):
        (the fix, whether the modem has one now (None: it did not say), the problem if any)."""
        dialect = self.dialect
        try:
            now = self._monotonic()
            if self._checked_on_at is None or (
                self._has_fix_now is not True and now - self._checked_on_at > self.recheck_on_s
            ):
                self._turn_on()
                self._checked_on_at = now
            self.polls += 1
            try:
                info = self.modem.query(dialect.locate, expect=dialect.fix_prefix)
            except ModemError as exc:
                if exc.code == QUECTEL_NO_FIX:
                    return None, False, None
                if exc.code == QUECTEL_NOT_ACTIVE:
                    self._checked_on_at = None  # turned on again before the next poll
                    return None, False, "the GNSS is off (+CME ERROR: 505): turning it on"
                raise
            lines = [line for line in info if line.startswith(dialect.fix_prefix)]
            if not lines:
                raise LocationParseError(f"{dialect.locate} answered OK without a {dialect.fix_prefix} line")
            fix = dialect.parse(lines[-1])
        except ModemError as exc:
            self._checked_on_at = None  # the modem may have restarted, and forgotten the GNSS
            return None, None, exc.message
        except LocationParseError as exc:
            return None, None, f"a bad answer: {exc}"
        return fix, fix is not None, None

    def _turn_on(self) -> None:
        dialect = self.dialect
        if gnss_is_on(self.modem.query(dialect.query_on, expect=dialect.on_prefix), dialect.on_prefix) is not True:
            log.info("%s: turning the GNSS on (%s)", self.name, dialect.turn_on)
            self.modem.query(dialect.turn_on)


# --- from the config ---------------------------------------------------------------------------


def location_source(config: RelayConfig, modem: Modem | None = None) -> LocationSource:
    """The source the config's [location] names, with its fixed point (if given) as the fallback.
    `modem` is the relay's Modem (ModemTelephony.modem), needed for source = "modem"."""
    settings = config.location_settings
    if settings is None:
        return NoSource()
    fixed = FixedSource(settings.fixed) if settings.fixed is not None else None
    if settings.source == "fixed":
        assert fixed is not None  # the config requires lat/lon for it
        return fixed
    primary: LocationSource
    if settings.source == "gpsd":
        primary = GpsdSource(settings.gpsd_host, settings.gpsd_port, stale_after_s=settings.stale_after_s)
    elif settings.source == "modem":
        if modem is None:
            raise ValueError('location source "modem" needs the relay\'s Modem (backend = "modem")')
        assert settings.modem_gnss is not None
        primary = ModemGnssSource(modem, settings.modem_gnss, stale_after_s=settings.stale_after_s)
    else:
        raise ValueError(f"unknown location source {settings.source!r}")
    return primary if fixed is None else FallbackSource([primary, fixed])
