"""The rig on labgrid (issue 16): the scenario suite's wall time on one local virtual board
against two labgrid places in parallel, and what the RFC 2217 console costs (a test-console
round trip, `status` and its answer, on the board's pty directly and through the exporter's
ser2net), on a loopback bench (jikimi_host.rig.labgrid_bench: a real coordinator and exporter).

    .venv/bin/python bench/bench_labgrid.py [--round-trips N] [--suite-k EXPR] [--places N]

The local run is the baseline for both: the suite with `--jikimi-target virtual` in one pytest
process (each scenario on a new virtual board, one after the other), and the console round
trips on the pty with nothing between.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from stats import pct

from jikimi_host.rig.labgrid import LabgridPlace
from jikimi_host.rig.labgrid_bench import LabgridBench
from jikimi_host.device.testconsole import TestConsoleClient

REPO = Path(__file__).resolve().parents[1]


def round_trips(port: str, count: int) -> list[float]:
    with TestConsoleClient(port) as console:
        console.command("status", 30)  # the first answer also waits for the console to open
        times = []
        for _ in range(count):
            started = time.perf_counter()
            console.command("status", 30)
            times.append((time.perf_counter() - started) * 1000)
    return times


def suite(args: list[str], env: dict[str, str], k: str | None) -> tuple[float, str]:
    command = [sys.executable, "-m", "pytest", str(REPO / "tests" / "test_hil_scenarios.py"), "-q", "-p",
               "no:cacheprovider", "-W", "ignore::DeprecationWarning", *(["-k", k] if k else []), *args]
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO, timeout=1800)
    wall = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(f"the suite failed ({' '.join(args)}):\n{done.stdout[-4000:]}")
    return wall, done.stdout.strip().splitlines()[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--round-trips", type=int, default=200)
    parser.add_argument("--suite-k", help="pytest -k for the suite runs (default: every scenario)")
    parser.add_argument("--places", type=int, default=2, help="labgrid places, one pytest worker each (default 2)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="jikimi-bench-labgrid-") as tmp:
        with LabgridBench(Path(tmp), [f"jikimi-{i}" for i in range(1, args.places + 1)]) as bench:
            local = round_trips(bench.consoles["jikimi-1"], args.round_trips)
            os.environ.update(bench.env)
            place = LabgridPlace("jikimi-1", identity="bench")
            place.acquire()
            try:
                remote = round_trips(place.resources().console_url, args.round_trips)
            finally:
                place.release()
            print(f"Console round trip (test console `status`, {args.round_trips} times):")
            for label, times in (("local pty", local), ("through ser2net (RFC 2217)", remote)):
                print(f"  {label:28s} p50 {pct(times, 0.5):6.2f} ms   p99 {pct(times, 0.99):6.2f} ms")
            print(f"  overhead of ser2net: p50 {pct(remote, 0.5) - pct(local, 0.5):+.2f} ms")

            one_wall, one_result = suite(["-p", "no:xdist"], dict(os.environ), args.suite_k)
            places_wall, places_result = suite(["-n", str(args.places), "--jikimi-target", "labgrid:bench=jikimi"],
                                         bench.env, args.suite_k)
    print(f"Scenario suite{f' (-k {args.suite_k!r})' if args.suite_k else ''} wall time:")
    print(f"  one local virtual board        {one_wall * 1000:8.0f} ms   ({one_result})")
    print(f"  {args.places} labgrid place(s) in parallel {places_wall * 1000:8.0f} ms   ({places_result})")
    print(f"  ratio {places_wall / one_wall:.2f}")


if __name__ == "__main__":
    main()
