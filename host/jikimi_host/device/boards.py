"""The board registry: one folder per board under boards/, whose board.py (chip, pin map, power
figures, the heap its chip starts with) is read here, once, for every tool: `jikimi flash`, the
battery model, the virtual board and the rig."""

from __future__ import annotations

import functools
import runpy
from dataclasses import dataclass
from pathlib import Path

from jikimi_host.errors import UsageError
from jikimi_host.paths import BOARDS_DIR

PinMap = dict[str, tuple[int, int, "str | None"]]


@dataclass(frozen=True)
class Board:
    name: str
    folder: Path
    chip: str  # esptool's name for it: esp32, esp32c3, esp32s3
    pins: PinMap  # name -> (GPIO, active level, pull)
    battery_divider: float
    power: dict[str, float]  # `jikimi battery-life`'s figures (firmware/POWER.md)
    heap_bytes: int  # the GC heap MicroPython starts with on this chip (GC_HEAP_BYTES)


def known_boards() -> list[str]:
    return sorted(p.parent.name for p in BOARDS_DIR.glob("*/board.py"))


def board_dir(name: str) -> Path:
    if name not in known_boards():
        raise UsageError(f"unknown board {name!r}; known boards: {', '.join(known_boards())}")
    return BOARDS_DIR / name


@functools.lru_cache(maxsize=None)
def load_board(name: str) -> Board:
    """The board's facts from its board.py (CPython runs it: it is plain assignments)."""
    folder = board_dir(name)
    facts = runpy.run_path(str(folder / "board.py"))
    missing = [key for key in ("CHIP", "PINS", "BATTERY_DIVIDER", "POWER", "GC_HEAP_BYTES") if not facts.get(key)]
    if missing:
        raise UsageError(f"boards/{name}/board.py has no {', '.join(missing)}")
    return Board(name, folder, str(facts["CHIP"]), dict(facts["PINS"]), facts["BATTERY_DIVIDER"],
                 dict(facts["POWER"]), int(facts["GC_HEAP_BYTES"]))


def board_heap_bytes(name: str) -> int:
    """The GC heap the board's chip starts MicroPython with (GC_HEAP_BYTES in its board.py)."""
    return load_board(name).heap_bytes


# The smallest GC heap the .mpy files `jikimi flash` copies get through boot and the budget's run
# in every time. bench/bench_heap.py's "smallest heap mpy runs in" bisects once, in 2 KiB steps,
# and may find 2 KiB less: whether a run gets through at the edge turns on how the heap is cut
# up. Counted over many runs on 2026-12-07 (the budget's run, three boards at a time): 24 of 24
# got through in 56 KiB, 12 of 12 in 55, 4 to 12 of 12 in 54 (the edge), none in 53 (boot).
# tests/test_heap_budget.py's xfail on the ESP32 is keyed on it.
MPY_SMALLEST_HEAP_BYTES = 56 * 1024
# What a heap should have over that before the .mpy files count as fitting a chip: a bell's heap
# also holds what a run here does not (more bonded phones, a longer journal).
MPY_ROOM_BYTES = 8 * 1024


def mpy_fits(board: str) -> bool:
    """Whether the .mpy files run in the heap the board's chip starts with, with room to spare."""
    return board_heap_bytes(board) >= MPY_SMALLEST_HEAP_BYTES + MPY_ROOM_BYTES


def heap_warning(board: str) -> str | None:
    """What `jikimi flash` must say before it copies .mpy files that need all of the heap the
    board's chip starts with, or more (None: they fit with room to spare)."""
    if mpy_fits(board):
        return None
    heap_kib, needed_kib = board_heap_bytes(board) // 1024, MPY_SMALLEST_HEAP_BYTES // 1024
    if heap_kib < needed_kib:
        fit = (f"does not fit the {heap_kib} KiB heap that {board}'s chip starts MicroPython with: it needs "
               f"about {needed_kib} KiB, so the heap must grow, into RAM its Bluetooth stack needs")
    else:
        fit = (f"needs about {needed_kib} KiB of the {heap_kib} KiB heap that {board}'s chip starts "
               "MicroPython with, with little room to spare")
    return (f"warning: as .mpy files (what flash copies) the firmware {fit} (measured: bench/bench_heap.py). "
            "For a bell that is relied on, freeze the firmware into your MicroPython build instead (README: "
            "\"The heap budget and the frozen image\").")

