"""Firmware on a virtual board, for tests and benchmarks: deploy it with a config, follow its
structured log (`J {json}` console lines), and play the phone's side of the protocol (enough to
pair, receive and command; the full phone is jikimi_host.relay)."""

from __future__ import annotations

import json

from jikimi import protocol as p

from jikimi_host.device.log_line import parse_log_line
from jikimi_host.sim.board import VirtualBoard
from jikimi_host.sim.hands import console_tail, hold_button_through_power_up
from jikimi_host.sim.phone import Phone
from jikimi_host.sim.radio import VirtualRadio
from jikimi_host.sim.run import deploy_firmware
from jikimi_host.wait import until

PASSKEY = 493817
CONFIG = {
    "passkey": str(PASSKEY), "board": "sim", "roles": ["panic"],
    # shorter gestures so that a test pairs in seconds: hold 1 s alarms, held at power-up 3 s pairs
    "gestures": {"hold_ms": 1000, "pairing_hold_ms": 3000},
    "power": {"idle_sleep_s": 0},  # awake throughout; sleeping is tested in test_power.py
}


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


def records_since(board: VirtualBoard, mark: int, kind: str, **fields) -> list[dict]:
    """The structured log's records of `kind` after its first `mark` ones, with these fields."""
    return [record for record in log_records(board)[mark:]
            if record.get("k") == kind and all(record.get(k) == v for k, v in fields.items())]


async def expect_log(board: VirtualBoard, kind: str, timeout_s: float = 30.0, **fields) -> dict:
    def found() -> dict | None:
        records = records_since(board, 0, kind, **fields)
        return records[0] if records else None

    return await until(found, timeout_s, f"log {kind} {fields}", log=lambda: console_tail(board))


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
        self.events = await self.phone.characteristic(p.uuid(p.UUID_EVENTS))
        self.commands = await self.phone.characteristic(p.uuid(p.UUID_COMMANDS))
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
    found = await until(lambda: events_logged(board, prefix), timeout_s, f"event {prefix}",
                        log=lambda: console_tail(board))
    return found[0]
