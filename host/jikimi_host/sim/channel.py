"""Host end of the side channel to the device process (see boards/sim/simlink.py for the wire
format): JSON lines over one loopback TCP connection per boot."""

from __future__ import annotations

import asyncio
import errno
import json
import logging
from typing import Any, Awaitable, Callable

logger = logging.getLogger(__name__)

Handler = Callable[..., Awaitable[Any] | Any]


class ChannelClosed(ConnectionError):
    """The device process went away (power cut, reset, crash)."""


class DeviceError(OSError):
    """A call handler's way to make the device's call raise OSError(errno)."""


class Channel:
    """One boot's connection. `handlers[op](*args)` serve the device's calls and outputs."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 handlers: dict[str, Handler]) -> None:
        self.reader = reader
        self.writer = writer
        self.handlers = handlers
        self.closed = asyncio.get_running_loop().create_future()
        self._tasks: set[asyncio.Task] = set()

    def send(self, message: dict) -> None:
        if self.writer.is_closing():
            raise ChannelClosed("the device is not running")
        self.writer.write((json.dumps(message) + "\n").encode())

    async def serve(self) -> None:
        try:
            while True:
                line = await self.reader.readline()
                if not line:
                    break
                message = json.loads(line)
                if asyncio.iscoroutinefunction(self.handlers.get(message.get("op"))):
                    task = asyncio.create_task(self._handle(message))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
                else:  # plain handlers (outputs) run at once, in arrival order
                    await self._handle(message)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            if not self.closed.done():
                self.closed.set_result(None)
            self.writer.close()

    async def _handle(self, message: dict) -> None:
        op, args, ident = message.get("op"), message.get("args", []), message.get("id")
        handler = self.handlers.get(op)
        reply: dict[str, Any]
        try:
            if handler is None:
                raise DeviceError(errno.EOPNOTSUPP, f"no such virtual board operation {op!r}")
            result = handler(*args)
            if asyncio.iscoroutine(result):
                result = await result
            reply = {"ok": result}
        except DeviceError as err:
            reply = {"error": [err.errno, err.strerror]}
        except Exception as err:  # a bug in the host half must not hang the device
            logger.exception("virtual board: %s%r failed", op, tuple(args))
            reply = {"error": [errno.EIO, repr(err)]}
        if ident is not None and not self.writer.is_closing():
            self.send({"re": ident, **reply})
