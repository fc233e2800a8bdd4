"""A bounded queue from an IRQ handler to a task: what the IRQ records, the task does.

Fixed capacity, every slot allocated up front: a push from an IRQ allocates nothing beyond the
item it is given, however fast the IRQs come, and a full ring refuses the new item and counts
it (`dropped`) instead of growing the heap. One producer (one IRQ context) and one consumer (one
task): `push` writes only `_in` and `dropped`, `pop` only `_out`, so neither needs the other to
stop, and an IRQ that interrupts a `pop` half-way loses nothing.

Refusing the newest item (not evicting the oldest) is what makes that safe without locks; the
users decide what a drop means (app.py resynchronises the input, link.py leaves the command
unanswered, PROTOCOL.md §12).
"""

try:
    from micropython import const
except ImportError:

    def const(value):
        return value


_DROPPED_MAX = const(0x3FFFFFFF)  # stays a small int: counting a drop never allocates


class Ring:
    def __init__(self, capacity):
        self.capacity = capacity
        self._slots = [None] * capacity
        # Positions run over 0 .. 2*capacity-1, so that full (capacity apart) differs from empty.
        self._wrap = 2 * capacity
        self._in = 0  # next push (written by push only)
        self._out = 0  # next pop (written by pop only)
        self.dropped = 0  # items refused because the ring was full, since it was made

    def __len__(self):
        return (self._in - self._out) % self._wrap

    def push(self, item):
        """IRQ side: queue `item` (never None); False, and one more drop counted, if full."""
        at = self._in
        if (at - self._out) % self._wrap >= self.capacity:
            if self.dropped < _DROPPED_MAX:
                self.dropped += 1
            return False
        self._slots[at % self.capacity] = item
        self._in = (at + 1) % self._wrap  # published after the slot is written
        return True

    def pop(self):
        """Task side: the oldest item, or None if the ring is empty."""
        at = self._out
        if at == self._in:
            return None
        slot = at % self.capacity
        item = self._slots[slot]
        self._slots[slot] = None  # the item can be collected once the task is done with it
        self._out = (at + 1) % self._wrap
        return item
