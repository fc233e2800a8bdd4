"""Bad input to the `jikimi` command ends in a clear error and a non-zero exit, never a traceback
(issue 17): each case runs the real CLI in a subprocess, as a user would.

No board, no BLE, no modem: the relay configs use the sim backend and numbers in the 010-0000
block (no one is reachable there); `flash` is given a port that does not exist, so a config it
accepted by mistake could still touch nothing.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

DEEP = 100_000  # far past Python's recursion limit (1000)
# The relay config every relay case starts from: one guardian, one device, the sim backend.
RELAY_TOML = """\
owner = "Kim"
{extra}
[[guardians]]
name = "Mom"
number = "+821000000001"

[[devices]]
name = "bell"
passkey = "123456"
"""


def jikimi(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jikimi_host.cli", *argv], capture_output=True, text=True,
                          timeout=60, cwd=cwd)


def refused(done: subprocess.CompletedProcess, *named: str, code: int = 2) -> None:
    """Exit `code`, no traceback, and stderr names each of `named`."""
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == code, (done.returncode, done.stdout, done.stderr)
    for name in named:
        assert name in done.stderr, (name, done.stderr)


def relay_config(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "relay.toml"
    path.write_text(RELAY_TOML.format(extra=extra), encoding="utf-8")  # the database beside it, in tmp_path
    return path


DEEP_JSON = {"array": "[" * DEEP + "]" * DEEP, "object": '{"a":' * DEEP + "1" + "}" * DEEP}
DEEP_TOML = {"array": "x = " + "[" * DEEP + "]" * DEEP, "table": "x = " + "{a=" * DEEP + "1" + "}" * DEEP}


@pytest.mark.parametrize("command", ["flash", "battery-life", "relay", "encode"])
@pytest.mark.parametrize("shape", ["array", "object"])
def test_deeply_nested_json_or_toml_is_a_config_error(tmp_path, command, shape):
    if command == "relay":
        config = relay_config(tmp_path, DEEP_TOML["array" if shape == "array" else "table"])
        refused(jikimi("relay", "--config", str(config), cwd=tmp_path), str(config), "nested too deeply")
        return
    if command == "encode":  # on the command line: one argument may be 128 KiB at most
        message = "[" * 50_000 + "]" * 50_000 if shape == "array" else '{"a":' * 20_000 + "1" + "}" * 20_000
        # encode and decode exit 1 for a message they cannot take, as before
        refused(jikimi("encode", message, cwd=tmp_path), "nested too deeply", code=1)
        return
    config = tmp_path / "config.json"
    config.write_text(DEEP_JSON[shape])
    argv = {"flash": ("flash", "--board", "esp32_devkitc", "--port", str(tmp_path / "ttyUSB9")),
            "battery-life": ("battery-life",)}[command]
    done = jikimi(*argv, "--config", str(config), cwd=tmp_path)
    refused(done, str(config), "nested too deeply")
    assert "no such port" not in done.stderr  # the config is checked before any port


@pytest.mark.parametrize("field", ["cancel_window_s", "retry_base_s", "heartbeat_s"])
def test_an_integer_past_a_float_is_a_config_error_naming_the_field(tmp_path, field):
    config = relay_config(tmp_path, f"{field} = {10**400}")
    refused(jikimi("relay", "--config", str(config), cwd=tmp_path), f"{field}: must be", "an integer of 401 digits")


def test_an_integer_past_python_s_digit_limit_is_a_config_error(tmp_path):
    config = relay_config(tmp_path, "cancel_window_s = 1" + "0" * 5000)
    refused(jikimi("relay", "--config", str(config), cwd=tmp_path), str(config), "4300 digits")


def test_a_device_config_that_is_not_utf8_is_refused(tmp_path):
    config = tmp_path / "config.json"
    config.write_bytes('{"passkey": "123456", "board": "esp32_devkitc", "name": "caf\xe9"}'.encode("latin-1"))
    done = jikimi("battery-life", "--config", str(config), cwd=tmp_path)
    refused(done, str(config), "not UTF-8")
    assert done.stderr.count(str(config)) == 1  # named once, not "FILE: FILE: ..."


@pytest.mark.parametrize("transport", ["bogus:xyz", "nonsense", "usb"])
def test_a_transport_the_relay_does_not_know_is_bad_input(tmp_path, transport):
    config = relay_config(tmp_path)
    done = jikimi("relay", "--config", str(config), "--transport", transport, cwd=tmp_path)
    refused(done, repr(transport), "tcp-client:HOST:PORT", "usb:0", "serial:", "or os for")


def test_a_usb_controller_that_is_not_there_is_a_clear_error(tmp_path):
    # usb:7 is a well-formed transport with no such controller (here: maybe no USB at all). Exit
    # 1, as for a serial port or TCP address that does not answer: it may be there after a restart.
    config = relay_config(tmp_path)
    done = jikimi("relay", "--config", str(config), "--transport", "usb:7", cwd=tmp_path)
    refused(done, "cannot open the HCI transport 'usb:7'", "tcp-client:HOST:PORT", code=1)


FULL_WIDTH = "\uff11\uff12\uff13\uff14\uff15\uff16"  # "１２３４５６": CPython's isdigit() takes it
ARABIC_INDIC = "\u0661\u0662\u0663\u0664\u0665\u0666"


@pytest.mark.parametrize("passkey", [FULL_WIDTH, ARABIC_INDIC])
@pytest.mark.parametrize("command", ["provision", "sim", "relay"])
def test_a_passkey_of_other_digits_is_refused_as_the_device_would(tmp_path, command, passkey):
    if command == "provision":  # validated before the port is opened
        argv = ["provision", "--board", "esp32_devkitc", "--port", str(tmp_path / "ttyUSB9"), "--passkey", passkey]
    elif command == "sim":  # validated before a board is started
        argv = ["sim", "--passkey", passkey]
    else:
        config = relay_config(tmp_path)
        config.write_text(config.read_text(encoding="utf-8").replace('"123456"', f'"{passkey}"'), encoding="utf-8")
        argv = ["relay", "--config", str(config)]
    refused(jikimi(*argv, cwd=tmp_path), "passkey: must be")


@pytest.mark.parametrize("option, value", [
    ("--capacity-mah", "nan"), ("--capacity-mah", "inf"), ("--capacity-mah", "0"), ("--capacity-mah", "-5"),
    ("--capacity-mah", "1e308"), ("--presses-per-day", "-100"), ("--presses-per-day", "nan"),
    ("--alarms-per-month", "-1"), ("--alarms-per-month", "inf"),
])
def test_battery_life_refuses_numbers_outside_the_model(tmp_path, option, value):
    done = jikimi("battery-life", option, value, cwd=tmp_path)
    refused(done, f"argument {option}: must be a number", f"got {value}")
    assert "days" not in done.stdout


@pytest.mark.parametrize("message, named", [
    ('{"type": "arm", "counter": true}', "counter: must be an integer, got true"),
    ('{"type": "arm", "counter": false}', "counter: must be an integer, got false"),
    ('{"type": ["arm"]}', 'type: must be a message name'),
])
def test_encode_refuses_what_is_not_a_field_value(tmp_path, message, named):
    done = jikimi("encode", message, cwd=tmp_path)
    refused(done, named, code=1)  # encode's exit for a message it cannot take
    assert done.stdout == ""


@pytest.mark.parametrize("command", ["flash", "provision"])
@pytest.mark.parametrize("timeout", ["-1", "0", "nan", "inf"])
def test_a_timeout_must_be_a_finite_positive_number_of_seconds(tmp_path, command, timeout):
    done = jikimi(command, "--board", "esp32_devkitc", "--port", str(tmp_path / "ttyUSB9"), "--timeout", timeout,
                  cwd=tmp_path)
    refused(done, "argument --timeout: must be a number above 0 and at most 86400", f"got {timeout}")


@pytest.mark.parametrize("extra, wanted, unwanted", [
    # the relation checks used to quote the stand-in for a bad value (10, 1), not the file's
    ("heartbeat_s = 100\nunreachable_after_s = nan", "unreachable_after_s: must be 10..604800 seconds, got nan",
     "must be at least heartbeat_s"),
    ("retry_max_s = nan", "retry_max_s: must be 1..86400 seconds, got nan", "must be at least retry_base_s"),
    ("heartbeat_s = nan\nunreachable_after_s = 50", "heartbeat_s: must be 10..86400 seconds, got nan",
     "must be at least heartbeat_s (10)"),
    ("retry_base_s = inf\nretry_max_s = 100", "retry_base_s: must be 1..3600 seconds, got inf",
     "must be at least retry_base_s"),
    ("cancel_window_s = 2.0", "cancel_window_s: must be 5..600 seconds, got 2.0", None),
    ("heartbeat_s = 80000.25\nunreachable_after_s = 20000.5",
     "unreachable_after_s: must be at least heartbeat_s (80000.25), got 20000.5", None),  # not 80000.2 (:g)
    ('[location]\nsource = "gpsd"\ngpsd = "127.0.0.1:' + "9" * 5000 + '"',
     "location.gpsd: the port must be 1..65535, got 999999999999... (5000 digits)", None),
])
def test_relay_numeric_errors_quote_the_value_given(tmp_path, extra, wanted, unwanted):
    config = relay_config(tmp_path, extra)
    done = jikimi("relay", "--config", str(config), cwd=tmp_path)
    refused(done, wanted)
    if unwanted is not None:
        assert unwanted not in done.stderr, done.stderr
