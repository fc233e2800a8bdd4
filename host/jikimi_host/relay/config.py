"""The relay's config file (TOML): who to text, how to reach 112, which devices, where state lives.

`load(path)` reads a file, `parse(data, source)` checks an already-parsed dict. Both return a
typed, frozen `RelayConfig` or raise `RelayConfigError` listing *every* problem, each naming
its entry (`guardians[3].number: ...`), so one edit fixes them all. See example-relay.toml.

`dump_config(mapping)` / `write_config(path, mapping)` write one (the demo, the rig, the tests):
through a TOML writer, so that a name or path with quotes, backslashes or newlines stays itself.
"""

from __future__ import annotations

import difflib
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import tomli_w

from jikimi.config import is_passkey
from jikimi_host.errors import UsageError
from jikimi_host.relay.messages import LANGUAGES, MAX_NAME_CHARS, Location
from jikimi_host.relay.numbers import NumberError, normalize, normalize_emergency

EXAMPLE_CONFIG = Path(__file__).with_name("example-relay.toml")
BACKENDS = ("sim", "modem")
LOCATION_SOURCES = ("fixed", "gpsd", "modem")
GNSS_DIALECTS = ("simcom", "quectel")  # location.DIALECTS
DEFAULT_GPSD = "127.0.0.1:2947"
MAX_GUARDIANS = 5  # what the Jikimi kit promises
_ADDRESS = re.compile(r"^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}(/P)?$")  # Bumble style; /P = public


@dataclass(frozen=True)
class Guardian:
    name: str
    number: str  # E.164
    language: str = "ko"


@dataclass(frozen=True)
class DeviceEntry:
    """A bell or door alarm this relay pairs with."""

    name: str
    passkey: str  # the 6 digits on the label, as a string (leading zeros matter)
    address: str | None = None


@dataclass(frozen=True)
class ModemConfig:
    port: str
    baudrate: int = 115200
    # A real modem must never dial or text an emergency number by accident (tests, demos): it
    # refuses to unless the operator opts in here.
    allow_emergency: bool = False


@dataclass(frozen=True)
class LocationSettings:
    """The [location] table: where fixes come from (location.location_source builds it). `fixed`
    is the config's lat/lon/accuracy_m: the whole source with source = "fixed", else the fallback
    when given."""

    source: str = "fixed"
    fixed: Location | None = None
    gpsd_host: str = "127.0.0.1"
    gpsd_port: int = 2947
    modem_gnss: str | None = None  # "simcom" or "quectel", with source = "modem"
    stale_after_s: float = 60
    # while an alarm is live, guardians get the owner's new position at most this often, when
    # she has moved more than the fix's accuracy (a live source only: the fixed point never moves)
    update_every_s: float = 120


@dataclass(frozen=True)
class RetryPolicy:
    """Outbox retries: wait min(base_s * 2**(attempt-1), max_s) after each failed attempt, for as
    long as it takes (a message is never given up); one not sent `overdue_after_s` after it was
    due is reported to the owner, and still retried."""

    base_s: float = 5
    max_s: float = 300
    overdue_after_s: float = 120

    def delay_s(self, attempts: int) -> float:
        return min(self.base_s * 2 ** (max(attempts, 1) - 1), self.max_s)


@dataclass(frozen=True)
class RelayConfig:
    owner: str
    guardians: tuple[Guardian, ...]
    cancel_window_s: float = 20
    emergency_number: str = "112"
    emergency_call: bool = True
    emergency_sms: bool = True
    emergency_language: str = "ko"
    location: Location | None = None  # the fixed point, if given (location_settings.fixed)
    location_settings: LocationSettings | None = None  # None: no [location], no location
    backend: str = "sim"
    modem: ModemConfig | None = None
    transport: str = "virtual"
    devices: tuple[DeviceEntry, ...] = ()
    heartbeat_s: float = 3600  # the devices' ble.heartbeat_s default
    unreachable_after_s: float = 10800
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    database: Path = Path("jikimi-relay.sqlite")
    source: str = "<config>"

    def device_name(self, address: str) -> str | None:
        """The configured name of the device at `address`, if it is configured."""
        for device in self.devices:
            if device.address is not None and device.address.upper() == address.upper():
                return device.name
        return None


class RelayConfigError(UsageError, ValueError):
    """Every problem found in one config file: bad input (exit 2). Still a ValueError, as it was
    before the host had one error base, for callers that catch that."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = list(problems)
        lines = "\n".join(f"  - {problem}" for problem in self.problems)
        count = len(self.problems)
        super().__init__(f"{source}: {count} problem{'s' if count != 1 else ''} in the relay config:\n{lines}")


_TOP_KEYS = (
    "owner", "cancel_window_s", "emergency_number", "emergency_call", "emergency_sms",
    "emergency_language", "guardians", "location", "backend", "modem", "transport", "devices",
    "heartbeat_s", "unreachable_after_s", "retry_base_s", "retry_max_s", "overdue_after_s", "max_attempts", "database",
)
_GUARDIAN_KEYS = ("name", "number", "language")
_DEVICE_KEYS = ("name", "passkey", "address")
_LOCATION_KEYS = ("source", "lat", "lon", "accuracy_m", "gpsd", "modem_gnss", "stale_after_s", "update_every_s")
_MODEM_KEYS = ("port", "baudrate", "allow_emergency")


def load(path: str | Path) -> RelayConfig:
    """Read and check the TOML file at `path`. A relative `database` is relative to the file."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise RelayConfigError(str(path), ["no such file"]) from None
    except OSError as err:
        raise RelayConfigError(str(path), [f"cannot read: {err.strerror}"]) from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise RelayConfigError(str(path), [f"not UTF-8 text (byte {err.start})"]) from None
    except tomllib.TOMLDecodeError as err:
        # tomllib's message ends with "(at line N, column M)".
        raise RelayConfigError(str(path), [f"TOML syntax error: {err}"]) from None
    except RecursionError:
        raise RelayConfigError(str(path), ["TOML nested too deeply (arrays or tables within each other)"]) from None
    except ValueError as err:  # not a TOMLDecodeError: int() of more than 4300 digits, say
        raise RelayConfigError(str(path), [f"a TOML value that cannot be read: {str(err).split(';')[0]}"]) from None
    return parse(data, str(path), base_dir=path.parent)


def dump_config(mapping: Mapping[str, Any]) -> str:
    """A relay config as TOML text, every string escaped as TOML needs; `Path` values (the
    database, a modem port) are written as their text."""
    return tomli_w.dumps(_with_paths_as_text(mapping))


def write_config(path: str | Path, mapping: Mapping[str, Any]) -> Path:
    """Write `dump_config(mapping)` to `path` (UTF-8, whatever the locale), and return the path."""
    path = Path(path)
    path.write_text(dump_config(mapping), encoding="utf-8")
    return path


def _with_paths_as_text(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Mapping):
        return {key: _with_paths_as_text(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_with_paths_as_text(item) for item in value]
    return value


def parse(data: dict[str, Any], source: str = "<config>", base_dir: Path | None = None) -> RelayConfig:
    """Check `data` (a parsed TOML document) and build the RelayConfig, or RelayConfigError."""
    check = _Checker()
    check.unknown_keys("", data, _TOP_KEYS)

    owner = check.name("owner", data.get("owner"), required=True)
    cancel_window_s = check.number("cancel_window_s", data.get("cancel_window_s", 20), 5, 600, "seconds")
    emergency_number = "112"
    try:
        emergency_number = normalize_emergency("emergency_number", data.get("emergency_number", "112"))
    except NumberError as err:
        check.problems.append(str(err))
    emergency_call = check.boolean("emergency_call", data.get("emergency_call", True))
    emergency_sms = check.boolean("emergency_sms", data.get("emergency_sms", True))
    emergency_language = check.choice("emergency_language", data.get("emergency_language", "ko"), LANGUAGES)

    guardians = tuple(g for g in _guardians(check, data.get("guardians")) if g is not None)

    backend = check.choice("backend", data.get("backend", "sim"), BACKENDS)
    location_settings = _location(check, data.get("location"), backend)
    location = location_settings.fixed if location_settings is not None else None
    modem = _modem(check, data.get("modem"), required=backend == "modem")
    transport = check.text("transport", data.get("transport", "virtual"))
    devices = _devices(check, data.get("devices", []))

    heartbeat_s = check.number("heartbeat_s", data.get("heartbeat_s", 3600), 10, 86400, "seconds")
    unreachable_after_s = check.number(
        "unreachable_after_s", data.get("unreachable_after_s", 3 * heartbeat_s), 10, 7 * 86400, "seconds"
    )
    # Relations only between values that are themselves valid: a bad one was named above, and
    # the stand-in the checker returns for it is not what the file says.
    if "unreachable_after_s" in data and check.valid("heartbeat_s", "unreachable_after_s") \
            and unreachable_after_s < heartbeat_s:
        check.problems.append(
            f"unreachable_after_s: must be at least heartbeat_s ({_given(heartbeat_s)}), got {_given(unreachable_after_s)}"
        )
    retry_base_s = check.number("retry_base_s", data.get("retry_base_s", 5), 1, 3600, "seconds")
    retry_max_s = check.number("retry_max_s", data.get("retry_max_s", 300), 1, 86400, "seconds")
    if check.valid("retry_base_s", "retry_max_s") and retry_max_s < retry_base_s:
        check.problems.append(f"retry_max_s: must be at least retry_base_s ({_given(retry_base_s)}), got {_given(retry_max_s)}")
    overdue_after_s = check.number("overdue_after_s", data.get("overdue_after_s", 120), 10, 86400, "seconds")
    if "max_attempts" in data:
        check.problems.append("max_attempts: no longer a setting: the relay never gives up on a message (it "
                              "retries with retry_base_s..retry_max_s backoff and reports one not sent after "
                              "overdue_after_s); remove the line")

    database = Path(check.text("database", data.get("database", "jikimi-relay.sqlite")) or "jikimi-relay.sqlite")
    if base_dir is not None and not database.is_absolute():
        database = base_dir / database

    if check.problems:
        raise RelayConfigError(source, check.problems)
    return RelayConfig(
        owner=owner,
        guardians=guardians,
        cancel_window_s=cancel_window_s,
        emergency_number=emergency_number,
        emergency_call=emergency_call,
        emergency_sms=emergency_sms,
        emergency_language=emergency_language,
        location=location,
        location_settings=location_settings,
        backend=backend,
        modem=modem,
        transport=transport,
        devices=devices,
        heartbeat_s=heartbeat_s,
        unreachable_after_s=unreachable_after_s,
        retry=RetryPolicy(retry_base_s, retry_max_s, overdue_after_s),
        database=database,
        source=source,
    )


def _guardians(check: _Checker, value: Any) -> list[Guardian | None]:
    if value is None:
        check.problems.append(f"guardians: at least 1 guardian is required (1..{MAX_GUARDIANS} [[guardians]] entries)")
        return []
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        check.problems.append("guardians: must be a list of tables ([[guardians]] entries)")
        return []
    if not 1 <= len(value) <= MAX_GUARDIANS:
        check.problems.append(f"guardians: must have 1..{MAX_GUARDIANS} entries, got {len(value)}")
    out: list[Guardian | None] = []
    seen: dict[str, int] = {}
    for i, item in enumerate(value):
        entry = f"guardians[{i}]"
        check.unknown_keys(entry + ".", item, _GUARDIAN_KEYS)
        name = check.name(f"{entry}.name", item.get("name"), required=True)
        language = check.choice(f"{entry}.language", item.get("language", "ko"), LANGUAGES)
        number = None
        if item.get("number") is None:
            check.problems.append(f'{entry}.number: required (e.g. number = "010-1234-5678")')
        else:
            try:
                number = normalize(f"{entry}.number", item.get("number"))
            except NumberError as err:
                check.problems.append(str(err))
        if number is not None:
            # The outbox dedups by recipient: two guardians on one number would get one text.
            if number in seen:
                check.problems.append(f"{entry}.number: {number} is also guardians[{seen[number]}].number")
            seen.setdefault(number, i)
            out.append(Guardian(name, number, language))
    return out


def _location(check: _Checker, value: Any, backend: str) -> LocationSettings | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        check.problems.append("location: must be a table with lat, lon and optionally accuracy_m, or a source")
        return None
    check.unknown_keys("location.", value, _LOCATION_KEYS)
    source = check.choice("location.source", value.get("source", "fixed"), LOCATION_SOURCES)
    if source != value.get("source", "fixed"):
        source = ""  # named above; nothing more to say about what it would need
    # The fixed point: the whole source with source = "fixed", else the last fallback if given.
    fixed = None
    if source == "fixed" or any(key in value for key in ("lat", "lon", "accuracy_m")):
        for key in ("lat", "lon"):
            if key not in value:
                check.problems.append(f"location.{key}: required" + ("" if source == "fixed" else
                                      " with the fallback point (or leave out lat, lon and accuracy_m)"))
        lat = check.number("location.lat", value.get("lat", 0), -90, 90, "degrees")
        lon = check.number("location.lon", value.get("lon", 0), -180, 180, "degrees")
        accuracy = value.get("accuracy_m")
        if accuracy is not None:
            accuracy = int(check.number("location.accuracy_m", accuracy, 0, 9999, "metres", integer=True))
        fixed = Location(float(lat), float(lon), accuracy)
    # A key the chosen source does not use is a mistake, not something to ignore in silence.
    for key, used_by in (("gpsd", "gpsd"), ("modem_gnss", "modem")):
        if key in value and source and source != used_by:
            check.problems.append(f'location.{key}: only used with source = "{used_by}" (source is "{source}")')
    for key, why in (("stale_after_s", "the fixed point never goes stale"),
                     ("update_every_s", "the fixed point never moves, so there is nothing to update")):
        if key in value and source == "fixed":
            check.problems.append(f'location.{key}: {why}; only used with source = "gpsd" or "modem"')
    stale_after_s = check.number("location.stale_after_s", value.get("stale_after_s", 60), 1, 3600, "seconds")
    update_every_s = check.number("location.update_every_s", value.get("update_every_s", 120), 5, 3600, "seconds")
    host, port = _gpsd_address(check, value.get("gpsd", DEFAULT_GPSD))
    modem_gnss = None
    if source == "modem":
        if "modem_gnss" not in value:
            makes = " or ".join(f'"{d}"' for d in GNSS_DIALECTS)
            check.problems.append(f'location.modem_gnss: required with source = "modem" ({makes}: the modem\'s make)')
        else:
            modem_gnss = check.choice("location.modem_gnss", value["modem_gnss"], GNSS_DIALECTS)
        if backend != "modem":
            check.problems.append('location.source: "modem" needs backend = "modem" (the GNSS is the modem\'s)')
    return LocationSettings(source or "fixed", fixed, host, port, modem_gnss, stale_after_s, update_every_s)


def _gpsd_address(check: _Checker, value: Any) -> tuple[str, int]:
    """`"host:port"`, `"host"` (port 2947) or `"[::1]:2947"`."""
    default = ("127.0.0.1", 2947)
    if not isinstance(value, str) or not value.strip():
        check.problems.append(f'location.gpsd: must be "host:port" (e.g. "{DEFAULT_GPSD}"), got {value!r}')
        return default
    text = value.strip()
    match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\](?::(\d+))?|([^\s:\[\]]+)(?::(\d+))?", text)
    if match is None:
        check.problems.append(f'location.gpsd: must be "host:port" (e.g. "{DEFAULT_GPSD}"), got {value!r}')
        return default
    host = match.group(1) or match.group(3)
    digits = match.group(2) or match.group(4) or "2947"
    if len(digits) > 5 or not 1 <= int(digits) <= 65535:  # int() of thousands of digits raises
        shown = digits if len(digits) <= 12 else f"{digits[:12]}... ({len(digits)} digits)"
        check.problems.append(f"location.gpsd: the port must be 1..65535, got {shown}")
        return default
    return host, int(digits)


def _modem(check: _Checker, value: Any, required: bool) -> ModemConfig | None:
    if value is None:
        if required:
            check.problems.append('modem: backend = "modem" needs a [modem] table with port')
        return None
    if not isinstance(value, dict):
        check.problems.append("modem: must be a table ([modem])")
        return None
    check.unknown_keys("modem.", value, _MODEM_KEYS)
    port = check.text("modem.port", value.get("port"), required=True)
    baudrate = int(check.number("modem.baudrate", value.get("baudrate", 115200), 300, 4_000_000, "baud", integer=True))
    allow = check.boolean("modem.allow_emergency", value.get("allow_emergency", False))
    return ModemConfig(port, baudrate, allow)


def _devices(check: _Checker, value: Any) -> tuple[DeviceEntry, ...]:
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        check.problems.append("devices: must be a list of tables ([[devices]] entries)")
        return ()
    out = []
    names: set[str] = set()
    addresses: set[str] = set()
    for i, item in enumerate(value):
        entry = f"devices[{i}]"
        check.unknown_keys(entry + ".", item, _DEVICE_KEYS)
        name = check.name(f"{entry}.name", item.get("name"), required=True)
        if name and name in names:
            check.problems.append(f"{entry}.name: {name!r} is already the name of another device")
        names.add(name)
        passkey = item.get("passkey")
        if isinstance(passkey, int) and not isinstance(passkey, bool):
            check.problems.append(
                f'{entry}.passkey: write the 6 digits as a string, e.g. passkey = "{passkey:06d}" (a number loses leading zeros)'
            )
        elif not is_passkey(passkey):  # the device's own rule (firmware/jikimi/config.py)
            check.problems.append(f"{entry}.passkey: must be 6 digits as a string, got {passkey!r}")
        address = item.get("address")
        if address is not None:
            if not isinstance(address, str) or not _ADDRESS.match(address):
                check.problems.append(f'{entry}.address: must look like "C0:98:E5:49:00:01", got {address!r}')
            elif address.upper() in addresses:
                check.problems.append(f"{entry}.address: {address} is already the address of another device")
            else:
                addresses.add(address.upper())
        out.append(DeviceEntry(name, str(passkey), address))
    return tuple(out)


class _Checker:
    """Collects problems instead of stopping at the first; returns a harmless value on error."""

    def __init__(self) -> None:
        self.problems: list[str] = []
        self.invalid: set[str] = set()  # entries number() refused

    def valid(self, *entries: str) -> bool:
        """Whether number() took all of these entries (as given, or their defaults)."""
        return not self.invalid.intersection(entries)

    def unknown_keys(self, prefix: str, table: dict[str, Any], known: tuple[str, ...]) -> None:
        for key in table:
            if key in known:
                continue
            hint = difflib.get_close_matches(key, known, n=1)
            if hint:
                suffix = f' (did you mean "{hint[0]}"?)'
            elif prefix and key in _TOP_KEYS:
                # The classic TOML slip: a plain key written after a [table] belongs to it.
                suffix = " (a top-level key: move it above the first [table] or [[array]] header)"
            else:
                suffix = f" (known: {', '.join(known)})"
            self.problems.append(f"{prefix}{key}: unknown key{suffix}")

    def text(self, entry: str, value: Any, required: bool = False) -> str:
        if value is None and not required:
            return ""
        if not isinstance(value, str) or not value.strip():
            self.problems.append(f"{entry}: {'required, ' if value is None else ''}must be a non-empty string, got {value!r}")
            return ""
        return value

    def name(self, entry: str, value: Any, required: bool = False) -> str:
        text = self.text(entry, value, required)
        # Names appear in every SMS; the 3-segment budget (messages.py) assumes at most 32
        # UTF-16 units (an emoji counts 2).
        if text and len(text.encode("utf-16-le")) // 2 > MAX_NAME_CHARS:
            self.problems.append(f"{entry}: at most {MAX_NAME_CHARS} characters (it goes into every text), got {len(text)}")
        return text.strip()

    def boolean(self, entry: str, value: Any) -> bool:
        if not isinstance(value, bool):
            self.problems.append(f"{entry}: must be true or false, got {value!r}")
            return False
        return value

    def choice(self, entry: str, value: Any, choices: tuple[str, ...]) -> str:
        if value not in choices:
            options = " or ".join(f'"{c}"' for c in choices)
            self.problems.append(f"{entry}: must be {options}, got {value!r}")
            return choices[0]
        return value

    def number(self, entry: str, value: Any, low: float, high: float, unit: str, integer: bool = False) -> float:
        kinds = (int,) if integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, kinds):
            self.invalid.add(entry)
            self.problems.append(f"{entry}: must be {'an integer' if integer else 'a number'}, got {_given(value)}")
            return low
        if not low <= value <= high:  # False for nan, too
            self.invalid.add(entry)
            self.problems.append(f"{entry}: must be {low:g}..{high:g} {unit}, got {_given(value)}")
            return low
        return value


def _given(value: Any) -> str:
    """A value as the file wrote it, for a message: 20, 2.5, nan, inf, '20'; a huge integer (TOML
    has no limit, a float has) by its size, not as a traceback from formatting it."""
    if isinstance(value, bool) or not isinstance(value, int) or abs(value) < 10**15:
        return repr(value)
    try:
        return f"an integer of {len(str(abs(value)))} digits"
    except ValueError:  # past Python's int-to-str limit (4300 digits)
        return "an integer of thousands of digits"
