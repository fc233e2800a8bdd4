"""The helper that runs firmware code under the real MicroPython interpreter."""

import pytest

from jikimi_host.toolchain.interpreter import (
    ENV_VAR,
    MicroPythonFailed,
    MicroPythonNotFound,
    find_micropython,
    run_micropython,
)


def test_snippets_run_on_real_micropython(micropython):
    out = micropython.run("import sys; print(sys.implementation.name)")
    assert out.strip() == "micropython"


def test_firmware_package_is_on_the_module_path(micropython):
    out = micropython.run("import jikimi.protocol as p; print(p.VERSION, p.MAX_FRAME)")
    assert out.split() == ["1", "20"]


def test_a_failing_snippet_reports_its_traceback(micropython):
    with pytest.raises(MicroPythonFailed, match="ZeroDivisionError"):
        micropython.run("print(1 // 0)")


def test_override_must_point_at_an_executable(monkeypatch, tmp_path):
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "no-such-micropython"))
    with pytest.raises(MicroPythonNotFound, match=ENV_VAR):
        find_micropython()
    with pytest.raises(MicroPythonNotFound, match=ENV_VAR):
        run_micropython(code="print(1)")


def test_override_selects_the_binary(monkeypatch):
    real = find_micropython()
    monkeypatch.setenv(ENV_VAR, str(real))
    assert find_micropython() == real
