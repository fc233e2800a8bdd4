"""The relay's disk really fills up (issue 15, at the process level): a `jikimi relay --json` process
on the virtual radio, the real firmware on a virtual bell, and the relay's database on a small
tmpfs of its own that a filler file makes full (ENOSPC, as on a phone whose storage ran out). The
in-process tests in test_relay_database.py make SQLite full with PRAGMA max_page_count; here the
file system refuses the writes.

The incident: the bell is paired and connected; the disk fills up; the owner holds the button.
The relay says the database cannot be written (naming the file) and keeps running; the guardians
are texted from memory all the same, once each; the bell's alarm is not acked, so the bell keeps
it and sends it again. Space comes back: the relay says so, stores the alarm from the bell's
resend, texts nobody a second time, and reports to 112 after the cancel window.

Mounting needs root (CAP_SYS_ADMIN): elsewhere the test is skipped, saying so."""

from __future__ import annotations

import asyncio
import ctypes
import errno
import os
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from jikimi_host.rig.firmware import CONFIG, expect_log, firmware_board, log_records
from jikimi_host.rig.pytest_plugin import DeliveredStore
from jikimi_host.wait import until
from test_relay_e2e import CANCEL_WINDOW_S, GUARDIANS, RELAY_CONFIG, Rig

pytestmark = pytest.mark.micropython
DISK_SIZE = "2m"  # room for the relay's database (about 200 KB by the alarm) and a filler
BELL_RESEND_S = 5  # an unacked event is sent again this often (firmware/jikimi/link.py RESEND_MS)
MS_NOSUID, MS_NODEV, MS_NOEXEC = 2, 4, 8
MNT_DETACH = 2


def _libc_call(name: str, *args) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if getattr(libc, name)(*args) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"{name}: {os.strerror(code)}")


@pytest.fixture
def disk(tmp_path):
    """A small tmpfs mounted at tmp_path/disk for the test, unmounted afterwards whatever happens."""
    folder = tmp_path / "disk"
    folder.mkdir()
    if not sys.platform.startswith("linux"):
        pytest.skip("a real full disk needs Linux (a tmpfs mounted for the test)")
    try:
        _libc_call("mount", b"tmpfs", os.fsencode(folder), b"tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC,
                   f"size={DISK_SIZE},mode=0700".encode())
    except OSError as err:
        if err.errno in (errno.EPERM, errno.EACCES):
            pytest.skip(f"a real full disk needs mounting a small tmpfs (size={DISK_SIZE}), which needs root "
                        f"(CAP_SYS_ADMIN), as in CI; here: {err.strerror}")
        raise
    try:
        assert os.path.ismount(folder)
        yield folder
    finally:
        try:
            _libc_call("umount2", os.fsencode(folder), 0)
        except OSError:  # still busy (a process left behind?): detach it all the same
            _libc_call("umount2", os.fsencode(folder), MNT_DETACH)


def fill(disk: Path) -> Path:
    """Write a filler file until the file system says ENOSPC; the disk is then full to the last block."""
    filler = disk / "filler"
    block = b"\0" * 65536
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        while True:
            try:
                os.write(fd, block)  # a short write when less than a block is left; ENOSPC after it
            except OSError as err:
                if err.errno != errno.ENOSPC:
                    raise
                break
    finally:
        os.close(fd)
    assert os.statvfs(disk).f_bavail == 0
    return filler


class DiskRig(Rig):
    """test_relay_e2e's rig with the relay's database on the small disk."""

    def __init__(self, tmp: Path, bell, transport: str, disk: Path) -> None:
        self.disk = disk
        self.database = disk / "relay.sqlite"
        super().__init__(tmp, bell, transport, dict(RELAY_CONFIG, database=self.database))

    def delivered(self) -> list[tuple[str, str, str]]:
        return DeliveredStore(self.database).delivered()


@pytest.fixture
async def disk_rig(tmp_path, radio, disk):
    transport = await radio.serve_hci()
    async for bell in firmware_board(tmp_path / "flash", radio, CONFIG):
        rig = DiskRig(tmp_path, bell, transport, disk)
        try:
            yield rig
        finally:
            await rig.stop()  # before the disk is unmounted (it is a fixture this one uses)


def acks_since(bell, mark: int) -> list[dict]:
    """The relay's ACKs the bell took (its log) after its first `mark` log records."""
    return [r for r in log_records(bell)[mark:] if r.get("k") == "ble" and r.get("type") == "ack"]


async def test_the_disk_fills_up_the_guardians_are_texted_from_memory_once_and_112_follows_when_space_is_back(
        disk_rig):
    rig = disk_rig
    # 1. The relay is up, the bell paired and connected.
    relay = await rig.relay()
    await rig.pair()
    await relay.expect(lambda r: r["kind"] == "link" and r["text"].startswith("connected"), what="connected")
    # Its clock set by the relay (a command: its counter is committed first, which a full disk
    # would refuse), as for a bell connected long before the disk fills.
    await expect_log(rig.bell, "ble", type="set_time", code="OK")

    # 2. The phone's storage runs out; then the owner holds the button.
    filled_at = time.time()
    filler = fill(rig.disk)
    log_mark = len(log_records(rig.bell))
    await rig.bell.press("button", hold_s=2.0)  # hold_ms is 1 s in the test config

    # 3. The relay says so, naming the file; the guardians are texted from memory, once each.
    trouble = await relay.expect(lambda r: r["kind"] == "store_error" and r["t"] >= filled_at, what="store_error")
    assert trouble["path"] == str(rig.database) and str(rig.database) in trouble["text"]
    assert "disk is full" in trouble["error"] and "THE DATABASE CANNOT BE WRITTEN" in trouble["text"]

    def unrecorded() -> list[dict]:
        return [r for r in relay.of("sms") if r.get("recorded") is False]

    await until(lambda: len(unrecorded()) >= len(GUARDIANS), timeout_s=30, what="the guardians texted from memory")
    assert sorted(r["to"] for r in unrecorded()) == sorted(GUARDIANS)
    assert {r["message_kind"] for r in unrecorded()} == {"alarm"}
    assert all("NOT RECORDED" in r["text"] for r in unrecorded())
    from_memory = {r["to"]: r["message"] for r in unrecorded()}

    # The owner looks at the app meanwhile: the relay answers, and says the database is the trouble.
    await relay.command("status 비상벨")
    said = await relay.expect(lambda r: r["kind"] == "store_error"
                              and r["text"].startswith("the database cannot be written since"),
                              what="the status saying the database cannot be written")
    assert said["path"] == str(rig.database)
    pending = await relay.expect(lambda r: r["kind"] == "incident" and r.get("state") == "unrecorded",
                                 what="the status naming the alarm not yet recorded")
    assert "texted from memory" in pending["text"]

    # The bell keeps its alarm and sends it again every BELL_RESEND_S: let it do so twice. Not
    # one resend may be acked (nothing is stored) or text anyone again.
    await asyncio.sleep(2 * BELL_RESEND_S + 1)
    assert acks_since(rig.bell, log_mark) == [], "the bell's alarm was acked although it could not be stored"
    assert not [r for r in log_records(rig.bell)[log_mark:] if str(r.get("msg", "")).startswith("event alarm_acked")]
    assert len(relay.of("sms")) == len(GUARDIANS), relay.of("sms")
    assert not relay.of("event") and rig.delivered() == []  # nothing recorded
    assert relay.running

    # 4. Space comes back: the relay says so and stores the alarm from the bell's resend.
    filler.unlink()
    freed_at = time.time()
    back = await relay.expect(lambda r: r["kind"] == "store_ok", timeout_s=BELL_RESEND_S + 30, what="store_ok")
    assert back["path"] == str(rig.database) and back["t"] >= freed_at
    stored = await relay.expect(lambda r: r["kind"] == "event" and r["event"]["type"] == "alarm_raised",
                                timeout_s=BELL_RESEND_S + 30, what="the alarm stored from the bell's resend")
    await until(lambda: [r for r in acks_since(rig.bell, log_mark) if r.get("code") == "OK"], timeout_s=30,
                what="the bell's alarm acked")  # now the bell may let it go
    await until(lambda: rig.count("sms", "112") == 1 and rig.count("call", "112") == 1,
                timeout_s=CANCEL_WINDOW_S + 30, what="the 112 report and call after the cancel window")

    # Each guardian has the alarm exactly once: the text sent from memory, recorded as delivered
    # when the alarm was stored, and not sent again. (The same text: the bell's clock is set, so
    # it says when the alarm was raised, not when it was stored.)
    sms = Counter(r for c, r, _ in rig.delivered() if c == "sms")
    assert sms == Counter({**{g: 1 for g in GUARDIANS}, "112": 1}), sms
    assert {r: t for c, r, t in rig.delivered() if c == "sms" and r in GUARDIANS} == from_memory
    assert [r["to"] for r in relay.of("sms") if r["to"] in GUARDIANS] == [r["to"] for r in unrecorded()]
    # (the database has it before the relay's line about it is read here)
    report = await relay.expect(lambda r: r["kind"] == "sms" and r["to"] == "112", what="the 112 report's line")
    assert report["t"] >= stored["t"] + CANCEL_WINDOW_S - 1  # the cancel window, from when it was stored
    assert [r["event"]["type"] for r in relay.of("event")].count("alarm_raised") == 1  # stored once

    # It kept running throughout, on the one link.
    assert relay.running
    drops = [r for r in relay.of("link") if r["text"].startswith("disconnected") or "dropped" in r["text"]]
    assert len(drops) <= 1, drops
    await relay.stop()
    assert b"Traceback" not in relay.stderr, relay.stderr.decode(errors="replace")[-3000:]
