"""The battery-life model and `jikimi battery-life`."""

from __future__ import annotations

import json

import pytest

from jikimi import config as device_config
from jikimi_host.device.battery_life import BatteryLifeError, Usage, estimate
from jikimi_host.errors import UsageError
from jikimi_host.cli import main


def config(**sections) -> dict:
    data = {"passkey": "123456", "board": "esp32_devkitc"}
    data.update(sections)
    validated, errors = device_config.validate(data)
    assert not errors
    return validated


def test_the_defaults_give_months_and_the_parts_add_up():
    result = estimate("esp32_devkitc", 1000)
    assert 90 < result.days < 400
    parts = result.sleep_ua + result.heartbeat_ua + result.presses_ua + result.alarms_ua + result.self_discharge_ua
    assert parts == pytest.approx(result.average_ua)
    # 1000 mAh x 0.8 usable over the average current
    assert result.days == pytest.approx(800_000 / result.average_ua / 24)


def test_more_frequent_heartbeats_and_never_sleeping_cost_battery():
    hourly = estimate("esp32_devkitc", 1000, config(ble={"heartbeat_s": 3600}))
    quarterly = estimate("esp32_devkitc", 1000, config(ble={"heartbeat_s": 900}))
    never_sleeps = estimate("esp32_devkitc", 1000, config(power={"idle_sleep_s": 0}))
    assert quarterly.days < hourly.days
    assert never_sleeps.days < 1.0  # 40 mA all day: a 1000 mAh cell is flat within a day
    assert 1.7 * hourly.days < estimate("esp32_devkitc", 2000).days < 2 * hourly.days  # self-discharge grows too
    assert estimate("esp32_devkitc", 1000, usage=Usage(alarms_per_month=30)).days < hourly.days


def test_bad_input_is_named():
    with pytest.raises(UsageError, match="unknown board 'esp32-devkit'"):
        estimate("esp32-devkit", 1000)
    with pytest.raises(BatteryLifeError, match="capacity must be positive"):
        estimate("esp32_devkitc", 0)


def test_the_cli_prints_an_estimate_json_and_clear_errors(tmp_path, capsys):
    assert main(["battery-life", "--board", "esp32c3", "--capacity-mah", "500", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["board"] == "esp32c3" and result["days"] > 30
    bad = tmp_path / "config.json"
    bad.write_text(json.dumps({"passkey": "123456", "board": "esp32_devkitc", "power": {"idle_sleep": 5}}))
    assert main(["battery-life", "--config", str(bad)]) == 2
    assert "power.idle_sleep: unknown key (did you mean idle_sleep_s?)" in capsys.readouterr().err
    assert main(["battery-life", "--config", str(tmp_path / "missing.json")]) == 2
    assert "cannot read" in capsys.readouterr().err
