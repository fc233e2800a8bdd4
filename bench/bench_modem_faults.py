"""Modem session recovery: for each fault the fake modem injects (relay/fake_modem.py), the time
from the first send attempt to the SMS in the fake's log (recovery + send), p50 and max over N
rounds, beside the same send with no fault (the baseline, in the same run).

    .venv/bin/python bench/bench_modem_faults.py [--rounds N] [--boot-s S] [--replug-s S]

Each round is a fresh fake modem on a pty behind a symlink and a fresh `Modem` with the relay's
defaults (1 s wake-up tries, 0.5 s polls, retries backed off from 1 s), not yet opened: the send
opens the port and starts the session, as the relay's first alert does. The rows marked "session
up" open it first and inject the fault between the session start and the send. The fake answers
at once: a real modem adds its own latency to every command, so these figures are what the
recovery itself costs on this host.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jikimi_host.relay.fake_modem import FakeModem, Faults
from jikimi_host.relay.modem import Modem
from stats import pct

GUARDIAN = "+821000000008"  # fictional; only the fake modem "sends"
ALERT = "[지키미] 긴급: 김지수 님이 비상벨을 눌렀습니다. 20초 후 112에 자동 신고됩니다."


class TimedFake(FakeModem):
    """Stamps each event with this machine's clock as the fake logs it: "the network got it"."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.logged_at: list[float] = []

    def _log_event(self, event: dict[str, Any]) -> None:
        self.logged_at.append(time.perf_counter())
        super()._log_event(event)


@dataclass
class Case:
    label: str
    faults: dict[str, Any] = field(default_factory=dict)
    # with the session up: what happens to the modem between the session start and the send
    meanwhile: Callable[[FakeModem], None] | None = None


def cases(boot_s: float, replug_s: float) -> list[Case]:
    def replug(fake: FakeModem) -> None:
        fake.replug(replug_s)

    def silent_restart(fake: FakeModem) -> None:
        fake.reboot(announce=False)
        fake.wait_ready()

    def announced_restart(fake: FakeModem) -> None:
        fake.reboot()
        fake.wait_ready()

    return [
        Case("none, cold start (its baseline)"),
        Case("ERROR to the first AT", {"error_first_at": 1}),
        Case("ERROR to all 3 wake-up tries", {"error_first_at": 3}),
        Case("echo off at start (a saved ATE0)", {"echo_on_start": False}),
        Case("junk on the line at open", {"junk_on_open": b"\r\n+CMGS: 17\r\n\r\nOK\r\n\xff"}),
        Case("stale > prompt, old PDU typed", {"stale_prompt": True}),
        Case(f"booting for {boot_s:g} s", {"boot_s": boot_s}),
        Case("SIM busy (CME 14) x3", {"sim_busy": 3}),
        Case("+CPIN: NOT READY x3", {"sim_not_ready": 3}),
        Case("not registered (stat 2) x4", {"unregistered": 4}),
        Case("LTE only (CEREG registered)", {"lte_only": True}),
        Case("no AT+CEREG, searching x2", {"no_cereg": True, "unregistered": 2}),
        Case("none, session up (its baseline)", meanwhile=lambda fake: None),
        Case("silent restart (echo on again), session up", meanwhile=silent_restart),
        Case("restart with RDY, session up", meanwhile=announced_restart),
        Case(f"port gone for {replug_s:g} s, session up", meanwhile=replug),
    ]


def first_send_to_logged(folder: Path, case: Case, index: int) -> tuple[float, int]:
    """Milliseconds from send_sms() to the SMS in the fake's log; and how many command lines the
    modem received on the way."""
    fake = TimedFake(folder / f"net{index}.jsonl", Faults(**case.faults), link=folder / f"modem{index}")
    fake.start()
    modem = Modem(str(fake.link))
    try:
        if case.meanwhile is not None:
            modem.open()
            case.meanwhile(fake)
        commands_before = len(fake.commands)
        started = time.perf_counter()
        modem.send_sms(GUARDIAN, ALERT)
        fake.wait_for_events(1, kind="sms", timeout_s=60)
        sms = [e for e in fake.events if e["kind"] == "sms"]
        if len(sms) != 1 or sms[0]["text"] != ALERT:
            raise AssertionError(f"{case.label}: the network got {sms}, wanted the alert once")
        return (fake.logged_at[0] - started) * 1000, len(fake.commands) - commands_before
    finally:
        modem.close()
        fake.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--boot-s", type=float, default=2.0, help="how long the booting modem is deaf")
    parser.add_argument("--replug-s", type=float, default=1.0, help="how long the port is gone")
    args = parser.parse_args()
    logging.getLogger("jikimi_host.relay.modem").setLevel(logging.ERROR)  # the retries' warnings
    rows: list[tuple[Case, list[float], int]] = []
    with tempfile.TemporaryDirectory() as tmp:
        index = 0
        for case in cases(args.boot_s, args.replug_s):
            times: list[float] = []
            commands = 0
            for _ in range(args.rounds):
                elapsed_ms, commands = first_send_to_logged(Path(tmp), case, index)
                times.append(elapsed_ms)
                index += 1
            rows.append((case, times, commands))
    # each row beside the no-fault send that starts the same way: a cold start, or the session up
    cold = pct(rows[0][1], 0.5)
    warm = next(pct(times, 0.5) for case, times, _ in rows if case.meanwhile is not None)
    print(f"Modem faults → the SMS in the fake modem's log (first send attempt → logged; n={args.rounds} each;")
    print("Modem defaults: 1 s wake-up tries, 0.5 s polls, retry backoff from 1 s):")
    print(f"  {'fault':<44} {'p50':>10} {'max':>10} {'over baseline':>15} {'AT lines':>9}")
    for case, times, commands in rows:
        p50 = pct(times, 0.5)
        baseline = warm if case.meanwhile is not None else cold
        print(f"  {case.label:<44} {p50:7.1f} ms {max(times):7.1f} ms {p50 - baseline:+12.1f} ms {commands:9d}")


if __name__ == "__main__":
    main()
