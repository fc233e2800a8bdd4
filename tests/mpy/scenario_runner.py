# The differential runner: plays a scenario script (timed raw inputs, battery readings, phone
# commands, reboots) against the device core and prints a timeline of everything it did.
# The same file runs under MicroPython and CPython; their outputs must be identical.
#
# Usage: <python> scenario_runner.py SCENARIO_JSON JOURNAL_DIR [START_TICKS]
#
# Scenario: {"config": {...overrides...}, "levels": {"button": 0, ...}, "until_ms": N,
#            "sample_ms": 20, "steps": [[t_ms, action, args...], ...]} with actions
#   "raw", input, level            one raw sample (an IRQ edge)
#   "bounce", input, level, [d..]  an edge to `level`, then toggles after each gap d (an even
#                                  number of gaps, so the train ends at `level`)
#   "battery", mv                  a battery reading
#   "command", {type, fields}      an authenticated phone command (counter, epoch filled in)
#   "unauthenticated", {...}       the same on a link that is not authenticated
#   "reboot"                       power cut and boot again on the same flash
import json
import sys

from jikimi import config as cfg
from jikimi import protocol as p
from jikimi import ticks
from jikimi.device import Device
from jikimi.journal import Journal

BASE = {"passkey": "000001", "board": "sim"}
EPOCH = 0x1234

scenario_path, journal_dir = sys.argv[1], sys.argv[2]
start = int(sys.argv[3]) if len(sys.argv) > 3 else 0
with open(scenario_path) as f:
    scenario = json.load(f)
settings = dict(BASE)
for key in scenario.get("config", {}):
    settings[key] = scenario["config"][key]
config, errors = cfg.validate(settings)
if errors:
    raise ValueError("scenario config: " + "; ".join(errors))

# Expand the steps into (t, action, args) sorted by time; bounce trains become raw edges.
steps = []
for step in scenario["steps"]:
    t, action, args = step[0], step[1], step[2:]
    if action == "bounce":
        name, level, gaps = args[0], args[1], args[2]
        if len(gaps) % 2:
            raise ValueError("bounce at %d: needs an even number of gaps to end at %d" % (t, level))
        current = level
        steps.append((t, "raw", [name, current]))
        for gap in gaps:
            t += gap
            current = 1 - current
            steps.append((t, "raw", [name, current]))
    else:
        steps.append((t, action, args))
# MicroPython's sort is not stable: order equal times by their place in the script.
order = {}
for i in range(len(steps)):
    order[id(steps[i])] = i
steps.sort(key=lambda s: (s[0], order[id(s)]))

levels = dict(scenario.get("levels", {}))
now = start


def out(text):
    print("%7d %s" % (ticks.diff(now, start), text))


def boot():
    journal = Journal(journal_dir + "/journal.bin", config["journal"]["capacity"],
                      config["journal"]["max_bytes"], new_epoch=lambda: EPOCH)
    out("boot epoch=%d next_seq=%d pending=%d" % (journal.epoch, journal.next_seq, journal.depth))
    return Device(config, journal, now, levels, (0, 1, 0), trace=out)


device = boot()
counter = 0
last_output = None
sample_ms = scenario.get("sample_ms", 20)
until = scenario["until_ms"]
index = 0
next_sample = 0

while True:
    elapsed = ticks.diff(now, start)
    if index < len(steps) and steps[index][0] <= elapsed:
        t, action, args = steps[index]
        index += 1
        if action == "raw":
            levels[args[0]] = args[1]
            device.input(args[0], args[1], now)
        elif action == "battery":
            device.battery_reading(args[0], now)
        elif action in ("command", "unauthenticated"):
            fields = dict(args[0])
            kind = fields.pop("type")
            counter += 1
            fields["counter"] = fields.pop("counter", counter)
            if "epoch" in [f for f, _ in p.fields_of(p.type_code(kind))]:
                fields.setdefault("epoch", device.journal.epoch)
            frame = p.encode(p.Message(kind, **fields))
            cmd = p.decode(frame)
            code = p.admit(cmd, action == "command", counter - 1 if action == "command" else 0)
            if code == p.E_OK:
                code = device.command(cmd, now)
            out("result %s %s" % (kind, p.error_name(code)))
            if kind == "request_status" and code == p.E_OK:
                status = device.status(now)
                out("status " + " ".join(["%s=%d" % (k, getattr(status, k)) for k in status.field_names()]))
        elif action == "reboot":
            out("power cut")
            device = boot()
        continue
    if elapsed >= next_sample:
        device.poll(now)
        output = device.output(now)
        if output != last_output:
            out("out hz=%d duty=%d led=%d" % output)
            last_output = output
        next_sample += sample_ms
    if elapsed >= until:
        break
    # Advance to the next thing that happens: a step, a sample, or the device's own deadline.
    target = next_sample
    if index < len(steps) and steps[index][0] < target:
        target = steps[index][0]
    due = device.deadline()
    if due is not None and 0 < ticks.diff(due, now) < target - elapsed:
        target = elapsed + ticks.diff(due, now)
    now = ticks.add(start, max(target, elapsed + 1) if target <= elapsed else target)
    device.poll(now)

out("end journal_depth=%d next_seq=%d" % (device.journal.depth, device.journal.next_seq))
