"""Relay texts: every template in both languages, its facts, and the 3-segment SMS budget."""

from dataclasses import replace

import pytest

from jikimi import protocol as p
from jikimi_host.relay import messages as m
from jikimi_host.relay.messages import KINDS, LANGUAGES, Facts, Location, render, sms_segments

SEOUL = Location(37.56650, 126.97800, 25)
AT = 1778303007.0  # 2026-05-09 14:03:27 KST (05:03:27 UTC)


def facts(**changes) -> Facts:
    base = Facts(owner="김지은", device="비상벨", at=AT, mode=p.MODE_LOUD, trigger=p.TRIGGER_HOLD,
                 battery_pct=80, location=SEOUL, alarm_at=AT - 30, cancel_source=p.SOURCE_DEVICE,
                 guardians_notified=3, last_seen=AT - 2700)
    return replace(base, **changes)


@pytest.mark.parametrize("language", LANGUAGES)
@pytest.mark.parametrize("kind", KINDS)
def test_every_template_names_who_and_which_device(kind, language):
    text = render(kind, language, facts())
    assert "김지은" in text and "비상벨" in text


@pytest.mark.parametrize("kind", ["alarm", "door_intrusion", "emergency_report"])
@pytest.mark.parametrize("language", LANGUAGES)
def test_alarms_carry_the_local_time_the_battery_a_map_link_and_an_aml_line(kind, language):
    text = render(kind, language, facts())
    assert "05-09 14:03" in text  # Asia/Seoul, not UTC (05:03)
    assert "https://maps.google.com/?q=37.56650,126.97800" in text
    if kind == "emergency_report":
        assert "LOC:37.56650,126.97800 ACC:25m" in text  # for the dispatcher
    else:
        assert "80%" in text and ("±25m" if language == "ko" else "+/-25m") in text


@pytest.mark.parametrize("kind", ["alarm", "emergency_report"])
def test_without_a_fix_the_text_says_the_location_is_unavailable(kind):
    assert "위치 확인 불가" in render(kind, "ko", facts(location=None))
    assert "Location unavailable" in render(kind, "en", facts(location=None))
    assert "maps.google" not in render(kind, "en", facts(location=None))


@pytest.mark.parametrize("kind", ["alarm", "door_intrusion"])
def test_guardians_get_the_fix_with_its_accuracy_and_its_age_in_words(kind):
    fix = Location(37.56650, 126.97800, 12, fixed_at=AT - 150)
    assert "maps.google.com/?q=37.56650,126.97800 ±12m (2분 전)" in render(kind, "ko", facts(location=fix))
    assert "maps.google.com/?q=37.56650,126.97800 +/-12m (2 min ago)" in render(kind, "en", facts(location=fix))
    assert "(방금)" in render(kind, "ko", facts(location=replace(fix, fixed_at=AT - 20)))
    assert "(3시간 전)" in render(kind, "ko", facts(location=replace(fix, fixed_at=AT - 3 * 3600)))


def test_the_dispatcher_gets_the_fix_as_an_aml_line_with_its_time():
    fix = Location(37.56650, 126.97800, 12, fixed_at=AT - 150)
    assert "LOC:37.56650,126.97800 ACC:12m TOP:14:00:57" in render("emergency_report", "ko", facts(location=fix))


@pytest.mark.parametrize("kind", ["alarm", "emergency_report"])
def test_with_no_current_fix_the_last_known_one_is_given_with_its_time(kind):
    last = Location(37.56650, 126.97800, 30, fixed_at=AT - 3600, current=False)
    ko, en = render(kind, "ko", facts(location=last)), render(kind, "en", facts(location=last))
    assert "위치 확인 불가. 마지막 위치(05-09 13:03)" in ko
    assert ("LOC:37.56650,126.97800 ACC:30m TOP:13:03:27" if kind == "emergency_report"
            else "maps.google.com/?q=37.56650,126.97800") in ko
    assert "Location unavailable; last 05-09 13:03 KST" in en
    assert "분 전" not in ko  # its time is given, not an age that reads as current


def test_the_trigger_is_put_in_words_and_an_unknown_one_still_relayed():
    assert "버튼 길게 누름" in render("alarm", "ko", facts())
    assert "button pressed 3x" in render("alarm", "en", facts(trigger=p.TRIGGER_TRIPLE_PRESS))
    assert "pull-pin pulled" in render("alarm", "en", facts(trigger=p.TRIGGER_PULL_PIN))
    assert "trigger 77" in render("alarm", "en", facts(trigger=77))


def test_a_silent_alarm_asks_guardians_not_to_call():
    assert "전화말고 문자만" in render("alarm", "ko", facts(mode=p.MODE_SILENT))
    assert "don't call" in render("alarm", "en", facts(mode=p.MODE_SILENT))
    assert "don't call" not in render("alarm", "en", facts())
    assert "무음신고" in render("emergency_report", "ko", facts(mode=p.MODE_SILENT))


def test_a_location_update_ties_itself_to_the_live_alarm_and_keeps_a_silent_alarm_silent():
    moved = Location(37.57120, 126.98650, 12, fixed_at=AT - 5)
    for language, head, advice in (("ko", "[지키미 위치]", "전화말고 문자만"), ("en", "[Jikimi LOCATION]", "Text, don't call")):
        loud = render("location_update", language, facts(location=moved, alarm_at=AT - 240))
        silent = render("location_update", language, facts(location=moved, alarm_at=AT - 240, mode=p.MODE_SILENT))
        assert loud.startswith(head) and moved.map_link() in loud
        assert "13:59" in loud  # the alarm it follows (AT - 240 s, KST)
        assert advice in silent and advice not in loud


def test_a_time_from_an_unset_device_clock_is_marked_as_the_receive_time():
    assert "(수신)" in render("alarm", "ko", facts(at_is_receive_time=True))
    assert "(received)" in render("alarm", "en", facts(at_is_receive_time=True))


def test_the_emergency_report_says_how_many_guardians_were_texted():
    assert "보호자3명 문자받음" in render("emergency_report", "ko", facts())
    assert "3 guardians texted" in render("emergency_report", "en", facts())


def test_the_cancellation_says_whether_112_was_told():
    assert "112 신고 안 됨" in render("cancelled", "ko", facts())
    assert "112에 취소 알림" in render("cancelled", "ko", facts(emergency_reported=True))
    text = render("emergency_cancelled", "ko", facts())
    assert "05-09 14:02:57" in text and "14:03:27" in text and "기기에서 취소됨" in text


def test_unknown_kinds_and_languages_are_refused():
    with pytest.raises(m.MessageError, match="no message kind 'sos'"):
        render("sos", "ko", facts())
    with pytest.raises(m.MessageError, match="no language 'fr'"):
        render("alarm", "fr", facts())


# --- SMS segments ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, segments",
    [
        ("", 1),
        ("a" * 160, 1),
        ("a" * 161, 2),
        ("a" * 306, 2),
        ("a" * 307, 3),
        ("€" * 80, 1),  # extension characters take 2 septets
        ("€" * 81, 2),
        ("a" * 159 + "€", 2),  # 161 septets: no longer one segment
        ("a" * 152 + "€" + "a" * 152, 3),  # the escape pair is never split: 152 | 2+151 | 1
        ("가" * 70, 1),  # UCS-2
        ("가" * 71, 2),
        ("가" * 134, 2),
        ("가" * 135, 3),
        ("a" * 69 + "가", 1),  # one non-GSM character makes the whole text UCS-2
        ("😀" * 35, 1),  # a surrogate pair is 2 UTF-16 units
        ("😀" * 36, 2),
        ("가" * 69 + "😀", 2),  # 71 units
        ("가" * 66 + "😀" + "가" * 66, 3),  # 134 units, but the pair is not split: 66 | 2+65 | 1
    ],
)
def test_sms_segments(text, segments):
    assert sms_segments(text) == segments


NAMES = ["가" * 32, "W" * 32, "Kim 지은" * 4, "😀" * 16]
LOCATIONS = [None, Location(37.56650, 126.97800, 9999), Location(-33.86785, -151.20732, 9999),
             Location(-33.86785, -151.20732, 9999, fixed_at=AT - 7000),
             Location(-33.86785, -151.20732, 9999, fixed_at=AT - 86400 * 30, current=False)]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("language", LANGUAGES)
def test_every_template_fits_three_segments_with_32_character_names_and_a_location(kind, language):
    for name in NAMES:
        for location in LOCATIONS:
            for mode in (p.MODE_LOUD, p.MODE_SILENT):
                for trigger in (p.TRIGGER_HOLD, p.TRIGGER_DOOR_INTRUSION, 200):
                    f = facts(owner=name, device=name, location=location, mode=mode, trigger=trigger,
                              at_is_receive_time=True, battery_pct=100, cancel_source=p.SOURCE_PULL_PIN,
                              emergency_reported=True, guardians_notified=5)
                    text = render(kind, language, f)
                    assert sms_segments(text) <= m.MAX_SEGMENTS, (kind, language, name, text)
                    if location is not None and kind in ("alarm", "door_intrusion", "location_update"):
                        assert location.map_link() in text
                    if location is not None and kind == "emergency_report":
                        assert location.aml_line() in text


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("language, owner, device", [("ko", "가" * 32, "나" * 32), ("en", "W" * 32, "D" * 32)])
def test_names_in_the_texts_own_script_are_never_shortened(kind, language, owner, device):
    """Shortening names is the last resort for mixed scripts (Hangul names in an English text)."""
    f = facts(owner=owner, device=device, location=Location(37.56650, 126.97800, 9999), mode=p.MODE_SILENT,
              at_is_receive_time=True, battery_pct=100)
    text = render(kind, language, f)
    assert owner in text and device in text, text


def test_extreme_names_are_shortened_rather_than_the_location_dropped():
    text = render("alarm", "en", facts(owner="가" * 32, device="나" * 32, mode=p.MODE_SILENT, at_is_receive_time=True,
                                       battery_pct=100))
    assert "…" in text
    assert "maps.google.com/?q=37.56650,126.97800 +/-25m" in text
    assert sms_segments(text) <= 3


def test_messages_md_shows_what_the_code_renders():
    assert m.MESSAGES_MD.read_text(encoding="utf-8") == m.messages_markdown(), (
        "MESSAGES.md is stale: run `python -m jikimi_host.relay.messages`"
    )


def test_messages_md_has_every_kind_in_both_languages():
    doc = m.MESSAGES_MD.read_text(encoding="utf-8")
    for kind in KINDS:
        for language in LANGUAGES:
            assert render(kind, language, m.example_facts(kind)) in doc
