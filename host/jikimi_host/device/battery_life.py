"""Battery-life estimate for a board and a device config: a small model whose assumptions are
written down in firmware/POWER.md. Average current = the time-weighted mix of deep sleep,
awake periods (boot, then `power.idle_sleep_s` advertising/connected) and the siren.

Awake periods per day come from the heartbeat timer (every `ble.heartbeat_s`), from button
presses that are not alarms (each wakes the board), and from alarms (awake until the phone has
acknowledged, plus the siren for `alarm.max_siren_ms` unless silenced).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from jikimi import config as device_config
from jikimi_host.device.boards import load_board
from jikimi_host.errors import UsageError

DAY_S = 86400.0


class BatteryLifeError(UsageError):
    """A figure the model cannot use (exit 2)."""


@dataclass(frozen=True)
class Usage:
    presses_per_day: float = 5.0  # pocket presses, checks, the odd single press
    alarms_per_month: float = 1.0
    alarm_awake_s: float = 300.0  # awake until the phone has acknowledged and the incident ends
    siren_s: float | None = None  # None: the config's alarm.max_siren_ms (nobody silences it)
    usable_fraction: float = 0.8  # capacity actually available: cut-off voltage, cold, ageing
    self_discharge_pct_per_month: float = 2.0  # a Li-ion/LiPo cell at room temperature


@dataclass(frozen=True)
class Estimate:
    board: str
    capacity_mah: float
    average_ua: float
    days: float
    sleep_ua: float  # each part's share of the average current
    heartbeat_ua: float
    presses_ua: float
    alarms_ua: float
    self_discharge_ua: float

    def as_dict(self) -> dict[str, float | str]:
        return asdict(self)




def estimate(board: str, capacity_mah: float, config: dict | None = None, usage: Usage = Usage()) -> Estimate:
    """Days on one charge for `board` with a validated device `config` (defaults if None)."""
    if not 0 < capacity_mah < math.inf:  # nan too
        raise BatteryLifeError(f"capacity must be positive, got {capacity_mah} mAh")
    for name in ("presses_per_day", "alarms_per_month"):
        if not 0 <= getattr(usage, name) < math.inf:
            raise BatteryLifeError(f"{name} must be 0 or more, got {getattr(usage, name)}")
    power = load_board(board).power
    if config is None:
        config, errors = device_config.validate({"passkey": "000000", "board": board})
        assert not errors, errors
    awake_ua = power["awake_ma"] * 1000.0
    boot_s = power["boot_ms"] / 1000.0
    idle_s = config["power"]["idle_sleep_s"]
    if idle_s == 0:  # never sleeps: awake all the time
        sleep_ua = heartbeat_ua = presses_ua = 0.0
        base_ua = awake_ua
    else:
        wake_s = boot_s + idle_s  # one wake-up: boot, then quiet for idle_sleep_s
        heartbeat_ua = awake_ua * wake_s / config["ble"]["heartbeat_s"]
        presses_ua = awake_ua * wake_s * usage.presses_per_day / DAY_S
        sleep_ua = power["sleep_ua"]
        base_ua = 0.0
    siren_s = usage.siren_s if usage.siren_s is not None else config["alarm"]["max_siren_ms"] / 1000.0
    alarms_per_day = usage.alarms_per_month * 12 / 365
    alarm_charge = awake_ua * (boot_s + usage.alarm_awake_s) + power["siren_ma"] * 1000.0 * siren_s
    alarms_ua = alarm_charge * alarms_per_day / DAY_S
    usable_uah = capacity_mah * 1000.0 * usage.usable_fraction
    self_discharge_ua = capacity_mah * 1000.0 * usage.self_discharge_pct_per_month / 100 / (DAY_S * 365 / 12 / 3600)
    average_ua = base_ua + sleep_ua + heartbeat_ua + presses_ua + alarms_ua + self_discharge_ua
    days = usable_uah / average_ua / 24.0
    return Estimate(board, capacity_mah, average_ua, days, sleep_ua + base_ua, heartbeat_ua, presses_ua,
                    alarms_ua, self_discharge_ua)
