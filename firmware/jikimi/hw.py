"""The hardware binding: a board's pin map (boards/<name>/board.py) turned into the logical
inputs and outputs the app drives. The only firmware module that touches `machine`.

Logical levels: an input reads 1 when active (button pressed, door open, ring pulled, lid open),
whatever the wiring; outputs take 1 for on. Input names are the pin map's ("reed" is the door).
"""

import machine
import time

try:
    import esp32  # ESP32 wake-up sources; absent on other ports
except ImportError:
    esp32 = None

INPUTS = ("button", "reed", "pull_pin", "tamper")  # in the order of device.INPUTS (app.INPUT_NAMES pairs them)
_PULLS = {"up": machine.Pin.PULL_UP, "down": machine.Pin.PULL_DOWN, None: None}


class Hardware:
    def __init__(self, board):
        self.board = board
        self.battery_override_mv = None  # set by the rig's test console only
        self.inputs = {}  # name -> (Pin, active level)
        for name in INPUTS:
            spec = board.PINS.get(name)
            if spec is None:
                continue
            gpio, active, pull = spec
            pull = _PULLS[pull]
            pin = machine.Pin(gpio, machine.Pin.IN) if pull is None else machine.Pin(gpio, machine.Pin.IN, pull)
            self.inputs[name] = (pin, active)
        gpio, self._buzzer_on, _ = board.PINS["buzzer"]
        self._buzzer = machine.PWM(machine.Pin(gpio), freq=2000, duty_u16=0)
        gpio, self._led_on, _ = board.PINS["led"]
        self._led = machine.Pin(gpio, machine.Pin.OUT, value=1 - self._led_on)
        self._battery = machine.ADC(machine.Pin(board.PINS["battery"][0]))
        if hasattr(self._battery, "atten"):
            self._battery.atten(machine.ADC.ATTN_11DB)  # the full 0-3.3 V range
        self._sound = (0, 0)
        self._led_state = 0

    def level(self, name):
        """1 if input `name` is active now, else 0."""
        pin, active = self.inputs[name]
        return 1 if pin.value() == active else 0

    def watch(self, name, handler):
        """Call handler(name, level) from the pin IRQ on every edge of input `name`."""
        pin, active = self.inputs[name]

        def edge(p):
            handler(name, 1 if p.value() == active else 0)

        pin.irq(edge, trigger=machine.Pin.IRQ_RISING | machine.Pin.IRQ_FALLING)

    def sound(self, frequency_hz, duty_u16):
        """Drive the buzzer; (0, 0) is silence. Unchanged values are not written again."""
        if (frequency_hz, duty_u16) == self._sound:
            return
        self._sound = (frequency_hz, duty_u16)
        if frequency_hz:
            self._buzzer.freq(frequency_hz)
        self._buzzer.duty_u16(duty_u16 if self._buzzer_on else 65535 - duty_u16)

    def led(self, on):
        self._led_state = 1 if on else 0
        self._led.value(self._led_on if on else 1 - self._led_on)

    def outputs(self):
        """(buzzer Hz, buzzer duty_u16, LED 0/1) as last driven."""
        return self._sound[0], self._sound[1], self._led_state

    def battery_mv(self):
        if self.battery_override_mv is not None:  # the rig's test console (testconsole.py)
            return self.battery_override_mv
        return self._battery.read_uv() * self.board.BATTERY_DIVIDER // 1000

    def reset_cause(self):
        return machine.reset_cause()

    def woke_by(self):
        """None after a power-up or reset; "pin" or "timer" after a deep sleep."""
        if machine.reset_cause() != machine.DEEPSLEEP_RESET:
            return None
        return "timer" if machine.wake_reason() == machine.TIMER_WAKE else "pin"

    def reset(self):
        machine.reset()

    def watchdog(self, timeout_ms):
        return machine.WDT(timeout=timeout_ms)

    def keep_clock(self, clock_s):
        """Before a deep sleep: keep the wall clock (s since 2000) as an offset from the RTC's
        time.time(), which runs on in deep sleep, in RTC memory, which deep sleep keeps (a power
        loss clears both, and then the clock is unknown again, as it should be)."""
        try:
            machine.RTC().memory(str(clock_s - int(time.time())).encode())
        except (AttributeError, OSError, ValueError):
            pass  # a port without RTC memory: the clock is unknown after waking, nothing worse

    def kept_clock(self):
        """After a deep sleep: the wall clock keep_clock() kept, or None."""
        try:
            kept = machine.RTC().memory()
            return int(time.time()) + int(kept) if kept else None
        except (AttributeError, OSError, ValueError):  # no RTC memory, or another firmware's bytes
            return None

    def deep_sleep(self, time_ms=0):
        """Sleep until `time_ms` passes (0: no timer) or a wake input becomes active; never
        returns (the board boots again). Wake inputs must be inactive when called."""
        low = []
        high = []
        for name in self.board.WAKE_PINS:
            pin, active = self.inputs[name]
            (high if active else low).append(pin)
        if esp32 is not None and hasattr(esp32, "wake_on_ext0"):
            # ESP32, S2, S3: EXT0 watches one pin at either level, EXT1 several for "any high".
            if len(low) > 1:
                raise ValueError("EXT0 wakes on one active-low input only")
            esp32.wake_on_ext0(low[0] if low else None, esp32.WAKEUP_ALL_LOW)
            esp32.wake_on_ext1(high or None, esp32.WAKEUP_ANY_HIGH)
        elif esp32 is not None and hasattr(esp32, "wake_on_gpio"):
            # C3, C6: GPIO wake-up; the button first, as its level is the one that must wake.
            if high:
                esp32.wake_on_gpio(high, esp32.WAKEUP_ANY_HIGH)
            if low:
                esp32.wake_on_gpio(low, esp32.WAKEUP_ALL_LOW)
        else:
            for pin in low + high:
                trigger = machine.Pin.WAKE_LOW if pin in low else machine.Pin.WAKE_HIGH
                pin.irq(trigger=trigger, wake=machine.DEEPSLEEP)
        machine.deepsleep(time_ms)
