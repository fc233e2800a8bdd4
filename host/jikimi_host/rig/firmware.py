"""Firmware on a virtual board, for tests and benchmarks: deploy it with a config, follow its
structured log (`J {json}` console lines), and play the phone's side of the protocol (enough to
pair, receive and command; the full phone is jikimi_host.relay)."""

from __future__ import annotations

import asyncio
import json
from typing import Any, Callable

from jikimi import protocol as p

from jikimi_host.monitor import parse_log_line
from jikimi_host.sim.board import VirtualBoard
from jikimi_host.sim.phone import Phone
from jikimi_host.sim.radio import VirtualRadio
from jikimi_host.sim.run import deploy_firmware

PASSKEY = 493817
CONFIG = {
    "passkey": str(PASSKEY), "board": "sim", "roles": ["panic"],
    # shorter gestures so that a test pairs in seconds: hold 1 s alarms, held at power-up 3 s pairs
    "gestures": {"hold_ms": 1000, "pairing_hold_ms": 3000},
    "power": {"idle_sleep_s": 0},  # awake throughout; sleeping is tested in test_power.py
}


async def until(condition: Callable[[], Any], timeout_s: float = 30.0, what: str = "") -> Any:
    """Wait until `condition()` is truthy; return that value (AssertionError on timeout)."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not (found := condition()):
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what or condition}")
        await asyncio.sleep(0.02)
    return found


async def hold_button_through_power_up(board: VirtualBoard, pairing_hold_ms: int) -> None:
    """The owner's pairing gesture: power up with the button held, let go after pairing_hold_ms."""
    board.set_pin("button", board.active_level("button"))
    await board.start()
    await asyncio.sleep(pairing_hold_ms / 1000 + 0.3)
    board.release("button")


def timed_log_records(board: VirtualBoard) -> list[tuple[float, dict]]:
    """(time.monotonic() when printed, record) of each structured log line ("J {json}")."""
    if board.console is None:
        return []
    out = []
    for at, line in board.console.lines:
        record = parse_log_line(line)
        if record is not None:
            out.append((at, record))
    return out


def log_records(board: VirtualBoard) -> list[dict]:
    """The app's structured log: one JSON object per console line starting with "J "."""
    return [record for _, record in timed_log_records(board)]


async def expect_log(board: VirtualBoard, kind: str, timeout_s: float = 30.0, **fields) -> dict:
    def found() -> dict | None:
        for record in log_records(board):
            if record.get("k") == kind and all(record.get(k) == v for k, v in fields.items()):
                return record
        return None

    await until(lambda: found() is not None, timeout_s, f"log {kind} {fields}\n{board.console.tail()}")
    return found()


async def firmware_board(folder, radio, config: dict):
    """A virtual board with the firmware and `config` on its flash; stopped afterwards."""
    board = VirtualBoard(folder, radio=radio)
    deploy_firmware(board)
    board.deploy({"config.json": json.dumps(config)})
    try:
        yield board
    finally:
        await board.stop()


class PhoneApp:
    """The phone's side of the protocol, enough for these tests (the relay is issue 6)."""

    def __init__(self, phone: Phone) -> None:
        self.phone = phone
        self.frames: list[p.Message] = []
        self.counter = 0

    async def open(self) -> None:
        self.events = await self.phone.characteristic(p.EVENTS_UUID)
        self.commands = await self.phone.characteristic(p.COMMANDS_UUID)
        await self.phone.subscribe(self.events, lambda value: self.frames.append(p.decode(value)))

    async def send(self, kind: int, **fields: int) -> bytes:
        self.counter += 1
        frame = p.encode(p.Message(kind, counter=self.counter, **fields))
        await self.commands.write_value(frame, with_response=True)
        return frame

    def of(self, kind: int) -> list[p.Message]:
        return [m for m in self.frames if m.type == kind]


async def pair_at_power_up(bell: VirtualBoard, radio: VirtualRadio) -> PhoneApp:
    await hold_button_through_power_up(bell, CONFIG["gestures"]["pairing_hold_ms"])
    await expect_log(bell, "core", msg="pairing open")
    phone = await Phone(radio).start()
    await phone.connect(bell.ble.on_air_address)
    await phone.pair(PASSKEY)
    await expect_log(bell, "ble", msg="secure", authenticated=1, bonded=1)
    app = PhoneApp(phone)
    await app.open()
    return app


def events_in(records: list[dict], prefix: str = "") -> list[str]:
    """The core's "event ..." log lines (journaled events) that start with "event <prefix>"."""
    return [r["msg"] for r in records if r.get("k") == "core" and r.get("msg", "").startswith("event " + prefix)]


def events_logged(board: VirtualBoard, prefix: str = "") -> list[str]:
    return events_in(log_records(board), prefix)


async def expect_event(board: VirtualBoard, prefix: str, timeout_s: float = 30.0) -> str:
    await until(lambda: events_logged(board, prefix), timeout_s, f"event {prefix}\n{board.console.tail()}")
    return events_logged(board, prefix)[0]
