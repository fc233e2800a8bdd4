"""A blocking AT-command client for a cellular modem (3GPP TS 27.007 / 27.005) over pyserial.

The port is opened with `serial.serial_for_url`, so `/dev/ttyUSB2`, a pty path and
`rfc2217://host:port` all work. The AT subset used:

- init: `AT` (retried: the modem may be booting), `ATE0` (echo off), `AT+CMEE=1` (numeric
  `+CME ERROR: <n>`), `AT+CPIN?` (must answer `+CPIN: READY`), `AT+CMGF=0` (PDU mode);
- SMS: `AT+CMGS=<tpdu length>` → wait for the `> ` prompt → hex PDU + Ctrl-Z (0x1A) →
  `+CMGS: <mr>` + `OK`; ESC (0x1B) aborts a prompt we gave up on;
- voice: `ATD<number>;` (`;` = voice call), `ATH` (hang up).

Final result codes: `OK`, `ERROR`, `+CMS ERROR: <n>`, `+CME ERROR: <n>`, and for `ATD` also
`NO CARRIER`, `BUSY`, `NO ANSWER`. Unsolicited result codes (`RING`, `+CMTI:`, `+CREG:`, ...)
may arrive between any two lines; they are recognised and set aside, never taken as a reply.
After a timeout the link is resynchronised with a bare `AT` before the next command, so a late
reply to the old command cannot be mistaken for the reply to the new one.

Errors raise `ModemError(message, retryable, code)`; `send_sms` retries retryable ones with
exponential backoff, segment by segment. The class is synchronous and guarded by one lock; the
relay calls it through `asyncio.to_thread`. See MODEM.md for the retry table.
"""

from __future__ import annotations

import collections
import errno
import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn

import serial

from . import pdu as pdu_codec

log = logging.getLogger(__name__)

CTRL_Z = b"\x1a"
ESC = b"\x1b"

# CMS error codes (TS 27.005 §3.2.5) worth another try: network-side congestion and timeouts,
# a busy SIM, "unknown". Everything else (invalid PDU, SIM missing, barred...) will fail again.
RETRYABLE_CMS = frozenset({27, 38, 41, 42, 47, 300, 314, 320, 331, 332, 500})
# CME error codes (TS 27.007 §9.2): SIM busy, no network service, network timeout, unknown.
RETRYABLE_CME = frozenset({14, 30, 31, 100})

CALL_END_CODES = ("NO CARRIER", "BUSY", "NO ANSWER", "NO DIALTONE")
CALL_TURN_S = 0.2  # while a call is up, the port is read this long at a time between SMS
# Unsolicited result codes (TS 27.007/27.005 and common vendor ones) that may interleave replies.
_URC_PREFIXES = (
    "RING", "+CRING:", "+CLIP:", "+CCWA:", "+CMTI:", "+CMT:", "+CDSI:", "+CDS:", "+CBM:",
    "+CREG:", "+CGREG:", "+CEREG:", "+C5GREG:", "+CUSD:", "+CIEV:", "+CPIN:", "+QIND:",
    "+CGEV:", "^", "RDY", "Call Ready", "SMS Ready", "+PBREADY", "NO CARRIER", "BUSY", "NO ANSWER",
)
# These URCs carry a second line (the PDU) that belongs to them.
_URC_WITH_BODY = ("+CMT:", "+CDS:", "+CBM:")
_ERROR_RE = re.compile(r"^\+(CMS|CME) ERROR:\s*(\d+)$")
_DIAL_NUMBER_RE = re.compile(r"^\+?[0-9*#]{1,40}$")


class ModemError(Exception):
    """A modem command failed. `retryable` says whether trying again later may succeed."""

    def __init__(self, message: str, *, retryable: bool, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable
        self.code = code  # "CMS 500", "CME 10", "ERROR", "TIMEOUT", "PORT", "IO", "SIM", ...


@dataclass(frozen=True)
class CallResult:
    number: str
    outcome: str  # "hung up" (we ended it after ring_s) or the modem's NO CARRIER/BUSY/NO ANSWER
    duration_s: float
    placed: bool  # ATD answered OK: the call was set up (it rang), whatever happened next


def _error_for_final(line: str, command: str) -> ModemError:
    """A ModemError for a final result code other than OK."""
    match = _ERROR_RE.match(line)
    if match:
        kind, number = match.group(1), int(match.group(2))
        retryable = number in (RETRYABLE_CMS if kind == "CMS" else RETRYABLE_CME) or (
            kind == "CMS" and number >= 512  # manufacturer-specific: unknown, so give it a retry
        )
        return ModemError(f"{command} failed: {line}", retryable=retryable, code=f"{kind} {number}")
    if line in ("BUSY", "NO ANSWER", "NO CARRIER", "NO DIALTONE"):
        return ModemError(f"{command} failed: {line}", retryable=True, code=line)
    # With AT+CMEE=1 on, a bare ERROR means the command itself was rejected (syntax, unsupported).
    return ModemError(f"{command} failed: {line}", retryable=False, code="ERROR")


class Modem:
    """An AT-command client. Open lazily on first use or with `open()`; close with `close()`."""

    def __init__(
        self,
        url: str,
        baudrate: int = 115200,
        *,
        command_timeout_s: float = 5.0,
        sms_timeout_s: float = 60.0,
        dial_timeout_s: float = 30.0,
        init_attempts: int = 3,
        retries: int = 3,
        backoff_s: float = 1.0,
        backoff_max_s: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.url = url
        self.baudrate = baudrate
        self.command_timeout_s = command_timeout_s
        self.sms_timeout_s = sms_timeout_s
        self.dial_timeout_s = dial_timeout_s
        self.init_attempts = init_attempts
        self.retries = retries
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self._sleep = sleep
        self._lock = threading.RLock()
        self._call_ended: str | None = None  # a call-end code seen while a call is up
        self._serial: serial.SerialBase | None = None
        self._buffer = b""
        self._needs_resync = False
        self._concat_reference = 0
        self.urcs: collections.deque[str] = collections.deque(maxlen=100)  # seen, for diagnostics

    # --- lifecycle -----------------------------------------------------------------------------

    def open(self) -> None:
        """Open the port and initialise the modem (idempotent)."""
        with self._lock:
            if self._serial is not None:
                return
            self._serial = self._open_port()
            self._buffer = b""
            self._needs_resync = False  # a fresh init synchronises the link anyway
            try:
                self._initialise()
            except BaseException:
                self._close_port()
                raise

    def close(self) -> None:
        with self._lock:
            self._close_port()

    def __enter__(self) -> Modem:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _open_port(self) -> serial.SerialBase:
        local = "://" not in self.url
        try:
            # A short read timeout: we keep our own deadlines and poll in small slices.
            return serial.serial_for_url(
                self.url, baudrate=self.baudrate, timeout=0.05, write_timeout=self.command_timeout_s,
                **({"exclusive": True} if local else {}),
            )
        except (serial.SerialException, OSError, ValueError) as exc:
            raise ModemError(_describe_open_failure(self.url, exc), retryable=True, code="PORT") from exc

    def _close_port(self) -> None:
        port, self._serial = self._serial, None
        if port is not None:
            try:
                port.close()
            except (serial.SerialException, OSError):
                pass  # the device may already be gone (USB unplugged); nothing left to release

    def _initialise(self) -> None:
        self._write(ESC)  # leave a half-finished AT+CMGS prompt from an earlier session, if any
        last: ModemError | None = None
        for _ in range(self.init_attempts):
            try:
                self._command("AT", timeout_s=min(self.command_timeout_s, 1.0))
                break
            except ModemError as exc:
                if exc.code != "TIMEOUT":
                    raise
                last = exc
        else:
            raise ModemError(
                f"no reply to AT from {self.url} after {self.init_attempts} tries: is it a modem, "
                f"and is {self.baudrate} baud right?",
                retryable=True,
                code="TIMEOUT",
            ) from last
        self._command("ATE0")
        self._command("AT+CMEE=1")
        try:
            info = self._command("AT+CPIN?", expect="+CPIN:")
        except ModemError as exc:
            raise ModemError(
                f"SIM not usable on {self.url}: {exc.message} (CME 10 = no SIM inserted)",
                retryable=exc.retryable,
                code=exc.code,
            ) from exc
        state = info[0].split(":", 1)[1].strip() if info else "?"
        if state != "READY":
            raise ModemError(
                f"SIM on {self.url} is not ready: +CPIN: {state} (unlock the SIM or remove its PIN)",
                retryable=False,
                code="SIM",
            )
        self._command("AT+CMGF=0")

    # --- public operations ---------------------------------------------------------------------

    def send_sms(self, number: str, text: str) -> list[int]:
        """Send `text` to `number` (concatenated when long); return the message references."""
        try:
            with self._lock:
                self._concat_reference = (self._concat_reference + 1) % 256
                pdus = pdu_codec.encode_submit(number, text, self._concat_reference)
        except pdu_codec.PduError as exc:
            raise ModemError(f"cannot encode SMS to {number!r}: {exc}", retryable=False, code="PDU") from exc
        # Retry per segment: a failed segment 3 must not resend segments 1 and 2.
        return [self._with_retries(f"SMS to {number}", lambda p=p: self._submit(p)) for p in pdus]

    def dial(self, number: str) -> str:
        """`ATD<number>;` (voice); return the final result code (OK, BUSY, NO CARRIER, ...)."""
        _check_dial_number(number)
        with self._lock:
            return self._dial(number)

    def hangup(self) -> None:
        with self._lock:
            self._ensure_open()
            self._command("ATH")

    def call(self, number: str, ring_s: float) -> CallResult:
        """Dial, let it ring/talk up to `ring_s` or until the call ends, then hang up.

        The port is held to dial and to hang up; while the call is up it is read in short turns,
        so an SMS from another thread goes out meanwhile (modems accept AT+CMGS during a voice
        call): a guardian's text never waits a minute behind a call to 112."""
        _check_dial_number(number)
        started = time.monotonic()
        with self._lock:
            try:
                final = self._dial(number)
            except ModemError as exc:
                if exc.code == "TIMEOUT":  # it may be ringing all the same: make sure it is not
                    self._hangup_quietly()
                raise
            if final != "OK":  # rejected before it rang
                return CallResult(number, final, time.monotonic() - started, placed=False)
            self._call_ended = None
        try:
            outcome = self._wait_for_call_end(started + ring_s)
            return CallResult(number, outcome, time.monotonic() - started, placed=True)
        finally:
            with self._lock:
                self._hangup_quietly()

    # --- internals: operations -----------------------------------------------------------------

    def _with_retries(self, what: str, attempt: Callable[[], int]) -> int:
        delay = self.backoff_s
        for attempt_number in range(self.retries + 1):
            try:
                return attempt()
            except ModemError as exc:
                if not exc.retryable or attempt_number == self.retries:
                    raise
                log.warning("%s: %s; retry %d/%d in %.2fs", what, exc.message, attempt_number + 1,
                            self.retries, delay)
                self._sleep(delay)
                delay = min(delay * 2, self.backoff_max_s)
        raise AssertionError("unreachable")

    def _submit(self, pdu: bytes) -> int:
        with self._lock:
            self._ensure_open()
            command = f"AT+CMGS={pdu_codec.tpdu_length(pdu)}"
            self._command(command, until_prompt=True)
            # The reply can take long: the network has to accept the message.
            try:
                info = self._send_and_collect(
                    pdu.hex().upper().encode() + CTRL_Z, "PDU", self.sms_timeout_s, expect="+CMGS:"
                )
            except ModemError as exc:
                if exc.code != "TIMEOUT":
                    raise
                # In doubt: the network may have taken it. Retried all the same (a duplicate
                # alert is the lesser harm); the code lets the audit log say so.
                raise ModemError(f"{exc.message}; the segment may have been sent",
                                 retryable=True, code="TIMEOUT_IN_DOUBT") from exc
            for line in info:
                if line.startswith("+CMGS:"):
                    return int(line.split(":", 1)[1].split(",")[0])
            raise ModemError(f"{command}: OK without +CMGS: <mr>", retryable=False, code="PROTOCOL")

    def _dial(self, number: str) -> str:
        self._ensure_open()
        try:
            self._command(f"ATD{number};", timeout_s=self.dial_timeout_s, call_codes_final=True)
        except ModemError as exc:
            if exc.code in CALL_END_CODES:
                return exc.code
            raise
        return "OK"

    def _wait_for_call_end(self, deadline: float) -> str:
        """Read until a call-ending code arrives (here, or set aside by an SMS exchange that ran
        meanwhile) or the deadline passes, taking the port CALL_TURN_S at a time."""
        while True:
            with self._lock:
                if self._call_ended is not None:
                    return self._call_ended
                self._ensure_open()
                line = self._read_line(min(deadline, time.monotonic() + CALL_TURN_S))
                if line in CALL_END_CODES:
                    return line
                if line is not None:
                    self._note_urc(line)
            if time.monotonic() >= deadline:
                return "hung up"
            time.sleep(0.005)  # a thread waiting to send an SMS gets the port now

    def _hangup_quietly(self) -> None:
        try:
            self._command("ATH")
        except ModemError as exc:  # the call is over either way; say so, don't mask the result
            log.warning("ATH after call failed: %s", exc.message)

    def _ensure_open(self) -> None:
        if self._serial is None:
            self.open()
        if self._needs_resync:
            self._needs_resync = False
            self._write(ESC)
            self._command("AT", timeout_s=min(self.command_timeout_s, 2.0))

    # --- internals: command/response framing ---------------------------------------------------

    def _command(
        self,
        command: str,
        *,
        timeout_s: float | None = None,
        expect: str | None = None,
        until_prompt: bool = False,
        call_codes_final: bool = False,
    ) -> list[str]:
        """Send one command line; return its information lines (URCs and echo removed)."""
        self._drain_urcs()
        return self._send_and_collect(
            command.encode("ascii") + b"\r",
            command,
            self.command_timeout_s if timeout_s is None else timeout_s,
            expect=expect,
            until_prompt=until_prompt,
            call_codes_final=call_codes_final,
        )

    def _send_and_collect(
        self,
        data: bytes,
        command: str,
        timeout_s: float,
        *,
        expect: str | None = None,
        until_prompt: bool = False,
        call_codes_final: bool = False,
    ) -> list[str]:
        self._write(data)
        deadline = time.monotonic() + timeout_s
        echo = data.rstrip(b"\r" + CTRL_Z).decode("ascii", "replace").upper()
        info: list[str] = []
        while True:
            line = self._read_line(deadline, until_prompt=until_prompt)
            if line is None:
                self._needs_resync = True
                if until_prompt:
                    self._write(ESC)  # in case the prompt comes late: don't leave it waiting
                raise ModemError(
                    f"modem on {self.url} did not answer {command} within {timeout_s:g}s",
                    retryable=True,
                    code="TIMEOUT",
                )
            if line == ">":
                return info
            if line.upper() == echo:
                continue
            if line == "OK":
                return info
            if line == "ERROR" or _ERROR_RE.match(line):
                raise _error_for_final(line, command)
            if call_codes_final and line in CALL_END_CODES:
                raise _error_for_final(line, command)
            if expect is not None and line.startswith(expect):
                info.append(line)
            elif self._is_urc(line):
                self._note_urc(line, deadline)
            else:
                info.append(line)

    def _is_urc(self, line: str) -> bool:
        return line.startswith(_URC_PREFIXES)

    def _note_urc(self, line: str, deadline: float | None = None) -> None:
        self.urcs.append(line)
        if line in CALL_END_CODES:
            self._call_ended = line  # the call ended while another command had the port
        log.debug("URC from %s: %s", self.url, line)
        if line.startswith(_URC_WITH_BODY):
            body = self._read_line(deadline if deadline is not None else time.monotonic() + 1.0)
            if body is not None:
                self.urcs.append(body)

    def _drain_urcs(self) -> None:
        """Set aside lines that arrived while idle (URCs), so they can't answer the next command."""
        assert self._serial is not None
        try:
            waiting = self._serial.in_waiting
        except (serial.SerialException, OSError) as exc:
            self._io_failed(exc)
        if waiting:
            self._buffer += self._read_chunk()
        while True:
            line = self._pop_line()
            if line is None:
                return
            self._note_urc(line)

    def _read_line(self, deadline: float, *, until_prompt: bool = False) -> str | None:
        """The next non-empty line (or ">" for the SMS prompt); None at the deadline."""
        while True:
            line = self._pop_line()
            if line is not None:
                return line
            if until_prompt and self._buffer.lstrip(b"\r\n").startswith(b">"):
                self._buffer = b""  # the prompt is "> " with no line end: nothing follows it yet
                return ">"
            if time.monotonic() >= deadline:
                return None
            self._buffer += self._read_chunk()

    def _pop_line(self) -> str | None:
        while True:
            match = re.search(rb"[\r\n]", self._buffer)
            if match is None:
                return None
            raw, self._buffer = self._buffer[: match.start()], self._buffer[match.end() :]
            line = raw.strip(b" \x00\x1a\x1b").decode("ascii", "replace").strip()
            if line:
                return line

    def _read_chunk(self) -> bytes:
        assert self._serial is not None
        try:
            return self._serial.read(max(1, self._serial.in_waiting))
        except (serial.SerialException, OSError) as exc:
            self._io_failed(exc)

    def _write(self, data: bytes) -> None:
        assert self._serial is not None
        try:
            self._serial.write(data)
            self._serial.flush()
        except (serial.SerialException, OSError) as exc:
            self._io_failed(exc)

    def _io_failed(self, exc: Exception) -> NoReturn:
        # The device vanished or the link broke (USB modem reset): reopen on the next use.
        self._close_port()
        raise ModemError(f"I/O error on modem port {self.url}: {exc}", retryable=True, code="IO") from exc


def _check_dial_number(number: str) -> None:
    # Only dial characters: anything else (`;`, letters, CR) would inject AT commands.
    if not _DIAL_NUMBER_RE.match(number):
        raise ModemError(f"refusing to dial {number!r}: not a phone number", retryable=False, code="NUMBER")


def _describe_open_failure(url: str, exc: Exception) -> str:
    """A message naming the port and the likely cause."""
    cause = getattr(exc, "errno", None)
    text = str(exc)
    if cause == errno.ENOENT or "No such file" in text:
        hint = "no such device (is the modem plugged in? look at /dev/ttyUSB* and /dev/serial/by-id)"
    elif cause in (errno.EACCES, errno.EPERM) or "Permission denied" in text:
        hint = "permission denied (add the user to the 'dialout' group)"
    elif "lock" in text.lower():
        hint = "another program has the port open (ModemManager? another relay?)"
    else:
        hint = text
    return f"cannot open modem port {url!r}: {hint}"
