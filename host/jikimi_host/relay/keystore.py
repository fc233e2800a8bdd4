"""Bumble's bond key store in the relay's SQLite database (table `ble_bonds`), so the bonds
live with the devices, events and outbox they belong to, and survive relay restarts; and the
per-device command counter (table `command_counters`), which must never go back (PROTOCOL.md §7),
and which config entry each bonded device is (table `paired_devices`)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from bumble.keys import KeyStore, PairingKeys


class SqliteKeyStore(KeyStore):
    def __init__(self, path: str | Path) -> None:
        self.db = sqlite3.connect(str(path), timeout=30, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("CREATE TABLE IF NOT EXISTS ble_bonds (name TEXT PRIMARY KEY, keys TEXT NOT NULL)")
        self.db.execute("CREATE TABLE IF NOT EXISTS command_counters (device TEXT PRIMARY KEY, counter INTEGER NOT NULL)")
        self.db.execute("CREATE TABLE IF NOT EXISTS paired_devices (identity TEXT PRIMARY KEY, entry TEXT NOT NULL)")

    def raise_counter(self, device: str, at_least: int) -> None:
        """The device said it has accepted up to `at_least` (REPLAYED): continue above it."""
        self.db.execute("INSERT INTO command_counters (device, counter) VALUES (?, ?) ON CONFLICT(device) "
                        "DO UPDATE SET counter = MAX(counter, excluded.counter)", (device, at_least))

    def remember_device(self, identity: str, entry: str) -> None:
        """The bonded device at `identity` is the config's device `entry`."""
        self.db.execute("INSERT OR REPLACE INTO paired_devices (identity, entry) VALUES (?, ?)", (identity, entry))

    def paired_devices(self) -> list[tuple[str, str]]:
        return self.db.execute("SELECT identity, entry FROM paired_devices ORDER BY entry").fetchall()

    def paired_names(self) -> set[str]:
        return {entry for _, entry in self.paired_devices()}

    def next_counter(self, device: str) -> int:
        """The next command counter for `device`, committed before it is used."""
        self.db.execute("INSERT INTO command_counters (device, counter) VALUES (?, 1) "
                        "ON CONFLICT(device) DO UPDATE SET counter = counter + 1", (device,))
        return self.db.execute("SELECT counter FROM command_counters WHERE device = ?", (device,)).fetchone()[0]

    async def update(self, name: str, keys: PairingKeys) -> None:
        current = await self.get(name)
        merged = current.to_dict() if current is not None else {}
        merged.update(keys.to_dict())  # Bumble updates in parts: keep what it does not resend
        self.db.execute("INSERT OR REPLACE INTO ble_bonds (name, keys) VALUES (?, ?)", (name, json.dumps(merged)))

    async def get(self, name: str) -> PairingKeys | None:
        row = self.db.execute("SELECT keys FROM ble_bonds WHERE name = ?", (name,)).fetchone()
        return None if row is None else PairingKeys.from_dict(json.loads(row[0]))

    async def get_all(self) -> list[tuple[str, PairingKeys]]:
        rows = self.db.execute("SELECT name, keys FROM ble_bonds ORDER BY name").fetchall()
        return [(name, PairingKeys.from_dict(json.loads(keys))) for name, keys in rows]

    async def delete(self, name: str) -> None:
        self.db.execute("DELETE FROM ble_bonds WHERE name = ?", (name,))

    async def delete_all(self) -> None:
        self.db.execute("DELETE FROM ble_bonds")

    def close(self) -> None:
        self.db.close()
