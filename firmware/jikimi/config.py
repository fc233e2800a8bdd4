"""Device configuration (config.json): the validator and the documented defaults.

`validate(data)` returns `(config, errors)`: the config with every default filled in, and one
message per problem, each naming the field ("gestures.hold_ms: ..."). Unknown keys are errors
too, so a typo cannot silently fall back to a default. `load(path)` raises ConfigError with all
the messages. CORE.md, "Config", lists every field, its default and its range.
"""

import json

try:
    from micropython import const
except ImportError:

    def const(value):
        return value


# The defaults the core classes take as keyword defaults (alarm.py, ...): written once, here.
# As integer const()s, `jikimi build` folds them into the core modules' code
# (toolchain/constfold.py), so a bell's core loads without this module: the validator is
# read, used and unloaded before the core is imported (app.py, run).
DEBOUNCE_GLITCH_MS = const(5)
DEBOUNCE_BOUNCE_MS = const(20)
GESTURES_HOLD_MS = const(3000)
GESTURES_MULTI_WINDOW_MS = const(1500)
GESTURES_PAIRING_HOLD_MS = const(10000)
GESTURES_BOOT_WINDOW_MS = const(2000)
GESTURES_PAIRING_GRACE_MS = const(5000)
ALARM_CANCEL_WINDOW_MS = const(20000)
ALARM_MAX_SIREN_MS = const(180000)
DOOR_EXIT_DELAY_MS = const(30000)
DOOR_ENTRY_DELAY_MS = const(15000)
SIREN_LOW_HZ = const(2000)
SIREN_HIGH_HZ = const(4000)
SIREN_SWEEP_MS = const(1000)
SIREN_VOLUME_PCT = const(50)
BATTERY_LOW_MV = const(3400)
BATTERY_RECOVER_MV = const(3550)
BATTERY_EMPTY_MV = const(3300)
BATTERY_FULL_MV = const(4200)
BATTERY_CONFIRM = const(3)

ROLES = ("panic", "door", "pull_pin")

# section -> ((key, default, min, max), ...); every value is an integer
SECTIONS = (
    ("debounce", (("bounce_ms", DEBOUNCE_BOUNCE_MS, 0, 200), ("glitch_ms", DEBOUNCE_GLITCH_MS, 0, 50))),
    (
        "gestures",
        (
            ("hold_ms", GESTURES_HOLD_MS, 500, 30000),
            ("multi_window_ms", GESTURES_MULTI_WINDOW_MS, 300, 5000),
            ("pairing_hold_ms", GESTURES_PAIRING_HOLD_MS, 3000, 60000),
            ("boot_window_ms", GESTURES_BOOT_WINDOW_MS, 0, 30000),
            ("pairing_grace_ms", GESTURES_PAIRING_GRACE_MS, 1000, 30000),
        ),
    ),
    ("alarm", (("cancel_window_ms", ALARM_CANCEL_WINDOW_MS, 0, 300000),
               ("max_siren_ms", ALARM_MAX_SIREN_MS, 10000, 1800000))),
    ("door", (("exit_delay_ms", DOOR_EXIT_DELAY_MS, 0, 300000), ("entry_delay_ms", DOOR_ENTRY_DELAY_MS, 0, 300000))),
    (
        "battery",
        (
            ("low_mv", BATTERY_LOW_MV, 2000, 5000),
            ("recover_mv", BATTERY_RECOVER_MV, 2000, 5000),
            ("empty_mv", BATTERY_EMPTY_MV, 2000, 5000),
            ("full_mv", BATTERY_FULL_MV, 2000, 5000),
            ("confirm", BATTERY_CONFIRM, 1, 20),
            ("interval_s", 60, 1, 3600),
        ),
    ),
    (
        "siren",
        (
            ("low_hz", SIREN_LOW_HZ, 500, 10000),
            ("high_hz", SIREN_HIGH_HZ, 500, 10000),
            ("sweep_ms", SIREN_SWEEP_MS, 100, 10000),
            ("volume_pct", SIREN_VOLUME_PCT, 1, 50),
        ),
    ),
    (
        "ble",
        (
            ("max_bonds", 4, 1, 8),
            ("pairing_window_ms", 120000, 10000, 600000),
            ("pairing_lockout_ms", 5000, 1000, 60000),
            ("heartbeat_s", 3600, 10, 86400),
        ),
    ),
    ("power", (("idle_sleep_s", 10, 0, 3600),)),
    ("journal", (("capacity", 64, 8, 512), ("max_bytes", 4096, 512, 65536))),
)



def default(section, key):
    """A section field's default. The core classes take their keyword defaults from here, so a
    default is written once (here) and a core object built without a config runs as one built
    from an empty config.json."""
    for name, fields in SECTIONS:
        if name == section:
            for field in fields:
                if field[0] == key:
                    return field[1]
    raise KeyError(section + "." + key)


# top-level fields that are not sections: key -> default (None = required)
TOP_LEVEL = (("passkey", None), ("board", None), ("roles", ["panic"]), ("name", ""), ("test_console", False))

MAX_NAME = 32


class ConfigError(Exception):
    def __init__(self, errors):
        super().__init__("; ".join(errors))
        self.errors = errors


def _is_int(value):
    return isinstance(value, int) and type(value) is not bool


def _unknown(where, key, known):
    hint = ""
    for name in known:
        if name[:3] == str(key)[:3]:
            hint = " (did you mean %s?)" % name
            break
    return "%s%s: unknown key%s" % (where, key, hint)


def _is_identifier(text):
    if not text:
        return False
    for ch in text:
        if not ("a" <= ch <= "z" or "0" <= ch <= "9" or ch == "_"):
            return False
    return True


def is_passkey(value):
    """A passkey as the device takes it: a string of exactly 6 ASCII digits. The one rule, for
    the host too (provision, sim, the relay's config): not str.isdigit(), which on CPython also
    takes other scripts' digits (full-width, Arabic-Indic) and on MicroPython does not."""
    if not isinstance(value, str) or len(value) != 6:
        return False
    for ch in value:
        if not "0" <= ch <= "9":
            return False
    return True


def _check_top(data, config, errors, boards):
    passkey = data.get("passkey")
    if passkey is None:
        errors.append("passkey: required: the 6-digit passkey printed on the device's label")
    elif not is_passkey(passkey):
        # Never echo the value: it is a secret.
        errors.append("passkey: must be a string of exactly 6 digits, e.g. \"093514\"")
    else:
        config["passkey"] = passkey

    board = data.get("board")
    if board is None:
        errors.append("board: required: the board folder name, e.g. \"esp32_devkitc\"")
    elif not isinstance(board, str) or not _is_identifier(board):
        errors.append("board: must be a board folder name (a-z, 0-9, _), got %r" % (board,))
    elif boards is not None and board not in boards:
        errors.append("board: unknown board %r; known: %s" % (board, ", ".join(sorted(boards))))
    else:
        config["board"] = board

    roles = data.get("roles", ["panic"])
    if not isinstance(roles, list) or not roles:
        errors.append("roles: must be a non-empty list of %s" % ", ".join(ROLES))
    else:
        seen = []
        for role in roles:
            if role not in ROLES:
                errors.append("roles: unknown role %r; known: %s" % (role, ", ".join(ROLES)))
            elif role in seen:
                errors.append("roles: %r is listed twice" % role)
            else:
                seen.append(role)
        config["roles"] = seen

    name = data.get("name", "")
    if not isinstance(name, str) or len(name) > MAX_NAME:
        errors.append("name: must be a string of at most %d characters" % MAX_NAME)
    else:
        config["name"] = name

    console = data.get("test_console", False)
    if type(console) is not bool:
        errors.append("test_console: must be true or false, got %r" % (console,))
    else:
        config["test_console"] = console


def _check_section(name, fields, data, config, errors):
    given = data.get(name, {})
    section = {}
    for key, default, low, high in fields:
        section[key] = default
    config[name] = section
    if not isinstance(given, dict):
        errors.append("%s: must be an object, got %r" % (name, given))
        return
    known = [f[0] for f in fields]
    for key in sorted(given):
        if key not in known:
            errors.append(_unknown(name + ".", key, known))
    for key, default, low, high in fields:
        if key not in given:
            continue
        value = given[key]
        if not _is_int(value) or value < low or value > high:
            errors.append("%s.%s: must be an integer from %d to %d, got %r" % (name, key, low, high, value))
        else:
            section[key] = value


def _check_relations(config, errors):
    g = config["gestures"]
    if g["pairing_hold_ms"] <= g["hold_ms"]:
        errors.append("gestures.pairing_hold_ms: must be longer than gestures.hold_ms (%d)" % g["hold_ms"])
    b = config["battery"]
    if not b["empty_mv"] < b["low_mv"] < b["recover_mv"] < b["full_mv"]:
        errors.append(
            "battery: need empty_mv < low_mv < recover_mv < full_mv, got %d, %d, %d, %d"
            % (b["empty_mv"], b["low_mv"], b["recover_mv"], b["full_mv"])
        )
    s = config["siren"]
    if s["low_hz"] > s["high_hz"]:
        errors.append("siren.low_hz: must not be above siren.high_hz (%d)" % s["high_hz"])


def validate(data, boards=None):
    """(config with defaults, [error, ...]). `boards`: known board names, if the caller knows."""
    errors = []
    config = {}
    if not isinstance(data, dict):
        return config, ["config: must be a JSON object, got %s" % type(data).__name__]
    known = [k for k, _ in TOP_LEVEL] + [s[0] for s in SECTIONS]
    for key in sorted(data):  # sorted: the same message order on every runtime
        if key not in known:
            errors.append(_unknown("", key, known))
    for key, default in TOP_LEVEL:
        if default is not None:
            config[key] = default
    _check_top(data, config, errors, boards)
    for name, fields in SECTIONS:
        _check_section(name, fields, data, config, errors)
    _check_relations(config, errors)
    return config, errors


def read(path):
    """A config file's JSON as it stands (not validated), or ConfigError naming the file: cannot
    read, not UTF-8, not JSON, nested too deeply. The host's commands read config files with it."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as err:
        raise ConfigError(["%s: cannot read: %s" % (path, err)])
    try:
        text = raw.decode("utf-8")  # what the device reads, whatever the host's locale
    except ValueError:  # UnicodeError (MicroPython), UnicodeDecodeError (CPython)
        raise ConfigError(["%s: not UTF-8 text" % path])
    try:
        data = json.loads(text)
    except ValueError as err:
        raise ConfigError(["%s: not valid JSON: %s" % (path, err)])
    except RuntimeError:  # CPython's RecursionError (MicroPython has no such class)
        raise ConfigError(["%s: not valid JSON: nested too deeply" % path])
    return data


def load(path, boards=None):
    """The validated config from a JSON file, or ConfigError listing every problem."""
    config, errors = validate(read(path), boards)
    if errors:
        raise ConfigError(errors)
    return config
