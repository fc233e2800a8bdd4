"""The device shell: the core wired to the board with asyncio tasks (ARCHITECTURE.md).

    inputs   pin IRQ -> (name, level) queue -> Device.input
    ticker   Device.poll at its deadlines, siren/LED output, BLE pump
    battery  a reading every battery.interval_s
    watchdog machine.WDT fed while the ticker runs (a stalled loop resets the board)
    sleeper  deep sleep once the device has been quiet for power.idle_sleep_s (CORE.md, Power)
    console  the rig's test console on stdin, only with "test_console": true in the config

Each task runs under a supervisor: an exception is logged and the task restarted, so the alarm
path stays alive. Structured log: one line per event on the console, `J {json}`.
"""

import json
import time

try:
    import asyncio
except ImportError:  # pragma: no cover
    import uasyncio as asyncio

from jikimi import VERSION, ticks
from jikimi import config as cfg
from jikimi.bonds import BondStore
from jikimi.device import Device
from jikimi.hw import Hardware
from jikimi.journal import Journal

CONFIG_PATH = "config.json"
JOURNAL_PATH = "journal.bin"
BONDS_PATH = "bonds.json"
SOUND_FRAME_MS = 20  # siren update period while a pattern plays
IDLE_FRAME_MS = 1000
WATCHDOG_MS = 8000
# board input name -> core input name
INPUT_NAMES = {"button": "button", "reed": "door", "pull_pin": "pull_pin", "tamper": "tamper"}

_boot = time.ticks_ms()


def log(kind, *words, **fields):
    record = {"t": time.ticks_diff(time.ticks_ms(), _boot), "k": kind}
    if words:
        record["msg"] = " ".join(str(w) for w in words)
    for key in fields:
        record[key] = fields[key]
    print("J " + json.dumps(record))


def load_config(board):
    """The validated config; on errors, log each and run with defaults (the alarm still works,
    BLE stays off: there is no passkey to pair with)."""
    try:
        return cfg.load(CONFIG_PATH, boards=[board.NAME]), True
    except cfg.ConfigError as err:
        for message in err.errors:
            log("config_error", message)
        config, _ = cfg.validate({"passkey": "000000", "board": board.NAME})
        return config, False


class App:
    def __init__(self, board):
        self.board = board
        self.config, config_ok = load_config(board)
        self.hw = Hardware(board)
        j = self.config["journal"]
        self.journal = Journal(JOURNAL_PATH, j["capacity"], j["max_bytes"])
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
        self._active = now  # last input, command or event: the sleeper counts quiet from here
        self._edges = []
        self._flag = asyncio.ThreadSafeFlag()  # set in IRQs (pin edges, BLE writes): wakes inputs()
        self._kick = asyncio.Event()  # an input moved the core's deadlines: the ticker looks again
        for name in self.hw.inputs:
            self.hw.watch(name, self._on_edge)
        self.link = None
        if config_ok:
            from jikimi.link import Link

            bonds = BondStore(BONDS_PATH, self.config["ble"]["max_bonds"])
            if bonds.error:
                log("bonds_error", bonds.error)
            ble = self.config["ble"]
            self.link = Link(self.device, self.journal, bonds, int(self.config["passkey"]), log, now,
                             ble["heartbeat_s"] * 1000, wake=self._flag.set, lockout_ms=ble["pairing_lockout_ms"])
        self._fed = time.ticks_ms()

    def state_files(self):
        """What the device keeps on flash about its events and phones (not its config)."""
        return (JOURNAL_PATH, JOURNAL_PATH + ".tmp", BONDS_PATH, BONDS_PATH + ".tmp")

    def _on_edge(self, name, level, core_name=False):
        # IRQ context: record and wake the inputs task, nothing more.
        self._edges.append((name if core_name else INPUT_NAMES[name], level, time.ticks_ms()))
        self._flag.set()

    async def inputs(self):
        # Edges go to the core; then the ticker runs at once (for a BLE write too: link.pump()).
        while True:
            await self._flag.wait()
            while self._edges:
                name, level, at = self._edges.pop(0)
                self.device.input(name, level, at)
                self._touch(at)
            self._kick.set()

    def _touch(self, now):
        self._active = now
        if self.link is not None:
            self.link.touch(now)

    async def ticker(self):
        while True:
            now = time.ticks_ms()
            self.device.poll(now)
            hz, duty, led = self.device.output(now)
            self.hw.sound(hz, duty)
            self.hw.led(led)
            if self.link is not None:
                self.link.pump(now)
            self._fed = now
            wait = SOUND_FRAME_MS if (duty or led) else IDLE_FRAME_MS
            due = self.device.deadline()
            if due is not None:
                wait = max(0, min(wait, ticks.diff(due, time.ticks_ms())))
            self._kick.clear()
            try:
                await asyncio.wait_for_ms(self._kick.wait(), wait)
            except asyncio.TimeoutError:
                pass

    async def battery(self):
        while True:
            self.device.battery_reading(self.hw.battery_mv(), time.ticks_ms())
            await asyncio.sleep_ms(self.config["battery"]["interval_s"] * 1000)

    async def watchdog(self):
        wdt = self.hw.watchdog(WATCHDOG_MS)
        while True:
            # Fed only while the ticker keeps running: a stalled loop resets the board.
            if time.ticks_diff(time.ticks_ms(), self._fed) < WATCHDOG_MS // 2:
                wdt.feed()
            await asyncio.sleep_ms(1000)

    async def sleeper(self):
        idle_ms = self.config["power"]["idle_sleep_s"] * 1000
        if not idle_ms:
            return
        while True:
            await asyncio.sleep_ms(500)
            now = time.ticks_ms()
            link = self.link
            if not self.device.quiet() or (link is not None and link.writes_pending()):
                self._active = now
            elif link is not None and time.ticks_diff(link.active_at, self._active) > 0:
                self._active = link.active_at  # a phone connected or sent a command
            elif time.ticks_diff(now, self._active) >= idle_ms:
                self.sleep()

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
        import sys

        from jikimi.testconsole import TestConsole

        test_console = TestConsole(self, log)
        reader = asyncio.StreamReader(sys.stdin)
        log("test_console", "ready")
        while True:
            line = await reader.readline()
            if not line:
                return  # no console attached
            test_console.handle(line.decode().strip())

    def inject(self, name, level):
        """An input edge from the test console, queued as if the pin's IRQ had seen it."""
        self._on_edge(name, level, core_name=True)

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
        tasks = [
            asyncio.create_task(self.supervise("inputs", self.inputs)),
            asyncio.create_task(self.supervise("ticker", self.ticker)),
            asyncio.create_task(self.supervise("battery", self.battery)),
            asyncio.create_task(self.supervise("watchdog", self.watchdog)),
            asyncio.create_task(self.supervise("sleeper", self.sleeper)),
        ]
        if self.config["test_console"]:
            tasks.append(asyncio.create_task(self.supervise("console", self.console)))
        await asyncio.gather(*tasks)


def run(board):
    asyncio.run(App(board).main())
