"""While an alarm is live the guardians keep learning where the owner is (issue 15): every
`location.update_every_s` (default 120 s) a `location_update` text with her new position, when she
has moved more than the fix's accuracy; none once the alarm is cancelled. Told as incidents on the
store (time passed in), then on a relay reading the real gpsd, fed a walk by gpsfake."""

from __future__ import annotations

import asyncio

import pytest

from jikimi import protocol as p
from jikimi_host.relay import config as rc
from jikimi_host.relay.messages import Location
from jikimi_host.relay.policy import distance_m, has_moved
from jikimi_host.relay.service import Relay, SimTelephony
from jikimi_host.relay.store import RelayStore
from jikimi_host.rig.gps import GPSFAKE_MISSING, GpsFake, free_port, gpsfake_missing, track_log
from jikimi_host.wait import until
from test_relay_location import relay_config
from test_relay_store import ALEX, BELL, DOOR, GUARDIANS, MOM, T0, alarm, cancel, kinds_to, make_config, send_due, to

EVERY_S = 120.0
HOME = Location(37.56650, 126.97800, 10, fixed_at=T0 - 2)


def north(metres: float, accuracy_m: int = 10, at: float = T0) -> Location:
    """A fix `metres` north of HOME (1 degree of latitude is about 111.2 km)."""
    return Location(HOME.lat + metres / 111_195, HOME.lon, accuracy_m, fixed_at=at)


@pytest.fixture
def store(tmp_path):
    with RelayStore(tmp_path / "relay.sqlite", make_config()) as opened:
        yield opened


def raised(store: RelayStore, where: Location | None = HOME) -> int:
    result = store.record_event(BELL, alarm(1), T0, device_name="비상벨", location=where)
    send_due(store, T0)
    return result.incident_id


def updates_to(store: RelayStore, number: str) -> list[str]:
    by_id = {row.id: row for row in store.outbox()}
    return [d.text for d in store.delivered() if d.recipient == number and by_id[d.outbox_id].kind == "location_update"]


def test_the_distance_and_the_moved_rule():
    assert distance_m(HOME, north(500)) == pytest.approx(500, rel=0.01)
    assert not has_moved(HOME, north(9, accuracy_m=10))  # inside the new fix's accuracy: not news
    assert has_moved(HOME, north(40, accuracy_m=10))
    assert has_moved(None, north(0))  # they were told "location unavailable"
    assert has_moved(Location(HOME.lat, HOME.lon, 10, fixed_at=T0 - 900, current=False), north(0))  # only a last known


def test_a_walking_owner_gets_her_new_position_to_every_guardian_every_two_minutes(store):
    incident = raised(store)
    assert store.location_update(incident, north(300, at=T0 + 60), T0 + 60, EVERY_S) == ()  # too soon
    assert store.location_update(incident, north(5, at=T0 + 121), T0 + 121, EVERY_S) == ()  # has not moved
    ids = store.location_update(incident, north(300, at=T0 + 125), T0 + 125, EVERY_S)
    assert len(ids) == len(GUARDIANS)
    send_due(store, T0 + 125)
    for number in GUARDIANS:
        assert kinds_to(store, number) == [("alarm", "sms"), ("location_update", "sms")]
        assert north(300).map_link() in updates_to(store, number)[0]
    assert "(비상벨, " in updates_to(store, MOM)[0] and "[지키미 위치]" in updates_to(store, MOM)[0]
    assert "[Jikimi LOCATION]" in updates_to(store, ALEX)[0]
    # the next one is two minutes after this one, and from where she was last said to be
    assert store.location_update(incident, north(900, at=T0 + 200), T0 + 200, EVERY_S) == ()
    assert store.location_update(incident, north(305, at=T0 + 250), T0 + 250, EVERY_S) == ()  # 5 m on: not news
    assert len(store.location_update(incident, north(900, at=T0 + 260), T0 + 260, EVERY_S)) == len(GUARDIANS)
    send_due(store, T0 + 260)
    assert [north(900).map_link() in text for text in updates_to(store, MOM)] == [False, True]
    assert store.incidents()[0].location == north(900, at=T0 + 260)
    assert not store.outbox("pending")  # nothing for 112: its report went at the window, with the first fix
    assert to(store, "112") and HOME.aml_line().split(" TOP")[0] in to(store, "112")[0]


def test_the_updates_stop_when_the_alarm_is_cancelled_and_a_pending_one_is_withdrawn(store):
    incident = raised(store)
    ids = store.location_update(incident, north(300, at=T0 + 130), T0 + 130, EVERY_S)  # not sent yet: no network
    store.record_event(BELL, cancel(2, alarm_seq=1, at=T0 + 131), T0 + 131)
    assert {store.outbox_row(i).state for i in ids} == {"cancelled"}
    assert store.location_update(incident, north(2000, at=T0 + 400), T0 + 400, EVERY_S) == ()
    send_due(store, T0 + 400)
    for number in GUARDIANS:
        assert kinds_to(store, number) == [("alarm", "sms"), ("cancelled", "sms")]


def test_a_newer_position_supersedes_one_still_waiting_for_the_network(store):
    incident = raised(store)
    first = store.location_update(incident, north(300, at=T0 + 130), T0 + 130, EVERY_S)
    send_due(store, T0 + 130, fail=set(GUARDIANS))  # the modem refuses them all
    second = store.location_update(incident, north(900, at=T0 + 260), T0 + 260, EVERY_S)
    assert {store.outbox_row(i).state for i in first} == {"cancelled"}
    assert any(e.action == "cancelled" and e.detail == "superseded by a newer location update" for e in store.audit_log())
    send_due(store, T0 + 400)
    for number in GUARDIANS:
        assert len(updates_to(store, number)) == 1 and north(900).map_link() in updates_to(store, number)[0]
    assert {store.outbox_row(i).state for i in second} == {"sent"}


@pytest.mark.parametrize("configured", [None, {"lat": 37.5665, "lon": 126.978, "source": "gpsd"}],
                         ids=["no location at all", "the config's fallback point"])
def test_guardians_not_given_a_measured_fix_get_the_first_one_at_once(tmp_path, configured):
    with RelayStore(tmp_path / "relay.sqlite", make_config(location=configured)) as store:
        incident = raised(store, where=None)
        assert ("위치 확인 불가" in to(store, MOM)[0]) == (configured is None)
        assert len(store.location_update(incident, north(0, at=T0 + 10), T0 + 10, EVERY_S)) == len(GUARDIANS)
        # then the usual pace: nothing new for two minutes
        assert store.location_update(incident, north(800, at=T0 + 60), T0 + 60, EVERY_S) == ()


def test_the_configs_fixed_point_is_never_sent_as_if_she_had_moved_there(store):
    incident = raised(store)
    fixed_point = Location(37.40000, 127.10000, 25)  # no fix time: the config's point, never measured
    assert store.location_update(incident, fixed_point, T0 + 600, EVERY_S) == ()
    stale = Location(37.40000, 127.10000, 25, fixed_at=T0, current=False)
    assert store.location_update(incident, stale, T0 + 600, EVERY_S) == ()


def test_a_door_intrusion_happens_at_the_door_so_her_phone_moving_sends_no_update(store):
    intrusion = store.record_event(DOOR, alarm(1, trigger=p.TRIGGER_DOOR_INTRUSION), T0, device_name="현관문",
                                   location=HOME)
    assert store.location_update(intrusion.incident_id, north(900, at=T0 + 300), T0 + 300, EVERY_S) == ()


def test_a_restarted_relay_neither_repeats_nor_skips_an_update(tmp_path):
    path = tmp_path / "relay.sqlite"
    store = RelayStore(path, make_config())
    incident = raised(store)
    assert store.location_update(incident, north(300, at=T0 + 130), T0 + 130, EVERY_S)
    store.close()
    with RelayStore(path, make_config()) as store:
        assert store.location_update(incident, north(300, at=T0 + 140), T0 + 140, EVERY_S) == ()  # already told
        assert store.location_update(incident, north(900, at=T0 + 200), T0 + 200, EVERY_S) == ()  # too soon
        assert store.location_update(incident, north(900, at=T0 + 251), T0 + 251, EVERY_S)


def test_update_every_s_is_validated_and_only_for_a_live_source():
    base = {"lat": 37.5665, "lon": 126.978}
    assert make_config(location={**base, "source": "gpsd"}).location_settings.update_every_s == 120
    assert make_config(location={**base, "source": "gpsd", "update_every_s": 300}).location_settings.update_every_s == 300
    with pytest.raises(rc.RelayConfigError, match="location.update_every_s: the fixed point never moves"):
        make_config(location={**base, "update_every_s": 60})
    with pytest.raises(rc.RelayConfigError, match="location.update_every_s: must be 5..3600 seconds"):
        make_config(location={**base, "source": "gpsd", "update_every_s": 1})


# --- a relay on the real gpsd -------------------------------------------------------------------

WALK = [(37.56650 + i * 9e-5, 126.97800) for i in range(40)]  # up a street at 10 m a second


async def test_a_relay_on_gpsd_texts_a_walking_owners_new_position_until_the_owner_cancels(tmp_path):
    if gpsfake_missing():
        pytest.fail(GPSFAKE_MISSING, pytrace=False)
    log = tmp_path / "walk.nmea"
    track_log(log, WALK)
    fake = GpsFake(log, free_port()).start()
    try:
        await fake.listening()
    except BaseException:
        fake.stop()
        raise
    relay = Relay(relay_config(tmp_path, fake.port, cancel_window_s=60, location={"update_every_s": 5}), "tcp-client:127.0.0.1:9", SimTelephony(), as_json=True)
    await relay.location.start()
    tasks = [asyncio.create_task(relay.sender()), asyncio.create_task(relay.location_updates())]
    try:
        await until(relay.location.latest, 30, "a fix from gpsd", log=lambda: f"{relay.location.status}\n{fake.stderr()}")
        first = relay.location.latest()
        await relay._on_event(BELL, "비상벨", p.Message(p.ALARM_RAISED, epoch=7, seq=1, time=0, mode=p.MODE_SILENT,
                                                      trigger=p.TRIGGER_TRIPLE_PRESS, battery_pct=80))
        updates = await until(lambda: [d for d in relay.store.delivered() if "[Jikimi LOCATION]" in d.text],
                              30, "a location update to the English guardian")
        assert first is not None and first.to_location().map_link() not in updates[0].text
        assert "Text, don't call" in updates[0].text  # a silent alarm stays silent
        await until(lambda: any("[지키미 위치]" in d.text for d in relay.store.delivered()), 10, "the Korean update")
        relay._owner_cancel(relay.store.active_incident(BELL).device, "비상벨")
        await until(lambda: sum("[Jikimi CANCELLED]" in d.text for d in relay.store.delivered()), 10, "the cancel")
        told = len([d for d in relay.store.delivered() if "LOCATION" in d.text or "[지키미 위치]" in d.text])
        await asyncio.sleep(2 * 5 + 1)  # two update periods of an owner still walking
        assert len([d for d in relay.store.delivered() if "LOCATION" in d.text or "[지키미 위치]" in d.text]) == told
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await relay.location.close()
        relay.store.close()
        relay.keystore.close()
        fake.stop()


def test_112s_report_gives_where_she_is_as_it_goes_out_not_where_she_was_at_the_alarm(store):
    raised(store)
    report = next(r for r in store.due(T0 + 20, limit=100) if r.kind == "emergency_report" and r.channel == "sms")
    assert HOME.aml_line() in report.text  # rendered at the alarm
    assert store.begin_attempt(report.id, T0 + 20)
    now = north(170, at=T0 + 19)  # 20 s in a car
    text = store.report_where_she_is_now(report.id, now, T0 + 20)
    assert now.aml_line() in text and HOME.aml_line() not in text
    assert store.outbox_row(report.id).text == text  # what goes out is what the audit shows
    assert any(e.action == "report_location" and e.outbox_id == report.id for e in store.audit_log())
    # a resend (the modem refused it) sends the words already tried, wherever she is by then
    store.mark_failed(report.id, T0 + 21, "+CMS ERROR: 500", retryable=True)
    assert store.begin_attempt(report.id, T0 + 40)
    assert store.report_where_she_is_now(report.id, north(900, at=T0 + 39), T0 + 40) == text
    # and nothing but 112's report is rewritten
    guardian = next(r for r in store.outbox() if r.kind == "alarm")
    assert store.report_where_she_is_now(guardian.id, now, T0 + 40) == guardian.text
