"""Crash-safe, append-only event journal (CORE.md, "Journal").

Every event gets the next sequence number and is written to flash before it is sent; it stays
until the phone acknowledges it. Records:

    magic 0x4A | kind u8 | length u8 | payload (length bytes) | CRC-32 u32 of kind..payload

    kind 1 EPOCH  payload: epoch u16, next_seq u32   (first record of every file)
    kind 2 EVENT  payload: the event's protocol frame (PROTOCOL.md §5)
    kind 3 TRIM   payload: seq u32                   (acknowledged, or dropped when full)
    kind 4 ALARM  payload: state u8, the alarm_raised frame   (a live alarm, see below)

A power cut while a record is written leaves a torn record at the end: recovery keeps every
record before it, drops the torn one and rewrites the file without it. A damaged record in the
middle (a flash error) is skipped by scanning for the next record whose CRC is right; the file
is then rewritten clean. Compaction (when the file grows past `max_bytes`) writes the epoch and
the unacknowledged events to a new file and renames it over the old one, so a power cut during
compaction leaves either the old or the new file, whole.

The sequence number survives reboot (EPOCH.next_seq and the events' own seqs) and never goes
back: where recovery skipped damaged bytes, it also skips as many sequence numbers as event
records could have fitted there, because a damaged record may hold an event the phone already
has, and reusing its number would make the relay drop a new event as a duplicate. A journal that
cannot be recovered at all starts a new random epoch, for the same reason.

Full (`capacity` unacknowledged events): the oldest event of the lowest priority present is
dropped, if that priority is not above the new event's; otherwise a new non-critical event is
dropped instead. Alarms, cancellations and tamper are critical and are never dropped to make
room: for them the journal grows past capacity, and past `4 * capacity` they are kept in RAM
only (sent, but lost on a reboot). A flash write that fails is counted (`write_errors`) and the
event is kept in RAM the same way: the journal never stops an alarm from being sent. Heartbeats
are never journaled.

Live alarms (CORE.md, "After a reboot"): an alarm stays active until it is cancelled, also
after the phone acknowledged it and its event was trimmed. The journal follows each alarm slot
(the panic button and pull-pin share slot 0, the door alarm is slot 1) from the events that
pass through it: alarm_raised makes an alarm live (replacing the slot's older one), alarm_acked
and siren_silenced set its ACKED and SILENCED state bits, alarm_cancelled ends it. Recovery
replays the same rule over the file. Compaction writes one ALARM record per live alarm after
the pending events (a snapshot that overrides them), and a CANCELLED one for a pending
alarm_raised whose cancellation was already trimmed (or a replay would revive it). An alarm
event that did not reach the file (the journal full, RAM only) is replaced by an ALARM record
with the new state (CANCELLED ends it), so trimming, dropping and compacting never lose a live
alarm nor revive a cancelled one. At most one live alarm
per slot: the record is bounded, and each is one CRC-checked record, so a torn write leaves the
state before it.
"""

import os
import struct

try:
    from binascii import crc32
except ImportError:  # a MicroPython build without binascii.crc32

    def crc32(data, crc=0):
        crc ^= 0xFFFFFFFF
        for byte in data:
            crc ^= byte
            for _ in range(8):
                crc = (crc >> 1) ^ (0xEDB88320 if crc & 1 else 0)
        return crc ^ 0xFFFFFFFF


try:
    from micropython import const
except ImportError:  # CPython

    def const(value):
        return value


from jikimi import protocol as p
from jikimi import unload

MAGIC = const(0x4A)
KIND_EPOCH = const(1)
KIND_EVENT = const(2)
KIND_TRIM = const(3)
KIND_ALARM = const(4)
# state bits of a live alarm (KIND_ALARM's first byte)
ACKED = const(0x01)
SILENCED = const(0x02)
CANCELLED = const(0x80)  # only in a record: this alarm is over
SLOT_PANIC = const(0)
SLOT_DOOR = const(1)
OVERHEAD = const(7)  # magic, kind, length, crc
MIN_EVENT_RECORD = const(19)  # overhead + the 12-byte event header

PRIORITY_LOW = const(0)
PRIORITY_NORMAL = const(1)
PRIORITY_CRITICAL = const(2)
_CRITICAL = (p.ALARM_RAISED, p.ALARM_CANCELLED, p.TAMPER)
_NORMAL = (p.ALARM_ACKED, p.SIREN_SILENCED, p.ARMED, p.DISARMED, p.BATTERY)


def priority(type_code):
    if type_code in _CRITICAL:
        return PRIORITY_CRITICAL
    if type_code in _NORMAL:
        return PRIORITY_NORMAL
    return PRIORITY_LOW


def slot_of(trigger):
    """The alarm slot a trigger raises: the door's (intrusion, tamper) or the panic button's."""
    if trigger == p.TRIGGER_DOOR_INTRUSION or trigger == p.TRIGGER_TAMPER:
        return SLOT_DOOR
    return SLOT_PANIC


def record(kind, payload):
    """One journal record's bytes."""
    body = bytes((kind, len(payload))) + payload
    return bytes((MAGIC,)) + body + struct.pack("<I", crc32(body) & 0xFFFFFFFF)


def _field(fields, name):
    if isinstance(fields, dict):
        return fields[name]
    return getattr(fields, name)


def _random_epoch():
    while True:
        epoch = struct.unpack("<H", os.urandom(2))[0]
        if epoch:
            return epoch


class Journal:
    def __init__(self, path, capacity=64, max_bytes=4096, new_epoch=_random_epoch):
        self.path = path
        self.capacity = capacity
        self.max_bytes = max_bytes
        self._new_epoch = new_epoch
        self.epoch = 0
        self.next_seq = 1
        self._pending = {}  # seq -> event frame
        self._alarms = {}  # slot -> [alarm_raised frame, state bits, seq]: the live alarms
        self._size = 0
        self.write_errors = 0
        self.ram_only = 0  # critical events past 4 * capacity, not written
        self.recovered = None  # what recovery found, for the boot log
        # Boot-only code in a module of its own, dropped once the file is read: as .mpy its
        # bytecode would otherwise stay in the heap for good (CORE.md, "Heap").
        from jikimi import recovery

        recovery.recover(self)
        unload("recovery")

    # -- writing --------------------------------------------------------------------------

    def _write(self, data):
        try:
            with open(self.path, "ab") as f:
                f.write(data)
        except OSError:
            self.write_errors += 1
        self._size += len(data)
        if self._size > self.max_bytes:
            self._compact()

    def _compact(self):
        temp = self.path + ".new"
        size = 0
        try:
            with open(temp, "wb") as f:
                size = f.write(record(KIND_EPOCH, struct.pack("<HI", self.epoch, self.next_seq)))
                for seq in sorted(self._pending):
                    size += f.write(record(KIND_EVENT, self._pending[seq]))
                for slot in sorted(self._alarms):  # after the events: the state overrides them
                    size += f.write(self._alarm_record(slot))
                for frame in self._ended_raises():
                    size += f.write(record(KIND_ALARM, bytes((CANCELLED,)) + frame))
            os.rename(temp, self.path)
        except OSError:
            self.write_errors += 1
        self._size = size

    # -- live alarms ----------------------------------------------------------------------

    def _alarm_record(self, slot):
        live = self._alarms[slot]
        return record(KIND_ALARM, bytes((live[1],)) + live[0])

    def _ended_raises(self):
        """Pending alarm_raised frames of slots with no live alarm: the alarm was cancelled and
        its cancellation trimmed, so a compacted file must say so or a replay would revive it."""
        ended = {}
        for seq in sorted(self._pending):
            frame = self._pending[seq]
            if frame[1] == p.ALARM_RAISED:
                slot = slot_of(p.decode(frame).trigger)
                if slot not in self._alarms:
                    ended[slot] = frame  # the slot's last raise is the one a replay leaves live
        return [ended[slot] for slot in sorted(ended)]

    def _settle(self, slot):
        """After _follow: a cancelled alarm is no longer live."""
        if slot is not None and self._alarms[slot][1] & CANCELLED:
            del self._alarms[slot]

    def _restate(self, alarm, frame, state):
        """An ALARM record: the alarm `alarm` (decoded `frame`) has `state`."""
        slot = slot_of(alarm.trigger)
        if state & CANCELLED:
            live = self._alarms.get(slot)
            if live is not None and live[2] == alarm.seq:
                del self._alarms[slot]
        else:
            self._alarms[slot] = [bytes(frame), state, alarm.seq]

    def _follow(self, type_code, fields, frame):
        """Follow the live alarms through an event; return the slot it changed, or None.
        `fields` has the event's fields as attributes (a Message) or keys (a dict)."""
        if type_code == p.ALARM_RAISED:
            slot = slot_of(_field(fields, "trigger"))
            self._alarms[slot] = [frame, 0, p.decode(frame).seq]
            return slot
        if type_code == p.ALARM_ACKED:
            bit = ACKED
        elif type_code == p.SIREN_SILENCED:
            bit = SILENCED
        elif type_code == p.ALARM_CANCELLED:
            bit = CANCELLED
        else:
            return None
        seq = _field(fields, "alarm_seq")
        for slot in self._alarms:
            live = self._alarms[slot]
            if live[2] == seq:
                live[1] |= bit
                return slot
        return None

    def live_alarms(self):
        """[(slot, alarm_raised frame, state bits), ...]: alarms raised and not cancelled."""
        out = []
        for slot in sorted(self._alarms):
            live = self._alarms[slot]
            out.append((slot, live[0], live[1]))
        return out

    def _trim(self, seq):
        del self._pending[seq]
        self._write(record(KIND_TRIM, struct.pack("<I", seq)))

    def _victim(self, new_priority):
        """The seq to drop to make room for an event of `new_priority`, or None."""
        lowest = None
        victim = None
        for seq in sorted(self._pending):
            prio = priority(self._pending[seq][1])
            if lowest is None or prio < lowest:
                lowest = prio
                victim = seq
        if lowest is not None and lowest <= new_priority and lowest < PRIORITY_CRITICAL:
            return victim
        return None

    def append(self, type_code, fields, time_s=0):
        """Journal a new event; return its seq, or 0 if the journal is full and the event
        was not important enough to displace another (never for critical events)."""
        prio = priority(type_code)
        if len(self._pending) >= self.capacity:
            victim = self._victim(prio)
            if victim is not None:
                self._trim(victim)
            elif prio < PRIORITY_CRITICAL:
                self._keep_state(type_code, fields, None)
                return 0
        seq = self.next_seq
        frame = p.encode(p.Message(type_code, epoch=self.epoch, seq=seq, time=time_s, **fields))
        self.next_seq = seq + 1
        self._pending[seq] = frame
        if len(self._pending) > 4 * self.capacity:
            self.ram_only += 1
            self._keep_state(type_code, fields, frame)
        else:
            slot = self._follow(type_code, fields, frame)
            self._write(record(KIND_EVENT, frame))
            self._settle(slot)
        return seq

    def _keep_state(self, type_code, fields, frame):
        """An alarm event that is not written: write the live alarm's new state instead."""
        slot = self._follow(type_code, fields, frame)
        if slot is not None:
            self._write(self._alarm_record(slot))
            self._settle(slot)

    def ack(self, seq):
        """The phone has stored event `seq`: trim it. False if it was not pending."""
        if seq not in self._pending:
            return False
        self._trim(seq)
        return True

    # -- reading --------------------------------------------------------------------------

    @property
    def depth(self):
        return len(self._pending)

    def pending(self):
        """[(seq, frame), ...] of the unacknowledged events, oldest first."""
        out = []
        for seq in sorted(self._pending):
            out.append((seq, self._pending[seq]))
        return out
