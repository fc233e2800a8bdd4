"""The bench in a real browser (issue 18): Debian's Chromium, headless, driven by Playwright
(no browser download: the system's binary), on `jikimi sim --ui --relay` as a user starts it.
The owner holds the bell's button 3 s with the mouse, the page shows the siren, the guardians'
phones get the texts, she presses cancel in her phone's app, and the phones get "cancelled".
Screenshots of each step go to build/ui-screenshots/ (the README shows one)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jikimi_host.paths import BUILD_DIR
from jikimi_host.relay.config import write_config
from jikimi_host.rig.sim_process import SimProcess

pytestmark = pytest.mark.micropython

GUARDIAN = "+821000000001"  # the fictional 010-0000 block
SCREENSHOTS = BUILD_DIR / "ui-screenshots"
BELL = {"passkey": "123456", "board": "sim", "roles": ["panic"], "name": "비상벨",
        # the product's 3 s hold; a pairing hold of 4 s (it must be longer) instead of 10 s
        "gestures": {"pairing_hold_ms": 4000}, "power": {"idle_sleep_s": 0}}


async def test_hold_the_bell_in_the_page_see_the_siren_the_texts_then_cancel(tmp_path, chromium):
    from playwright.async_api import async_playwright

    (tmp_path / "bell.json").write_text(json.dumps(BELL), encoding="utf-8")
    relay_toml = write_config(tmp_path / "relay.toml", {
        "owner": "김지은", "database": tmp_path / "relay.sqlite", "cancel_window_s": 60,
        "guardians": [{"name": "어머니", "number": GUARDIAN, "language": "ko"}],
        "devices": [{"name": "비상벨", "passkey": "123456"}]})
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    async with SimProcess("--quiet", "--no-commands", "--flash", str(tmp_path / "bell"), "--config",
                          str(tmp_path / "bell.json"), "--pairing", "--relay", str(relay_toml), "--ui") as sim:
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            try:
                page = await browser.new_page(viewport={"width": 1280, "height": 900})
                await page.goto(sim.facts["ui"])
                await page.wait_for_selector("#link.up", timeout=30_000)
                # paired at power-up (--pairing): the relay says it is connected
                await page.wait_for_function(
                    "document.getElementById('answers').textContent.includes('connected to 비상벨')", timeout=90_000)
                await page.screenshot(path=str(SCREENSHOTS / "1-paired.png"))
                button = await page.query_selector("#button-bell")
                box = await button.bounding_box()
                await page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
                await page.mouse.down()
                await page.wait_for_timeout(3400)  # the owner holds 3 s
                held = await page.inner_text("#hold-bell")
                await page.mouse.up()
                assert held.startswith("held 3."), held
                await page.wait_for_selector("#siren-bell.on", timeout=15_000)
                assert "Hz" in await page.inner_text("#siren-bell")
                guardian_text = f'.phone[data-number="{GUARDIAN}"] .msg[data-kind="alarm"]'
                await page.wait_for_selector(guardian_text, timeout=60_000)
                assert "김지은" in await page.inner_text(guardian_text)
                await page.screenshot(path=str(SCREENSHOTS / "2-alarm.png"))
                await page.click("#owner-cancel")
                await page.wait_for_selector(f'.phone[data-number="{GUARDIAN}"] .msg[data-kind="cancelled"]',
                                             timeout=60_000)
                await page.wait_for_selector("#siren-bell:not(.on)", timeout=30_000)
                await page.screenshot(path=str(SCREENSHOTS / "3-cancelled.png"))
            finally:
                await browser.close()
    assert sim.returncode == 0
    assert {path.name for path in SCREENSHOTS.glob("*.png")} >= {"1-paired.png", "2-alarm.png", "3-cancelled.png"}


def test_the_page_needs_nothing_from_the_network():
    page = (Path(__file__).parents[1] / "host/jikimi_host/sim/ui/bench.html").read_text(encoding="utf-8")
    for outside in ("http://", "https://", "//cdn", "<link ", "src=\""):
        assert outside not in page, outside
