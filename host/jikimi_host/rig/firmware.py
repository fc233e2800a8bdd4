"""Firmware on a virtual board, for tests and benchmarks: deploy it with a config, follow its
structured log (`J {json}` console lines), and play the phone's side of the protocol (enough to
pair, receive and command; the full phone is jikimi_host.relay)."""

from __future__ import annotations

import asyncio
import json

from jikimi import protocol as p

from jikimi_host.device.log_line import parse_log_line
from jikimi_host.sim.board import Output, VirtualBoard
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


REACTION_S = 0.2  # the owner sees the LED and lets go (well inside pairing_grace_ms, >= 1 s)
POWER_UP_TIMEOUT_S = 30.0  # a cold start on a busy CI machine, on top of pairing_hold_ms


def _sounding(output: Output, buzzer: int) -> bool:
    return output.pin == buzzer and output.freq is not None and bool(output.value)


def pairing_ready_since(board: VirtualBoard, start: int = 0) -> Output | None:
    """The LED coming on with the buzzer silent, in board.outputs[start:]: the firmware's "let go
    now" (siren pattern PAIRING while `gestures.pairing_ready`), or None while it has not."""
    led, buzzer = board.pin("led"), board.pin("buzzer")
    on = board.active_level("led")
    for output in board.outputs[start:]:
        if _sounding(output, buzzer):
            return None  # the siren: this power-up did not end in the pairing gesture
        if output.pin == led and output.freq is None and output.value == on:
            return output
    return None


async def hold_button_through_power_up(board: VirtualBoard, pairing_hold_ms: int | None = None,
                                       timeout_s: float = POWER_UP_TIMEOUT_S) -> Output:
    """The owner's pairing gesture: power up with the button held; let go when the board shows
    that the hold is long enough (its LED comes on, silently, `pairing_hold_ms` after the app
    started), after a person's reaction time. Never a fixed guess of when the app came up: a
    board that boots late still sees the whole hold. Returns the LED output it reacted to.

    `pairing_hold_ms` only lengthens the wait (the board's config decides the hold itself).
    WaitTimeout, with the console's tail, if the signal does not come within
    pairing_hold_ms + `timeout_s`; AssertionError if the siren comes on instead or the board stops."""
    board.set_pin("button", board.active_level("button"))
    mark = len(board.outputs)
    await board.start()
    loop = asyncio.get_running_loop()
    buzzer = board.pin("buzzer")
    stopped_at: float | None = None  # a reset the device asks for stops it for a moment; a crash for good

    def ready_to_let_go() -> Output | None:
        """The LED, once it comes; AssertionError if the board will never show it."""
        nonlocal stopped_at
        if (ready := pairing_ready_since(board, mark)) is not None:
            return ready
        stopped_at = None if board.running or board.asleep else (stopped_at or loop.time())
        if any(_sounding(o, buzzer) for o in board.outputs[mark:]):
            raise AssertionError("the siren came on while the button was held at power-up "
                                 f"(the owner has let go); console:\n{_console_tail(board)}")
        if stopped_at is not None and loop.time() - stopped_at > 1.0:
            raise AssertionError("the board stopped while the button was held at power-up "
                                 f"(the owner has let go); console:\n{_console_tail(board)}")
        return None

    try:
        ready = await until(ready_to_let_go, (pairing_hold_ms or 0) / 1000 + timeout_s,
                            "the board to show it was ready to pair (LED on, buzzer silent) after power-up "
                            "(the owner has let go)", log=lambda: _console_tail(board))
    except BaseException:
        board.release("button")
        raise
    await asyncio.sleep(REACTION_S)
    board.release("button")
    return ready


def _console_tail(board: VirtualBoard) -> str:
    return board.console.tail() if board.console is not None else ""


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

    return await until(found, timeout_s, f"log {kind} {fields}", log=lambda: _console_tail(board))


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
    found = await until(lambda: events_logged(board, prefix), timeout_s, f"event {prefix}",
                        log=lambda: _console_tail(board))
    return found[0]
