"""MicroPython's own two-device BLE tests as an outside referee of the virtual radio.

`tests/multi_bluetooth/` (MicroPython's) and aioble's `multitests/` were written against real
controllers: run on two MicroPython Unix-port processes (NimBLE) whose HCI UARTs are ptys of
one virtual radio, they pass exactly where the emulation behaves like a radio.

One multitest = one radio process (`python -m jikimi_host.sim.radio --boards 2`) + one run of
MicroPython's `run-multitests.py` on its two ptys. Everything started for it (the radio, the
runner, the two MicroPython instances) is stopped afterwards even when the test fails or
hangs: a MicroPython process whose HCI pty has closed spins at 100% CPU.

Where things are found:
- the binary: `jikimi_host.toolchain.interpreter.find_micropython()` (`JIKIMI_MICROPYTHON` overrides);
- `run-multitests.py` and `multi_bluetooth/`: `JIKIMI_MICROPYTHON_TESTS`, else `tests/`
  beside the binary (the build cache keeps a copy there);
- aioble (package and `multitests/`): `JIKIMI_AIOBLE`, else `aioble/` beside the binary.

`python -m jikimi_host.sim.referee [-k PATTERN] [--json FILE]` runs them all, one after the
other, and prints a markdown table (test, result, seconds, perf figure); it exits 0 when every
test passed or failed as `KNOWN_FAILURES` says it does.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import select
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

from jikimi_host.processes import stop_group
from jikimi_host.toolchain.interpreter import find_micropython

TESTS_ENV = "JIKIMI_MICROPYTHON_TESTS"
AIOBLE_ENV = "JIKIMI_AIOBLE"
RUNNER = "run-multitests.py"
# A whole multitest on CI's two shared cores, generous: the slowest takes about 12 s alone.
DEFAULT_TIMEOUT_S = 240.0
RADIO_STARTUP_TIMEOUT_S = 60.0


# Multitests that cannot pass here for a reason outside the emulation, and why. Unix-port hosts
# answer no BLE traffic while a test waits in multitest.wait(): that is a read(stdin) in the
# MicroPython process, and NimBLE on the Unix port runs only from MicroPython's scheduler
# (MICROPY_PY_BLUETOOTH_USE_SYNC_EVENTS), which a blocking read does not run. (On a board the
# runner's raw REPL reads stdin with the scheduler running.)
_STDIN_WAIT = ("MicroPython Unix port: instance0 blocks in multitest.wait() (a read(stdin) that runs "
               "no scheduler, so NimBLE does not run) while the peer needs its answer: ")
KNOWN_FAILURES = {
    "multi_bluetooth/ble_mtu.py": _STDIN_WAIT + "the central's characteristic discovery goes unanswered "
                                                "while the peripheral waits for 'client:discovery'",
    "multi_bluetooth/ble_mtu_peripheral.py": _STDIN_WAIT + "the central's characteristic discovery goes "
                                                           "unanswered while the peripheral waits for "
                                                           "'client:discovery'",
    "aioble/ble_notify.py": _STDIN_WAIT + "the central's service discovery goes unanswered while the "
                                          "peripheral waits for 'discovery'",
}


# Failures of the upstream scripts' own making, run again once when they fail in just this way
# (the pattern must be in the output): a failure of any other kind fails at once, and one that
# happens again fails too.
# The two L2CAP scripts give each step 1 s (the others 4 to 10 s): the connection (the
# peripheral counts from its NEXT, which the runner relays to the central) and each chunk's
# send-ready or receive must fit in it. On two cores shared by eight workers a process can be
# off the CPU that long: seen in full runs as timeouts waiting for _IRQ_CENTRAL_CONNECT (1),
# _IRQ_PERIPHERAL_CONNECT (7), _IRQ_L2CAP_RECV (25) and _IRQ_L2CAP_SEND_READY (26).
_L2CAP_STEP_TIMEOUT = r"Timeout waiting for (1|7|25|26)\b"
RUN_AGAIN = {
    # A race as well: the central connects an L2CAP channel as soon as it is connected; the
    # peripheral listens only once it has seen the connection. A radio delivers the request a
    # connection event later; this one at once, and a peripheral process the loaded host has not
    # yet scheduled refuses it (the central gets _IRQ_L2CAP_DISCONNECT before _IRQ_L2CAP_CONNECT).
    "multi_bluetooth/ble_l2cap.py": re.compile(
        r"l2cap_connect\s+_IRQ_L2CAP_DISCONNECT|" + _L2CAP_STEP_TIMEOUT),
    "multi_bluetooth/perf_l2cap.py": re.compile(_L2CAP_STEP_TIMEOUT),
    # Pairing gets 4 s to _IRQ_ENCRYPTION_UPDATE (28): seen to run out once in a full run, both
    # sides connected and waiting; alone it takes under 2 s, and 16 runs eight at a time beside
    # two busy loops took 3 to 9 s in all and passed. A lost packet is not ruled out by that,
    # which is why it is run again only once.
    "multi_bluetooth/ble_gap_pair.py": re.compile(r"gap_pair\s+Traceback[^#]*Timeout waiting for 28\b"),
    "multi_bluetooth/ble_gap_pair_bond.py": re.compile(r"gap_pair\s+Traceback[^#]*Timeout waiting for 28\b"),
    # The characteristic without capture is read by a task that sleeps 500 ms between reads while
    # the central writes every 200 ms: which write it sees second depends on scheduling (a later
    # one, seen once in a fresh-clone run). Only that line; a lost captured write is not run again.
    "aioble/ble_write_capture.py": re.compile(r"written b'central0'\n+written b'central[2-4]'\n"),
}
# Any script: a central's gap_connect gives up after its 2 s (NimBLE's default) and reports the
# attempt's end as a disconnect, before the peripheral saw a connection; seen once in a full
# run (ble_gap_pair.py), when the loaded host had not run the peripheral's advertising in time.
CONNECT_GAVE_UP = re.compile(r"gap_connect\s+_IRQ_PERIPHERAL_DISCONNECT\s+Traceback")


def fails_of_its_own_making(name: str, output: str) -> bool:
    """Whether a failed upstream script is run again once (RUN_AGAIN, CONNECT_GAVE_UP)."""
    known = RUN_AGAIN.get(name)
    return (known is not None and known.search(output) is not None) or CONNECT_GAVE_UP.search(output) is not None


class RefereeUnavailable(RuntimeError):
    """The binary, run-multitests.py or the tests are not where they are looked for."""


@dataclass(frozen=True)
class Multitest:
    """One two-instance test file: `suite` is "multi_bluetooth" (MicroPython's) or "aioble"."""

    suite: str
    path: Path

    @property
    def name(self) -> str:
        return f"{self.suite}/{self.path.name}"


@dataclass
class MultitestResult:
    """What run-multitests.py said about one test: `outcome` is its word ("pass", "fail",
    "skip"), or "timeout" / "error" when it said nothing; `metrics` are the test's
    `multitest.output_metric` lines (throughput of the perf tests)."""

    name: str
    outcome: str
    seconds: float
    metrics: list[str] = field(default_factory=list)
    output: str = ""
    leftover_pids: list[int] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.outcome == "pass"

    @property
    def verdict(self) -> str:
        """pass, fail, or for a known failure xfail (it failed) / XPASS (it passed: the
        known-failure entry is out of date)."""
        if self.name in KNOWN_FAILURES:
            return "XPASS" if self.passed else "xfail"
        return "pass" if self.passed else self.outcome


def _beside_binary(env: str, name: str) -> Path:
    override = os.environ.get(env)
    if override:
        return Path(override)
    try:
        return find_micropython().resolve().parent / name
    except RuntimeError as error:
        raise RefereeUnavailable(str(error)) from error


def require_bluetooth() -> Path:
    """The binary, if it has the `bluetooth` module (the NimBLE build); else RefereeUnavailable."""
    try:
        binary = find_micropython()
    except RuntimeError as error:
        raise RefereeUnavailable(str(error)) from error
    try:
        probe = subprocess.run([str(binary), "-c", "import bluetooth"], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise RefereeUnavailable(f"{binary} does not run: {error}") from error
    if probe.returncode != 0:
        raise RefereeUnavailable(f"{binary} has no bluetooth module: the referee needs the NimBLE build "
                                 "(jikimi_host.toolchain.mpbuild), e.g. via JIKIMI_MICROPYTHON")
    return binary


def multitests_dir() -> Path:
    """The folder holding run-multitests.py and multi_bluetooth/."""
    folder = _beside_binary(TESTS_ENV, "tests")
    if not (folder / RUNNER).is_file() or not (folder / "multi_bluetooth").is_dir():
        raise RefereeUnavailable(
            f"no {RUNNER} + multi_bluetooth/ in {folder}: set {TESTS_ENV} to MicroPython's tests/ "
            "folder, or use a binary built by jikimi_host.toolchain.mpbuild (its cache keeps a copy)")
    return folder


def aioble_dir() -> Path:
    """The aioble folder: the package (aioble/) and its multitests/."""
    folder = _beside_binary(AIOBLE_ENV, "aioble")
    if not (folder / "aioble").is_dir() or not (folder / "multitests").is_dir():
        raise RefereeUnavailable(
            f"no aioble/ + multitests/ in {folder}: set {AIOBLE_ENV} to micropython-lib's "
            "micropython/bluetooth/aioble folder")
    return folder


def discover() -> list[Multitest]:
    """Every multi_bluetooth/ble_*.py and perf_*.py, and every aioble multitests/ble_*.py."""
    bluetooth = multitests_dir() / "multi_bluetooth"
    aioble = aioble_dir() / "multitests"
    found = [Multitest("multi_bluetooth", path) for path in sorted(bluetooth.glob("ble_*.py"))]
    found += [Multitest("multi_bluetooth", path) for path in sorted(bluetooth.glob("perf_*.py"))]
    found += [Multitest("aioble", path) for path in sorted(aioble.glob("ble_*.py"))]
    return found


class RadioProcess:
    """`python -m jikimi_host.sim.radio --boards N` in a process group of its own; `boards`
    are its HCI pty paths once started. A context manager: leaving it stops the radio."""

    def __init__(self, boards: int = 2, log_path: Path | None = None,
                 startup_timeout_s: float = RADIO_STARTUP_TIMEOUT_S) -> None:
        self.boards_wanted = boards
        self.log_path = log_path
        self.startup_timeout_s = startup_timeout_s
        self.boards: list[str] = []
        self.hci = ""
        self.process: subprocess.Popen | None = None
        self.leftover_pids: list[int] = []

    def start(self) -> None:
        log = open(self.log_path, "wb") if self.log_path else subprocess.DEVNULL
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "jikimi_host.sim.radio", "--boards", str(self.boards_wanted)],
                stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
        finally:
            if self.log_path:
                log.close()
        line = self._first_line()
        announced = json.loads(line)
        self.boards, self.hci = announced["boards"], announced["hci"]

    def _first_line(self) -> bytes:
        assert self.process is not None and self.process.stdout is not None
        stream = self.process.stdout
        deadline = time.monotonic() + self.startup_timeout_s
        buffered = b""
        while b"\n" not in buffered:
            left = deadline - time.monotonic()
            if left <= 0 or self.process.poll() is not None:
                self.stop()
                raise RuntimeError(f"the radio process did not start (log: {self.log_path})")
            ready, _, _ = select.select([stream], [], [], min(left, 0.5))
            if ready:
                chunk = os.read(stream.fileno(), 4096)
                if not chunk:
                    continue
                buffered += chunk
        return buffered.split(b"\n", 1)[0]

    def stop(self) -> None:
        if self.process is not None:
            self.leftover_pids = stop_group(self.process)
            if self.process.stdout is not None:
                self.process.stdout.close()

    def __enter__(self) -> "RadioProcess":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _instance(pty: str, micropython_path: Sequence[Path]) -> str:
    """A `-t` argument of run-multitests.py: the Unix port with its own environment (the
    runner gives the instance only these variables, and splits them on ',' and '=')."""
    spec = f"unix,MICROPYBTUART={pty}"
    if micropython_path:
        spec += ",MICROPYPATH=" + os.pathsep.join([".frozen", *map(str, micropython_path)])
    for part in spec.split(",")[1:]:
        if part.count("=") != 1:
            raise ValueError(f"run-multitests.py cannot pass {part!r} to an instance")
    return spec


def _metrics(output: str, test_file: str) -> list[str]:
    prefix = f"{test_file}: "
    return [line[len(prefix):] for line in output.splitlines() if line.startswith(prefix)]


def run_multitest(test: Multitest, workdir: Path, timeout_s: float = DEFAULT_TIMEOUT_S) -> MultitestResult:
    """Run one multitest on a fresh radio process; everything it started is stopped after."""
    workdir.mkdir(parents=True, exist_ok=True)
    results_dir = workdir / "results"
    micropython_path = [aioble_dir()] if test.suite == "aioble" else []
    env = dict(os.environ, MICROPY_MICROPYTHON=str(find_micropython()))
    started = time.monotonic()
    outcome, output, leftovers = "error", "", []
    with RadioProcess(2, log_path=workdir / "radio.log") as radio:
        command = [sys.executable, str(multitests_dir() / RUNNER), "-r", str(results_dir)]
        for pty in radio.boards:
            command += ["-t", _instance(pty, micropython_path)]
        command.append(str(test.path))
        runner = subprocess.Popen(command, cwd=test.path.parent, env=env, stdin=subprocess.DEVNULL,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  start_new_session=True)
        try:
            output = runner.communicate(timeout=timeout_s)[0].decode(errors="replace")
        except subprocess.TimeoutExpired:
            outcome = "timeout"
            os.killpg(runner.pid, signal.SIGKILL)
            output = (runner.communicate()[0] or b"").decode(errors="replace")
        finally:
            leftovers = stop_group(runner)  # the MicroPython instances, before their ptys close
    leftovers += radio.leftover_pids
    seconds = time.monotonic() - started
    if outcome != "timeout":
        outcome = _outcome(results_dir, str(test.path))
    (workdir / "runner.log").write_text(output)
    return MultitestResult(test.name, outcome, seconds, _metrics(output, str(test.path)), output, leftovers)


def _outcome(results_dir: Path, test_file: str) -> str:
    try:
        report = json.loads((results_dir / "_results.json").read_text())
    except (OSError, ValueError):
        return "error"
    for name, outcome, _reason in report.get("results", []):
        if name == test_file:
            return str(outcome)
    return "error"


def run_all(tests: Sequence[Multitest], workdir: Path, timeout_s: float = DEFAULT_TIMEOUT_S) -> Iterator[MultitestResult]:
    for test in tests:
        yield run_multitest(test, workdir / test.name.replace("/", "-"), timeout_s)


def format_table(results: Sequence[MultitestResult]) -> str:
    """A markdown table: test, result, seconds, perf figure (and why, for a known failure)."""
    lines = ["| test | result | seconds | perf figure |", "| --- | --- | ---: | --- |"]
    for result in results:
        figure = "; ".join(result.metrics)
        verdict = result.verdict
        if verdict == "xfail":
            verdict += f" ({KNOWN_FAILURES[result.name]})"
        lines.append(f"| {result.name} | {verdict} | {result.seconds:.1f} | {figure} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jikimi_host.sim.referee", description=(
        "Run MicroPython's and aioble's two-device BLE tests on the virtual radio (one radio "
        "process per test) and print a table: test, result, seconds, perf figure."))
    parser.add_argument("-k", "--select", default="", help="only tests whose name contains this")
    parser.add_argument("--workdir", type=Path, default=None, help="logs per test (default: a temporary folder)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds per test")
    args = parser.parse_args(argv)

    try:
        require_bluetooth()
        tests = [test for test in discover() if args.select in test.name]
    except RefereeUnavailable as error:
        print(f"referee: {error}", file=sys.stderr)
        return 2
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="jikimi-referee-"))
    results = []
    started = time.monotonic()
    for result in run_all(tests, workdir, args.timeout):
        print(f"{result.name}: {result.verdict} ({result.seconds:.1f} s)", file=sys.stderr, flush=True)
        results.append(result)
    wall = time.monotonic() - started
    print(format_table(results))
    counts = {verdict: sum(r.verdict == verdict for r in results) for verdict in ("pass", "xfail")}
    print(f"\n{counts['pass']} passed, {counts['xfail']} known failures, "
          f"{len(results) - sum(counts.values())} unexpected, of {len(results)} in {wall:.0f} s; logs in {workdir}")
    for result in results:
        if result.leftover_pids:
            print(f"{result.name}: processes still running afterwards: {result.leftover_pids}")
    if args.json:
        args.json.write_text(json.dumps(
            [{**{key: value for key, value in asdict(r).items() if key != "output"}, "verdict": r.verdict}
             for r in results], indent=1))
    return 0 if all(r.verdict in ("pass", "xfail") and not r.leftover_pids for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
