"""`jikimi demo`: a protocol walk-through between a device on real MicroPython and a phone here.

Every frame crosses a process boundary: the device half (protocol_demo_device.py) encodes it
with the firmware codec under the `micropython` binary, and this phone half decodes it with the
same file under CPython, and the other way round. The virtual board and the relay replace both
halves as they land (issues 4-6); until then this is the end-to-end path that exists.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from jikimi import protocol as p
from jikimi_host.micropython import find_micropython
from jikimi_host.paths import FIRMWARE_DIR

DEVICE_SCRIPT = Path(__file__).with_name("protocol_demo_device.py")
REPLY_TIMEOUT_S = 10.0


@dataclass
class Step:
    t_ms: float
    direction: str  # "device->phone", "phone->device", or "note"
    text: str
    frame_hex: str = ""
    message: dict | None = None


class DemoError(RuntimeError):
    pass


class DeviceProcess:
    """The MicroPython device half, one request line -> the frames it sends back."""

    def __init__(self) -> None:
        env = dict(os.environ, MICROPYPATH=f"{FIRMWARE_DIR}{os.pathsep}.frozen")
        self.proc = subprocess.Popen(
            [str(find_micropython()), str(DEVICE_SCRIPT)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )

    def request(self, line: str) -> list[bytes]:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        frames = []
        deadline = time.monotonic() + REPLY_TIMEOUT_S
        while time.monotonic() < deadline:
            reply = self.proc.stdout.readline()
            if not reply:
                err = self.proc.stderr.read() if self.proc.stderr else ""
                raise DemoError(f"the MicroPython device stopped:\n{err}")
            reply = reply.strip()
            if reply == ".":
                return frames
            kind, _, payload = reply.partition(" ")
            if kind != "frame":
                raise DemoError(f"unexpected output from the MicroPython device: {reply!r}")
            frames.append(bytes.fromhex(payload))
        raise DemoError(f"no answer from the device to {line!r}")

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin
                self.proc.stdin.write("quit\n")
                self.proc.stdin.close()
                self.proc.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()


def run_demo(emit: Callable[[Step], None]) -> list[Step]:
    """Play the walk-through; `emit` gets each step as it happens. Returns all steps."""
    steps: list[Step] = []
    start = time.monotonic()
    counter = 0

    def record(direction: str, text: str, frame: bytes = b"", msg: p.Message | None = None) -> None:
        step = Step(
            round((time.monotonic() - start) * 1000, 1),
            direction,
            text,
            frame.hex(),
            msg.to_dict() if msg else None,
        )
        steps.append(step)
        emit(step)

    def receive(frames: list[bytes]) -> list[p.Message]:
        messages = []
        for frame in frames:
            msg = p.decode(frame)
            record("device->phone", msg.name, frame, msg)
            messages.append(msg)
        return messages

    def send(msg: p.Message | bytes, text: str) -> list[p.Message]:
        frame = msg if isinstance(msg, bytes) else p.encode(msg)
        record("phone->device", text, frame, None if isinstance(msg, bytes) else msg)
        return receive(device.request("write " + frame.hex()))

    def command(kind: int, text: str, **fields: int) -> list[p.Message]:
        nonlocal counter
        counter += 1
        return send(p.Message(kind, counter=counter, **fields), text)

    def expect(messages: list[p.Message], code: int) -> None:
        results = [m for m in messages if m.type == p.RESULT]
        if not results or results[0].code != code:
            raise DemoError(f"expected RESULT {p.error_name(code)}, got {messages}")

    device = DeviceProcess()
    try:
        record("note", "phone connects; reads Info, which needs no pairing")
        receive(device.request("read_info"))
        record("note", "before pairing, commands are refused")
        expect(command(p.REQUEST_STATUS, "request_status (unauthenticated)"), p.E_NOT_AUTHENTICATED)
        record("note", "link encrypted with the passkey-authenticated bond")
        receive(device.request("link 1"))
        record("note", "the device journals a loud alarm (what a 3 s hold raises; the gesture path runs in the app, issue 5)")
        alarm = receive(device.request("press_hold"))[0]
        replies = command(p.ACK, f"ack seq {alarm.seq}", epoch=alarm.epoch, seq=alarm.seq)
        expect(replies, p.E_OK)
        for event in [m for m in replies if m.klass == "event"]:
            expect(command(p.ACK, f"ack seq {event.seq}", epoch=event.epoch, seq=event.seq), p.E_OK)
        record("note", "an attacker replays the first ack frame")
        replayed = p.encode(p.Message(p.ACK, counter=1, epoch=alarm.epoch, seq=alarm.seq))
        expect(send(replayed, "replayed ack (counter 1)"), p.E_REPLAYED)
        record("note", "a malformed write")
        expect(send(b"\x01\x81\x00", "3-byte frame"), p.E_BAD_LENGTH)
        record("note", "false alarm: the owner cancels from the phone")
        replies = command(p.CANCEL_ALARM, f"cancel alarm {alarm.seq}", epoch=alarm.epoch, alarm_seq=alarm.seq)
        expect(replies, p.E_OK)
        for event in [m for m in replies if m.klass == "event"]:
            expect(command(p.ACK, f"ack seq {event.seq}", epoch=event.epoch, seq=event.seq), p.E_OK)
        status = [m for m in command(p.REQUEST_STATUS, "request_status") if m.type == p.STATUS]
        if not status or status[0].journal_depth != 0:
            raise DemoError(f"journal should be empty after the acks, got {status}")
        record("note", "journal empty: every event reached the phone exactly once")
    finally:
        device.close()
    return steps


def format_step(step: Step) -> str:
    if step.direction == "note":
        return f"{step.t_ms:9.1f} ms  -- {step.text}"
    arrow = "bell -> phone" if step.direction == "device->phone" else "phone -> bell"
    fields = ""
    if step.message:
        shown = dict(step.message)
        if shown.get("type") == "result":  # name the outcome, not just its number
            shown["code"] = p.error_name(shown["code"])
            shown["command"] = p.type_name(shown["command"]) if shown["command"] else "-"
        fields = " ".join(f"{k}={v}" for k, v in shown.items() if k != "type")
    return f"{step.t_ms:9.1f} ms  {arrow}  {step.frame_hex:<40} {step.text} {fields}".rstrip()


def main(as_json: bool) -> int:
    if as_json:
        steps = run_demo(lambda step: None)
        print(json.dumps([asdict(s) for s in steps], indent=2))
    else:
        print("Protocol walk-through: device codec on MicroPython <-> phone codec on CPython")
        run_demo(lambda step: print(format_step(step), flush=True))
    return 0
