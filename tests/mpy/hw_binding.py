# The firmware's hardware binding (jikimi.hw) on the virtual board's pin map.
import sys
import time

import board
import machine
from jikimi.hw import Hardware

hw = Hardware(board)
print("boot", machine.reset_cause(), machine.wake_reason())
print("levels", hw.level("button"), hw.level("reed"), hw.level("pull_pin"), hw.battery_mv())
events = []


def on_edge(name, level):
    events.append(name)
    print("event %s=%d" % (name, level))


for name in ("button", "reed"):
    hw.watch(name, on_edge)
hw.sound(3000, 32768)
hw.led(True)
print("ready")
if sys.argv[1:] == ["sleep"] and machine.reset_cause() != machine.DEEPSLEEP_RESET:
    hw.deep_sleep()
while len(events) < 4:
    time.sleep_ms(5)
print("done")
