"""A fake cellular modem on a pty, for tests: it speaks AT the way a real one does.

The modem side of a pseudo-terminal (raw mode) answers the subset `modem.py` uses, with real
framing: responses wrapped in `\\r\\n`, command echo on until `ATE0`, the `\\r\\n> ` prompt after
`AT+CMGS=<n>`, Ctrl-Z (0x1A) to send and ESC (0x1B) to abort. Supported commands:

    AT  ATE0/ATE1  ATZ  ATI  AT+CGMI  AT+CMEE=<0|1|2>  AT+CMEE?  AT+CPIN?  AT+CMGF=<0|1>
    AT+CMGF?  AT+CSQ  AT+CREG?  AT+CMGS=<n>  ATD<number>;  ATH

Anything else beginning with AT answers `ERROR`. A PDU whose length differs from `<n>` or that
does not decode as an SMS-SUBMIT answers `+CMS ERROR: 304`. With `AT+CMEE=0` errors are a bare
`ERROR`, as on real modems.

Every PDU is decoded with `pdu.py`; concatenated messages are reassembled and each *complete*
SMS becomes one JSON line in the log file, as does each call (flushed and fsynced per line, so
another process can read what "the network" received):

    {"kind": "sms", "to": "+8210...", "text": "...", "segments": 2, "refs": [4, 5], "encoding": "ucs2"}
    {"kind": "call", "to": "112", "duration_s": 1.02, "result": "hangup"}

Faults (`Faults`, or the command-line flags) make it misbehave on purpose: fail the next N
submits with a `+CMS ERROR`, send but never answer N submits (an in-doubt send), ignore the
next N command lines (a silent modem), answer `ATD` with
`BUSY`/`NO CARRIER`/`NO ANSWER`, end calls from the far side, no SIM, and URC noise (`RING`,
`+CMTI:`) interleaved with every reply.

In-process: `with FakeModem(log_path) as fake: Modem(fake.path)...` (a thread serves the pty).
As a process: `python -m jikimi_host.relay.fake_modem --link /tmp/x/modem --log /tmp/x/net.jsonl
[--fail-sms 500:2] ...` prints the pty path and runs until SIGTERM.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .pdu import PduError, decode_submit, tpdu_length

DIAL_RESULTS = ("OK", "BUSY", "NO CARRIER", "NO ANSWER")
_MAX_PDU_HEX = 2 * 200  # longer than any SMS-SUBMIT: the client lost its way


@dataclass
class Faults:
    """Scripted misbehaviour. Counters are consumed as the faults happen."""

    fail_sms: list[int] = field(default_factory=list)  # CMS codes for the next submits, in order
    lost_replies: int = 0  # send this many submits but never answer them (an in-doubt send)
    silent_commands: int = 0  # ignore this many command lines: no echo, no reply
    dial_result: str = "OK"  # what ATD answers; not OK means the call never rang
    remote_hangup_after_s: float | None = None  # the far side ends the call (NO CARRIER)
    no_sim: bool = False
    urc_noise: bool = False  # RING / +CMTI: around every reply


class FakeModem:
    """A pty that behaves like a modem. `start()` returns the path a client opens."""

    def __init__(self, log_path: str | os.PathLike[str], faults: Faults | None = None, *,
                 link: str | os.PathLike[str] | None = None) -> None:
        self.log_path = Path(log_path)
        self.faults = faults or Faults()
        self.link = Path(link) if link is not None else None
        self.path: str | None = None
        self.events: list[dict[str, Any]] = []  # what the log holds, for in-process tests
        self.commands: list[str] = []  # every command line received, in order
        self._changed = threading.Condition()
        self._write_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._fds: list[int] = []
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

    # --- lifecycle -----------------------------------------------------------------------------

    def start(self) -> str:
        if self._thread is not None:
            raise RuntimeError("fake modem already started")
        master, slave = os.openpty()
        tty.setraw(slave)  # no line discipline: bytes pass as they are, like a UART
        wake_r, wake_w = os.pipe()
        # We keep the slave open so the master never sees EIO between client sessions.
        self._master, self._slave, self._wake_r, self._wake_w = master, slave, wake_r, wake_w
        self._fds = [master, slave, wake_r, wake_w]
        self.path = os.ttyname(slave)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "a", encoding="utf-8")
        if self.link is not None:
            if self.link.is_symlink():
                self.link.unlink()
            self.link.symlink_to(self.path)
        self._thread = threading.Thread(target=self._serve, name="fake-modem", daemon=True)
        self._thread.start()
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
        for fd in self._fds:
            os.close(fd)
        self._fds = []
        self._log.close()
        if self.link is not None and self.link.is_symlink():
            self.link.unlink()

    def __enter__(self) -> FakeModem:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- test controls -------------------------------------------------------------------------

    def fail_next_sms(self, cms_code: int, count: int = 1) -> None:
        with self._changed:
            self.faults.fail_sms.extend([cms_code] * count)

    def go_silent(self, commands: int) -> None:
        with self._changed:
            self.faults.silent_commands = commands

    def inject_urc(self, line: str) -> None:
        """Send an unsolicited result code now."""
        self._write(f"\r\n{line}\r\n".encode())

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
            timeout = 0.5
            if self._remote_hangup_at is not None:
                timeout = max(0.0, min(timeout, self._remote_hangup_at - time.monotonic()))
            readable, _, _ = select.select([self._master, self._wake_r], [], [], timeout)
            if self._remote_hangup_at is not None and time.monotonic() >= self._remote_hangup_at:
                self._end_call("remote hangup")
                self._write(b"\r\nNO CARRIER\r\n")
            if self._master in readable:
                try:
                    data = os.read(self._master, 4096)
                except OSError:  # no client on the slave side: nothing to read yet
                    self._stopping.wait(0.05)
                    continue
                with self._changed:
                    out = bytearray()
                    for byte in data:
                        self._feed(byte, out)
                if out:
                    self._write(bytes(out))

    def _write(self, data: bytes) -> None:
        with self._write_lock:
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
            return ([], self._error("CME", 10)) if self.faults.no_sim else (["+CPIN: READY"], "OK")
        if match := re.fullmatch(r"AT\+CMGF=([01])", command):
            self._cmgf = int(match.group(1))
            return [], "OK"
        if command == "AT+CMGF?":
            return [f"+CMGF: {self._cmgf}"], "OK"
        if command == "AT+CSQ":
            return ["+CSQ: 20,99"], "OK"
        if command == "AT+CREG?":
            return ["+CREG: 0,1"], "OK"
        if match := re.fullmatch(r"AT\+CMGS=(\d{1,3})", command):
            return self._start_pdu(int(match.group(1)), out)
        if command.startswith("ATD"):
            return self._dial(command[3:])
        if command in ("ATH", "ATH0"):
            self._end_call("hangup")
            return [], "OK"
        return [], "ERROR"

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


def _parse_fail_sms(spec: str) -> list[int]:
    """`"500:2"` → [500, 500]; `"500"` → [500]."""
    code, _, count = spec.partition(":")
    return [int(code)] * int(count or 1)


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
    parser.add_argument("--no-sim", action="store_true")
    parser.add_argument("--urc-noise", action="store_true", help="RING/+CMTI around every reply")
    args = parser.parse_args(argv)
    faults = Faults(
        fail_sms=_parse_fail_sms(args.fail_sms) if args.fail_sms else [],
        silent_commands=args.silent,
        lost_replies=args.lost_replies,
        dial_result=args.dial_result,
        remote_hangup_after_s=args.remote_hangup,
        no_sim=args.no_sim,
        urc_noise=args.urc_noise,
    )
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    with FakeModem(args.log, faults, link=args.link) as fake:
        print(fake.path, flush=True)
        while not stop.wait(0.5):
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
