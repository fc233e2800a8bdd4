"""A relay process for tests and the demo: `jikimi relay --json` started on a virtual radio's
HCI transport, its JSON lines collected, and stopped (or killed) for sure."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path
from typing import Callable

from jikimi_host.processes import stop_process
from jikimi_host.wait import until
from jikimi_host.records import Record


class RelayProcess:
    def __init__(self, config: Path, transport: str, env: dict[str, str] | None = None,
                 args: tuple[str, ...] = ()) -> None:
        self.config = config
        self.transport = transport
        self.env = env or {}
        self.args = args  # more `jikimi relay` options, e.g. ("--real-modem",)
        self.records: list[Record] = []
        self.stderr = b""
        self.process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task | None = None
        self._changed = asyncio.Event()

    async def start(self) -> "RelayProcess":
        env = dict(os.environ, **self.env)
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "jikimi_host.cli", "relay", "--config", str(self.config),
            "--transport", self.transport, "--json", *self.args,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env)
        self._reader = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        while line := await self.process.stdout.readline():
            try:
                self.records.append(json.loads(line))
            except ValueError:
                self.records.append({"kind": "output", "text": line.decode(errors="replace").rstrip()})
            self._changed.set()
        self.stderr = await self.process.stderr.read() if self.process.stderr else b""
        self._changed.set()

    async def command(self, line: str) -> None:
        """The owner taps a command in the app: `cancel 비상벨`, `disarm 현관문`, ..."""
        assert self.process is not None and self.process.stdin is not None
        self.process.stdin.write(line.encode() + b"\n")
        await self.process.stdin.drain()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    def of(self, kind: str) -> list[Record]:
        return [r for r in self.records if r.get("kind") == kind]

    async def expect(self, match: Callable[[Record], bool], timeout_s: float = 60.0, what: str = "") -> Record:
        """The first record (of all so far) that `match`es; WaitTimeout with the relay's last
        records and stderr if none comes within `timeout_s`, or at once when the relay has exited."""
        def exited() -> str | None:
            return "the relay exited" if self._reader is not None and self._reader.done() and not self.running else None

        return await until(lambda: next((r for r in self.records if match(r)), None), timeout_s,
                           f"relay: {what or 'a match'}", log=self._log_tail, changed=self._changed,
                           hopeless=exited, poll_s=0.5)

    def _log_tail(self) -> str:
        tail = "\n".join(json.dumps(r, ensure_ascii=False) for r in self.records[-15:])
        return f"{tail}\n{self.stderr.decode(errors='replace')[-2000:]}"

    async def exited(self, timeout_s: float = 30.0) -> int:
        assert self.process is not None
        code = await asyncio.wait_for(self.process.wait(), timeout_s)
        if self._reader is not None:
            await self._reader
        return code

    async def kill(self) -> None:
        """SIGKILL: no cleanup, as when the phone's OS kills the app or the battery dies."""
        if self.running:
            assert self.process is not None
            self.process.send_signal(signal.SIGKILL)
        if self.process is not None:
            await self.exited()

    async def stop(self) -> None:
        if self.process is not None:
            await stop_process(self.process)
            await self.exited()
