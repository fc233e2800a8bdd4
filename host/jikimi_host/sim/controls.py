"""A person's hands on the virtual bench, as text commands: `jikimi sim` reads them on its
standard input and on its control socket, one per line, and answers each with what the device
did (its log's events, the siren and the LED), read from the same board the tests drive.

    press [INPUT] [S]   press and let go (default: the button, 0.15 s)
    hold S              hold the button S seconds, then let go
    down [INPUT]        press and keep pressed        release [INPUT]   let go
    double | triple     two or three quick presses
    pairing             power-up with the button held until the board shows its pairing window
    open | close        the door (the door alarm's reed contact)
    pull | insert       the pull-pin's ring out or back in
    battery MV          the battery's voltage        power-cut | boot | reset
    status              running or not, siren, LED, the last events        help

A command may start with the board's name (`bell hold 3`, `door open`); without one, door and
pull-pin commands go to the board that has that input in use (the door alarm for open/close when
there is one), the rest to the bell.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from jikimi_host.device.log_line import parse_log_line
from jikimi_host.errors import WaitTimeout
from jikimi_host.sim.board import VirtualBoard
from jikimi_host.sim.hands import hold_button_through_power_up
from jikimi_host.wait import until

PRESS_S = 0.15  # a deliberate short press
MULTI_GAP_S = 0.15  # between the presses of a double or triple press (inside multi_window_ms)
SETTLE_S = 0.6  # the device is taken to be done once nothing new came for this long
SETTLE_MAX_S = 4.0  # and an answer never waits longer than this for more
BOOT_S = 30.0  # `boot`, `reset`: the answer waits this long at most for the firmware to be up
MAX_HOLD_S = 600.0
MV_RANGE = (2000, 5000)
# log kinds worth an answer line (the app's `log` kinds: app.py)
REPORTED_KINDS = ("core", "ble", "boot", "ready", "config_error", "task_error", "task_hung")
INPUTS = ("button", "reed", "pull_pin", "tamper")
PowerOn = Callable[[], Awaitable[object]]


class ControlError(ValueError):
    """A command that cannot be run as written; the message says what it takes."""


@dataclass
class Answer:
    command: str
    board: str
    ok: bool = True
    did: list[str] = field(default_factory=list)  # what the device did, in order
    error: str | None = None

    def text(self) -> str:
        if not self.ok:
            return f"error: {self.error}"
        return f"{self.board}: " + ("; ".join(self.did) if self.did else "(nothing)")

    def json(self) -> str:
        return json.dumps({"command": self.command, "board": self.board, "ok": self.ok, "did": self.did,
                           "error": self.error}, ensure_ascii=False)


@dataclass
class BenchBoard:
    """One board on the bench and how it is powered on (the script and arguments it boots)."""

    name: str
    board: VirtualBoard
    power_on: PowerOn
    roles: tuple[str, ...] = ("panic",)


class Bench:
    """Runs one command at a time (a person has two hands, the answer must be about this one)."""

    def __init__(self, boards: list[BenchBoard]) -> None:
        if not boards:
            raise ValueError("a bench needs a board")
        self.boards = {entry.name: entry for entry in boards}
        self._lock = asyncio.Lock()

    async def run(self, line: str) -> Answer:
        words = line.split()
        if not words:
            return Answer(line, "", ok=False, error="empty command; `help` lists the commands")
        async with self._lock:
            try:
                entry, words = self._target(words)
                return await self._run(entry, words, line.strip())
            except ControlError as error:
                return Answer(line.strip(), "", ok=False, error=str(error))

    def _target(self, words: list[str]) -> tuple[BenchBoard, list[str]]:
        if words[0] in self.boards:
            if len(words) == 1:
                raise ControlError(f"{words[0]}: and then what? `help` lists the commands")
            return self.boards[words[0]], words[1:]
        command = words[0]
        wants = {"open": "door", "close": "door", "pull": "pull_pin", "insert": "pull_pin"}.get(command)
        if wants is not None:
            for entry in self.boards.values():
                if wants in entry.roles:
                    return entry, words
        return next(iter(self.boards.values())), words

    async def _run(self, entry: BenchBoard, words: list[str], line: str) -> Answer:
        board, command, args = entry.board, words[0], words[1:]
        answer = Answer(line, entry.name)
        if command == "help":
            answer.did = [__doc__.split("\n\n")[1].strip()]
            return answer
        if command == "status":
            answer.did = self.status(entry)
            return answer
        mark_lines, mark_outputs = self._marks(board)
        if command in ("press", "down", "release"):
            name = _input(args[0]) if args else "button"
            if command == "press":
                seconds = _seconds(args[1], "press") if len(args) > 1 else PRESS_S
                self._needs_power(entry)
                await board.press(name, hold_s=seconds)
            elif command == "down":
                self._needs_power(entry)
                await board.press(name)
            else:
                board.release(name)
        elif command == "hold":
            _arity(args, 1, "hold S")
            self._needs_power(entry)
            await board.press("button", hold_s=_seconds(args[0], "hold"))
        elif command in ("double", "triple"):
            self._needs_power(entry)
            for i in range(2 if command == "double" else 3):
                if i:
                    await asyncio.sleep(MULTI_GAP_S)
                await board.press("button", hold_s=0.12)
        elif command == "pairing":
            if board.running:
                await board.power_cut()
            await hold_button_through_power_up(board)
        elif command in ("open", "close", "pull", "insert"):
            name = "reed" if command in ("open", "close") else "pull_pin"
            self._needs_power(entry)
            if command in ("open", "pull"):
                await board.press(name)
            else:
                board.release(name)
        elif command == "battery":
            _arity(args, 1, "battery MV")
            board.set_battery_mv(_number(args[0], "battery MV", *MV_RANGE, integer=True))
        elif command == "power-cut":
            if not board.running:
                raise ControlError(f"{entry.name} is off already: `boot` powers it on")
            await board.power_cut()
        elif command == "boot":
            if board.running:
                raise ControlError(f"{entry.name} is running: `reset` restarts it, `power-cut` turns it off")
            await entry.power_on()
            await self._up(board, mark_lines)
        elif command == "reset":
            if board.running:
                await board.reset()
            else:
                await entry.power_on()
            await self._up(board, mark_lines)
        else:
            raise ControlError(f"unknown command {command!r}; `help` lists the commands")
        answer.did = await self.what_it_did(board, mark_lines, mark_outputs)
        return answer

    def _needs_power(self, entry: BenchBoard) -> None:
        if not entry.board.running and not entry.board.asleep:
            raise ControlError(f"{entry.name} is off: `boot` it first (or `pairing` to power it up held)")

    @staticmethod
    async def _up(board: VirtualBoard, mark_lines: int) -> None:
        """Until the firmware says it is ready, or fails (a traceback, its process gone): its
        imports can take longer than the settling pause on a loaded machine."""
        def up() -> bool:
            lines = board.console.lines[mark_lines:] if board.console is not None else []
            return not board.running or any(
                line.startswith("Traceback") or (parse_log_line(line) or {}).get("k") == "ready" for _, line in lines)

        try:
            await until(up, BOOT_S, "the board to be ready")
        except WaitTimeout as error:
            raise ControlError(str(error)) from None

    @staticmethod
    def _marks(board: VirtualBoard) -> tuple[int, int]:
        return (len(board.console.lines) if board.console is not None else 0), len(board.outputs)

    async def what_it_did(self, board: VirtualBoard, mark_lines: int, mark_outputs: int) -> list[str]:
        """The device's log events and output changes since the marks, once it has settled."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + SETTLE_MAX_S
        seen = self._marks(board)
        quiet_since = loop.time()
        while loop.time() < give_up and loop.time() - quiet_since < SETTLE_S:
            await asyncio.sleep(0.05)
            now = self._marks(board)
            if now != seen:
                seen, quiet_since = now, loop.time()
        return describe(board, mark_lines, mark_outputs)

    def status(self, entry: BenchBoard) -> list[str]:
        state = board_state(entry.board)
        power = "asleep" if state["asleep"] else "running" if state["running"] else "off"
        siren = state["siren"]
        held = [name for name, active in state["inputs"].items() if active]
        events = [line for line in describe(entry.board, 0, len(entry.board.outputs)) if line.startswith("event ")][-3:]
        return [power, f"siren {'on at ' + str(siren['hz']) + ' Hz' if siren else 'off'}",
                f"LED {'on' if state['led'] else 'off'}", "active: " + (", ".join(held) if held else "none"),
                *(["last events: " + " | ".join(events)] if events else [])]


def board_state(board: VirtualBoard) -> dict[str, Any]:
    """What a person sees of a board: power, the siren's frequency and duty as the firmware set
    the PWM, the LED, which inputs are active, the battery's voltage."""
    siren = board.last_pwm("buzzer")
    sounding = siren if siren is not None and siren.value else None
    return {
        "running": board.running, "asleep": board.asleep,
        "siren": None if sounding is None else {"hz": sounding.freq, "duty": sounding.value},
        "led": board.level("led") == board.active_level("led"),
        "inputs": {name: board.levels.get(board.pin(name)) == board.active_level(name) for name in INPUTS},
        "battery_mv": round(board.adc_uv.get(board.pin("battery"), 0) * board.battery_divider / 1000),
    }


def describe(board: VirtualBoard, mark_lines: int, mark_outputs: int) -> list[str]:
    """What a board did since the marks, as a person would tell it: its log's events (the core's
    words), then the siren (on, its frequency range; off) and the LED (on, off)."""
    did: list[str] = []
    lines = board.console.lines[mark_lines:] if board.console is not None else []
    for _, line in lines:
        record = parse_log_line(line)
        if record is None:
            if line.startswith("Traceback"):
                did.append("a traceback on the console (see its log)")
            continue
        if record.get("k") in REPORTED_KINDS:
            did.append(str(record.get("msg") or record.get("k")))
    buzzer, led, led_on = board.pin("buzzer"), board.pin("led"), board.active_level("led")
    sweep: list[int] = []
    for output in board.outputs[mark_outputs:]:
        if output.pin == buzzer and output.freq is not None:
            if output.value:
                sweep.append(output.freq)
            elif sweep:
                did.append(_siren(sweep) + ", then off")
                sweep = []
            else:
                did.append("siren off")
        elif output.pin == led and output.freq is None:
            did.append("LED on" if output.value == led_on else "LED off")
    if sweep:
        did.append(_siren(sweep))
    return _squash(did)


def _siren(freqs: list[int]) -> str:
    low, high = min(freqs), max(freqs)
    return f"siren on at {low} Hz" if low == high else f"siren on, {low}-{high} Hz"


def _squash(lines: list[str]) -> list[str]:
    """Runs of one line (an LED blinking) said once, with a count."""
    out: list[tuple[str, int]] = []
    for line in lines:
        if out and out[-1][0] == line:
            out[-1] = (line, out[-1][1] + 1)
        else:
            out.append((line, 1))
    return [line if count == 1 else f"{line} (x{count})" for line, count in out]


def _input(word: str) -> str:
    names = {"door": "reed", "reed": "reed", "button": "button", "pull_pin": "pull_pin", "pin": "pull_pin",
             "tamper": "tamper", "lid": "tamper"}
    if word not in names:
        raise ControlError(f"no input {word!r}; inputs: button, door, pull_pin, tamper")
    return names[word]


def _arity(args: list[str], count: int, usage: str) -> None:
    if len(args) != count:
        raise ControlError(f"usage: {usage}")


def _number(word: str, what: str, low: float, high: float, integer: bool = False) -> float:
    try:
        value = int(word) if integer else float(word)
    except ValueError:
        raise ControlError(f"{what}: must be a number, got {word!r}") from None
    if not math.isfinite(value) or not low <= value <= high:
        raise ControlError(f"{what}: must be {low:g} to {high:g}, got {word}")
    return value


def _seconds(word: str, what: str) -> float:
    return _number(word, f"{what}: seconds", 0.02, MAX_HOLD_S)


async def serve_lines(bench: Bench, reader: asyncio.StreamReader, write: Callable[[str], Awaitable[None]],
                      as_json: bool) -> None:
    """Each line from `reader` run on the bench, its answer written back, until end of input."""
    while line := await reader.readline():
        text = line.decode(errors="replace").strip()
        if not text or text.startswith("#"):
            continue
        started = time.monotonic()
        answer = await bench.run(text)
        if as_json:
            await write(answer.json() + "\n")
        else:
            await write(f"{answer.text()}  [{time.monotonic() - started:.1f} s]\n")
