# Device script for bench/bench_sim.py, run on the virtual board.
#   ready                 print "ready" as soon as the side channel is up
#   rtt N                 N side-channel round trips; prints their times in us
#   edges N               record N pin IRQs on the button; prints their ticks_us
#   notify                BLE peripheral: a write "go:N:GAP_MS" sends N notifications, each
#                         carrying its index and the ticks_us (CLOCK_MONOTONIC) at sending
import struct
import sys
import time

import machine
from simlink import link

mode = sys.argv[1]
if mode == "ready":
    print("ready")
elif mode == "rtt":
    times = []
    for i in range(int(sys.argv[2])):
        t = time.ticks_us()
        link().call("ping", i)
        times.append(time.ticks_diff(time.ticks_us(), t))
    print("rtt", " ".join(str(t) for t in times))
elif mode == "edges":
    count = int(sys.argv[2])
    edges = []
    pin = machine.Pin(0, machine.Pin.IN)
    pin.irq(lambda p: edges.append(time.ticks_us()))
    print("ready")
    while len(edges) < count:
        time.sleep_ms(5)
    print("edges", " ".join(str(t) for t in edges))
elif mode == "notify":
    import bluetooth

    ble = bluetooth.BLE()
    state = {"conn": None, "go": None}

    def irq(event, data):
        if event == 1:
            state["conn"] = data[0]
        elif event == 3:
            state["go"] = ble.gatts_read(data[1]).decode()

    ble.irq(irq)
    ble.active(True)
    ((value, control),) = ble.gatts_register_services(((bluetooth.UUID(0xFFF0), (
        (bluetooth.UUID(0xFFF1), bluetooth.FLAG_NOTIFY),
        (bluetooth.UUID(0xFFF2), bluetooth.FLAG_WRITE))),))
    ble.gap_advertise(20000, b"\x02\x01\x06")
    print("ready")
    while True:
        if state["go"]:
            _, count, gap_ms = state["go"].split(":")
            state["go"] = None
            for i in range(int(count)):
                ble.gatts_notify(state["conn"], value, struct.pack("<Iq", i, time.ticks_us()))
                time.sleep_ms(int(gap_ms))
            print("sent")
        time.sleep_ms(5)
