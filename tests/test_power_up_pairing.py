"""The owner's power-up pairing hold, as the rig plays it (issue 12): the hand lets go when the
board shows that the hold is long enough (the LED comes on, silently), not a fixed time after the
process started. A board whose app comes up late must still open the pairing window, and never
raise an alarm for what was a pairing gesture."""

from __future__ import annotations

import pytest
from jikimi_host.rig.firmware import CONFIG, firmware_board, log_records
from jikimi_host.sim.hands import hold_button_through_power_up
from jikimi_host.errors import WaitTimeout
from jikimi_host.wait import until

pytestmark = pytest.mark.micropython

LATE_S = 1.5  # longer than the old helper's 0.3 s slack, and than hold_ms (1 s)

# main.py as a slow cold start would run it: before the board module (no side channel yet), or
# after it (pins and outputs up, the app not yet).
LATE_BEFORE_BOARD = f"import time\ntime.sleep({LATE_S})\nimport board\nfrom jikimi.app import run\nrun(board)\n"
LATE_AFTER_BOARD = f"import time\nimport board\ntime.sleep({LATE_S})\nfrom jikimi.app import run\nrun(board)\n"
NEVER_STARTS = "import time\nprint('stuck before the app')\nwhile True:\n    time.sleep(1)\n"


@pytest.fixture
async def board(tmp_path, radio):
    async for each in firmware_board(tmp_path / "flash", radio, CONFIG):
        yield each


def core_messages(board) -> list[str]:
    return [r.get("msg", "") for r in log_records(board) if r.get("k") == "core"]


async def outcome(board, after: int = 0) -> None:
    """Until the power-up ends either way: the pairing window open, or an alarm."""
    def settled() -> bool:
        return any(r.get("k") == "core" and (r.get("msg") == "pairing open" or r.get("msg", "").startswith(
            ("gesture hold", "event alarm_raised"))) for r in log_records(board)[after:])

    await until(settled, what=f"pairing open, or an alarm\n{board.console.tail()}")


def assert_pairing_not_alarm(board) -> None:
    messages = core_messages(board)
    assert "gesture pairing" in messages, messages
    assert "gesture hold" not in messages, messages
    assert not [m for m in messages if m.startswith("event alarm_raised")], messages
    assert not any(o.value for o in board.pwm_history("buzzer")), "the siren sounded"


@pytest.mark.parametrize("main", [LATE_BEFORE_BOARD, LATE_AFTER_BOARD], ids=["before-board", "after-board"])
async def test_a_board_whose_app_starts_late_still_opens_the_pairing_window(board, main):
    board.deploy({"main.py": main})
    hold_ms = CONFIG["gestures"]["pairing_hold_ms"]
    ready = await hold_button_through_power_up(board, hold_ms)
    await outcome(board)
    assert_pairing_not_alarm(board)
    assert "pairing open" in core_messages(board)
    assert ready.host_s - board.boot.started_s >= hold_ms / 1000 + LATE_S  # it waited for the app


async def test_on_time_the_hold_is_released_inside_the_window_and_again_after_a_power_cut(board):
    hold_ms = CONFIG["gestures"]["pairing_hold_ms"]
    for _ in range(2):  # a second power-up must not react to the first one's LED
        mark = len(log_records(board))
        await hold_button_through_power_up(board, hold_ms)
        await outcome(board, mark)
        assert_pairing_not_alarm(board)
        assert "pairing open" in [r.get("msg") for r in log_records(board)[mark:]]
        await board.power_cut()


async def test_a_board_that_never_signals_fails_with_its_console(board):
    board.deploy({"main.py": NEVER_STARTS})
    with pytest.raises(WaitTimeout, match="(?s)the board to show it was ready to pair.*stuck before the app"):
        await hold_button_through_power_up(board, 0, timeout_s=2.0)
    assert board.levels[board.pin("button")] != board.active_level("button")  # the owner let go
