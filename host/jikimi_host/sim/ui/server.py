"""The virtual bench in a browser: an aiohttp app on loopback that serves one page (bench.html,
no external assets) and a WebSocket. The socket streams each board's state (power, siren as the
firmware drives the PWM, LED, inputs, battery), its console lines and the relay's records, and
takes the page's hands: the button held with the mouse, the door, the pull-pin, the battery
slider, the power switch (sim/controls.py), and the owner's commands to the relay.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web

from jikimi_host.errors import UsageError
from jikimi_host.sim.controls import INPUTS, Bench, board_state

PAGE = Path(__file__).with_name("bench.html")
LOOPBACK = "127.0.0.1"  # the page drives a device and shows people's texts: never on the network
FRAME_S = 0.04  # state pushed at most this often (25 per second: a sweep looks like one)
HANDS = {"down", "release"}  # taken at once, not through the bench's one-command-at-a-time
RELAY_COMMANDS = ("cancel", "silence", "arm", "disarm", "locate", "status")


class RelayLike:
    """What the page needs of a relay process (rig/relay.py's RelayProcess): its records, and a
    way to type the owner's commands."""

    records: list[dict[str, Any]]

    async def command(self, line: str) -> None: ...


@dataclass
class Client:
    socket: web.WebSocketResponse
    console_sent: dict[str, int] = field(default_factory=dict)
    relay_sent: int = 0
    last_state: str = ""


class BenchUI:
    """Serve the page for `bench` (and `relay`, when one runs) on loopback until close()."""

    def __init__(self, bench: Bench, relay: RelayLike | None = None, port: int = 0,
                 device_names: dict[str, str] | None = None) -> None:
        self.bench = bench
        self.relay = relay
        self.port = port
        self.device_names = device_names or {}  # board -> the relay's name for it (비상벨)
        self.clients: list[Client] = []
        self._runner: web.AppRunner | None = None
        self._pusher: asyncio.Task | None = None

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}/"

    async def start(self) -> str:
        app = web.Application()
        app.router.add_get("/", self._page)
        app.router.add_get("/ws", self._socket)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, LOOPBACK, self.port)
        try:
            await site.start()
        except OSError as err:
            await self._runner.cleanup()
            raise UsageError(f"cannot serve the bench page on {LOOPBACK}:{self.port}: {err.strerror}") from None
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._pusher = asyncio.create_task(self._push())
        return self.url

    async def close(self) -> None:
        if self._pusher is not None:
            self._pusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pusher
        for client in list(self.clients):
            with contextlib.suppress(Exception):
                await client.socket.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _page(self, request: web.Request) -> web.Response:
        return web.Response(text=PAGE.read_text(encoding="utf-8"), content_type="text/html", charset="utf-8")

    def hello(self) -> dict[str, Any]:
        return {"type": "hello",
                "boards": [{"name": entry.name, "roles": list(entry.roles),
                            "device": self.device_names.get(entry.name, entry.name)}
                           for entry in self.bench.boards.values()],
                "relay": self.relay is not None, "relay_commands": list(RELAY_COMMANDS)}

    async def _socket(self, request: web.Request) -> web.WebSocketResponse:
        socket = web.WebSocketResponse(heartbeat=20)
        await socket.prepare(request)
        client = Client(socket)
        self.clients.append(client)
        try:
            await socket.send_json(self.hello())
            await self._send_news(client)
            async for message in socket:
                if message.type != WSMsgType.TEXT:
                    continue
                try:
                    reply = await self._take(json.loads(message.data))
                except (ValueError, KeyError, TypeError) as err:
                    reply = {"type": "answer", "ok": False, "error": f"the page sent what the bench cannot take: {err}"}
                if reply is not None:
                    await socket.send_json(reply)
        finally:
            self.clients.remove(client)
        return socket

    async def _take(self, message: dict[str, Any]) -> dict[str, Any] | None:
        if message["type"] == "hand":  # the button under the mouse: now, not after a settle
            board, action = self.bench.boards[message["board"]].board, message["action"]
            name = message.get("input", "button")
            if action not in HANDS or name not in INPUTS:
                raise ValueError(f"hand {action!r} on {name!r}")
            if action == "down":
                if not (board.running or board.asleep):
                    return {"type": "answer", "ok": False, "error": f"{message['board']} is off: power it on first",
                            "text": "", "did": [], "command": f"down {name}"}
                await board.press(name)
            else:
                board.release(name)
            return None
        if message["type"] == "command":
            answer = await self.bench.run(f"{message['board']} {message['line']}")
            return {"type": "answer", "ok": answer.ok, "text": answer.text(), "did": answer.did,
                    "error": answer.error, "command": answer.command}
        if message["type"] == "relay":
            command, device = message["command"], message["device"]
            if self.relay is None or command not in RELAY_COMMANDS:
                raise ValueError(f"relay command {command!r}")
            await self.relay.command(f"{command} {device}")
            return {"type": "answer", "ok": True, "text": f"owner: {command} {device}", "did": [], "error": None,
                    "command": f"{command} {device}"}
        raise ValueError(f"message type {message['type']!r}")

    async def _send_news(self, client: Client) -> None:
        state = {entry.name: board_state(entry.board) for entry in self.bench.boards.values()}
        state_text = json.dumps(state, sort_keys=True)
        console: dict[str, list[str]] = {}
        for entry in self.bench.boards.values():
            lines = entry.board.console.lines if entry.board.console is not None else []
            sent = client.console_sent.get(entry.name, 0)
            if len(lines) > sent:
                console[entry.name] = [line for _, line in lines[sent:]][-200:]
                client.console_sent[entry.name] = len(lines)
        records = self.relay.records[client.relay_sent:] if self.relay is not None else []
        client.relay_sent += len(records)
        if state_text == client.last_state and not console and not records:
            return
        client.last_state = state_text
        await client.socket.send_json({"type": "state", "at": time.monotonic(), "boards": state,
                                       "console": console, "relay": records})

    async def _push(self) -> None:
        while True:
            await asyncio.sleep(FRAME_S)
            for client in list(self.clients):
                with contextlib.suppress(ConnectionError, RuntimeError):
                    await self._send_news(client)


