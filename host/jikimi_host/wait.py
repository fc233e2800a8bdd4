"""Wait until something holds, with a timeout: the one way the rig and the virtual board wait.
On timeout a WaitTimeout names what was awaited and shows the tail of the log that would say why.

    await until(lambda: board.outputs, 10, "an output", log=board.console.tail)
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from jikimi_host.errors import WaitTimeout

T = TypeVar("T")

POLL_S = 0.02  # how often a condition is looked at when nothing announces a change
BLOCKING_POLL_S = 0.1  # the same for blocking code, which holds a thread while it waits

Condition = Callable[[], T | Awaitable[T]]
Log = Callable[[], str]
Hopeless = Callable[[], str | None]


def timeout_message(what: str, timeout_s: float, log: Log | None = None, reason: str = "") -> str:
    """What was awaited, for how long (or why waiting stopped early), and the log's tail."""
    message = f"gave up waiting for {what}: {reason}" if reason else f"timed out after {timeout_s:g} s waiting for {what}"
    tail = log() if log is not None else ""
    return f"{message}; the log ends:\n{tail}" if tail.strip() else message


def _describe(condition: Callable[..., object], what: str) -> str:
    return what or getattr(condition, "__qualname__", repr(condition))


async def until(condition: Condition[T], timeout_s: float = 30.0, what: str = "", *, log: Log | None = None,
                changed: asyncio.Event | None = None, hopeless: Hopeless | None = None,
                poll_s: float | None = None) -> T:
    """Wait until `condition()` (a function, or a coroutine function) returns something truthy;
    return that. WaitTimeout after `timeout_s`, or as soon as `hopeless()` gives a reason why it
    can no longer happen (the process that would do it exited).

    `changed`: an event set whenever the condition may have changed (new console output, a new
    record): the condition is looked at again then, and at least every `poll_s` if given, instead
    of every POLL_S. `log`: the tail of the log to show on failure."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        found = condition()
        if inspect.isawaitable(found):
            found = await found
        if found:
            return found  # type: ignore[return-value]
        reason = hopeless() if hopeless is not None else None
        left = deadline - loop.time()
        if reason or left <= 0:
            raise WaitTimeout(timeout_message(_describe(condition, what), timeout_s, log, reason or ""))
        if changed is None:
            await asyncio.sleep(min(left, poll_s or POLL_S))
        else:
            changed.clear()  # nothing ran since the condition was looked at: no change is missed
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(changed.wait(), min(left, poll_s) if poll_s else left)


def until_blocking(condition: Callable[[], T], timeout_s: float, what: str = "", *, log: Log | None = None,
                   hopeless: Hopeless | None = None, poll_s: float = BLOCKING_POLL_S) -> T:
    """`until` for blocking code (no event loop): the same rules, the same WaitTimeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = condition()
        if found:
            return found
        reason = hopeless() if hopeless is not None else None
        left = deadline - time.monotonic()
        if reason or left <= 0:
            raise WaitTimeout(timeout_message(_describe(condition, what), timeout_s, log, reason or ""))
        time.sleep(min(left, poll_s))
