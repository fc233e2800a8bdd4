# Drives the device core through a long, busy, seeded day and reports time per step and, under
# MicroPython, the live heap: after import, after boot, and its high-water mark over the run
# (gc.collect() then gc.mem_alloc() after every step). Prints one JSON line.
# Usage: <python> core_long_run.py FLASH_DIR HOURS
import gc
import json
import random
import sys
import time

try:
    mem_alloc = gc.mem_alloc  # MicroPython
except AttributeError:
    mem_alloc = None


def live():
    if mem_alloc is None:
        return 0
    gc.collect()
    return mem_alloc()


def now_us():
    return time.ticks_us() if hasattr(time, "ticks_us") else int(time.perf_counter() * 1e6)


heap_start = live()
from jikimi import config as cfg
from jikimi import protocol as p
from jikimi import ticks
from jikimi.device import Device
from jikimi.journal import Journal

heap_imported = live()

flash, hours = sys.argv[1], int(sys.argv[2])
random.seed(7)
config, _ = cfg.validate({"passkey": "000001", "board": "sim", "roles": ["panic", "door", "pull_pin"],
                          "door": {"exit_delay_ms": 5000, "entry_delay_ms": 5000}})
journal = Journal(flash + "/journal.bin", new_epoch=lambda: 0x1234)
now = 0
device = Device(config, journal, now, {}, (0, 1, 0))
heap_booted = live()
peak = heap_booted
counter = 0
steps = 0
busy_us = 0


# Commands by their names, and the disarmed state as a new door has it: on the device image the
# protocol's constants are folded into the code that uses them and are not attributes of
# jikimi.protocol (host/jikimi_host/toolchain/constfold.py).
ARM_DISARMED = device.door.state


def command(kind, **fields):
    global counter
    counter += 1
    return device.command(p.Message(kind, counter=counter, **fields), now)


def press(length_ms):
    """A bouncy press of the button."""
    global now
    for level in (1, 0, 1):
        device.input("button", level, now)
        now = ticks.add(now, 1 + random.getrandbits(2))
    now = ticks.add(now, length_ms)
    device.input("button", 0, now)


end = hours * 3600 * 1000
elapsed = 0
while elapsed < end:
    start = now_us()
    choice = random.getrandbits(4)
    if choice == 0:
        press(3200)  # an alarm
    elif choice < 3:
        press(80 + random.getrandbits(7))  # a pocket bump
    elif choice < 6:
        device.input("door", random.getrandbits(1), now)
    elif choice == 6:
        command("arm" if device.door.state == ARM_DISARMED else "disarm")
    elif choice == 7:
        device.battery_reading(3300 + random.getrandbits(10), now)
    elif choice == 8:
        device.input("pull_pin", random.getrandbits(1), now)
    else:
        for seq, _ in journal.pending():
            command("ack", epoch=journal.epoch, seq=seq)
        alarm = device.panic.alarm
        if alarm.active:
            command("cancel_alarm", epoch=journal.epoch, alarm_seq=alarm.seq)
    device.poll(now)
    device.output(now)
    due = device.deadline()
    step_ms = 1000 + random.getrandbits(16)
    if due is not None and 0 < ticks.diff(due, now) < step_ms:
        step_ms = ticks.diff(due, now)
    busy_us += now_us() - start
    steps += 1
    now = ticks.add(now, step_ms)
    elapsed += step_ms
    peak = max(peak, live())

print(json.dumps({
    "steps": steps, "hours": hours, "us_per_step": busy_us / steps,
    "heap_start": heap_start, "heap_imported": heap_imported, "heap_booted": heap_booted,
    "heap_peak": peak, "events": journal.next_seq - 1, "journal_depth": journal.depth,
}))
