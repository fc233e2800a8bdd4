"""The firmware's heap as an ESP32 would see it (issue 14): the app on the virtual board under a
32-bit interpreter (objects the size they are on the chip) with a fixed GC heap, through the
phases of a bell's life, sampled after each (live heap after gc.collect(), and the largest free
run: fragmentation).

Two deployments of the same firmware:

- `mpy`: the `.mpy` files `jikimi build` makes, on the flash, as `jikimi flash` puts them on
  stock MicroPython (bytecode loaded into the heap), run by the stock 32-bit build (mpbuild's
  nimble32);
- `frozen`: nothing of the firmware on the flash; the interpreter (frozen32) has it frozen in
  through boards/sim/manifest.py (bytecode in the binary, as in a user's frozen image).

The virtual board's own modules (machine, esp32, simlink: C on a chip, Python here) are frozen
into both 32-bit builds (host/micropython-variant/chip_manifest.py), so their code and names
are in ROM as a chip's are in flash, and the heap is sampled by the side channel (`VirtualBoard.heap`:
micropython.mem_info() after a collection), not by the firmware's test console, which stays
off as on a bell in use. (An interpreter without the stand-ins, the 64-bit one, gets them on
the flash as `.mpy`.) What they take is measured and added to the heap the board is given, and
taken off every figure reported as the firmware's: it is shown, not hidden in the budget. Two
parts: importing them (`rig_cost_bytes`; without asyncio, which they import and the firmware
imports on a chip too), and the side channel open and running (`side_channel_bytes`: its
sockets, its reader thread, the task that wakes the loop; a chip has none of it). What the
stand-ins allocate for the firmware as it runs (a Python object for each pin, where a chip's
are mostly static C objects) is in neither measure and stays in the firmware's figures.

Used by tests/test_heap_budget.py (the budget, enforced) and bench/bench_heap.py (the figures).
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from jikimi import protocol as p
from jikimi_host.device.image import device_path_for
from jikimi_host.toolchain.compiler import build, device_sources
from jikimi_host.toolchain.interpreter import find_budget_micropython, run_micropython
from jikimi_host.paths import BUILD_DIR, FIRMWARE_DIR
from jikimi_host.relay.device_clock import DEVICE_EPOCH_UNIX
from jikimi_host.rig.firmware import CONFIG, PhoneApp, log_records, pair_at_power_up, records_since
from jikimi_host.sim.board import VirtualBoard
from jikimi_host.sim.radio import VirtualRadio
from jikimi_host.errors import WaitTimeout
from jikimi_host.wait import until

SIM_MODULES = ("machine", "esp32", "simlink")  # the virtual board's: C on a chip
REAL_BOARDS = ("esp32_devkitc", "esp32c3", "esp32s3")
DEPLOYMENTS = ("mpy", "frozen")
# The rig's config (a short hold), with the sleep check on as on a bell in use (the rig's has
# it off, so that its tests stay awake): an hour of quiet, longer than any run here, so it
# counts and never sleeps.
BUDGET_CONFIG = dict(CONFIG, gestures={"hold_ms": 500, "pairing_hold_ms": 3000}, power={"idle_sleep_s": 3600})
# MicroPython interns names in pools of 20, 40, 80, ... entries, each twice the last, on every
# port (py/qstr.c; a frozen image's pool counts as 10): the sixth, 640 entries (4.6 KB on a
# 32-bit chip), comes with the 621st name a .mpy deployment brings, and stays.
QSTRS_IN_FIVE_POOLS = 20 + 40 + 80 + 160 + 320
# Signs that the heap ran out: MicroPython's own, the app's supervisor restarting a task, or a
# pairing the link dropped because a secret found no heap in the IRQ (link.py, _bond).
OUT_OF_MEMORY = ("MemoryError", "memory allocation failed", "no_heap_for_secret")
OOM_SIGN_S = 5.0  # how long a failed phase waits for one of those before it fails the run


def has_chip_modules(binary: Path) -> bool:
    """Whether `binary` has the virtual board's stand-ins for the chip's C modules frozen in
    (mpbuild's 32-bit builds do: host/micropython-variant/chip_manifest.py)."""
    with tempfile.TemporaryDirectory(prefix="jikimi-probe-") as empty:
        done = run_micropython(code="import " + ", ".join(SIM_MODULES), path=[], cwd=Path(empty),
                               binary=binary)
    return done.returncode == 0


def rig_cost_bytes(deployment: str, binary: Path | None = None) -> int:
    """Live heap taken by importing the virtual board's own modules (frozen, or as .mpy from the
    flash when the interpreter lacks them), after gc.collect(). What they import that the
    firmware imports too (asyncio: simlink's pump is a task) is imported before the measure: on
    a chip the firmware pays for it (about 2 KB, its module objects and queues; until
    2026-12-05 it was counted as the rig's)."""
    binary = binary or find_budget_micropython(deployment == "frozen")
    code = ("import gc, asyncio; gc.collect(); a = gc.mem_alloc(); import "
            + ", ".join(SIM_MODULES) + "; gc.collect(); print(gc.mem_alloc() - a)")
    path = [] if has_chip_modules(binary) else [BUILD_DIR / "boards" / "sim"]
    with tempfile.TemporaryDirectory(prefix="jikimi-rig-cost-") as empty:
        done = run_micropython(code=code, path=path, cwd=Path(empty), binary=binary).check()
    return int(done.stdout.split()[-1])


# Booted on a board of its own once per interpreter (side_channel_bytes): inside a running loop,
# as the app's, the stand-ins are imported, then the side channel opened, and the heap measured
# after each.
_SIDE_CHANNEL_PROBE = """import gc, asyncio
async def main():
    gc.collect(); a = gc.mem_alloc()
    import machine, esp32, simlink
    gc.collect(); b = gc.mem_alloc()
    simlink.link()
    await asyncio.sleep_ms(500)
    gc.collect(); print("rig: side channel", gc.mem_alloc() - b, "B after", b - a, "B of modules")
    await asyncio.sleep_ms(60000)
asyncio.run(main())
"""
_side_channel_measured: dict[Path, int] = {}


async def side_channel_bytes(folder: Path, binary: Path | None = None) -> int:
    """Live heap the virtual board's side channel takes once it is open and running (simlink's
    Link: its sockets, its reader thread, the task that wakes the loop and the asyncio stream
    classes that task loads), after gc.collect(), measured once per interpreter on a board booted
    with a probe (`folder`: its flash). A chip has no side channel."""
    binary = binary or find_budget_micropython(False)
    if binary not in _side_channel_measured:
        probe = VirtualBoard(folder, binary=binary, heap_bytes=256 * 1024)  # roomy: a difference is read
        deploy(probe, "frozen", has_chip_modules(binary))  # the stand-ins only, if not frozen in
        probe.deploy({"rig_probe.py": _SIDE_CHANNEL_PROBE})
        try:
            await probe.start("rig_probe.py")
            found = await probe.console.expect(r"rig: side channel (\d+) B", 30)
        finally:
            await probe.stop()
        _side_channel_measured[binary] = int(found.group(1))
    return _side_channel_measured[binary]


def firmware_import_bytes(image: Path, binary: Path | None = None) -> int:
    """Live heap taken by importing the firmware (the core, the journal, the link and the app's
    own modules but hw.py, which needs a board) from the .mpy files of a build's `firmware/`
    folder `image`, after gc.collect(), on the stock 32-bit interpreter. The config's validator
    is unloaded first, as the app does after boot: compiled as written, the core imports it for
    its defaults (what stays of it then is the names it interned)."""
    code = ("import gc\ngc.collect(); a = gc.mem_alloc()\n"
            "import jikimi.device, jikimi.journal, jikimi.bonds, jikimi.door, jikimi.link\n"
            "jikimi.unload('config')\n"
            "gc.collect(); print(gc.mem_alloc() - a)\n")
    done = run_micropython(code=code, path=[image], binary=binary or find_budget_micropython(False)).check()
    return int(done.stdout.split()[-1])


def fold_saving_bytes(folder: Path) -> tuple[int, int]:
    """(import heap of the image as `jikimi build` makes it, and of the same sources compiled as
    they are written): what folding the constants across modules saves (toolchain/constfold.py)."""
    built = {}
    for fold in (True, False):
        out = folder / ("folded" if fold else "as-written")
        report = build(device_sources([FIRMWARE_DIR / "jikimi"]), out_dir=out, fold=fold)
        if not report.ok:
            raise RuntimeError("; ".join(map(str, report.errors)))
        built[fold] = firmware_import_bytes(out / "firmware")
    return built[True], built[False]


def deploy(board: VirtualBoard, deployment: str, chip_modules_frozen: bool = True) -> None:
    """The image onto the board's flash: the firmware's .mpy files from `jikimi build`
    (build/firmware, build/boards/sim; `make test` builds them first) or none of them (frozen);
    the virtual board's own modules too unless the interpreter has them (`has_chip_modules`)."""
    if deployment not in DEPLOYMENTS:
        raise ValueError(f"deployment {deployment!r}: one of {DEPLOYMENTS}")
    # at the places `jikimi flash` puts them (jikimi_host.device.image)
    for module in sorted((BUILD_DIR / "boards" / "sim").glob("*.mpy")):
        if module.stem in SIM_MODULES and chip_modules_frozen:
            continue
        if module.stem in SIM_MODULES or deployment == "mpy":  # board.mpy: the pin map, frozen too
            board.deploy({device_path_for(f"boards/sim/{module.name}", "sim"): module})
    if deployment == "mpy":
        for module in sorted((BUILD_DIR / "firmware" / "jikimi").glob("*.mpy")):
            board.deploy({device_path_for(f"firmware/jikimi/{module.name}", "sim"): module})
    board.deploy({device_path_for("firmware/main.py", "sim"): FIRMWARE_DIR / "main.py",
                  "config.json": json.dumps(BUDGET_CONFIG)})


@dataclass(frozen=True)
class Sample:
    phase: str
    alloc: int  # live heap after gc.collect(), the rig's modules included
    largest_free: int  # the largest free run of GC blocks, bytes
    qstrs: int  # names interned in RAM, and in how many pools (VirtualBoard.heap)
    qstr_pools: int

    def firmware(self, rig_cost: int) -> int:
        return self.alloc - rig_cost


@dataclass
class Run:
    deployment: str
    heap_bytes: int  # what the board was given: the board's heap + the rig's cost
    rig_modules: int  # rig_cost_bytes
    rig_side_channel: int  # side_channel_bytes
    samples: list[Sample]
    out_of_memory: list[str]  # console lines that say the heap ran out

    @property
    def rig_cost(self) -> int:
        """What the virtual board itself takes of the heap, its modules and its side channel."""
        return self.rig_modules + self.rig_side_channel

    def high_water(self) -> int:
        """The firmware's largest live heap over every sample (the rig's cost taken off)."""
        return max(sample.firmware(self.rig_cost) for sample in self.samples)

    def qstrs(self) -> int:
        """The most names interned in RAM at any sample (they are never freed)."""
        return max(sample.qstrs for sample in self.samples)

    def by_phase(self) -> dict[str, list[Sample]]:
        phases: dict[str, list[Sample]] = {}
        for sample in self.samples:
            phases.setdefault(sample.phase, []).append(sample)
        return phases


async def _reconnect(app: PhoneApp, bell: VirtualBoard, attempts: int = 3) -> None:
    """The owner's phone comes back: connect, re-encrypt with its bond, subscribe, set the clock.
    A link lost on the way is made again, as a phone's OS does (this rig measures the heap, not
    the link: tests/test_app.py and the relay's tests hold reconnection to account)."""
    for attempt in range(attempts):
        try:
            await app.phone.connect(bell.ble.identity_address, attempts=20)
            await app.phone.encrypt()
            break
        except (asyncio.CancelledError, ConnectionError, OSError) as lost:
            # Bumble aborts a pending encryption with CancelledError("abort: disconnection
            # event occurred"); any other cancellation is this task's own and goes on.
            ours = isinstance(lost, asyncio.CancelledError) and "disconnection" not in str(lost)
            if ours or attempt == attempts - 1:
                raise
            await until(lambda: not app.phone.connected, 30, "the lost link to close")
    await app.open()
    await app.send(p.SET_TIME, time=int(time.time()) - DEVICE_EPOCH_UNIX)


async def run_phases(folder: Path, deployment: str, board_heap: int, *, alarms: int = 100,
                     reconnects: int = 10, binary: Path | None = None) -> Run:
    """Boot, pairing, `alarms` alarms (each cancelled and its events acked), `reconnects` link
    drops and reconnections, a power cut and reboot with the phone back; a heap sample after
    each step (VirtualBoard.heap). The board gets `board_heap` + the rig's cost as its whole GC heap."""
    binary = binary or find_budget_micropython(deployment == "frozen")
    rig_modules = rig_cost_bytes(deployment, binary)
    rig_side_channel = await side_channel_bytes(folder.with_name(folder.name + "-rig-probe"), binary)
    heap = board_heap + rig_modules + rig_side_channel
    radio = VirtualRadio()
    bell = VirtualBoard(folder, radio=radio, binary=binary, heap_bytes=heap)
    samples: list[Sample] = []
    deploy(bell, deployment, has_chip_modules(binary))

    async def sample(phase: str) -> None:
        heap = await bell.heap()
        samples.append(Sample(phase, heap.alloc, heap.largest_free, heap.qstrs, heap.qstr_pools))

    async def phases() -> None:
        app = await pair_at_power_up(bell, radio)
        await sample("boot + pairing")
        for _ in range(alarms):
            mark = len(app.frames)
            seen = {m.seq for m in app.of(p.ALARM_RAISED)}  # resent frames of earlier alarms come too
            await bell.press("button", hold_s=0.7)
            (alarm, *_) = await until(lambda: [m for m in app.of(p.ALARM_RAISED) if m.seq not in seen],
                                      30, "the alarm at the phone")
            await app.send(p.CANCEL_ALARM, epoch=alarm.epoch, alarm_seq=alarm.seq)
            await until(lambda: any(m.type == p.ALARM_CANCELLED and m.alarm_seq == alarm.seq
                                    for m in app.frames[mark:]), 30, "the cancel")
            for message in [m for m in app.frames[mark:] if m.klass == "event"]:
                await app.send(p.ACK, epoch=message.epoch, seq=message.seq)
            await sample("alarms with acks")
        for _ in range(reconnects):
            await app.phone.disconnect()
            await _reconnect(app, bell)
            await sample("link drops and reconnects")
        await bell.power_cut()
        mark = len(log_records(bell))
        await bell.start()
        await until(lambda: not app.phone.connected, 30, "the phone to see the bell go")
        await until(lambda: records_since(bell, mark, "ready"), 30, "the bell up again")
        await _reconnect(app, bell)
        await sample("power cut and reboot")

    def out_of_memory() -> list[str]:
        path = bell.console.log_path if bell.console is not None else None
        text = path.read_text(errors="replace") if path is not None and path.exists() else ""
        return [line for line in text.splitlines() if any(sign in line for sign in OUT_OF_MEMORY)]

    async def watch() -> None:  # a bell out of memory stops the run at once, not at a timeout
        while not out_of_memory():
            await asyncio.sleep(0.2)

    try:
        running, watching = asyncio.ensure_future(phases()), asyncio.ensure_future(watch())
        await asyncio.wait([running, watching], return_when=asyncio.FIRST_COMPLETED)
        watching.cancel()
        if running.done() and running.exception() is not None:
            # A phase that failed fails the run, unless the bell ran out of memory: that can fail
            # a phase (a link it dropped) a moment before its console says so.
            try:
                await until(out_of_memory, OOM_SIGN_S, "a sign of the heap running out")
            except WaitTimeout:
                running.result()
        else:
            running.cancel()
            await asyncio.gather(running, return_exceptions=True)
    finally:
        await bell.stop()
    return Run(deployment, heap, rig_modules, rig_side_channel, samples, out_of_memory())


def core_soak(flash: Path, deployment: str, board_heap: int, hours: int = 24,
              binary: Path | None = None) -> dict:
    """The device core (no BLE, no asyncio shell) through `hours` simulated hours
    (bench/core_long_run.py) as `deployment` has it, with `board_heap` as the whole GC heap and
    `flash` as its flash folder. Its JSON (heap_imported, heap_booted, heap_peak, steps, ...), or
    MicroPythonFailed (a MemoryError among others)."""
    flash.mkdir(parents=True, exist_ok=True)
    path = [BUILD_DIR / "firmware"] if deployment == "mpy" else []
    done = run_micropython(script=FIRMWARE_DIR.parent / "bench" / "core_long_run.py",
                           args=[str(flash), str(hours)], path=path, heap_size=str(board_heap),
                           binary=binary or find_budget_micropython(deployment == "frozen"),
                           timeout_s=600).check()
    return json.loads(done.stdout)
