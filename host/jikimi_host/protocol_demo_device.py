"""The device half of `jikimi demo` (protocol walk-through), run under real MicroPython.

It keeps a journal of unacknowledged events in RAM and applies the protocol's admission rules
(PROTOCOL.md §7.1) to the phone's commands. It speaks one line per frame over stdin/stdout:

    in:  "press_hold" | "read_info" | "link <0|1>" | "write <hex>" | "quit"
    out: "frame <hex>" for each frame the device sends, then "." when it is done with the line

The real device app (alarm state machines, flash journal, BLE) replaces this model later; the
codec is the one the device runs.
"""

import sys

from jikimi import VERSION as FW_VERSION
from jikimi import protocol as p

EPOCH = 0x5EED


class DemoDevice:
    def __init__(self):
        self.journal = []  # unacknowledged event messages, oldest first
        self.next_seq = 1
        self.last_counter = 0
        self.authenticated = False
        self.active_alarm = 0

    def event(self, kind, **fields):
        msg = p.Message(kind, epoch=EPOCH, seq=self.next_seq, time=0, **fields)
        self.next_seq += 1
        self.journal.append(msg)
        return msg

    def status(self):
        flags = p.FLAG_ALARM_ACTIVE if self.active_alarm else 0
        return p.Message(
            p.STATUS, fw_major=FW_VERSION[0], fw_minor=FW_VERSION[1], fw_patch=FW_VERSION[2],
            roles=p.ROLE_PANIC, flags=flags, battery_pct=87, battery_mv=3950, uptime_s=42,
            journal_depth=len(self.journal), epoch=EPOCH,
        )

    def on_write(self, frame):
        try:
            cmd = p.decode(frame)
        except p.ProtocolError as err:
            return [p.result(0, 0, err.code)]
        if cmd.klass != "command":
            return [p.result(cmd.type, 0, p.E_UNKNOWN_TYPE)]
        code = p.admit(cmd, self.authenticated, self.last_counter)
        if code == p.E_REPLAYED:
            return [p.result(cmd.type, cmd.counter, code, self.last_counter)]
        if code != p.E_OK:
            return [p.result(cmd.type, cmd.counter, code)]
        self.last_counter = cmd.counter
        out = []
        if cmd.type == p.ACK:
            for msg in self.journal:
                if msg.seq == cmd.seq:
                    self.journal.remove(msg)
                    if msg.type == p.ALARM_RAISED:
                        out.append(self.event(p.ALARM_ACKED, alarm_seq=msg.seq))
                    break
        elif cmd.type == p.CANCEL_ALARM:
            if cmd.alarm_seq != self.active_alarm:
                return [p.result(cmd.type, cmd.counter, p.E_WRONG_STATE)]
            self.active_alarm = 0
            out.append(self.event(p.ALARM_CANCELLED, alarm_seq=cmd.alarm_seq, source=p.SOURCE_PHONE))
        elif cmd.type == p.REQUEST_STATUS:
            return [p.result(cmd.type, cmd.counter, p.E_OK), self.status()]
        else:
            return [p.result(cmd.type, cmd.counter, p.E_NOT_SUPPORTED)]
        return [p.result(cmd.type, cmd.counter, p.E_OK)] + out

    def handle(self, line):
        words = line.split()
        if words[0] == "press_hold":
            alarm = self.event(p.ALARM_RAISED, mode=p.MODE_LOUD, trigger=p.TRIGGER_HOLD, battery_pct=87)
            self.active_alarm = alarm.seq
            return [alarm]
        if words[0] == "read_info":
            return [p.Message(p.INFO, fw_major=FW_VERSION[0], fw_minor=FW_VERSION[1],
                              fw_patch=FW_VERSION[2], max_frame=p.MAX_FRAME)]
        if words[0] == "link":
            self.authenticated = words[1] == "1"
            # A new authenticated link gets every unacknowledged event again (§12).
            return list(self.journal) if self.authenticated else []
        if words[0] == "write":
            return self.on_write(bytes.fromhex(words[1]))
        raise ValueError("unknown demo command: " + line)


def main():
    device = DemoDevice()
    while True:
        line = sys.stdin.readline()
        if not line or line.strip() == "quit":
            break
        for msg in device.handle(line.strip()):
            print("frame " + p.encode(msg).hex())
        print(".")


if __name__ == "__main__":
    main()
