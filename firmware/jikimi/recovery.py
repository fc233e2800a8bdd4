"""Reading the journal back at boot (journal.py says what it recovers and why).

Boot-only code: `Journal()` imports this module, recovers, and unloads it (`jikimi.unload`),
so that a bell running from `.mpy` files does not keep its bytecode in the heap (CORE.md,
"Heap"). It reads and sets the journal's own state, as the journal's code did before it moved
here.
"""

import os
import struct

from jikimi import journal as j
from jikimi import protocol as p
from jikimi.fs import exists


def scan(data, each):
    """Call each(kind, payload) for every valid record in `data`, in file order; payload is a
    memoryview into `data` (copy what you keep). Returns (records, end offset of the last valid
    record, number of bytes skipped as damaged before it).

    One record at a time, so that recovery keeps only what it needs: a list of every record, each
    copy kept between its parsing garbage, left a tight heap in holes too small for the next
    allocation (a bell with 160 records could not boot in twice the ESP32's heap as .mpy)."""
    view = memoryview(data)
    count = 0
    at = 0
    end = 0
    skipped = 0
    size = len(data)
    while at + j.OVERHEAD <= size:
        if data[at] == j.MAGIC:
            length = data[at + 2]
            stop = at + 3 + length + 4
            if stop <= size:
                (stored,) = struct.unpack_from("<I", data, at + 3 + length)
                if j.crc32(view[at + 1 : at + 3 + length]) & 0xFFFFFFFF == stored:
                    skipped += at - end
                    count += 1
                    each(data[at + 1], view[at + 3 : at + 3 + length])
                    at = end = stop
                    continue
        at += 1
    return count, end, skipped


def recover(journal):
    """Fill a new `journal` from its file: epoch, next seq, pending events, live alarms; then
    rewrite the file if it was damaged or new (journal.recovered says what was found)."""
    temp = journal.path + ".new"
    if exists(temp):
        os.remove(temp)  # a compaction that did not finish; the old file is whole
    data = b""
    if exists(journal.path):
        with open(journal.path, "rb") as f:
            data = f.read()
    trimmed = []

    def each(kind, payload):  # journal.epoch and journal.next_seq: what the file says so far
        if kind == j.KIND_EPOCH and len(payload) == 6:
            journal.epoch, journal.next_seq = struct.unpack("<HI", payload)
        elif kind == j.KIND_EVENT:
            try:
                event = p.decode(payload)
            except p.ProtocolError:
                return
            if event.klass != "event":
                return
            frame = bytes(payload)
            journal.epoch = journal.epoch or event.epoch
            journal._pending[event.seq] = frame
            if event.seq >= journal.next_seq:
                journal.next_seq = event.seq + 1
            journal._settle(journal._follow(event.type, event, frame))
        elif kind == j.KIND_TRIM and len(payload) == 4:
            seq = struct.unpack("<I", payload)[0]
            journal._pending.pop(seq, None)  # now: an acked frame is not kept through the scan
            trimmed.append(seq)
        elif kind == j.KIND_ALARM and len(payload) > 1:
            try:
                alarm = p.decode(payload[1:])
            except p.ProtocolError:
                return
            if alarm.type != p.ALARM_RAISED:
                return
            journal.epoch = journal.epoch or alarm.epoch
            if alarm.seq >= journal.next_seq:
                journal.next_seq = alarm.seq + 1
            journal._restate(alarm, payload[1:], payload[0])

    count, end, skipped = scan(data, each)
    epoch, next_seq = journal.epoch, journal.next_seq
    for seq in trimmed:  # and again: a trim is final whatever came after it
        journal._pending.pop(seq, None)
    damaged = skipped + len(data) - end
    fresh = not epoch
    if fresh:
        epoch = journal._new_epoch()
        next_seq = 1
        journal._pending = {}
    else:
        next_seq += (damaged + j.MIN_EVENT_RECORD - 1) // j.MIN_EVENT_RECORD
    alarms = journal._alarms
    for slot in list(alarms):
        if p.decode(alarms[slot][0]).epoch != epoch:
            del alarms[slot]  # another epoch's seq cannot be cancelled in this one
    journal.epoch = epoch
    journal.next_seq = next_seq
    journal.recovered = {
        "bytes": len(data),
        "records": count,
        "damaged_bytes": damaged,
        "pending": len(journal._pending),
        "alarms": len(alarms),
        "new_epoch": fresh,
    }
    if fresh or damaged:
        journal._compact()
    else:
        journal._size = len(data)
