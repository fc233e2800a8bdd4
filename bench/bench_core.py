"""Firmware core figures: compiled .mpy size per module, and MicroPython's live heap over a
long, busy simulated day of the device core, with CPython's time per step beside it.

    .venv/bin/python bench/bench_core.py [--hours N]

The heap figures come from the Unix port (64-bit: pointers and small objects take about twice
what they take on the 32-bit ESP32), importing the compiled .mpy files as the device does.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from jikimi_host.toolchain.compiler import build, device_sources
from jikimi_host.toolchain.interpreter import run_micropython
from jikimi_host.paths import FIRMWARE_DIR

HERE = Path(__file__).parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hours", type=int, default=24, help="simulated hours (default 24)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "image"
        report = build(device_sources([FIRMWARE_DIR / "jikimi"]), out_dir=out)
        assert report.ok, report.errors
        print("compiled firmware package (mpy-cross):")
        for name, size in sorted(report.outputs.items(), key=lambda item: -item[1]):
            print(f"  {size:7d}  {name}")
        core = sum(s for n, s in report.outputs.items() if not n.endswith("protocol.mpy"))
        print(f"  {core:7d}  core without the protocol codec")
        print(f"  {report.total_bytes:7d}  total")

        flash_mpy = Path(tmp) / "flash-mpy"
        flash_cpy = Path(tmp) / "flash-cpy"
        flash_mpy.mkdir()
        flash_cpy.mkdir()
        mpy = json.loads(
            run_micropython(
                script=HERE / "core_long_run.py",
                args=[str(flash_mpy), str(args.hours)],
                path=[out / "firmware"],
                timeout_s=900,
            ).check().stdout
        )
        cpy = json.loads(
            subprocess.run(
                [sys.executable, str(HERE / "core_long_run.py"), str(flash_cpy), str(args.hours)],
                capture_output=True, text=True, check=True, timeout=900,
            ).stdout
        )

    print(f"\nlong run: {args.hours} simulated hours, {mpy['steps']} steps, {mpy['events']} events "
          "(presses with bounce, alarms, door cycles, arm/disarm, battery, acks)")
    print("MicroPython live heap (gc.collect() then gc.mem_alloc()):")
    print(f"  {mpy['heap_imported'] - mpy['heap_start']:7d} bytes  taken by importing the core")
    print(f"  {mpy['heap_booted'] - mpy['heap_imported']:7d} bytes  taken by one Device (all roles)")
    print(f"  {mpy['heap_peak']:7d} bytes  high-water mark over the run "
          f"({mpy['heap_peak'] - mpy['heap_booted']:+d} over the heap right after boot)")
    print(f"time per step: MicroPython {mpy['us_per_step']:.1f} us, CPython {cpy['us_per_step']:.1f} us "
          "(Unix port on this host; each runtime draws its own random day)")


if __name__ == "__main__":
    main()
