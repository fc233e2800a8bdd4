"""VirtualBoard: the device half (boards/sim on the real `micropython` binary) and its host
half: flash folder, console pty, side channel, pins, outputs, power, watchdog and deep sleep.

    board = VirtualBoard(flash_dir)
    await board.start("main.py")        # boots: runs main.py from the flash folder
    board.console.path                  # a pty: pyserial, mpremote and `jikimi monitor` open it
    await board.press("button")         # inputs by pin-map name (boards/sim/board.py)
    board.pwm_history("buzzer")         # outputs recorded with their device timestamps
    await board.power_cut(); await board.start("main.py")   # same flash, new boot
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Sequence

from jikimi_host.toolchain.interpreter import find_micropython
from jikimi_host.device.boards import load_board
from jikimi_host.device.image import source_layout
from jikimi_host.errors import JikimiError, WaitTimeout
from jikimi_host.paths import BOARDS_DIR
from jikimi_host.sim.channel import Channel, ChannelClosed
from jikimi_host.sim.chip import RadioChip
from jikimi_host.sim.console import Console
from jikimi_host.wait import until

if TYPE_CHECKING:
    from jikimi_host.sim.radio import VirtualRadio

logger = logging.getLogger(__name__)
SIM_BOARD = "sim"
SIM_BOARD_DIR = BOARDS_DIR / SIM_BOARD
# machine.reset_cause() / wake_reason() values (ESP32)
PWRON_RESET, HARD_RESET, WDT_RESET, DEEPSLEEP_RESET, SOFT_RESET = 1, 2, 3, 4, 5
PIN_WAKE, TIMER_WAKE = 2, 4
CONNECT_TIMEOUT_S = 15.0
# How long press() waits for the device to have seen a press (before it times the hold) or a
# release (before it returns).
PLAYED_TIMEOUT_S = 10.0
FIRST_UNIQUE_ID = b"\x24\x6f\x28\x00\x00\x01"  # an Espressif OUI, board number 1


DEFAULT_HEAP_BYTES = 512 * 1024  # roomy: the tests of behaviour; the budget is tests/test_heap_budget.py
# time.ticks_us() wraps at the small-int range: 2**30 on a 32-bit build (about 18 minutes), 2**62
# on a 64-bit one; the Unix port counts it from the same CLOCK_MONOTONIC as time.monotonic().
TICKS_PERIOD_32BIT = 1 << 30


def unwrap_ticks_us(device_us: int, host_s: float) -> int:
    """A device's ticks_us() as time.monotonic() microseconds: as it is on a 64-bit build, and
    the latest value congruent with it modulo 2**30 (not after `host_s`) on a 32-bit one."""
    host_us = int(host_s * 1e6)
    if abs(host_us - device_us) < TICKS_PERIOD_32BIT // 2:
        return device_us
    return host_us - (host_us - device_us) % TICKS_PERIOD_32BIT


class BoardError(JikimiError):
    """The virtual board cannot do what was asked (exit 1 from `jikimi sim`)."""


@dataclass
class Output:
    """One change of an output pin or PWM channel, as the device reported it."""

    host_s: float  # time.monotonic() when the host received it
    device_us: int  # time.ticks_us() on the device when it was set
    pin: int
    freq: int | None  # None for a plain pin
    value: int  # pin level, or PWM duty_u16


# micropython.qstr_info()'s line (py/qstr.c: the interned names outside ROM) and mem_info()'s
# lines about the GC heap (py/gc.c, gc_dump_info; "max free sz" is the largest free run, in GC
# blocks), as simlink prints them.
_HEAP_INFO = (r"^qstr pool: n_pool=(\d+), n_qstr=(\d+), n_str_data_bytes=\d+, n_total_bytes=(\d+)\n"
              r"(?:.*\n)*?"
              r"GC: total: (\d+), used: (\d+), free: (\d+).*\n"
              r" No\. of 1-blocks: \d+, 2-blocks: \d+, max blk sz: \d+, max free sz: (\d+)")


@dataclass(frozen=True)
class Heap:
    total: int
    alloc: int  # live, after gc.collect()
    free: int
    largest_free: int  # bytes: how cut up the free part is
    qstrs: int  # names interned in RAM (a .mpy file's are, a frozen module's are in ROM)
    qstr_pools: int  # each twice the last, from 20 entries (py/qstr.c)
    qstr_bytes: int  # the pools and the names' text


@dataclass
class Boot:
    number: int
    reset_cause: int
    wake_reason: int
    process: subprocess.Popen
    started_s: float
    channel: Channel | None = None
    connected: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())


@functools.lru_cache(maxsize=None)
def check_bluetooth(binary: Path) -> None:
    """A board on a radio needs MicroPython's own `bluetooth` module (NimBLE) in `binary`."""
    done = subprocess.run([str(binary), "-c", "import bluetooth; print(hasattr(bluetooth, 'BLE'))"],
                          capture_output=True, text=True, cwd="/", env={"MICROPYPATH": ".frozen"}, timeout=30)
    if done.stdout.strip() != "True":
        raise BoardError(f"{binary} has no bluetooth module, so a virtual board on a radio cannot run "
                         "on it: use the interpreter `make micropython` builds (NimBLE), or unset "
                         "JIKIMI_MICROPYTHON")


@functools.lru_cache(maxsize=None)
def gc_block_bytes(binary: Path) -> int:
    """MICROPY_BYTES_PER_GC_BLOCK of `binary`: 4 words, 16 B on a 32-bit build, 32 B on 64-bit."""
    done = subprocess.run([str(binary), "-c", "import sys; print(sys.maxsize < (1 << 32))"],
                          capture_output=True, text=True, cwd="/", env={"MICROPYPATH": ".frozen"}, timeout=30)
    return 16 if done.stdout.strip() == "True" else 32


class VirtualBoard:
    """A virtual ESP32 board. Everything is asyncio; stop() it in a finally."""

    def __init__(
        self,
        flash_dir: Path | None = None,
        unique_id: bytes | None = None,
        radio: "VirtualRadio | None" = None,
        binary: Path | None = None,
        heap_bytes: int = DEFAULT_HEAP_BYTES,
    ) -> None:
        """`unique_id`: the chip's MAC (machine.unique_id, and the BLE addresses derived from
        it); by default the next free one on `radio`, so that boards on one radio differ.
        `binary`: the interpreter (default find_micropython()); `heap_bytes`: its GC heap, fixed
        for the boot as on a chip that never grows its heap (`-X heapsize`)."""
        self.binary = binary
        self.heap_bytes = heap_bytes
        self._own_flash = flash_dir is None
        self.flash = Path(tempfile.mkdtemp(prefix="jikimi-flash-")) if flash_dir is None else Path(flash_dir)
        self.flash.mkdir(parents=True, exist_ok=True)
        self.unique_id = unique_id or (radio.next_unique_id() if radio is not None else FIRST_UNIQUE_ID)
        self.pin_map = load_board(SIM_BOARD).pins
        self.levels: dict[int, int] = {}  # input pin levels: they survive reboots, like the wiring
        self.adc_uv: dict[int, int] = {}
        self.outputs: list[Output] = []
        self.boots: list[Boot] = []
        self.handlers: dict[str, Callable[..., Any]] = {
            "pin_mode": self._on_pin_mode,
            "pin_out": self._on_pin_out,
            "pin_wake": self._on_pin_wake,
            "pwm": self._on_pwm,
            "wdt_start": self._on_wdt_start,
            "wdt_feed": self._on_wdt_feed,
            "reset": self._on_reset,
            "deepsleep": self._on_deepsleep,
            "rtc_memory": self._on_rtc_memory,
            "ping": lambda *args: list(args),  # a side-channel round trip, for diagnostics
            "played": self._on_played,
        }
        self._trains_sent = 0  # bounce trains sent, numbered from 1
        self._trains_played = 0  # the last train whose IRQ handlers the device has run
        self.console: Console | None = None
        self._server: asyncio.base_events.Server | None = None
        self._port = 0
        self._wake_pins: dict[int, tuple[int, ...]] = {}  # pin -> levels that wake from deep sleep
        self.rtc_memory = b""  # machine.RTC().memory(): survives deep sleep and resets, not a power cut
        self._level_wake: set[int] = set()  # ... of which these wake on a level, not an edge
        self._watchdog: asyncio.Task | None = None
        self._wdt_timeout_ms = 0
        self._wdt_fed_s = 0.0
        self._script: str | None = None
        self._extra_args: Sequence[str] = ()
        self._sleeping: asyncio.Future | None = None
        self._power_task: asyncio.Task | None = None  # a reset/wake-up the device triggered
        self._power_lock = asyncio.Lock()
        for name in ("button", "reed", "pull_pin", "tamper"):  # idle inputs: not active
            pin, active, _ = self.pin_map[name]
            self.levels[pin] = 1 - active
        self.battery_divider = load_board(SIM_BOARD).battery_divider
        self.set_battery_mv(4000)
        self.ble: RadioChip | None = None
        if radio is not None:
            check_bluetooth(find_micropython())
            self.ble = RadioChip(radio, self.unique_id)

    # -- files ----------------------------------------------------------------------------

    def deploy(self, files: dict[str, Path | bytes | str]) -> None:
        """Write files onto the flash: {"main.py": Path(...) or source text}."""
        for name, content in files.items():
            target = self.flash / name
            target.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, Path):
                shutil.copyfile(content, target)
            else:
                target.write_bytes(content.encode() if isinstance(content, str) else content)

    def deploy_sim_board(self) -> None:
        """The virtual board's own modules (machine, esp32, simlink, board) where the image puts a
        board's modules: the flash root."""
        self.deploy({path: source for path, source in source_layout(SIM_BOARD).items()
                     if source.parent == SIM_BOARD_DIR})

    # -- power ----------------------------------------------------------------------------

    async def start(self, script: str | None = "main.py", args: Sequence[str] = (),
                    reset_cause: int = PWRON_RESET, wake_reason: int = 0) -> Boot:
        """Boot: run `script` from the flash folder (None: just the REPL), console on the pty."""
        async with self._power_lock:
            return await self._start(script, args, reset_cause, wake_reason)

    async def _start(self, script: str | None, args: Sequence[str], reset_cause: int,
                     wake_reason: int) -> Boot:
        if self.running:
            raise BoardError("the board is already running; power_cut() or reset() first")
        if self._server is None:
            self._server = await asyncio.start_server(self._on_connect, "127.0.0.1", 0)
            self._port = self._server.sockets[0].getsockname()[1]
            self.console = Console(self.flash.parent / f"{self.flash.name}.console.log")
        self._script, self._extra_args = script, args
        self._wake_pins.clear()
        self._level_wake.clear()
        self._cancel_watchdog()
        slave = self.console.device_terminal()
        env = dict(os.environ)
        env["MICROPYPATH"] = os.pathsep.join([".", "lib", ".frozen"])
        env["JIKIMI_SIM"] = f"127.0.0.1:{self._port}"
        # setsid -c: a session of its own with the pty as controlling terminal, so that Ctrl-C
        # on the console (mpremote) interrupts the script, as on a board.
        binary = self.binary or find_micropython()
        command = ["setsid", "-c", str(binary), "-X", f"heapsize={self.heap_bytes}", "-i"]
        if script is not None:
            if not (self.flash / script).exists():
                raise BoardError(f"no {script} on the flash ({self.flash})")
            command.append(script)
        command += list(args)
        if self.ble is not None:
            env["MICROPYBTUART"] = self.ble.power_on()  # a new boot: its radio chip powers up
        try:
            process = subprocess.Popen(
                command, cwd=self.flash, env=env, stdin=slave, stdout=slave, stderr=slave, close_fds=True,
            )
        except OSError:
            if self.ble is not None:
                self.ble.power_off()  # no boot to take it off the air later
            raise
        finally:
            os.close(slave)
        boot = Boot(len(self.boots) + 1, reset_cause, wake_reason, process, time.monotonic())
        self.boots.append(boot)
        return boot

    @property
    def boot(self) -> Boot:
        if not self.boots:
            raise BoardError("the board has not been started")
        return self.boots[-1]

    @property
    def asleep(self) -> bool:
        """In deep sleep, waiting for its timer or a wake pin."""
        return self._sleeping is not None and not self._sleeping.done()

    @property
    def running(self) -> bool:
        return bool(self.boots) and self.boots[-1].process.poll() is None

    async def connected(self, timeout_s: float = CONNECT_TIMEOUT_S) -> Channel:
        """Wait until the running boot has opened its side channel."""
        boot = self.boot
        done, _ = await asyncio.wait({boot.connected}, timeout=timeout_s)
        if not done:
            raise BoardError(
                f"the device did not open its side channel within {timeout_s} s; "
                f"console:\n{self.console.tail() if self.console else ''}"
            )
        return boot.connected.result()

    async def power_cut(self) -> None:
        """Cut the power: the process dies at once; flash keeps what was written."""
        task = self._power_task
        if task is not None and task is not asyncio.current_task():
            task.cancel()  # a reset or wake-up the device had asked for is overtaken
        self._power_task = None
        self.rtc_memory = b""  # RTC memory goes with the power (a reset or deep sleep keeps it)
        async with self._power_lock:
            await self._power_cut()

    async def _power_cut(self) -> None:
        self._cancel_watchdog()
        if not self.boots:
            return
        boot = self.boots[-1]
        if boot.process.poll() is None:
            try:
                os.killpg(boot.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                boot.process.kill()  # so early that setsid has not made its group yet
        await asyncio.get_running_loop().run_in_executor(None, boot.process.wait)
        if boot.channel is not None:
            boot.channel.writer.close()
            await boot.channel.closed
        if self.ble is not None:
            self.ble.power_off()  # off the air with the board: its peers see the links drop

    async def reset(self, cause: int = HARD_RESET) -> Boot:
        """Press the reset button: power cut and boot the same script again."""
        await self.power_cut()
        return await self.start(self._script, self._extra_args, reset_cause=cause)

    async def _reset(self, cause: int) -> None:
        await self._power_cut()
        await self._start(self._script, self._extra_args, cause, 0)

    async def stop(self) -> None:
        """End everything this board started (call it in a finally)."""
        await self.power_cut()  # the radio chip goes off with the board
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        if self.console is not None:
            self.console.close()
        if self._own_flash:
            shutil.rmtree(self.flash, ignore_errors=True)

    # -- side channel ---------------------------------------------------------------------

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        boot = self.boots[-1] if self.boots else None
        if boot is None or boot.channel is not None or boot.process.poll() is not None:
            writer.close()
            return
        channel = Channel(reader, writer, self.handlers)
        boot.channel = channel
        channel.send({"boot": {
            "reset_cause": boot.reset_cause,
            "wake_reason": boot.wake_reason,
            "unique_id": self.unique_id.hex(),
            # pairs, not objects: MicroPython's json interns every key, and a chip has no such names
            "pins": [[pin, level] for pin, level in self.levels.items()],
            "adc": [[pin, uv] for pin, uv in self.adc_uv.items()],
            "rtc_memory": self.rtc_memory.hex(),
        }})
        boot.connected.set_result(channel)
        await channel.serve()

    def _channel(self) -> Channel | None:
        if not self.boots:
            return None
        boot = self.boots[-1]
        return boot.channel if boot.channel is not None and not boot.channel.closed.done() else None

    def _send(self, message: dict) -> None:
        channel = self._channel()
        if channel is not None:
            try:
                channel.send(message)
            except ChannelClosed:
                pass

    # -- inputs ---------------------------------------------------------------------------

    def pin(self, name_or_number: str | int) -> int:
        if isinstance(name_or_number, int):
            return name_or_number
        if name_or_number not in self.pin_map:
            raise BoardError(f"no pin named {name_or_number!r}; the pin map has {sorted(self.pin_map)}")
        return self.pin_map[name_or_number][0]

    def active_level(self, name: str) -> int:
        return self.pin_map[name][1]

    def set_pin(self, pin: str | int, level: int) -> None:
        """Drive an input pin to `level` now (an edge if it changes)."""
        number = self.pin(pin)
        self.levels[number] = 1 if level else 0
        self._send({"pin": number, "level": self.levels[number]})
        self._maybe_wake(number)

    def bounce(self, pin: str | int, level: int, gaps_us: Sequence[int] = ()) -> int | None:
        """An edge to `level`, then a toggle after each gap: contact bounce, played by the
        device side so that its timing does not depend on this process. An even number of
        gaps ends at `level`. Returns the train's number if a running device got it."""
        if len(gaps_us) % 2:
            raise ValueError("bounce needs an even number of gaps to end at the level asked for")
        number = self.pin(pin)
        edges, current = [[0, 1 if level else 0]], 1 if level else 0
        for gap in gaps_us:
            current = 1 - current
            edges.append([int(gap), current])
        self.levels[number] = 1 if level else 0
        self._trains_sent += 1
        sent = self._channel() is not None
        self._send({"train": number, "edges": edges, "id": self._trains_sent})
        self._maybe_wake(number)
        return self._trains_sent if sent else None

    def _on_played(self, train: int) -> None:
        self._trains_played = max(self._trains_played, train)

    async def _until_seen(self, train: int | None) -> None:
        """Until the device has run its pin IRQ handlers for `train` (simlink answers "played"
        after them, in order): a hold, and a pause after it, is timed from when the firmware saw
        the edge, as a finger's is from the contact closing, not from when this process sent it
        (on a loaded host the device can run the handler a second or more later, and a 2 s hold
        would look short).
        A device that does not get to it in PLAYED_TIMEOUT_S (hung, rebooting) is not waited for
        longer."""
        if train is None:
            return
        with contextlib.suppress(WaitTimeout):
            await until(lambda: self._trains_played >= train or self._channel() is None,
                        timeout_s=PLAYED_TIMEOUT_S, what="the device running its pin handlers")

    async def press(self, name: str = "button", hold_s: float | None = None,
                    bounce_us: Sequence[int] = ()) -> None:
        """Make an input active (press the button, open the door, pull the ring), optionally
        with contact bounce; with `hold_s`, release it again after that long (counted from when
        the device saw the press), and return once the device has seen the release: a pause
        slept after this is a pause to the device too, not swallowed by a late release."""
        train = self.bounce(name, self.active_level(name), bounce_us)
        if hold_s is not None:
            await self._until_seen(train)
            await asyncio.sleep(hold_s)
            await self._until_seen(self.release(name, bounce_us))

    def release(self, name: str = "button", bounce_us: Sequence[int] = ()) -> int | None:
        """Make an input idle again; returns the train's number as bounce() does."""
        return self.bounce(name, 1 - self.active_level(name), bounce_us)

    def set_battery_mv(self, mv: int) -> None:
        pin = self.pin("battery")
        self.adc_uv[pin] = int(mv * 1000 // self.battery_divider)
        self._send({"adc": pin, "uv": self.adc_uv[pin]})

    async def heap(self, timeout_s: float = 30.0) -> Heap:
        """The device's GC heap after a collection, as micropython.qstr_info() and mem_info()
        print it on the console when the side channel asks (boards/sim/simlink.py): nothing of the firmware's
        own is loaded for it. BoardError without a side channel; WaitTimeout from the console."""
        if self._channel() is None or self.console is None:
            raise BoardError("no running board to read the heap of")
        start = len(self.console.text())
        self._send({"heap": 1})
        found = await self.console.expect(_HEAP_INFO, timeout_s, start=start)
        pools, qstrs, qstr_bytes, total, used, free, max_free_blocks = map(int, found.groups())
        block = gc_block_bytes(self.binary or find_micropython())
        return Heap(total, used, free, max_free_blocks * block, qstrs, pools, qstr_bytes)

    # -- outputs --------------------------------------------------------------------------

    def _on_pin_mode(self, pin: int, mode: int, pull: int) -> None:
        pass

    def _on_pin_out(self, pin: int, level: int, device_us: int) -> None:
        now = time.monotonic()
        self.outputs.append(Output(now, unwrap_ticks_us(device_us, now), pin, None, level))

    def _on_pwm(self, pin: int, freq: int, duty: int, device_us: int) -> None:
        now = time.monotonic()
        self.outputs.append(Output(now, unwrap_ticks_us(device_us, now), pin, freq, duty))

    def last_pwm(self, name: str | int = "buzzer") -> Output | None:
        """The PWM channel's last setting (None: never set), found from the end: the history of
        a sounding siren grows by many entries a second."""
        number = self.pin(name)
        for output in reversed(self.outputs):
            if output.pin == number and output.freq is not None:
                return output
        return None

    def pwm_history(self, name: str | int = "buzzer") -> list[Output]:
        number = self.pin(name)
        return [o for o in self.outputs if o.pin == number and o.freq is not None]

    def level(self, name: str | int) -> int | None:
        """The last level the device set on an output pin (None: never set)."""
        number = self.pin(name)
        for output in reversed(self.outputs):
            if output.pin == number and output.freq is None:
                return output.value
        return None

    # -- watchdog, reset, deep sleep ------------------------------------------------------

    def _on_wdt_start(self, timeout_ms: int) -> None:
        self._wdt_timeout_ms = int(timeout_ms)
        self._wdt_fed_s = time.monotonic()
        if self._watchdog is None:
            self._watchdog = asyncio.create_task(self._watch())

    def _on_wdt_feed(self) -> None:
        self._wdt_fed_s = time.monotonic()

    def _cancel_watchdog(self) -> None:
        if self._watchdog is not None and self._watchdog is not asyncio.current_task():
            self._watchdog.cancel()
        self._watchdog = None
        self._wdt_timeout_ms = 0

    async def _watch(self) -> None:
        while True:
            left = self._wdt_fed_s + self._wdt_timeout_ms / 1000 - time.monotonic()
            if left <= 0:
                self._watchdog = None
                self._device_power(lambda: self._reset(WDT_RESET))
                return
            await asyncio.sleep(left)

    def _device_power(self, action: Callable[[], Awaitable[Any]]) -> None:
        """Run a reset or sleep the device asked for, after its call has been answered."""
        boot = self.boots[-1]

        async def later() -> None:
            await asyncio.sleep(0)
            try:
                async with self._power_lock:
                    if self.boots[-1] is boot and self.running:  # not overtaken by a power cut
                        await action()
            except Exception:  # kept here: an unretrieved task error would only surface at GC
                logger.exception("virtual board: the reset or sleep the device asked for failed")

        self._power_task = asyncio.ensure_future(later())

    def _on_reset(self) -> None:
        self._device_power(lambda: self._reset(SOFT_RESET))

    def _on_pin_wake(self, pin: int, wake: int, trigger: int = 3) -> None:
        # Level triggers (ESP32 Pin.WAKE_LOW 4 / WAKE_HIGH 5) wake at that level; edge triggers
        # (IRQ_RISING 1 / IRQ_FALLING 2) on the matching edge.
        self._wake_pins[pin] = {4: (0,), 5: (1,), 1: (1,), 2: (0,)}.get(trigger, (0, 1))
        if trigger in (4, 5):
            self._level_wake.add(pin)

    def _on_rtc_memory(self, data_hex: str) -> None:
        self.rtc_memory = bytes.fromhex(data_hex)

    def _on_deepsleep(self, time_ms: int) -> None:
        self._device_power(lambda: self._deep_sleep(int(time_ms or 0)))

    async def _deep_sleep(self, time_ms: int) -> None:
        script, args = self._script, self._extra_args
        await self._power_cut()
        self._sleeping = asyncio.get_running_loop().create_future()
        for pin in self._level_wake:  # a level wake-up already at its level wakes at once
            self._maybe_wake(pin)
        waits = [self._sleeping]
        if time_ms:
            waits.append(asyncio.ensure_future(asyncio.sleep(time_ms / 1000)))
        done, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for other in pending:
            other.cancel()
        reason = PIN_WAKE if self._sleeping in done else TIMER_WAKE
        await self._start(script, args, DEEPSLEEP_RESET, reason)

    def _maybe_wake(self, pin: int) -> None:
        sleeping = self._sleeping
        if sleeping is not None and not sleeping.done() and self.levels[pin] in self._wake_pins.get(pin, ()):
            sleeping.set_result(pin)
