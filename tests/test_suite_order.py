"""The suite's own bookkeeping: conftest.SLOWEST_FIRST names tests that exist (a renamed slow test
would otherwise run last again, and lengthen `make test` without a word)."""

from __future__ import annotations

import pytest
from conftest import SLOWEST_FIRST


def test_every_test_named_slowest_first_exists(request):
    names = [item.nodeid.removeprefix("tests/") for item in request.session.items]
    if len(names) < 200:
        pytest.skip("a partial run: the slow tests may be deselected")
    assert [prefix for prefix in SLOWEST_FIRST if not any(name.startswith(prefix) for name in names)] == []
