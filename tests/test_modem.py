"""The modem AT client (relay/modem.py) and ModemTelephony, driven over a real pty against the
fake modem (relay/fake_modem.py), in-process and as a separate process."""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import serial

from jikimi_host.relay.fake_modem import FakeModem, Faults
from jikimi_host.relay.modem import Modem, ModemError
from jikimi_host.relay.telephony import (
    ModemTelephony,
    TelephonyError,
    is_emergency_or_short,
)

GUARDIAN = "+821000000008"  # fictional (010-0000 block); only the fake modem "sends"
OTHER = "+821000000009"
KOREAN_ALERT = (  # 94 UTF-16 units: two UCS-2 segments
    "[지키미] 긴급: 김지수 님이 비상벨을 눌렀습니다. 20초 후 112에 자동 신고됩니다. "
    "위치: 서울특별시 중구 세종대로 110 (37.5663, 126.9779) 🚨"
)

MakeFake = Callable[..., FakeModem]
MakeModem = Callable[..., Modem]


@pytest.fixture
def make_fake(tmp_path: Path) -> Iterator[MakeFake]:
    """Start fake modems (stopped at teardown, even when the test fails)."""
    started: list[FakeModem] = []

    def make(**faults: object) -> FakeModem:
        fake = FakeModem(tmp_path / f"net{len(started)}.jsonl", Faults(**faults))  # type: ignore[arg-type]
        fake.start()
        started.append(fake)
        return fake

    yield make
    for fake in started:
        fake.stop()


@pytest.fixture
def fake(make_fake: MakeFake) -> FakeModem:
    return make_fake()


@pytest.fixture
def make_modem() -> Iterator[MakeModem]:
    """Open Modem clients with test-sized backoff (closed at teardown)."""
    opened: list[Modem] = []

    def make(path: str, **options: object) -> Modem:
        options.setdefault("backoff_s", 0.01)
        modem = Modem(path, **options)  # type: ignore[arg-type]
        opened.append(modem)
        modem.open()
        return modem

    yield make
    for modem in opened:
        modem.close()


# --- SMS ---------------------------------------------------------------------------------------


def test_korean_sms_arrives_intact(fake: FakeModem, make_modem: MakeModem) -> None:
    modem = make_modem(fake.path)
    refs = modem.send_sms(GUARDIAN, KOREAN_ALERT)
    (event,) = fake.wait_for_events(1)
    assert event == {"kind": "sms", "to": GUARDIAN, "text": KOREAN_ALERT, "segments": 2,
                     "refs": refs, "encoding": "ucs2"}
    logged = [json.loads(line) for line in fake.log_path.read_text(encoding="utf-8").splitlines()]
    assert logged == [event]
    # the init sequence the module documents, in order
    assert fake.commands[:5] == ["AT", "ATE0", "AT+CMEE=1", "AT+CPIN?", "AT+CMGF=0"]


def test_long_gsm7_sms_is_concatenated_and_reassembled(fake: FakeModem, make_modem: MakeModem) -> None:
    text = "Alarm {device 7}: call me back ~ [test] " * 10  # 400 chars + 40 extension chars
    modem = make_modem(fake.path)
    refs = modem.send_sms(GUARDIAN, text)
    (event,) = fake.wait_for_events(1)
    assert event["text"] == text and event["encoding"] == "gsm7"
    assert event["segments"] == len(refs) == 3
    assert sum(c.startswith("AT+CMGS=") for c in fake.commands) == 3


def test_concurrent_senders_share_the_modem_safely(fake: FakeModem, make_modem: MakeModem) -> None:
    modem = make_modem(fake.path)
    errors: list[BaseException] = []

    def send(i: int) -> None:
        try:
            modem.send_sms(GUARDIAN, f"message {i} " + "가" * 80)
        except BaseException as exc:  # reported below: a thread's exception would be lost
            errors.append(exc)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    assert not errors
    texts = sorted(e["text"] for e in fake.wait_for_events(4))
    assert texts == sorted(f"message {i} " + "가" * 80 for i in range(4))


def test_retryable_cms_error_is_retried_then_succeeds(make_fake: MakeFake, make_modem: MakeModem) -> None:
    fake = make_fake(fail_sms=[500, 332])
    slept: list[float] = []
    modem = make_modem(fake.path, retries=3, backoff_s=0.01, sleep=slept.append)
    refs = modem.send_sms(GUARDIAN, "hello")
    assert len(refs) == 1
    assert slept == [0.01, 0.02]  # exponential backoff
    assert sum(c.startswith("AT+CMGS=") for c in fake.commands) == 3
    assert fake.wait_for_events(1)[0]["text"] == "hello"


def test_non_retryable_cms_error_is_raised_at_once(make_fake: MakeFake, make_modem: MakeModem) -> None:
    fake = make_fake(fail_sms=[21, 500])  # 21: short message transfer rejected
    modem = make_modem(fake.path, retries=3)
    with pytest.raises(ModemError) as caught:
        modem.send_sms(GUARDIAN, "hello")
    assert (caught.value.code, caught.value.retryable) == ("CMS 21", False)
    assert "+CMS ERROR: 21" in caught.value.message
    assert sum(c.startswith("AT+CMGS=") for c in fake.commands) == 1


def test_retries_run_out(make_fake: MakeFake, make_modem: MakeModem) -> None:
    fake = make_fake(fail_sms=[500] * 5)
    modem = make_modem(fake.path, retries=2)
    with pytest.raises(ModemError) as caught:
        modem.send_sms(GUARDIAN, "hello")
    assert (caught.value.code, caught.value.retryable) == ("CMS 500", True)
    assert sum(c.startswith("AT+CMGS=") for c in fake.commands) == 3
    assert fake.events == []


def test_silent_modem_times_out_within_bound(fake: FakeModem, make_modem: MakeModem) -> None:
    modem = make_modem(fake.path, command_timeout_s=0.3, retries=1)
    fake.go_silent(1000)
    started = time.monotonic()
    with pytest.raises(ModemError) as caught:
        modem.send_sms(GUARDIAN, "hello")
    assert (caught.value.code, caught.value.retryable) == ("TIMEOUT", True)
    assert fake.path in caught.value.message
    assert time.monotonic() - started < 5.0


def test_one_silent_command_is_recovered_by_a_retry(fake: FakeModem, make_modem: MakeModem) -> None:
    modem = make_modem(fake.path, command_timeout_s=0.3, retries=2)
    fake.go_silent(1)  # swallows the first AT+CMGS; the resync AT and the retry get through
    refs = modem.send_sms(GUARDIAN, "hello")
    assert len(refs) == 1
    assert fake.wait_for_events(1)[0]["text"] == "hello"


def test_unsolicited_codes_do_not_confuse_replies(make_fake: MakeFake, make_modem: MakeModem) -> None:
    fake = make_fake(urc_noise=True)  # RING before, +CMTI between info and OK, in every reply
    modem = make_modem(fake.path)
    fake.inject_urc('+CREG: 1,"1A2B","01C3D4E5",7')  # arrives while idle
    refs = modem.send_sms(GUARDIAN, KOREAN_ALERT)
    assert refs == [0, 1]  # the +CMGS lines, not a URC, gave these
    fake.inject_urc("RING")
    result = modem.call(GUARDIAN, ring_s=0.1)
    assert result.outcome == "hung up"
    assert "RING" in modem.urcs and any(u.startswith("+CMTI:") for u in modem.urcs)
    assert any(u.startswith("+CREG:") for u in modem.urcs)
    assert fake.wait_for_events(2)[0]["text"] == KOREAN_ALERT


# --- calls -------------------------------------------------------------------------------------


def test_call_rings_then_hangs_up(fake: FakeModem, make_modem: MakeModem) -> None:
    modem = make_modem(fake.path)
    result = modem.call(GUARDIAN, ring_s=0.2)
    assert result.outcome == "hung up" and 0.2 <= result.duration_s < 3
    (event,) = fake.wait_for_events(1)
    assert event["kind"] == "call" and event["to"] == GUARDIAN and event["result"] == "hangup"
    assert fake.commands[-2:] == [f"ATD{GUARDIAN};", "ATH"]


def test_call_ended_by_the_far_side(make_fake: MakeFake, make_modem: MakeModem) -> None:
    fake = make_fake(remote_hangup_after_s=0.1)
    modem = make_modem(fake.path)
    result = modem.call(GUARDIAN, ring_s=30)
    assert result.outcome == "NO CARRIER" and result.duration_s < 5
    assert fake.wait_for_events(1)[0]["result"] == "remote hangup"


def test_an_sms_goes_out_while_a_call_is_up(fake: FakeModem, make_modem: MakeModem) -> None:
    # A guardian's text (or a cancellation) must not wait a minute behind a call to 112.
    modem = make_modem(fake.path)
    with ThreadPoolExecutor(1) as pool:
        call = pool.submit(modem.call, GUARDIAN, 5.0)
        deadline = time.monotonic() + 5
        while f"ATD{GUARDIAN};" not in fake.commands:
            assert time.monotonic() < deadline, "the call was not dialled"
            time.sleep(0.01)
        modem.send_sms(OTHER, "문자 during the call")
        assert call.result(timeout=30).outcome == "hung up"
    sms, ended = fake.wait_for_events(2)
    assert sms["kind"] == "sms" and sms["to"] == OTHER  # logged when sent: before the call ended
    assert ended["kind"] == "call" and ended["duration_s"] >= 4.5


def test_the_far_side_hanging_up_during_a_text_ends_the_call(make_fake: MakeFake, make_modem: MakeModem) -> None:
    fake = make_fake(remote_hangup_after_s=0.5)
    modem = make_modem(fake.path)
    with ThreadPoolExecutor(1) as pool:
        call = pool.submit(modem.call, GUARDIAN, 30.0)
        while f"ATD{GUARDIAN};" not in fake.commands:
            time.sleep(0.01)
        with modem._lock:  # a text's exchange has the port when the far side hangs up
            fake.wait_for_events(1, kind="call")
            modem.send_sms(OTHER, "문자")  # reads the NO CARRIER and sets it aside
        result = call.result(timeout=30)
    assert result.outcome == "NO CARRIER" and result.duration_s < 10  # not the 30 s ring


def test_busy_line(make_fake: MakeFake, make_modem: MakeModem) -> None:
    fake = make_fake(dial_result="BUSY")
    modem = make_modem(fake.path)
    result = modem.call(GUARDIAN, ring_s=5)
    assert (result.outcome, result.placed) == ("BUSY", False)
    assert modem.dial(GUARDIAN) == "BUSY"


def test_dial_refuses_anything_but_a_number(fake: FakeModem, make_modem: MakeModem) -> None:
    modem = make_modem(fake.path)
    with pytest.raises(ModemError, match="not a phone number"):
        modem.dial("112;+CMGS=1")
    assert not any(c.startswith("ATD") for c in fake.commands)


# --- opening and init --------------------------------------------------------------------------


def test_missing_port_names_the_port(tmp_path: Path) -> None:
    port = str(tmp_path / "ttyUSB9")
    with pytest.raises(ModemError) as caught:
        Modem(port).open()
    assert port in caught.value.message and "no such device" in caught.value.message
    assert caught.value.code == "PORT"


def test_missing_sim_is_retryable_and_says_what_to_do(make_fake: MakeFake) -> None:
    # The owner can put a SIM in; the relay must keep trying until then, and say what is wrong.
    fake = make_fake(no_sim=True)
    modem = Modem(fake.path)
    try:
        with pytest.raises(ModemError) as caught:
            modem.open()
    finally:
        modem.close()
    assert (caught.value.code, caught.value.retryable) == ("CME 10", True)
    assert "+CME ERROR: 10 (SIM not inserted)" in caught.value.message
    assert "insert one" in caught.value.message and fake.path in caught.value.message
    assert fake.commands.count("AT+CPIN?") == 1  # no SIM does not come by itself: not polled


def test_fake_modem_framing_over_raw_serial(fake: FakeModem) -> None:
    """The fake behaves like a modem at byte level: echo, prompt, ESC abort, length check."""
    with serial.serial_for_url(fake.path, baudrate=115200, timeout=2) as port:

        def exchange(data: bytes, until: bytes) -> bytes:
            port.write(data)
            return port.read_until(until)

        assert exchange(b"AT\r", b"OK\r\n") == b"AT\r\r\nOK\r\n"  # echo on by default
        assert exchange(b"ATE0\r", b"OK\r\n") == b"ATE0\r\r\nOK\r\n"
        assert exchange(b"AT+BOGUS\r", b"ERROR\r\n") == b"\r\nERROR\r\n"
        assert exchange(b"AT+CMEE=1\r", b"OK\r\n") == b"\r\nOK\r\n"
        assert exchange(b"AT+CMGS=20\r", b"> ") == b"\r\n> "
        assert exchange(b"00\x1b", b"OK\r\n") == b"\r\nOK\r\n"  # ESC aborts
        assert exchange(b"AT+CMGS=20\r", b"> ") == b"\r\n> "
        hello = "0011000B916407281553F80000AA0AE8329BFD4697D9EC37"  # 23-octet TPDU, not 20
        assert exchange(hello.encode() + b"\x1a", b"304\r\n") == b"\r\n+CMS ERROR: 304\r\n"
        assert exchange(b"AT+CMGS=23\r", b"> ") == b"\r\n> "
        assert exchange(hello.encode() + b"\x1a", b"OK\r\n") == b"\r\n+CMGS: 0\r\n\r\nOK\r\n"
    assert fake.wait_for_events(1)[0]["text"] == "hellohello"


# --- ModemTelephony: the safety rules ----------------------------------------------------------


@pytest.mark.parametrize(
    ("number", "refused"),
    [("112", True), ("119", True), ("911", True), ("+82112", True), ("01012345678", True),
     ("+82 10 1234 5678", True), (GUARDIAN, False), ("+14155552671", False)],
)
def test_emergency_and_short_numbers_are_recognised(number: str, refused: bool) -> None:
    assert is_emergency_or_short(number) is refused


def test_modem_telephony_needs_the_opt_in(fake: FakeModem) -> None:
    with pytest.raises(TelephonyError, match="--real-modem") as caught:
        ModemTelephony(fake.path, real_modem_opt_in=False, allow_emergency=False)
    assert "real SMS" in caught.value.message and not caught.value.retryable
    assert fake.commands == []  # it did not even open the port


async def test_modem_telephony_refuses_112_without_allow_emergency(fake: FakeModem) -> None:
    phone = ModemTelephony(fake.path, real_modem_opt_in=True, allow_emergency=False, backoff_s=0.01)
    try:
        with pytest.raises(TelephonyError, match="--allow-emergency") as caught:
            await phone.send_sms("112", "test")
        assert caught.value.retryable is False
        with pytest.raises(TelephonyError, match="--allow-emergency"):
            await phone.call("112", ring_s=0.1)
        assert await phone.send_sms(GUARDIAN, KOREAN_ALERT) == "mr=0,1"
    finally:
        await phone.close()
    assert not any("112" in c for c in fake.commands)
    assert [e["to"] for e in fake.events] == [GUARDIAN]


async def test_modem_telephony_reaches_112_on_the_fake_when_allowed(fake: FakeModem) -> None:
    phone = ModemTelephony(fake.path, real_modem_opt_in=True, allow_emergency=True, backoff_s=0.01)
    try:
        assert await phone.send_sms("112", "긴급 신고: 스토킹 피해 비상벨 작동") == "mr=0"
        assert (await phone.call("112", ring_s=0.1)).startswith("call hung up after")
    finally:
        await phone.close()
    sms, call = fake.wait_for_events(2)
    assert sms["to"] == "112" and sms["text"] == "긴급 신고: 스토킹 피해 비상벨 작동"
    assert call["to"] == "112" and call["kind"] == "call"


@pytest.mark.parametrize("dial_result", ["BUSY", "NO CARRIER"])
async def test_modem_errors_map_to_telephony_errors(make_fake: MakeFake, dial_result: str) -> None:
    fake = make_fake(fail_sms=[304], dial_result=dial_result)
    phone = ModemTelephony(fake.path, real_modem_opt_in=True, allow_emergency=False, backoff_s=0.01)
    try:
        with pytest.raises(TelephonyError) as caught:
            await phone.send_sms(GUARDIAN, "hi")
        assert (caught.value.retryable, caught.value.code) == (False, "CMS 304")
        assert fake.path in caught.value.message
        with pytest.raises(TelephonyError) as caught:
            await phone.call(GUARDIAN, ring_s=1)
        assert (caught.value.retryable, caught.value.code) == (True, dial_result)
    finally:
        await phone.close()


async def test_modem_telephony_reports_a_missing_port(tmp_path: Path) -> None:
    port = str(tmp_path / "ttyUSB2")
    phone = ModemTelephony(port, real_modem_opt_in=True, allow_emergency=False, retries=0)
    try:
        with pytest.raises(TelephonyError, match=port) as caught:
            await phone.send_sms(GUARDIAN, "hi")
        assert caught.value.retryable  # the modem may come back (USB re-enumeration)
    finally:
        await phone.close()


# --- the fake modem as a process ---------------------------------------------------------------


def _read_line_with_timeout(stream, timeout_s: float) -> str:  # type: ignore[no-untyped-def]
    with selectors.DefaultSelector() as selector:
        selector.register(stream, selectors.EVENT_READ)
        if not selector.select(timeout_s):
            raise TimeoutError(f"no line on stdout within {timeout_s}s")
    return stream.readline()


def _wait_for_log_lines(path: Path, count: int, timeout_s: float) -> list[dict]:
    deadline = time.monotonic() + timeout_s
    while True:
        lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
        if len(lines) >= count:
            return [json.loads(line) for line in lines]
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} has {len(lines)} lines after {timeout_s}s, wanted {count}")
        time.sleep(0.02)  # polling a file another process appends to


def test_fake_modem_process(tmp_path: Path, make_modem: MakeModem) -> None:
    link, log = tmp_path / "modem", tmp_path / "net.jsonl"
    process = subprocess.Popen(
        [sys.executable, "-m", "jikimi_host.relay.fake_modem", "--link", str(link), "--log", str(log),
         "--fail-sms", "500:1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        pty_path = _read_line_with_timeout(process.stdout, 10).strip()
        assert pty_path.startswith("/dev/pts/") and os.path.realpath(link) == pty_path
        modem = make_modem(str(link))
        assert modem.send_sms(GUARDIAN, KOREAN_ALERT)  # the first submit fails (500), retried
        assert modem.call("112", ring_s=0.1).outcome == "hung up"
        modem.close()
        sms, call = _wait_for_log_lines(log, 2, 10)
        assert sms["text"] == KOREAN_ALERT and call["to"] == "112"
        process.terminate()
        assert process.wait(timeout=10) == 0, process.stderr.read()
        assert not link.exists() and not link.is_symlink()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
        process.stdout.close()
        process.stderr.close()


def test_a_second_client_cannot_take_the_port(fake: FakeModem, make_modem: MakeModem) -> None:
    make_modem(fake.path)
    with pytest.raises(ModemError) as caught:
        make_modem(fake.path)
    assert caught.value.code == "PORT" and fake.path in caught.value.message
    assert "another program has the port open" in caught.value.message


def test_lost_reply_after_the_pdu_is_in_doubt_and_resent(make_fake: MakeFake, make_modem: MakeModem) -> None:
    fake = make_fake(lost_replies=1)
    modem = make_modem(fake.path, sms_timeout_s=0.3, retries=0)
    with pytest.raises(ModemError) as caught:
        modem.send_sms(GUARDIAN, "first")
    assert (caught.value.code, caught.value.retryable) == ("TIMEOUT_IN_DOUBT", True)
    assert "may have been sent" in caught.value.message
    assert fake.wait_for_events(1)[0]["text"] == "first"  # the network did get it
    modem.send_sms(GUARDIAN, "second")  # the link resynchronised
    assert [e["text"] for e in fake.wait_for_events(2)] == ["first", "second"]
