"""A blocking AT-command client for a cellular modem (3GPP TS 27.007 / 27.005) over pyserial.

The port is opened with `serial.serial_for_url`, so `/dev/ttyUSB2`, a pty path and
`rfc2217://host:port` all work. The AT subset used:

- init: wake-up (ESC, CR, a quiet pause, then `AT`; repeated, because a dead client may have left
  junk or a `> ` prompt on the line and a booting modem answers nothing), `ATE0` (echo off),
  `AT+CMEE=1` (numeric `+CME ERROR: <n>`), `AT+CPIN?` (polled until `+CPIN: READY`: the modem
  reads its SIM after power-up), `AT+CMGF=0` (PDU mode), `AT+CREG?` and `AT+CEREG?` (polled until
  either says registered: an LTE-only modem registers on CEREG only);
- SMS: `AT+CMGS=<tpdu length>` → wait for the `> ` prompt → hex PDU + Ctrl-Z (0x1A) →
  `+CMGS: <mr>` + `OK`; ESC (0x1B) aborts a prompt we gave up on;
- voice: `ATD<number>;` (`;` = voice call), `ATH` (hang up);
- `query()`: one plain command and its information lines, for the GNSS location source
  (`AT+CGPSINFO`, `AT+QGPSLOC=2`; relay/location.py).

Final result codes: `OK`, `ERROR`, `+CMS ERROR: <n>`, `+CME ERROR: <n>`, and for `ATD` also
`NO CARRIER`, `BUSY`, `NO ANSWER`. Unsolicited result codes (`RING`, `+CMTI:`, `+CREG:`, ...)
may arrive between any two lines; they are recognised and set aside, never taken as a reply.
After a timeout (or a stray `ERROR`) the next command first starts the session over (wake-up and
init on the same port), so a late reply to the old command cannot be mistaken for the reply to
the new one, and a modem that reset meanwhile is back in echo-off PDU mode.

Errors raise `ModemError(message, retryable, code)`; `send_sms` retries retryable ones with
exponential backoff, segment by segment. Whatever stops a session from starting (no answer,
ERROR to `AT`, SIM not ready or locked, no network) is retryable: the modem says what happened,
the caller decides how long to wait. The class is synchronous and guarded by one lock; the
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

try:
    import termios  # pyserial's flush() on a vanished POSIX port raises termios.error, not OSError
except ImportError:  # Windows
    termios = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

CTRL_Z = b"\x1a"
ESC = b"\x1b"

# CMS error codes (TS 27.005 §3.2.5) worth another try: network-side congestion and timeouts,
# the SIM's state (busy, missing, locked, failing: the owner can fix those), "unknown". The rest
# (invalid PDU, rejected, barred...) is about the message itself and will fail again.
RETRYABLE_CMS = frozenset({27, 38, 41, 42, 47, 300, 310, 311, 312, 313, 314, 315, 316, 317, 318, 320,
                           331, 332, 500})
# CME error codes (TS 27.007 §9.2): not allowed now (a call already up), the SIM's state (missing,
# PIN/PUK, failure, busy, wrong), no network service, network timeout, emergency calls only, unknown.
RETRYABLE_CME = frozenset({3, 10, 11, 12, 13, 14, 15, 16, 17, 18, 30, 31, 32, 100})
_CME_WORDS = {3: "operation not allowed", 10: "SIM not inserted", 11: "SIM PIN required",
              12: "SIM PUK required", 13: "SIM failure", 14: "SIM busy", 15: "SIM wrong",
              30: "no network service", 31: "network timeout", 32: "emergency calls only",
              100: "unknown"}
_PORT_ERRORS: tuple[type[BaseException], ...] = (serial.SerialException, OSError) + (
    (termios.error,) if termios is not None else ()
)

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
# Before the wake-up `AT` the line must have been quiet this long, so the tail of an old reply (or
# the OK to the ESC that closed a stale prompt) cannot answer it; a modem that never stops talking
# gets its `AT` after WAKE_SETTLE_MAX_S all the same.
WAKE_QUIET_S = 0.1
WAKE_SETTLE_MAX_S = 1.0
# <stat> of +CREG / +CEREG (TS 27.007 §7.2, §10.1.22), and which of them can carry our SMS.
REGISTRATION_STATES = {
    0: "not registered, not searching",
    1: "registered, home network",
    2: "not registered, searching",
    3: "registration denied",
    4: "unknown (out of coverage?)",
    5: "registered, roaming",
    6: "registered for SMS only, home network",
    7: "registered for SMS only, roaming",
    8: "attached for emergency bearer services only",
    9: "registered for CSFB not preferred, home network",
    10: "registered for CSFB not preferred, roaming",
    11: "attached for access to RLOS only",
}
REGISTERED = frozenset({1, 5, 6, 7, 9, 10})
# +CPIN: states and SIM errors that will not clear by themselves: what the owner must do.
_SIM_ADVICE = {
    "SIM PIN": "the SIM asks for its PIN: put it in a phone and turn its PIN lock off",
    "CME 11": "the SIM asks for its PIN: put it in a phone and turn its PIN lock off",
    "SIM PUK": "the SIM is blocked: unblock it in a phone with the PUK from its card",
    "CME 12": "the SIM is blocked: unblock it in a phone with the PUK from its card",
    "PH-SIM PIN": "the modem is locked to another operator's SIM: use a SIM it accepts",
    "NOT INSERTED": "no SIM in the modem: insert one (with the modem unpowered) and check it is seated",
    "CME 10": "no SIM in the modem: insert one (with the modem unpowered) and check it is seated",
    "CME 13": "the SIM failed: clean its contacts or replace it",
    "CME 15": "the modem rejects this SIM: use another one",
}
_ERROR_RE = re.compile(r"^\+(CMS|CME) ERROR:\s*(\d+)$")
_DIAL_NUMBER_RE = re.compile(r"^\+?[0-9*#]{1,40}$")
# query(): one command line of printable ASCII, no `;` (which would chain a second command).
_QUERY_RE = re.compile(r"AT[\x20-\x3a\x3c-\x7e]{0,60}", re.IGNORECASE)


WRITE_TIMEOUT_FLOOR_S = 2.0  # a few bytes at 115200 baud take milliseconds; longer is a stalled port


class ModemError(Exception):
    """A modem command failed. `retryable` says whether trying again later may succeed."""

    def __init__(self, message: str, *, retryable: bool, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable
        self.code = code  # "CMS 500", "CME 10", "ERROR", "TIMEOUT", "INIT", "SIM", "NETWORK", "IO", ...


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
            number >= 512  # manufacturer-specific: unknown to us, so give it a retry
        )
        words = f" ({_CME_WORDS[number]})" if kind == "CME" and number in _CME_WORDS else ""
        return ModemError(f"{command} failed: {line}{words}", retryable=retryable, code=f"{kind} {number}")
    if line in ("BUSY", "NO ANSWER", "NO CARRIER", "NO DIALTONE"):
        return ModemError(f"{command} failed: {line}", retryable=True, code=line)
    # With AT+CMEE=1 on, a bare ERROR means the command line was rejected: noise or junk on the
    # line garbled it (retrying clears that), or this modem does not take the command at all.
    return ModemError(f"{command} failed: {line} (a garbled line, or a command this modem rejects)",
                      retryable=True, code="ERROR")


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
        sim_wait_s: float = 5.0,
        registration_wait_s: float = 5.0,
        poll_s: float = 0.5,
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
        self.init_attempts = init_attempts  # wake-up tries (ESC, CR, quiet, AT) per session start
        self.sim_wait_s = sim_wait_s  # how long init polls AT+CPIN? for READY
        self.registration_wait_s = registration_wait_s  # ... and AT+CREG?/AT+CEREG? for registered
        self.poll_s = poll_s  # between two polls (the port is read meanwhile)
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
            self._start_session()

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
            # A short read timeout: we keep our own deadlines and poll in small slices. The write
            # timeout has a floor: pyserial checks it after a write that went through, so a process
            # the machine did not schedule for a short command timeout failed a write that worked.
            return serial.serial_for_url(
                self.url, baudrate=self.baudrate, timeout=0.05,
                write_timeout=max(self.command_timeout_s, WRITE_TIMEOUT_FLOOR_S),
                **({"exclusive": True} if local else {}),
            )
        except (*_PORT_ERRORS, ValueError) as exc:
            raise ModemError(_describe_open_failure(self.url, exc), retryable=True, code="PORT") from exc

    def _close_port(self) -> None:
        port, self._serial = self._serial, None
        self._buffer = b""
        self._needs_resync = False  # the next open starts a session anyway
        if port is not None:
            try:
                port.close()
            except _PORT_ERRORS:
                pass  # the device may already be gone (USB unplugged); nothing left to release

    def _start_session(self) -> None:
        """Initialise the modem on the open port. On any failure the port is closed, so the next
        use reopens it by its path (a re-enumerated USB modem is a new device there)."""
        try:
            self._initialise()
        except ModemError as exc:
            self._close_port()
            if exc.retryable:
                raise
            # Whatever the modem said, a session that would not start may start later (a modem
            # replaced, a firmware reset): the caller decides when to try again, never whether.
            raise ModemError(f"modem on {self.url} did not initialise: {exc.message}",
                             retryable=True, code=exc.code) from exc
        except BaseException:
            self._close_port()
            raise

    def _initialise(self) -> None:
        self._wake()
        self._command("ATE0")
        self._command("AT+CMEE=1")
        self._wait_for_sim()
        self._command("AT+CMGF=0")
        self._wait_for_registration()
        self._needs_resync = False  # a stray ERROR during init (AT+CEREG? on a 3G modem) is settled

    def _wake(self) -> None:
        """Get an OK to `AT`, whatever the last session left: a `> ` prompt (its client died mid
        AT+CMGS), half a command line, the tail of a reply, or a modem still booting."""
        attempts = max(1, self.init_attempts)
        failure: ModemError | None = None
        for _ in range(attempts):
            # ESC closes a stale prompt (its half-typed PDU is dropped, never sent: no Ctrl-Z);
            # CR ends a half-written line, so that junk is not prefixed to our AT.
            self._write(ESC + b"\r")
            self._settle()
            try:
                self._command("AT", timeout_s=min(self.command_timeout_s, 1.0))
                return
            except ModemError as exc:
                if exc.code == "IO":
                    raise
                failure = exc
                log.info("modem on %s: %s; waking it again", self.url, exc.message)
        assert failure is not None
        if failure.code == "TIMEOUT":
            raise ModemError(
                f"no reply to AT from {self.url} after {attempts} tries: is it a modem (still "
                f"booting?), and is {self.baudrate} baud right?",
                retryable=True,
                code="TIMEOUT",
            ) from failure
        raise ModemError(
            f"modem on {self.url} still answers {failure.message!r} to AT after {attempts} tries, each "
            f"after ESC, CR and a quiet pause: if this lasts, power-cycle the modem",
            retryable=True,
            code="INIT",
        ) from failure

    def _settle(self) -> None:
        """Set aside what the modem is still sending until the line is quiet (WAKE_QUIET_S, at most
        WAKE_SETTLE_MAX_S), so none of it can answer the `AT` that follows."""
        started = time.monotonic()
        quiet_until = started + WAKE_QUIET_S
        while time.monotonic() < min(quiet_until, started + WAKE_SETTLE_MAX_S):
            chunk = self._read_chunk()
            if chunk:
                self._buffer += chunk
                quiet_until = time.monotonic() + WAKE_QUIET_S
        while (line := self._pop_line()) is not None:
            if self._is_urc(line):
                self._note_urc(line, time.monotonic())  # a body not here yet is lost with the junk
            else:
                log.debug("modem on %s: set aside before AT: %r", self.url, line)
        self._buffer = b""  # no line end: a `> ` prompt or half a line, junk either way

    def _wait_for_sim(self) -> None:
        """Poll `AT+CPIN?` until READY: a modem reads its SIM for seconds after power-up, answering
        `+CPIN: NOT READY` or `+CME ERROR: 14` (SIM busy) meanwhile. A SIM that needs the owner (no
        SIM, PIN, PUK) is reported at once, saying what to do."""
        deadline = time.monotonic() + self.sim_wait_s
        while True:
            try:
                info = [line for line in self._command("AT+CPIN?", expect="+CPIN:") if line.startswith("+CPIN:")]
                state = info[-1].split(":", 1)[1].strip() if info else None
                if state == "READY":
                    return
                # NOT READY, or an OK without the +CPIN: line (a modem still starting up)
                transient = state in ("NOT READY", None)
                said, key, code = f"+CPIN: {state}" if state else "OK without +CPIN:", state or "", "SIM"
            except ModemError as exc:
                if exc.code in ("IO", "TIMEOUT"):
                    raise
                said, key, code = exc.message, exc.code or "", exc.code
                transient = key not in _SIM_ADVICE  # busy, a bare ERROR, "unknown": still starting
            if not transient:
                advice = _SIM_ADVICE.get(key, "unlock the SIM, or remove its PIN, in a phone")
                raise ModemError(f"SIM on {self.url} is not usable ({said}): {advice}",
                                 retryable=True, code=code)
            if time.monotonic() >= deadline:
                raise ModemError(
                    f"SIM on {self.url} is still not ready after {self.sim_wait_s:g}s ({said}): the "
                    f"modem is still reading it, or the SIM is failing",
                    retryable=True,
                    code=code,
                )
            self._listen(min(self.poll_s, max(0.0, deadline - time.monotonic())))

    def _wait_for_registration(self) -> None:
        """Poll `AT+CREG?` (circuit-switched) and `AT+CEREG?` (LTE) until either is registered. An
        LTE-only modem registers on CEREG alone; one without LTE answers ERROR to AT+CEREG?, which
        is then not asked again this session."""
        deadline = time.monotonic() + self.registration_wait_s
        queries = ["AT+CREG?", "AT+CEREG?"]
        while True:
            said: list[str] = []
            denied = False
            for command in list(queries):
                prefix = command[2:-1] + ":"  # "+CREG:"
                try:
                    stat = _registration_stat(self._command(command, expect=prefix), prefix)
                except ModemError as exc:
                    if exc.code in ("IO", "TIMEOUT"):
                        raise
                    if command == "AT+CEREG?":
                        queries.remove(command)  # no LTE on this modem: CREG alone says it
                    said.append(exc.message)
                    continue
                if stat in REGISTERED:
                    return
                denied = denied or stat == 3
                if stat is None:
                    said.append(f"{command} answered no {prefix} <n>,<stat> line")
                else:
                    said.append(f"{prefix} {REGISTRATION_STATES.get(stat, 'an unknown state')} ({stat})")
            if time.monotonic() >= deadline:
                hint = ("the network refuses this SIM (no service on it, or roaming barred)" if denied
                        else "check the antenna, the coverage and that the SIM has service")
                raise ModemError(
                    f"modem on {self.url} is not registered on a network after "
                    f"{self.registration_wait_s:g}s ({'; '.join(said)}): {hint}",
                    retryable=True,
                    code="NETWORK",
                )
            self._listen(min(self.poll_s, max(0.0, deadline - time.monotonic())))

    def _listen(self, duration_s: float) -> None:
        """Wait `duration_s` reading the port, so URCs that come meanwhile (`+CPIN: READY`,
        `+CREG: 1`) are set aside now instead of sitting in front of the next reply."""
        deadline = time.monotonic() + duration_s
        while (line := self._read_line(deadline)) is not None:
            self._note_urc(line, deadline)

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

    def query(self, command: str, *, expect: str | None = None, timeout_s: float | None = None) -> list[str]:
        """Run one plain AT command (`AT+CGPSINFO`, `AT+QGPSLOC=2`) and return its information
        lines; lines starting with `expect` are never taken for URCs. Errors raise ModemError as
        for any command (`+CME ERROR: 516` has code "CME 516"). It takes the port between two
        SMS or call turns, once: no retries here."""
        if not _QUERY_RE.fullmatch(command):
            raise ModemError(f"refusing to send {command!r}: not one AT command", retryable=False, code="COMMAND")
        with self._lock:
            self._ensure_open()
            return self._command(command, expect=expect, timeout_s=timeout_s)

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
            # An OK that belonged to something else: the link is out of step. Start over.
            self._needs_resync = True
            raise ModemError(f"{command}: OK without +CMGS: <mr>", retryable=True, code="PROTOCOL")

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
            self._ensure_open()  # after an I/O error, reopen: a call must not stay up unattended
            self._command("ATH")
        except ModemError as exc:  # the call is over either way; say so, don't mask the result
            log.warning("ATH after call failed: %s", exc.message)

    def _ensure_open(self) -> None:
        if self._serial is None:
            self.open()
            return
        self._drain_urcs()  # a RDY among them: the modem restarted and forgot our settings
        if self._needs_resync:
            # A late reply to the timed-out command may still come, and a modem that restarted has
            # echo on, numeric errors off, maybe text mode: start the session over on this port.
            self._start_session()

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
            if line == "ERROR":
                self._needs_resync = True  # it may be junk that garbled our line: start over
                raise _error_for_final(line, command)
            if _ERROR_RE.match(line):
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
        if line == "RDY":  # the modem (re)started: ATE0, CMEE and CMGF are gone
            self._needs_resync = True
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
        except _PORT_ERRORS as exc:
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
        except _PORT_ERRORS as exc:
            self._io_failed(exc)

    def _write(self, data: bytes) -> None:
        assert self._serial is not None
        try:
            self._serial.write(data)
            self._serial.flush()
        except _PORT_ERRORS as exc:
            self._io_failed(exc)

    def _io_failed(self, exc: BaseException) -> NoReturn:
        # The device vanished or the link broke (USB modem reset): reopen on the next use.
        self._close_port()
        raise ModemError(f"I/O error on modem port {self.url}: {exc}", retryable=True, code="IO") from exc


def _registration_stat(info: list[str], prefix: str) -> int | None:
    """<stat> from a `+CREG: <n>,<stat>[,...]` query reply. An unsolicited `+CREG: <stat>[,"<lac>"...]`
    that arrived meanwhile has no plain number second, and is skipped."""
    for line in reversed(info):
        if not line.startswith(prefix):
            continue
        fields = [f.strip() for f in line.split(":", 1)[1].split(",")]
        if len(fields) >= 2 and fields[1].isdigit():
            return int(fields[1])
    return None


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
