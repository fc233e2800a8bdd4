"""A GPS receiver for the rig: NMEA logs written here, played to the real gpsd by gpsfake (Debian
`gpsd`, `gpsd-clients`), for the location tests, the benchmark and the demo.

`track_log(path, epochs)` writes one receiver cycle per second (a fix, or None for none);
`GpsFake(log, port).start()` runs gpsfake and its gpsd on `port` in a process group of their own,
which `stop()` ends whatever happened (gpsd's control socket in a private TMPDIR); `await
fake.listening()` waits until its gpsd takes connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from jikimi_host.wait import until

GPSFAKE_MISSING = (
    "gpsd and gpsfake are needed for the gpsd location tests: apt-get install gpsd gpsd-clients "
    "(gpsfake is in gpsd-clients; .ci/run installs both)"
)
CYCLE_S = 0.05  # gpsfake's pause before each sentence: 3 sentences, 0.15 s per epoch


def gpsfake_missing() -> bool:
    return shutil.which("gpsfake") is None or not (shutil.which("gpsd") or Path("/usr/sbin/gpsd").exists())


def nmea(body: str) -> str:
    """`$<body>*<checksum>` + CRLF; the checksum is the XOR of the body's bytes."""
    return f"${body}*{functools.reduce(lambda acc, ch: acc ^ ord(ch), body, 0):02X}\r\n"


def _ddmm(value: float, degree_digits: int, signs: str) -> tuple[str, str]:
    ten_thousandths = round(abs(value) * 600_000)  # of a minute: NMEA's ddmm.mmmm
    degrees, rest = divmod(ten_thousandths, 600_000)
    return f"{degrees:0{degree_digits}d}{rest // 10_000:02d}.{rest % 10_000:04d}", signs[value < 0]


def fix_epoch(at: float, lat: float, lon: float, hdop: float = 1.2) -> list[str]:
    """One receiver cycle with a 3D fix at Unix time `at`: GGA (position, HDOP), GSA (3D, DOPs),
    RMC (position, date)."""
    utc = time.gmtime(at)
    clock, date = time.strftime("%H%M%S", utc) + ".00", time.strftime("%d%m%y", utc)
    (la, ns), (lo, ew) = _ddmm(lat, 2, "NS"), _ddmm(lon, 3, "EW")
    return [
        nmea(f"GPGGA,{clock},{la},{ns},{lo},{ew},1,08,{hdop:.1f},38.0,M,20.0,M,,"),
        nmea(f"GPGSA,A,3,01,02,03,04,05,06,07,08,,,,,{hdop * 1.6:.1f},{hdop:.1f},{hdop * 1.3:.1f}"),
        nmea(f"GPRMC,{clock},A,{la},{ns},{lo},{ew},0.0,0.0,{date},,,A"),
    ]


def no_fix_epoch(at: float) -> list[str]:
    """A receiver cycle without a fix (searching): GGA quality 0, GSA mode 1, RMC status V."""
    utc = time.gmtime(at)
    clock, date = time.strftime("%H%M%S", utc) + ".00", time.strftime("%d%m%y", utc)
    return [
        nmea(f"GPGGA,{clock},,,,,0,00,99.9,,M,,M,,"),
        nmea("GPGSA,A,1,,,,,,,,,,,,,99.9,99.9,99.9"),
        nmea(f"GPRMC,{clock},V,,,,,,,{date},,,N"),
    ]


def track_log(path: Path, epochs: Sequence[tuple[float, float] | None], start: float | None = None) -> list[float]:
    """Write a gpsfake log, one epoch per second of NMEA time from `start` (default now): a
    (lat, lon) fix, or None for no fix. Returns each epoch's Unix time."""
    start = float(int(time.time() if start is None else start))
    times, lines = [], []
    for i, where in enumerate(epochs):
        at = start + i
        times.append(at)
        lines += no_fix_epoch(at) if where is None else fix_epoch(at, *where)
    path.write_text("".join(lines), encoding="ascii")
    return times


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class GpsFake:
    """gpsfake with its own gpsd on `port`, playing `log` over and over (`-c` between sentences;
    `-W 0`: no test timeout of its own). In its own process group, so that `stop()` ends it and
    its gpsd together, even when the test failed. `lines` (with `linedump`) is gpsfake's dump of
    each sentence just before it writes it to gpsd's pty: the benchmark's clock."""

    def __init__(self, log: Path, port: int, *, cycle_s: float = CYCLE_S, linedump: bool = False) -> None:
        self.log = log
        self.port = port
        self.cycle_s = cycle_s
        self.linedump = linedump
        self.process: subprocess.Popen[bytes] | None = None
        self.times: list[float] = []
        self.tmpdir = ""  # the log's epochs (Unix s), for the test to compare
        self.stderr_path = log.with_suffix(f".{port}.stderr")

    def start(self) -> GpsFake:
        command = ["gpsfake", "-q", "-c", str(self.cycle_s), "-W", "0", "-P", str(self.port)]
        if self.linedump:
            command.append("-l")
        # gpsd's control socket goes to $TMPDIR; gpsd, no longer root when it exits, cannot remove
        # it from /tmp: a folder of our own, removed in stop() (short: a socket path has 108 bytes).
        self.tmpdir = tempfile.mkdtemp(prefix="gpsfake-")
        with open(self.stderr_path, "ab") as stderr:
            self.process = subprocess.Popen(
                [*command, str(self.log)], stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE if self.linedump else subprocess.DEVNULL, stderr=stderr,
                start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1", "TMPDIR": self.tmpdir},
            )
        return self

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        # gpsfake's own SIGTERM handler kills its gpsd; the group signal makes sure of it.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # a gpsd left behind in the group
        if process.stdout is not None:
            process.stdout.close()
        shutil.rmtree(self.tmpdir, ignore_errors=True)

    async def listening(self, timeout_s: float = 60.0) -> GpsFake:
        """Until its gpsd takes connections on `port`. gpsfake starts gpsd first, which on a
        loaded host takes seconds: a client started after this connects at its first try, not
        after a reconnect back-off that can outlast the caller's wait for a fix."""

        async def takes_connections() -> bool:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                return False
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return True

        def exited() -> str | None:
            code = self.process.poll() if self.process is not None else "not started"
            return None if code is None else f"gpsfake exited ({code})"

        await until(takes_connections, timeout_s, f"gpsfake's gpsd on port {self.port}", log=self.stderr,
                    hopeless=exited, poll_s=0.1)
        return self

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")[-2000:] if self.stderr_path.exists() else ""

    def __enter__(self) -> GpsFake:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
