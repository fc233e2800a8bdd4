"""A fake cellular modem on a pty, for tests: it speaks AT the way a real one does.

The modem side of a pseudo-terminal (raw mode) answers the subset `modem.py` uses, with real
framing: responses wrapped in `\\r\\n`, command echo on until `ATE0`, the `\\r\\n> ` prompt after
`AT+CMGS=<n>`, Ctrl-Z (0x1A) to send and ESC (0x1B) to abort. Supported commands:

    AT  ATE0/ATE1  ATZ  ATI  AT+CGMI  AT+CMEE=<0|1|2>  AT+CMEE?  AT+CPIN?  AT+CMGF=<0|1>
    AT+CMGF?  AT+CSQ  AT+CREG?  AT+CEREG?  AT+CMGS=<n>  ATD<number>;  ATH
    GNSS, SIMCom: AT+CGPS?  AT+CGPS=<0|1>  AT+CGPSINFO
    GNSS, Quectel: AT+QGPS?  AT+QGPS=1  AT+QGPSEND  AT+QGPSLOC=2

`AT+CREG?`/`AT+CEREG?` answer `+CREG: 0,<stat>`/`+CEREG: 0,<stat>` (TS 27.007: 1 home, 5 roaming,
0 not searching, 2 searching, 3 denied); while not registered a submit answers
`+CMS ERROR: 331` (no network service) and `ATD` `NO CARRIER`, as on a real network.

Anything else beginning with AT answers `ERROR`. A PDU whose length differs from `<n>` or that
does not decode as an SMS-SUBMIT answers `+CMS ERROR: 304`. With `AT+CMEE=0` errors are a bare
`ERROR`, as on real modems.

Every PDU is decoded with `pdu.py`; concatenated messages are reassembled and each *complete*
SMS becomes one JSON line in the log file, as does each call (flushed and fsynced per line, so
another process can read what "the network" received):

    {"kind": "sms", "to": "+8210...", "text": "...", "segments": 2, "refs": [4, 5], "encoding": "ucs2"}
    {"kind": "call", "to": "112", "duration_s": 1.02, "result": "hangup"}

GNSS. The fake has a receiver that follows a scripted track (`gnss_track=[GnssPoint(...)]`, or
`--gnss-track`): each point holds from `at_s` seconds after start until the next one, either a
fix (lat, lon, HDOP) or no fix (lat None). Like a real modem's, it is off after power-up (and
after each replug or reboot) until `AT+CGPS=1` / `AT+QGPS=1` (which answer `ERROR` / `+CME
ERROR: 504` when it is on already). Answers, with the time of the query as the fix's UTC:

    AT+CGPSINFO    +CGPSINFO: 3733.990000,N,12658.680000,E,091125,050327.0,38.0,0.0,0
                   +CGPSINFO: ,,,,,,,,                      (no fix, or off)
    AT+QGPSLOC=2   +QGPSLOC: 050327.000,37.56650,126.97800,0.9,38.0,3,0.00,0.0,0.0,091125,08
                   +CME ERROR: 516 (no fix)   +CME ERROR: 505 (off)

`set_gnss_fix(lat, lon)` / `set_gnss_fix(None)` change the fix from now on, for in-process tests.

Faults (`Faults`, or the command-line flags) make it misbehave on purpose, as real modems do:

    --fail-sms CODE:N      the next N submits answer +CMS ERROR: CODE
    --lost-replies N       send the next N submits but never answer them (an in-doubt send)
    --silent N             ignore the next N command lines: no echo, no reply
    --dial-result R        ATD answers BUSY / NO CARRIER / NO ANSWER: the call never rings
    --remote-hangup S      the far side ends each call after S s (NO CARRIER)
    --no-sim               AT+CPIN? answers +CME ERROR: 10 (SIM not inserted)
    --urc-noise            RING and +CMTI: around every reply
    --error-first-at N     the first N plain `AT` lines answer ERROR (junk in the modem's input
                           buffer garbles the line it ends up in)
    --no-echo-on-start     start with echo off (a profile saved with ATE0); by default echo is on
                           until ATE0, as after power-up
    --junk-on-open TEXT    TEXT (backslash escapes: '\\r\\nOK\\r\\n\\xff') goes out the moment a client
                           first writes after power-up: the tail of a reply to a client that died,
                           still on the line (bytes queued before the open are flushed by the open)
    --stale-prompt         start inside the `> ` prompt with an old message's whole PDU typed but
                           no Ctrl-Z: the last client died mid AT+CMGS (ESC drops it, unsent)
    --boot S               deaf and mute for S s after power-up, then `RDY` (a booting modem)
    --sim-busy N           the first N AT+CPIN? answer +CME ERROR: 14 (SIM busy, still reading it)
    --sim-not-ready N      the next N AT+CPIN? answer +CPIN: NOT READY
    --sim-pin              AT+CPIN? answers +CPIN: SIM PIN (the SIM's PIN lock is on): no SMS
    --unregistered N       the first N AT+CREG?/AT+CEREG? answer stat 2 (searching), then 1
    --registration-denied  AT+CREG?/AT+CEREG? answer stat 3 (denied), for good
    --roaming              registered as roaming (stat 5) instead of home (1)
    --lte-only             registered on LTE only: AT+CREG? says 0, AT+CEREG? says 1
    --no-cereg             no LTE: AT+CEREG? answers ERROR (AT+CREG? says registered)
    --replug T:S           T s after start the port vanishes (pty closed, `--link` removed, as a
                           USB modem re-enumerating) and S s later comes back as a new pty at the
                           same link, the modem rebooted; repeatable

In-process the same faults are `Faults` fields (counters are consumed as they happen) plus
`replug(after_s)` and `reboot()`; `wait_ready()` waits until the port is back and booted.

In-process: `with FakeModem(log_path) as fake: Modem(fake.path)...` (a thread serves the pty).
As a process: `python -m jikimi_host.relay.fake_modem --link /tmp/x/modem --log /tmp/x/net.jsonl
[--fail-sms 500:2] [--gnss-track "0=none 5=37.5665,126.978 60=37.567,126.979,1.2 90=none"] ...`
prints the pty path (again after each `--replug`) and runs until SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import select
import signal
import sys
import threading
import time
import tty
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .pdu import PduError, decode_submit, encode_submit, tpdu_length

DIAL_RESULTS = ("OK", "BUSY", "NO CARRIER", "NO ANSWER")
_MAX_PDU_HEX = 2 * 200  # longer than any SMS-SUBMIT: the client lost its way
# What a client that died mid AT+CMGS left in the prompt (`stale_prompt`): never to be sent.
STALE_NUMBER = "+821000000000"
STALE_TEXT = "stale: typed by a client that died before Ctrl-Z"
NO_CGPSINFO = "+CGPSINFO: ,,,,,,,,"


@dataclass(frozen=True)
class GnssPoint:
    """From `at_s` seconds after the fake started until the next point: a fix at lat/lon with
    this HDOP, or no fix (lat and lon None)."""

    at_s: float
    lat: float | None = None
    lon: float | None = None
    hdop: float = 0.9
    alt_m: float = 38.0


@dataclass
class Faults:
    """Scripted misbehaviour. Counters are consumed as the faults happen."""

    fail_sms: list[int] = field(default_factory=list)  # CMS codes for the next submits, in order
    lost_replies: int = 0  # send this many submits but never answer them (an in-doubt send)
    silent_commands: int = 0  # ignore this many command lines: no echo, no reply
    dial_result: str = "OK"  # what ATD answers; not OK means the call never rang
    remote_hangup_after_s: float | None = None  # the far side ends the call (NO CARRIER)
    no_sim: bool = False  # AT+CPIN? answers +CME ERROR: 10
    urc_noise: bool = False  # RING / +CMTI: around every reply
    # A session that does not start at once: what a client's wake-up and init must get through.
    error_first_at: int = 0  # answer ERROR to this many plain `AT` lines (junk in the input buffer)
    echo_on_start: bool = True  # echo on until ATE0, as after power-up (False: a saved ATE0 profile)
    junk_on_open: bytes = b""  # sent when a client first writes after power-up: an old reply's tail
    stale_prompt: bool = False  # start in the `> ` prompt, a whole old PDU typed, no Ctrl-Z yet
    boot_s: float = 0.0  # after power-up (and each replug/reboot) hear nothing this long, then RDY
    sim_busy: int = 0  # answer this many AT+CPIN? with +CME ERROR: 14 (SIM busy)
    sim_not_ready: int = 0  # then this many with +CPIN: NOT READY
    sim_pin: bool = False  # +CPIN: SIM PIN: the SIM's PIN lock is on
    unregistered: int = 0  # answer this many AT+CREG?/AT+CEREG? with stat 2 (searching)
    registration_denied: bool = False  # stat 3, for good
    roaming: bool = False  # registered as roaming (5), not home (1)
    lte_only: bool = False  # AT+CREG? stat 0; registered on AT+CEREG? only
    no_cereg: bool = False  # AT+CEREG? answers ERROR: a modem without LTE


class FakeModem:
    """A pty that behaves like a modem. `start()` returns the path a client opens."""

    def __init__(self, log_path: str | os.PathLike[str], faults: Faults | None = None, *,
                 link: str | os.PathLike[str] | None = None, gnss_track: Sequence[GnssPoint] = ()) -> None:
        self.log_path = Path(log_path)
        self.gnss_track = sorted(gnss_track, key=lambda point: point.at_s)
        self.faults = faults or Faults()
        self.link = Path(link) if link is not None else None
        self.path: str | None = None  # the pty now; None while unplugged (see replug)
        self.events: list[dict[str, Any]] = []  # what the log holds, for in-process tests
        self.commands: list[str] = []  # every command line received, in order
        self.plug_ins = 0  # times the port appeared: 1 after start, +1 per replug
        self._changed = threading.Condition()
        self._write_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._master: int | None = None
        self._slave: int | None = None
        self._replug_after_s: float | None = None  # asked for by replug(), done by the serving thread
        self._plug_in_at: float | None = None  # while unplugged: when the port comes back
        # modem state, touched only by the serving thread (and by callers under _changed)
        self._echo = True
        self._cmee = 0
        self._cmgf = 0
        self._line = bytearray()
        self._pdu_length: int | None = None  # set while in the `> ` prompt
        self._next_mr = 0
        self._partial: dict[tuple[str, int, int], dict[int, tuple[str, int]]] = {}
        self._call: tuple[str, float] | None = None  # (number, started)
        self._remote_hangup_at: float | None = None
        self._booted_at = 0.0  # monotonic; input before it is not heard
        self._announce_boot = False  # send RDY when the boot is over
        self._junk_pending = b""
        self._gnss_on = False
        self._started_at = time.monotonic()  # the GNSS track's time origin

    # --- lifecycle -----------------------------------------------------------------------------

    def start(self) -> str:
        if self._thread is not None:
            raise RuntimeError("fake modem already started")
        self._wake_r, self._wake_w = os.pipe()
        self._started_at = time.monotonic()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "a", encoding="utf-8")
        self._plug_in(announce=self.faults.boot_s > 0)  # an RDY before any client opens is lost anyway
        if self.faults.stale_prompt:
            (stale,) = encode_submit(STALE_NUMBER, STALE_TEXT)
            self._pdu_length, self._line = tpdu_length(stale), bytearray(stale.hex().upper().encode())
        self._thread = threading.Thread(target=self._serve, name="fake-modem", daemon=True)
        self._thread.start()
        assert self.path is not None
        return self.path

    def stop(self) -> None:
        if self._thread is None:
            return
        self._stopping.set()
        os.write(self._wake_w, b"x")
        self._thread.join(timeout=5)
        if self._thread.is_alive():
            raise RuntimeError("fake modem thread did not stop")
        self._thread = None
        self._close_pty()
        os.close(self._wake_r)
        os.close(self._wake_w)
        self._log.close()
        if self.link is not None and self.link.is_symlink():
            self.link.unlink()

    def _plug_in(self, *, announce: bool) -> None:
        """A new pty (at `link`, if any), the modem powered up: echo as configured, CMEE and CMGF
        back to 0, booting for `boot_s`, any junk ready to go."""
        master, slave = os.openpty()
        tty.setraw(slave)  # no line discipline: bytes pass as they are, like a UART
        # We keep the slave open so the master never sees EIO between client sessions.
        with self._write_lock:
            self._master, self._slave = master, slave
        path = os.ttyname(slave)
        if self.link is not None:
            staged = self.link.with_name(self.link.name + ".new")
            if staged.is_symlink():
                staged.unlink()
            staged.symlink_to(path)
            os.replace(staged, self.link)  # a client never sees the link half made
        with self._changed:
            self._power_up(announce=announce)
            self._plug_in_at = None
            self.path = path
            self.plug_ins += 1
            self._changed.notify_all()

    def _power_up(self, *, announce: bool) -> None:
        """The modem's state after power-up (with _changed held): a call dropped, echo as
        configured, CMEE and CMGF 0, out of any prompt, deaf for `boot_s`, junk ready to go."""
        self._end_call("modem reset")
        self._echo, self._cmee, self._cmgf = self.faults.echo_on_start, 0, 0
        self._line, self._pdu_length = bytearray(), None
        self._booted_at = time.monotonic() + self.faults.boot_s
        self._announce_boot = announce
        self._junk_pending = self.faults.junk_on_open
        self._gnss_on = False  # a modem's GNSS is off after power-up until AT+CGPS=1 / AT+QGPS=1

    def _unplug(self, down_s: float) -> None:
        self._close_pty()  # a client's open port now fails with EIO, as on a USB unplug
        if self.link is not None and self.link.is_symlink():
            self.link.unlink()  # the device node and its by-id link are gone
        with self._changed:
            self._end_call("modem reset")
            self.path = None
            self._replug_after_s = None
            self._plug_in_at = time.monotonic() + down_s
            self._changed.notify_all()

    def _close_pty(self) -> None:
        with self._write_lock:
            fds, self._master, self._slave = (self._master, self._slave), None, None
        for fd in fds:
            if fd is not None:
                os.close(fd)

    def __enter__(self) -> FakeModem:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- test controls -------------------------------------------------------------------------

    def go_silent(self, commands: int) -> None:
        with self._changed:
            self.faults.silent_commands = commands

    def set_gnss_fix(self, lat: float | None, lon: float | None = None, hdop: float = 0.9) -> None:
        """From now on the receiver has a fix at lat/lon (or none, with lat None)."""
        with self._changed:
            now_s = time.monotonic() - self._started_at
            self.gnss_track = [p for p in self.gnss_track if p.at_s <= now_s] + [GnssPoint(now_s, lat, lon, hdop)]

    def inject_urc(self, line: str) -> None:
        """Send an unsolicited result code now."""
        self._write(f"\r\n{line}\r\n".encode())

    def replug(self, after_s: float) -> None:
        """The port vanishes now, as when a USB modem re-enumerates (its tty and the `link` to it
        are gone; a client's open port fails with EIO), and comes back `after_s` later as a new pty
        at the same `link`, the modem rebooted (echo on, `boot_s` again, a call dropped). Returns
        once the port is gone."""
        if self.link is None:
            raise RuntimeError("replug needs link=: a client can only find the new pty by that path")
        if self._thread is None:
            raise RuntimeError("fake modem not started")
        with self._changed:
            self._replug_after_s = after_s
            os.write(self._wake_w, b"x")
            if not self._changed.wait_for(lambda: self._replug_after_s is None, timeout=5):
                raise RuntimeError("fake modem did not unplug")

    def reboot(self, *, announce: bool = True) -> None:
        """The modem restarts without leaving the bus (a brown-out, its watchdog): echo on, CMEE
        and CMGF back to 0, `boot_s` deaf, then RDY (unless `announce` is False: some modems, or
        a lost line, say nothing), any call dropped. The pty stays."""
        with self._changed:
            self._power_up(announce=announce)
        os.write(self._wake_w, b"x")  # the serving thread sends RDY when the boot is over

    def wait_ready(self, timeout_s: float = 10.0) -> str:
        """Wait until the port is there and the modem booted; return its path. A RDY is written by
        then, but may not be readable on the port yet (a pty passes bytes on through a kernel worker)."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while True:
                now = time.monotonic()
                if self.path is not None and now >= self._booted_at and not self._announce_boot:
                    return self.path
                if now >= deadline:
                    raise TimeoutError(f"fake modem not back and booted within {timeout_s}s")
                # a boot without RDY ends silently: look again when it should be over
                until = self._booted_at if self.path is not None and self._booted_at > now else deadline
                self._changed.wait(max(0.001, min(until, deadline) - now))

    def wait_for_command(self, command: str, timeout_s: float = 10.0) -> None:
        """Wait until the command line `command` was received (even if it went unanswered)."""
        with self._changed:
            if not self._changed.wait_for(lambda: command in self.commands, timeout=timeout_s):
                raise TimeoutError(f"fake modem did not receive {command!r} within {timeout_s}s")

    def wait_for_events(self, count: int, timeout_s: float = 5.0, kind: str | None = None) -> list[dict[str, Any]]:
        """Wait until `count` events (of `kind`) were logged; return them. TimeoutError if not."""
        def matching() -> list[dict[str, Any]]:
            return [e for e in self.events if kind is None or e["kind"] == kind]

        with self._changed:
            if not self._changed.wait_for(lambda: len(matching()) >= count, timeout=timeout_s):
                raise TimeoutError(f"fake modem logged {matching()} within {timeout_s}s, wanted {count}")
            return matching()

    # --- serving -------------------------------------------------------------------------------

    def _serve(self) -> None:
        while not self._stopping.is_set():
            if self._replug_after_s is not None:
                self._unplug(self._replug_after_s)
            now = time.monotonic()
            if self._master is None:  # unplugged: only the way back in, or stop
                assert self._plug_in_at is not None
                if now >= self._plug_in_at:
                    self._plug_in(announce=True)
                else:
                    self._wait_for([self._wake_r], self._plug_in_at - now)
                continue
            timers = [t for t in (self._remote_hangup_at, self._booted_at if self._announce_boot else None)
                      if t is not None]
            timeout = max(0.0, min([0.5, *(t - now for t in timers)]))
            readable = self._wait_for([self._master, self._wake_r], timeout)
            if self._remote_hangup_at is not None and time.monotonic() >= self._remote_hangup_at:
                self._end_call("remote hangup")
                self._write(b"\r\nNO CARRIER\r\n")
            if self._announce_boot and time.monotonic() >= self._booted_at:
                # Before wait_ready() returns; the kernel hands it to the client a moment later.
                self._write(b"\r\nRDY\r\n")
                with self._changed:
                    self._announce_boot = False
                    self._changed.notify_all()
            if self._master in readable:
                try:
                    data = os.read(self._master, 4096)
                except OSError:  # no client on the slave side: nothing to read yet
                    self._stopping.wait(0.05)
                    continue
                with self._changed:
                    out = bytearray(self._junk_pending)
                    self._junk_pending = b""
                    if time.monotonic() >= self._booted_at:  # a booting modem hears nothing
                        for byte in data:
                            self._feed(byte, out)
                if out:
                    self._write(bytes(out))

    def _wait_for(self, fds: list[int], timeout_s: float) -> list[int]:
        readable, _, _ = select.select(fds, [], [], timeout_s)
        if self._wake_r in readable:
            os.read(self._wake_r, 64)  # woken: replug, reboot or stop; the loop looks at which
        return readable

    def _write(self, data: bytes) -> None:
        with self._write_lock:
            if self._master is None:
                return  # unplugged: nobody is listening
            view = memoryview(data)
            while view:
                written = os.write(self._master, view)
                view = view[written:]

    def _feed(self, byte: int, out: bytearray) -> None:
        if self._pdu_length is not None:
            self._feed_pdu(byte, out)
        elif byte == 0x0D:
            line, self._line = self._line.decode("ascii", "replace").strip(), bytearray()
            if line:
                self._on_line(line, out)
        elif byte == 0x08:  # backspace, as typed in a terminal
            del self._line[-1:]
        elif byte not in (0x0A, 0x1B, 0x1A):
            self._line.append(byte)

    def _feed_pdu(self, byte: int, out: bytearray) -> None:
        if byte == 0x1B:  # ESC: abort the message
            self._pdu_length, self._line = None, bytearray()
            self._reply(out, [], "OK")
        elif byte == 0x1A:  # Ctrl-Z: submit
            hex_text, self._line = self._line.decode("ascii", "replace").strip(), bytearray()
            length, self._pdu_length = self._pdu_length, None
            if self._echo:
                out += hex_text.encode() + b"\x1a"
            self._submit(hex_text, length, out)
        elif byte not in (0x0D, 0x0A):
            self._line.append(byte)
            if len(self._line) > _MAX_PDU_HEX:
                self._pdu_length, self._line = None, bytearray()
                self._reply(out, [], self._error("CMS", 304))

    def _on_line(self, line: str, out: bytearray) -> None:
        if not line.upper().startswith("AT"):
            return  # modems ignore line noise that is not a command
        self.commands.append(line)
        self._changed.notify_all()  # (we hold it: _feed runs under _changed) for wait_for_command
        if self.faults.silent_commands > 0:
            self.faults.silent_commands -= 1
            return
        if self._echo:
            out += line.encode() + b"\r"
        command = line.upper().replace(" ", "")
        info, final = self._execute(command, out)
        if final is not None:
            self._reply(out, info, final)

    def _execute(self, command: str, out: bytearray) -> tuple[list[str], str | None]:
        """Run one command; return (information lines, final result code or None)."""
        if command == "AT":
            if self.faults.error_first_at > 0:  # junk before it in the input buffer: a garbled line
                self.faults.error_first_at -= 1
                return [], "ERROR"
            return [], "OK"
        if command in ("ATE0", "ATE1", "ATE"):
            self._echo = command == "ATE1"
            return [], "OK"
        if command == "ATZ":
            self._echo, self._cmee, self._cmgf = True, 0, 0
            return [], "OK"
        if command in ("ATI", "AT+CGMI", "AT+GMI"):
            return ["Jikimi FakeModem", "Revision: 1.0"] if command == "ATI" else ["Jikimi"], "OK"
        if match := re.fullmatch(r"AT\+CMEE=([012])", command):
            self._cmee = int(match.group(1))
            return [], "OK"
        if command == "AT+CMEE?":
            return [f"+CMEE: {self._cmee}"], "OK"
        if command == "AT+CPIN?":
            return self._sim_state()
        if match := re.fullmatch(r"AT\+CMGF=([01])", command):
            self._cmgf = int(match.group(1))
            return [], "OK"
        if command == "AT+CMGF?":
            return [f"+CMGF: {self._cmgf}"], "OK"
        if command == "AT+CSQ":
            return ["+CSQ: 20,99"], "OK"
        if command in ("AT+CREG?", "AT+CEREG?"):
            return self._registration(lte=command == "AT+CEREG?")
        if match := re.fullmatch(r"AT\+CMGS=(\d{1,3})", command):
            return self._start_pdu(int(match.group(1)), out)
        if command.startswith("ATD"):
            return self._dial(command[3:])
        if command in ("ATH", "ATH0"):
            self._end_call("hangup")
            return [], "OK"
        if command.startswith(("AT+CGPS", "AT+QGPS")):
            return self._gnss(command)
        return [], "ERROR"

    # --- GNSS ----------------------------------------------------------------------------------

    def _gnss(self, command: str) -> tuple[list[str], str]:
        if command == "AT+CGPS?":
            return [f"+CGPS: {int(self._gnss_on)},1"], "OK"
        if command in ("AT+CGPS=1", "AT+CGPS=0"):
            on = command.endswith("1")
            if on and self._gnss_on:
                return [], "ERROR"  # SIMCom: already running
            self._gnss_on = on
            return [], "OK"
        if command == "AT+CGPSINFO":
            point = self._gnss_point()
            return [NO_CGPSINFO if point is None else cgpsinfo_line(point, time.time())], "OK"
        if command == "AT+QGPS?":
            return [f"+QGPS: {int(self._gnss_on)}"], "OK"
        if command == "AT+QGPS=1":
            if self._gnss_on:
                return [], self._error("CME", 504)  # session is ongoing
            self._gnss_on = True
            return [], "OK"
        if command == "AT+QGPSEND":
            if not self._gnss_on:
                return [], self._error("CME", 505)  # session not active
            self._gnss_on = False
            return [], "OK"
        if command == "AT+QGPSLOC=2":
            if not self._gnss_on:
                return [], self._error("CME", 505)
            point = self._gnss_point()
            if point is None:
                return [], self._error("CME", 516)  # not fixed now
            return [qgpsloc_line(point, time.time())], "OK"
        return [], "ERROR"

    def _gnss_point(self) -> GnssPoint | None:
        """The track's point now, if the receiver is on and has a fix."""
        if not self._gnss_on:
            return None
        now_s = time.monotonic() - self._started_at
        current = None
        for point in self.gnss_track:
            if point.at_s > now_s:
                break
            current = point
        return current if current is not None and current.lat is not None and current.lon is not None else None

    def _sim_state(self) -> tuple[list[str], str]:
        if self.faults.no_sim:
            return [], self._error("CME", 10)
        if self.faults.sim_busy > 0:  # still reading the SIM
            self.faults.sim_busy -= 1
            return [], self._error("CME", 14)
        if self.faults.sim_not_ready > 0:
            self.faults.sim_not_ready -= 1
            return ["+CPIN: NOT READY"], "OK"
        return (["+CPIN: SIM PIN"] if self.faults.sim_pin else ["+CPIN: READY"]), "OK"

    def _registration(self, *, lte: bool) -> tuple[list[str], str]:
        """`+CREG: 0,<stat>` (circuit-switched) or `+CEREG: 0,<stat>` (LTE), n=0: no URCs asked for."""
        if lte and self.faults.no_cereg:
            return [], "ERROR"  # a modem without LTE does not know the command
        if self.faults.registration_denied:
            stat = 3
        elif self.faults.unregistered > 0:
            self.faults.unregistered -= 1
            stat = 2
        elif self.faults.lte_only and not lte:
            stat = 0
        else:
            stat = 5 if self.faults.roaming else 1
        return [f"+{'CEREG' if lte else 'CREG'}: 0,{stat}"], "OK"

    def _registered(self) -> bool:
        return not self.faults.registration_denied and self.faults.unregistered == 0

    def _error(self, kind: str, code: int) -> str:
        return "ERROR" if self._cmee == 0 else f"+{kind} ERROR: {code}"

    def _reply(self, out: bytearray, info: list[str], final: str) -> None:
        noise = self.faults.urc_noise
        if noise:
            out += b"\r\nRING\r\n"
        for line in info:
            out += f"\r\n{line}\r\n".encode()
        if noise:
            out += b'\r\n+CMTI: "SM",3\r\n'
        out += f"\r\n{final}\r\n".encode()

    # --- SMS -----------------------------------------------------------------------------------

    def _start_pdu(self, length: int, out: bytearray) -> tuple[list[str], str | None]:
        if self.faults.no_sim:
            return [], self._error("CMS", 310)
        if self.faults.sim_pin:
            return [], self._error("CMS", 311)  # SIM PIN required
        if self._cmgf != 0:
            return [], self._error("CMS", 302)  # this fake speaks PDU mode only
        if not 7 <= length <= 164:
            return [], self._error("CMS", 304)
        if self.faults.urc_noise:
            out += b"\r\nRING\r\n"
        out += b"\r\n> "
        self._pdu_length = length
        return [], None

    def _submit(self, hex_text: str, length: int | None, out: bytearray) -> None:
        try:
            pdu = bytes.fromhex(hex_text)
            if tpdu_length(pdu) != length:
                raise PduError(f"AT+CMGS={length} but the TPDU has {tpdu_length(pdu)} octets")
            submit = decode_submit(pdu)
        except (ValueError, PduError):  # PduError is a ValueError; so is bad hex
            self._reply(out, [], self._error("CMS", 304))
            return
        if not self._registered():
            self._reply(out, [], self._error("CMS", 331))  # no network service
            return
        if self.faults.fail_sms:
            self._reply(out, [], self._error("CMS", self.faults.fail_sms.pop(0)))
            return
        mr = self._next_mr
        self._next_mr = (self._next_mr + 1) % 256
        if self.faults.lost_replies > 0:
            self.faults.lost_replies -= 1  # the network got it; the reply is lost
        else:
            self._reply(out, [f"+CMGS: {mr}"], "OK")
        if submit.concat is None:
            self._log_event({"kind": "sms", "to": submit.number, "text": submit.text, "segments": 1,
                             "refs": [mr], "encoding": submit.encoding})
            return
        key = (submit.number, submit.concat.ref, submit.concat.total)
        parts = self._partial.setdefault(key, {})
        parts[submit.concat.index] = (submit.text, mr)
        if len(parts) == submit.concat.total:
            del self._partial[key]
            ordered = [parts[i] for i in range(1, submit.concat.total + 1)]
            self._log_event({"kind": "sms", "to": submit.number, "text": "".join(t for t, _ in ordered),
                             "segments": submit.concat.total, "refs": [m for _, m in ordered],
                             "encoding": submit.encoding})

    # --- calls ---------------------------------------------------------------------------------

    def _dial(self, dial_string: str) -> tuple[list[str], str]:
        if not dial_string.endswith(";"):
            return [], "NO CARRIER"  # a data call: this fake only does voice
        number = dial_string[:-1]
        if not re.fullmatch(r"\+?[0-9*#]+", number):
            return [], "ERROR"
        if self.faults.no_sim:
            return [], self._error("CME", 10)
        if self.faults.sim_pin:
            return [], self._error("CME", 11)  # SIM PIN required
        if not self._registered():
            return [], "NO CARRIER"  # no network to place it on
        if self._call is not None:
            return [], self._error("CME", 3)  # operation not allowed: already in a call
        result = self.faults.dial_result
        if result != "OK":
            self._log_event({"kind": "call", "to": number, "duration_s": 0.0, "result": result})
            return [], result
        self._call = (number, time.monotonic())
        if self.faults.remote_hangup_after_s is not None:
            self._remote_hangup_at = time.monotonic() + self.faults.remote_hangup_after_s
        return [], "OK"

    def _end_call(self, how: str) -> None:
        self._remote_hangup_at = None
        if self._call is None:
            return
        number, started = self._call
        self._call = None
        self._log_event({"kind": "call", "to": number,
                         "duration_s": round(time.monotonic() - started, 3), "result": how})

    def _log_event(self, event: dict[str, Any]) -> None:
        self._log.write(json.dumps(event, ensure_ascii=False) + "\n")
        self._log.flush()
        os.fsync(self._log.fileno())  # another process reads this file as "the network"
        with self._changed:
            self.events.append(event)
            self._changed.notify_all()


def _degrees_minutes(value: float, degree_digits: int) -> str:
    """37.5665 -> "3733.990000" (NMEA style: whole degrees, then minutes)."""
    micro_minutes = round(abs(value) * 60_000_000)  # in millionths of a minute: no 60.000000
    degrees, rest = divmod(micro_minutes, 60_000_000)
    return f"{degrees:0{degree_digits}d}{rest // 1_000_000:02d}.{rest % 1_000_000:06d}"


def cgpsinfo_line(point: GnssPoint, at: float) -> str:
    """SIMCom's answer for a fix at `point` at Unix time `at`."""
    assert point.lat is not None and point.lon is not None
    utc = time.gmtime(at)
    return (f"+CGPSINFO: {_degrees_minutes(point.lat, 2)},{'N' if point.lat >= 0 else 'S'},"
            f"{_degrees_minutes(point.lon, 3)},{'E' if point.lon >= 0 else 'W'},{time.strftime('%d%m%y', utc)},"
            f"{time.strftime('%H%M%S', utc)}.{int(at * 10) % 10},{point.alt_m:.1f},0.0,0")


def qgpsloc_line(point: GnssPoint, at: float) -> str:
    """Quectel's answer to AT+QGPSLOC=2 for a fix at `point` at Unix time `at`."""
    assert point.lat is not None and point.lon is not None
    utc = time.gmtime(at)
    return (f"+QGPSLOC: {time.strftime('%H%M%S', utc)}.{int(at * 1000) % 1000:03d},{point.lat:.5f},{point.lon:.5f},"
            f"{point.hdop:.1f},{point.alt_m:.1f},3,0.00,0.0,0.0,{time.strftime('%d%m%y', utc)},08")


def parse_gnss_track(spec: str) -> list[GnssPoint]:
    """`"0=none 5=37.5665,126.978 60=37.567,126.979,1.2"` -> points (T=LAT,LON[,HDOP] or T=none)."""
    points = []
    for item in spec.replace(";", " ").split():
        at, _, where = item.partition("=")
        if where.lower() == "none":
            points.append(GnssPoint(float(at)))
            continue
        numbers = [float(n) for n in where.split(",")]
        if len(numbers) not in (2, 3):
            raise ValueError(f"a track point is T=LAT,LON[,HDOP] or T=none, got {item!r}")
        points.append(GnssPoint(float(at), numbers[0], numbers[1], *numbers[2:]))
    return points


def _parse_fail_sms(spec: str) -> list[int]:
    """`"500:2"` → [500, 500]; `"500"` → [500]."""
    code, _, count = spec.partition(":")
    return [int(code)] * int(count or 1)


def _parse_replug(spec: str) -> tuple[float, float]:
    """`"5:2"` → (5.0, 2.0): vanish 5 s after start, for 2 s."""
    at, _, down = spec.partition(":")
    return float(at), float(down or 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jikimi_host.relay.fake_modem",
                                     description="A fake AT modem on a pty, for tests.")
    parser.add_argument("--log", required=True, help="JSON-lines file of what the network received")
    parser.add_argument("--link", help="create a symlink to the pty here (removed on exit)")
    parser.add_argument("--fail-sms", default="", metavar="CODE:N",
                        help="answer the next N submits with +CMS ERROR: CODE")
    parser.add_argument("--silent", type=int, default=0, metavar="N", help="ignore the next N commands")
    parser.add_argument("--lost-replies", type=int, default=0, metavar="N",
                        help="send the next N SMS segments but never answer them")
    parser.add_argument("--dial-result", choices=DIAL_RESULTS, default="OK")
    parser.add_argument("--remote-hangup", type=float, metavar="S", help="far side hangs up after S s")
    parser.add_argument("--no-sim", action="store_true", help="AT+CPIN? answers +CME ERROR: 10")
    parser.add_argument("--urc-noise", action="store_true", help="RING/+CMTI around every reply")
    parser.add_argument("--error-first-at", type=int, default=0, metavar="N",
                        help="the first N plain AT lines answer ERROR (junk in the input buffer)")
    parser.add_argument("--no-echo-on-start", dest="echo_on_start", action="store_false",
                        help="start with echo off (default: on until ATE0, as after power-up)")
    parser.add_argument("--junk-on-open", default="", metavar="TEXT",
                        help="sent when a client first writes (backslash escapes: '\\r\\nOK\\r\\n')")
    parser.add_argument("--stale-prompt", action="store_true",
                        help="start in the > prompt with an old PDU typed, no Ctrl-Z")
    parser.add_argument("--boot", type=float, default=0.0, metavar="S", help="deaf for S s after power-up, then RDY")
    parser.add_argument("--sim-busy", type=int, default=0, metavar="N", help="N AT+CPIN? answer +CME ERROR: 14")
    parser.add_argument("--sim-not-ready", type=int, default=0, metavar="N",
                        help="N AT+CPIN? answer +CPIN: NOT READY")
    parser.add_argument("--sim-pin", action="store_true", help="AT+CPIN? answers +CPIN: SIM PIN")
    parser.add_argument("--unregistered", type=int, default=0, metavar="N",
                        help="the first N AT+CREG?/AT+CEREG? answer stat 2 (searching)")
    parser.add_argument("--registration-denied", action="store_true", help="AT+CREG?/AT+CEREG? stat 3")
    parser.add_argument("--roaming", action="store_true", help="registered as roaming (stat 5)")
    parser.add_argument("--lte-only", action="store_true", help="AT+CREG? stat 0, AT+CEREG? stat 1")
    parser.add_argument("--no-cereg", action="store_true", help="AT+CEREG? answers ERROR")
    parser.add_argument("--replug", action="append", default=[], metavar="T:S",
                        help="T s after start the port vanishes for S s (needs --link); repeatable")
    parser.add_argument("--gnss-track", default="", metavar="SPEC",
                        help='the GNSS receiver\'s track: "T=LAT,LON[,HDOP] T=none ...", T in s after start')
    args = parser.parse_args(argv)
    try:
        gnss_track = parse_gnss_track(args.gnss_track)
    except ValueError as exc:
        parser.error(f"--gnss-track: {exc}")
    replugs = sorted(_parse_replug(spec) for spec in args.replug)
    if replugs and not args.link:
        parser.error("--replug needs --link: a client finds the new pty by that path")
    faults = Faults(
        fail_sms=_parse_fail_sms(args.fail_sms) if args.fail_sms else [],
        silent_commands=args.silent,
        lost_replies=args.lost_replies,
        dial_result=args.dial_result,
        remote_hangup_after_s=args.remote_hangup,
        no_sim=args.no_sim,
        urc_noise=args.urc_noise,
        error_first_at=args.error_first_at,
        echo_on_start=args.echo_on_start,
        junk_on_open=args.junk_on_open.encode("latin-1").decode("unicode_escape").encode("latin-1"),
        stale_prompt=args.stale_prompt,
        boot_s=args.boot,
        sim_busy=args.sim_busy,
        sim_not_ready=args.sim_not_ready,
        sim_pin=args.sim_pin,
        unregistered=args.unregistered,
        registration_denied=args.registration_denied,
        roaming=args.roaming,
        lte_only=args.lte_only,
        no_cereg=args.no_cereg,
    )
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    with FakeModem(args.log, faults, link=args.link, gnss_track=gnss_track) as fake:
        print(fake.path, flush=True)
        started = time.monotonic()
        while not stop.wait(min([0.5, *(max(0.0, started + at - time.monotonic()) for at, _ in replugs)])):
            if replugs and time.monotonic() >= started + replugs[0][0]:
                fake.replug(replugs.pop(0)[1])
                print(fake.wait_ready(timeout_s=3600), flush=True)  # the new pty, once it is there
    return 0


if __name__ == "__main__":
    sys.exit(main())
