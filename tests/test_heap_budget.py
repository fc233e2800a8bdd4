"""The heap budget, enforced (issue 14): the firmware on the 32-bit interpreter (objects the size
they are on an ESP32) must run in the GC heap the chip starts with, so a bell never needs its
heap to grow into the RAM its radio needs. The ESP32's 56 KiB is the smallest of the three
boards (the C3 and S3 start with 64 KiB), so it is the one held here; bench/bench_heap.py prints
every board's figures, with 100 alarms where these tests raise 10, and the smallest heap each
deployment runs in. Each run gets exactly the board's heap (plus the rig's cost): passing means
no MemoryError anywhere, which a live-heap figure alone cannot show (loading .mpy files and
fragmentation need room on top of what stays live).

The virtual board's own modules (machine, esp32, simlink: C on a chip) are frozen into the
32-bit interpreters, as a chip has them in flash; what they still take, and what their side
channel takes once open (a chip has none), is measured and the board gets that much more heap;
every figure below is the firmware's, with their cost taken off. The heap is read through the
side channel, so the firmware's test console stays off, as on a bell in use
(jikimi_host.rig.heap_budget).
"""

from __future__ import annotations

import re

import pytest

from jikimi import protocol as p
from jikimi.journal import Journal
from jikimi.recovery import scan
from jikimi_host.device.boards import MPY_SMALLEST_HEAP_BYTES, board_heap_bytes
from jikimi_host.paths import BUILD_DIR, REPO_ROOT
from jikimi_host.toolchain.compiler import device_sources
from jikimi_host.toolchain.interpreter import MicroPythonNotFound, find_budget_micropython, run_micropython
from jikimi_host.rig import heap_budget as hb

pytestmark = pytest.mark.micropython

BOARD = "esp32_devkitc"
ALARMS = 10
RECONNECTS = 3


def budget_binary(deployment: str):
    try:
        return find_budget_micropython(deployment == "frozen")
    except MicroPythonNotFound as error:
        pytest.fail(str(error))


def report(run: hb.Run, budget: int) -> str:
    phases = "; ".join(
        f"{phase}: {max(s.firmware(run.rig_cost) for s in samples)} B, largest free "
        f"{min(s.largest_free for s in samples)} B" for phase, samples in run.by_phase().items())
    return (f"{run.deployment}: high-water {run.high_water()} B of the board's {budget} B "
            f"(the rig's {run.rig_cost} B on top: modules {run.rig_modules} B, side channel "
            f"{run.rig_side_channel} B); {phases}")


async def test_the_frozen_image_runs_in_the_esp32s_heap_with_half_of_it_live_at_most(tmp_path):
    budget = board_heap_bytes(BOARD)
    run = await hb.run_phases(tmp_path / "flash", "frozen", budget, alarms=ALARMS, reconnects=RECONNECTS,
                              binary=budget_binary("frozen"))
    assert not run.out_of_memory, run.out_of_memory
    assert {"boot + pairing", "alarms with acks", "link drops and reconnects", "power cut and reboot"} <= set(run.by_phase())
    assert all(sample.largest_free > 0 for sample in run.samples), "no mem_info() figure reached the host"
    assert run.high_water() <= budget // 2, report(run, budget)


# The heap a bell never needs to grow: as .mpy files on stock 32-bit MicroPython the firmware's
# live heap is about 51 KB of the ESP32's 56 KiB, and whether a run gets through turns on how the
# heap is cut up when pairing and the first acks come. MPY_SMALLEST_HEAP_BYTES is the heap they
# get through every time; should it pass the board's, this is an expected failure again (not
# strict: at the edge some runs get through), and issue 14's fit is lost.
@pytest.mark.xfail(MPY_SMALLEST_HEAP_BYTES > board_heap_bytes(BOARD), strict=False, reason="on the edge: as "
                   ".mpy files the firmware needs more than the ESP32's 56 KiB to get through every time "
                   "(every name in a .mpy is interned in RAM; bench/bench_heap.py); only the frozen image "
                   "fits for sure")
async def test_the_mpy_deployment_runs_in_the_esp32s_heap(tmp_path):
    budget = board_heap_bytes(BOARD)
    run = await hb.run_phases(tmp_path / "flash", "mpy", budget, alarms=ALARMS, reconnects=RECONNECTS,
                              binary=budget_binary("mpy"))
    assert not run.out_of_memory, run.out_of_memory
    assert run.high_water() <= budget, report(run, budget)


async def test_the_mpy_deployment_gets_through_a_short_run_in_62_kib_with_52_kib_live_at_most(tmp_path):
    # A guard on the .mpy peak, in room enough that a run never fails by chance (6 KiB over the
    # 56 KiB it gets through every time): code or tables added to the boot show here as a live
    # heap over the mark before they cost the ESP32 its fit.
    run = await hb.run_phases(tmp_path / "flash", "mpy", 62 * 1024, alarms=3, reconnects=1,
                              binary=budget_binary("mpy"))
    assert not run.out_of_memory, run.out_of_memory
    # The live high-water within 52 KiB (bench_heap: about 50.8 KB; the live figure varies by a
    # few hundred bytes between runs). It was 60.3 KB while the classes kept the methods only the
    # boot runs (app._forget), 54.8 KB while the battery reading and the sleep check were tasks
    # of their own, 52.9 KB while the codec kept its error texts and the core's parts their
    # constructors (CORE.md, "Heap").
    assert run.high_water() <= 52 * 1024, report(run, 52 * 1024)
    # Every name in a .mpy file is interned in RAM, in pools that double: one name past the
    # fifth pool costs a sixth of 640 entries (4.6 KB), for good. New names must come with
    # old ones gone (CORE.md, "Heap").
    assert 0 < run.qstrs() <= hb.QSTRS_IN_FIVE_POOLS, (
        f"{run.qstrs()} names interned in RAM: more than {hb.QSTRS_IN_FIVE_POOLS}, the five pools' room")


def test_the_frozen_core_runs_a_simulated_day_in_the_esp32s_heap(tmp_path):
    budget = board_heap_bytes(BOARD)
    day = hb.core_soak(tmp_path / "flash", "frozen", budget, hours=24, binary=budget_binary("frozen"))
    assert day["steps"] > 1000 and day["journal_depth"] == 0
    assert day["heap_peak"] <= budget


@pytest.mark.parametrize("deployment", hb.DEPLOYMENTS)
def test_the_rigs_own_modules_are_measured_not_hidden(deployment):
    cost = hb.rig_cost_bytes(deployment, budget_binary(deployment))
    # measured (about 3 KB: the classes and tables machine, esp32 and simlink make as they are
    # imported, frozen as they are), and not a budget in disguise
    assert 1000 < cost < board_heap_bytes(BOARD) // 8


def test_what_the_firmware_imports_itself_is_not_counted_as_the_rigs():
    """simlink imports asyncio, which a chip's firmware imports too (and pays for): its heap stays
    in the firmware's figures, so the rig's cost is the stand-ins' after asyncio's."""
    binary = budget_binary("frozen")
    measure = ("import gc{before}; gc.collect(); a = gc.mem_alloc(); import {what}; gc.collect(); "
               "print(gc.mem_alloc() - a)")

    def cost(what: str, before: str = "") -> int:
        done = run_micropython(code=measure.format(what=what, before=before), path=[], binary=binary).check()
        return int(done.stdout.split()[-1])

    asyncio_alone = cost("asyncio")
    assert asyncio_alone > 1000  # its queues and classes: what was charged to the rig before
    assert hb.rig_cost_bytes("frozen", binary) == cost(", ".join(hb.SIM_MODULES), before=", asyncio")
    assert hb.rig_cost_bytes("frozen", binary) < cost(", ".join(hb.SIM_MODULES)) - asyncio_alone // 2


async def test_the_side_channel_is_measured_open_and_running_and_only_it(tmp_path, monkeypatch):
    # simlink's Link (its sockets, reader thread and the task that wakes the loop) has no
    # counterpart on a chip: measured on a board booted with a probe, opened inside a running
    # loop as the app's, after the stand-ins' import (rig_cost_bytes) is already taken off.
    binary = budget_binary("mpy")
    monkeypatch.setattr(hb, "_side_channel_measured", {})  # this test's probe, not an earlier run's
    side_channel = await hb.side_channel_bytes(tmp_path / "probe", binary)
    assert 1000 < side_channel < board_heap_bytes(BOARD) // 16, side_channel
    # The probe's other figure, its modules', is what rig_cost_bytes measures without a board.
    log = (tmp_path / "probe.console.log").read_text(errors="replace")
    modules = int(re.search(r"rig: side channel \d+ B after (\d+) B of modules", log).group(1))
    assert abs(modules - hb.rig_cost_bytes("mpy", binary)) <= 64, (modules, hb.rig_cost_bytes("mpy", binary))


def test_every_board_names_the_heap_its_chip_starts_with():
    assert {board: board_heap_bytes(board) for board in hb.REAL_BOARDS} == {
        "esp32_devkitc": 56 * 1024, "esp32c3": 64 * 1024, "esp32s3": 64 * 1024}
    assert board_heap_bytes("sim") == board_heap_bytes("esp32_devkitc")


# host half -> the device module allowed to name it: the codec reads protocol_text only when an
# error's text is asked for (tests/mpy/protocol_fuzz.py checks a bell's decoding never loads it)
HOST_HALVES = {"protocol_json": None, "protocol_text": "protocol"}


@pytest.mark.parametrize("host_half", sorted(HOST_HALVES))
def test_no_device_module_imports_the_codecs_host_half(host_half):
    # The messages' JSON form and the errors' readable texts serve the host and the tests; as
    # .mpy on a bell their code and strings would take heap that nothing on the bell needs.
    users = [str(path.relative_to(REPO_ROOT)) for path in device_sources()
             if path.stem not in (host_half, HOST_HALVES[host_half])
             and re.search(rf"\b{host_half}\b", path.read_text())]
    assert users == []


def test_the_mpy_core_loads_without_the_config_validator_which_gives_its_heap_back():
    # The core's keyword defaults are config.py's const()s, which `jikimi build` folds into the
    # core's code: as .mpy files the core imports without jikimi.config, so the app reads the
    # config, unloads the validator and only then imports the core (app.py, run). With a core
    # module that read its defaults from it at import, both would share the boot's heap again.
    code = ("import gc, sys, jikimi\n"
            "from jikimi import alarm, battery, debounce, door, gestures, siren, device\n"
            "print('jikimi.config' in sys.modules)\n"
            "gc.collect(); before = gc.mem_alloc()\n"
            "import jikimi.config\n"
            "gc.collect(); loaded = gc.mem_alloc()\n"
            "jikimi.unload('config')\n"
            "gc.collect(); print(loaded - before, loaded - gc.mem_alloc(), 'config' in dir(jikimi))\n")
    done = run_micropython(code=code, path=[BUILD_DIR / "firmware"], binary=budget_binary("mpy")).check()
    core_loaded_it, taken, freed, still_there = done.stdout.split()
    assert core_loaded_it == "False"
    assert still_there == "False"
    # 5.7 of the 8.4 KB it takes as .mpy; what stays is the names it interned (never freed)
    assert int(freed) > 4000, (taken, freed)


def test_a_full_journal_is_recovered_in_a_few_kilobytes_of_heap(tmp_path):
    # 60 alarms raised, cancelled and acked: 241 records, just under the 4 KB a journal keeps
    # before it compacts. Recovery used to keep every record until the end of the scan, each
    # copy between its parsing garbage: a bell rebooted after 100 alarms ran out of memory in
    # twice the ESP32's heap. Now it needs the file and little more, in a heap as cut up as a
    # running bell's (200-byte pieces hold the rest).
    journal = Journal(str(tmp_path / "journal.bin"), 64, 4096, new_epoch=lambda: 0x1234)
    for _ in range(60):
        raised = journal.append(p.ALARM_RAISED, {"mode": 1, "trigger": 1, "battery_pct": 90})
        cancelled = journal.append(p.ALARM_CANCELLED, {"alarm_seq": raised, "source": 2})
        journal.ack(raised)
        journal.ack(cancelled)
    data = (tmp_path / "journal.bin").read_bytes()
    assert scan(data, lambda kind, payload: None)[0] == 241 and len(data) > 4000
    code = ("import gc\n"
            "from jikimi.journal import Journal\n"
            "gc.collect(); ballast = []\n"
            "while gc.mem_free() > 12 * 1024: ballast.append(bytearray(200))\n"
            "gc.collect(); journal = Journal('journal.bin', 64, 4096)\n"
            "print(journal.recovered['records'], journal.recovered['pending'])\n")
    done = run_micropython(code=code, path=[BUILD_DIR / "firmware"], cwd=tmp_path, heap_size="96k",
                           binary=budget_binary("mpy"))
    assert done.stdout.split() == ["241", "0"], done.stdout + done.stderr
