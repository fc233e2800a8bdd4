"""The device image's constants, folded across modules at build time (toolchain/constfold.py):
the values are those of the sources, line numbers stay, what cannot be followed is refused, and
the heap an .mpy bell needs is smaller for it."""

from __future__ import annotations

import pytest

from jikimi import protocol as p
from jikimi_host.paths import FIRMWARE_DIR
from jikimi_host.rig import heap_budget
from jikimi_host.toolchain.compiler import build
from jikimi_host.toolchain.constfold import FoldError, fold, fold_file, package_constants
from jikimi_host.toolchain.interpreter import MicroPythonNotFound, find_budget_micropython, run_micropython

PACKAGE = FIRMWARE_DIR / "jikimi"
TABLE = {"protocol": {"ALARM_RAISED": 1, "ROLE_DOOR": 2}, "gestures": {"HOLD": 1, "TRIPLE": 2}}


def test_every_public_integer_constant_of_the_firmware_is_in_the_table_with_its_value():
    table = package_constants(PACKAGE)
    assert table["protocol"]["ALARM_RAISED"] == p.ALARM_RAISED
    assert table["protocol"]["EVENTS_FLAGS"] == p.EVENTS_FLAGS  # const(_FLAG_READ | ...): worked out
    assert "_FLAG_READ" not in table["protocol"]  # private ones mpy-cross folds by itself
    assert "ERROR_NAMES" not in table["protocol"]  # not an integer const()


def test_a_modules_constants_become_their_values_where_another_module_uses_them():
    source = ("from jikimi import protocol as p\n"
              "from jikimi.gestures import HOLD, Gestures\n"
              "def f(roles):\n"
              "    return (p.ROLE_DOOR & roles, HOLD, Gestures, p.decode)\n")
    assert fold(source, TABLE) == ("from jikimi import protocol as p\n"
                                   "from jikimi.gestures import Gestures\n"
                                   "def f(roles):\n"
                                   "    return (2 & roles, 1, Gestures, p.decode)\n")
    assert fold("from jikimi.gestures import HOLD, TRIPLE\nx = HOLD | TRIPLE\n", TABLE) == "pass\nx = 1 | 2\n"


def test_a_modules_own_constants_become_private_so_that_mpy_cross_folds_them_away():
    source = "HOLD = const(1)\nNAMES = {HOLD: 'hold'}\nclass G:\n    kind = HOLD\n"
    assert fold(source, TABLE, own="gestures") == "_HOLD = const(1)\nNAMES = {_HOLD: 'hold'}\nclass G:\n    kind = _HOLD\n"


def test_every_folded_firmware_module_keeps_its_sources_lines():
    # file:line in mpy-cross's errors and in the code's own comments stay those of the source;
    # a line with non-ASCII text before a folded name is cut at the right byte.
    assert fold("s = '§ é'; x = p.ALARM_RAISED\n", TABLE).endswith("x = p.ALARM_RAISED\n")  # no import: no fold
    assert fold("from jikimi import protocol as p\ns = '§ é'; x = p.ALARM_RAISED\n", TABLE).endswith("s = '§ é'; x = 1\n")
    for source in sorted(PACKAGE.glob("*.py")):
        folded = fold_file(source, PACKAGE)
        assert len(folded.splitlines()) == len(source.read_text(encoding="utf-8").splitlines()), source.name


@pytest.mark.parametrize("source, line, words", [
    ("from jikimi import protocol as p\nhandler(p)\n", 2, "used other than as p.attribute"),
    ("from jikimi import protocol as p\np.ALARM_RAISED = 3\n", 2, "cannot be assigned"),
    ("from jikimi.gestures import HOLD\nHOLD = 4\n", 2, "cannot be assigned"),
    ("from jikimi import protocol as p\ndef f(p):\n    return p\n", 2, "hides a folded import"),
    ("from jikimi.gestures import (\n    HOLD,\n)\n", 1, "on one line"),
])
def test_a_use_that_cannot_be_followed_is_refused_with_its_line(source, line, words):
    with pytest.raises(FoldError) as refused:
        fold(source, TABLE)
    assert refused.value.line == line and words in refused.value.message


def test_a_refused_module_fails_the_build_with_file_and_line(tmp_path):
    package = tmp_path / "src" / "jikimi"
    package.mkdir(parents=True)
    (package / "gestures.py").write_text("HOLD = const(1)\n")
    (package / "app.py").write_text("from jikimi import gestures\n\nprint(gestures)\n")
    report = build([package / "gestures.py", package / "app.py"], out_dir=tmp_path / "out", base=tmp_path)
    assert [(e.path, e.line) for e in report.errors] == [("src/jikimi/app.py", 3)]
    assert "cannot fold its constants" in report.errors[0].message


@pytest.mark.micropython
def test_the_folded_image_needs_less_heap_and_has_no_constants_left_to_look_up(tmp_path):
    try:
        find_budget_micropython(frozen=False)
    except MicroPythonNotFound as error:
        pytest.fail(str(error))
    folded, as_written = heap_budget.fold_saving_bytes(tmp_path)
    # measured: about 3 KB less, on the 32-bit stock interpreter (objects the size of an ESP32's)
    assert as_written - folded > 1500, (folded, as_written)
    out = run_micropython(code="import jikimi.protocol as p\nprint(hasattr(p, 'ALARM_RAISED'), p.decode(b'\\x01\\x41' + bytes(18)).name)",
                          path=[tmp_path / "folded" / "firmware"]).check().stdout.split()
    assert out == ["False", "status"]
