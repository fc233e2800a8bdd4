"""The device shell: the core wired to the board with asyncio tasks (ARCHITECTURE.md).

    inputs   pin IRQ -> (name, level) queue -> Device.input
    ticker   Device.poll at its deadlines, siren/LED output, BLE pump
    battery  a reading every BATTERY_MS
    watchdog machine.WDT fed while the ticker runs (a stalled loop resets the board)

Each task runs under a supervisor: an exception is logged and the task restarted, so the alarm
path stays alive. Structured log: one line per event on the console, `J {json}`.
"""

import json
import time

try:
    import asyncio
except ImportError:  # pragma: no cover
    import uasyncio as asyncio

from jikimi import VERSION
from jikimi import config as cfg
from jikimi.bonds import BondStore
from jikimi.device import Device
from jikimi.hw import Hardware
from jikimi.journal import Journal

CONFIG_PATH = "config.json"
JOURNAL_PATH = "journal.bin"
BONDS_PATH = "bonds.json"
BATTERY_MS = 60000
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
        log("boot", reset_cause=self.hw.reset_cause(), journal=self.journal.recovered,
            epoch=self.journal.epoch, next_seq=self.journal.next_seq)
        now = time.ticks_ms()
        levels = {}
        for name in self.hw.inputs:
            levels[INPUT_NAMES[name]] = self.hw.level(name)
        self.device = Device(self.config, self.journal, now, levels, VERSION,
                             trace=lambda line: log("core", line))
        self._edges = []
        self._flag = asyncio.ThreadSafeFlag()
        for name in self.hw.inputs:
            self.hw.watch(name, self._on_edge)
        self.link = None
        if config_ok:
            from jikimi.link import Link

            bonds = BondStore(BONDS_PATH, self.config["ble"]["max_bonds"])
            if bonds.error:
                log("bonds_error", bonds.error)
            self.link = Link(self.device, self.journal, bonds, int(self.config["passkey"]), log)
        self._fed = time.ticks_ms()

    def _on_edge(self, name, level):
        # IRQ context: record and wake the inputs task, nothing more.
        self._edges.append((INPUT_NAMES[name], level, time.ticks_ms()))
        self._flag.set()

    async def inputs(self):
        while True:
            await self._flag.wait()
            while self._edges:
                name, level, at = self._edges.pop(0)
                self.device.input(name, level, at)

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
                wait = max(0, min(wait, time.ticks_diff(due, time.ticks_ms())))
            await asyncio.sleep_ms(wait)

    async def battery(self):
        while True:
            self.device.battery_reading(self.hw.battery_mv(), time.ticks_ms())
            await asyncio.sleep_ms(BATTERY_MS)

    async def watchdog(self):
        wdt = self.hw.watchdog(WATCHDOG_MS)
        while True:
            # Fed only while the ticker keeps running: a stalled loop resets the board.
            if time.ticks_diff(time.ticks_ms(), self._fed) < WATCHDOG_MS // 2:
                wdt.feed()
            await asyncio.sleep_ms(1000)

    async def supervise(self, name, make):
        while True:
            try:
                await make()
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
        ]
        await asyncio.gather(*tasks)


def run(board):
    asyncio.run(App(board).main())
