# Differential check of the journal under MicroPython and CPython: write a history, then for a
# power cut at every byte offset and a damaged byte at every offset, recover and print what
# survived. Usage: <python> journal_recovery.py FOLDER
import sys

from jikimi import protocol as p
from jikimi.journal import Journal

folder = sys.argv[1]
path = folder + "/journal.bin"


def fresh():
    return Journal(path, capacity=8, max_bytes=1 << 16, new_epoch=lambda: 0x4242)


journal = fresh()
for i in range(6):
    seq = journal.append(p.ALARM_RAISED if i % 3 == 0 else p.DOOR_OPENED,
                         {"mode": 1, "trigger": 1, "battery_pct": 50} if i % 3 == 0 else {"arm_state": i % 5}, i)
    if i % 2:
        journal.ack(seq)
with open(path, "rb") as f:
    full = f.read()
print("bytes", len(full), "pending", [s for s, _ in journal.pending()])


def show(label):
    j = fresh()
    print(label, j.epoch, j.next_seq, [s for s, _ in j.pending()], j.recovered["damaged_bytes"])


for cut in range(len(full) + 1):
    with open(path, "wb") as f:
        f.write(full[:cut])
    show("cut %d" % cut)
for at in range(len(full)):
    damaged = bytearray(full)
    damaged[at] ^= 0x5A
    with open(path, "wb") as f:
        f.write(damaged)
    show("flip %d" % at)
