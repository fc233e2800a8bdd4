"""`jikimi demo`: the whole incident on a virtual bell and a virtual door alarm (the real
firmware under MicroPython) with a relay process (the sim telephony backend), printed as a
timeline with millisecond timestamps and drawn as an SVG picture.

Scenes: pairing both devices with the relay; a false alarm cancelled on the bell inside the
cancel window (guardians get the alarm, then "cancelled"; 112 nothing); the reference incident
(hold the bell 3 s → siren → SMS to guardians with where she is → 112 report and call after the
cancel window, the report with her position → she is moving: a location update to every
guardian; a hold after the window only silences the siren); a door opened while armed (entry
delay → intrusion alarm → guardians, then 112; the owner disarms it from the phone). The demo
checks each of these and exits 1 if one did not happen.

Where she is comes from the real gpsd, fed by gpsfake with a track of her being driven away at
30 km/h (jikimi_host.rig.gps); without gpsd installed the demo says so and uses the config's
fixed point, and the location checks are not made.

Nothing is sent anywhere: the relay's `sim` backend records the texts and calls in its database.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

from jikimi_host.errors import JikimiError, WaitTimeout
from jikimi_host.relay.config import dump_config
from jikimi_host.relay.messages import Location
from jikimi_host.rig.firmware import timed_log_records, until
from jikimi_host.sim.hands import hold_button_through_power_up
from jikimi_host.rig.gps import GPSFAKE_MISSING, GpsFake, free_port, gpsfake_missing, track_log
from jikimi_host.rig.relay import RelayProcess
from jikimi_host.sim.board import VirtualBoard
from jikimi_host.sim.radio import VirtualRadio
from jikimi_host.sim.controls import Bench, BenchBoard
from jikimi_host.sim.run import deploy_firmware
from jikimi_host.sim.ui.server import BenchUI
from jikimi_host.timeline import Timeline, cjk_font_missing, svg

BELL_PASSKEY, DOOR_PASSKEY = "093514", "402981"
GUARDIANS = (("어머니", "010-0000-0001", "ko"), ("Alex", "+82 10 0000 0002", "en"), ("언니", "010-0000-0003", "ko"))
PAIRING_HOLD_MS = 4000  # shortened from the product's 10 s (it must exceed the 3 s hold)
HOME = (37.56650, 126.97800)  # the config's fixed point, the fallback
# She is driven away north at about 30 km/h (8.3 m/s): one fix a second for 15 minutes, longer
# than the demo, so that gpsfake never starts the log over (she would jump back).
TRACK = [(HOME[0] + 0.4e-3 + i * 7.5e-5, HOME[1] + 0.2e-3) for i in range(900)]
UPDATE_EVERY_S = 10  # the product's default is 120 s; the demo has no two minutes to spare
UI_WAIT_S = 30  # `--ui`: how long the scenes wait for the page to be opened
GPS_SENTENCE_S = 1 / 3  # gpsfake's pause per sentence: 3 per receiver cycle, one cycle a second


def device_config(name: str, passkey: str, roles: list[str], cancel_window_s: int) -> dict:
    return {
        "passkey": passkey, "board": "sim", "roles": roles, "name": name,
        "gestures": {"pairing_hold_ms": PAIRING_HOLD_MS},
        "alarm": {"cancel_window_ms": cancel_window_s * 1000},
        "door": {"exit_delay_ms": 3000, "entry_delay_ms": 5000},
        "power": {"idle_sleep_s": 0},  # stay awake: the demo is about the incident, not sleep
    }


def relay_config(database: Path, cancel_window_s: int, gpsd_port: int | None) -> str:
    location: dict[str, object] = {"lat": HOME[0], "lon": HOME[1], "accuracy_m": 25}
    if gpsd_port is not None:
        location |= {"source": "gpsd", "gpsd": f"127.0.0.1:{gpsd_port}", "update_every_s": UPDATE_EVERY_S}
    return dump_config({
        "owner": "김지은", "cancel_window_s": cancel_window_s, "database": database,
        "guardians": [{"name": name, "number": number, "language": language} for name, number, language in GUARDIANS],
        "location": location,
        "devices": [{"name": "비상벨", "passkey": BELL_PASSKEY}, {"name": "현관문", "passkey": DOOR_PASSKEY}],
    })


class Demo:
    def __init__(self, folder: Path, cancel_window_s: int, say: Callable[[str], None], ui: bool = False) -> None:
        self.folder = folder
        self.ui: BenchUI | None = None
        self.want_ui = ui
        self.cancel_window_s = cancel_window_s
        self.say = say
        self.timeline = Timeline()
        self.figures: dict[str, float] = {}
        self.checks: list[tuple[str, bool]] = []
        self.gps: GpsFake | None = None

    def check(self, what: str, ok: bool) -> None:
        self.checks.append((what, ok))
        self.say(f"  {'✓' if ok else '✗'} {what}")

    def relay_records(self, kind: str, match: Callable[[dict], bool] = lambda r: True) -> list[dict]:
        return [r for r in self.relay.records if r.get("kind") == kind and match(r)]

    def texts_to(self, number: str, after_wall: float = 0.0, kinds: tuple[str, ...] = ()) -> list[dict]:
        """The texts to `number` since `after_wall`, of the message kinds `kinds` (default: all)."""
        return self.relay_records("sms", lambda r: r["to"] == number and r["t"] >= after_wall
                                  and (not kinds or r["message_kind"] in kinds))

    async def hold(self, board: VirtualBoard, name: str, seconds: float, what: str) -> float:
        await asyncio.sleep(0.5)  # a person's hand: let go for a moment between two presses
        self.timeline.add("owner", what, kind="action")
        pressed = time.monotonic()
        await board.press(name, hold_s=seconds)
        return pressed

    async def run(self) -> None:
        radio = VirtualRadio()
        transport = await radio.serve_hci()
        database = self.folder / "relay.sqlite"
        config_path = self.folder / "relay.toml"
        if gpsfake_missing():
            self.say(f"! {GPSFAKE_MISSING}.\n! Without them the owner does not move: the texts carry the config's "
                     "fixed point and the location checks are not made.")
        else:
            track_log(self.folder / "track.nmea", TRACK)
            self.gps = GpsFake(self.folder / "track.nmea", free_port(), cycle_s=GPS_SENTENCE_S).start()
        config_path.write_text(relay_config(database, self.cancel_window_s, self.gps.port if self.gps else None))
        self.bell = VirtualBoard(self.folder / "bell", radio=radio)
        self.door = VirtualBoard(self.folder / "door", radio=radio)
        for board, name, passkey, roles in ((self.bell, "비상벨", BELL_PASSKEY, ["panic"]),
                                            (self.door, "현관문", DOOR_PASSKEY, ["door"])):
            deploy_firmware(board)
            board.deploy({"config.json": json.dumps(device_config(name, passkey, roles, self.cancel_window_s))})
        self.relay = RelayProcess(config_path, transport)
        try:
            await self.relay.start()
            await self.relay.expect(lambda r: r["kind"] == "ready", what="the relay starting")
            if self.want_ui:
                await self.open_page()
            self.timeline.add("relay", "relay up (sim telephony" + (", location from gpsd)" if self.gps else ")"))
            await self.pairing()
            await self.false_alarm()
            await self.reference_incident()
            await self.door_intrusion()
        finally:
            if self.ui is not None:
                await self.ui.close()
            await self.relay.stop()
            for board in (self.bell, self.door):
                await board.stop()
            await radio.close()
            if self.gps is not None:
                self.gps.stop()
            self.collect()

    async def open_page(self) -> None:
        """The bench page (sim/ui) on the demo's boards and relay; the scenes wait up to
        UI_WAIT_S for a browser to open it, so that it sees them from the start."""
        bench = Bench([BenchBoard("bell", self.bell, self.bell.start, ("panic",)),
                       BenchBoard("door", self.door, self.door.start, ("door",))])
        self.ui = BenchUI(bench, self.relay, device_names={"bell": "비상벨", "door": "현관문"})
        url = await self.ui.start()
        # stderr: with --json, stdout is the report
        print(f"ui: {url}  (open it: the demo starts when the page is open, or in {UI_WAIT_S} s)", file=sys.stderr,
              flush=True)
        with contextlib.suppress(WaitTimeout):
            await until(lambda: self.ui.clients, UI_WAIT_S, "the page to be opened")

    async def pairing(self) -> None:
        self.say("▶ Pairing: hold each device's button at power-up; the relay pairs with the passkey")
        for board, name in ((self.bell, "비상벨"), (self.door, "현관문")):
            self.timeline.add("owner", f"holds the {name} button at power-up", kind="action")
            ready = await hold_button_through_power_up(board, PAIRING_HOLD_MS)  # let go on the LED
            self.timeline.add("owner", f"sees the {name} LED come on and lets go", self.timeline.ms(ready.host_s),
                              kind="action")
            await self.relay.expect(lambda r, n=name: r["kind"] == "link" and r["text"].startswith(f"connected to {n}"),
                                    timeout_s=60, what=f"{name} paired and connected")
            self.check(f"{name} paired with the relay", True)

    async def reference_incident(self) -> None:
        self.say(f"▶ Reference incident: hold the bell 3 s → siren → guardians → 112 after {self.cancel_window_s} s")
        wall = time.time()
        pressed = await self.hold(self.bell, "button", 3.3, "holds the bell's button (3 s)")
        siren = await until(lambda: [o for o in self.bell.pwm_history("buzzer")
                                          if o.value and o.host_s > pressed], 5, "the siren")
        self.figures["press_to_siren_ms"] = (siren[0].host_s - pressed) * 1000
        numbers = self.guardian_numbers()
        await until(lambda: all(self.texts_to(n, wall, ("alarm",)) for n in numbers), 15, "the guardian texts")
        first_texts = [self.texts_to(n, wall, ("alarm",))[0] for n in numbers]
        first_sms = min(text["t"] for text in first_texts)
        self.figures["press_to_guardian_sms_ms"] = (self.mono(first_sms) - pressed) * 1000
        self.check("every guardian texted once", all(len(self.texts_to(n, wall, ("alarm",))) == 1 for n in numbers))
        if self.gps is not None:
            self.check("the first texts carry where she is: gpsd's fix, its accuracy and age",
                       all(live_fix_in(text["message"]) for text in first_texts))
        call = await until(lambda: self.relay_records("call", lambda r: r["t"] >= wall),
                                self.cancel_window_s + 15, "the 112 call")
        self.figures["press_to_112_call_ms"] = (self.mono(call[0]["t"]) - pressed) * 1000
        self.check("112 texted and called after the cancel window",
                   len(self.texts_to("112", wall)) == 1 and len(call) == 1)
        if self.gps is not None:
            report_text = self.texts_to("112", wall)[0]
            report = report_text["message"]
            aml = re.search(r"^LOC:(-?[\d.]+,-?[\d.]+) ACC:\d+m TOP:\d\d:\d\d:\d\d$", report, re.M)
            self.check("the 112 report gives her position as an AML line (LOC, ACC, TOP)", aml is not None)
            self.check("112 gets where she is as the report goes out, not where she was at the alarm",
                       aml is not None and all(aml.group(1) not in text["message"] for text in first_texts))
            await until(lambda: all(self.texts_to(n, wall, ("location_update",)) for n in numbers),
                        UPDATE_EVERY_S + 20, "a location update to every guardian")
            updates = [self.texts_to(n, wall, ("location_update",))[0] for n in numbers]
            self.figures["press_to_location_update_ms"] = (self.mono(min(u["t"] for u in updates)) - pressed) * 1000
            moved = all(link_of(u["message"]) != link_of(t["message"]) for u, t in zip(updates, first_texts))
            self.check(f"she is being driven away: every guardian gets her new position ({UPDATE_EVERY_S} s on)",
                       moved)
            for what, text in (("first text", first_texts[1]), ("update", updates[1]), ("112 report", report_text)):
                self.say(f"    {what} → {text['to']}:\n      " + text["message"].replace("\n", "\n      "))
        await self.hold(self.bell, "button", 3.3, "holds the bell again: after the window this silences")
        await until(lambda: self.bell.pwm_history("buzzer")[-1].value == 0, 5, "the siren stopping")
        self.check("the siren stopped; the report stands", True)

    async def false_alarm(self) -> None:
        self.say("▶ False alarm: the bell held by mistake, then held again inside the cancel window")
        wall = time.time()
        await self.hold(self.bell, "button", 3.3, "holds the bell's button (3 s) by mistake")
        numbers = self.guardian_numbers()
        await until(lambda: all(self.texts_to(n, wall, ("alarm",)) for n in numbers), 15, "the alarm texts")
        await self.hold(self.bell, "button", 3.3, "holds it again inside the cancel window: cancel")
        await until(lambda: all(self.texts_to(n, wall, ("cancelled",)) for n in numbers), 15, "the cancellations")
        self.check("guardians got the alarm, then 'cancelled'", True)
        await asyncio.sleep(max(0.0, wall + self.cancel_window_s + 2 - time.time()))  # past the window
        self.check("nothing went to 112", not self.relay_records("call") and not self.texts_to("112"))

    async def door_intrusion(self) -> None:
        self.say("▶ Door: armed with a double press, opened, nobody disarms → intrusion alarm")
        wall = time.time()
        self.timeline.add("owner", "double-presses the door alarm's button: arm, and leaves", kind="action")
        for _ in range(2):
            await self.door.press("button", hold_s=0.12)
            await asyncio.sleep(0.15)
        await self.relay.expect(lambda r: r["kind"] == "event" and r["event"]["type"] == "armed", what="armed")
        await asyncio.sleep(3.5)  # the exit delay
        self.timeline.add("owner", "(someone) opens the door", kind="action")
        await self.door.press("reed")
        await self.relay.expect(lambda r: r["kind"] == "event" and r["event"]["type"] == "alarm_raised"
                                and r["device"] == "현관문", timeout_s=20, what="the intrusion alarm")
        numbers = self.guardian_numbers()
        await until(lambda: all(self.texts_to(n, wall, ("door_intrusion",)) for n in numbers), 15, "intrusion texts")
        self.check("guardians texted about the intrusion", True)
        calls = await until(lambda: self.relay_records("call", lambda r: r["t"] >= wall),
                                 self.cancel_window_s + 20, "the 112 call for the door")
        self.check("112 texted and called for the intrusion", len(calls) == 1 and len(self.texts_to("112", wall)) == 1)
        self.timeline.add("owner", "disarms the door alarm in the app", kind="action")
        await self.relay.command("disarm 현관문")
        await until(lambda: self.door.pwm_history("buzzer")[-1].value == 0, 10, "the door siren stopping")
        self.check("disarmed from the phone: the door siren stopped", True)

    def guardian_numbers(self) -> list[str]:
        return sorted({r["to"] for r in self.relay_records("sms") if r["recipient_kind"] == "guardian"}) or [
            "+821000000001", "+821000000002", "+821000000003"]

    def mono(self, wall: float) -> float:
        return self.timeline.t0 + (wall - self.timeline.wall0)

    def collect(self) -> None:
        """Everything the boards logged and the relay printed, onto the timeline."""
        for board, lane in ((self.bell, "bell"), (self.door, "door")):
            for at, record in timed_log_records(board):
                message = record.get("msg", "")
                if record.get("k") == "core" and (message.startswith("event ") or message.startswith("gesture ")
                                                  or message.startswith("pairing")):
                    self.timeline.add(lane, message, self.timeline.ms(at))
            sounding_since = None
            for output in board.pwm_history("buzzer"):
                if bool(output.value) == (sounding_since is not None):
                    continue
                at = self.timeline.ms(output.host_s)
                if output.value:
                    sounding_since = at
                else:
                    self.timeline.span(lane, "siren", sounding_since, at)
                    sounding_since = None
            if sounding_since is not None:  # still sounding when the demo ended
                self.timeline.span(lane, "siren", sounding_since, self.timeline.ms(time.monotonic()))
        raised: dict[str, float] = {}  # device -> when its alarm reached the relay
        for record in self.relay.records:
            kind, at = record.get("kind"), self.timeline.ms_from_wall(record.get("t", self.timeline.wall0))
            if kind == "event":
                event, device = record["event"]["type"], record["device"]
                self.timeline.add("relay", f"stored + acked {event} from {device}", at)
                if event == "alarm_raised":
                    raised[device] = at
                elif event == "alarm_cancelled" and device in raised:
                    self.timeline.span("relay", "cancel_window", raised.pop(device), at, "cancel window: cancelled")
            elif kind in ("sms", "call"):
                emergency = record["recipient_kind"] == "emergency"
                first_line = record["message"].splitlines()[0]
                label = "SMS" if kind == "sms" else "CALL"
                self.timeline.add("112" if emergency else "guardians", f"{label} {record['to']}: {first_line}", at,
                                  kind=kind)
                if emergency and raised:  # the first word to 112 closes the wait for the alarms before it
                    for device, since in list(raised.items()):
                        window_end = since + self.cancel_window_s * 1000
                        self.timeline.span("relay", "cancel_window", since, window_end, f"cancel window ({device})")
                        self.timeline.span("112", "to_112", window_end, at, "112 due")
                        del raised[device]
            elif kind == "link" and record["text"].startswith(("paired", "connected")):
                self.timeline.add("relay", record["text"], at)


def link_of(text: str) -> str | None:
    """The map link in a text (its coordinates), if any."""
    return next((word for word in text.split() if word.startswith("https://maps.google.com/?q=")), None)


def live_fix_in(text: str) -> bool:
    """A text with a measured fix: a map link other than the fixed point's, and the fix's age."""
    link = link_of(text)
    return (link is not None and link != Location(*HOME).map_link()
            and any(age in text for age in ("(방금)", "(just now)", "분 전)", " min ago)")))


async def run(cancel_window_s: int, as_json: bool, svg_path: Path, ui: bool = False) -> int:
    say = (lambda text: None) if as_json else (lambda text: print(text, flush=True))
    with tempfile.TemporaryDirectory(prefix="jikimi-demo-") as tmp:
        demo = Demo(Path(tmp), cancel_window_s, say, ui)
        error = None
        try:
            await demo.run()
        except (AssertionError, JikimiError) as err:  # a step that did not happen (the rig says which)
            error = str(err).splitlines()[0]
    entries = demo.timeline.sorted()
    svg_path.parent.mkdir(parents=True, exist_ok=True)
    svg_path.write_text(svg(demo.timeline, "Jikimi demo: a virtual bell and door alarm, a relay, one incident"),
                        encoding="utf-8")
    ok = error is None and all(passed for _, passed in demo.checks)
    if as_json:
        print(json.dumps({"ok": ok, "error": error, "figures": demo.figures,
                          "checks": [{"what": w, "ok": o} for w, o in demo.checks],
                          "timeline": [asdict(e) for e in entries],
                          "spans": [asdict(span) for span in demo.timeline.spans], "svg": str(svg_path)}, ensure_ascii=False))
        return 0 if ok else 1
    print("\nTimeline (ms since the demo started):")
    lines = [(entry.at_ms, entry.lane, entry.text.splitlines()[0][:110]) for entry in entries]
    lines += [(span.start_ms, span.lane, f"{span.text or span.kind} until {span.end_ms:.0f}")
              for span in demo.timeline.spans if span.kind == "siren"]
    for at_ms, lane, text in sorted(lines):
        print(f"  {at_ms:9.0f}  {lane:<9} {text}")
    print("\nFigures:")
    for name, value in demo.figures.items():
        print(f"  {name:<28} {value:9.0f} ms")
    print(f"\nPicture: {svg_path}")
    missing_font = cjk_font_missing()
    if missing_font:
        print(f"  ({missing_font})")
    if error:
        print(f"\nFAILED: {error}")
    elif not ok:
        print("\nFAILED: " + "; ".join(w for w, o in demo.checks if not o))
    return 0 if ok else 1
