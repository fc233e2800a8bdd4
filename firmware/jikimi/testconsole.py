"""The rig's test console: lines on the serial console that drive inputs and read outputs on a
board where no wiring does (config "test_console": true; never on a device in use, as anyone
with the cable could raise or hide an alarm).

    in NAME LEVEL   an input edge, as the pin IRQ would see it: NAME is button, door, pull_pin
                    or tamper; LEVEL 1 = active (pressed, open, pulled), 0 = inactive
    battery MV      the battery reads MV millivolts from now on, as if the ADC said so (until a
                    reboot; the rig cannot drive a real board's ADC), and is read now as many
                    times as the core needs to confirm a level (battery.confirm)
    out             what drives the buzzer and LED now:  J {"k": "out", "hz", "duty", "led"}
    status          the STATUS frame's fields:            J {"k": "status", ...}
    mem             live heap after a collection:         J {"k": "mem", "alloc", "free", "block"}
                    just after micropython.mem_info()'s lines, whose "max free sz" is the
                    largest free run in GC blocks of "block" bytes (fragmentation)
    pairing         open the pairing window (a rig cannot hold the button through a power-up)
    hang TASK       stop one of the app's tasks (ticker, inputs, ...) while the others run
                    on, as a task stuck for good would: the watchdog resets the board when it
                    was the ticker (or the watchdog itself)
    reset           reboot the board (machine.reset)
    wipe            forget every event, alarm and bond, then reboot: a fresh device for the
                    rig's next scenario (a reset alone keeps an uncancelled alarm: CORE.md)
    help

Each command answers one structured log line; a bad one answers {"k": "tc_error", "msg"}.
"""

import gc
import os
import sys
import time

import micropython

from jikimi import protocol as p

try:
    import asyncio
except ImportError:  # pragma: no cover
    import uasyncio as asyncio

HELP = "in NAME 0|1, battery MV, out, status, mem, pairing, hang TASK, reset, wipe, help"
BYTES_PER_BLOCK = 16 if sys.maxsize < (1 << 32) else 32  # MICROPY_BYTES_PER_GC_BLOCK: 4 words


async def _stop(task):
    # Cancelled until it has ended: a cancel that comes as the ticker is woken (App.inputs cuts
    # its sleep short with a cancel of its own) is taken for the wake, and `hang ticker` would be
    # lost with it.
    while not task.done():
        task.cancel()
        await asyncio.sleep_ms(100)


def _int(word, what):
    try:
        return int(word)
    except ValueError:
        raise ValueError("%s must be an integer, got %r" % (what, word))


class TestConsole:
    def __init__(self, app, log, inputs):
        self.app = app
        self.log = log
        self.inputs = inputs  # the core's input names, as `in NAME` takes them

    def handle(self, line):
        words = line.split()
        if not words:
            return
        try:
            self._run(words)
        except ValueError as err:
            self.log("tc_error", str(err))

    def _run(self, words):
        cmd = words[0]
        app = self.app
        if cmd == "in" and len(words) == 3:
            name = words[1]
            if name not in self.inputs:
                raise ValueError("unknown input %r (inputs: %s)" % (name, ", ".join(self.inputs)))
            level = _int(words[2], "LEVEL")
            if level not in (0, 1):
                raise ValueError("LEVEL must be 0 or 1, got %d" % level)
            app.inject(name, level)
            self.log("tc", cmd="in", name=name, level=level)
        elif cmd == "battery" and len(words) == 2:
            mv = _int(words[1], "MV")
            app.hw.battery_override_mv = mv
            for _ in range(app.device.battery.confirm):
                app.device.battery_reading(mv, time.ticks_ms())
            self.log("tc", cmd="battery", mv=mv)
        elif cmd == "out" and len(words) == 1:
            hz, duty, led = app.hw.outputs()
            self.log("out", hz=hz, duty=duty, led=led)
        elif cmd == "status" and len(words) == 1:
            msg = app.device.status(time.ticks_ms())
            fields = {}
            for name, _ in p.fields_of(p.STATUS):
                fields[name] = getattr(msg, name)
            self.log("status", **fields)
        elif cmd == "mem" and len(words) == 1:
            gc.collect()
            micropython.mem_info()  # printed, not returned: the host reads "max free sz" from it
            self.log("mem", alloc=gc.mem_alloc(), free=gc.mem_free(), block=BYTES_PER_BLOCK)
        elif cmd == "pairing" and len(words) == 1:
            app.device.open_pairing(time.ticks_ms())
            self.log("tc", cmd="pairing")
        elif cmd == "hang" and len(words) == 2:
            task = app.tasks.get(words[1])
            if task is None:
                raise ValueError("no task %r (tasks: %s)" % (words[1], ", ".join(app.tasks)))
            asyncio.create_task(_stop(task))
            self.log("tc", cmd="hang", task=words[1])
        elif cmd == "reset" and len(words) == 1:
            self.log("tc", cmd="reset")
            app.hw.reset()
        elif cmd == "wipe" and len(words) == 1:
            self.log("tc", cmd="wipe")
            for path in app.state_files():
                try:
                    os.remove(path)
                except OSError:
                    pass  # not there
            app.hw.reset()
        elif cmd == "help":
            self.log("tc", help=HELP)
        else:
            raise ValueError("unknown command %r (commands: %s)" % (" ".join(words), HELP))
