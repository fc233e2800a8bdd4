"""The modem session recovers from what real modems do (relay/modem.py against the fake modem's
faults, relay/fake_modem.py): junk and ERROR at wake-up, echo, a stale `> ` prompt, a modem still
booting, the port vanishing and coming back, a SIM not ready yet or locked, no network yet.

Each fault is driven through a real pty, and each test checks what "the network" (the fake's log)
got: the SMS exactly once. Clients are built with retries=0 where the recovery must happen inside
one session start (init polls and resynchronises by itself), so a retry loop cannot hide its loss.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import selectors
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from jikimi_host.relay.fake_modem import STALE_TEXT, FakeModem, Faults
from jikimi_host.relay.modem import Modem, ModemError, _registration_stat
from jikimi_host.relay.telephony import ModemTelephony, TelephonyError
from jikimi_host.wait import until_blocking

GUARDIAN = "+821000000008"  # fictional (010-0000 block); only the fake modem "sends"
ALERT = "[지키미] 긴급: 김지수 님이 비상벨을 눌렀습니다."
INIT = ["AT", "ATE0", "AT+CMEE=1", "AT+CPIN?", "AT+CMGF=0", "AT+CREG?"]

MakeFake = Callable[..., FakeModem]
MakeModem = Callable[..., Modem]


@pytest.fixture
def make_fake(tmp_path: Path) -> Iterator[MakeFake]:
    """Start fake modems, each behind a symlink as /dev/serial/by-id gives (stopped at teardown,
    even when the test fails)."""
    started: list[FakeModem] = []

    def make(**faults: Any) -> FakeModem:
        n = len(started)
        fake = FakeModem(tmp_path / f"net{n}.jsonl", Faults(**faults), link=tmp_path / f"modem{n}")
        fake.start()
        started.append(fake)
        return fake

    yield make
    for fake in started:
        fake.stop()


@pytest.fixture
def make_modem() -> Iterator[MakeModem]:
    """Modem clients on a fake's link, not opened: the first send starts the session, as in the
    relay. Test-sized polling and backoff; closed at teardown."""
    opened: list[Modem] = []

    def make(fake: FakeModem, **options: Any) -> Modem:
        options.setdefault("backoff_s", 0.01)
        options.setdefault("poll_s", 0.05)
        modem = Modem(str(fake.link), **options)
        opened.append(modem)
        return modem

    yield make
    for modem in opened:
        modem.close()


def sms_texts(fake: FakeModem) -> list[str]:
    return [e["text"] for e in fake.events if e["kind"] == "sms"]


def assert_sent_once(fake: FakeModem, text: str = ALERT) -> None:
    fake.wait_for_events(1, kind="sms", timeout_s=10)
    assert sms_texts(fake).count(text) == 1, sms_texts(fake)


# --- 1. ERROR to the wake-up AT ----------------------------------------------------------------


@pytest.mark.parametrize("errors", [1, 2])
def test_error_to_the_first_at_is_resynchronised(make_fake: MakeFake, make_modem: MakeModem, errors: int) -> None:
    fake = make_fake(error_first_at=errors)  # junk in the modem's input buffer garbles the first line(s)
    modem = make_modem(fake, retries=0)
    assert len(modem.send_sms(GUARDIAN, ALERT)) == 1
    assert_sent_once(fake)
    assert fake.commands[: errors + 1] == ["AT"] * (errors + 1)
    assert fake.commands[errors:errors + len(INIT)] == INIT


def test_a_modem_that_keeps_answering_error_to_at_is_a_retryable_init_failure(
    make_fake: MakeFake, make_modem: MakeModem
) -> None:
    fake = make_fake(error_first_at=1000)
    modem = make_modem(fake, retries=0, init_attempts=3)
    with pytest.raises(ModemError) as caught:
        modem.send_sms(GUARDIAN, ALERT)
    assert (caught.value.code, caught.value.retryable) == ("INIT", True)
    message = caught.value.message
    assert str(fake.link) in message and "ERROR" in message and "after 3 tries" in message
    assert fake.commands == ["AT"] * 3
    fake.faults.error_first_at = 0  # whatever it was clears (a power cycle): the next send gets through
    modem.send_sms(GUARDIAN, ALERT)
    assert_sent_once(fake)


async def test_an_init_failure_reaches_the_relay_as_retryable(make_fake: MakeFake) -> None:
    fake = make_fake(error_first_at=1000)
    phone = ModemTelephony(str(fake.link), real_modem_opt_in=True, allow_emergency=False, retries=1,
                           backoff_s=0.01)
    try:
        with pytest.raises(TelephonyError) as caught:
            await phone.send_sms(GUARDIAN, ALERT)
        assert (caught.value.code, caught.value.retryable) == ("INIT", True)
        assert str(fake.link) in caught.value.message
    finally:
        await phone.close()
    assert fake.events == []


def test_a_bare_error_after_cmee_is_on_is_retryable_and_resynchronises(
    make_fake: MakeFake, make_modem: MakeModem
) -> None:
    fake = make_fake()
    modem = make_modem(fake, retries=0)
    modem.open()
    fake.faults.error_first_at = 1
    with modem._lock:  # a session problem in the middle: the next AT answers ERROR
        with pytest.raises(ModemError) as caught:
            modem._command("AT")
    assert (caught.value.code, caught.value.retryable) == ("ERROR", True)
    commands_before = len(fake.commands)
    modem.send_sms(GUARDIAN, ALERT)  # starts the session over first, then sends
    assert fake.commands[commands_before:commands_before + len(INIT)] == INIT
    assert_sent_once(fake)


# --- 2. echo -----------------------------------------------------------------------------------


@pytest.mark.parametrize("echo_on_start", [True, False])
def test_echo_at_start_is_not_taken_for_replies(make_fake: MakeFake, make_modem: MakeModem,
                                                echo_on_start: bool) -> None:
    fake = make_fake(echo_on_start=echo_on_start)
    modem = make_modem(fake, retries=0)
    modem.send_sms(GUARDIAN, ALERT)
    assert modem.call(GUARDIAN, ring_s=0.1).outcome == "hung up"
    assert_sent_once(fake)
    assert fake.commands[: len(INIT)] == INIT
    assert not any(u.startswith("AT") for u in modem.urcs)  # echoes are dropped, not noted


def test_a_modem_that_restarts_silently_echoes_the_sms_exchange(make_fake: MakeFake, make_modem: MakeModem) -> None:
    # A brown-out without RDY: echo is back on (and CMEE off) and the client cannot know.
    fake = make_fake()
    modem = make_modem(fake, retries=0)
    modem.open()
    fake.reboot(announce=False)
    fake.wait_ready()
    before = len(fake.commands)
    modem.send_sms(GUARDIAN, ALERT)  # AT+CMGS=..., the PDU and the call all come back echoed
    assert modem.call(GUARDIAN, ring_s=0.1).outcome == "hung up"
    assert "ATE0" not in fake.commands[before:]  # nothing told it to re-initialise
    assert_sent_once(fake)


def test_a_modem_that_announces_a_restart_is_initialised_again(make_fake: MakeFake, make_modem: MakeModem) -> None:
    fake = make_fake()
    modem = make_modem(fake, retries=0)
    modem.open()
    fake.reboot()  # RDY: echo on, CMEE 0, CMGF 0 again
    wait_until_readable_on(fake.wait_ready())  # the kernel hands a pty's bytes on a moment later
    before = len(fake.commands)
    modem.send_sms(GUARDIAN, ALERT)
    assert fake.commands[before:before + len(INIT)] == INIT
    assert "RDY" in modem.urcs
    assert_sent_once(fake)


def wait_until_readable_on(tty_path: str, timeout_s: float = 10.0) -> None:
    """Wait until the terminal's input queue holds bytes, as its reader would see them. Writing to a
    pty's master only queues the bytes: a kernel worker moves them to the slave's reader later, so
    a client can find nothing waiting just after the fake wrote RDY (seen in CI under load)."""
    fd = os.open(tty_path, os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK)  # looks, reads nothing
    try:
        until_blocking(lambda: struct.unpack("i", fcntl.ioctl(fd, termios.TIOCINQ, b"\0\0\0\0"))[0],
                       timeout_s, f"bytes readable on {tty_path}")
    finally:
        os.close(fd)


# --- 3. junk and a stale prompt on the line at open --------------------------------------------


@pytest.mark.parametrize("junk", [b"\r\n+CMGS: 17\r\n\r\nOK\r\n", b"\r\nERROR\r\n\xff\x00\xfe", b"\r\n> "])
def test_junk_on_the_line_at_open_cannot_answer_the_wake_up(make_fake: MakeFake, make_modem: MakeModem,
                                                            junk: bytes) -> None:
    fake = make_fake(junk_on_open=junk)  # what the modem still sent to a client that died
    modem = make_modem(fake, retries=0)
    modem.send_sms(GUARDIAN, ALERT)
    assert modem.call(GUARDIAN, ring_s=0.1).outcome == "hung up"
    assert fake.commands[: len(INIT)] == INIT
    assert_sent_once(fake)


@pytest.mark.parametrize("junk", [b"", b"\r\n> "])
def test_a_stale_prompt_is_closed_and_its_pdu_never_sent(make_fake: MakeFake, make_modem: MakeModem,
                                                         junk: bytes) -> None:
    # The last client died inside AT+CMGS with the whole PDU typed: one Ctrl-Z would send it.
    fake = make_fake(stale_prompt=True, junk_on_open=junk)
    modem = make_modem(fake, retries=0)
    modem.send_sms(GUARDIAN, ALERT)
    assert_sent_once(fake)
    assert STALE_TEXT not in sms_texts(fake)
    assert sms_texts(fake) == [ALERT]
    assert fake.commands[: len(INIT)] == INIT


# --- 4. a modem still booting ------------------------------------------------------------------


def test_a_booting_modem_is_woken_by_a_later_try(make_fake: MakeFake, make_modem: MakeModem) -> None:
    fake = make_fake(boot_s=1.0)  # deaf for 1 s, then RDY
    modem = make_modem(fake, retries=0, command_timeout_s=0.5, init_attempts=6)  # 0.5 s per wake-up try
    modem.send_sms(GUARDIAN, ALERT)
    assert fake.commands[: len(INIT)] == INIT  # the tries it slept through never reached it
    assert "RDY" in modem.urcs
    assert_sent_once(fake)


def test_a_modem_booting_longer_than_the_wake_up_is_retryable_then_works(
    make_fake: MakeFake, make_modem: MakeModem
) -> None:
    fake = make_fake(boot_s=4.0)
    modem = make_modem(fake, retries=0, command_timeout_s=0.3, init_attempts=1)
    with pytest.raises(ModemError) as caught:
        modem.send_sms(GUARDIAN, ALERT)
    assert (caught.value.code, caught.value.retryable) == ("TIMEOUT", True)
    assert "no reply to AT" in caught.value.message and "booting" in caught.value.message
    assert fake.events == []
    fake.wait_ready(timeout_s=20)
    modem.send_sms(GUARDIAN, ALERT)
    assert_sent_once(fake)


def test_send_retries_the_session_start_until_the_modem_has_booted(
    make_fake: MakeFake, make_modem: MakeModem, caplog: pytest.LogCaptureFixture
) -> None:
    fake = make_fake(boot_s=1.0)
    modem = make_modem(fake, retries=8, backoff_s=0.1, backoff_max_s=0.4, command_timeout_s=0.2,
                       init_attempts=1)
    with caplog.at_level(logging.WARNING, logger="jikimi_host.relay.modem"):
        modem.send_sms(GUARDIAN, ALERT)
    assert any("no reply to AT" in r.getMessage() and "retry 1/8" in r.getMessage() for r in caplog.records)
    assert_sent_once(fake)


# --- 5. the port vanishes and comes back (USB re-enumeration) ----------------------------------


def test_a_port_that_vanishes_and_comes_back_is_reopened_by_its_path(
    make_fake: MakeFake, make_modem: MakeModem, caplog: pytest.LogCaptureFixture
) -> None:
    fake = make_fake()
    modem = make_modem(fake, retries=6, backoff_s=0.2, backoff_max_s=1.0)
    modem.send_sms(GUARDIAN, "before")
    fake.replug(after_s=0.5)
    assert fake.path is None and not os.path.lexists(fake.link)
    with caplog.at_level(logging.WARNING, logger="jikimi_host.relay.modem"):
        modem.send_sms(GUARDIAN, ALERT)  # I/O error, then no such device, then the new pty
    messages = [r.getMessage() for r in caplog.records]
    assert any(f"I/O error on modem port {fake.link}" in m for m in messages), messages
    assert fake.plug_ins == 2 and os.path.realpath(fake.link) == fake.path
    assert modem.call(GUARDIAN, ring_s=0.1).outcome == "hung up"
    assert_sent_once(fake)
    assert sms_texts(fake) == ["before", ALERT]


def test_a_send_on_a_vanished_port_is_a_retryable_error_naming_it(make_fake: MakeFake, make_modem: MakeModem) -> None:
    fake = make_fake()
    modem = make_modem(fake, retries=0)
    modem.open()
    fake.replug(after_s=2.0)
    with pytest.raises(ModemError) as caught:
        modem.send_sms(GUARDIAN, ALERT)
    assert (caught.value.code, caught.value.retryable) == ("IO", True)
    assert str(fake.link) in caught.value.message
    with pytest.raises(ModemError) as caught:  # still unplugged: the path is gone
        modem.send_sms(GUARDIAN, ALERT)
    assert (caught.value.code, caught.value.retryable) == ("PORT", True)
    assert "no such device" in caught.value.message
    fake.wait_ready()
    modem.send_sms(GUARDIAN, ALERT)
    assert_sent_once(fake)


def test_a_call_cut_by_the_port_vanishing_is_a_retryable_error(make_fake: MakeFake, make_modem: MakeModem) -> None:
    fake = make_fake()
    modem = make_modem(fake, retries=0)
    modem.open()
    with ThreadPoolExecutor(1) as pool:
        call = pool.submit(modem.call, GUARDIAN, 30.0)
        fake.wait_for_command(f"ATD{GUARDIAN};")
        fake.replug(after_s=0.3)
        with pytest.raises(ModemError) as caught:
            call.result(timeout=30)
    assert (caught.value.code, caught.value.retryable) == ("IO", True)
    (dropped,) = fake.wait_for_events(1, kind="call")
    assert dropped["result"] == "modem reset"
    fake.wait_ready()
    assert modem.call(GUARDIAN, ring_s=0.1).outcome == "hung up"
    modem.send_sms(GUARDIAN, ALERT)
    assert_sent_once(fake)


# --- 6. the SIM: not ready yet, or needing the owner -------------------------------------------


@pytest.mark.parametrize(("fault", "queries"), [({"sim_busy": 3}, 4), ({"sim_not_ready": 3}, 4),
                                                ({"sim_busy": 2, "sim_not_ready": 2}, 5)])
def test_a_sim_not_ready_yet_is_waited_for(make_fake: MakeFake, make_modem: MakeModem,
                                           fault: dict[str, int], queries: int) -> None:
    fake = make_fake(**fault)
    modem = make_modem(fake, retries=0)
    modem.send_sms(GUARDIAN, ALERT)
    assert fake.commands.count("AT+CPIN?") == queries
    assert_sent_once(fake)


@pytest.mark.parametrize(("fault", "code", "said"), [
    ({"sim_not_ready": 10**6}, "SIM", "(+CPIN: NOT READY)"),
    ({"sim_busy": 10**6}, "CME 14", "+CME ERROR: 14 (SIM busy)"),
])
def test_a_sim_that_stays_not_ready_is_retryable(make_fake: MakeFake, make_modem: MakeModem,
                                                 fault: dict[str, int], code: str, said: str) -> None:
    fake = make_fake(**fault)
    modem = make_modem(fake, retries=0, sim_wait_s=0.3)
    with pytest.raises(ModemError) as caught:
        modem.send_sms(GUARDIAN, ALERT)
    assert (caught.value.code, caught.value.retryable) == (code, True)
    assert "still not ready after 0.3s" in caught.value.message and said in caught.value.message
    assert fake.commands.count("AT+CPIN?") >= 2  # polled, not given up on at the first answer
    assert fake.events == []


async def test_a_sim_pin_is_retryable_and_says_what_to_do(make_fake: MakeFake) -> None:
    fake = make_fake(sim_pin=True)
    phone = ModemTelephony(str(fake.link), real_modem_opt_in=True, allow_emergency=False, retries=0)
    try:
        with pytest.raises(TelephonyError) as caught:
            await phone.send_sms(GUARDIAN, ALERT)
        assert (caught.value.code, caught.value.retryable) == ("SIM", True)
        assert "+CPIN: SIM PIN" in caught.value.message and "turn its PIN lock off" in caught.value.message
        assert fake.commands.count("AT+CPIN?") == 1  # a PIN does not go away by waiting
        fake.faults.sim_pin = False  # the owner removed the PIN
        assert await phone.send_sms(GUARDIAN, ALERT) == "mr=0"
    finally:
        await phone.close()
    assert_sent_once(fake)


# --- 7. network registration -------------------------------------------------------------------


@pytest.mark.parametrize("fault", [{"unregistered": 3}, {"unregistered": 2, "no_cereg": True}, {"lte_only": True},
                                   {"no_cereg": True}, {"roaming": True}, {"lte_only": True, "unregistered": 4}])
def test_registration_is_waited_for_on_creg_or_cereg(make_fake: MakeFake, make_modem: MakeModem,
                                                     fault: dict[str, Any]) -> None:
    fake = make_fake(**fault)  # while unregistered a submit answers +CMS ERROR: 331 (no service)
    modem = make_modem(fake, retries=0)
    modem.send_sms(GUARDIAN, ALERT)
    assert modem.call(GUARDIAN, ring_s=0.1).outcome == "hung up"
    assert "AT+CREG?" in fake.commands
    if fault.get("no_cereg"):  # asked only while CREG is not registered; after one ERROR, never again
        assert fake.commands.count("AT+CEREG?") == (1 if fault.get("unregistered") else 0)
    if fault.get("lte_only"):
        assert "AT+CEREG?" in fake.commands
    assert_sent_once(fake)
    assert [e["kind"] for e in fake.events] == ["sms", "call"]


@pytest.mark.parametrize(("fault", "words"), [
    ({"unregistered": 10**6}, "+CREG: not registered, searching (2); +CEREG: not registered, searching (2)"),
    ({"registration_denied": True}, "+CREG: registration denied (3); +CEREG: registration denied (3)"),
])
def test_no_registration_in_time_is_a_retryable_network_error(make_fake: MakeFake, make_modem: MakeModem,
                                                              fault: dict[str, Any], words: str) -> None:
    fake = make_fake(**fault)
    modem = make_modem(fake, retries=0, registration_wait_s=0.3)
    with pytest.raises(ModemError) as caught:
        modem.send_sms(GUARDIAN, ALERT)
    assert (caught.value.code, caught.value.retryable) == ("NETWORK", True)
    message = caught.value.message
    assert "not registered on a network after 0.3s" in message and words in message, message
    if fault.get("registration_denied"):
        assert "refuses this SIM" in message
    assert fake.commands.count("AT+CREG?") >= 2  # polled
    assert fake.events == []


def test_an_unsolicited_creg_during_the_query_is_not_its_reply() -> None:
    # `+CREG: <stat>,"<lac>",...` (a URC, n=2) against the reply `+CREG: <n>,<stat>[,...]`
    assert _registration_stat(['+CREG: 2,"1A2B","01C3D4E5",7', "+CREG: 0,1"], "+CREG:") == 1
    assert _registration_stat(["+CREG: 2,5,\"1A2B\",\"01C3D4E5\",7"], "+CREG:") == 5
    assert _registration_stat(['+CREG: 1,"1A2B","01C3D4E5",7', "AT+CREG?"], "+CREG:") is None


# --- all of it in a fake modem process, from its command-line flags ----------------------------


def test_fake_modem_process_with_session_faults_and_a_replug(tmp_path: Path) -> None:
    link, log = tmp_path / "modem", tmp_path / "net.jsonl"
    process = subprocess.Popen(
        [sys.executable, "-m", "jikimi_host.relay.fake_modem", "--link", str(link), "--log", str(log),
         "--stale-prompt", "--junk-on-open", r"\r\n+CMGS: 9\r\n\r\nOK\r\n", "--error-first-at", "1",
         "--sim-busy", "1", "--sim-not-ready", "1", "--unregistered", "2", "--no-cereg",
         "--replug", "2:0.5"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    modem = Modem(str(link), retries=6, backoff_s=0.25, poll_s=0.05)
    try:
        first = _read_line_with_timeout(process.stdout, 10).strip()
        assert first.startswith("/dev/pts/") and os.path.realpath(link) == first
        modem.send_sms(GUARDIAN, "before the replug")
        again = _read_line_with_timeout(process.stdout, 15).strip()  # printed when the port is back
        assert again.startswith("/dev/pts/") and os.path.realpath(link) == again
        modem.send_sms(GUARDIAN, ALERT)  # on the old, dead port first: I/O error, reopen by the link
        modem.close()
        lines = _wait_for_log_lines(log, 2, 10)
        assert [e["text"] for e in lines] == ["before the replug", ALERT]
        process.terminate()
        assert process.wait(timeout=10) == 0, process.stderr.read()
    finally:
        modem.close()
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
        process.stdout.close()
        process.stderr.close()


def _read_line_with_timeout(stream, timeout_s: float) -> str:  # type: ignore[no-untyped-def]
    with selectors.DefaultSelector() as selector:
        selector.register(stream, selectors.EVENT_READ)
        if not selector.select(timeout_s):
            raise TimeoutError(f"no line on stdout within {timeout_s}s")
    return stream.readline()


def _wait_for_log_lines(path: Path, count: int, timeout_s: float) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout_s
    while True:
        lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
        if len(lines) >= count:
            return [json.loads(line) for line in lines]
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} has {len(lines)} lines after {timeout_s}s, wanted {count}")
        time.sleep(0.02)  # polling a file another process appends to
