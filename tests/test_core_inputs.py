"""Debouncer and gesture recogniser: properties over random bounce trains, presses and ticks."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from jikimi import ticks
from jikimi.debounce import Debouncer
from jikimi.gestures import DOUBLE, HOLD, PAIRING, TRIPLE, Gestures

GLITCH_MS = 5
BOUNCE_MS = 20


def debounce(samples, start=0, polls=()):
    """Feed (t, level) raw samples (t relative to `start`) plus extra polls at the given
    relative times; return the accepted edges as (level, relative t)."""
    debouncer = Debouncer(0, start, GLITCH_MS, BOUNCE_MS)
    timeline = sorted([(t, 0, level) for t, level in samples] + [(t, 1, None) for t in polls])
    edges = []

    def run_until(t):
        while True:
            due = debouncer.deadline()
            if due is None or ticks.diff(due, ticks.add(start, t)) > 0:
                return
            edge = debouncer.poll(due)
            if edge:
                edges.append((edge[0], ticks.diff(edge[1], start)))

    for t, is_poll, level in timeline:
        run_until(t)
        now = ticks.add(start, t)
        edge = debouncer.poll(now) if is_poll else debouncer.update(level, now)
        if edge:
            edges.append((edge[0], ticks.diff(edge[1], start)))
    run_until(10**7)
    return edges


@st.composite
def bounce_train(draw, level):
    """Edges for one contact change to `level`: first edge, then toggles within BOUNCE_MS."""
    gaps = draw(st.lists(st.integers(1, 6), max_size=8).map(lambda g: g[: len(g) // 2 * 2]))
    while sum(gaps) > BOUNCE_MS:
        gaps = gaps[:-2]
    edges, current, t = [(0, level)], level, 0
    for gap in gaps:
        t += gap
        current = 1 - current
        edges.append((t, current))
    return edges, t


STEADY_MS = BOUNCE_MS + GLITCH_MS  # the debounce window


@st.composite
def presses(draw, max_presses=6):
    """Physical presses with contact bounce, each press and each pause steady for at least the
    debounce window after its bounce: ([(t, level)], [(first, last) edge time of each change])."""
    samples, settled = [], []
    t = draw(st.integers(0, 100))
    for _ in range(draw(st.integers(1, max_presses))):
        for level in (1, 0):
            train, length = draw(bounce_train(level))
            samples += [(t + dt, lv) for dt, lv in train]
            settled.append((t, t + length))
            t += length + draw(st.integers(STEADY_MS, 2000))
    return samples, settled


@settings(max_examples=300)
@given(presses())
def test_bouncy_presses_are_each_reported_exactly_once_and_on_time(case):
    samples, settled = case
    edges = debounce(samples)
    assert [level for level, _ in edges] == [1, 0] * (len(settled) // 2)
    # never lost, and reported glitch_ms after a steady stretch: at the latest when it settled
    for (_, reported), (first, last) in zip(edges, settled):
        assert first + GLITCH_MS <= reported <= last + GLITCH_MS


@settings(max_examples=200)
@given(st.lists(st.tuples(st.integers(GLITCH_MS, 5000), st.integers(2 * BOUNCE_MS, 5000)), max_size=10))
def test_clean_presses_longer_than_the_glitch_limit_are_never_lost(timings):
    samples, t = [], 0
    for length, pause in timings:
        samples += [(t, 1), (t + length, 0)]
        t += length + pause
    assert [level for level, _ in debounce(samples)] == [1, 0] * len(timings)


@settings(max_examples=200)
@given(presses(), st.integers(0, ticks.PERIOD - 1))
def test_debounce_is_invariant_under_ticks_wraparound(case, start):
    samples, _ = case
    assert debounce(samples, start=start) == debounce(samples)


@settings(max_examples=200)
@given(presses(), st.lists(st.integers(0, 20000), max_size=30))
def test_reported_times_do_not_depend_on_when_the_caller_polls(case, polls):
    samples, _ = case
    assert debounce(samples, polls=polls) == debounce(samples)


@given(st.lists(st.tuples(st.integers(30, 5000), st.integers(1, GLITCH_MS - 1)), max_size=20))
def test_glitches_shorter_than_the_minimum_are_ignored(glitches):
    samples, t = [], 0
    for pause, width in glitches:
        t += pause
        samples += [(t, 1), (t + width, 0)]
        t += width
    assert debounce(samples) == []


def test_a_clean_press_is_reported_glitch_ms_after_its_edge():
    assert debounce([(100, 1), (600, 0)]) == [(1, 105), (0, 605)]


def test_a_press_released_before_it_was_accepted_is_a_glitch():
    assert debounce([(100, 1), (100 + GLITCH_MS - 1, 0)]) == []


# -- lost samples: the app's edge ring overflowed, and the app resyncs -------------------------


def level_at(samples, t):
    """The true raw level at t: the last sample at or before t (0 before the first)."""
    level = 0
    for ts, lv in samples:
        if ts > t:
            break
        level = lv
    return level


def debounce_with_loss(samples, lost_from, resync_at, resync=True):
    """What the app does when its ring overflows: samples from index `lost_from` on that are
    older than `resync_at` never reach the debouncer; at `resync_at` it reads the pin (the true
    level) and resyncs, then feeds the later samples. The debouncer is polled at its deadlines
    only while everything up to then has arrived (the ticker drains the ring before it polls).
    resync=False: the samples are just missing, as in a plain lossy queue."""
    debouncer = Debouncer(0, 0, GLITCH_MS, BOUNCE_MS)
    edges = []

    def record(edge):
        if edge:
            edges.append(edge)

    def run_until(t):
        while (due := debouncer.deadline()) is not None and due <= t:
            record(debouncer.poll(due))

    for t, level in samples[:lost_from]:
        run_until(t)
        record(debouncer.update(level, t))
    if lost_from < len(samples):
        run_until(samples[lost_from][0])  # the first lost edge: nobody sees it, or anything after
        if resync:
            debouncer.resync(level_at(samples, resync_at), resync_at)
    for t, level in samples[lost_from:]:
        if t >= resync_at:
            run_until(t)
            record(debouncer.update(level, t))
    run_until(10**7)
    return edges


def steady_before(samples, level, t):
    """The true raw level was `level` throughout [t - GLITCH_MS, t)."""
    start = t - GLITCH_MS
    return level_at(samples, start) == level and all(lv == level for ts, lv in samples if start < ts < t)


@st.composite
def chatter_with_a_loss(draw):
    """A contact toggling every 0-8 ms (mostly chatter, now and then steady long enough to
    count), the index of the first edge the ring had no room for, and when the app resyncs."""
    gaps = draw(st.lists(st.one_of(st.integers(0, 3), st.integers(0, 8), st.integers(20, 60)),
                         min_size=1, max_size=120))
    samples, t, level = [], 10, 0
    for gap in gaps:
        t += gap
        level = 1 - level
        samples.append((t, level))
    lost_from = draw(st.integers(0, len(samples) - 1))
    resync_at = samples[lost_from][0] + draw(st.integers(0, 80))
    return samples, lost_from, resync_at


@settings(max_examples=500)
@given(chatter_with_a_loss())
def test_after_lost_edges_a_resync_never_invents_a_change_nor_hides_one_that_lasts(case):
    samples, lost_from, resync_at = case
    edges = debounce_with_loss(samples, lost_from, resync_at)
    for level, at in edges:  # every accepted change really held for glitch_ms before it
        assert steady_before(samples, level, at), (level, at)
    accepted = edges[-1][0] if edges else 0
    assert accepted == samples[-1][1]  # the level the contact settles at is the one reported


def test_chatter_that_overflows_the_ring_reports_nothing_when_resynced_and_a_press_if_guessed():
    """A contact chattering for 300 ms (never steady for glitch_ms) that ends released, with
    every edge after the 31st lost (the last one kept closes the contact) and the app reading
    the pin 40 ms after the last edge."""
    samples = [(100 + 2 * i, 1 - i % 2) for i in range(150)]  # 1, 0, 1, ... ending at 0
    assert debounce(samples) == []  # nothing lost: all of it is a glitch
    assert debounce_with_loss(samples, 31, samples[-1][0] + 40) == []
    # Taking the last edge kept as the truth makes a press of the chatter that never ends: a
    # false HOLD alarm 3 s later. That is what the resync is for.
    assert debounce_with_loss(samples, 31, samples[-1][0] + 40, resync=False) == [(1, 165)]


def test_a_press_held_through_lost_edges_is_reported_from_the_resync():
    samples = [(100 + i, 1 - i % 2) for i in range(100)] + [(200, 1)]  # chatter, then held
    assert debounce_with_loss(samples, 32, 230) == [(1, 230 + GLITCH_MS)]


# -- gestures -------------------------------------------------------------------------------


def gestures(edges, start=0, boot_offset=-100000, polls=()):
    """Feed debounced (relative t, pressed) edges; return [(gesture, relative t)]."""
    recogniser = Gestures(ticks.add(start, boot_offset))
    recogniser.poll(start)  # the boot window is long over
    found = []

    def record(result):
        if result:
            found.append((result[0], ticks.diff(result[1], start)))

    def run_until(t):
        while True:
            due = recogniser.deadline()
            if due is None or ticks.diff(due, ticks.add(start, t)) > 0:
                return
            record(recogniser.poll(due))

    for t, kind, pressed in sorted([(t, 0, p) for t, p in edges] + [(t, 1, None) for t in polls]):
        run_until(t)
        now = ticks.add(start, t)
        record(recogniser.poll(now) if kind else recogniser.edge(pressed, now))
    run_until(10**7)
    return found


def clicks(*times, length=100):
    out = []
    for t in times:
        out += [(t, True), (t + length, False)]
    return out


@st.composite
def button_sessions(draw):
    """Random press/release edges: gaps and press lengths from pocket bumps to long holds."""
    edges, t = [], draw(st.integers(0, 1000))
    for _ in range(draw(st.integers(1, 8))):
        length = draw(st.one_of(st.integers(10, 400), st.integers(400, 6000)))
        edges += [(t, True), (t + length, False)]
        t += length + draw(st.one_of(st.integers(30, 700), st.integers(700, 5000)))
    return edges


def test_a_single_short_press_does_nothing():
    assert gestures(clicks(1000)) == []
    assert gestures(clicks(1000, length=2999)) == []


def test_hold_fires_at_three_seconds_while_still_held():
    assert gestures([(1000, True), (9000, False)]) == [(HOLD, 4000)]


def test_three_presses_within_the_window_fire_triple_on_the_third_press():
    assert gestures(clicks(1000, 1400, 2400)) == [(TRIPLE, 2400)]
    assert gestures(clicks(1000, 1400, 2600)) == [(DOUBLE, 2500)]  # third one too late


def test_two_presses_fire_double_when_the_window_ends():
    assert gestures(clicks(1000, 1300)) == [(DOUBLE, 2500)]


def test_a_triple_press_whose_last_press_is_held_does_not_also_hold():
    assert gestures(clicks(1000, 1300) + [(1600, True), (8000, False)]) == [(TRIPLE, 1600)]


def test_pairing_needs_a_power_up_press_let_go_between_10_and_15_s():
    boot = dict(boot_offset=-500)  # the press starts 0.5 s after power-up
    assert gestures([(0, True), (12000, False)], **boot) == [(PAIRING, 12000)]
    assert gestures([(0, True), (5000, False)], **boot) == [(HOLD, 5000)]  # deferred, not lost
    assert gestures([(0, True), (30000, False)], **boot) == [(HOLD, 15000)]  # panic: alarm
    assert gestures([(0, True), (12000, False)]) == [(HOLD, 3000)]  # not after power-up


@settings(max_examples=300)
@given(button_sessions())
def test_each_press_yields_at_most_one_gesture_and_every_long_press_a_hold(edges):
    found = gestures(edges)
    presses = [(start, end) for (start, _), (end, _) in zip(edges[::2], edges[1::2])]
    assert len(found) <= len(presses)
    holds = {t for g, t in found if g == HOLD}
    triples = {t for g, t in found if g == TRIPLE}
    long_presses = [start for start, end in presses if end - start >= 3000]
    assert holds <= {start + 3000 for start in long_presses}
    for start in long_presses:  # a HOLD 3 s in, unless this press completed a triple press
        assert start + 3000 in holds or start in triples


@settings(max_examples=200)
@given(button_sessions(), st.integers(0, ticks.PERIOD - 1))
def test_gestures_are_invariant_under_ticks_wraparound(edges, start):
    assert gestures(edges, start=start) == gestures(edges)


@settings(max_examples=200)
@given(button_sessions(), st.lists(st.integers(0, 60000), max_size=30))
def test_gesture_times_do_not_depend_on_when_the_caller_polls(edges, polls):
    assert gestures(edges, polls=polls) == gestures(edges)


@settings(max_examples=200)
@given(st.lists(st.tuples(st.integers(1600, 10000), st.integers(10, 2900)), min_size=1, max_size=10))
def test_isolated_short_presses_never_fire_anything(gaps_and_lengths):
    edges, t = [], 0
    for gap, length in gaps_and_lengths:
        t += gap
        edges += [(t, True), (t + length, False)]
        t += length
    assert gestures(edges) == []
