"""The hardware binding: a board's pin map (boards/<name>/board.py) turned into the logical
inputs and outputs the app drives. The only firmware module that touches `machine`.

Logical levels: an input reads 1 when active (button pressed, door open, ring pulled, lid open),
whatever the wiring; outputs take 1 for on. Input names are the pin map's ("reed" is the door).
"""

import machine

INPUTS = ("button", "reed", "pull_pin", "tamper")
_PULLS = {"up": machine.Pin.PULL_UP, "down": machine.Pin.PULL_DOWN, None: None}


class Hardware:
    def __init__(self, board):
        self.board = board
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
        self._led.value(self._led_on if on else 1 - self._led_on)

    def battery_mv(self):
        return self._battery.read_uv() * self.board.BATTERY_DIVIDER // 1000

    def reset_cause(self):
        return machine.reset_cause()

    def watchdog(self, timeout_ms):
        return machine.WDT(timeout=timeout_ms)

    def deep_sleep(self, time_ms=0):
        """Sleep until `time_ms` passes or a wake input becomes active (never returns)."""
        for name in self.board.WAKE_PINS:
            pin, active = self.inputs[name]
            trigger = machine.Pin.WAKE_HIGH if active else machine.Pin.WAKE_LOW
            pin.irq(trigger=trigger, wake=machine.DEEPSLEEP)
        machine.deepsleep(time_ms)
