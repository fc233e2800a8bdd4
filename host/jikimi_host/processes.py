"""Child processes the rig and the virtual board start, stopped for sure: SIGTERM, a grace
period, then SIGKILL."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

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


def _group_members(group: int) -> list[int]:
    """Live (non-zombie) processes of a process group."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # state, ppid, pgrp, ...
        if fields[0] != "Z" and int(fields[2]) == group:
            members.append(int(entry.name))
    return members


def _wait_group_empty(group: int, timeout_s: float) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while (members := _group_members(group)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return members


def stop_group(process: subprocess.Popen, grace_s: float = STOP_GRACE_S) -> list[int]:
    """Stop a process started with start_new_session and everything in its process group:
    SIGTERM, a grace period, then SIGKILL. Returns the pids of the group still alive after
    that (none, unless a process cannot be killed)."""
    group = process.pid
    if process.poll() is None:
        try:
            os.killpg(group, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            process.wait(grace_s)
        except subprocess.TimeoutExpired:
            pass
    if _wait_group_empty(group, grace_s):  # e.g. children the leader terminate()d, still exiting
        try:
            os.killpg(group, signal.SIGKILL)
        except ProcessLookupError:
            pass
    process.wait()
    return _wait_group_empty(group, grace_s)
