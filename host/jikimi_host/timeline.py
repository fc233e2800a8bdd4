"""An incident's timeline: what each actor did when (marks), and what lasted (spans: the siren
sounding, the cancel window, the wait for 112), drawn to a time scale as an SVG picture with one
lane per actor. `jikimi demo` fills one; the picture reads without the console output.

Korean names and texts need a font with Hangul: the picture asks for one by name (FONT_STACK) and
`cjk_font_missing()` says which to install when the machine has none.
"""

from __future__ import annotations

import math
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from html import escape

LANES = ("owner", "bell", "door", "relay", "guardians", "112")
COLOURS = {"owner": "#555555", "bell": "#c0392b", "door": "#8e44ad", "relay": "#2471a3",
           "guardians": "#1e8449", "112": "#d35400"}
# Marks: what happened at a moment. "action" a person's; "event" a device's or the relay's;
# "sms" and "call" what the relay sent (drawn as an envelope and a handset-like diamond).
MARKS = ("action", "event", "sms", "call")
# Spans: "siren" the buzzer sounding; "cancel_window" from an alarm until 112 may be told (or its
# cancel); "to_112" from the window's end until 112 was texted and called.
SPANS = ("siren", "cancel_window", "to_112")
# Hangul needs a CJK font; these are the common ones per system, then the generic family.
FONT_STACK = ("'Noto Sans CJK KR', 'Noto Sans KR', 'Source Han Sans KR', NanumGothic, 'Malgun Gothic', "
              "'Apple SD Gothic Neo', sans-serif")
CJK_FONT_PACKAGE = "fonts-noto-cjk"  # Debian's; the picture names it too

PX_PER_S = 20.0
LEFT, RIGHT, TOP, LANE_H = 96, 40, 70, 86
# A lane's labels go in the first of its rows where they fit; a label that fits in none is left
# out (its mark's tooltip has the text): a picture of overlapping words tells nothing.
LABEL_ROWS = 4
LABEL_CHARS = 30


@dataclass
class Entry:
    at_ms: float  # since the timeline started
    lane: str
    text: str
    kind: str = "event"  # one of MARKS


@dataclass
class Span:
    start_ms: float
    end_ms: float
    lane: str
    kind: str  # one of SPANS
    text: str = ""


@dataclass
class Timeline:
    t0: float = field(default_factory=time.monotonic)
    wall0: float = field(default_factory=time.time)
    entries: list[Entry] = field(default_factory=list)
    spans: list[Span] = field(default_factory=list)

    def ms(self, monotonic_s: float) -> float:
        return (monotonic_s - self.t0) * 1000

    def ms_from_wall(self, wall_s: float) -> float:
        return (wall_s - self.wall0) * 1000

    def add(self, lane: str, text: str, at_ms: float | None = None, kind: str = "event") -> None:
        if lane not in LANES or kind not in MARKS:
            raise ValueError(f"no lane {lane!r} or mark {kind!r}: lanes {LANES}, marks {MARKS}")
        self.entries.append(Entry(self.ms(time.monotonic()) if at_ms is None else at_ms, lane, text, kind))

    def span(self, lane: str, kind: str, start_ms: float, end_ms: float, text: str = "") -> None:
        if lane not in LANES or kind not in SPANS:
            raise ValueError(f"no lane {lane!r} or span {kind!r}: lanes {LANES}, spans {SPANS}")
        self.spans.append(Span(start_ms, max(start_ms, end_ms), lane, kind, text))

    def sorted(self) -> list[Entry]:
        return sorted(self.entries, key=lambda e: e.at_ms)


def cjk_font_missing() -> str | None:
    """What to install for the picture's Korean, or None when fontconfig knows a Hangul font here
    (or cannot be asked: then the picture's own note says it)."""
    if shutil.which("fc-list") is None:
        return None
    try:
        found = subprocess.run(["fc-list", ":lang=ko", "family"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    if found.strip():
        return None
    return (f"no font with Hangul on this machine: the picture's Korean shows as boxes; install one, e.g. "
            f"`apt-get install {CJK_FONT_PACKAGE}` (Debian, Ubuntu)")


def x_of(at_ms: float) -> float:
    return LEFT + at_ms / 1000 * PX_PER_S


def lane_top(lane: str) -> float:
    return TOP + LANES.index(lane) * LANE_H


def label_width(text: str) -> float:
    """About how wide `text` is at the labels' 9.5 px: Hangul and other wide scripts twice a letter."""
    return sum(9.5 if ord(char) >= 0x1100 else 5.4 for char in text)


def _short(text: str) -> str:
    line = text.splitlines()[0] if text else ""
    return line if len(line) <= LABEL_CHARS else line[: LABEL_CHARS - 1] + "…"


def _mark(entry: Entry, x: float, y: float) -> str:
    colour = COLOURS[entry.lane]
    if entry.kind == "sms":  # an envelope
        return (f'<g class="mark sms"><rect x="{x - 6:.1f}" y="{y - 4}" width="12" height="8" fill="white" '
                f'stroke="{colour}" stroke-width="1.5"/><path d="M{x - 6:.1f},{y - 4} L{x:.1f},{y + 1} '
                f'L{x + 6:.1f},{y - 4}" fill="none" stroke="{colour}"/></g>')
    if entry.kind == "call":
        return (f'<path class="mark call" d="M{x:.1f},{y - 7} L{x + 7:.1f},{y} L{x:.1f},{y + 7} '
                f'L{x - 7:.1f},{y} Z" fill="{colour}"/>')
    if entry.kind == "action":
        return f'<rect class="mark action" x="{x - 4:.1f}" y="{y - 4}" width="8" height="8" fill="{colour}"/>'
    return f'<circle class="mark event" cx="{x:.1f}" cy="{y}" r="3.5" fill="{colour}"/>'


def svg(timeline: Timeline, title: str) -> str:
    """The timeline to scale: x is time (PX_PER_S), one lane per actor; spans as bars, marks on
    the lane's line, each with its text (the full text in its tooltip)."""
    entries = timeline.sorted()
    end_ms = max([e.at_ms for e in entries] + [s.end_ms for s in timeline.spans] + [1000.0])
    width = x_of(end_ms) + RIGHT + 200  # room for the last label
    height = TOP + LANE_H * len(LANES) + 64
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height}" '
           f'viewBox="0 0 {width:.0f} {height}" font-family="{FONT_STACK}" font-size="11">',
           f"<desc>Drawn for a font with Hangul ({CJK_FONT_PACKAGE} on Debian): the names and texts are "
           f"Korean.</desc>",
           '<rect width="100%" height="100%" fill="white"/>',
           f'<text x="12" y="24" font-size="16" font-weight="bold">{escape(title)}</text>']
    # the time axis: a tick every 5 s, a label every 10 s
    axis_y = TOP + LANE_H * len(LANES) + 8
    out.append(f'<line x1="{LEFT}" y1="{axis_y}" x2="{x_of(end_ms):.1f}" y2="{axis_y}" stroke="#999"/>')
    for second in range(0, math.ceil(end_ms / 1000) + 1, 5):
        x = x_of(second * 1000)
        out.append(f'<line x1="{x:.1f}" y1="{TOP - 6}" x2="{x:.1f}" y2="{axis_y + 4}" '
                   f'stroke="{"#e4e4e4" if second % 10 else "#cfcfcf"}"/>')
        if second % 10 == 0:
            out.append(f'<text x="{x:.1f}" y="{axis_y + 18}" text-anchor="middle" fill="#777">{second} s</text>')
    for lane in LANES:
        top = lane_top(lane)
        out.append(f'<text x="12" y="{top + 24}" font-weight="bold" fill="{COLOURS[lane]}">{lane}</text>')
        out.append(f'<line x1="{LEFT}" y1="{top + 20}" x2="{x_of(end_ms):.1f}" y2="{top + 20}" stroke="#eee"/>')
    styles = {"siren": ("#e74c3c", 0.35), "cancel_window": ("#f5b041", 0.35), "to_112": ("#d35400", 0.2)}
    for span in timeline.spans:
        colour, opacity = styles[span.kind]
        x0, x1 = x_of(span.start_ms), x_of(span.end_ms)
        y = lane_top(span.lane) + (12 if span.kind == "siren" else 4)
        h = 16 if span.kind == "siren" else 32
        tip = escape(f"{span.text or span.kind}: {span.start_ms / 1000:.1f}–{span.end_ms / 1000:.1f} s")
        out.append(f'<rect class="span {span.kind}" x="{x0:.1f}" y="{y}" width="{max(x1 - x0, 1):.1f}" height="{h}" '
                   f'fill="{colour}" fill-opacity="{opacity}"><title>{tip}</title></rect>')
        if span.text:
            out.append(f'<text x="{x0 + 3:.1f}" y="{y + 11}" font-size="9" fill="#7b3f00">{escape(span.text)}</text>')
    last_x = {lane: [-1e9] * LABEL_ROWS for lane in LANES}
    for entry in entries:
        x, top = x_of(entry.at_ms), lane_top(entry.lane)
        tip = escape(f"{entry.at_ms / 1000:.3f} s  {entry.lane}: {entry.text}")
        out.append(f"<g><title>{tip}</title>{_mark(entry, x, top + 20)}")
        label = _short(entry.text)
        rows = last_x[entry.lane]
        row = next((i for i, end in enumerate(rows) if end < x), None)
        if row is not None:
            rows[row] = x + 5 + label_width(label) + 6
            out.append(f'<text x="{x + 5:.1f}" y="{top + 36 + row * 12}" font-size="9.5" fill="{COLOURS[entry.lane]}">'
                       f"{escape(label)}</text>")
        out.append("</g>")
    legend_y = height - 14
    out.append(f'<text x="12" y="{legend_y}" fill="#555" font-size="10">■ a person\'s action  ● an event  '
               f'✉ an SMS  ◆ a call   bars: siren sounding, cancel window (amber), until 112 is told (orange)  '
               f'— {PX_PER_S:g} px per second</text>')
    out.append("</svg>")
    return "\n".join(out)
