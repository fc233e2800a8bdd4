"""The relay's database fails loudly and safely (issue 15): a damaged, emptied or unusable file is
refused with a message naming it and what to do, never replaced by a new one; the bonds and
counters are backed up beside it and restored from there; a database that cannot be written while
the relay runs is said at once, keeps nothing half-done, and loses no alarm (the device keeps it
unacked). Every case uses a real SQLite file damaged the way it happens."""

from __future__ import annotations

import asyncio
import time
import json
import os
import re
import shutil
import tempfile
import subprocess
import sys
from pathlib import Path

import pytest
from bumble.keys import PairingKeys

from jikimi import protocol as p
from jikimi_host.relay import config as rc
from jikimi_host.relay.central import EventNotStored
from jikimi_host.relay.dbfile import COUNTER_MARGIN, StoreError, StoreWriteError, backup_path, read_backup
from jikimi_host.relay.keystore import SqliteKeyStore
from jikimi_host.relay.service import Relay, SimTelephony, restore_keys
from jikimi_host.relay.store import RelayStore

BELL = "C0:98:E5:49:00:01"
T0 = 1_800_000_000.0
CONFIG_TOML = """
owner = "김지은"
database = "relay.sqlite"

[[guardians]]
name = "어머니"
number = "010-0000-0001"

[[devices]]
name = "비상벨"
passkey = "093514"
"""
KEYS = PairingKeys.from_dict({"address_type": 0, "irk": {"value": "00112233445566778899aabbccddeeff"},
                              "ltk": {"value": "ffeeddccbbaa99887766554433221100", "authenticated": True}})


def config(tmp_path: Path) -> rc.RelayConfig:
    path = tmp_path / "relay.toml"
    path.write_text(CONFIG_TOML)
    return rc.load(path)


def used_database(tmp_path: Path) -> Path:
    """A database as a relay leaves it: a bond, its pairing and a counter, an alarm, the backup."""
    cfg = config(tmp_path)
    with RelayStore(cfg.database, cfg) as store:
        store.record_event(BELL, p.Message(p.ALARM_RAISED, epoch=7, seq=1, time=0, mode=1, trigger=1, battery_pct=80), T0)
    keystore = SqliteKeyStore(cfg.database)
    keystore._write("INSERT INTO ble_bonds (name, keys) VALUES (?, ?)", (BELL, json.dumps(KEYS.to_dict())))
    keystore.remember_device(BELL, "비상벨")
    for _ in range(41):
        keystore.next_counter(BELL)
    keystore.backup()
    keystore.close()
    return cfg.database


def relay_cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jikimi_host.cli", "relay", "--config", str(tmp_path / "relay.toml"),
                           "--transport", "tcp-client:127.0.0.1:9", *args], capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL)


def truncate(path: Path, size: int) -> None:
    with path.open("r+b") as file:
        file.truncate(size)


DAMAGE = {
    "emptied": (lambda db: truncate(db, 0), "is empty (0 bytes)"),
    "half-truncated": (lambda db: truncate(db, db.stat().st_size // 2), "damaged"),
    "overwritten with garbage": (lambda db: db.write_bytes(os.urandom(db.stat().st_size)), "is not an SQLite database"),
    "a folder": (lambda db: (db.unlink(), db.mkdir()), "is a folder"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_database_is_refused_naming_the_file_and_the_restore_and_is_left_as_it_is(tmp_path, damage):
    database = used_database(tmp_path)
    for suffix in ("-wal", "-shm"):
        database.with_name(database.name + suffix).unlink(missing_ok=True)
    spoil, what = DAMAGE[damage]
    spoil(database)
    before = database.read_bytes() if database.is_file() else None
    with pytest.raises(StoreError, match=re.escape(what)) as refused:
        RelayStore(database, config(tmp_path))
    assert str(database) in str(refused.value)
    done = relay_cli(tmp_path)
    assert done.returncode == 3, done.stderr
    assert done.stderr.startswith(f"error: {database}:") and "Traceback" not in done.stderr
    if damage != "a folder":
        assert "--restore-keys" in done.stderr  # its backup is there: the way back is named
        assert database.read_bytes() == before  # never replaced by a new database


def test_dev_null_as_the_database_is_refused(tmp_path):
    (tmp_path / "relay.toml").write_text(CONFIG_TOML.replace('"relay.sqlite"', '"/dev/null"'))
    done = relay_cli(tmp_path)
    assert done.returncode == 3 and "error: /dev/null: is not a regular file" in done.stderr, done.stderr


def test_a_read_only_database_is_refused_naming_the_file():
    # A folder of its own that another user may enter (pytest's tmp_path is private to its owner).
    folder = Path(tempfile.mkdtemp(prefix="jikimi-read-only-"))
    try:
        database = used_database(folder)
        os.chmod(database, 0o444)
        os.chmod(folder, 0o555)  # nor may SQLite create its -wal file beside it
        command = [sys.executable, "-m", "jikimi_host.cli", "relay", "--config", str(folder / "relay.toml"),
                   "--transport", "tcp-client:127.0.0.1:9"]
        if os.geteuid() == 0:  # root writes anything: run the relay as nobody, as a service user would
            command = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    finally:
        os.chmod(folder, 0o755)
        shutil.rmtree(folder)
    assert done.returncode == 3, done.stderr
    assert done.stderr.startswith(f"error: {database}: cannot") and "Traceback" not in done.stderr


def test_a_deleted_database_whose_backup_is_there_is_not_started_afresh(tmp_path):
    database = used_database(tmp_path)
    for suffix in ("", "-wal", "-shm"):
        database.with_name(database.name + suffix).unlink(missing_ok=True)
    with pytest.raises(StoreError, match="is gone, but the backup of its keys is there"):
        RelayStore(database, config(tmp_path))


def test_restore_keys_moves_the_damaged_file_aside_and_keeps_the_bonds_and_counters(tmp_path):
    database = used_database(tmp_path)
    truncate(database, 0)
    moved, backup = restore_keys(database)
    assert moved is not None and moved.name.startswith("relay.sqlite.damaged-") and moved.stat().st_size == 0
    keystore = SqliteKeyStore(database)
    try:
        assert asyncio.run(keystore.get(BELL)).ltk.value == KEYS.ltk.value
        assert keystore.paired_devices() == [(BELL, "비상벨")]
        assert keystore.next_counter(BELL) == 41 + COUNTER_MARGIN + 1  # never back: the device refuses old ones
    finally:
        keystore.close()
    with RelayStore(database, config(tmp_path)) as store:  # a sound, new database
        assert store.incidents() == []


def test_restore_keys_leaves_a_sound_database_alone(tmp_path):
    database = used_database(tmp_path)
    with pytest.raises(StoreError, match="is sound"):
        restore_keys(database)


def test_the_backup_rolls_and_an_unreadable_newest_falls_back_to_the_one_before(tmp_path):
    database = used_database(tmp_path)
    keystore = SqliteKeyStore(database)
    keystore.remember_device("C0:98:E5:49:00:02", "현관문")  # a change: a new backup, the old one kept as .1
    keystore.close()
    newest = backup_path(database)
    assert set(read_backup(database).paired.values()) == {"비상벨", "현관문"}
    newest.write_text("{ half written")
    assert set(read_backup(database).paired.values()) == {"비상벨"}  # the one before


def test_a_full_database_keeps_nothing_half_done_and_says_which_file(tmp_path):
    database = used_database(tmp_path)
    cfg = config(tmp_path)
    with RelayStore(database, cfg) as store:
        pages = store._db.execute("PRAGMA page_count").fetchone()[0]
        store._db.execute(f"PRAGMA max_page_count = {pages}")  # SQLite's own SQLITE_FULL, as on a full disk
        alarm = p.Message(p.ALARM_RAISED, epoch=7, seq=2, time=0, mode=1, trigger=1, battery_pct=80)
        with pytest.raises(StoreWriteError, match=f"{database}: cannot write it: database or disk is full"):
            for seq in range(2, 200):  # until a page is needed
                alarm.seq = seq
                store.record_event(BELL, alarm, T0 + seq)
        stored = len(store.events())
        assert len({row.incident_id for row in store.outbox()}) == len(store.incidents())  # no event without its texts
        store._db.execute(f"PRAGMA max_page_count = {pages * 100}")  # space again
        assert store.record_event(BELL, alarm, T0 + 500).new and len(store.events()) == stored + 1


async def full_until_an_alarm_is_not_stored(relay: Relay) -> tuple[int, p.Message]:
    """SQLite's own SQLITE_FULL at the file's size (as on a full disk), then alarms, each at its
    own hour (so that each text is its own), until one cannot be stored. Returns the page count
    and that alarm."""
    pages = relay.store._db.execute("PRAGMA page_count").fetchone()[0]
    relay.store._db.execute(f"PRAGMA max_page_count = {pages}")
    alarm = p.Message(p.ALARM_RAISED, epoch=7, seq=2, time=0, mode=1, trigger=1, battery_pct=80)
    with pytest.raises(EventNotStored):
        for seq in range(2, 200):
            alarm.seq, alarm.time = seq, 850_000_000 + seq * 3600
            await relay._on_event(BELL, "비상벨", alarm)
    return pages, alarm


async def test_an_event_that_cannot_be_stored_is_said_loudly_and_not_acked(tmp_path, capsys):
    database = used_database(tmp_path)
    relay = Relay(config(tmp_path), "tcp-client:127.0.0.1:9", SimTelephony(), as_json=True)
    try:
        pages, alarm = await full_until_an_alarm_is_not_stored(relay)
        for _ in range(3):  # the device resends it every few seconds, still unstorable
            with pytest.raises(EventNotStored):
                await relay._on_event(BELL, "비상벨", alarm)
        await asyncio.gather(*relay._unrecorded_tasks)
        said = capsys.readouterr().out
        assert said.count('"kind": "store_error"') == 1 and str(database) in said
        assert "THE DATABASE CANNOT BE WRITTEN" in said and "not lost" in said
        # The guardian is texted from memory all the same, once, and told it is not recorded.
        assert said.count('"recorded": false') == 1 and "NOT RECORDED" in said
        relay._incident_status(BELL, "비상벨")  # the owner asks meanwhile: the alarm is not forgotten
        assert f"alarm seq {alarm.seq} came while the database could not be written" in capsys.readouterr().out
        relay.store._db.execute(f"PRAGMA max_page_count = {pages * 100}")
        await relay._on_event(BELL, "비상벨", alarm)  # the device's resend, once there is room
        assert '"kind": "store_ok"' in capsys.readouterr().out
        texts = [r for r in relay.store.outbox() if r.incident_id == relay.store.incidents()[-1].id
                 and r.recipient_kind == "guardian"]
        assert [r.state for r in texts] == ["sent"]  # marked sent: the sender will not text her again
        assert [d.recipient for d in relay.store.delivered() if d.outbox_id == texts[0].id] == ["+821000000001"]
    finally:
        relay.store.close()
        relay.keystore.close()


class SlowModem(SimTelephony):
    """The sim, taking `delay_s` per text as a modem does (read when the text is handed over),
    counting what it is handed."""

    def __init__(self) -> None:
        self.texts: list[tuple[str, str]] = []
        self.delay_s = 0.0

    async def send_sms(self, number: str, text: str) -> str:
        await asyncio.sleep(self.delay_s)
        self.texts.append((number, text))
        return "sim"


async def test_space_back_while_a_text_from_memory_is_still_going_out_does_not_text_her_twice(tmp_path):
    used_database(tmp_path)
    modem = SlowModem()
    relay = Relay(config(tmp_path), "tcp-client:127.0.0.1:9", modem, as_json=True)
    sender = asyncio.create_task(relay.sender())
    try:
        pages, alarm = await full_until_an_alarm_is_not_stored(relay)
        modem.delay_s = 1.0  # the text from memory takes a second to go out...
        await asyncio.sleep(0)
        relay.store._db.execute(f"PRAGMA max_page_count = {pages * 100}")  # ...and there is space at once:
        await relay._on_event(BELL, "비상벨", alarm)  # the resend is stored while that text is in flight
        modem.delay_s = 0.0
        await asyncio.gather(*relay._unrecorded_tasks)
        row = next(r for r in relay.store.outbox() if r.recipient == "+821000000001"
                   and r.incident_id == relay.store.incidents()[-1].id)
        deadline = time.monotonic() + 30
        while (any(r.recipient_kind == "guardian" for r in relay.store.due(time.time(), limit=100))
               and time.monotonic() < deadline):
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.5)  # time for a second text, if one were coming
        assert [number for number, text in modem.texts if text == row.text] == ["+821000000001"], modem.texts
        assert relay.store.outbox_row(row.id).state == "sent"
        assert [d.text for d in relay.store.delivered() if d.outbox_id == row.id] == [row.text]
    finally:
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)
        relay.store.close()
        relay.keystore.close()


def test_a_new_bond_is_in_the_backup_at_once(tmp_path):
    database = used_database(tmp_path)
    backup_path(database).unlink()
    keystore = SqliteKeyStore(database)
    try:
        asyncio.run(keystore.update("C0:98:E5:49:00:02", KEYS))
    finally:
        keystore.close()
    assert set(read_backup(database).bonds) == {BELL, "C0:98:E5:49:00:02"}
