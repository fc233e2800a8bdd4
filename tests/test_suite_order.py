"""The suite's own bookkeeping: tests/durations.json, which orders the run, names tests that exist
(a renamed slow test would otherwise be taken for a short one, run last, and lengthen `make test`
without a word: `make durations` measures them again)."""

from __future__ import annotations

import json

import pytest
from conftest import DURATIONS_FILE


def test_every_test_in_the_durations_file_exists(request):
    names = {item.nodeid.removeprefix("tests/") for item in request.session.items}
    if len(names) < 200:
        pytest.skip("a partial run: the slow tests may be deselected")
    assert sorted(set(json.loads(DURATIONS_FILE.read_text())) - names) == []
