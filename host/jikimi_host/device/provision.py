"""`jikimi provision`'s work: a device config (passkey, name, roles, any other field), validated
by the firmware's own validator (jikimi.config, the same code the board runs at boot), then
written atomically to the board and verified."""

from __future__ import annotations

import hashlib
import json
import re
import secrets

from jikimi import config as cfg
from jikimi_host.device.boards import known_boards
from jikimi_host.device.session import DeviceSession
from jikimi_host.errors import JikimiError, UsageError

CONFIG_NAME = "config.json"


def generate_passkey() -> str:
    """Six random digits, leading zeros kept (secrets: a passkey is a credential)."""
    return "%06d" % secrets.randbelow(1_000_000)


_SETTING = re.compile(r"^(?P<path>[a-z_][a-z0-9_]*(?:\.[a-z_][a-z0-9_]*)?)=(?P<value>.*)$")


def apply_setting(data: dict, setting: str) -> None:
    """`section.key=value` (or `key=value`) into `data`; the value is JSON if it parses
    (5, true, "x", [..]), else a string."""
    match = _SETTING.match(setting)
    if not match:
        raise UsageError(f"--set {setting!r}: expected section.key=value, e.g. gestures.hold_ms=3000")
    try:
        value = json.loads(match["value"])
    except ValueError:
        value = match["value"]
    except RecursionError:
        raise UsageError(f"--set {match['path']}=...: the value is nested too deeply") from None
    *sections, key = match["path"].split(".")
    target = data
    for section in sections:
        existing = target.setdefault(section, {})
        if not isinstance(existing, dict):
            raise UsageError(f"--set {setting!r}: {section} is not a section")
        target = existing
    target[key] = value


def device_config(board: str, passkey: str, name: str = "", roles: list[str] | None = None,
                  settings: list[str] = ()) -> dict:
    """The config.json to write; DeployError (exit 2) naming every bad field."""
    data: dict = {"passkey": passkey, "board": board, "name": name, "roles": roles or ["panic"]}
    for setting in settings:
        apply_setting(data, setting)
    _, errors = cfg.validate(data, boards=known_boards())
    if errors:
        raise UsageError("the config is not valid:\n" + "\n".join(f"  {e}" for e in errors))
    return data


def config_bytes(config: dict) -> bytes:
    return (json.dumps(config, sort_keys=True) + "\n").encode()


def passkey_label(name: str, passkey: str) -> str:
    return f"Jikimi {name}  passkey {passkey}"


def write_config(session: DeviceSession, config: dict) -> None:
    """config.json, atomically (config.json.new, then rename), then verified by hash."""
    data = config_bytes(config)
    session.write_atomically(CONFIG_NAME, data)
    digest = hashlib.sha256(data).hexdigest()
    if session.hashes([CONFIG_NAME])[CONFIG_NAME] != digest:
        raise JikimiError(f"verify failed: {CONFIG_NAME} on the device differs from what was written")
