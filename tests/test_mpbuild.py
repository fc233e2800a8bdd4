"""The MicroPython build script (host/jikimi_host/toolchain/mpbuild.py): source checks, cache, tool checks.

Nothing here compiles; the last tests check the real cached build, which `make test` makes first.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from jikimi_host.toolchain import mpbuild
from jikimi_host.toolchain.interpreter import ENV_VAR, MicroPythonNotFound, find_micropython
from jikimi_host.paths import REPO_ROOT

SCRIPT = Path(mpbuild.__file__)


def fake_tarball(path: Path) -> Path:
    """A small .tar.xz with a micropython-1.28.0/ tree in it (not the pinned one)."""
    with tarfile.open(path, "w:xz") as tar:
        data = b"# not MicroPython\n"
        info = tarfile.TarInfo(f"{mpbuild.TARBALL_TOP}/ports/unix/Makefile")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return path


def fake_cache(out: Path, config: mpbuild.BuildConfig = mpbuild.DEFAULT_CONFIG) -> Path:
    """A cache folder with a matching stamp and an executable stand-in for the binary."""
    cache = mpbuild.cache_dir(out, config)
    cache.mkdir(parents=True)
    binary = cache / mpbuild.BINARY_NAME
    binary.write_text("#!/bin/sh\necho fake\n")
    binary.chmod(0o755)
    (cache / mpbuild.STAMP_FILE).write_text(config.stamp_text())
    return cache


@pytest.fixture
def no_build(monkeypatch):
    """Fail the test if anything past the up-to-date check runs."""
    def refuse(*args, **kwargs):
        raise AssertionError("the build ran")

    monkeypatch.setattr(mpbuild, "build", refuse)
    monkeypatch.setattr(mpbuild, "check_tools", refuse)


def test_a_tarball_with_another_hash_is_refused_naming_both_hashes(tmp_path, monkeypatch, capsys):
    tarball = fake_tarball(tmp_path / "micropython-1.28.0-nimble.tar.xz")
    actual = hashlib.sha256(tarball.read_bytes()).hexdigest()
    with pytest.raises(mpbuild.SourceError) as raised:
        mpbuild.verify_tarball(tarball)
    assert actual in str(raised.value) and mpbuild.TARBALL_SHA256 in str(raised.value)

    monkeypatch.setattr(mpbuild, "check_tools", lambda **kwargs: None)
    out = tmp_path / "out"
    assert mpbuild.main(["--source", str(tarball), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert actual in err and mpbuild.TARBALL_SHA256 in err
    assert not list(out.glob("mpbuild-work-*/src")), "nothing may be unpacked"
    assert not mpbuild.cache_dir(out).exists()


def test_the_pinned_hash_admits_a_tarball(tmp_path):
    tarball = fake_tarball(tmp_path / "t.tar.xz")
    mpbuild.verify_tarball(tarball, expected=hashlib.sha256(tarball.read_bytes()).hexdigest())
    tree = mpbuild.extract_tarball(tarball, tmp_path / "x")
    assert tree == tmp_path / "x" / mpbuild.TARBALL_TOP


def test_a_folder_that_is_not_a_git_checkout_is_refused(tmp_path):
    (tmp_path / "ports" / "unix").mkdir(parents=True)
    with pytest.raises(mpbuild.SourceError, match="not a git checkout.*tarball"):
        mpbuild.verify_checkout(tmp_path)


def test_the_cache_stamp_changes_with_a_flag_or_the_manifest():
    base = mpbuild.DEFAULT_CONFIG
    flag = mpbuild.BuildConfig(make_flags=base.make_flags + ("MICROPY_PY_FFI=1",))
    fewer = mpbuild.BuildConfig(make_flags=base.make_flags[:-1])
    cflags = mpbuild.BuildConfig(cflags_extra="-DX=1")
    manifest = mpbuild.BuildConfig(manifest=base.manifest + 'require("aioble")\n')
    no_edits = mpbuild.BuildConfig(source_edits=())
    stamps = {c.stamp() for c in (base, flag, fewer, cflags, manifest, no_edits)}
    assert len(stamps) == 6
    assert mpbuild.BuildConfig().stamp() == base.stamp()  # deterministic
    assert len(base.stamp()) == 12
    out = Path("/x/build")
    assert mpbuild.cache_dir(out) != mpbuild.cache_dir(out, flag)
    assert mpbuild.cache_dir(out).name == f"micropython-1.28.0-nimble-{base.stamp()}"
    assert mpbuild.binary_path(Path("/x")) == mpbuild.cache_dir(out) / "micropython"


def test_the_source_edits_change_their_line_in_the_copy_and_nothing_else(tmp_path):
    tree = tmp_path / "tree"
    paths = {edit.path for edit in mpbuild.SOURCE_EDITS}
    for path in paths:  # a file may take several edits: each of its old texts, in order
        (tree / path).parent.mkdir(parents=True, exist_ok=True)
        olds = [edit.old for edit in mpbuild.SOURCE_EDITS if edit.path == path]
        (tree / path).write_text("/* head */\n" + "\n/* between */\n".join(olds) + "\n/* tail */\n")
    mpbuild.apply_source_edits(tree)
    for path in paths:
        news = [edit.new for edit in mpbuild.SOURCE_EDITS if edit.path == path]
        assert (tree / path).read_text() == "/* head */\n" + "\n/* between */\n".join(news) + "\n/* tail */\n"


def test_a_source_edit_whose_line_is_missing_stops_the_build(tmp_path):
    edit = mpbuild.SOURCE_EDITS[0]
    (tmp_path / edit.path).parent.mkdir(parents=True)
    (tmp_path / edit.path).write_text("#define BLE_HCI_CMD_TIMEOUT_MS 5000\n")
    with pytest.raises(mpbuild.SourceError, match=r"has 0 lines .*expected 1.*pinned source"):
        mpbuild.apply_source_edits(tmp_path, [edit])


def test_the_pinned_source_has_each_edited_line_once():
    """Against the real mirror when there is one (CI has it), so a new pin cannot silently drop an edit."""
    tarball = os.environ.get(mpbuild.SOURCE_ENV_VAR)
    if not tarball or not Path(tarball).is_file():
        pytest.skip(f"${mpbuild.SOURCE_ENV_VAR} names no tarball")
    with tarfile.open(tarball, "r:*") as tar:
        for edit in mpbuild.SOURCE_EDITS:  # every edit, several of them in one file
            text = tar.extractfile(f"{mpbuild.TARBALL_TOP}/{edit.path}").read().decode()
            assert text.count(edit.old) == 1, (edit.path, edit.old)


EVENTQ_FILE = "extmod/nimble/nimble/nimble_npl_os.c"
# ble_npl_eventq_put() from the source, on its own, with the types it needs: the order in which
# the bell's host gets ACL data, an HCI event, and more ACL data (the ACL queue's one event put again).
EVENTQ_HARNESS = r"""
#include <stdbool.h>
#include <stdio.h>
struct ble_npl_event;
typedef void ble_npl_event_fn(struct ble_npl_event *ev);
struct ble_npl_event { ble_npl_event_fn *fn; void *arg; bool pending; struct ble_npl_event *prev, *next; };
struct ble_npl_eventq { struct ble_npl_event *head; struct ble_npl_eventq *nextq; };
typedef int os_sr_t;
#define OS_ENTER_CRITICAL(sr) ((void)((sr) = 0))
#define OS_EXIT_CRITICAL(sr) ((void)(sr))
#define DEBUG_EVENT_printf(...) ((void)0)
/* FUNCTION */
int main(void) {
    struct ble_npl_eventq queue = {0};
    struct ble_npl_event acl = {0}, encryption_change = {0};
    ble_npl_eventq_put(&queue, &acl);
    ble_npl_eventq_put(&queue, &encryption_change);
    ble_npl_eventq_put(&queue, &acl);
    for (struct ble_npl_event *ev = queue.head; ev != NULL; ev = ev->next) {
        printf("%s\n", ev == &acl ? "acl" : "encryption_change");
    }
    return 0;
}
"""


def queued_after_puts(source: str, tmp_path: Path) -> list[str]:
    start = source.index("void ble_npl_eventq_put(")
    function = source[start:source.index("\n}\n", start) + 3]
    program = tmp_path / "eventq.c"
    program.write_text(EVENTQ_HARNESS.replace("/* FUNCTION */", function))
    subprocess.run(["gcc", "-std=c99", "-Wall", "-Werror", "-o", str(tmp_path / "eventq"), str(program)], check=True)
    return subprocess.run([str(tmp_path / "eventq")], capture_output=True, text=True, check=True).stdout.split()


def test_the_built_nimble_event_queue_keeps_an_event_queued_behind_one_put_again(tmp_path):
    """The pinned source's ble_npl_eventq_put() loses the events behind an event put again (the
    bell missed an Encryption Change); the build's copy, with SOURCE_EDITS, keeps them."""
    tarball = os.environ.get(mpbuild.SOURCE_ENV_VAR)
    if not tarball or not Path(tarball).is_file():
        pytest.skip(f"${mpbuild.SOURCE_ENV_VAR} names no tarball")
    if shutil.which("gcc") is None:
        pytest.skip("no gcc")
    with tarfile.open(tarball, "r:*") as tar:
        pinned = tar.extractfile(f"{mpbuild.TARBALL_TOP}/{EVENTQ_FILE}").read().decode()
    tree = tmp_path / "tree"
    (tree / EVENTQ_FILE).parent.mkdir(parents=True)
    (tree / EVENTQ_FILE).write_text(pinned)
    mpbuild.apply_source_edits(tree, [edit for edit in mpbuild.SOURCE_EDITS if edit.path == EVENTQ_FILE])
    assert queued_after_puts(pinned, tmp_path) == ["acl"]  # the bug, as pinned: the event is gone
    assert queued_after_puts((tree / EVENTQ_FILE).read_text(), tmp_path) == ["acl", "encryption_change"]


def test_a_checkout_is_copied_without_its_git_folder_and_left_as_it_was(tmp_path):
    checkout = tmp_path / "checkout"
    (checkout / ".git").mkdir(parents=True)
    (checkout / "ports" / "unix").mkdir(parents=True)
    (checkout / "ports" / "unix" / "Makefile").write_text("all:\n")
    copy = mpbuild.copy_checkout(checkout, tmp_path / "work")
    assert (copy / "ports" / "unix" / "Makefile").read_text() == "all:\n"
    assert not (copy / ".git").exists() and (checkout / ".git").is_dir()


def test_the_32bit_build_freezes_the_firmware_and_its_sources_are_in_the_stamp(tmp_path, monkeypatch):
    config = mpbuild.BUDGET_CONFIG
    assert "MICROPY_FORCE_32BIT=1" in config.make_flags and mpbuild.is_32bit(config)
    assert 'include("{repo}/boards/sim/manifest.py")' in config.manifest
    assert mpbuild.cache_dir(tmp_path, config).name.startswith("micropython-1.28.0-frozen32-")
    assert config.tree == mpbuild.STOCK32_CONFIG.tree and config.tree_text() == mpbuild.STOCK32_CONFIG.tree_text()
    (tmp_path / "firmware" / "jikimi").mkdir(parents=True)
    module = tmp_path / "firmware" / "jikimi" / "app.py"
    module.write_text("x = 1\n")
    monkeypatch.setattr(mpbuild, "repo_root", lambda: tmp_path)
    before, tree = config.stamp(), config.tree_text()
    module.write_text("x = 2\n")
    assert config.stamp() != before, "a firmware edit must rebuild the frozen image"
    assert config.tree_text() == tree, "...but keep its compiled C (the kept tree)"
    assert mpbuild.DEFAULT_CONFIG.frozen_files(tmp_path) == {}


def test_a_builds_cleanup_leaves_the_other_configs_build(tmp_path):
    ours = fake_cache(tmp_path, mpbuild.DEFAULT_CONFIG)
    theirs = fake_cache(tmp_path, mpbuild.BUDGET_CONFIG)
    older = tmp_path / "micropython-1.28.0-nimble-000000000000"
    older.mkdir()
    stale = set(mpbuild._stale(tmp_path, ours, mpbuild.DEFAULT_CONFIG))
    assert stale == {older} and theirs not in stale


def test_a_missing_32bit_c_library_names_gcc_multilib(monkeypatch):
    calls = []

    def probe(command, **kwargs):
        calls.append(command)
        failed = "-m32" in command
        return subprocess.CompletedProcess(command, 1 if failed else 0, "", "cannot find -lgcc" if failed else "")

    monkeypatch.setattr(mpbuild.subprocess, "run", probe)
    with pytest.raises(mpbuild.MissingToolError, match=r"(?s)32-bit.*apt-get install gcc-multilib"):
        mpbuild.check_tools(need_32bit=True, which=lambda tool: f"/usr/bin/{tool}")
    assert any("-m32" in call for call in calls)


def test_a_cache_with_another_stamp_is_not_up_to_date(tmp_path):
    cache = fake_cache(tmp_path)
    assert mpbuild.is_up_to_date(cache)
    (cache / mpbuild.STAMP_FILE).write_text("{}")
    assert not mpbuild.is_up_to_date(cache)
    (cache / mpbuild.STAMP_FILE).unlink()
    assert not mpbuild.is_up_to_date(cache)


def test_a_missing_compiler_names_the_debian_packages(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(mpbuild.shutil, "which", lambda tool: None if tool == "gcc" else f"/bin/{tool}")
    with pytest.raises(mpbuild.MissingToolError, match="apt-get install build-essential") as raised:
        mpbuild.check_tools()
    assert raised.value.code == 2 and "gcc" in str(raised.value)

    monkeypatch.setenv("PATH", str(tmp_path))  # and through main, with nothing on PATH at all
    monkeypatch.setattr(mpbuild.shutil, "which", lambda tool: None)
    tarball = fake_tarball(tmp_path / "t.tar.xz")
    assert mpbuild.main(["--source", str(tarball), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "gcc" in err and "make" in err and "apt-get install build-essential" in err


def test_git_is_needed_only_for_a_checkout_or_upstream(monkeypatch):
    monkeypatch.setattr(mpbuild, "_check_headers", lambda: None)
    monkeypatch.setattr(mpbuild.shutil, "which", lambda tool: None if tool == "git" else f"/bin/{tool}")
    mpbuild.check_tools(need_git=False)
    with pytest.raises(mpbuild.MissingToolError, match="apt-get install git"):
        mpbuild.check_tools(need_git=True)


def test_up_to_date_does_nothing(tmp_path, no_build, capsys):
    caches = [fake_cache(tmp_path, config) for config in mpbuild.CONFIGS.values()]
    before = sorted(p.name for p in tmp_path.iterdir())
    assert mpbuild.main(["--out", str(tmp_path), "--source", str(tmp_path / "absent.tar.xz")]) == 0
    assert capsys.readouterr().out == "".join(f"micropython: up to date ({cache / 'micropython'})\n" for cache in caches)
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_one_config_can_be_asked_for(tmp_path, no_build, capsys):
    cache = fake_cache(tmp_path, mpbuild.BUDGET_CONFIG)
    assert mpbuild.main(["--out", str(tmp_path), "--config", "frozen32"]) == 0
    assert capsys.readouterr().out == f"micropython: up to date ({cache / 'micropython'})\n"


def test_up_to_date_as_a_script_prints_one_line_per_build(tmp_path):
    caches = [fake_cache(tmp_path, config) for config in mpbuild.CONFIGS.values()]
    env = {k: v for k, v in os.environ.items() if k != mpbuild.SOURCE_ENV_VAR}
    done = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [f"micropython: up to date ({cache / 'micropython'})" for cache in caches]


def test_find_micropython_without_the_build_says_make_micropython(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.setattr(mpbuild, "binary_path", lambda root: tmp_path / "micropython")
    with pytest.raises(MicroPythonNotFound, match="make micropython") as raised:
        find_micropython()
    assert ENV_VAR in str(raised.value)


def git(*args: str, cwd: Path) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t", "GIT_CONFIG_GLOBAL": "/dev/null"}
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True,
                          text=True).stdout.strip()


@pytest.fixture
def fake_upstream(tmp_path, monkeypatch):
    """Local repositories standing in for GitHub: micropython with its two submodules as
    gitlinks; the pins point at them."""
    if shutil.which("git") is None:
        pytest.skip("needs git")
    heads = {}
    for name in ("nimble", "mplib"):
        repo = tmp_path / "upstream" / name
        repo.mkdir(parents=True)
        git("init", "-q", cwd=repo)
        (repo / "README.md").write_text(name)
        git("add", ".", cwd=repo)
        git("commit", "-qm", name, cwd=repo)
        heads[name] = git("rev-parse", "HEAD", cwd=repo)
    mp = tmp_path / "upstream" / "mp"
    (mp / "ports" / "unix").mkdir(parents=True)
    git("init", "-q", cwd=mp)
    (mp / "ports" / "unix" / "Makefile").write_text("# not MicroPython\n")
    submodules = {"lib/mynewt-nimble": "nimble", "lib/micropython-lib": "mplib"}
    git("add", ".", cwd=mp)
    for path, name in submodules.items():  # gitlinks, as `git submodule add` makes them
        git("update-index", "--add", "--cacheinfo", f"160000,{heads[name]},{path}", cwd=mp)
    git("commit", "-qm", "mp", cwd=mp)
    monkeypatch.setattr(mpbuild, "MICROPYTHON_URL", mp.as_uri())
    monkeypatch.setattr(mpbuild, "MICROPYTHON_COMMIT", git("rev-parse", "HEAD", cwd=mp))
    monkeypatch.setattr(mpbuild, "SUBMODULES", {
        path: ((tmp_path / "upstream" / name).as_uri(), heads[name])
        for path, name in submodules.items()})
    return tmp_path / "upstream"


def test_upstream_is_fetched_by_commit_and_verified(fake_upstream, tmp_path):
    dest = tmp_path / "build" / mpbuild.CLONE_DIR_NAME
    assert mpbuild.clone_upstream(dest, log=lambda line: None) == dest
    assert git("rev-parse", "HEAD", cwd=dest) == mpbuild.MICROPYTHON_COMMIT
    for path, (_, commit) in mpbuild.SUBMODULES.items():
        assert git("rev-parse", "HEAD", cwd=dest / path) == commit
    assert mpbuild.clone_upstream(dest, log=lambda line: pytest.fail(line)) == dest  # reused


def test_a_checkout_at_another_commit_or_with_changes_is_refused(fake_upstream, tmp_path, monkeypatch):
    dest = mpbuild.clone_upstream(tmp_path / "clone", log=lambda line: None)
    (dest / "ports" / "unix" / "Makefile").write_text("patched\n")
    with pytest.raises(mpbuild.SourceError, match="local changes"):
        mpbuild.verify_checkout(dest)
    nimble, (url, _) = next(iter(mpbuild.SUBMODULES.items()))
    monkeypatch.setitem(mpbuild.SUBMODULES, nimble, (url, "0" * 40))
    with pytest.raises(mpbuild.SourceError, match="not the pinned 0000"):
        mpbuild.verify_checkout(dest)


# --- The real build (`make test` runs `make micropython` first) --------------------------------

def built_binary() -> Path:
    binary = mpbuild.binary_path(REPO_ROOT)
    assert binary.is_file(), f"{binary} is missing: run `make micropython`"
    return binary


def test_the_cached_build_is_the_default_interpreter(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert find_micropython() == built_binary()


def test_the_cached_build_has_bluetooth_on_nimble():
    code = ("import sys, bluetooth, " + ", ".join(mpbuild.REQUIRED_MODULES)
            + "; print(sys.implementation.version[:3], bluetooth.BLE.__name__)")
    done = subprocess.run([str(built_binary()), "-c", code], capture_output=True, text=True,
                          timeout=30, env={**os.environ, "MICROPYPATH": ".frozen"})
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.split() == ["(1,", "28,", "0)", "BLE"]


def test_the_cache_holds_the_two_device_test_runner():
    cache = built_binary().parent
    for relative in ("tests/multi_bluetooth/ble_gap_pair_bond.py", "aioble/aioble/__init__.py",
                     "aioble/multitests/ble_notify.py", "manifest.py"):
        assert (cache / relative).is_file(), relative
    assert (cache / "ports/unix/build-standard/micropython").resolve() == built_binary().resolve()
    runner = cache / "tests" / "run-multitests.py"
    done = subprocess.run([sys.executable, "-B", str(runner), "--help"],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0 and "--test-instance" in done.stdout, done.stderr


def test_configs_sharing_a_tree_build_in_order_and_the_groups_side_by_side(tmp_path, monkeypatch):
    import threading
    import time

    events: list[tuple[str, str]] = []
    lock = threading.Lock()

    def fake_build(source, out_dir, config):
        with lock:
            events.append(("start", config.name))
        time.sleep(0.3)
        with lock:
            events.append(("end", config.name))

    monkeypatch.setattr(mpbuild, "build", fake_build)
    mpbuild.build_side_by_side(tmp_path / "source.tar.xz", tmp_path, list(mpbuild.CONFIGS.values()))
    # the two groups at once: both have started before either has ended
    assert {event for event in events[:2]} == {("start", "nimble"), ("start", "nimble32")}
    # frozen32 shares nimble32's tree: it starts only once nimble32 has ended
    assert events.index(("end", "nimble32")) < events.index(("start", "frozen32"))


def test_a_failed_build_in_one_group_is_the_result_after_the_other_has_ended(tmp_path, monkeypatch):
    ended: list[str] = []

    def fake_build(source, out_dir, config):
        if config.name == "nimble":
            raise mpbuild.BuildError("make failed", 1)
        ended.append(config.name)

    monkeypatch.setattr(mpbuild, "build", fake_build)
    with pytest.raises(mpbuild.BuildError, match="make failed"):
        mpbuild.build_side_by_side(tmp_path / "source.tar.xz", tmp_path, list(mpbuild.CONFIGS.values()))
    assert ended == ["nimble32", "frozen32"]


def test_mpy_cross_is_built_once_for_every_config_and_again_for_other_source(tmp_path, monkeypatch):
    import dataclasses

    makes: list[list[str]] = []

    def fake_make(command, log_file, env):
        makes.append(command)
        build = Path(next(arg for arg in command if arg.startswith("BUILD=")).removeprefix("BUILD="))
        build.mkdir(parents=True)
        (build / "mpy-cross").write_text("binary")

    monkeypatch.setattr(mpbuild, "_run_logged", fake_make)
    log = tmp_path / "build.log"
    first = mpbuild.shared_mpy_cross(tmp_path / "tree", tmp_path, log, mpbuild.DEFAULT_CONFIG)
    for config in mpbuild.CONFIGS.values():
        assert mpbuild.shared_mpy_cross(tmp_path / "tree", tmp_path, log, config) == first
    assert len(makes) == 1 and first.is_file()
    other = dataclasses.replace(mpbuild.DEFAULT_CONFIG, pins={**mpbuild.DEFAULT_CONFIG.pins, "micropython": "0" * 40})
    second = mpbuild.shared_mpy_cross(tmp_path / "tree", tmp_path, log, other)
    assert len(makes) == 2 and second != first and not first.exists()  # the old one is removed
