"""IRQ discipline of the BLE link (firmware/jikimi/link.py), under CPython with a stand-in for
MicroPython's `bluetooth` module: the IRQ handler records and wakes, and nothing more (no log
line, no flash write); the app's task (`pump`) prints the IRQ's log lines in order; command
writes and IRQ log lines wait in bounded rings that count what they drop; a counter the flash
cannot store is answered INTERNAL.

The virtual-board tests (tests/test_irq_discipline.py) run the same code on the real NimBLE stack; here
every IRQ is called by hand, so a flood arrives with no pump in between, deterministically.
"""

from __future__ import annotations

import builtins
import importlib
import os
import sys
import types

import pytest

from jikimi import config as cfg
from jikimi import protocol as p
from jikimi.bonds import BondStore
from jikimi.device import Device
from jikimi.journal import Journal

PASSKEY = 123456
H_EVENTS, H_COMMANDS, H_INFO = 10, 20, 30
CONNECT, DISCONNECT, WRITE, ENCRYPTION, GET_SECRET, SET_SECRET, PASSKEY_ACTION = 1, 2, 3, 28, 29, 30, 31
DISPLAY = 3
OWNER = (0, bytes([1, 2, 3, 4, 5, 6]))  # (address type, address in display order)
NEWCOMER = (0, bytes([6, 5, 4, 3, 2, 1]))


class FakeBLE:
    """Just what the link calls on MicroPython's bluetooth.BLE."""

    def __init__(self) -> None:
        self.handler = None
        self.values: dict[int, bytes] = {}
        self.notified: list[tuple[int, bytes]] = []
        self.passkeys: list[tuple[int, int, int]] = []

    def irq(self, handler):
        self.handler = handler

    def active(self, *args):
        return True

    def config(self, *args, **kwargs):
        return None

    def gatts_register_services(self, services):
        return ((H_EVENTS, H_COMMANDS, H_INFO),)

    def gatts_write(self, handle, value, *args):
        self.values[handle] = bytes(value)

    def gatts_read(self, handle):
        return self.values.get(handle, b"")

    def gatts_set_buffer(self, *args):
        pass

    def gatts_notify(self, conn, handle, frame):
        self.notified.append((conn, bytes(frame)))

    def gap_advertise(self, *args, **kwargs):
        pass

    def gap_disconnect(self, handle):
        pass

    def gap_passkey(self, handle, action, passkey):
        self.passkeys.append((handle, action, passkey))


class Clock:
    def __init__(self) -> None:
        self.now = 100000

    def ticks_ms(self) -> int:
        return self.now


class Bell:
    """A Link on a FakeBLE, with everything the IRQ handler does watched."""

    def __init__(self, tmp_path, monkeypatch) -> None:
        self.ble = FakeBLE()
        fake = types.ModuleType("bluetooth")
        fake.BLE = lambda: self.ble
        fake.UUID = lambda text: text
        monkeypatch.setitem(sys.modules, "bluetooth", fake)
        monkeypatch.delitem(sys.modules, "jikimi.link", raising=False)
        self.module = importlib.import_module("jikimi.link")
        self.clock = Clock()
        monkeypatch.setattr(self.module, "time", self.clock)
        config, errors = cfg.validate({"passkey": str(PASSKEY), "board": "sim", "roles": ["panic"]})
        assert not errors
        self.flash = tmp_path
        self.journal = Journal(str(tmp_path / "journal.bin"), new_epoch=lambda: 0x1234)
        self.device = Device(config, self.journal, self.clock.now, {}, (1, 2, 3))
        self.bonds = BondStore(str(tmp_path / "bonds.json"))
        owner_key = self.module._addr_key(*OWNER)
        self.bonds.set(1, bytes.fromhex(owner_key), b"ours")
        self.bonds.set(2, bytes.fromhex(owner_key), b"theirs")
        assert self.bonds.commit(owner_key)
        self.lines: list[dict] = []
        self.times: list[int] = []
        self.in_irq = False
        self.misdeeds: list[str] = []  # what the IRQ handler did that it must not
        self.wakes = 0
        self.link = self.module.Link(self.device, self.journal, self.bonds, PASSKEY, self.log,
                                     self.clock.now, wake=self.wake)
        real_open, real_rename, real_remove = builtins.open, os.rename, os.remove

        def watched(name, real):
            def call(*args, **kwargs):
                if self.in_irq:
                    self.misdeeds.append(f"{name}{args}")
                return real(*args, **kwargs)
            return call

        monkeypatch.setattr(builtins, "open", watched("open", real_open))
        monkeypatch.setattr(os, "rename", watched("rename", real_rename))
        monkeypatch.setattr(os, "remove", watched("remove", real_remove))

    def log(self, kind, *words, at=None, **fields):
        if self.in_irq:
            self.misdeeds.append(f"log {kind} {words} {fields}")
        self.times.append(self.clock.now if at is None else at)  # what app.log prints as "t"
        record = {"k": kind}
        if words:
            record["msg"] = " ".join(str(w) for w in words)
        record.update(fields)
        self.lines.append(record)

    def wake(self) -> None:
        self.wakes += 1

    def irq(self, event, data):
        self.in_irq = True
        try:
            return self.ble.handler(event, data)
        finally:
            self.in_irq = False

    def pump(self) -> None:
        self.clock.now += 10
        self.link.pump(self.clock.now)

    def ble_lines(self, since: int = 0) -> list[dict]:
        return [r for r in self.lines[since:] if r["k"] == "ble"]

    def connect_owner(self, handle: int = 1) -> None:
        self.irq(CONNECT, (handle, OWNER[0], OWNER[1]))
        self.irq(ENCRYPTION, (handle, True, True, True, 16))
        self.pump()
        assert self.link.conns[handle].trusted

    def write(self, handle: int, message: p.Message) -> None:
        self.ble.values[H_COMMANDS] = p.encode(message)
        self.irq(WRITE, (handle, H_COMMANDS))

    def frames(self, handle: int = 1) -> list[p.Message]:
        return [p.decode(frame) for conn, frame in self.ble.notified if conn == handle]


@pytest.fixture
def bell(tmp_path, monkeypatch):
    return Bell(tmp_path, monkeypatch)


def test_the_irq_handler_logs_nothing_and_writes_no_flash_and_the_task_prints_its_lines_in_order(bell):
    bell.device.open_pairing(bell.clock.now)
    mark = len(bell.lines)
    irq_time = bell.clock.now
    newcomer_key = bytes.fromhex(bell.module._addr_key(*NEWCOMER))
    # A new phone pairs by passkey; the stack asks for and hands over its secrets.
    bell.irq(CONNECT, (2, NEWCOMER[0], NEWCOMER[1]))
    bell.irq(PASSKEY_ACTION, (2, DISPLAY, 0))
    assert bell.ble.passkeys == [(2, DISPLAY, PASSKEY)]  # answered in the IRQ: the stack waits
    bell.irq(ENCRYPTION, (2, True, True, True, 16))
    assert bell.irq(GET_SECRET, (2, 0, newcomer_key)) is None
    assert bell.irq(SET_SECRET, (1, newcomer_key, b"ours-2")) is True
    assert bell.irq(SET_SECRET, (2, newcomer_key, b"theirs-2")) is True
    assert bell.irq(GET_SECRET, (2, 0, newcomer_key)) == b"theirs-2"  # from RAM, before the commit
    # A stranger tries too: refused (busy), in the IRQ, with a passkey nobody knows.
    bell.irq(CONNECT, (3, 0, bytes(6)))
    bell.irq(PASSKEY_ACTION, (3, DISPLAY, 0))
    bell.irq(DISCONNECT, (3, 0, bytes(6)))
    assert bell.misdeeds == [] and bell.ble_lines(mark) == []  # nothing printed yet
    assert bell.wakes >= 5  # but the task was woken for each
    assert not (bell.flash / "bonds.json.tmp").exists()
    peers_before = BondStore(str(bell.flash / "bonds.json")).bonds

    bell.pump()
    assert bell.misdeeds == []
    assert bell.ble_lines(mark) == [
        {"k": "ble", "msg": "connect", "conn": 2},
        {"k": "ble", "msg": "pairing", "conn": 2},
        {"k": "ble", "msg": "secure", "conn": 2, "authenticated": 1, "bonded": 1},
        {"k": "ble", "msg": "connect", "conn": 3},
        {"k": "ble", "msg": "pairing_refused", "conn": 3, "reason": "busy"},
        {"k": "ble", "msg": "disconnect", "conn": 3},
        {"k": "ble", "msg": "bonded", "conn": 2, "bonds": 2},  # the task's own, after the IRQ's
    ]
    assert bell.times[mark:] == [irq_time] * 6 + [bell.clock.now]  # each line with its own time
    assert BondStore(str(bell.flash / "bonds.json")).bonds == peers_before + 1  # written by the task


class NoRoom:
    """A secret the heap has no room for: allocating its copy raises MemoryError, as MicroPython
    does in an IRQ when the heap is full."""

    def __bytes__(self) -> bytes:
        raise MemoryError("memory allocation failed, allocating 145 bytes")


def pair_newcomer(bell, handle: int, ours) -> bool:
    """A passkey pairing of the newcomer on `handle`; what the stack was told of our keys."""
    key = bytes.fromhex(bell.module._addr_key(*NEWCOMER))
    bell.irq(CONNECT, (handle, NEWCOMER[0], NEWCOMER[1]))
    bell.irq(PASSKEY_ACTION, (handle, DISPLAY, 0))
    bell.irq(ENCRYPTION, (handle, True, True, True, 16))
    stored = bell.irq(SET_SECRET, (1, key, ours))
    assert bell.irq(SET_SECRET, (2, key, b"theirs-2")) is True
    bell.pump()
    bell.pump()
    return stored


def test_a_secret_the_heap_had_no_room_for_fails_that_pairing_at_once_and_no_half_bond_is_kept(bell):
    bell.device.open_pairing(bell.clock.now)
    bonds_before = bell.bonds.bonds
    mark = len(bell.lines)
    assert pair_newcomer(bell, 2, NoRoom()) is False  # the stack is told the secret was not kept
    lines = bell.ble_lines(mark)
    assert {"k": "ble", "msg": "dropped", "conn": 2, "reason": "no_heap_for_secret"} in lines, lines
    assert not [line for line in lines if line.get("msg") == "bonded"]
    assert bell.misdeeds == []
    assert bell.bonds.bonds == bonds_before == BondStore(str(bell.flash / "bonds.json")).bonds
    # The phone pairs again, with room this time: that pairing is not failed by the last one's loss.
    bell.irq(DISCONNECT, (2, NEWCOMER[0], NEWCOMER[1]))
    mark = len(bell.lines)
    assert pair_newcomer(bell, 3, b"ours-2") is True
    assert {"k": "ble", "msg": "bonded", "conn": 3, "bonds": bonds_before + 1} in bell.ble_lines(mark)


def test_a_flood_of_command_writes_is_bounded_counted_and_reported_in_status(bell):
    bell.connect_owner()
    bell.ble.notified.clear()
    for counter in range(1, 201):  # a phone writing as fast as the radio goes, no pump between
        bell.write(1, p.Message(p.SET_TIME, counter=counter, time=800000000 + counter))
    capacity = bell.module.WRITES_CAPACITY
    assert len(bell.link._writes) == capacity and bell.link._writes.dropped == 200 - capacity
    assert bell.link.writes_pending()
    bell.pump()
    results = [m for m in bell.frames() if m.type == p.RESULT]
    assert [r.counter for r in results] == list(range(1, capacity + 1))  # the first ones, in order
    assert all(r.code == p.E_OK for r in results)
    assert {"k": "ble", "msg": "commands_dropped", "commands": 200 - capacity, "total": 200 - capacity} in bell.lines
    assert not bell.link.writes_pending()
    # The dropped ones got no RESULT and did not use their counters: the phone sends them again.
    bell.write(1, p.Message(p.REQUEST_STATUS, counter=capacity + 1))
    bell.pump()
    assert bell.frames()[-2].type == p.RESULT and bell.frames()[-2].code == p.E_OK
    status = bell.frames()[-1]
    assert status.type == p.STATUS and status.dropped == 200 - capacity
    assert p.decode(bell.ble.values[H_EVENTS]).dropped == 200 - capacity  # the Events read too


def test_a_flood_of_connections_between_two_pumps_loses_log_lines_counted_not_memory(bell):
    mark = len(bell.lines)
    for handle in range(100, 200):
        bell.irq(CONNECT, (handle, 0, bytes([handle % 256] * 6)))
        bell.irq(DISCONNECT, (handle, 0, bytes(6)))
    capacity = bell.module.IRQ_LOG_CAPACITY
    assert len(bell.link._irq_log) == capacity
    bell.pump()
    lines = bell.ble_lines(mark)
    assert lines[:capacity] == [{"k": "ble", "msg": msg, "conn": 100 + i // 2}
                                for i, msg in enumerate(["connect", "disconnect"] * (capacity // 2))]
    assert {"k": "ble", "msg": "log_dropped", "lines": 200 - capacity, "total": 200 - capacity} in lines
    assert bell.misdeeds == []


def test_a_counter_the_flash_cannot_store_is_answered_internal_and_not_acted_on(bell):
    bell.connect_owner()
    bell.write(1, p.Message(p.SET_TIME, counter=1, time=800000000))
    bell.pump()
    assert bell.device.clock_set()
    bell.device._clock_s = None  # forget it, to see whether the next SET_TIME acts
    (bell.flash / "bonds.json.tmp").mkdir()  # the flash refuses the counter's write
    bell.ble.notified.clear()
    bell.write(1, p.Message(p.SET_TIME, counter=2, time=800000100))
    bell.pump()  # no exception out of the task: the supervisor would restart it, no RESULT
    (result,) = [m for m in bell.frames() if m.type == p.RESULT]
    assert (result.counter, result.code) == (2, p.E_INTERNAL)
    assert not bell.device.clock_set()  # not carried out
    assert {"k": "ble", "msg": "command", "conn": 1, "type": "set_time", "code": "INTERNAL"} in bell.lines
    (bell.flash / "bonds.json.tmp").rmdir()
    bell.write(1, p.Message(p.SET_TIME, counter=2, time=800000100))  # the same frame again
    bell.pump()
    assert bell.frames()[-1].code == p.E_REPLAYED  # its counter was used
    bell.write(1, p.Message(p.SET_TIME, counter=3, time=800000100))  # a retry with a new counter
    bell.pump()
    assert bell.frames()[-1].code == p.E_OK and bell.device.clock_set()


def test_the_events_value_is_the_current_status_without_being_encoded_on_every_pump(bell, monkeypatch):
    """A read of Events returns the current STATUS (PROTOCOL.md §2.1); the pump, which runs every
    20 ms while the siren plays, re-encodes it only when something it says may have changed."""
    bell.connect_owner()
    encoded = []
    real_encode = bell.module.p.encode
    monkeypatch.setattr(bell.module.p, "encode", lambda msg: encoded.append(msg.type) or real_encode(msg))
    for _ in range(50):  # half a second of a playing siren's pumps (10 ms each), nothing new
        bell.pump()
    assert encoded.count(p.STATUS) <= 1, encoded
    bell.write(1, p.Message(p.SET_TIME, counter=1, time=800000000))  # a command: the clock is set
    bell.pump()
    assert p.decode(bell.ble.values[H_EVENTS]).flags & p.FLAG_CLOCK_SET
    bell.journal.append(p.TAMPER, {"tampered": 1})
    bell.pump()  # an event journaled: the value follows at once
    assert p.decode(bell.ble.values[H_EVENTS]).journal_depth == bell.journal.depth == 1
    before = p.decode(bell.ble.values[H_EVENTS]).uptime_s
    bell.clock.now += 1500
    bell.pump()  # and a second on, the uptime
    assert p.decode(bell.ble.values[H_EVENTS]).uptime_s > before
