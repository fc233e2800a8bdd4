"""The virtual board's serial console: a pseudo-terminal a user or mpremote opens by path.

The MicroPython process runs on one pty (it sees a real terminal: the REPL sets raw mode,
Ctrl-C interrupts). A second pty is what users open (`mpremote connect /dev/pts/N`, pyserial,
`jikimi monitor`): it stays open across reboots of the device process, like a USB-serial
adapter across resets of the board. This module copies bytes between the two and keeps a log
of everything the device printed, for `expect`.

One difference from a UART is smoothed over: the Unix port's REPL discards typed-ahead input when
it starts (it sets raw mode with TCSAFLUSH), where an ESP32's UART keeps it. So after a Ctrl-C
the console holds what the user types next until the device prints its REPL prompt (or
`HOLD_AFTER_INTERRUPT_S` passes): mpremote's Ctrl-C then Ctrl-A reaches the REPL, not the void.
"""

from __future__ import annotations

import asyncio
import os
import re
import termios
import time
import tty
from pathlib import Path

from jikimi_host.wait import until

HOLD_AFTER_INTERRUPT_S = 3.0
_PROMPTS = (b">>> ", b"raw REPL; CTRL-B to exit")


class Console:
    def __init__(self, log_path: Path) -> None:
        # The user side: its slave is the path we publish; we keep it open so that it survives
        # users coming and going, and raw so that nothing is echoed back to the device.
        self._user_master, self._user_slave = os.openpty()
        tty.setraw(self._user_slave)
        self.path = os.ttyname(self._user_slave)
        self.log_path = log_path
        self._log = open(log_path, "ab")
        self.buffer = bytearray()  # everything the device printed since creation
        self.lines: list[tuple[float, str]] = []  # (time.monotonic() when complete, line)
        self._partial = b""
        self._device_master: int | None = None
        self._changed = asyncio.Event()
        self._held: bytearray | None = None  # typed after a Ctrl-C, until the REPL is up
        self._held_since = 0  # len(buffer) at that Ctrl-C: a prompt must come after it
        self._release_timer: asyncio.TimerHandle | None = None
        loop = asyncio.get_running_loop()
        os.set_blocking(self._user_master, False)
        loop.add_reader(self._user_master, self._from_user)

    def device_terminal(self) -> int:
        """A fresh pty for a new device process; returns the slave fd to give it."""
        self.detach_device()
        master, slave = os.openpty()
        # Output exactly as MicroPython writes it: its REPL already sends "\r\n", and the raw
        # REPL protocol (mpremote) breaks if the terminal adds a second "\r".
        attrs = termios.tcgetattr(slave)
        attrs[1] &= ~termios.OPOST
        termios.tcsetattr(slave, termios.TCSANOW, attrs)
        os.set_blocking(master, False)
        self._device_master = master
        asyncio.get_running_loop().add_reader(master, self._from_device)
        return slave

    def detach_device(self) -> None:
        if self._device_master is not None:
            asyncio.get_running_loop().remove_reader(self._device_master)
            os.close(self._device_master)
            self._device_master = None

    def _from_device(self) -> None:
        try:
            data = os.read(self._device_master, 4096)
        except OSError:  # the process ended and closed its side
            data = b""
        if not data:
            self.detach_device()
            return
        if self._held is not None and any(prompt in self.buffer[self._held_since:] + data for prompt in _PROMPTS):
            self._release()
        self.buffer += data
        now = time.monotonic()
        *complete, self._partial = (self._partial + data).split(b"\n")
        for line in complete:
            self.lines.append((now, line.decode(errors="replace").rstrip("\r")))
        self._log.write(data)
        self._log.flush()
        self._changed.set()
        try:
            os.write(self._user_master, data)
        except BlockingIOError:
            pass  # nobody is reading the port: output is lost, as on a real UART

    def _from_user(self) -> None:
        try:
            data = os.read(self._user_master, 4096)
        except OSError:
            return
        self.write(data)

    def write(self, data: bytes) -> None:
        """Type `data` on the device's console."""
        if self._held is not None:
            self._held += data
            return
        interrupt = data.find(b"\x03")
        if interrupt >= 0 and self._device_master is not None:
            self._held = bytearray(data[interrupt + 1:])
            self._held_since = len(self.buffer)
            data = data[:interrupt + 1]
            self._release_timer = asyncio.get_running_loop().call_later(HOLD_AFTER_INTERRUPT_S, self._release)
        if self._device_master is not None:
            os.write(self._device_master, data)

    def _release(self) -> None:
        held, self._held = self._held, None
        if self._release_timer is not None:
            self._release_timer.cancel()
            self._release_timer = None
        if held:
            self.write(bytes(held))

    def text(self) -> str:
        return self.buffer.decode(errors="replace").replace("\r\n", "\n")

    async def expect(self, pattern: str, timeout_s: float = 10.0, start: int = 0,
                     not_matching: str | None = None) -> re.Match:
        """Wait until the console output matches `pattern` (a regex, multi-line), looking from
        character `start` of text() on (WaitTimeout with the console's last lines if it does not in
        `timeout_s`); AssertionError at once if `not_matching` matches first."""
        compiled = re.compile(pattern, re.M)
        bad = re.compile(not_matching, re.M) if not_matching else None

        def matched() -> re.Match | None:
            text = self.text()[start:]
            if bad and (hit := bad.search(text)):
                raise AssertionError(f"console matched {not_matching!r}: {hit.group(0)!r}\n{self.tail()}")
            return compiled.search(text)

        return await until(matched, timeout_s, f"{pattern!r} on the console (log {self.log_path})",
                           log=self.tail, changed=self._changed)

    def tail(self, lines: int = 20) -> str:
        return "\n".join(self.text().splitlines()[-lines:])

    def close(self) -> None:
        if self._release_timer is not None:
            self._release_timer.cancel()
        self.detach_device()
        loop = asyncio.get_running_loop()
        loop.remove_reader(self._user_master)
        for fd in (self._user_master, self._user_slave):
            os.close(fd)
        self._log.close()
