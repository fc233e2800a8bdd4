"""Board folders: pin maps that a real chip can honour, and the binding on the virtual board."""

from __future__ import annotations

import asyncio
import runpy
from pathlib import Path

import pytest

from jikimi_host.device import boards
from jikimi_host.device.boards import heap_warning
from jikimi_host.paths import BOARDS_DIR, FIRMWARE_DIR
from jikimi_host.sim.board import DEEPSLEEP_RESET, PIN_WAKE, VirtualBoard

BOARDS = sorted(p.name for p in BOARDS_DIR.iterdir() if (p / "board.py").exists())
REQUIRED = {"button", "reed", "pull_pin", "tamper", "buzzer", "led", "battery"}
INPUTS = {"button", "reed", "pull_pin", "tamper"}
# Per chip: pins that can wake it from deep sleep, ADC1 pins (ADC2 is unusable while the radio
# is on), and input-only pins (no output, no internal pulls).
CHIPS = {
    "esp32": {"wake": {0, 2, 4, 12, 13, 14, 15, 25, 26, 27, 32, 33, 34, 35, 36, 37, 38, 39},
              "adc1": set(range(32, 40)), "input_only": set(range(34, 40)), "gpios": set(range(40))},
    "esp32c3": {"wake": set(range(6)), "adc1": set(range(5)), "input_only": set(), "gpios": set(range(22))},
    "esp32s3": {"wake": set(range(22)), "adc1": set(range(1, 11)), "input_only": set(), "gpios": set(range(49))},
}


def load(name: str) -> dict:
    return runpy.run_path(str(BOARDS_DIR / name / "board.py"))


def test_the_three_esp32_boards_and_the_virtual_one_exist():
    assert {"esp32_devkitc", "esp32c3", "esp32s3", "sim"} <= set(BOARDS)


@pytest.mark.parametrize("name", BOARDS)
def test_pin_map_is_one_a_chip_can_honour(name):
    board = load(name)
    chip = CHIPS[board["CHIP"]]
    pins = board["PINS"]
    assert board["NAME"] == name
    assert set(pins) == REQUIRED
    gpios = [gpio for gpio, _, _ in pins.values()]
    assert len(set(gpios)) == len(gpios), "a GPIO is used twice"
    for pin_name, (gpio, active, pull) in pins.items():
        assert gpio in chip["gpios"] and active in (0, 1) and pull in ("up", "down", None), pin_name
        if pin_name not in INPUTS | {"battery"}:
            assert gpio not in chip["input_only"], f"{pin_name} is an output on an input-only pin"
        if pull is not None:
            assert gpio not in chip["input_only"], f"{pin_name} needs a pull the pin does not have"
    assert pins["battery"][0] in chip["adc1"], "the battery must be on ADC1"
    for wake in board["WAKE_PINS"]:
        assert pins[wake][0] in chip["wake"], f"{wake} cannot wake a {board['CHIP']}"
    assert {"button", "reed", "pull_pin"} <= set(board["WAKE_PINS"])
    if board["CHIP"] in ("esp32", "esp32s3"):  # EXT0 takes one pin; EXT1 wakes on "any high"
        assert sum(1 for w in board["WAKE_PINS"] if pins[w][1] == 0) <= 1, "one active-low wake input at most"
    assert board["BATTERY_DIVIDER"] >= 1
    assert set(board["POWER"]) == {"sleep_ua", "awake_ma", "boot_ms", "siren_ma"}
    assert all(value > 0 for value in board["POWER"].values())


def test_the_virtual_board_copies_the_devkitc():
    sim, devkitc = load("sim"), load("esp32_devkitc")
    for key in ("PINS", "WAKE_PINS", "BATTERY_DIVIDER", "CHIP", "POWER"):
        assert sim[key] == devkitc[key]


def binding_board(tmp_path: Path) -> VirtualBoard:
    """A virtual board running tests/mpy/hw_binding.py with the firmware's binding."""
    board = VirtualBoard(tmp_path / "flash")
    board.deploy_sim_board()
    board.deploy({"main.py": Path(__file__).parent / "mpy" / "hw_binding.py",
                  "lib/jikimi/__init__.py": FIRMWARE_DIR / "jikimi" / "__init__.py",
                  "lib/jikimi/hw.py": FIRMWARE_DIR / "jikimi" / "hw.py"})
    return board


@pytest.mark.micropython
async def test_the_binding_reads_logical_levels_and_drives_outputs(tmp_path):
    board = binding_board(tmp_path)
    try:
        board.set_battery_mv(3700)
        await board.start()
        await board.console.expect(r"levels 0 0 0 3700", not_matching="Traceback")  # all idle
        await board.console.expect("ready")
        await board.press("button")  # active low on the wire, 1 to the firmware
        await board.console.expect(r"event button=1\n")
        board.release("button")
        await board.console.expect(r"event button=0\n")
        await board.press("reed")  # door open
        await board.console.expect(r"event reed=1\n")
        board.release("reed")
        await board.console.expect(r"event reed=0\n")
        assert (3000, 32768) in [(o.freq, o.value) for o in board.pwm_history("buzzer")]
        assert board.level("led") == 1
    finally:
        await board.stop()


@pytest.mark.micropython
async def test_deep_sleep_wakes_on_an_active_input_only(tmp_path):
    board = binding_board(tmp_path)
    try:
        await board.start(args=["sleep"])
        await board.console.expect("ready", not_matching="Traceback")
        for _ in range(250):
            if board.asleep:
                break
            await asyncio.sleep(0.02)
        assert board.asleep and not board.running
        board.set_pin("tamper", 1)  # not a wake pin
        board.release("button")  # a wake pin, but going inactive
        assert board.asleep
        await board.press("reed")  # the door opens: wakes
        await board.console.expect(rf"boot {DEEPSLEEP_RESET} {PIN_WAKE}", timeout_s=10)
    finally:
        await board.stop()


@pytest.mark.parametrize("name", ["esp32_devkitc", "esp32c3", "esp32s3", "sim"])
def test_a_boards_manifest_freezes_the_firmware_package_and_its_pin_map(name, tmp_path):
    """Read by MicroPython's own manifest reader (from the pinned source, kept in the build's
    cache), as `make BOARD=... FROZEN_MANIFEST=boards/<name>/manifest.py` would read it; the
    port's own manifest, which a real board's includes, is an empty stand-in here."""
    import importlib.util

    from jikimi_host.toolchain import mpbuild
    from jikimi_host.paths import REPO_ROOT

    reader = mpbuild.binary_path(REPO_ROOT).parent / "tools" / "manifestfile.py"
    if not reader.is_file():
        pytest.fail(f"{reader} is missing: run `make micropython`")
    spec = importlib.util.spec_from_file_location("manifestfile", reader)
    manifestfile = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(manifestfile)
    (tmp_path / "port" / "boards").mkdir(parents=True)
    (tmp_path / "port" / "boards" / "manifest.py").write_text("")
    manifest = manifestfile.ManifestFile(manifestfile.MODE_FREEZE, {
        "MPY_DIR": str(tmp_path), "PORT_DIR": str(tmp_path / "port"), "MPY_LIB_DIR": None,
        "BOARD_DIR": str(BOARDS_DIR / name)})
    manifest.execute(str(BOARDS_DIR / name / "manifest.py"))
    frozen = {entry.target_path: Path(entry.full_path) for entry in manifest.files()}
    package = {f"jikimi/{path.name}": path for path in sorted((FIRMWARE_DIR / "jikimi").glob("*.py"))}
    assert frozen == {**package, "board.py": BOARDS_DIR / name / "board.py"}


def test_flash_says_per_board_how_the_mpy_files_fit_its_chips_heap(monkeypatch):
    # The .mpy files need MPY_SMALLEST_HEAP_BYTES (bench_heap, tests/test_heap_budget.py): all
    # of what an ESP32 starts with, and a C3's or S3's 64 KiB with the 8 KiB of room to spare.
    esp32 = heap_warning("esp32_devkitc")
    assert esp32 is not None and "needs about 56 KiB of the 56 KiB heap" in esp32 and "little room to spare" in esp32
    assert "freeze the firmware" in esp32
    assert heap_warning("esp32c3") is None and heap_warning("esp32s3") is None
    monkeypatch.setattr(boards, "MPY_SMALLEST_HEAP_BYTES", 58 * 1024)  # a firmware grown past the chip's heap
    warning = heap_warning("esp32_devkitc")
    assert warning is not None and "does not fit the 56 KiB heap" in warning and "heap must grow" in warning
