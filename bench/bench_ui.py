"""The bench page's latency (issue 18): a button pressed in the page (Chromium, headless, driven by
Playwright with the mouse) → the firmware sees the edge → the siren shown in the page, beside a
baseline of the same hold made straight on the virtual board (no page, no WebSocket).

    .venv/bin/python bench/bench_ui.py [--holds N]

Each hold is the config's hold_ms (500 ms, the shortest the config takes) and a margin; the
alarm it raises is cancelled by a second hold before the next (GAP_S apart: about 5 s a hold). Times are wall-clock on this
machine (the page's performance.timeOrigin + now(), the host's time.time()): "press → edge" is to
when the firmware's log line for the edge reached the host; "siren → page" from the firmware
setting the PWM to the page drawing it; "press → siren shown" has the hold taken off.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from jikimi_host.sim.controls import Bench, BenchBoard
from jikimi_host.sim.radio import VirtualRadio
from jikimi_host.sim.run import deploy_firmware
from jikimi_host.sim.board import VirtualBoard
from jikimi_host.sim.ui.server import BenchUI
from jikimi_host.wait import until
from stats import pct

HOLD_MS = 500
# Between holds, longer than the config's multi_window_ms (1.5 s: presses closer than that are
# one gesture) and, before the first, its boot_window_ms (2 s: a press then may be the pairing hold).
GAP_S = 1.7
BOOT_WINDOW_S = 2.2
CONFIG = {"passkey": "123456", "board": "sim", "roles": ["panic"], "gestures": {"hold_ms": HOLD_MS},
          "power": {"idle_sleep_s": 0}}
WATCH = """() => {
  window.sirenOnAt = [];
  const siren = document.getElementById('siren-bell');
  new MutationObserver(() => { if (siren.classList.contains('on') && !siren.dataset.seen) {
      siren.dataset.seen = '1'; window.sirenOnAt.push(performance.timeOrigin + performance.now()); }
    if (!siren.classList.contains('on')) delete siren.dataset.seen; })
    .observe(siren, {attributes: true, attributeFilter: ['class']});
}"""


def wall(monotonic_s: float) -> float:
    return time.time() - (time.monotonic() - monotonic_s)


def show(label: str, values: list[float]) -> None:
    print(f"  {label:<48} p50 {pct(values, 0.5):8.1f} ms   p99 {pct(values, 0.99):8.1f} ms   (n={len(values)})")


def siren_on_since(board: VirtualBoard, mark: int):
    return next((o for o in board.outputs[mark:] if o.pin == board.pin("buzzer") and o.freq and o.value), None)


def siren_off(board: VirtualBoard) -> bool:
    history = board.pwm_history("buzzer")
    return not history or not history[-1].value


def edge_logged_since(board: VirtualBoard, mark: int) -> float | None:
    for at, line in board.console.lines[mark:]:
        if '"input button 1"' in line:
            return at
    return None


async def cancel(board: VirtualBoard, press) -> None:
    await asyncio.sleep(GAP_S)
    await press()
    await until(lambda: siren_off(board), 10, "the siren to stop after the cancel", log=board.console.tail)
    await asyncio.sleep(0.3)


async def baseline(board: VirtualBoard, holds: int) -> list[float]:
    """press → siren on, minus the hold, with the board's own API (host clock)."""
    figures = []

    async def hold() -> None:
        await board.press("button", hold_s=HOLD_MS / 1000 + 0.25)

    for _ in range(holds):
        await asyncio.sleep(GAP_S)
        mark, pressed = len(board.outputs), time.monotonic()
        await hold()
        on = await until(lambda: siren_on_since(board, mark), 10, "the siren", log=board.console.tail)
        figures.append((on.host_s - pressed) * 1000 - HOLD_MS)
        await cancel(board, hold)
    return figures


async def through_the_page(board: VirtualBoard, ui: BenchUI, browser_binary: str, holds: int):
    from playwright.async_api import async_playwright

    press_to_edge, siren_to_page, press_to_siren = [], [], []
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=browser_binary, args=["--no-sandbox"])
        try:
            page = await browser.new_page()
            await page.goto(ui.url)
            await page.wait_for_selector("#link.up")
            await page.evaluate(WATCH)
            box = await (await page.query_selector("#button-bell")).bounding_box()
            await page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)

            async def hold() -> None:
                await page.mouse.down()
                await page.wait_for_timeout(HOLD_MS + 250)
                await page.mouse.up()

            for i in range(holds):
                await asyncio.sleep(GAP_S)
                lines, outputs = len(board.console.lines), len(board.outputs)
                await hold()
                await page.wait_for_function(f"window.sirenOnAt.length > {i}", timeout=10_000)
                down_at = float(await page.get_attribute("#button-bell", "data-down-at")) / 1000
                shown_at = await page.evaluate(f"window.sirenOnAt[{i}]") / 1000
                edge = await until(lambda: edge_logged_since(board, lines), 10, "the edge in the log")
                on = await until(lambda: siren_on_since(board, outputs), 10, "the siren")
                press_to_edge.append((wall(edge) - down_at) * 1000)
                siren_to_page.append((shown_at - wall(on.host_s)) * 1000)
                press_to_siren.append((shown_at - down_at) * 1000 - HOLD_MS)
                await cancel(board, hold)
        finally:
            await browser.close()
    return press_to_edge, siren_to_page, press_to_siren


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--holds", type=int, default=20)
    args = parser.parse_args()
    browser_binary = os.environ.get("JIKIMI_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not browser_binary:
        sys.exit("bench_ui: no Chromium here (apt-get install chromium, or JIKIMI_CHROMIUM=PATH)")
    with tempfile.TemporaryDirectory() as tmp:
        radio = VirtualRadio()
        board = VirtualBoard(Path(tmp) / "bell", radio=radio)
        deploy_firmware(board)
        board.deploy({"config.json": json.dumps(CONFIG)})
        ui = BenchUI(Bench([BenchBoard("bell", board, board.start)]))
        try:
            await board.start()
            await until(lambda: any('"ready"' in line for _, line in board.console.lines), 60, "the app ready")
            await asyncio.sleep(BOOT_WINDOW_S)
            await ui.start()
            print(f"The bench page (Chromium headless, Playwright's mouse), {args.holds} holds of {HOLD_MS} ms + 250 ms:")
            direct = await baseline(board, args.holds)
            show("baseline: board.press -> siren on, beyond the hold", direct)
            press_to_edge, siren_to_page, press_to_siren = await through_the_page(board, ui, browser_binary, args.holds)
            show("page press -> the firmware logs the edge", press_to_edge)
            show("firmware sets the siren PWM -> shown in page", siren_to_page)
            show("page press -> siren shown, beyond the hold", press_to_siren)
            print(f"  the page's cost over the baseline (p50): {pct(press_to_siren, 0.5) - pct(direct, 0.5):.1f} ms")
        finally:
            await ui.close()
            await board.stop()
            await radio.close()


if __name__ == "__main__":
    asyncio.run(main())
