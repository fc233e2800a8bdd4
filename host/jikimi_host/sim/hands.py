"""A person's hands on a virtual board beyond a press: the owner's pairing gesture, the button held
through power-up until the board shows its pairing window (firmware/CORE.md, Pairing)."""

from __future__ import annotations

import asyncio
import json

from jikimi import config as device_config

from jikimi_host.sim.board import Output, VirtualBoard
from jikimi_host.wait import until

REACTION_S = 0.2  # the owner sees the LED and lets go (well inside pairing_grace_ms, >= 1 s)
POWER_UP_TIMEOUT_S = 30.0  # a cold start on a busy CI machine, on top of pairing_hold_ms


def configured(board: VirtualBoard, section: str, key: str) -> int:
    """A setting of the config.json on the board's flash, or the firmware's default."""
    try:
        value = json.loads((board.flash / "config.json").read_text(encoding="utf-8"))[section][key]
    except (OSError, ValueError, KeyError, TypeError):
        value = None
    return int(value) if isinstance(value, (int, float)) else int(device_config.default(section, key))


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

    `pairing_hold_ms` only lengthens the wait (the board's config decides the hold itself);
    None: the hold in the board's config.json, or the firmware's default.
    WaitTimeout, with the console's tail, if the signal does not come within
    pairing_hold_ms + `timeout_s`; AssertionError if the siren comes on instead or the board stops."""
    if pairing_hold_ms is None:
        pairing_hold_ms = configured(board, "gestures", "pairing_hold_ms")
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
                                 f"(the owner has let go); console:\n{console_tail(board)}")
        if stopped_at is not None and loop.time() - stopped_at > 1.0:
            raise AssertionError("the board stopped while the button was held at power-up "
                                 f"(the owner has let go); console:\n{console_tail(board)}")
        return None

    try:
        ready = await until(ready_to_let_go, (pairing_hold_ms or 0) / 1000 + timeout_s,
                            "the board to show it was ready to pair (LED on, buzzer silent) after power-up "
                            "(the owner has let go)", log=lambda: console_tail(board))
    except BaseException:
        board.release("button")
        raise
    await asyncio.sleep(REACTION_S)
    board.release("button")
    return ready


def console_tail(board: VirtualBoard) -> str:
    return board.console.tail() if board.console is not None else ""
