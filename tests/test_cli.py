"""The `jikimi` command as a user runs it."""

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

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


async def watch_the_demo_in_the_page(url: str, chromium: str) -> tuple[str, str]:
    """The bench page of `jikimi demo --ui` in Chromium, as someone watching: the bell's siren
    shown, then the call to 112 in its phone. (tests/test_bench_page.py drives the page.)"""
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = await browser.new_page()
            await page.goto(url)
            # read as it turns on, in one go: the first time may be a pairing's 80 ms confirmation
            # beep, over before a second round trip to the page on a loaded machine
            shown = await page.wait_for_function(
                "() => { const siren = document.querySelector('#siren-bell');"
                " return siren && siren.classList.contains('on') && siren.innerText; }", timeout=120_000)
            siren = await shown.json_value()
            await page.wait_for_selector('.phone[data-number="112"] .msg.call', timeout=120_000)
            return siren, await page.inner_text('.phone[data-number="112"] .msg.call')
        finally:
            await browser.close()


@pytest.mark.micropython
async def test_the_demo_plays_the_whole_incident_and_reports_its_figures(tmp_path, chromium):
    picture = tmp_path / "timeline.svg"
    demo = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "jikimi_host.cli", "demo", "--json", "--ui", "--cancel-window-s", "5", "--svg",
        str(picture), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        first = (await asyncio.wait_for(demo.stderr.readline(), 60)).decode()
        assert first.startswith("ui: http://127.0.0.1:"), first
        siren, call = await watch_the_demo_in_the_page(first.split()[1], chromium)
        assert "Hz" in siren and "call" in call
        out, err = await asyncio.wait_for(demo.communicate(), 240)
    finally:
        if demo.returncode is None:
            demo.kill()
            await demo.wait()
    assert demo.returncode == 0, err.decode()
    report = json.loads(out)
    assert report["ok"] and all(check["ok"] for check in report["checks"]), report["checks"]
    figures = report["figures"]
    assert 2900 < figures["press_to_siren_ms"] < 5000  # a 3 s hold, then the siren at once
    assert figures["press_to_siren_ms"] <= figures["press_to_guardian_sms_ms"] < figures["press_to_112_call_ms"]
    assert figures["press_to_112_call_ms"] > 3000 + 5000  # not before the cancel window ended
    # the owner is being driven away (gpsfake's track into the real gpsd): her position in the
    # first texts and in 112's report, then an update to every guardian as she moves
    made = {check["what"] for check in report["checks"]}
    assert {"the first texts carry where she is: gpsd's fix, its accuracy and age",
            "the 112 report gives her position as an AML line (LOC, ACC, TOP)",
            "112 gets where she is as the report goes out, not where she was at the alarm"} <= made
    assert any(what.startswith("she is being driven away: every guardian gets her new position") for what in made)
    assert figures["press_to_guardian_sms_ms"] < figures["press_to_location_update_ms"]
    lanes = {entry["lane"] for entry in report["timeline"]}
    assert lanes == {"owner", "bell", "door", "relay", "guardians", "112"}
    times = [entry["at_ms"] for entry in report["timeline"]]
    assert times == sorted(times)
    assert picture.read_text(encoding="utf-8").startswith("<svg") and "현관문" in picture.read_text(encoding="utf-8")
    # the picture's spans: the siren, both cancel windows (one cancelled), the wait for 112
    spans = report["spans"]
    assert {span["kind"] for span in spans} == {"siren", "cancel_window", "to_112"}
    assert any(span["text"] == "cancel window: cancelled" for span in spans)
