"""The host side of the firmware's test console (firmware/jikimi/testconsole.py): drives a
board's inputs and reads its outputs over its serial console, for a rig whose board has no
wiring to drive. Works on any port pyserial opens: a device path, `rfc2217://host:port`, or the
virtual board's console pty. Also follows the structured log (`J {json}` lines).
"""

from __future__ import annotations

import re
import threading
import time
from typing import Callable

import serial

from jikimi_host.device.log_line import parse_log_line
from jikimi_host.errors import JikimiError
from jikimi_host.records import Record
MAX_FREE = re.compile(r"max free sz: (\d+)")


class TestConsoleError(JikimiError):
    __test__ = False  # not a pytest class


class TestConsoleClient:
    __test__ = False  # not a pytest class

    def __init__(self, port: str, baudrate: int = 115200, name: str | None = None) -> None:
        """`name`: what errors call the board (default: the port)."""
        self.name = name or port
        try:
            self.serial = serial.serial_for_url(port, baudrate=baudrate, timeout=0.1)
        except (serial.SerialException, OSError, ValueError) as err:
            raise TestConsoleError(f"{self.name}: cannot open the serial port {port!r}: {err}") from err
        self.port = port
        self.records: list[Record] = []
        self._changed = threading.Condition()
        self._max_free_blocks: int | None = None
        self._stop = threading.Event()
        self._reader = threading.Thread(target=self._read, name=f"console {port}", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        pending = b""
        while not self._stop.is_set():
            try:
                # what has arrived, or wait (up to the port's timeout) for one byte: read(4096)
                # would wait the whole timeout for a short answer
                pending += self.serial.read(max(1, self.serial.in_waiting))
            except (serial.SerialException, OSError):
                time.sleep(0.05)  # the board resets; the port comes back
                continue
            *lines, pending = pending.split(b"\n")
            found = []
            for line in lines:
                text = line.decode(errors="replace")
                largest = MAX_FREE.search(text)
                if largest:  # micropython.mem_info(), printed just before the "mem" record
                    self._max_free_blocks = int(largest.group(1))
                record = parse_log_line(text)
                if record is None:  # not a log line, or one cut by a reset
                    continue
                if record.get("k") == "mem" and self._max_free_blocks is not None:
                    record["largest_free"] = self._max_free_blocks * record.get("block", 16)
                    self._max_free_blocks = None
                found.append(record)
            if found:
                with self._changed:
                    self.records.extend(found)
                    self._changed.notify_all()

    def wait_for(self, match: Callable[[Record], bool], timeout_s: float = 10.0, start: int = 0) -> Record:
        """The first record from index `start` on that `match`es, waiting up to `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while True:
                for record in self.records[start:]:
                    if match(record):
                        return record
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TestConsoleError(f"{self.name}: no matching log record within {timeout_s} s on its console {self.port}")
                self._changed.wait(left)

    def command(self, line: str, timeout_s: float = 10.0) -> Record:
        """Send one test-console command; its answer (an error answer raises)."""
        start = len(self.records)
        self.serial.write(line.encode() + b"\n")
        word = line.split()[0] if line.split() else ""
        answers = {"out": "out", "status": "status", "mem": "mem"}
        kind = answers.get(word, "tc")
        record = self.wait_for(lambda r: r.get("k") in (kind, "tc_error"), timeout_s, start)
        if record["k"] == "tc_error":
            raise TestConsoleError(record.get("msg", "test console error"))
        return record

    def set_input(self, name: str, level: int) -> None:
        self.command(f"in {name} {level}")

    def outputs(self) -> tuple[int, int, int]:
        """(buzzer Hz, buzzer duty_u16, LED) as the board drives them now."""
        record = self.command("out")
        return record["hz"], record["duty"], record["led"]

    def status(self) -> Record:
        return self.command("status")

    def open_pairing(self) -> None:
        self.command("pairing")

    def reset(self) -> None:
        """Reboot the board; returns once it has said so (its console goes quiet while it boots)."""
        self.command("reset")

    def wipe(self) -> None:
        """Forget every event, alarm and bond, then reboot (a fresh device for the next test)."""
        self.command("wipe")

    def close(self) -> None:
        self._stop.set()
        self._reader.join(timeout=2)
        self.serial.close()

    def __enter__(self) -> "TestConsoleClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
