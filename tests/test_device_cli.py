"""`jikimi flash`, `provision` and `monitor` against the virtual board's console pty: the same
mpremote raw REPL and pyserial port a real board gives, with the real MicroPython behind it."""

from __future__ import annotations

import ast
import asyncio
import contextlib
import hashlib
import io
import json
import os
import re
import signal
import socket
import sys
import threading
from pathlib import Path

import pytest
from jikimi_host import cli
from jikimi_host.device.boards import known_boards
from jikimi_host.device.image import build_image
from jikimi_host.device.provision import passkey_label
from jikimi_host.device.session import WATCHDOG_MS
from jikimi_host.device.log_line import parse_log_line
from jikimi_host.toolchain.constfold import module_constants
from jikimi_host.device.monitor import format_record
from jikimi_host.paths import FIRMWARE_DIR
from jikimi_host.rig.firmware import expect_log, log_records
from jikimi_host.sim.board import VirtualBoard

BLANK_MAIN = "print('no firmware yet')\n"


async def jikimi(*argv: str) -> tuple[int, str, str]:
    """Run `jikimi ARGV...` in this process, off the event loop (the board's host half keeps
    running); its exit code, stdout and stderr."""

    def run() -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli.main(list(argv))
        return code, out.getvalue(), err.getvalue()

    return await asyncio.to_thread(run)


@contextlib.asynccontextmanager
async def fresh_board(tmp_path: Path, radio=None):
    """A board with MicroPython and nothing of ours: a stand-in main.py (so that a reset boots
    whatever main.py is there by then, as on a board) that ends at the REPL."""
    board = VirtualBoard(tmp_path / "flash", radio=radio)
    board.deploy({"main.py": BLANK_MAIN})
    try:
        await board.start()
        await board.console.expect("no firmware yet")
        yield board
    finally:
        await board.stop()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def summary(stdout: str) -> dict[str, int]:
    match = re.search(r"(\d+) file\(s\) copied \(\d+ bytes\), (\d+) unchanged, (\d+) removed", stdout)
    assert match, stdout
    return dict(zip(("copied", "unchanged", "removed"), map(int, match.groups())))


# -- flash ----------------------------------------------------------------------------------


@pytest.mark.micropython
async def test_flash_copies_the_image_then_only_what_changed(tmp_path):
    image = build_image("sim", tmp_path / "image")
    async with fresh_board(tmp_path) as board:
        code, out, err = await jikimi("flash", "--port", board.console.path, "--board", "sim", "--no-reset")
        assert code == 0, err + out
        assert summary(out) == {"copied": len(image.files), "unchanged": 0, "removed": 0}
        # it says plainly that .mpy files need all of the ESP32's starting heap (tests/test_heap_budget.py)
        assert "needs about 56 KiB of the 56 KiB heap that sim's chip starts MicroPython with" in err
        assert "freeze the firmware" in err
        for file in image.files:  # main.py as source, the package in /lib, the board at the root
            assert sha256(board.flash / file.device_path) == file.sha256, file.device_path
        names = {f.device_path for f in image.files}
        assert {"main.py", "lib/jikimi/app.mpy", "board.mpy", "machine.mpy", "simlink.mpy",
                "esp32.mpy"} <= names
        assert "bluetooth.mpy" not in names  # MicroPython's own module (NimBLE) does BLE
        assert not list(board.flash.rglob("*.new"))

        code, out, err = await jikimi("flash", "--port", board.console.path, "--board", "sim", "--no-reset")
        assert code == 0, err + out
        assert summary(out) == {"copied": 0, "unchanged": len(image.files), "removed": 0}

        # An older app.mpy on the device, and a stale source that would shadow board.mpy
        (board.flash / "lib/jikimi/app.mpy").write_bytes(b"older")
        (board.flash / "board.py").write_text("NAME = 'sim'\n")
        code, out, err = await jikimi("flash", "--port", board.console.path, "--board", "sim", "--no-reset")
        assert code == 0, err + out
        assert summary(out) == {"copied": 1, "unchanged": len(image.files) - 1, "removed": 1}
        assert "copied lib/jikimi/app.mpy" in out and "removed board.py" in out
        assert sha256(board.flash / "lib/jikimi/app.mpy") == sha256(image.build_dir / "firmware/jikimi/app.mpy")
        assert not (board.flash / "board.py").exists()

        # The device holds the sim board now: another board is refused unless --force
        code, out, err = await jikimi("flash", "--port", board.console.path, "--board", "esp32_devkitc",
                                      "--no-reset")
        assert code == 2
        assert "holds board 'sim', not 'esp32_devkitc'" in err and "--force" in err
        assert sha256(board.flash / "board.mpy") == sha256(image.build_dir / "boards/sim/board.mpy")


@pytest.mark.micropython
async def test_flash_provision_and_reset_boot_the_firmware_then_a_reflash_stops_the_app(tmp_path, radio):
    async with fresh_board(tmp_path, radio) as board:
        code, out, err = await jikimi("flash", "--port", board.console.path, "--board", "sim", "--no-reset")
        assert code == 0, err + out

        code, out, err = await jikimi(
            "provision", "--port", board.console.path, "--name", "hall", "--roles", "panic,door",
            "--passkey", "093514", "--set", "power.idle_sleep_s=0", "--qr")
        assert code == 0, err + out
        assert passkey_label("hall", "093514") in out
        assert "093514" not in err
        assert "█" in out or "▀" in out or "▄" in out  # the QR code, drawn with block characters
        written = json.loads((board.flash / "config.json").read_text())
        assert written == {"passkey": "093514", "board": "sim", "name": "hall", "roles": ["panic", "door"],
                           "power": {"idle_sleep_s": 0}}
        assert not (board.flash / "config.json.new").exists()

        ready = await expect_log(board, "ready", timeout_s=30)  # provision reset the board
        assert ready["roles"] == ["panic", "door"] and ready["ble"] is True
        assert not [r for r in log_records(board) if r["k"] in ("config_error", "task_error")]

        # Flashing a board whose app runs: Ctrl-C stops it (its watchdog is fed meanwhile),
        # nothing differs, and the reset boots it again.
        boots = len(board.boots)
        code, out, err = await jikimi("flash", "--port", board.console.path, "--board", "sim")
        assert code == 0, err + out
        assert "its app was running" in out
        assert summary(out)["copied"] == 0
        await wait_for(lambda: len(board.boots) > boots, "the reset after flashing")
        await wait_for(lambda: sum(r["k"] == "ready" for r in log_records(board)) >= 2, "the second boot")


async def wait_for(condition, what: str, timeout_s: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


@pytest.mark.micropython
async def test_provision_with_a_bad_field_names_it_and_never_opens_the_port(tmp_path):
    async with fresh_board(tmp_path) as board:
        code, out, err = await jikimi("provision", "--port", board.console.path, "--board", "sim",
                                      "--set", "gestures.hold_ms=5", "--passkey", "12345x")
        assert code == 2
        assert "gestures.hold_ms: must be an integer from 500 to 30000, got 5" in err
        assert "passkey: must be a string of exactly 6 digits" in err and "12345x" not in err + out
        assert not (board.flash / "config.json").exists()
        assert "raw REPL" not in board.console.text()  # the device was never touched


@pytest.mark.micropython
async def test_flash_with_a_config_then_provision_with_a_generated_passkey(tmp_path):
    bad, good = tmp_path / "bad.json", tmp_path / "good.json"
    bad.write_text(json.dumps({"passkey": "093514", "board": "sim", "siren": {"volume_pct": 90}}))
    good.write_text(json.dumps({"passkey": "093514", "board": "sim", "name": "door"}))
    async with fresh_board(tmp_path) as board:
        code, out, err = await jikimi("flash", "--port", board.console.path, "--board", "sim",
                                      "--config", str(bad))
        assert code == 2 and "siren.volume_pct: must be an integer from 1 to 50, got 90" in err
        assert "raw REPL" not in board.console.text()

        code, out, err = await jikimi("flash", "--port", board.console.path, "--board", "sim",
                                      "--config", str(good), "--no-reset")
        assert code == 0, err + out
        assert json.loads((board.flash / "config.json").read_text()) == json.loads(good.read_text())
        assert "copied config.json" in out

        code, out, err = await jikimi("provision", "--port", board.console.path, "--no-reset")
        assert code == 0, err + out  # the board (sim) comes from the device's board.mpy
        config = json.loads((board.flash / "config.json").read_text())
        assert config["board"] == "sim" and re.fullmatch(r"\d{6}", config["passkey"])
        assert f"Jikimi sim  passkey {config['passkey']}" in out
        assert out.count(config["passkey"]) == 1


# -- errors ---------------------------------------------------------------------------------


async def test_unknown_board_and_missing_port_are_named(tmp_path):
    code, _, err = await jikimi("flash", "--port", str(tmp_path), "--board", "esp33")
    assert code == 2
    assert "unknown board 'esp33'" in err and all(name in err for name in known_boards())

    missing = str(tmp_path / "ttyUSB9")
    for argv in (("flash", "--board", "sim"), ("provision", "--board", "sim", "--passkey", "123456"),
                 ("monitor",)):
        code, _, err = await jikimi(*argv, "--port", missing)
        assert code == 2, argv
        assert f"no such port: {missing}" in err, err

    code, _, err = await jikimi("flash", "--board", "sim")
    assert code == 2 and "no port given" in err


async def test_a_port_without_micropython_and_a_missing_firmware_file_are_clear_errors(tmp_path):
    master, slave = os.openpty()  # a serial port where nothing answers
    try:
        port = os.ttyname(slave)
        code, _, err = await jikimi("flash", "--port", port, "--board", "sim", "--timeout", "1")
        assert code == 1
        assert f"no MicroPython REPL on {port}; flash MicroPython first with --micropython-bin" in err
        code, _, err = await jikimi("flash", "--port", port, "--board", "sim",
                                    "--micropython-bin", str(tmp_path / "ESP32_GENERIC.bin"))
        assert code == 2 and f"no such MicroPython firmware file: {tmp_path / 'ESP32_GENERIC.bin'}" in err
    finally:
        os.close(master)
        os.close(slave)


def test_the_watchdog_fed_during_a_session_matches_the_app():
    # read from the source: jikimi.app needs a board's machine module to import
    app = ast.parse((FIRMWARE_DIR / "jikimi" / "app.py").read_text(encoding="utf-8"))
    assert module_constants(app)["WATCHDOG_MS"] == WATCHDOG_MS


# -- monitor --------------------------------------------------------------------------------


def test_log_lines_are_parsed_and_formatted():
    record = parse_log_line('J {"t": 1234, "k": "core", "msg": "event alarm", "seq": 3}\r')
    assert record == {"t": 1234, "k": "core", "msg": "event alarm", "seq": 3}
    assert parse_log_line('J {"t": 12, "k": "co') is None  # cut by a reset
    assert parse_log_line(">>> ") is None
    assert format_record(record).plain.split() == ["1.234", "core", "event", "alarm", "seq=3"]


async def read_line(stream: asyncio.StreamReader, timeout_s: float = 30.0) -> str:
    line = await asyncio.wait_for(stream.readline(), timeout_s)
    assert line, "the monitor ended"
    return line.decode()


def as_in_a_terminal() -> None:
    # Ctrl-C reaches a command in a terminal's foreground. A test run started in the background
    # of a non-interactive shell (`make test &`, `nohup ... &`) has SIGINT ignored, and its
    # children inherit that: the monitor would never see the Ctrl-C this test sends.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@contextlib.asynccontextmanager
async def monitor_process(*args: str):
    # faulthandler: a monitor that does not stop can be asked where it is (exits_on_ctrl_c).
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-X", "faulthandler", "-m", "jikimi_host.cli", "monitor", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, preexec_fn=as_in_a_terminal)
    try:
        assert "monitoring" in await read_line(process.stderr)  # the port is open
        yield process
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


@pytest.mark.micropython
async def test_monitor_json_prints_the_records_of_a_booting_board_and_exits_0_on_ctrl_c(tmp_path, radio):
    from jikimi_host.rig.firmware import CONFIG
    from jikimi_host.sim.run import deploy_firmware

    board = VirtualBoard(tmp_path / "flash", radio=radio)
    deploy_firmware(board)
    board.deploy({"config.json": json.dumps(CONFIG)})
    try:
        await board.start(None)  # the REPL first: the console pty exists, nothing logged yet
        async with monitor_process("--port", board.console.path, "--json") as monitor:
            await board.power_cut()
            await board.start()  # power on with main.py: the firmware boots
            kinds = []
            while "ready" not in kinds:
                record = json.loads(await read_line(monitor.stdout))
                assert isinstance(record["t"], int)
                kinds.append(record["k"])
            assert kinds[0] == "boot"
            monitor.send_signal(signal.SIGINT)
            assert await exits_on_ctrl_c(monitor) == 0
    finally:
        await board.stop()


async def exits_on_ctrl_c(monitor: asyncio.subprocess.Process, timeout_s: float = 15.0) -> int:
    """The monitor's exit code once it has stopped for the SIGINT just sent; if it has not
    stopped in `timeout_s`, fail with its threads' stacks (faulthandler, on SIGABRT)."""
    try:
        return await asyncio.wait_for(monitor.wait(), timeout_s)
    except TimeoutError:
        monitor.send_signal(signal.SIGABRT)
        try:
            stderr = await asyncio.wait_for(monitor.stderr.read(), 10)
        except TimeoutError:
            stderr = b"(no stack: stderr stayed open)"
        pytest.fail(f"the monitor was still running {timeout_s:.0f} s after Ctrl-C:\n{stderr.decode(errors='replace')}")


async def test_monitor_reopens_a_port_that_went_away():
    """A network port (socket://) that drops, as a chip's native USB port does on reset."""
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    seen_first_boot = threading.Event()
    finished = threading.Event()

    def board() -> None:
        # Two boots, each logging a record every 20 ms (opening a port drops what came
        # before, so a one-off line could be missed); the first hangs up once it was seen.
        for boot, until in ((1, seen_first_boot), (2, finished)):
            connection, _ = server.accept()
            with connection:
                t = 0
                while not until.wait(0.02):
                    t += 20
                    record = {"t": t, "k": "tick", "boot": boot}
                    with contextlib.suppress(OSError):
                        connection.sendall(b"noise\r\nJ " + json.dumps(record).encode() + b"\r\n")

    thread = threading.Thread(target=board, daemon=True)
    thread.start()
    try:
        async with monitor_process("--port", f"socket://127.0.0.1:{port}", "--json") as monitor:
            for boot in (1, 2):
                while True:
                    record = json.loads(await read_line(monitor.stdout))  # only records: no noise
                    assert record["k"] == "tick"
                    if record["boot"] == boot:
                        break
                seen_first_boot.set()
            assert "reopen" in await read_line(monitor.stderr)
    finally:
        seen_first_boot.set()
        finished.set()
        server.close()
        thread.join(timeout=5)
