"""The device config validator: defaults, one precise message per problem, unknown keys."""

import json
import re

import pytest

from jikimi import config as cfg
from jikimi_host.paths import FIRMWARE_DIR

MINIMAL = {"passkey": "093514", "board": "esp32_devkitc"}


def errors_for(**changes):
    return cfg.validate({**MINIMAL, **changes})[1]


def test_a_minimal_config_gets_every_documented_default():
    config, errors = cfg.validate(MINIMAL)
    assert errors == []
    assert config["roles"] == ["panic"]
    assert config["gestures"]["hold_ms"] == 3000
    assert config["gestures"]["multi_window_ms"] == 1500
    assert config["gestures"]["pairing_hold_ms"] == 10000
    assert config["alarm"]["cancel_window_ms"] == 20000
    assert config["test_console"] is False


def test_every_default_is_documented_in_core_md():
    doc = (FIRMWARE_DIR / "CORE.md").read_text()
    for section, fields in cfg.SECTIONS:
        for key, default, low, high in fields:
            row = re.search(rf"^\| `{section}\.{key}` \| (\d+) \| (\d+)[–-](\d+) \|", doc, re.M)
            assert row, f"{section}.{key} is not in CORE.md's config table"
            assert tuple(map(int, row.groups())) == (default, low, high), f"{section}.{key}"


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"passkey": "12345"}, "passkey: must be a string of exactly 6 digits"),
        ({"passkey": 123456}, "passkey: must be a string of exactly 6 digits"),
        ({"passkey": "12345a"}, "passkey: must be a string of exactly 6 digits"),
        ({"passkey": "\uff11\uff12\uff13\uff14\uff15\uff16"}, "passkey: must be a string of exactly 6 digits"),
        ({"board": "ESP32"}, "board: must be a board folder name"),
        ({"roles": []}, "roles: must be a non-empty list"),
        ({"roles": ["panic", "siren"]}, "roles: unknown role 'siren'"),
        ({"roles": ["door", "door"]}, "roles: 'door' is listed twice"),
        ({"gestures": {"hold_ms": 100}}, "gestures.hold_ms: must be an integer from 500 to 30000, got 100"),
        ({"gestures": {"hold_ms": "3000"}}, "gestures.hold_ms: must be an integer from 500 to 30000"),
        ({"gestures": {"hold_ms": True}}, "gestures.hold_ms: must be an integer"),
        ({"gestures": {"hold": 3000}}, "gestures.hold: unknown key (did you mean hold_ms?)"),
        ({"sirne": {}}, "sirne: unknown key (did you mean siren?)"),
        ({"door": []}, "door: must be an object"),
        ({"test_console": 1}, "test_console: must be true or false"),
        ({"name": "x" * 33}, "name: must be a string of at most 32 characters"),
        ({"gestures": {"hold_ms": 12000}}, "gestures.pairing_hold_ms: must be longer than gestures.hold_ms"),
        ({"battery": {"low_mv": 3600}}, "battery: need empty_mv < low_mv < recover_mv < full_mv"),
        ({"siren": {"low_hz": 5000}}, "siren.low_hz: must not be above siren.high_hz"),
    ],
)
def test_each_bad_field_gets_a_message_naming_it(changes, message):
    errors = errors_for(**changes)
    assert any(message in e for e in errors), errors


def test_required_fields_and_every_problem_at_once():
    _, errors = cfg.validate({"gestures": {"hold_ms": 1}, "colour": "red"})
    assert any(e.startswith("passkey: required") for e in errors)
    assert any(e.startswith("board: required") for e in errors)
    assert any(e.startswith("gestures.hold_ms:") for e in errors)
    assert any(e.startswith("colour: unknown key") for e in errors)


def test_the_passkey_is_never_echoed():
    assert not any("98765" in e for e in errors_for(passkey="98765"))


def test_known_boards_are_checked_when_given():
    _, errors = cfg.validate({**MINIMAL, "board": "esp32_c9"}, boards=["esp32_devkitc", "sim"])
    assert errors == ["board: unknown board 'esp32_c9'; known: esp32_devkitc, sim"]


def test_load_reports_bad_json_and_missing_files(tmp_path):
    path = tmp_path / "config.json"
    with pytest.raises(cfg.ConfigError, match="cannot read"):
        cfg.load(str(path))
    path.write_text("{'passkey': 1}")
    with pytest.raises(cfg.ConfigError, match="not valid JSON"):
        cfg.load(str(path))
    path.write_text(json.dumps({**MINIMAL, "roles": ["door", "pull_pin"]}))
    assert cfg.load(str(path))["roles"] == ["door", "pull_pin"]


@pytest.mark.micropython
def test_micropython_gives_the_same_messages(micropython, tmp_path):
    bad = {"passkey": "1", "board": "X", "roles": ["a", "panic", "panic"], "gestures": {"hold": 1, "hold_ms": 2},
           "battery": {"low_mv": 9000}, "zzz": 1}
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    out = micropython.run(
        "import json\nfrom jikimi import config\n"
        "print(json.dumps(config.validate(json.load(open('bad.json')))[1]))"
    )
    assert json.loads(out) == cfg.validate(bad)[1]


@pytest.mark.micropython
def test_micropython_and_cpython_take_the_same_passkeys_and_files(micropython, tmp_path):
    # str.isdigit() takes full-width and Arabic-Indic digits on CPython, not on MicroPython: the
    # host validates with this module, so one rule must give the same answer on both.
    passkeys = ["093514", "\uff10\uff19\uff13\uff15\uff11\uff14", "\u0660\u0669\u0663\u0665\u0661\u0664", "09351\u00b2"]
    (tmp_path / "passkeys.json").write_text(json.dumps(passkeys))
    (tmp_path / "latin1.json").write_bytes(b'{"passkey": "093514", "board": "esp32_devkitc", "name": "caf\xe9"}')
    out = micropython.run(
        "import json\nfrom jikimi import config\n"
        "print(json.dumps([config.is_passkey(p) for p in json.load(open('passkeys.json'))]))\n"
        "try:\n    config.load('latin1.json')\nexcept config.ConfigError as err:\n    print(json.dumps(err.errors))\n"
    )
    taken, errors = out.splitlines()
    assert json.loads(taken) == [cfg.is_passkey(p) for p in passkeys] == [True, False, False, False]
    assert json.loads(errors) == ["latin1.json: not UTF-8 text"]
    with pytest.raises(cfg.ConfigError) as err:
        cfg.load(str(tmp_path / "latin1.json"))
    assert err.value.errors == [f"{tmp_path / 'latin1.json'}: not UTF-8 text"]
