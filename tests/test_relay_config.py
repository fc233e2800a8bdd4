"""The relay config: the example loads, defaults, and one message per problem naming its entry.

Numbers are in the 010-0000-xxxx block (no one is reachable there); nothing is ever sent to them
outside the sim/fake backends.
"""

from pathlib import Path

import pytest

from jikimi_host.relay import config as rc
from jikimi_host.relay.messages import Location

MINIMAL = {"owner": "김지은", "guardians": [{"name": "어머니", "number": "010-0000-0001"}]}


def problems(**changes) -> list[str]:
    data = {**MINIMAL, **changes}
    with pytest.raises(rc.RelayConfigError) as err:
        rc.parse(data, "relay.toml")
    return err.value.problems


def test_the_example_config_loads():
    config = rc.load(rc.EXAMPLE_CONFIG)
    assert config.owner == "김지은"
    assert [g.number for g in config.guardians] == ["+821000000001", "+821000000002", "+821000000003"]
    assert [g.language for g in config.guardians] == ["ko", "en", "ko"]
    assert config.location == Location(37.5665, 126.978, 25)
    assert config.backend == "sim" and config.modem is None
    assert config.devices[1].address == "C0:98:E5:49:00:02"
    assert config.device_name("c0:98:e5:49:00:02") == "현관문"
    assert config.database == rc.EXAMPLE_CONFIG.parent / "jikimi-relay.sqlite"


def test_a_minimal_config_gets_every_default():
    config = rc.parse(MINIMAL)
    assert config.cancel_window_s == 20
    assert config.emergency_number == "112"
    assert config.emergency_call is True and config.emergency_sms is True
    assert config.emergency_language == "ko"
    assert config.guardians[0].language == "ko"
    assert config.location is None
    assert config.backend == "sim" and config.transport == "virtual"
    assert config.devices == ()
    assert config.heartbeat_s == 3600 and config.unreachable_after_s == 10800
    assert config.retry == rc.RetryPolicy(5, 300, 120)
    assert config.database == Path("jikimi-relay.sqlite")


def test_unreachable_after_defaults_to_three_heartbeats():
    assert rc.parse({**MINIMAL, "heartbeat_s": 60}).unreachable_after_s == 180


def test_the_retry_schedule_doubles_up_to_the_maximum():
    retry = rc.RetryPolicy(5, 300, 10)
    assert [retry.delay_s(n) for n in range(1, 9)] == [5, 10, 20, 40, 80, 160, 300, 300]


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"cancel_window_s": 2}, "cancel_window_s: must be 5..600 seconds, got 2"),
        ({"cancel_window_s": "20"}, "cancel_window_s: must be a number, got '20'"),
        ({"owner": ""}, "owner: must be a non-empty string, got ''"),
        ({"owner": "가" * 33}, "owner: at most 32 characters (it goes into every text), got 33"),
        ({"emergency_number": "113"}, 'emergency_number: "113" is not an emergency number in KR (e.g. "112")'),
        ({"emergency_call": "yes"}, "emergency_call: must be true or false, got 'yes'"),
        ({"emergency_language": "ja"}, "emergency_language: must be \"ko\" or \"en\", got 'ja'"),
        ({"guardians": []}, "guardians: must have 1..5 entries, got 0"),
        ({"guardians": [{"name": f"g{i}", "number": f"010-0000-000{i}"} for i in range(1, 7)]},
         "guardians: must have 1..5 entries, got 6"),
        ({"guardians": [{"name": "a", "number": "010-12"}]}, 'guardians[0].number: "010-12" is not a valid phone number in KR'),
        ({"guardians": [{"name": "a", "number": "112"}]},
         'guardians[0].number: "112" is an emergency number; it is set by emergency_number, not here'),
        ({"guardians": [{"name": "a"}]}, 'guardians[0].number: required (e.g. number = "010-1234-5678")'),
        ({"guardians": [{"name": "a", "number": "010-0000-0001", "language": "fr"}]},
         "guardians[0].language: must be \"ko\" or \"en\", got 'fr'"),
        ({"guardians": [{"name": "a", "number": "010-0000-0001"}, {"name": "b", "number": "+82 10 0000 0001"}]},
         "guardians[1].number: +821000000001 is also guardians[0].number"),
        ({"guardians": [{"name": "a", "number": "010-0000-0001", "phone": "x"}]},
         "guardians[0].phone: unknown key (known: name, number, language)"),
        ({"backend": "modem"}, "modem: backend = \"modem\" needs a [modem] table with port"),
        ({"backend": "twilio"}, "backend: must be \"sim\" or \"modem\", got 'twilio'"),
        ({"backend": "modem", "modem": {"port": "/dev/ttyUSB2", "baud": 9600}},
         'modem.baud: unknown key (did you mean "baudrate"?)'),
        ({"location": {"lat": 95, "lon": 126.9}}, "location.lat: must be -90..90 degrees, got 95"),
        ({"location": {"lon": 126.9}}, "location.lat: required"),
        ({"location": {"source": "gps"}}, 'location.source: must be "fixed" or "gpsd" or "modem", got \'gps\''),
        ({"location": {"source": "gpsd", "stale_after": 5}}, 'location.stale_after: unknown key (did you mean "stale_after_s"?)'),
        ({"location": {"source": "gpsd", "gpsd": "localhost:0"}}, "location.gpsd: the port must be 1..65535, got 0"),
        ({"location": {"source": "gpsd", "gpsd": "gps host:2947"}},
         'location.gpsd: must be "host:port" (e.g. "127.0.0.1:2947"), got \'gps host:2947\''),
        ({"location": {"source": "gpsd", "gpsd": 2947}}, 'location.gpsd: must be "host:port" (e.g. "127.0.0.1:2947"), got 2947'),
        ({"location": {"source": "gpsd", "stale_after_s": 0}}, "location.stale_after_s: must be 1..3600 seconds, got 0"),
        ({"location": {"source": "gpsd", "stale_after_s": "1m"}}, "location.stale_after_s: must be a number, got '1m'"),
        ({"location": {"source": "gpsd", "lat": 37.5}},
         "location.lon: required with the fallback point (or leave out lat, lon and accuracy_m)"),
        ({"location": {"source": "gpsd", "modem_gnss": "simcom"}},
         'location.modem_gnss: only used with source = "modem" (source is "gpsd")'),
        ({"location": {"lat": 37.5, "lon": 127.0, "gpsd": "127.0.0.1:2947"}},
         'location.gpsd: only used with source = "gpsd" (source is "fixed")'),
        ({"location": {"lat": 37.5, "lon": 127.0, "stale_after_s": 30}},
         'location.stale_after_s: the fixed point never goes stale; only used with source = "gpsd" or "modem"'),
        ({"location": {"source": "modem"}, "backend": "modem", "modem": {"port": "/dev/ttyUSB2"}},
         'location.modem_gnss: required with source = "modem" ("simcom" or "quectel": the modem\'s make)'),
        ({"location": {"source": "modem", "modem_gnss": "ublox"}, "backend": "modem", "modem": {"port": "/dev/ttyUSB2"}},
         "location.modem_gnss: must be \"simcom\" or \"quectel\", got 'ublox'"),
        ({"location": {"source": "modem", "modem_gnss": "quectel"}},
         'location.source: "modem" needs backend = "modem" (the GNSS is the modem\'s)'),
        ({"devices": [{"name": "bell", "passkey": 93514}]},
         'devices[0].passkey: write the 6 digits as a string, e.g. passkey = "093514" (a number loses leading zeros)'),
        ({"devices": [{"name": "bell", "passkey": "12345"}]}, "devices[0].passkey: must be 6 digits as a string, got '12345'"),
        ({"devices": [{"name": "bell", "passkey": "123456", "address": "nope"}]},
         "devices[0].address: must look like \"C0:98:E5:49:00:01\", got 'nope'"),
        ({"heartbeat_s": 600, "unreachable_after_s": 300}, "unreachable_after_s: must be at least heartbeat_s (600), got 300"),
        ({"retry_base_s": 60, "retry_max_s": 30}, "retry_max_s: must be at least retry_base_s (60), got 30"),
        ({"max_attempts": 10}, "max_attempts: no longer a setting: the relay never gives up on a message (it "
         "retries with retry_base_s..retry_max_s backoff and reports one not sent after overdue_after_s); remove the line"),
        ({"overdue_after_s": 1}, "overdue_after_s: must be 10..86400 seconds, got 1"),
        ({"cancel_windows": 20}, 'cancel_windows: unknown key (did you mean "cancel_window_s"?)'),
    ],
)
def test_each_problem_names_its_entry(changes, message):
    assert message in problems(**changes)


def test_every_problem_is_reported_at_once():
    found = problems(cancel_window_s=2, owner=None, guardians=[{"name": "a", "number": "010-12"}], emergency_sms=1)
    assert len(found) == 4
    with pytest.raises(rc.RelayConfigError, match=r"^relay\.toml: 4 problems in the relay config:\n  - "):
        rc.parse({**MINIMAL, "cancel_window_s": 2, "owner": None, "guardians": [{"name": "a", "number": "010-12"}],
                  "emergency_sms": 1}, "relay.toml")


def test_a_top_level_key_written_under_a_table_gets_a_hint(tmp_path):
    path = tmp_path / "relay.toml"
    path.write_text('owner = "김지은"\n[[guardians]]\nname = "a"\nnumber = "010-0000-0001"\nheartbeat_s = 60\n', encoding="utf-8")
    with pytest.raises(rc.RelayConfigError) as err:
        rc.load(path)
    assert err.value.problems == [
        "guardians[0].heartbeat_s: unknown key (a top-level key: move it above the first [table] or [[array]] header)"
    ]


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(rc.RelayConfigError) as err:
        rc.load(tmp_path / "nope.toml")
    assert str(err.value).startswith(f"{tmp_path / 'nope.toml'}: 1 problem")
    assert err.value.problems == ["no such file"]


def test_a_toml_syntax_error_gives_the_path_and_line(tmp_path):
    path = tmp_path / "relay.toml"
    path.write_text('owner = "x"\nguardians = [\n  {name = }\n]\n', encoding="utf-8")
    with pytest.raises(rc.RelayConfigError) as err:
        rc.load(path)
    assert err.value.source == str(path)
    assert "TOML syntax error" in err.value.problems[0] and "line 3" in err.value.problems[0]


def test_a_fixed_point_alone_is_the_fixed_source_as_before():
    config = rc.parse({**MINIMAL, "location": {"lat": 37.5665, "lon": 126.978, "accuracy_m": 25}})
    assert config.location == Location(37.5665, 126.978, 25)
    assert config.location_settings == rc.LocationSettings("fixed", Location(37.5665, 126.978, 25))
    assert rc.parse(MINIMAL).location_settings is None  # no [location]: no location


@pytest.mark.parametrize("gpsd, address", [
    (None, ("127.0.0.1", 2947)),
    ("gps.local", ("gps.local", 2947)),
    ("192.168.0.7:2948", ("192.168.0.7", 2948)),
    ("[::1]:2949", ("::1", 2949)),
])
def test_a_gpsd_source(gpsd, address):
    table = {"source": "gpsd", **({"gpsd": gpsd} if gpsd else {})}
    settings = rc.parse({**MINIMAL, "location": table}).location_settings
    assert (settings.source, settings.gpsd_host, settings.gpsd_port) == ("gpsd", *address)
    assert settings.fixed is None and settings.stale_after_s == 60


def test_a_live_source_keeps_the_fixed_point_as_the_fallback():
    config = rc.parse({**MINIMAL, "backend": "modem", "modem": {"port": "/dev/ttyUSB2"},
                       "location": {"source": "modem", "modem_gnss": "simcom", "stale_after_s": 30,
                                    "lat": 37.5665, "lon": 126.978}})
    assert config.location_settings == rc.LocationSettings("modem", Location(37.5665, 126.978), modem_gnss="simcom",
                                                           stale_after_s=30)
    assert config.location == Location(37.5665, 126.978)  # what the texts carry until they use the source


def test_a_modem_backend_with_its_table(tmp_path):
    config = rc.parse({**MINIMAL, "backend": "modem", "modem": {"port": "/dev/ttyUSB2"}})
    assert config.modem == rc.ModemConfig("/dev/ttyUSB2", 115200, allow_emergency=False)


def test_a_relative_database_is_next_to_the_config_file(tmp_path):
    path = tmp_path / "relay.toml"
    path.write_text('owner = "a"\ndatabase = "state/relay.sqlite"\n[[guardians]]\nname = "a"\nnumber = "010-0000-0001"\n')
    assert rc.load(path).database == tmp_path / "state" / "relay.sqlite"


def test_a_config_written_by_dump_config_reads_back_with_quotes_backslashes_newlines_and_korean(tmp_path):
    """The demo, the rig and the tests write relay configs with `write_config`: a value that an
    f-string would have broken (or turned into more TOML) comes back as it was."""
    tricky = '김 "지은" \\ 씨\n[[guardians]]'  # the newline and header would inject a table
    database = tmp_path / 'state "a" \\ 상태\nb.sqlite'
    mapping = {
        "owner": tricky,
        "database": database,
        "backend": "modem",
        "modem": {"port": 'rfc2217://"host"\\port'},
        "guardians": [{"name": tricky, "number": "010-0000-0001"},
                      {"name": "Alex", "number": "+82 10 0000 0002", "language": "en"}],
        "devices": [{"name": '비상벨 "1"\n', "passkey": "093514"}],
    }
    config = rc.load(rc.write_config(tmp_path / "relay.toml", mapping))
    assert config.owner == tricky
    assert [g.name for g in config.guardians] == [tricky, "Alex"]
    assert config.database == database
    assert config.modem is not None and config.modem.port == 'rfc2217://"host"\\port'
    assert [(d.name, d.passkey) for d in config.devices] == [('비상벨 "1"', "093514")]  # names are stripped
    assert rc.dump_config(mapping) == (tmp_path / "relay.toml").read_text(encoding="utf-8")
