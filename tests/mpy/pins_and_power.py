# Virtual board test script: reports reset cause and wake reason, records pin IRQs with their
# device timestamps, drives a PWM buzzer and an LED, and obeys simple console-free commands
# taken from pin 4 (the reed): see tests/test_virtual_board.py.
import sys
import time

import machine

with open("boots.txt", "a") as f:  # before the print the test waits for
    f.write("%d\n" % machine.reset_cause())
print("boot", machine.reset_cause(), machine.wake_reason())

button = machine.Pin(0, machine.Pin.IN, machine.Pin.PULL_UP)
edges = []


def on_edge(pin):
    edges.append((time.ticks_us(), pin.value()))


button.irq(on_edge, trigger=machine.Pin.IRQ_FALLING | machine.Pin.IRQ_RISING, wake=True)
buzzer = machine.PWM(machine.Pin(25), freq=2000, duty_u16=0)
led = machine.Pin(2, machine.Pin.OUT, value=0)
battery = machine.ADC(machine.Pin(34))
mode = sys.argv[1] if len(sys.argv) > 1 else "edges"
print("ready", mode, battery.read_uv())

if mode == "edges":
    count = int(sys.argv[2])
    while len(edges) < count:
        time.sleep_ms(2)
    t0 = edges[0][0]
    print("edges", " ".join("%d:%d" % (time.ticks_diff(t, t0), v) for t, v in edges))
elif mode == "outputs":
    for hz in (2000, 3000, 4000):
        buzzer.freq(hz)
        buzzer.duty_u16(32768)
        led.value(1 - led.value())
        time.sleep_ms(20)
    buzzer.duty_u16(0)
    print("outputs done")
elif mode == "watchdog" and machine.reset_cause() != machine.WDT_RESET:
    wdt = machine.WDT(timeout=300)
    for _ in range(5):
        wdt.feed()
        time.sleep_ms(100)
    print("stopped feeding")
elif mode == "reset" and machine.reset_cause() == machine.PWRON_RESET:
    machine.reset()
elif mode == "deepsleep" and machine.reset_cause() == machine.PWRON_RESET:
    machine.deepsleep(int(sys.argv[2]))
while True:
    time.sleep_ms(50)
