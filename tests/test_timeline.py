"""The demo's picture (issue 18): drawn to a time scale, a lane per actor, the cancel window and
the wait for 112 as spans, every SMS and call as a mark, with a font that shows Korean."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import pytest

from jikimi_host import timeline as tl

SVG = "{http://www.w3.org/2000/svg}"


def incident() -> tl.Timeline:
    line = tl.Timeline(t0=0.0, wall0=0.0)
    line.add("owner", "holds the bell's button (3 s)", 1000, kind="action")
    line.add("bell", "event alarm_raised", 4000)
    line.span("bell", "siren", 4000, 34000)
    line.add("guardians", "SMS +821000000001: [지키미] 김지은님 비상벨", 5000, kind="sms")
    line.add("guardians", "SMS +821000000002: [Jikimi] alarm", 5100, kind="sms")
    line.span("relay", "cancel_window", 4500, 24500, "cancel window (비상벨)")
    line.span("112", "to_112", 24500, 25000, "112 due")
    line.add("112", "SMS 112: report", 25000, kind="sms")
    line.add("112", "CALL 112: ...", 25200, kind="call")
    return line


def drawing(line: tl.Timeline) -> ET.Element:
    return ET.fromstring(tl.svg(line, "test"))  # well-formed XML, or this raises


def test_marks_sit_at_their_time_on_one_scale():
    root = drawing(incident())
    events = [float(c.get("cx")) for c in root.iter(f"{SVG}circle")]
    assert events == [pytest.approx(tl.x_of(4000))]
    actions = [float(r.get("x")) + 4 for r in root.iter(f"{SVG}rect") if "action" in (r.get("class") or "")]
    assert actions == [pytest.approx(tl.x_of(1000))]
    assert tl.x_of(25000) - tl.x_of(5000) == pytest.approx(20 * tl.PX_PER_S)  # 20 s are 20 s wide


def test_every_sms_and_call_is_a_mark_and_the_windows_are_spans():
    root = drawing(incident())
    classes = [element.get("class") or "" for element in root.iter()]
    assert classes.count("mark sms") == 3 and classes.count("mark call") == 1
    spans = {element.get("class"): element for element in root.iter(f"{SVG}rect")
             if (element.get("class") or "").startswith("span ")}
    assert set(spans) == {"span siren", "span cancel_window", "span to_112"}
    window = spans["span cancel_window"]
    assert float(window.get("width")) == pytest.approx(20 * tl.PX_PER_S)  # the 20 s cancel window
    assert float(spans["span siren"].get("x")) == pytest.approx(tl.x_of(4000))


def test_each_lane_is_drawn_and_labels_in_a_lane_do_not_overlap():
    line = tl.Timeline(t0=0.0, wall0=0.0)
    for i in range(3):  # three texts within 200 ms: three label rows
        line.add("guardians", f"SMS +82100000000{i}: alarm", 5000 + i * 100, kind="sms")
    root = drawing(line)
    texts = [t for t in root.iter(f"{SVG}text") if (t.text or "").startswith("SMS")]
    assert len(texts) == 3 and len({t.get("y") for t in texts}) == 3
    crowded = tl.Timeline(t0=0.0, wall0=0.0)
    for i in range(tl.LABEL_ROWS + 2):  # more than the rows hold: the rest have tooltips only
        crowded.add("relay", f"stored + acked event {i}", 1000 + i, kind="event")
    labels = [t for t in drawing(crowded).iter(f"{SVG}text") if (t.text or "").startswith("stored")]
    assert len(labels) == tl.LABEL_ROWS
    assert len(list(drawing(crowded).iter(f"{SVG}title"))) == tl.LABEL_ROWS + 2
    lane_names = {t.text for t in root.iter(f"{SVG}text")}
    assert set(tl.LANES) <= lane_names


def test_the_picture_asks_for_a_font_with_hangul_and_names_the_package():
    text = tl.svg(incident(), "test")
    assert "Noto Sans CJK KR" in text and tl.CJK_FONT_PACKAGE in text
    assert "비상벨" in text
    assert re.search(r"font-family=\"[^\"]*sans-serif\"", text)


def test_a_missing_hangul_font_is_named(monkeypatch):
    class Done:
        stdout = ""

    monkeypatch.setattr(tl.shutil, "which", lambda name: "/usr/bin/fc-list")
    monkeypatch.setattr(tl.subprocess, "run", lambda *a, **k: Done())
    assert tl.CJK_FONT_PACKAGE in tl.cjk_font_missing()
    Done.stdout = "Noto Sans CJK KR\n"
    assert tl.cjk_font_missing() is None


def test_an_unknown_lane_or_kind_is_refused():
    line = tl.Timeline()
    with pytest.raises(ValueError, match="lane"):
        line.add("police", "x")
    with pytest.raises(ValueError, match="span"):
        line.span("bell", "alarm", 0, 1)
