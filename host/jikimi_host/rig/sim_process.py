"""`jikimi sim` in a process of its own, as a user starts it: what it prints at start (its pty,
HCI transport, control socket, page) read into `facts`, and Ctrl-C (SIGINT) to stop it, for sure."""

from __future__ import annotations

import asyncio
import signal
import sys

from jikimi_host.processes import stop_process

START_TIMEOUT_S = 90.0  # a cold start of one or two boards on a loaded machine
STOP_TIMEOUT_S = 30.0
READY_LINE = "running; Ctrl-C to stop"


class SimProcess:
    """`async with SimProcess("--passkey", "123456") as sim:` ... `sim.facts["hci"]`; afterwards
    `sim.returncode` (0 when it stopped cleanly on Ctrl-C)."""

    def __init__(self, *args: str, stdin: int | None = asyncio.subprocess.DEVNULL) -> None:
        self.args = args
        self.stdin = stdin
        self.facts: dict[str, str] = {}
        self.process: asyncio.subprocess.Process | None = None
        self._drain: asyncio.Task | None = None

    @property
    def returncode(self) -> int | None:
        return None if self.process is None else self.process.returncode

    async def __aenter__(self) -> "SimProcess":
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "jikimi_host.cli", "sim", *self.args, stdin=self.stdin,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        try:
            while READY_LINE not in self.facts:
                line = (await asyncio.wait_for(self.process.stdout.readline(), START_TIMEOUT_S)).decode()
                if not line:
                    raise AssertionError(f"jikimi sim exited at start: {(await self.process.stderr.read()).decode()}")
                key, _, value = line.strip().partition(": ")
                self.facts.setdefault(key, value)
        except BaseException:
            await stop_process(self.process, STOP_TIMEOUT_S, signal.SIGINT)
            raise
        self._drain = asyncio.create_task(self.process.stdout.read())  # never let the pipe fill
        return self

    async def command(self, line: str) -> None:
        """A line typed on its standard input (start it with stdin=asyncio.subprocess.PIPE)."""
        assert self.process is not None and self.process.stdin is not None
        self.process.stdin.write(line.encode() + b"\n")
        await self.process.stdin.drain()

    async def __aexit__(self, *exc: object) -> None:
        assert self.process is not None
        await stop_process(self.process, STOP_TIMEOUT_S, signal.SIGINT)
        if self._drain is not None:
            await self._drain
