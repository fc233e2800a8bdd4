"""Child processes the rig and the virtual board start, stopped for sure: SIGTERM, a grace
period, then SIGKILL."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess

STOP_GRACE_S = 5.0


async def stop_process(process: asyncio.subprocess.Process, timeout_s: float = STOP_GRACE_S,
                       signum: int = signal.SIGTERM) -> int | None:
    """`signum` (SIGTERM; SIGINT is Ctrl-C), then SIGKILL if it has not exited within
    `timeout_s`; its exit status."""
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signum)
        try:
            await asyncio.wait_for(process.wait(), timeout_s)
        except asyncio.TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
    return process.returncode


def stop_popen(process: subprocess.Popen, timeout_s: float = STOP_GRACE_S) -> int:
    """`stop_process` for a process started with subprocess.Popen (blocking code)."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode
