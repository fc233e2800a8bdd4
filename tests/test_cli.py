"""The `jikimi` command as a user runs it."""

import json
import subprocess
import sys
from pathlib import Path

from jikimi import protocol as p
from jikimi_host.cli import main as jikimi


def test_decode_prints_the_message_as_json(capsys):
    assert jikimi(["decode", "018203000000"]) == 0
    assert json.loads(capsys.readouterr().out) == {"type": "arm", "counter": 3}


def test_decode_of_bad_frames_exits_non_zero_with_the_reason(capsys):
    assert jikimi(["decode", "0182", "zz", "018203000000"]) == 1
    captured = capsys.readouterr()
    assert "0182: BAD_LENGTH: arm needs 6 bytes, got 2" in captured.err
    assert "'zz' is not hex" in captured.err
    assert json.loads(captured.out) == {"type": "arm", "counter": 3}  # the good one still decoded


def test_encode_takes_json(capsys):
    assert jikimi(["encode", '{"type": "locate", "counter": 7, "seconds": 10}']) == 0
    assert capsys.readouterr().out.strip() == "0186070000000a"
    assert jikimi(["encode", '{"type": "locate", "counter": 7}']) == 1
    assert "locate: missing field 'seconds'" in capsys.readouterr().err
    assert jikimi(["encode", "[1]"]) == 1
    assert "expected a JSON object" in capsys.readouterr().err


def test_the_console_command_is_installed():
    command = Path(sys.executable).parent / "jikimi"
    done = subprocess.run([command, "--help"], capture_output=True, text=True)
    assert done.returncode == 0
    assert "build" in done.stdout and "demo" in done.stdout


def test_demo_runs_the_protocol_between_micropython_and_cpython(capsys):
    assert jikimi(["demo", "--json"]) == 0
    steps = json.loads(capsys.readouterr().out)
    received = [s["message"] for s in steps if s["direction"] == "device->phone"]
    results = [m for m in received if m["type"] == "result"]
    alarms = [m for m in received if m["type"] == "alarm_raised"]
    assert alarms and alarms[0]["mode"] == p.MODE_LOUD and alarms[0]["trigger"] == p.TRIGGER_HOLD
    codes = [p.error_name(r["code"]) for r in results]
    assert codes[0] == "NOT_AUTHENTICATED"  # before pairing
    assert "REPLAYED" in codes and "BAD_LENGTH" in codes
    assert received[-1]["type"] == "status" and received[-1]["journal_depth"] == 0
    assert [s["t_ms"] for s in steps] == sorted(s["t_ms"] for s in steps)
