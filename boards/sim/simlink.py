"""The virtual board's side channel, device half (MicroPython Unix port only).

One TCP connection to the host half (address in $JIKIMI_SIM), JSON lines both ways:

  device -> host  {"op": name, "args": [...]}               fire and forget (outputs)
                  {"id": n, "op": name, "args": [...]}      call; the host answers
                  {"re": n, "ok": value} / {"re": n, "error": [errno, text]}
  host -> device  {"pin": id, "level": 0|1}                 an input pin changes
                  {"train": id, "edges": [[delay_us, level], ...], "id": n}
                                                            played here, in time; answered
                                                            {"op": "played", "args": [n]} once
                                                            the main thread ran its handlers
                  {"adc": id, "uv": microvolts}
                  {"heap": 1}                               print micropython.qstr_info() and
                                                            mem_info() after a collection, from
                                                            the task (between log lines; needs
                                                            an asyncio loop running)
                  {"re": n, ...}                            the answer to a call

BLE is not on this channel: the board runs MicroPython's own `bluetooth` module (NimBLE) over
its HCI UART (host/jikimi_host/sim/chip.py).

A reader thread receives. Pin IRQ handlers never run on it: as on an ESP32, where
IRQ handlers are scheduled onto the interpreter, they run on the main thread, via
`micropython.schedule` (between bytecodes and inside time.sleep), via a task that wakes an
asyncio loop waiting in poll() (the reader sends a datagram to a socket that task waits on), and
inside `call()` while the main thread waits for an answer (polling that same socket),
so a handler can never deadlock against a call the device is waiting for. Bytes travel as hex.
"""

import asyncio
import gc
import json
import micropython
import os
import random
import select
import socket
import sys
import time
import _thread

_DRAIN_SCHEDULED = False
_WAIT_MS = 50


def _address(text):
    host, port = text.rsplit(":", 1)
    return socket.getaddrinfo(host, int(port))[0][-1]


class Link:
    def __init__(self, address):
        self.sock = socket.socket()
        self.sock.connect(_address(address))
        self.stream = self.sock.makefile("rwb", 0) if hasattr(self.sock, "makefile") else self.sock
        self.pins = {}  # pin id -> level, updated by the reader
        self.pin_handlers = {}  # pin id -> callable(pin id)
        self.adc = {}  # adc id -> microvolts
        self.boot = {}  # boot facts the host sent first (reset cause, wake reason, mac)
        self._events = []  # (kind, ...) waiting for the main thread, in arrival order
        self._replies = {}
        self._next_id = 1
        # Only the reader thread and the main thread touch the event list; this lock is theirs.
        # The main thread never holds it while Python code that could run a scheduled
        # callback is executing, except in _drain, which _drain_scheduled steps around.
        self._queue_lock = _thread.allocate_lock()
        self._popping = False
        self._heap_wanted = False  # a heap sample asked for, printed by the task (_drain)
        self.closed = False
        # A datagram to ourselves wakes an asyncio loop that is blocked in poll().
        self._nudge_in = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        while True:
            port = 20000 + random.getrandbits(15)
            self._nudge_addr = socket.getaddrinfo("127.0.0.1", port)[0][-1]
            try:
                self._nudge_in.bind(self._nudge_addr)
                break
            except OSError:
                pass
        self._nudge_in.setblocking(False)
        self._nudge_poll = select.poll()
        self._nudge_poll.register(self._nudge_in, select.POLLIN)
        self._nudge_out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        first = json.loads(self._readline())
        self.boot = first.get("boot", {})
        for pin, level in self.boot.get("pins", ()):
            self.pins[pin] = level
        for pin, uv in self.boot.get("adc", ()):
            self.adc[pin] = uv
        _thread.start_new_thread(self._reader, ())
        asyncio.create_task(self._pump())

    # -- sending --------------------------------------------------------------------------

    def _send(self, message):
        # Main thread only; one write call, so a scheduled handler cannot cut into it.
        self.sock.write((json.dumps(message) + "\n").encode())

    def send(self, op, *args):
        self._send({"op": op, "args": list(args)})

    def call(self, op, *args):
        """A call the host answers. Raises OSError(errno) if the host says it failed."""
        ident = self._next_id  # main thread only
        self._next_id += 1
        self._send({"id": ident, "op": op, "args": list(args)})
        while True:
            self._drain()
            reply = self._replies.pop(ident, None)
            if reply is not None:
                break
            if self.closed:
                raise OSError(104)
            # Wait for the reader's nudge; the timeout only bounds a nudge that got lost.
            self._nudge_poll.poll(_WAIT_MS)
            self._swallow_nudges()
        if self._heap_wanted:  # a sample drained here, whose nudge to the task was swallowed here
            self._nudge()
        if "error" in reply:
            raise OSError(reply["error"][0])
        return reply.get("ok")

    # -- receiving (reader thread) --------------------------------------------------------

    def _readline(self):
        line = self.stream.readline()
        if not line:
            raise OSError(104)  # ECONNRESET: the host is gone
        return line

    def _reader(self):
        try:
            while True:
                message = json.loads(self._readline())
                if "re" in message:
                    self._replies[message["re"]] = message
                    self._kick()
                elif "train" in message:
                    self._play(message["train"], message["edges"])
                    if "id" in message:  # answered once the main thread has run its handlers
                        self._queue(("played", message["id"]))
                elif "pin" in message:
                    self._set_pin(message["pin"], message["level"])
                elif "adc" in message:
                    self.adc[message["adc"]] = message["uv"]
                elif "heap" in message:
                    self._queue(("heap",))
        except Exception as err:  # the host went away: calls fail from now on
            print("simlink: side channel closed:", repr(err))
            self.closed = True
            self._kick()

    def _play(self, pin, edges):
        # Edges with no time between them land at once, under one hold of the lock, as they do
        # on a chip: a reader thread descheduled mid-train (a loaded host) must not leave the
        # contact at an inner level for seconds, which the device would rightly take for a press.
        start = 0
        while start < len(edges):
            if edges[start][0] > 0:
                time.sleep_us(edges[start][0])
            end = start + 1
            while end < len(edges) and edges[end][0] <= 0:
                end += 1
            self._set_pin(pin, *[level for _, level in edges[start:end]])
            start = end

    def _set_pin(self, pin, *levels):
        changed = False
        with self._queue_lock:
            for level in levels:
                old = self.pins.get(pin, 0)
                self.pins[pin] = level
                if level != old and pin in self.pin_handlers:
                    self._events.append(("pin", pin, level))
                    changed = True
        if changed:
            self._kick()

    def _queue(self, event):
        with self._queue_lock:
            self._events.append(event)
        self._kick()

    def _kick(self):
        global _DRAIN_SCHEDULED
        if not _DRAIN_SCHEDULED:
            _DRAIN_SCHEDULED = True
            try:
                micropython.schedule(_drain_scheduled, self)
            except RuntimeError:
                _DRAIN_SCHEDULED = False  # queue full; the pump or the next call drains
        self._nudge()

    def _nudge(self):
        try:
            self._nudge_out.sendto(b"!", self._nudge_addr)
        except OSError:
            pass

    # -- dispatch (main thread) -----------------------------------------------------------

    def _drain(self):
        while True:
            self._popping = True
            with self._queue_lock:
                event = self._events.pop(0) if self._events else None
            self._popping = False
            if event is None:
                return
            if event[0] == "heap":
                # The rig's heap sample (tests/test_heap_budget.py), taken here rather than by
                # the firmware's test console so that the firmware runs as a bell in use does,
                # and printed by the task alone (_pump, woken by the nudge): a scheduled drain
                # runs between any two bytecodes, in the middle of a log line the firmware
                # writes piece by piece, and the sample would be glued into it. The task runs
                # only when the firmware awaits, between lines.
                self._heap_wanted = True
                self._nudge()
            elif event[0] == "played":
                self.send("played", event[1])
            else:
                _protected(self.pin_handlers.get(event[1]), event[1])

    def _swallow_nudges(self):
        try:
            while self._nudge_in.recv(64):
                pass
        except OSError:  # EAGAIN: none left
            pass

    async def _pump(self):
        # Wakes an asyncio loop blocked in poll(): a nudge makes the socket readable.
        reader = asyncio.StreamReader(self._nudge_in)
        while True:
            await reader.read(64)
            self._swallow_nudges()
            self._drain()
            if self._heap_wanted:
                self._heap_wanted = False
                gc.collect()
                micropython.qstr_info()
                micropython.mem_info()


def _protected(handler, *args):
    """Run an IRQ handler the way MicroPython does: an exception is printed, not raised."""
    if handler is None:
        return None
    try:
        return handler(*args)
    except Exception as err:
        print("Unhandled exception in IRQ callback handler")
        sys.print_exception(err)
        return None


def _drain_scheduled(link):
    global _DRAIN_SCHEDULED
    _DRAIN_SCHEDULED = False
    if not link._popping:  # else the main thread is inside _drain, which goes on by itself
        link._drain()


_link = None


def link():
    """The board's one side channel, opened on first use."""
    global _link
    if _link is None:
        address = os.getenv("JIKIMI_SIM")
        if not address:
            raise OSError(19)  # ENODEV: not running on the virtual board
        _link = Link(address)
    return _link
