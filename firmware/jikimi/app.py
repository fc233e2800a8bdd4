"""The device shell: the core wired to the board with asyncio tasks (ARCHITECTURE.md).

    inputs   pin IRQ -> (name, level, tick) ring -> Device.input
    ticker   Device.poll at its deadlines, siren/LED output, BLE pump; a battery reading every
             battery.interval_s; deep sleep once the device has been quiet for
             power.idle_sleep_s (POWER.md)
    watchdog machine.WDT fed while the ticker runs (a stalled loop or a hung ticker resets the
             board)
    console  the rig's test console on stdin, only with "test_console": true in the config

The battery reading and the sleep check ride on the ticker, which runs at least once a second,
rather than in tasks of their own: each task costs about 200 B of the heap once running (192 to
256 B, measured at boot on the 32-bit .mpy rig; an ESP32 starts with 56 KiB), and a hung reading
is then a hung ticker, which the watchdog catches.

Each task runs under a supervisor: an exception is logged and the task restarted, so the alarm
path stays alive. Structured log: one line per event on the console, `J {json}`.

IRQ handlers only record and wake a task. Pin edges go into a fixed ring (ring.py) of
EDGES_CAPACITY: a chattering contact cannot grow the heap. When it is full the newest edges are
dropped and counted (STATUS `dropped`, an `inputs_dropped` line); the inputs task then reads
each input that lost edges again and resynchronises its debouncer to that level (queued edges
older than the reading are skipped). The unseen stretch counts as bounce, so lost edges can
delay a press, never invent one or hide one that lasts: no false alarm, no missed hold.
"""

import gc
import json
import sys
import time

try:
    import micropython
    from micropython import const
except ImportError:  # CPython (the app itself needs a board: hw.py imports machine)
    micropython = None

    def const(value):
        return value


try:
    import asyncio
except ImportError:  # pragma: no cover
    import uasyncio as asyncio

import jikimi
from jikimi import VERSION, ticks
from jikimi import protocol as p

CONFIG_PATH = "config.json"
JOURNAL_PATH = "journal.bin"
BONDS_PATH = "bonds.json"
SOUND_FRAME_MS = const(20)  # siren update period while a pattern plays
IDLE_FRAME_MS = const(1000)
WATCHDOG_MS = const(8000)
TICKER_MAY_IDLE_MS = const(WATCHDOG_MS // 2)  # the watchdog is fed only while the ticker ran this recently
QUIET_CHECK_MS = const(500)  # how often the ticker asks whether the device may sleep
# Pin edges between two turns of the inputs task: 32 holds three bouncy transitions (a switch
# bounces a handful of edges), and the task drains the ring at its next turn (at worst after a
# flash write, tens of ms), in which a hand makes at most one press or release.
EDGES_CAPACITY = const(32)

_boot = time.ticks_ms()


def log(kind, msg=None, *, at=None, **fields):
    """One structured log line ("J {json}"); `at`: the tick it happened at, if earlier (an IRQ's,
    printed later by the task)."""
    # Streamed piece by piece: no record dict and no line built in the heap, where a free run of
    # their size may be missing (a log line comes with every event and command, and a pairing's
    # when the heap is at its fullest).
    out = sys.stdout
    out.write('J {"t": ')
    json.dump(time.ticks_diff(time.ticks_ms() if at is None else at, _boot), out)
    out.write(', "k": ')
    json.dump(kind, out)
    if msg is not None:
        out.write(', "msg": ')
        json.dump(str(msg), out)
    for key in fields:
        out.write(", ")
        json.dump(key, out)
        out.write(": ")
        json.dump(fields[key], out)
    out.write("}\n")


def load_config(board):
    """The validated config; on errors, log each and run with defaults (the alarm still works,
    BLE stays off: there is no passkey to pair with)."""
    from jikimi import config as cfg

    try:
        return cfg.load(CONFIG_PATH, boards=[board.NAME]), True
    except cfg.ConfigError as err:
        for message in err.errors:
            log("config_error", message)
        config, _ = cfg.validate({"passkey": "000000", "board": board.NAME})
        return config, False


class App:
    def __init__(self, board, config, config_ok):
        # A collection between the boot's steps ("step done", here and in run()): MicroPython
        # places a block in the lowest free run, so once a step's garbage is freed the next
        # step's lasting objects fill its room, and the heap above stays whole for the larger
        # blocks later in boot (the radio's tables). As .mpy files the bell then booted in 70 KiB
        # instead of 78 (bench/bench_heap.py's smallest heap); today's smaller boot shows no
        # difference, but a heap cut up by more phones may (CORE.md). A few ms each, once.
        self.board = board
        self.config = config
        self.hw = Hardware(board)
        j = self.config["journal"]
        self.journal = Journal(JOURNAL_PATH, j["capacity"], j["max_bytes"])
        gc.collect()  # step done: the journal's recovery
        wake = self.hw.woke_by()
        log("boot", reset_cause=self.hw.reset_cause(), wake=wake, journal=self.journal.recovered,
            epoch=self.journal.epoch, next_seq=self.journal.next_seq)
        now = time.ticks_ms()
        levels = {}
        for name in self.hw.inputs:
            levels[INPUT_NAMES[name]] = self.hw.level(name)
        # The wall clock, kept in RTC memory over deep sleep and resets (a power cut clears it):
        # an alarm raised on waking carries the real time, and an alarm restored from the
        # journal knows its age (CORE.md, "After a reboot").
        clock_s = self.hw.kept_clock()
        if clock_s is not None:
            log("clock", "kept over the reset" if wake is None else "kept over deep sleep", clock_s=clock_s)
        self.device = Device(self.config, self.journal, now, levels, VERSION,
                             trace=lambda line: log("core", line), wake=wake, clock_s=clock_s)
        self.device.keep_clock = self.hw.keep_clock  # every SET_TIME goes to RTC memory too
        _forget(Hardware, "__init__", "woke_by", "reset_cause", "kept_clock")
        _forget(Journal, "__init__", "live_alarms", "_restate")
        _forget(Device, "__init__", "_restore", "_woken")
        # and the constructors and restores of the Device's parts (loaded by the Device already)
        from jikimi import alarm, battery, debounce, gestures, siren

        _forget(alarm.Alarm, "__init__", "restore")
        _forget(alarm.PanicAlarm, "__init__")
        _forget(battery.Battery, "__init__")
        _forget(debounce.Debouncer, "__init__")
        _forget(gestures.Gestures, "__init__")
        _forget(siren.Siren, "__init__")
        door = sys.modules.get("jikimi.door")  # a door alarm's only
        if door is not None:
            _forget(door.DoorAlarm, "__init__", "restore_alarm")
        gc.collect()  # step done
        self._active = now  # last input, command or event: the sleep check counts quiet from here
        self._edges = Ring(EDGES_CAPACITY)
        self._edges_seen = 0  # self._edges.dropped already accounted for
        self._lost = {}  # core input name -> an edge of it was dropped (set in the IRQ)
        self._resynced = {}  # core input name -> tick of its resync while older edges may be queued
        self._pin_of = {}  # core input name -> board input name, to read its level
        for name in INPUT_NAMES:
            self._lost[INPUT_NAMES[name]] = False
            self._resynced[INPUT_NAMES[name]] = None
        for name in self.hw.inputs:
            self._pin_of[INPUT_NAMES[name]] = name
        self._flag = asyncio.ThreadSafeFlag()  # set in IRQs (pin edges, BLE writes): wakes inputs()
        self._ticker_asleep = False  # the ticker awaits its sleep, which inputs() may cut short
        for name in self.hw.inputs:
            self.hw.watch(name, self._on_edge)
        _forget(Hardware, "watch")  # each pin's IRQ handler keeps its own code
        self.link = None
        if config_ok:
            from jikimi.link import Link

            gc.collect()  # step done: loading link.py
            bonds = BondStore(BONDS_PATH, self.config["ble"]["max_bonds"])
            if bonds.error:
                log("bonds_error", bonds.error)
            ble = self.config["ble"]
            self.link = Link(self.device, self.journal, bonds, int(self.config["passkey"]), log, now,
                             ble["heartbeat_s"] * 1000, wake=self._flag.set, lockout_ms=ble["pairing_lockout_ms"])
            _forget(BondStore, "__init__", "_load", "commit_own")
            _forget(Link, "__init__")
        _forget(Ring, "__init__")  # the App's ring and the Link's are built
        # The watchdog is fed only while the ticker ran in time, so a ticker that hangs while the
        # loop runs on resets the board, as a stalled loop does (the other tasks wait on events).
        now = time.ticks_ms()
        self._ticked = now
        self._battery_due = now  # a first reading at once
        self._battery_ms = self.config["battery"]["interval_s"] * 1000
        self._idle_sleep_ms = self.config["power"]["idle_sleep_s"] * 1000  # 0: never sleep
        self._quiet_checked = now
        self.tasks = {}  # task name -> its asyncio task (the test console stops one: "hang")
        # What only the boot reads goes, now that the core, the radio and the App hold their
        # values: main() reads roles and test_console; the core, ble's pairing window.
        for key in ("debounce", "gestures", "alarm", "door", "siren", "journal", "battery", "power",
                    "passkey", "name", "board"):
            self.config.pop(key, None)  # a key it lacks must not stop the boot

    def state_files(self):
        """What the device keeps on flash about its events and phones (not its config)."""
        return (JOURNAL_PATH, JOURNAL_PATH + ".tmp", BONDS_PATH, BONDS_PATH + ".tmp")

    def _on_edge(self, name, level, core_name=False):
        # IRQ context: record and wake the inputs task, nothing more (no allocation but the item).
        core = name if core_name else INPUT_NAMES[name]
        if not self._edges.push((core, level, time.ticks_ms())):
            self._lost[core] = True  # the inputs task reads this input again
        self._flag.set()

    async def inputs(self):
        # Edges go to the core; then the ticker runs at once (for a BLE write too: link.pump()),
        # its sleep cut short with a cancel, as asyncio's wait_for does. A wait_for in the
        # ticker would make a task and a coroutine at each of its turns: about 470 B of heap
        # live at any time (measured at boot on the 32-bit .mpy rig), and asyncio.funcs loaded.
        while True:
            await self._flag.wait()
            self._drain_edges()
            if self._ticker_asleep:
                self._ticker_asleep = False  # first: the ticker tells this cancel from others
                self.tasks["ticker"].cancel()

    def _drain_edges(self):
        edges = self._edges
        while True:
            if edges.dropped != self._edges_seen:
                self._resync()
            item = edges.pop()
            if item is None:
                break
            name, level, at = item
            since = self._resynced[name]
            if since is not None and ticks.diff(at, since) < 0:
                continue  # older than the level the resync read: already accounted for
            self.device.input(name, level, at)
            self._touch(at)
        for name in self._resynced:  # nothing older than a resync is queued any more
            self._resynced[name] = None

    def _resync(self):
        """Edges were dropped: read each input that lost one, and resynchronise the core to it."""
        seen = self._edges.dropped
        count = seen - self._edges_seen
        self._edges_seen = seen
        now = time.ticks_ms()
        names = []
        for name in self._lost:
            if self._lost[name]:
                self._lost[name] = False  # before the reading: a later drop is seen again
                pin = self._pin_of.get(name)
                if pin is not None:
                    self.device.resync_input(name, self.hw.level(pin), now)
                    self._resynced[name] = now
                    names.append(name)
        self.device.count_dropped(count)
        self._touch(now)
        log("inputs_dropped", edges=count, total=seen, resynced=names)

    def _touch(self, now):
        self._active = now
        if self.link is not None:
            self.link.touch(now)

    async def ticker(self):
        while True:
            self._drain_edges()  # queued edges first: a poll must not judge an input on old samples
            now = time.ticks_ms()
            self.device.poll(now)
            hz, duty, led = self.device.output(now)
            self.hw.sound(hz, duty)
            self.hw.led(led)
            if self.link is not None:
                self.link.pump(now)
            self._ticked = now
            if ticks.reached(now, self._battery_due):
                # The next one is due first: a reading that raises is tried again an interval
                # later, not at each of the ticker's restarts.
                self._battery_due = ticks.add(now, self._battery_ms)
                self.device.battery_reading(self.hw.battery_mv(), now)
            if self._idle_sleep_ms and ticks.diff(now, self._quiet_checked) >= QUIET_CHECK_MS:
                self._quiet_checked = now
                self._sleep_if_quiet(now)
            wait = SOUND_FRAME_MS if (duty or led) else IDLE_FRAME_MS
            due = self.device.deadline()
            if due is not None:
                wait = max(0, min(wait, ticks.diff(due, time.ticks_ms())))
            self._ticker_asleep = True
            try:
                await asyncio.sleep_ms(wait)
            except asyncio.CancelledError:
                if self._ticker_asleep:  # not woken by inputs(): cancelled (the test console's hang)
                    raise
            self._ticker_asleep = False

    def _sleep_if_quiet(self, now):
        link = self.link
        if not self.device.quiet() or (link is not None and link.writes_pending()):
            self._active = now
        elif link is not None and ticks.diff(link.active_at, self._active) > 0:
            self._active = link.active_at  # a phone connected or sent a command
        elif ticks.diff(now, self._active) >= self._idle_sleep_ms:
            self.sleep()

    async def watchdog(self):
        wdt = self.hw.watchdog(WATCHDOG_MS)
        told = False
        while True:
            idle_ms = time.ticks_diff(time.ticks_ms(), self._ticked)
            if idle_ms < TICKER_MAY_IDLE_MS:
                wdt.feed()
                told = False
            elif not told:  # said once: the watchdog resets the board within WATCHDOG_MS
                told = True
                log("task_hung", "ticker", idle_ms=idle_ms, reset_in_ms=WATCHDOG_MS)
            await asyncio.sleep_ms(1000)

    def sleep(self):
        """Deep sleep until a wake input or the heartbeat timer (never returns)."""
        heartbeat_ms = self.config["ble"]["heartbeat_s"] * 1000
        log("sleep", wake_after_ms=heartbeat_ms, inputs=list(self.board.WAKE_PINS))
        self.hw.sound(0, 0)
        self.hw.led(False)
        if self.link is not None:
            self.link.stop()
        if self.device.clock_set():
            self.hw.keep_clock(self.device.clock_at(time.ticks_ms()))
        self.hw.deep_sleep(heartbeat_ms)

    async def console(self):
        from jikimi.testconsole import TestConsole  # loaded already, by __init__

        test_console = TestConsole(self, log, tuple(INPUT_NAMES.values()))
        reader = asyncio.StreamReader(sys.stdin)
        log("test_console", "ready")
        while True:
            line = await reader.readline()
            if not line:
                return  # no console attached
            test_console.handle(line.decode().strip())

    def inject(self, name, level):
        """An input edge from the test console, queued as if the pin's IRQ had seen it, and from
        where pin IRQs run (the scheduler), so that the edge ring keeps one producer."""
        if micropython is None:
            self._on_edge(name, level, core_name=True)
            return
        try:
            micropython.schedule(self._injected, (name, level))
        except RuntimeError:
            raise ValueError("the scheduler's queue is full; try again")

    def _injected(self, edge):
        self._on_edge(edge[0], edge[1], core_name=True)

    async def supervise(self, name, make):
        while True:
            try:
                await make()
                return  # finished on purpose (sleep off, no console)
            except Exception as err:  # keep the alarm path alive
                log("task_error", name, error=repr(err))
                await asyncio.sleep_ms(100)

    async def main(self):
        log("ready", roles=self.config["roles"], ble=self.link is not None)
        makers = [("inputs", self.inputs), ("ticker", self.ticker), ("watchdog", self.watchdog)]
        if self.config["test_console"]:
            makers.append(("console", self.console))
        for name, make in makers:
            self.tasks[name] = asyncio.create_task(self.supervise(name, make))
        # The tasks run for good. One that ends (cancelled: the test console's "hang") leaves
        # the others running, as a hung task does; the watchdog judges what that means. Not an
        # asyncio.gather, which would load asyncio.funcs (about 450 B) for a wait that never ends.
        while True:
            await asyncio.sleep_ms(3600000)


def run(board):
    """The bell: its config read, its one App built, then run for good."""
    global load_config, _import_the_app, _forget
    # The config is read before the core is imported, and its validator (jikimi.config, about
    # 8 KB as .mpy) unloaded: `jikimi build` folds the core's defaults (config.py's const()s) into
    # the core's code, so a .mpy bell never holds the validator and the core at once. Boot is
    # where it needs the most heap (bench/bench_heap.py's smallest heap).
    gc.collect()
    config, config_ok = load_config(board)
    if config["test_console"]:
        # The rig's module, loaded before the firmware's own allocations rather than after
        # them: its heap is counted apart (rig/heap_budget.py) and should not cut up ours.
        from jikimi import testconsole  # noqa: F401
    jikimi.unload("config")
    _import_the_app()
    jikimi.unload("config")  # the frozen image's core imports it (nothing folds frozen modules)
    gc.collect()  # step done
    app = App(board, config, config_ok)
    _forget(App, "__init__")
    if not app.config["test_console"]:  # a bell in use: the rig's hooks go too
        _forget(App, "console", "inject", "_injected", "state_files")
    # The host's half of the codec: a bell neither compares, lists nor prints a Message, names
    # a type by its name, nor reads an error's text (it logs the code's name).
    _forget(p.Message, "fields", "__eq__", "__ne__", "__repr__")
    _forget(p.ProtocolError, "text", "__str__")
    del p.type_code
    del load_config, _import_the_app, _forget
    gc.collect()
    asyncio.run(app.main())


def _import_the_app():
    """The modules the App is built of, as this module's globals, once the config is read."""
    global CORE_INPUTS, Device, BondStore, BOARD_INPUTS, Hardware, Journal, Ring, INPUT_NAMES
    # A collection between the imports too, as between the boot's steps (App.__init__): the
    # garbage of loading a .mpy (the loader's buffers, the module dicts' old tables) is freed
    # before the next modules' lasting objects are placed, so they fill its holes instead of
    # cutting up the heap above. Without them a 60 KiB bell ran out in Journal.__init__ wanting
    # 307 B while 10 KB were free, none of it in a run over 304 B (bench/bench_heap.py).
    gc.collect()
    # The core's parts before the Device that joins them: a string constant of a .mpy that is a
    # name a module loaded earlier interned (gestures' multi_window_ms, a config key the Device
    # reads) loads as that name, where it would be one more heap string (about 260 B less).
    from jikimi import alarm, battery, debounce, gestures, journal, siren  # noqa: F401
    from jikimi.device import INPUTS as CORE_INPUTS
    from jikimi.device import Device

    gc.collect()
    from jikimi.bonds import BondStore
    from jikimi.hw import INPUTS as BOARD_INPUTS
    from jikimi.hw import Hardware
    from jikimi.journal import Journal
    from jikimi.ring import Ring

    # board input name (the pin map's: what the contact is) -> core input name (what it means)
    INPUT_NAMES = dict(zip(BOARD_INPUTS, CORE_INPUTS))


def _forget(cls, *names):
    """Drop methods the bell will not run again from `cls` (the boot's, once its one instance is
    built; the rig's hooks on a bell without the test console): as .mpy files their bytecode
    stays in the heap while the class holds them (CORE.md, "Heap").
    A device builds each of these once (run, App.__init__); CPython and the tests, which build
    many, never run App."""
    for name in names:
        setattr(cls, name, None)  # MicroPython keeps a deleted class attribute's value: clear it
        delattr(cls, name)
