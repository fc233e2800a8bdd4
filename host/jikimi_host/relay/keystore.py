"""Bumble's bond key store in the relay's SQLite database (table `ble_bonds`), so the bonds
live with the devices, events and outbox they belong to, and survive relay restarts; and the
per-device command counter (table `command_counters`), which must never go back (PROTOCOL.md §7),
and which config entry each bonded device is (table `paired_devices`).

Those three are what the relay cannot rebuild, so every change of a bond or a pairing (and every
start: `backup()`) also writes them to the rolling backup beside the database (dbfile.py), from
which `restore()` fills a new database after the old one was damaged. A write that fails (disk
full, read-only) raises dbfile.StoreWriteError naming the file."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

from bumble.keys import KeyStore, PairingKeys

from jikimi_host.relay.dbfile import COUNTER_MARGIN, KeysBackup, described, write_backup


class SqliteKeyStore(KeyStore):
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self.db = sqlite3.connect(str(path), timeout=30, isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("CREATE TABLE IF NOT EXISTS ble_bonds (name TEXT PRIMARY KEY, keys TEXT NOT NULL)")
            self.db.execute("CREATE TABLE IF NOT EXISTS command_counters (device TEXT PRIMARY KEY, counter INTEGER NOT NULL)")
            self.db.execute("CREATE TABLE IF NOT EXISTS paired_devices (identity TEXT PRIMARY KEY, entry TEXT NOT NULL)")
        except sqlite3.Error as err:
            raise described(self.path, err) from None

    def _write(self, sql: str, args: tuple = ()) -> None:
        try:
            self.db.execute(sql, args)
        except sqlite3.Error as err:
            raise described(self.path, err) from None

    def raise_counter(self, device: str, at_least: int) -> None:
        """The device said it has accepted up to `at_least` (REPLAYED): continue above it."""
        self._write("INSERT INTO command_counters (device, counter) VALUES (?, ?) ON CONFLICT(device) "
                    "DO UPDATE SET counter = MAX(counter, excluded.counter)", (device, at_least))

    def remember_device(self, identity: str, entry: str) -> None:
        """The bonded device at `identity` is the config's device `entry`."""
        self._write("INSERT OR REPLACE INTO paired_devices (identity, entry) VALUES (?, ?)", (identity, entry))
        self.backup()

    def paired_devices(self) -> list[tuple[str, str]]:
        return self.db.execute("SELECT identity, entry FROM paired_devices ORDER BY entry").fetchall()

    def paired_names(self) -> set[str]:
        return {entry for _, entry in self.paired_devices()}

    def next_counter(self, device: str) -> int:
        """The next command counter for `device`, committed before it is used."""
        self._write("INSERT INTO command_counters (device, counter) VALUES (?, 1) "
                    "ON CONFLICT(device) DO UPDATE SET counter = counter + 1", (device,))
        return self.db.execute("SELECT counter FROM command_counters WHERE device = ?", (device,)).fetchone()[0]

    async def update(self, name: str, keys: PairingKeys) -> None:
        current = await self.get(name)
        merged = current.to_dict() if current is not None else {}
        merged.update(keys.to_dict())  # Bumble updates in parts: keep what it does not resend
        self._write("INSERT OR REPLACE INTO ble_bonds (name, keys) VALUES (?, ?)", (name, json.dumps(merged)))
        self.backup()

    async def get(self, name: str) -> PairingKeys | None:
        row = self.db.execute("SELECT keys FROM ble_bonds WHERE name = ?", (name,)).fetchone()
        return None if row is None else PairingKeys.from_dict(json.loads(row[0]))

    async def get_all(self) -> list[tuple[str, PairingKeys]]:
        rows = self.db.execute("SELECT name, keys FROM ble_bonds ORDER BY name").fetchall()
        return [(name, PairingKeys.from_dict(json.loads(keys))) for name, keys in rows]

    async def delete(self, name: str) -> None:
        self._write("DELETE FROM ble_bonds WHERE name = ?", (name,))
        self.backup()

    async def delete_all(self) -> None:
        self._write("DELETE FROM ble_bonds")
        self.backup()

    def backup(self) -> None:
        """Write what this store holds to the rolling backup beside the database."""
        snapshot = KeysBackup(
            bonds={name: json.loads(keys) for name, keys in self.db.execute("SELECT name, keys FROM ble_bonds")},
            paired=dict(self.db.execute("SELECT identity, entry FROM paired_devices").fetchall()),
            counters=dict(self.db.execute("SELECT device, counter FROM command_counters").fetchall()),
            written_at=time.time(),
        )
        try:
            write_backup(self.path, snapshot)
        except OSError as err:
            raise described(self.path, sqlite3.OperationalError(f"the keys backup: {err}")) from None

    def restore(self, backup: KeysBackup) -> None:
        """Fill this (new) store from `backup`; counters raised by COUNTER_MARGIN."""
        for name, keys in backup.bonds.items():
            self._write("INSERT OR REPLACE INTO ble_bonds (name, keys) VALUES (?, ?)", (name, json.dumps(keys)))
        for identity, entry in backup.paired.items():
            self._write("INSERT OR REPLACE INTO paired_devices (identity, entry) VALUES (?, ?)", (identity, entry))
        for device, counter in backup.counters.items():
            self.raise_counter(device, counter + COUNTER_MARGIN)
        self.backup()

    def close(self) -> None:
        self.db.close()
