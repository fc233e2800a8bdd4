"""The virtual board: the real `micropython` binary with simulated pins, a console on a pty,
power and reset, and BLE on a real Bumble stack (tests/mpy/*.py are the device scripts)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
from bumble import att, hci

from jikimi_host.rig.sim_process import SimProcess
from jikimi_host.wait import until
from jikimi_host.sim.board import (
    DEEPSLEEP_RESET, HARD_RESET, PIN_WAKE, PWRON_RESET, SOFT_RESET, TIMER_WAKE, WDT_RESET, VirtualBoard,
    unwrap_ticks_us,
)
from jikimi_host.sim.phone import Phone
from jikimi_host.sim.run import deploy_firmware

pytestmark = pytest.mark.micropython
SCRIPTS = Path(__file__).parent / "mpy"
PASSKEY = 493817
STATUS = "eb670102-ef64-4ea7-8de3-8e275b7c36fc"
CONTROL = "eb670103-ef64-4ea7-8de3-8e275b7c36fc"
INFO = "eb670104-ef64-4ea7-8de3-8e275b7c36fc"
OPEN_CONTROL = "eb670105-ef64-4ea7-8de3-8e275b7c36fc"
# Bounce trains are played by the device side; what the firmware's IRQ handler sees may be late
# by the scheduling delay. Tolerances are generous for a shared CI machine; bench/bench_sim.py
# prints the real figures.
EDGE_GAP_TOLERANCE_US = 20_000
EDGE_GAP_MEDIAN_TOLERANCE_US = 2_000


@pytest.fixture
async def boards(tmp_path, radio):
    """Start boards running a tests/mpy script; every one is stopped afterwards."""
    started: list[VirtualBoard] = []

    async def start(script: str, *args: str, ble: bool = False, flash: Path | None = None) -> VirtualBoard:
        board = VirtualBoard(flash or tmp_path / f"flash{len(started)}", radio=radio if ble else None)
        started.append(board)
        deploy_firmware(board)
        board.deploy({"main.py": SCRIPTS / script})
        await board.start(args=args)
        return board

    yield start
    for board in started:
        await board.stop()


async def test_a_bounce_train_arrives_with_its_timing(boards):
    gaps_us = [800, 1500, 600, 2500, 1000, 3000]
    board = await boards("pins_and_power.py", "edges", str(len(gaps_us) + 1))
    await board.console.expect("ready edges", not_matching="Traceback")
    board.bounce("button", 0, gaps_us)
    line = (await board.console.expect(r"^edges (.*)\n", timeout_s=20)).group(1)
    edges = [tuple(map(int, item.split(":"))) for item in line.split()]
    # One IRQ per edge. The handler reads pin.value() when it runs, as on a board, so a handler
    # delayed past the next edge sees the newer level; the last one sees where the train ends.
    assert len(edges) == len(gaps_us) + 1 and edges[-1][1] == 0
    seen = [b - a for (a, _), (b, _) in zip(edges, edges[1:])]
    errors = [abs(s - g) for s, g in zip(seen, gaps_us)]
    assert statistics.median(errors) < EDGE_GAP_MEDIAN_TOLERANCE_US, seen
    assert max(errors) < EDGE_GAP_TOLERANCE_US, seen


async def test_a_hold_is_timed_from_when_the_device_saw_the_press(tmp_path, radio):
    # A loaded host can leave the device's process unscheduled for a second or more just as a
    # press is sent: the firmware then sees it late, and a hold timed from the sending would be
    # short by that much to it. Here the process is stopped for 1.5 s across the press.
    from jikimi_host.rig.firmware import CONFIG, events_logged, expect_log, firmware_board

    hold_s = CONFIG["gestures"]["hold_ms"] / 1000 + 0.5
    async for bell in firmware_board(tmp_path / "flash", radio, CONFIG):
        await bell.start()
        await expect_log(bell, "ready")
        pid = bell.boots[-1].process.pid
        os.kill(pid, signal.SIGSTOP)
        resume = asyncio.get_running_loop().call_later(1.5, os.kill, pid, signal.SIGCONT)
        try:
            await bell.press("button", hold_s=hold_s)
        finally:
            resume.cancel()
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        await until(lambda: events_logged(bell, "alarm_raised"), what="the alarm of a hold the device saw late")


async def test_a_pause_after_a_hold_is_counted_from_when_the_device_saw_the_release(tmp_path, radio):
    # The device stalls across a release: press() returns only once the device has seen it, so
    # the pause slept after it is a pause to the device too. Were the release sent and press()
    # returned at once, the release and the next press would reach the device back to back, and
    # its debouncer would rightly take them for bounce: two presses seen, no triple.
    from jikimi_host.rig.firmware import CONFIG, expect_log, firmware_board

    slow = dict(CONFIG, gestures=dict(CONFIG["gestures"], hold_ms=5000, pairing_hold_ms=10000, multi_window_ms=5000))
    async for bell in firmware_board(tmp_path / "flash", radio, slow):
        await bell.start()
        await expect_log(bell, "ready")
        first = asyncio.ensure_future(bell.press("button", hold_s=0.5))
        await expect_log(bell, "core", msg="input button 1")
        pid = bell.boots[-1].process.pid
        os.kill(pid, signal.SIGSTOP)  # before the release goes out, half a second from now
        resume = asyncio.get_running_loop().call_later(1.5, os.kill, pid, signal.SIGCONT)
        try:
            await first
            for _ in range(2):
                await asyncio.sleep(0.1)
                await bell.press("button", hold_s=0.1)
        finally:
            resume.cancel()
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        await expect_log(bell, "core", msg="gesture triple")


async def test_outputs_are_recorded_with_device_timestamps(boards):
    board = await boards("pins_and_power.py", "outputs")
    await board.console.expect("ready outputs 2000000")  # 4.0 V through the 1:2 divider, in uV
    await board.console.expect("outputs done", not_matching="Traceback")
    await asyncio.sleep(0.1)
    pwm = [(o.freq, o.value) for o in board.pwm_history("buzzer")]
    assert pwm[0] == (2000, 0)
    assert (4000, 32768) in pwm and pwm[-1] == (4000, 0)
    times = [o.device_us for o in board.pwm_history("buzzer")]
    assert times == sorted(times)
    assert board.level("led") == 1  # toggled three times from 0


async def test_power_cut_reset_watchdog_and_deep_sleep(boards):
    board = await boards("pins_and_power.py", "watchdog")
    await board.console.expect(rf"boot {PWRON_RESET} 0")
    await board.console.expect("stopped feeding")
    await board.console.expect(rf"boot {WDT_RESET} 0", timeout_s=10)  # the watchdog bit

    await board.power_cut()
    await board.start(args=["reset"])
    await board.console.expect(rf"boot {SOFT_RESET} 0", timeout_s=10)  # machine.reset()

    await board.reset()
    await board.console.expect(rf"boot {HARD_RESET} 0")

    await board.power_cut()
    await board.start(args=["deepsleep", "300"])
    await board.console.expect(rf"boot {DEEPSLEEP_RESET} {TIMER_WAKE}", timeout_s=10)
    await board.power_cut()
    await board.start(args=["deepsleep", "0"])
    await board.console.expect("ready deepsleep")
    await asyncio.sleep(0.3)
    assert not board.running  # asleep
    await board.press("button")
    await board.console.expect(rf"boot {DEEPSLEEP_RESET} {PIN_WAKE}", timeout_s=10)

    causes = (board.flash / "boots.txt").read_text().split()  # the flash kept every boot
    assert causes == ["1", "3", "1", "5", "2", "1", "4", "1", "4"]


async def test_a_heap_sample_comes_between_log_lines_never_inside_one(boards):
    # The firmware writes each log line piece by piece; a heap sample printed in the midst of one
    # would break that line (a record the host waits for, lost) and the sample with it.
    board = await boards("log_in_pieces.py")
    await board.console.expect(r'^J \{"n": 0, ', 30)
    samples = [await board.heap() for _ in range(20)]
    assert all(sample.alloc > 0 and sample.largest_free > 0 for sample in samples)
    lines = [line for line in board.console.text().splitlines() if line.startswith("J ")]
    assert len(lines) > 20
    broken = [line for line in lines[:-1] if not line.endswith("}")]  # the last may be half written
    assert broken == []
    assert all(json.loads(line[2:])["n"] == n for n, line in enumerate(lines[:-1]))


async def test_mpremote_lists_and_copies_files_on_the_virtual_flash(boards, tmp_path):
    board = await boards("pins_and_power.py", "outputs")
    await board.console.expect("outputs done")
    mpremote = str(Path(sys.executable).with_name("mpremote"))
    source = tmp_path / "note.txt"
    source.write_text("kept on flash")

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([mpremote, "connect", board.console.path, "resume", *args],
                              capture_output=True, text=True, timeout=60)

    listing = await asyncio.to_thread(run, "ls")
    assert listing.returncode == 0, listing.stderr
    assert "main.py" in listing.stdout and "boots.txt" in listing.stdout
    copied = await asyncio.to_thread(run, "cp", str(source), ":note.txt")
    assert copied.returncode == 0, copied.stderr
    assert (board.flash / "note.txt").read_text() == "kept on flash"
    shown = await asyncio.to_thread(run, "exec", "print(open('note.txt').read())")
    assert "kept on flash" in shown.stdout


# -- BLE --------------------------------------------------------------------------------------


async def start_peripheral(boards, flash: Path | None = None, addr_mode: int = 0) -> VirtualBoard:
    board = await boards("ble_peripheral.py", str(PASSKEY), str(addr_mode), ble=True, flash=flash)
    await board.console.expect("advertising", not_matching="Traceback")
    return board


async def test_pairs_by_passkey_bonds_notifies_indicates_and_takes_writes(boards, radio):
    board = await start_peripheral(boards)
    phone = await Phone(radio).start()
    await phone.connect(board.ble.identity_address)
    await board.console.expect(r"connect \d+ 1 c00000000001")

    status = await phone.characteristic(STATUS)
    with pytest.raises(att.ATT_Error) as refused:
        await status.read_value()  # authenticated characteristic, unpaired link
    assert refused.value.error_code == att.ATT_INSUFFICIENT_AUTHENTICATION_ERROR
    info = await phone.characteristic(INFO)
    assert await info.read_value() == b"v1"  # the open one

    await phone.pair(PASSKEY)
    await board.console.expect(r"passkey_action \d+ 3")
    # as NimBLE does it: the encryption is reported, then the bond goes to the device's handler
    await board.console.expect(r"encryption \d+ 1 1 1 16")  # encrypted, authenticated, bonded
    await board.console.expect(r"set_secret 2 1")
    assert await status.read_value() == b"status:0"

    notified: list[bytes] = []
    await phone.subscribe(status, notified.append)
    control = await phone.characteristic(CONTROL)
    await control.write_value(b"notify:3", with_response=True)
    await board.console.expect(r"write \d+ notify:3")
    for _ in range(100):
        if len(notified) == 3:
            break
        await asyncio.sleep(0.05)
    assert notified == [b"n0", b"n1", b"n2"]

    indicated: list[bytes] = []
    await phone.subscribe(status, indicated.append, indicate=True)
    await control.write_value(b"indicate", with_response=True)
    await board.console.expect(r"indicate_done \d+ \d+ 0")
    assert indicated == [b"indicated"]

    await phone.peer.request_mtu(185)
    await board.console.expect(r"mtu \d+ 185")
    await phone.disconnect()
    await board.console.expect(r"disconnect \d+")


async def test_a_wrong_passkey_fails_and_gets_nothing(boards, radio):
    board = await start_peripheral(boards)
    phone = await Phone(radio).start()
    await phone.connect(board.ble.identity_address)
    with pytest.raises(Exception):
        await phone.pair(PASSKEY + 1)
    control = await phone.characteristic(CONTROL)
    with pytest.raises(att.ATT_Error):
        await control.write_value(b"status:hacked", with_response=True)
    assert not re.search(r"^set_secret [12] ", board.console.text(), re.M)  # no bond: no peer keys
    assert "write" not in board.console.text()


async def test_the_device_can_ask_the_phone_to_pair(boards, radio):
    board = await start_peripheral(boards)
    phone = await Phone(radio).start()
    phone.passkey = PASSKEY
    await phone.connect(board.ble.identity_address)
    control = await phone.characteristic(OPEN_CONTROL)
    await control.write_value(b"pair", with_response=True)  # the script calls gap_pair()
    await board.console.expect(r"passkey_action \d+ 3")
    await board.console.expect(r"encryption \d+ 1 1 1 16")


@pytest.mark.parametrize("addr_mode", [0, 2], ids=["static-address", "private-address"])
async def test_bond_survives_a_power_cut(boards, radio, addr_mode):
    board = await start_peripheral(boards, addr_mode=addr_mode)
    phone = await Phone(radio).start()
    first_address = board.ble.on_air_address
    assert (first_address == board.ble.identity_address) == (addr_mode == 0)
    await phone.connect(first_address)
    await phone.pair(PASSKEY)
    await board.console.expect(r"encryption \d+ 1 1 1 16")
    await board.console.expect(r"bonded 1 1")  # committed to flash once authenticated
    assert (board.flash / "secrets.json").exists()

    await board.power_cut()
    for _ in range(100):  # the phone notices the link is gone
        if phone.connection is None or phone.connection.handle not in phone.device.connections:
            break
        await asyncio.sleep(0.05)
    mark = len(board.console.text())
    await board.start(args=[str(PASSKEY), str(addr_mode)])
    await board.console.expect("advertising", start=mark)
    if addr_mode == 2:  # a new private address each boot; the phone resolves it with the IRK
        assert board.ble.on_air_address != first_address
    await phone.connect(board.ble.identity_address)
    await phone.encrypt()  # with the stored bond: no pairing
    await board.console.expect(r"encryption \d+ 1 1 1 16", start=mark)
    assert "passkey_action" not in board.console.text()[mark:]
    status = await phone.characteristic(STATUS)
    assert await status.read_value() == b"status:0"


async def test_a_phone_in_another_process_reaches_the_board_over_hci(boards, radio):
    board = await start_peripheral(boards)
    transport = await radio.serve_hci()
    script = SCRIPTS.parent / "hci_phone.py"
    done = await asyncio.create_subprocess_exec(
        sys.executable, str(script), transport, str(board.ble.identity_address), INFO,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(done.communicate(), 60)
    finally:
        if done.returncode is None:
            done.kill()
            await done.wait()
    assert done.returncode == 0, err.decode()
    assert out.decode().strip().endswith("info v1")


async def test_jikimi_sim_prints_its_pty_and_hci_transport_and_stops_on_ctrl_c(tmp_path):
    jikimi = str(Path(sys.executable).with_name("jikimi"))
    sim = await asyncio.create_subprocess_exec(
        jikimi, "sim", "--flash", str(tmp_path / "flash"), "--script", str(SCRIPTS / "ble_peripheral.py"),
        str(PASSKEY), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        facts = {}
        while "hci" not in facts or "ble address" not in facts:
            line = (await asyncio.wait_for(sim.stdout.readline(), 30)).decode()
            assert line, (await sim.stderr.read()).decode()
            key, _, value = line.strip().partition(": ")
            facts[key] = value
        assert facts["pty"].startswith("/dev/pts/")
        phone = await asyncio.create_subprocess_exec(
            sys.executable, str(SCRIPTS.parent / "hci_phone.py"), facts["hci"], facts["ble address"], INFO,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(phone.communicate(), 60)
        assert phone.returncode == 0, err.decode()
        assert out.decode().strip() == "info v1"
        assert (tmp_path / "flash" / "lib" / "jikimi" / "protocol.py").exists()
        sim.send_signal(signal.SIGINT)
        rest, _ = await asyncio.wait_for(sim.communicate(), 30)
        assert sim.returncode == 0
        assert rest.decode().strip().endswith("stopped")
    finally:
        if sim.returncode is None:
            sim.kill()
            await sim.wait()


async def test_jikimi_sim_starts_a_bell_and_a_door_alarm_together(tmp_path):
    async with SimProcess("--quiet", "--flash", str(tmp_path / "bell"), "--passkey", "093514",
                          "--door", "402981") as sim:
        facts = sim.facts
        assert facts["pty"] != facts["door pty"] and facts["ble address"] != facts["door ble address"]

        def ready_roles(log: str) -> list | None:
            for line in Path(log).read_text(errors="replace").splitlines():
                if line.startswith("J {") and '"ready"' in line:
                    return json.loads(line[2:])["roles"]
            return None

        await until(lambda: ready_roles(facts["console log"]) and ready_roles(facts["door console log"]), 30,
                    "both boards to boot the app")
        assert ready_roles(facts["console log"]) == ["panic"] and ready_roles(facts["door console log"]) == ["door"]
    assert sim.returncode == 0


async def test_a_connect_request_that_reaches_no_advertiser_fails_on_the_central_as_on_air(radio):
    # A phone hears an advert, but the board stops advertising (to change its data) before the
    # phone's CONNECT_IND arrives: on air the phone's connection fails to be established (0x3E);
    # it must not stay half-open with the board knowing nothing of it.
    board, phone = Phone(radio, "board"), Phone(radio, "phone")
    await board.start()
    await phone.start()
    await board.device.start_advertising()
    controllers = {c.name: c for c in radio.link.controllers}
    controller, board_controller = controllers["phone-controller"], controllers["board-controller"]
    create = controller.create_le_connection

    def advertiser_stops_first(peer_address):
        board_controller.le_legacy_advertiser.enabled = False
        for advertising_set in board_controller.advertising_sets.values():
            advertising_set.enabled = False
        create(peer_address)

    controller.create_le_connection = advertiser_stops_first
    connection = await phone.device.connect(board.device.random_address, transport=hci.PhysicalTransport.LE)
    deadline = asyncio.get_running_loop().time() + 5
    while connection.handle in phone.device.connections:  # dropped, not left half-open
        assert asyncio.get_running_loop().time() < deadline, "the phone still thinks it is connected"
        await asyncio.sleep(0.01)
    assert not board.device.connections


def test_a_32bit_boards_wrapped_ticks_are_read_on_the_hosts_clock():
    # ticks_us() on a 32-bit build wraps every 2**30 us (about 18 min); on a 64-bit one it is the
    # host's CLOCK_MONOTONIC itself. Output timestamps must be comparable with time.monotonic().
    host_s = 5000.0  # more than 2**30 us into the host's uptime
    sent_us = int(host_s * 1e6) - 1500  # set 1.5 ms before the host read it
    assert unwrap_ticks_us(sent_us, host_s) == sent_us  # 64-bit: as it is
    assert unwrap_ticks_us(sent_us % (1 << 30), host_s) == sent_us  # 32-bit: unwrapped
    assert unwrap_ticks_us(1000, 0.5) == 1000  # 32-bit before its first wrap
