"""The IRQ-to-task ring (firmware/jikimi/ring.py): bounded, FIFO, drops the newest and counts it,
and pushes without allocating under MicroPython."""

from __future__ import annotations

import json
from collections import deque

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jikimi.ring import Ring


@given(st.integers(1, 9), st.lists(st.one_of(st.integers(0, 1000), st.none()), max_size=300))
def test_a_ring_is_a_bounded_fifo_that_refuses_and_counts_the_newest(capacity, ops):
    """Against a model: each int is a push, each None a pop."""
    ring, model, dropped = Ring(capacity), deque(), 0
    for op in ops:
        if op is None:
            assert ring.pop() == (model.popleft() if model else None)
        elif len(model) < capacity:
            assert ring.push(op) is True
            model.append(op)
        else:
            assert ring.push(op) is False  # the oldest stay: what is queued keeps its order
            dropped += 1
        assert len(ring) == len(model) and ring.dropped == dropped
        assert len(ring._slots) == capacity  # never grows


def test_a_pop_leaves_no_reference_behind():
    ring = Ring(2)
    ring.push(("a",))
    ring.pop()
    assert ring._slots == [None, None]


@pytest.mark.micropython
def test_under_micropython_a_push_allocates_nothing_even_when_full(micropython):
    out = micropython.run(
        "import gc, json\n"
        "from jikimi.ring import Ring\n"
        "ring = Ring(8)\n"
        "item = ('button', 1, 12345)\n"
        "def run(n):\n"
        "    i = 0\n"
        "    while i < n:\n"
        "        ring.push(item)\n"
        "        if i % 3 == 0:\n"
        "            ring.pop()\n"
        "        i += 1\n"
        "def measure(n):\n"
        "    gc.collect(); gc.disable()\n"
        "    before = gc.mem_alloc()\n"
        "    run(n)\n"
        "    grew = gc.mem_alloc() - before\n"
        "    gc.enable()\n"
        "    return grew\n"
        "measure(10)\n"  # the first measurement carries the interpreter's own first-use bytes
        "grew = measure(1000)\n"
        "print(json.dumps({'grew': grew, 'len': len(ring), 'dropped': ring.dropped}))\n"
    )
    result = json.loads(out)
    assert result["grew"] == 0, result
    assert result["len"] <= 8 and result["dropped"] > 600, result
