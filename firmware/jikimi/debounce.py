"""Debouncer for the button, the door reed switch, the pull-pin and the tamper switch.

Fast and glitch-proof at once (see CORE.md, "Debounce"):

- a change of the raw level is accepted once the raw level has stayed at the new value for
  `glitch_ms` without interruption: shorter pulses (a glitch) are ignored;
- once a change is accepted, raw edges are ignored for `bounce_ms` (lockout), so the contact
  bounce that follows a press or a release cannot produce a second edge.

Guarantees (tested as properties): a press or release whose contacts bounce for up to
`bounce_ms` is reported exactly once; when every press and every pause between presses stays
steady for the debounce window (`bounce_ms + glitch_ms`) after its bounce, none is lost and
each is reported once the contact has been steady for `glitch_ms`, at the latest `glitch_ms`
after its last bounce edge; a clean (unbouncing) press longer than `glitch_ms` is never lost
when the pause before it lasts `2 * bounce_ms`. A press shorter than the window that starts
right after another change can be swallowed by that change's lockout. The reported time depends only on the
raw samples, not on when the caller happens to poll.

Feed every raw sample (each pin IRQ, each poll) to `update(level, now_ms)`. It returns the
accepted edge as `(level, at_ms)` or None. `deadline()` is when to call again. When samples were
lost (the app's edge queue was full), `resync(level, now_ms)` instead: the stretch nobody saw
counts as bounce, so a lost sample can delay a change but never invent one.
"""

from jikimi import ticks
from jikimi.config import DEBOUNCE_BOUNCE_MS, DEBOUNCE_GLITCH_MS


class Debouncer:
    def __init__(self, level, now_ms, glitch_ms=DEBOUNCE_GLITCH_MS,
                 bounce_ms=DEBOUNCE_BOUNCE_MS):
        self.glitch_ms = glitch_ms
        self.bounce_ms = bounce_ms
        self.level = level  # debounced (accepted) level
        self._raw = level
        self._raw_since = now_ms  # when the raw level last changed
        self._lockout_until = None  # None once over, so an old value cannot wrap around

    def _accept_time(self):
        """When the pending raw level will be accepted if it stays put."""
        at = ticks.add(self._raw_since, self.glitch_ms)
        if self._lockout_until is not None and ticks.diff(self._lockout_until, at) > 0:
            at = self._lockout_until
        return at

    def deadline(self):
        """When to call `update` next: a pending change's acceptance, else the lockout's end
        (so no old timestamp stays behind), else None."""
        if self._raw != self.level:
            return self._accept_time()
        return self._lockout_until

    def poll(self, now_ms):
        """`update` with the last raw sample: lets a pending change be accepted on time."""
        return self.update(self._raw, now_ms)

    def resync(self, level, now_ms):
        """Samples were lost: the raw level is `level` at `now_ms`, and what it did since the
        last sample is unknown. Nothing is accepted for that stretch (a change still pending
        from before it is not assumed to have held); from now_ms on the level must stay put for
        `glitch_ms`, as after any raw edge. Never returns an edge."""
        if self._lockout_until is not None and ticks.diff(now_ms, self._lockout_until) >= 0:
            self._lockout_until = None
        self._raw = 1 if level else 0
        self._raw_since = now_ms

    def update(self, level, now_ms):
        """Take a raw sample; return the accepted edge (level, at_ms) or None."""
        edge = None
        if self._raw != self.level:
            at = self._accept_time()
            if ticks.diff(now_ms, at) >= 0:
                self.level = self._raw
                self._lockout_until = ticks.add(at, self.bounce_ms)
                edge = (self.level, at)
        if self._lockout_until is not None and ticks.diff(now_ms, self._lockout_until) >= 0:
            self._lockout_until = None
        level = 1 if level else 0
        if level != self._raw:
            self._raw = level
            self._raw_since = now_ms
        return edge
