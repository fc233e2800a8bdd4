"""The firmware's heap on the chip's word size, per board (issue 14): the app on the virtual board
under the 32-bit interpreter with a fixed heap, deployed as `.mpy` files (stock MicroPython) and
frozen, through boot and pairing, alarms with acks, link drops and reconnects, and a power cut
and reboot (jikimi_host.rig.heap_budget), then the core through a simulated day.

    .venv/bin/python bench/bench_heap.py [--alarms N] [--reconnects N] [--hours N]

Printed per deployment: the firmware's live heap after gc.collect() (high-water per phase) and
the smallest "largest free block" seen in the phase (fragmentation), with the rig's own modules
measured and taken off; the same `.mpy` run on the 64-bit interpreter is
the baseline the project's figures used to come from. "The rig's modules": the virtual board's
machine, esp32 and simlink (C on a chip) and the test console that reads the heap. Per board: the image's `.mpy` size and the
budget left in the heap its chip starts with. The firmware is the same on every board (only the
pin map, board.py, differs, by its own few hundred bytes), so the phases run once per deployment.
Heaps are given the ESP32's 56 KiB plus the virtual board's cost, or twice that when the
deployment does not fit (so that it can still be measured).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

from jikimi_host.deploy import build_image
from jikimi_host.micropython import find_micropython
from jikimi_host.rig import heap_budget as hb


def image_bytes(board: str, out: Path) -> int:
    image = build_image(board, out / board)
    return sum(file.size for file in image.files)


def print_run(title: str, run: hb.Run, budget: int) -> None:
    print(f"  {title}: given {run.heap_bytes} B (the rig's modules {run.rig_cost} B of it), "
          f"high-water {run.high_water()} B{'  OUT OF MEMORY' if run.out_of_memory else ''}")
    for phase, samples in run.by_phase().items():
        high = max(s.firmware(run.rig_cost) for s in samples)
        print(f"    {phase:28s} high-water {high:6d} B   largest free block {min(s.largest_free for s in samples):6d} B"
              f"   (n={len(samples)})")


async def measure(folder: Path, deployment: str, budget: int, args: argparse.Namespace,
                  binary: Path | None = None) -> hb.Run:
    run = await hb.run_phases(folder, deployment, budget, alarms=args.alarms,
                              reconnects=args.reconnects, binary=binary)
    if run.out_of_memory or run.high_water() > budget:  # measure it in a heap it fits
        run = await hb.run_phases(folder.with_name(folder.name + "-roomy"), deployment, 2 * budget,
                                  alarms=args.alarms, reconnects=args.reconnects, binary=binary)
    return run


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--alarms", type=int, default=100)
    parser.add_argument("--reconnects", type=int, default=10)
    parser.add_argument("--hours", type=int, default=24, help="the core's simulated day")
    args = parser.parse_args()
    esp32 = hb.board_heap_bytes("esp32_devkitc")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        print(f"Heap on the 32-bit interpreter, ESP32 budget {esp32} B ({args.alarms} alarms, "
              f"{args.reconnects} reconnects, a power cut)")
        runs = {}
        for deployment in hb.DEPLOYMENTS:
            runs[deployment] = await measure(root / deployment, deployment, esp32, args)
            print_run(deployment, runs[deployment], esp32)
        baseline = await measure(root / "mpy-64", "mpy", 4 * esp32, args, binary=find_micropython())
        print_run("mpy on the 64-bit interpreter (the old figures' basis)", baseline, 4 * esp32)
        saved = runs["mpy"].high_water() - runs["frozen"].high_water()
        print(f"  frozen saves {saved} B of heap over .mpy; 32-bit .mpy is "
              f"{runs['mpy'].high_water() / baseline.high_water():.2f}x the 64-bit figure")
        day = hb.core_soak(root / "soak", esp32, args.hours)
        print(f"  the core alone, {args.hours} simulated hours in {esp32} B: {day['steps']} steps, "
              f"high-water {day['heap_peak']} B")
        print("per board (image = .mpy files `jikimi flash` copies; budget left = heap - high-water):")
        for board in hb.REAL_BOARDS:
            heap = hb.board_heap_bytes(board)
            left = {name: heap - run.high_water() for name, run in runs.items()}
            print(f"  {board:14s} heap {heap:6d} B   image {image_bytes(board, root / 'images'):6d} B   "
                  f"left: .mpy {left['mpy']:+7d} B ({100 * left['mpy'] / heap:+.0f} %), "
                  f"frozen {left['frozen']:+7d} B ({100 * left['frozen'] / heap:+.0f} %)")


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
