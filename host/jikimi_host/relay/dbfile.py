"""The relay's database file: what is checked before it is used, how SQLite's errors are told, and
the rolling backup of what the relay cannot afford to lose, with the restore that uses it.

SQLite takes an emptied (0-byte) file for a new database and would start afresh over it: the
bonds gone, so every bell unreachable until it is paired again at its power-up, and nobody told.
So an existing file must be a regular file that starts with SQLite's header and passes
`PRAGMA quick_check`; anything else is a `StoreError` that names the file, says what is wrong
and what to do. The relay then refuses to start (`jikimi relay` exits 3: a person must look).

What cannot be rebuilt from the devices is small: the BLE bonds, which config entry each bonded
device is, and the command counters (PROTOCOL.md §7: they never go back). `KeysBackup` keeps it
in `<database>.keys.json`, written atomically whenever a bond or a pairing changes and at every
start, with the previous copy kept as `<database>.keys.json.1` (rolling). `jikimi relay
--restore-keys` moves a damaged database aside and starts a new one from it; the counters are
raised by `COUNTER_MARGIN` (commands sent since the backup), and a device that is still ahead
answers REPLAYED with its own counter, which the relay then continues from.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from jikimi_host.errors import STORE_EXIT, JikimiError

SQLITE_HEADER = b"SQLite format 3\x00"
COUNTER_MARGIN = 1000
BACKUP_VERSION = 1


class StoreError(JikimiError, RuntimeError):
    """The database cannot be used as it is: the message names the file and what to do. Exit 3,
    so that a supervisor does not restart the relay in a loop until a person has looked."""

    exit_code = STORE_EXIT


class StoreWriteError(StoreError):
    """A write failed while the relay runs (disk full, read-only, an I/O error): nothing was
    committed. The caller keeps what it could not store (a device keeps an unacked event) and
    tries again later."""


def backup_path(database: Path) -> Path:
    return database.with_name(database.name + ".keys.json")


def _what_to_do(database: Path) -> str:
    backup = backup_path(database)
    if not backup.exists():
        return (f"There is no backup of its keys ({backup.name} is missing): move {database} away to start "
                "afresh; every device must then be paired again (hold its button at power-up).")
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(backup.stat().st_mtime))
    return (f"Its bonds and counters were backed up at {when} in {backup}: `jikimi relay --config ... "
            f"--restore-keys` moves {database.name} aside and starts a new database from that backup (the "
            "paired devices keep working; the old history stays in the moved file). Or move it away "
            "yourself to start afresh (every device must then be paired again).")


def check_before_open(database: Path) -> None:
    """Refuse what SQLite must not open: a folder, a device, an emptied or overwritten file."""
    if not database.exists():
        backup = backup_path(database)
        if backup.exists():
            raise StoreError(f"{database}: the relay's database is gone, but the backup of its keys is there "
                             f"({backup}): `jikimi relay --config ... --restore-keys` starts a new database from it "
                             "(the paired devices keep working). To start afresh instead, delete the backup "
                             "(every device must then be paired again).")
        return  # a new relay: SQLite creates it
    if database.is_dir():
        raise StoreError(f"{database}: is a folder, not the relay's database; set `database` in the config to a file")
    if not database.is_file():
        raise StoreError(f"{database}: is not a regular file (a device or a pipe?); set `database` in the config "
                         "to a file")
    try:
        with database.open("rb") as file:
            header = file.read(len(SQLITE_HEADER))
    except OSError as err:
        raise StoreError(f"{database}: cannot read it: {err.strerror} (file permissions?)") from None
    if not header:
        raise StoreError(f"{database}: is empty (0 bytes): this relay's database (bonds, command counters, "
                         "history) has been emptied, and the relay does not start afresh over it. "
                         + _what_to_do(database))
    if header != SQLITE_HEADER:
        raise StoreError(f"{database}: is not an SQLite database (damaged or overwritten). " + _what_to_do(database))


def check_integrity(database: Path, connection: sqlite3.Connection) -> None:
    """SQLite's own check of every page (quick_check: the structure, without index contents)."""
    try:
        problems = [row[0] for row in connection.execute("PRAGMA quick_check(5)")]
    except sqlite3.DatabaseError as err:
        raise described(database, err) from None
    if problems != ["ok"]:
        raise StoreError(f"{database}: is damaged (SQLite's integrity check: {'; '.join(problems)}). "
                         + _what_to_do(database))


def described(database: Path, err: sqlite3.Error) -> StoreError:
    """A StoreError for SQLite's error `err` on `database`: what it means, named."""
    text = str(err)
    lowered = text.lower()
    if "readonly" in lowered or "read-only" in lowered:
        return StoreWriteError(f"{database}: cannot write it ({text}): file or folder permissions, or a read-only "
                               "mount?")
    if "unable to open" in lowered:
        return StoreError(f"{database}: cannot open it ({text}): does its folder exist, and may the relay write "
                          "there (SQLite keeps -wal and -shm files beside it)?")
    if "disk is full" in lowered or "disk i/o" in lowered:
        return StoreWriteError(f"{database}: cannot write it: {text}")
    if isinstance(err, sqlite3.DatabaseError) and ("malformed" in lowered or "not a database" in lowered):
        return StoreError(f"{database}: is damaged ({text}). " + _what_to_do(database))
    return StoreWriteError(f"{database}: {text}")


@dataclass(frozen=True)
class KeysBackup:
    """The bonds, paired devices and counters of one database, as kept in its backup file."""

    bonds: dict[str, dict]  # Bumble's key store name -> PairingKeys.to_dict()
    paired: dict[str, str]  # identity address -> config entry name
    counters: dict[str, int]  # identity address -> last command counter used
    written_at: float

    def to_json(self) -> str:
        return json.dumps({"version": BACKUP_VERSION, "written_at": self.written_at, "bonds": self.bonds,
                           "paired": self.paired, "counters": self.counters}, indent=1, sort_keys=True)


def write_backup(database: Path, backup: KeysBackup) -> None:
    """Write the backup atomically (a new file renamed over the old one, fsynced); the copy it
    replaces becomes `.keys.json.1`."""
    path = backup_path(database)
    fresh = path.with_name(path.name + ".new")
    with fresh.open("w") as file:
        file.write(backup.to_json())
        file.flush()
        os.fsync(file.fileno())
    if path.exists():
        os.replace(path, path.with_name(path.name + ".1"))
    os.replace(fresh, path)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)  # the renames too
    finally:
        os.close(folder)


def read_backup(database: Path) -> KeysBackup:
    """The newest readable backup (`.keys.json`, else `.keys.json.1`), or StoreError."""
    path = backup_path(database)
    for candidate in (path, path.with_name(path.name + ".1")):
        try:
            data = json.loads(candidate.read_text())
            if data.get("version") != BACKUP_VERSION:
                continue
            return KeysBackup({str(k): dict(v) for k, v in data["bonds"].items()},
                              {str(k): str(v) for k, v in data["paired"].items()},
                              {str(k): int(v) for k, v in data["counters"].items()}, float(data["written_at"]))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue
    raise StoreError(f"{database}: no readable backup of its keys ({path} and {path.name}.1); nothing to restore")


def move_aside(database: Path, now: float) -> Path:
    """Move the database (and SQLite's -wal and -shm files) to `<name>.damaged-<time>`; its path."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    moved = database.with_name(f"{database.name}.damaged-{stamp}")
    for suffix in ("", "-wal", "-shm"):
        part = database.with_name(database.name + suffix)
        if part.exists():
            os.replace(part, moved.with_name(moved.name + suffix))
    return moved
