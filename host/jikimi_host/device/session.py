"""A raw-REPL session with a board over its serial port, with mpremote's transport (a device
path, `rfc2217://host:port`, or the virtual board's pty).

One connection per command: enter the raw REPL *without* a soft reset (mpremote's `resume`),
hash what the device holds, copy only what differs (each file written as `NAME.new`, then
renamed, so a cut cable never leaves half a module), hash again to verify, then reset.

Why resume, on every board: the virtual board is the Unix port, where a soft reset (Ctrl-D in
the raw REPL) ends the process; and on an ESP32 a soft reset does not stop the app's hardware
watchdog either, so it buys nothing. Ctrl-C stops the running app in both cases. The app's
watchdog (machine.WDT, cannot be stopped) keeps running after that, so while we hold the REPL
of a board whose app was running we feed it ourselves (`WATCHDOG_MS` below, the app's timeout).
"""

from __future__ import annotations

import contextlib
import io
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from jikimi_host.errors import JikimiError, UsageError

# firmware/jikimi/app.py WATCHDOG_MS (a test checks they agree)
WATCHDOG_MS = 8000
FEED_EVERY_S = 2.0  # well inside WATCHDOG_MS, even on a slow UART
DEFAULT_TIMEOUT_S = 10.0


def no_repl_message(port: str) -> str:
    return (f"no MicroPython REPL on {port}; flash MicroPython first with --micropython-bin "
            f"(a board running the Jikimi app may be in deep sleep: press its reset button and "
            f"run this again within power.idle_sleep_s, 10 s by default)")


def check_port(port: str | None) -> str:
    """The port, if it can exist: a URL (rfc2217://, socket://) or a device path that exists."""
    if not port:
        raise UsageError("no port given: pass --port, e.g. --port /dev/ttyUSB0")
    if "://" not in port and not Path(port).exists():
        raise UsageError(f"no such port: {port} (is the board plugged in?{_ports_hint()})")
    return port


def _ports_hint() -> str:
    try:
        from serial.tools import list_ports

        found = sorted(p.device for p in list_ports.comports())
    except Exception:  # listing is a hint only; never hide the real error behind it
        return ""
    return f" serial ports here: {', '.join(found)}" if found else " no serial ports found here"


# Everything below that ends up in a string runs on the device: the MicroPython subset, short
# names (it travels over the UART), no f-strings.
_PROBE = """import sys
_m=sys.modules
_app='jikimi.app' in _m
_had='board' in _m
try:
 import board
 _n=board.NAME
except ImportError:
 _n=None
except Exception as e:
 _n='?'+repr(e)
if not _had and 'board' in _m:
 del _m['board']
print(repr((sys.platform,_app,_n)))
"""

_HASHER = """import hashlib,binascii
def _h(p):
 try:
  f=open(p,'rb')
 except OSError:
  return '-'
 h=hashlib.sha256();b=bytearray(512);v=memoryview(b)
 while 1:
  n=f.readinto(b)
  if not n:
   break
  h.update(v[:n])
 f.close()
 return binascii.hexlify(h.digest()).decode()
"""

_LISTDIR = """import os
try:
 print(repr(os.listdir(%r)))
except OSError:
 print('None')
"""

_FEED = """import machine
try:
 machine.WDT(timeout=%d).feed()
except Exception:
 pass
"""


@dataclass(frozen=True)
class DeviceInfo:
    platform: str  # "esp32", or "linux" for the virtual board
    app_was_running: bool  # Ctrl-C stopped the firmware app (its watchdog still runs)
    board: str | None  # board.NAME of the board.py already there, if any


class DeviceSession:
    """One raw-REPL session with a MicroPython board over a serial port."""

    def __init__(self, port: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        from mpremote.transport import TransportError
        from mpremote.transport_serial import SerialTransport

        self.port = port
        self._last_feed = 0.0
        self._feed_watchdog = False
        try:
            with _quiet():
                self.transport = SerialTransport(port, baudrate=115200)
        except (TransportError, OSError, ValueError) as err:
            raise JikimiError(f"cannot open {port}: {err} (is another program using it, e.g. "
                              f"`jikimi monitor`? on Linux, are you in the dialout group?)") from err
        try:
            with _quiet():  # mpremote prints what it read when it cannot enter the raw REPL
                self.transport.enter_raw_repl(soft_reset=False, timeout_overall=timeout_s)
            self.info = self._probe()
        except (TransportError, OSError, ValueError, SyntaxError) as err:
            self._close_port()
            raise JikimiError(no_repl_message(port)) from err
        if self.info.app_was_running:
            self._feed_watchdog = True
            self.keep_alive(force=True)

    # Every transport call goes through here so that errors say what was being done.
    def exec(self, code: str, doing: str) -> str:
        from mpremote.transport import TransportError

        try:
            return self.transport.exec(code).decode(errors="replace")
        except TransportError as err:
            raise JikimiError(f"{self.port}: {doing} failed: {_last_line(err)}") from err

    def _probe(self) -> DeviceInfo:
        import ast

        text = self.transport.exec(_PROBE).decode(errors="replace").strip().splitlines()[-1]
        platform, app_running, board = ast.literal_eval(text)
        return DeviceInfo(str(platform), bool(app_running), board)

    def keep_alive(self, force: bool = False) -> None:
        """Feed the stopped app's watchdog, at most every FEED_EVERY_S."""
        if self._feed_watchdog and (force or time.monotonic() - self._last_feed > FEED_EVERY_S):
            self.exec(_FEED % WATCHDOG_MS, "feeding the watchdog")
            self._last_feed = time.monotonic()

    def hashes(self, paths: list[str]) -> dict[str, str | None]:
        """sha256 (hex) of each file on the device; None where there is no such file."""
        self.keep_alive()
        code = _HASHER + "for _p in %r:\n print(_p,_h(_p))\n" % (paths,)
        found: dict[str, str | None] = {}
        for line in self.exec(code, "hashing the device's files").splitlines():
            name, _, digest = line.strip().partition(" ")
            if name in paths:
                found[name] = None if digest == "-" else digest
        missing = [p for p in paths if p not in found]
        if missing:
            raise JikimiError(f"{self.port}: the device did not report a hash for {', '.join(missing)}")
        return found

    def listdir(self, path: str) -> list[str] | None:
        import ast

        self.keep_alive()
        return ast.literal_eval(self.exec(_LISTDIR % path, f"listing {path}").strip())

    def makedirs(self, directory: str) -> None:
        parts = [p for p in directory.split("/") if p]
        for i in range(1, len(parts) + 1):
            self.exec("import os\ntry:\n os.mkdir(%r)\nexcept OSError:\n pass\n" % "/".join(parts[:i]),
                      f"creating {directory}")

    def write_atomically(self, path: str, data: bytes,
                         progress: Callable[[int], None] | None = None) -> None:
        """Write `path.new`, then rename it over `path`: the old file or the new one, never half."""
        from mpremote.transport import TransportError

        if "/" in path:
            self.makedirs(path.rsplit("/", 1)[0])
        temporary = path + ".new"

        def on_chunk(written: int, total: int) -> None:
            self.keep_alive()
            if progress is not None:
                progress(written)

        self.keep_alive()
        try:
            self.transport.fs_writefile(temporary, data, chunk_size=512, progress_callback=on_chunk)
        except (TransportError, OSError) as err:
            raise JikimiError(f"{self.port}: writing {path} failed: {_last_line(err)}") from err
        if not data and progress is not None:
            progress(0)
        self.exec("import os\nos.rename(%r,%r)\n" % (temporary, path), f"renaming {temporary} to {path}")

    def remove(self, path: str) -> None:
        self.exec("import os\nos.remove(%r)\n" % path, f"removing {path}")

    def reset(self) -> None:
        """Hard-reset the board (machine.reset(), as `mpremote reset` does); the session ends."""
        from mpremote.transport import TransportError

        try:
            self.transport.exec_raw_no_follow("import time,machine\ntime.sleep_ms(100)\nmachine.reset()\n")
        except TransportError as err:
            raise JikimiError(f"{self.port}: resetting the board failed: {err}") from err
        self._close_port()

    def close(self) -> None:
        """Leave the raw REPL (the board stays at its REPL) and release the port."""
        if getattr(self, "transport", None) is None:
            return
        with contextlib.suppress(Exception):
            self.transport.exit_raw_repl()
        self._close_port()

    def _close_port(self) -> None:
        transport, self.transport = getattr(self, "transport", None), None
        if transport is not None:
            with contextlib.suppress(Exception):
                transport.close()

    def __enter__(self) -> "DeviceSession":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def _last_line(err: Exception) -> str:
    lines = [line for line in str(err).strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(err).__name__


def check_board_matches(session: DeviceSession, board: str, force: bool) -> None:
    found = session.info.board
    if found is not None and found != board and not force:
        raise UsageError(
            f"{session.port} holds board {found!r}, not {board!r}: pass --board {found}, "
            f"or --force to replace it")



def wait_for_repl(port: str, timeout_s: float) -> DeviceSession:
    """A session, retrying while a board that was just written boots (its first boot makes
    the filesystem, which takes a few seconds)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return DeviceSession(port, timeout_s=min(5.0, max(1.0, deadline - time.monotonic())))
        except JikimiError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.5)
