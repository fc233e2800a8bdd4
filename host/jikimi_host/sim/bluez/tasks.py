"""asyncio under a Bumble host stack: the fake's background tasks, kept and reaped, and a link
that dropped under an operation told apart from a cancellation of the caller."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Any

from bumble.core import BaseBumbleError

from jikimi_host.sim.bluez.dbus_api import BlueZError

logger = logging.getLogger(__name__)


class LinkLost(Exception):
    """The link dropped under a Bumble operation."""


def cancelling() -> bool:
    """True if this task itself is being cancelled (not an operation Bumble cancelled)."""
    task = asyncio.current_task()
    return task is not None and getattr(task, "cancelling", lambda: 1)() > 0


async def on_link(awaitable: Awaitable[Any]) -> Any:
    """Await a Bumble operation; Bumble cancels it when the link drops: that is LinkLost."""
    try:
        return await awaitable
    except asyncio.CancelledError:
        if cancelling():
            raise
        raise LinkLost() from None


class Tasks:
    """Background tasks (method calls being answered, browses, scanning changes): each one is
    kept until it ends, its failure logged unless expected, and all are cancelled on close."""

    def __init__(self) -> None:
        self._running: set[asyncio.Task] = set()

    def spawn(self, coroutine: Awaitable[Any]) -> asyncio.Task:
        task = asyncio.ensure_future(coroutine)
        self._running.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task) -> None:
        self._running.discard(task)
        error = None if task.cancelled() else task.exception()  # retrieved: a lost link is expected
        if error is not None and not isinstance(error, (LinkLost, BlueZError, BaseBumbleError)):
            logger.error("background task failed", exc_info=error)

    async def cancel_all(self) -> None:
        for task in list(self._running):
            task.cancel()
        await asyncio.gather(*self._running, return_exceptions=True)
