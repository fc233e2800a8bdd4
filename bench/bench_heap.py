"""The firmware's heap on the chip's word size, per board (issue 14): the app on the virtual board
under the 32-bit interpreter with a fixed heap, deployed as `.mpy` files (stock MicroPython) and
frozen, through boot and pairing, alarms with acks, link drops and reconnects, and a power cut
and reboot (jikimi_host.rig.heap_budget), then the core through a simulated day.

    .venv/bin/python bench/bench_heap.py [--alarms N] [--reconnects N] [--hours N] [--step KIB]

Printed per deployment: the firmware's live heap after gc.collect() (high-water per phase) and
the smallest "largest free block" seen in the phase (fragmentation), with the rig's own modules
and its side channel measured and taken off, and the names interned in RAM (qstrs: every name of
a `.mpy` file is; the pools double, and the sixth, 4.6 KB, comes with the 621st name); the same
`.mpy` run on the 64-bit interpreter is the baseline the project's figures used to come from.
"The rig's modules": the virtual board's machine, esp32 and simlink (C on a chip, frozen into the 32-bit
interpreters as a chip has them in flash; the heap is read through simlink, so the firmware's
test console stays off); its "side channel": simlink's link to the host, open and running
(sockets, a reader thread, a task; a chip has none). Per board: the image's `.mpy` size and the
budget left in the heap its chip starts with. The firmware is the same on every board (only the
pin map, board.py, differs, by its own few hundred bytes), so the phases run once per deployment.
These runs get twice the ESP32's 56 KiB plus the rig's cost (room enough to measure what does
not fit), and once more as a bell has it, the `.mpy` files in the ESP32's own heap: got
through or ran out. Then the import of the firmware's `.mpy` files against its baseline, the same
sources compiled without folding their constants across modules (toolchain/constfold.py). Last, the smallest heap (in steps of --step KiB) in
which each deployment gets through boot, pairing, 3 alarms, a reconnect and a power cut with no
MemoryError: the figure the live heap cannot give, since loading and fragmentation need room on
top of what stays live.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import tempfile
from collections.abc import Awaitable
from pathlib import Path

from jikimi_host.device.boards import board_heap_bytes
from jikimi_host.device.image import build_image
from jikimi_host.errors import WaitTimeout
from jikimi_host.toolchain.interpreter import MicroPythonFailed, find_micropython
from jikimi_host.rig import heap_budget as hb


def image_bytes(board: str, out: Path) -> int:
    image = build_image(board, out / board)
    return sum(file.size for file in image.files)


def print_run(title: str, run: hb.Run, budget: int) -> None:
    print(f"  {title}: given {run.heap_bytes} B (the rig's {run.rig_cost} B of it: modules "
          f"{run.rig_modules} B, side channel {run.rig_side_channel} B), "
          f"high-water {run.high_water()} B, {run.qstrs()} names interned in RAM "
          f"(room for {hb.QSTRS_IN_FIVE_POOLS} in five pools){'  OUT OF MEMORY' if run.out_of_memory else ''}")
    for phase, samples in run.by_phase().items():
        high = max(s.firmware(run.rig_cost) for s in samples)
        print(f"    {phase:28s} high-water {high:6d} B   largest free block {min(s.largest_free for s in samples):6d} B"
              f"   (n={len(samples)})")


async def run_or_timeout(run: Awaitable[hb.Run]) -> hb.Run | None:
    """The run, or None if it never got through a phase (a heap too tight to boot, say)."""
    try:
        return await run
    except WaitTimeout:
        return None


async def smallest_heap(folder: Path, deployment: str, step_kib: int, ceiling: int) -> int | None:
    """Bisect, in steps of `step_kib` KiB, for the smallest firmware heap a short run gets through."""
    async def runs(kib: int) -> bool:
        run = await run_or_timeout(hb.run_phases(folder / f"{kib}k", deployment, kib * 1024, alarms=3, reconnects=1))
        return run is not None and not run.out_of_memory

    low, high = 1, ceiling // (1024 * step_kib)  # in steps; `high` must run
    if not await runs(high * step_kib):
        return None
    while low < high:
        middle = (low + high) // 2
        if await runs(middle * step_kib):
            high = middle
        else:
            low = middle + 1
    return high * step_kib * 1024


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--alarms", type=int, default=100)
    parser.add_argument("--reconnects", type=int, default=10)
    parser.add_argument("--hours", type=int, default=24, help="the core's simulated day")
    parser.add_argument("--step", type=int, default=2, help="KiB between the heaps tried (smallest heap)")
    args = parser.parse_args()
    # The phone's Bumble stack warns of each notification that reaches it before it has
    # subscribed again on a reconnect (the bell's gatts_notify sends regardless; PROTOCOL.md
    # 2.2): expected, and noise among the figures here.
    logging.getLogger("bumble").setLevel(logging.ERROR)
    esp32 = board_heap_bytes("esp32_devkitc")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        print(f"Heap on the 32-bit interpreter, ESP32 budget {esp32} B ({args.alarms} alarms, "
              f"{args.reconnects} reconnects, a power cut)")
        # Side by side, each board on a radio of its own: heap figures do not depend on the
        # timing, and the runs mostly wait on the radio and on held buttons.
        *results, baseline, in_esp32 = await asyncio.gather(
            *(hb.run_phases(root / deployment, deployment, 2 * esp32, alarms=args.alarms, reconnects=args.reconnects)
              for deployment in hb.DEPLOYMENTS),
            hb.run_phases(root / "mpy-64", "mpy", 4 * esp32, alarms=args.alarms, reconnects=args.reconnects,
                          binary=find_micropython()),
            # the same run as a bell has it: the .mpy files in the ESP32's own heap, the tightest board
            run_or_timeout(hb.run_phases(root / "mpy-esp32", "mpy", esp32, alarms=args.alarms,
                                         reconnects=args.reconnects)))
        runs = dict(zip(hb.DEPLOYMENTS, results))
        for deployment, run in runs.items():
            print_run(deployment, run, esp32)
        print_run("mpy on the 64-bit interpreter (the old figures' basis)", baseline, 4 * esp32)
        if in_esp32 is None or in_esp32.out_of_memory:
            why = "a phase never finished" if in_esp32 is None else in_esp32.out_of_memory[0][:160]
            print(f"  mpy in the ESP32's own {esp32} B, the same run: RAN OUT ({why})")
        else:
            print(f"  mpy in the ESP32's own {esp32} B, the same run: got through, high-water "
                  f"{in_esp32.high_water()} B, smallest largest-free-block "
                  f"{min(s.largest_free for s in in_esp32.samples)} B")
        saved = runs["mpy"].high_water() - runs["frozen"].high_water()
        print(f"  frozen saves {saved} B of heap over .mpy; 32-bit .mpy is "
              f"{runs['mpy'].high_water() / baseline.high_water():.2f}x the 64-bit figure")
        folded, as_written = hb.fold_saving_bytes(root / "fold")
        print(f"  importing the firmware's .mpy files (device, journal, bonds, door, link): {folded} B as "
              f"`jikimi build` makes them, {as_written} B compiled as written: folding the constants "
              f"across modules saves {as_written - folded} B")
        for deployment in hb.DEPLOYMENTS:
            try:
                day = hb.core_soak(root / f"soak-{deployment}", deployment, esp32, args.hours)
                print(f"  the core alone ({deployment}), {args.hours} simulated hours in {esp32} B: "
                      f"{day['steps']} steps, high-water {day['heap_peak']} B")
            except MicroPythonFailed as error:
                print(f"  the core alone ({deployment}) does not run in {esp32} B: "
                      f"{(error.result.stdout.strip().splitlines() or ['?'])[-1][:120]}")
        smallests: dict[str, int | None] = dict(zip(hb.DEPLOYMENTS, await asyncio.gather(*(
            smallest_heap(root / f"smallest-{deployment}", deployment, args.step, 4 * esp32)
            for deployment in hb.DEPLOYMENTS))))
        for deployment, smallest in smallests.items():
            print(f"  smallest heap {deployment} runs in: {smallest} B ({100 * smallest / esp32:.0f} % of the ESP32's)"
                  if smallest else f"  {deployment} does not run in {4 * esp32} B")
        print("per board (image = .mpy files `jikimi flash` copies; left = heap - live high-water; "
              "runs = the smallest heap above is within it):")
        for board in hb.REAL_BOARDS:
            heap = board_heap_bytes(board)
            cells = []
            for name, run in runs.items():
                left = heap - run.high_water()
                fits = smallests[name] is not None and smallests[name] <= heap
                cells.append(f"{name} left {left:+7d} B ({100 * left / heap:+.0f} %), runs: {'yes' if fits else 'NO'}")
            print(f"  {board:14s} heap {heap:6d} B   image {image_bytes(board, root / 'images'):6d} B   "
                  + ";  ".join(cells))


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
