"""`machine` for the virtual board: the subset of MicroPython's ESP32 `machine` module the
firmware uses, backed by the side channel (simlink). Differences from ESP32 are listed in
boards/sim/README.md.
"""

import time

from simlink import link

# machine.reset_cause() values, as on ESP32
PWRON_RESET = 1
HARD_RESET = 2
WDT_RESET = 3
DEEPSLEEP_RESET = 4
SOFT_RESET = 5
# machine.wake_reason() values, as on ESP32
PIN_WAKE = 2
EXT0_WAKE = 2
EXT1_WAKE = 3
TIMER_WAKE = 4

IDLE = 0
SLEEP = 2
DEEPSLEEP = 4


class Pin:
    IN = 1
    OUT = 3
    OPEN_DRAIN = 7
    PULL_UP = 1
    PULL_DOWN = 2
    IRQ_RISING = 1
    IRQ_FALLING = 2
    WAKE_LOW = 4
    WAKE_HIGH = 5

    def __init__(self, id, mode=-1, pull=-1, value=None):
        self.id = id
        self._link = link()
        self._mode = mode
        self._handler = None
        self._trigger = 0
        self.init(mode, pull, value)

    def init(self, mode=-1, pull=-1, value=None):
        if mode != -1:
            self._mode = mode
        self._link.send("pin_mode", self.id, self._mode, pull)
        if value is not None:
            self.value(value)

    def value(self, level=None):
        if level is None:
            return self._link.pins.get(self.id, 0)
        level = 1 if level else 0
        self._link.pins[self.id] = level
        self._link.send("pin_out", self.id, level, time.ticks_us())

    def __call__(self, level=None):
        return self.value(level)

    def on(self):
        self.value(1)

    def off(self):
        self.value(0)

    def irq(self, handler=None, trigger=IRQ_FALLING | IRQ_RISING, wake=None):
        if wake is not None:
            self._link.send("pin_wake", self.id, wake, trigger)
        if trigger in (self.WAKE_LOW, self.WAKE_HIGH):
            return  # a wake-up source only, as on ESP32
        self._handler = handler
        self._trigger = trigger
        if handler is None:
            self._link.pin_handlers.pop(self.id, None)
        else:
            self._link.pin_handlers[self.id] = self._fire

    def _fire(self, pin_id):
        level = self._link.pins.get(pin_id, 0)
        wanted = self.IRQ_RISING if level else self.IRQ_FALLING
        if self._handler is not None and self._trigger & wanted:
            self._handler(self)

    def __repr__(self):
        return "Pin(%d)" % self.id


class PWM:
    def __init__(self, pin, freq=0, duty_u16=0):
        self.pin = pin
        self._freq = freq
        self._duty = duty_u16
        self._update()

    def _update(self):
        self.pin._link.send("pwm", self.pin.id, self._freq, self._duty, time.ticks_us())

    def freq(self, value=None):
        if value is None:
            return self._freq
        self._freq = value
        self._update()

    def duty_u16(self, value=None):
        if value is None:
            return self._duty
        self._duty = value
        self._update()

    def deinit(self):
        self._freq = 0
        self._duty = 0
        self._update()


class ADC:
    ATTN_0DB = 0
    ATTN_11DB = 3

    def __init__(self, pin, atten=None):
        self.pin = pin

    def atten(self, value):
        pass

    def read_uv(self):
        return self.pin._link.adc.get(self.pin.id, 0)

    def read_u16(self):
        # 0..3.3 V full scale at 11 dB
        uv = self.read_uv()
        return min(65535, uv * 65535 // 3300000)


class WDT:
    def __init__(self, id=0, timeout=5000):
        if timeout < 1:
            raise ValueError("timeout")
        link().send("wdt_start", timeout)

    def feed(self):
        link().send("wdt_feed")


def reset_cause():
    return link().boot.get("reset_cause", PWRON_RESET)


def wake_reason():
    return link().boot.get("wake_reason", 0)


def reset():
    link().call("reset")
    while True:  # the host restarts the process; nothing after this runs
        time.sleep_ms(1000)


def soft_reset():
    link().call("reset")
    while True:
        time.sleep_ms(1000)


def deepsleep(time_ms=0):
    link().call("deepsleep", time_ms)
    while True:  # the host ends this process and boots again on a wake pin or the timer
        time.sleep_ms(1000)


def lightsleep(time_ms=0):
    # Light sleep keeps RAM and resumes here: waiting is a fair model of it.
    if time_ms:
        time.sleep_ms(time_ms)


def idle():
    time.sleep_ms(1)


class RTC:
    """RTC memory (the ESP32's slow RTC RAM: kept over deep sleep and resets, lost with the
    power; the host keeps it). time.time() is the host's clock, which runs on in sleep, as the
    ESP32's RTC timer does."""

    def memory(self, data=None):
        sim = link()
        if data is None:
            return bytes.fromhex(sim.boot.get("rtc_memory", ""))
        if len(data) > 2048:
            raise ValueError("RTC memory holds 2048 bytes")
        sim.boot["rtc_memory"] = bytes(data).hex()
        sim.call("rtc_memory", sim.boot["rtc_memory"])


def unique_id():
    return bytes.fromhex(link().boot.get("unique_id", "000000000000"))


def freq(hz=None):
    return 240000000


def disable_irq():
    return 0


def enable_irq(state=0):
    pass
